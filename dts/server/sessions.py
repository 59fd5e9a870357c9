"""Worker sessions: which registration a worker's call belongs to, and who may take a
worker's name."""

from __future__ import annotations

import logging

from dts.domain import WorkerInfo, WorkerState
from dts.errors import PermissionDenied, SessionSuperseded, UnknownSession
from dts.server.store import Transaction

log = logging.getLogger("dts.coordinator")


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
