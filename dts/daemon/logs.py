"""Logging for the daemons: stderr (journald-aware) or a reopenable file, text or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import replace

from dts.daemon.config import ProcessConfig

# syslog priorities, understood by journald as a "<N>" line prefix
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journald() -> bool:
    """True when stderr is connected to the journal.

    systemd then sets JOURNAL_STREAM to the device and inode numbers of that stream. The
    variable is inherited by children whose stderr goes elsewhere (a program supervisord
    runs when supervisord itself is a systemd service, a job's own processes), so it counts
    only when it names our stderr.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # stderr closed or not a real file
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def with_priority(text: str, levelno: int) -> str:
    """Every line prefixed with `<N>`, so that journald files a traceback's lines under the
    record's priority too (it reads each line of the stream as an entry of its own)."""
    prefix = f"<{PRIORITY.get(levelno, 6)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """`2026-11-27T00:00:00.123Z INFO dts.server: message`, or without the time for journald."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.journald:  # journald stamps its own time and keeps the priority
            return with_priority(f"{record.levelname} {record.name}: {msg}", record.levelno)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {msg}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        line = json.dumps(obj)
        return with_priority(line, record.levelno) if self.journald else line


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened on SIGHUP (after logrotate moved it)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def setup(cfg: ProcessConfig) -> None:
    """Configure the root logger from the process options (replacing earlier handlers)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    journald = False
    if cfg.log_file:
        handler = ReopenableFileHandler(cfg.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
        journald = under_journald()
    handler.setFormatter(
        JsonFormatter(journald) if cfg.log_format == "json" else TextFormatter(journald)
    )
    root.addHandler(handler)
    root.setLevel(cfg.log_level.upper())


def reload(current: ProcessConfig, fresh: ProcessConfig) -> ProcessConfig:
    """SIGHUP: reopen log files, apply a changed log level, log what changed."""
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
    log = logging.getLogger("dts.reload")
    if fresh.log_level == current.log_level:
        log.info("reload: log files reopened; log level stays %s", current.log_level)
        return current
    root = logging.getLogger()
    text, old, new = (
        "reload: log files reopened; log level %s -> %s",
        current.log_level,
        fresh.log_level,
    )
    if root.isEnabledFor(logging.INFO):  # said under the old level when the new one is quieter
        log.info(text, old, new)
        root.setLevel(new.upper())
    else:
        root.setLevel(new.upper())
        log.info(text, old, new)
    return replace(current, log_level=new)
