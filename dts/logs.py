"""Logging for the daemons: stderr (journald-aware) or a reopenable file, text or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import replace

from dts.config import ProcessConfig

# syslog priorities, understood by journald as a "<N>" line prefix
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journald() -> bool:
    """True when systemd connected stderr to the journal (it sets JOURNAL_STREAM)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


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
            return f"<{PRIORITY.get(record.levelno, 6)}>{record.levelname} {record.name}: {msg}"
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
        return f"<{PRIORITY.get(record.levelno, 6)}>{line}" if self.journald else line


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
    logging.getLogger().setLevel(fresh.log_level.upper())
    log.info("reload: log level %s -> %s", current.log_level, fresh.log_level)
    return replace(current, log_level=fresh.log_level)
