"""Queue controls, the server's side: pause, resume and run limits as stored settings, the
listing of queues, and the claim gate that applies them inside a claim's transaction.

The store is the truth. A claim counts a limited queue's running jobs in the store (so a lost
worker's slots come back when its lease is reaped) with the queue's row locked (so claims
through several servers on one PostgreSQL count and grant one after the other). Ids the gate
holds back go straight back to the Redis queue, at their place (the queue is sorted by
priority and id); the worker is told which of its queues are held, and pops from those no
more until an answer says they are free again."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dts.controls import Gate, Held, QueueInfo, QueueSetting, gate, held_of, validate_run_limit
from dts.domain import JobStatus, WorkerState, validate_queue_name
from dts.queue import QueuedJob
from dts.server.store import Store, Transaction

log = logging.getLogger("dts.coordinator")

SERVING = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING)  # workers listed per queue


class QueueControls:
    """Settings of queues and their listing; `gate` and `held` are used by the coordinator
    inside its transactions."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    # ---- what clients call ------------------------------------------------------------

    def pause(self, name: str) -> QueueInfo:
        return self._change(name, lambda s: QueueSetting(name, True, s.limit))

    def resume(self, name: str) -> QueueInfo:
        return self._change(name, lambda s: QueueSetting(name, False, s.limit))

    def set_limit(self, name: str, limit: int | None) -> QueueInfo:
        validate_run_limit(limit)
        return self._change(name, lambda s: QueueSetting(name, s.paused, limit))

    def _change(self, name: str, new: Callable[[QueueSetting], QueueSetting]) -> QueueInfo:
        validate_queue_name(name)
        now = self.clock()
        with self.store.transaction() as tx:
            old = tx.queue_settings([name], lock=True).get(name, QueueSetting(name))
            setting = new(old)
            tx.save_queue(QueueSetting(name, setting.paused, setting.limit, now))
        if (old.paused, old.limit) != (setting.paused, setting.limit):
            limit = "none" if setting.limit is None else setting.limit
            log.info(
                "queue %s %s, limit %s", name, "paused" if setting.paused else "not paused", limit
            )
        return self.info(name)

    def info(self, name: str) -> QueueInfo:
        """One queue's row (a queue nobody uses reads as empty and free)."""
        return next((q for q in self.listing() if q.name == name), QueueInfo(name))

    def listing(self) -> list[QueueInfo]:
        """Every queue that has jobs, a setting, or a live worker serving it, by name."""
        counts: dict[str, dict[JobStatus, int]] = {}
        for c in self.store.stats():
            counts.setdefault(c.queue, {})[c.status] = c.count
        settings = {s.name: s for s in self.store.queue_settings()}
        serving: dict[str, list[str]] = {}
        for w in self.store.workers():
            if w.state in SERVING:
                for q in w.queues:
                    serving.setdefault(q, []).append(w.name)
        rows = []
        for name in sorted({*counts, *settings, *serving}):
            n = counts.get(name, {})
            s = settings.get(name, QueueSetting(name))
            rows.append(
                QueueInfo(
                    name,
                    queued=n.get(JobStatus.QUEUED, 0),
                    running=n.get(JobStatus.RUNNING, 0),
                    scheduled=n.get(JobStatus.SCHEDULED, 0),
                    waiting=n.get(JobStatus.WAITING, 0),
                    paused=s.paused,
                    limit=s.limit,
                    workers=tuple(sorted(serving.get(name, ()))),
                )
            )
        return rows


def gate_claims(
    tx: Transaction, queues: Sequence[str], ids: Sequence[int]
) -> tuple[Gate, list[QueuedJob]]:
    """Which of the `ids` a worker serving `queues` claims may be claimed now, in the claim's
    transaction, and the refused ones as they go back to the queue. A worker none of whose
    queues has a setting costs one small read."""
    settings = tx.queue_settings(queues, lock=bool(ids))
    if not settings:
        return Gate(list(ids)), []
    limited = [n for n, s in settings.items() if s.limit is not None and not s.paused]
    running = tx.running_counts(limited)
    places = tx.queued_places(ids) if ids else {}
    decided = gate(ids, {i: q for i, (q, _) in places.items()}, settings, running)
    back = [QueuedJob(i, *places[i]) for i in decided.refused]
    return decided, back


def held(tx: Transaction, queues: Sequence[str]) -> Held:
    """The worker's queues that are held now (for a heartbeat's answer)."""
    settings = tx.queue_settings(queues)
    if not settings:
        return Held()
    limited = [n for n, s in settings.items() if s.limit is not None and not s.paused]
    return held_of(settings, tx.running_counts(limited))
