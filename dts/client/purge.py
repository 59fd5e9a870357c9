"""dts-client purge: delete old final jobs now (the admin role, when tokens are required)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dts.client.args import PROG, SubParser
from dts.domain import FINAL_STATUSES, JobStatus
from dts.errors import InvalidArgument
from dts.limits import parse_duration

if TYPE_CHECKING:
    from dts.client.cli import Cli

HELP = "delete final jobs that finished longer ago than a duration (admin)"
FINAL_NAMES = ", ".join(s.value for s in sorted(FINAL_STATUSES))


def duration(text: str) -> float:
    """An argparse type: a duration such as 30d, 12h, 90m."""
    try:
        return parse_duration(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def final_status(text: str) -> JobStatus:
    """An argparse type: a final status; any other is refused (only final jobs are purged)."""
    try:
        status = JobStatus(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--status must be one of {FINAL_NAMES}, got {text!r}"
        ) from None
    if not status.final:
        raise argparse.ArgumentTypeError(
            f"only final jobs are purged: --status must be one of {FINAL_NAMES}, got {text!r}"
        )
    return status


def add_parsers(sub: argparse._SubParsersAction[SubParser]) -> None:
    p = sub.add_parser("purge", help=HELP, prog=f"{PROG} purge")
    p.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="DURATION",
        help="jobs that finished longer ago than this (30d, 12h, 90m ...)",
    )
    p.add_argument(
        "--status",
        type=final_status,
        action="append",
        default=[],
        metavar="STATUS",
        help=f"only jobs in this final status ({FINAL_NAMES}); may be repeated",
    )
    p.add_argument("--queue", default="", help="only jobs of this queue")


def purge(cli: Cli, ns: argparse.Namespace) -> int:
    purged = cli.client.purge(ns.older_than, sorted(set(ns.status)), ns.queue)
    cli.out({"purged": purged}, f"purged {purged} jobs")
    return 0
