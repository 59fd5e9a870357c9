"""How a daemon starts: config, detaching, logging, signals, PID file, a failure to start."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from dts.daemon import logs
from dts.daemon.config import ProcessConfig
from dts.daemon.process import PidFile, Readiness, Signals, daemonize, fail
from dts.errors import DtsError


class Configured(Protocol):
    """A daemon's settings: whatever they are, with its process options among them."""

    @property
    def process(self) -> ProcessConfig: ...


C = TypeVar("C", bound=Configured)


@contextlib.contextmanager
def pid_file(path: str, log: logging.Logger) -> Iterator[None]:
    """Hold a locked PID file at `path` (none if '') while the block runs; replacing a stale
    one is worth a warning."""
    pidfile = PidFile(path) if path else None
    try:
        if pidfile:
            note = pidfile.acquire()
            if note:
                log.warning("%s", note)
        yield
    finally:
        if pidfile:
            pidfile.release()


def launch(
    prog: str,
    load: Callable[[], C],
    body: Callable[[C, Readiness, Signals], int | Callable[[], int]],
    *,
    log: logging.Logger,
    failure: str = "%s",
    errors: tuple[type[DtsError] | type[OSError], ...] = (DtsError,),
    before_logging: Callable[[], None] | None = None,
) -> int:
    """Start the daemon `prog` and return its exit code.

    Its settings come from `load()` (an error there is a usage error: exit 2). It detaches if
    they say so, then `before_logging()` runs (if given), logging is set up, signals are
    caught and the PID file is held. `body(cfg, readiness, signals)` brings the program up:
    an error of `errors` out of it (or out of taking the PID file) is a failure to start,
    logged with `failure`, told to whoever waits for the daemon, and exit 1. The body returns
    the exit code, or the program's main loop: that runs next, still holding the PID file,
    and its errors are its own.
    """
    try:
        cfg = load()
    except DtsError as e:
        return fail(prog, e, 2)
    readiness = daemonize(prog) if cfg.process.daemon else Readiness(None)
    if before_logging is not None:
        before_logging()
    logs.setup(cfg.process)
    signals = Signals()
    signals.install()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(pid_file(cfg.process.pidfile, log))
            started = body(cfg, readiness, signals)
        except errors as e:
            log.error(failure, e)
            readiness.failed(str(e))
            return fail(prog, e)
        return started if isinstance(started, int) else started()
