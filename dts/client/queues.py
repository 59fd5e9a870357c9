"""dts-client's queue controls: `queues` (each queue's counts, setting and workers) and
`queue pause|resume|limit NAME` (workers take no new job from a paused queue; a limit caps
its running jobs across all workers)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dts.client.args import PROG, SubParser, UsageError
from dts.client.render import table
from dts.controls import MAX_RUN_LIMIT, QueueInfo
from dts.domain import validate_queue_name
from dts.errors import InvalidArgument

if TYPE_CHECKING:
    from dts.client.cli import Cli

COMMANDS = {
    "queues": "each queue: jobs queued, running, scheduled; paused, limit, workers",
    "queue": "pause, resume or limit a queue (queue pause|resume|limit NAME ...)",
}


def run_limit(text: str) -> int | None:
    """`queue limit`'s N: a positive number of jobs, or 'none'."""
    if text == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"limit must be a positive integer or 'none', got {text!r}"
        ) from None
    if not 1 <= value <= MAX_RUN_LIMIT:
        raise argparse.ArgumentTypeError(
            f"limit must be between 1 and {MAX_RUN_LIMIT} (or 'none'), got {value}"
        )
    return value


def add_parsers(sub: Any) -> None:
    """`queues` and `queue ACTION NAME [N]` on dts-client's subparsers."""
    sub.add_parser("queues", help=COMMANDS["queues"], prog=f"{PROG} queues")
    q = sub.add_parser("queue", help=COMMANDS["queue"], prog=f"{PROG} queue")
    actions = q.add_subparsers(
        dest="action", metavar="ACTION", parser_class=SubParser, help="what to do to the queue"
    )
    actions.required = True
    for action, text in (
        ("pause", "workers take no new job from the queue (running ones finish)"),
        ("resume", "workers take the queue's jobs again"),
    ):
        a = actions.add_parser(action, help=text, prog=f"{PROG} queue {action}")
        a.add_argument("name", metavar="NAME", help="the queue")
    lim = actions.add_parser(
        "limit",
        help="at most N of the queue's jobs run at once, across all workers ('none': any)",
        prog=f"{PROG} queue limit",
    )
    lim.add_argument("name", metavar="NAME", help="the queue")
    lim.add_argument(
        "limit", metavar="N|none", type=run_limit, help="most jobs running at once; none: no cap"
    )


def queue_json(q: QueueInfo) -> dict[str, Any]:
    return {
        "queue": q.name,
        "queued": q.queued,
        "running": q.running,
        "scheduled": q.scheduled,
        "waiting": q.waiting,
        "paused": q.paused,
        "limit": q.limit,
        "workers": list(q.workers),
    }


def show_queues(cli: Cli, ns: argparse.Namespace) -> int:
    queues = cli.client.queues()
    rows = [
        (
            q.name,
            q.queued,
            q.running,
            q.scheduled,
            q.waiting,
            "yes" if q.paused else "no",
            "-" if q.limit is None else q.limit,
            ",".join(q.workers) or "-",
        )
        for q in queues
    ]
    head = ("QUEUE", "QUEUED", "RUNNING", "SCHEDULED", "WAITING", "PAUSED", "LIMIT", "WORKERS")
    cli.out([queue_json(q) for q in queues], table(rows, head) if queues else "no queues")
    return 0


def change_queue(cli: Cli, ns: argparse.Namespace) -> int:
    try:
        validate_queue_name(ns.name)
    except InvalidArgument as e:
        raise UsageError(str(e)) from None
    if ns.action == "pause":
        info = cli.client.pause_queue(ns.name)
        said = f"queue {info.name} paused"
    elif ns.action == "resume":
        info = cli.client.resume_queue(ns.name)
        said = f"queue {info.name} resumed"
    else:
        info = cli.client.set_queue_limit(ns.name, ns.limit)
        said = f"queue {info.name} limit {'none' if info.limit is None else info.limit}"
    cli.out(queue_json(info), said)
    return 0
