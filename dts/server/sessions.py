"""Worker sessions: which registration a worker's call belongs to, and who may take a
worker's name."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dts.domain import (
    MAX_CONCURRENCY,
    MAX_HOST_CHARS,
    MAX_NAME_CHARS,
    MAX_WORKER_QUEUES,
    WorkerInfo,
    WorkerState,
    validate_queue_name,
)
from dts.errors import InvalidArgument, PermissionDenied, SessionSuperseded, UnknownSession
from dts.server.store import Transaction

log = logging.getLogger("dts.coordinator")


def check_registration(name: str, host: str, concurrency: int, queues: Sequence[str]) -> None:
    """Refuse a registration whose fields break the rules (InvalidArgument naming the rule)."""
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"worker name must be 1-{MAX_NAME_CHARS} characters")
    if len(host) > MAX_HOST_CHARS:
        raise InvalidArgument(f"host name is longer than {MAX_HOST_CHARS} characters")
    if not 1 <= concurrency <= MAX_CONCURRENCY or not queues:
        raise InvalidArgument(
            f"a worker needs concurrency 1-{MAX_CONCURRENCY} and at least one queue"
        )
    if len(queues) > MAX_WORKER_QUEUES:
        raise InvalidArgument(f"a worker takes jobs from at most {MAX_WORKER_QUEUES} queues")
    for queue in queues:
        validate_queue_name(queue)


def session_of(tx: Transaction, name: str, session: str) -> WorkerInfo:
    """The registration of worker `name`, if `session` is its current one; else UnknownSession
    (never registered) or SessionSuperseded (registered again since)."""
    worker = tx.get_worker(name)
    if worker is None:
        raise UnknownSession(f"worker {name} is not registered")
    if worker.session != session:
        # Last registration wins: a restarted worker replaces its dead predecessor; a
        # second live process with the same name is told to stop instead of fighting.
        raise SessionSuperseded(
            f"worker name {name} was registered again by {worker.host} pid {worker.pid}"
        )
    return worker


def check_takeover(
    old: WorkerInfo | None, credential: str, now: float, worker_timeout: float
) -> None:
    """Refuse a registration under the name of a live worker that registered with another
    credential: an unbound worker token must not knock a real worker off its name. Once
    that worker stopped or is lost, any worker token may take the name; a session kept
    without a credential (none was recorded before schema version 3) protects nothing."""
    if old is None or not old.credential or old.credential == credential:
        return
    if old.state in (WorkerState.LOST, WorkerState.STOPPED):
        return
    if now - old.last_heartbeat > worker_timeout:
        return
    log.warning(
        "registration as worker %s refused: that worker (host %s, pid %d) is alive and "
        "registered with another credential",
        old.name,
        old.host,
        old.pid,
    )
    raise PermissionDenied(
        f"worker name {old.name} is in use by a live worker (host {old.host}, pid {old.pid})"
        " that registered with another token; it can be taken once that worker stops or is"
        f" lost ({worker_timeout:g}s without a heartbeat)"
    )
