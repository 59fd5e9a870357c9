"""dts-client's command-line building blocks: the usage error, argument types, and the job
options (submit's) that every command making jobs takes, turned into a JobSpec."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from dts.domain import MAX_PRIORITY, MIN_PRIORITY, JobSpec, validate_spec
from dts.errors import InvalidArgument
from dts.limits import LIMITS, Limits, LimitUnit
from dts.options import limit_arg

PROG = "dts-client"
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class UsageError(Exception):
    """A bad command line (exit code 2)."""


class SubParser(argparse.ArgumentParser):
    """Subcommand parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def seconds(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number of seconds") from None
        if not value >= 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must not be negative, got {text}")
        return value

    return parse


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env takes KEY=VALUE, got {text!r}")
    return key, value


def job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"job id must be a positive integer, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"job id must be a positive integer, got {text!r}")
    return value


# submit options that may also come from DTS_* variables, client.conf or a global flag
SUBMIT_DEFAULTS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--queue", str, "queue name"),
    ("--priority", int_in(MIN_PRIORITY, MAX_PRIORITY, "--priority"), "0 (lowest) to 9"),
    ("--retries", int_in(0, 1000, "--retries"), "re-runs after a failure"),
    ("--backoff", seconds("--backoff"), "seconds before the first retry, doubling after"),
    ("--timeout", seconds("--timeout"), "seconds an attempt may run, 0 = none"),
    ("--delay", seconds("--delay"), "do not start before this many seconds from now"),
)
# None: the server's default applies
SUBMIT_FALLBACK: dict[str, Any] = {
    "--queue": "default",
    "--priority": 0,
    "--retries": None,
    "--backoff": None,
    "--timeout": None,
    "--delay": 0.0,
}
# submit's limit options: the one the worker keeps itself (output) first, then the kernel's
SUBMIT_LIMITS = tuple(sorted(LIMITS, key=lambda limit: bool(limit.rlimit)))
LIMIT_METAVARS = {LimitUnit.SECONDS: "SECONDS", LimitUnit.SIZE: "SIZE", LimitUnit.COUNT: "N"}


def add_spec_options(p: argparse.ArgumentParser) -> None:
    """The options of a job's spec (submit's), each None/empty unless given; the global
    defaults fill in what is not (`fill_spec_defaults`)."""
    for flag, kind, text in SUBMIT_DEFAULTS:
        p.add_argument(flag, type=kind, default=None, help=f"{text} (default: see {PROG} -h)")
    p.add_argument(
        "--env",
        type=env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable)",
    )
    p.add_argument("--cwd", default="", help="working directory on the worker")
    p.add_argument("--name", default="", help="label shown in listings")
    # resource limits: a job can lower its worker's (dts-worker --max-*), not raise them
    for limit in SUBMIT_LIMITS:
        p.add_argument(
            limit.flag,
            type=limit_arg(limit.unit),
            default=0,
            metavar=LIMIT_METAVARS[limit.unit],
            help=limit.submit_help,
        )
    p.add_argument("--shell", action="store_true", help="run the single string with /bin/sh -c")
    p.set_defaults(takes_spec=True)


def add_command_argument(p: argparse.ArgumentParser) -> None:
    """The job's command: everything after the options (conventionally after --)."""
    p.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG...]",
        help="the command and its arguments (one string with --shell)",
    )


def fill_spec_defaults(ns: argparse.Namespace, global_ns: argparse.Namespace) -> None:
    """Spec options a command did not give take the global ones (flag, DTS_*, client.conf)."""
    if not getattr(ns, "takes_spec", False):
        return
    for flag in SUBMIT_FALLBACK:
        key = flag[2:].replace("-", "_")
        if getattr(ns, key) is None:
            setattr(ns, key, getattr(global_ns, key))


def command_words(ns: argparse.Namespace) -> list[str]:
    """The command given after the options, without a leading --."""
    cmd = list(ns.cmd)
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def spec_from(ns: argparse.Namespace) -> JobSpec:
    """The spec the options describe, without a command yet (see `with_command`)."""
    return JobSpec(
        argv=(),
        shell=ns.shell,
        queue=ns.queue,
        priority=ns.priority,
        max_retries=ns.retries,
        backoff=ns.backoff,
        timeout=ns.timeout,
        delay=ns.delay,
        env=tuple(ns.env),
        cwd=ns.cwd,
        name=ns.name,
        limits=Limits(**{f.name: getattr(ns, f.dest) for f in LIMITS}),
    )


def with_command(base: JobSpec, cmd: Sequence[str]) -> JobSpec:
    """`base` running `cmd` (joined into one string for --shell)."""
    return replace(base, argv=(" ".join(cmd),) if base.shell else tuple(cmd))


def checked(spec: JobSpec) -> JobSpec:
    """`spec` if the server would take it, else UsageError naming the rule it breaks."""
    try:
        validate_spec(spec)
    except InvalidArgument as e:
        raise UsageError(str(e)) from None
    return spec
