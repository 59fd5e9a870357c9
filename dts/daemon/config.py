"""The options of a daemon as a process: logging, PID file, detaching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dts.errors import InvalidArgument
from dts.options import ArgumentParser

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_process_options(p: ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log threshold")
    p.add_argument("--log-format", default="text", choices=("text", "json"), help="log line form")
    p.add_argument("--log-file", default="", help="log to this file instead of stderr")
    p.add_argument("--pidfile", default="", help="write and lock a PID file here")
    p.add_argument("--daemon", action="store_true", help="detach and run in the background")


@dataclass(frozen=True)
class ProcessConfig:
    """How a daemon logs and runs as a process."""

    log_level: str = "info"
    log_format: str = "text"
    log_file: str = ""
    pidfile: str = ""
    daemon: bool = False


def process_config(ns: Any) -> ProcessConfig:
    if ns.daemon and not ns.log_file:
        raise InvalidArgument("--daemon needs --log-file: a daemon's stderr goes nowhere")
    return ProcessConfig(ns.log_level, ns.log_format, ns.log_file, ns.pidfile, ns.daemon)
