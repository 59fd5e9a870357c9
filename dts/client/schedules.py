"""dts-client schedule ...: add, list, show, pause, resume, remove, run and apply schedules
(recurring jobs), over the Schedules service."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dts import wire
from dts.client.args import (
    PROG,
    SubParser,
    UsageError,
    add_spec_options,
    command_words,
    spec_from,
    with_command,
)
from dts.client.render import iso, job_json, limits_json, short, stamp, table, utc
from dts.client.schedule_file import read_schedules
from dts.domain import Job
from dts.errors import InvalidArgument
from dts.limits import parse_duration
from dts.schedule import Catchup, Overlap, Schedule, validate_schedule
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from dts.wire_schedule import schedule_from_pb, schedule_to_pb

if TYPE_CHECKING:
    from dts.client.cli import Cli

HELP = "recurring jobs: add, list, show, pause, resume, remove, run, apply"
UPCOMING = 5  # next due times `show` prints
SHOWN_JOBS = 10  # latest jobs `show` prints


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class ScheduleParser(SubParser):
    """A subcommand parser that takes everything after `--` as the job's command (NAME comes
    first and options follow it, so argparse's REMAINDER would swallow the options)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(args or [])
        cmd: list[str] = []
        if "--" in words:
            at = words.index("--")
            words, cmd = words[:at], words[at + 1 :]
        ns, extras = super().parse_known_args(words, namespace)
        ns.cmd = cmd
        return ns, extras


def add_parsers(sub: Any) -> None:
    """The `schedule` command and its own subcommands."""
    p = sub.add_parser("schedule", help=HELP, prog=f"{PROG} schedule")
    cmds = p.add_subparsers(
        dest="schedule_command",
        metavar="SUBCOMMAND",
        parser_class=ScheduleParser,
        help="what to do",
    )
    cmds.required = True
    a = cmds.add_parser("add", help="add a schedule", prog=f"{PROG} schedule add")
    a.add_argument("schedule_name", metavar="NAME", help="the schedule's name (its jobs' too)")
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="a 5-field cron expression, e.g. '0 3 * * *'")
    when.add_argument("--every", type=duration, metavar="DURATION", help="30s, 5m, 1h, 1d")
    a.add_argument("--tz", default="UTC", help="time zone of the cron expression (default UTC)")
    a.add_argument(
        "--catchup",
        choices=[c.value for c in Catchup],
        default=Catchup.LAST.value,
        help="due times missed while no server ran: skip them, run the latest (default), "
        "or run each (at most 100)",
    )
    a.add_argument(
        "--overlap",
        choices=[o.value for o in Overlap],
        default=Overlap.ALLOW.value,
        help="skip: no new job while the last one is not final (default: allow)",
    )
    add_spec_options(a)
    # a schedule's jobs start at their due time: --delay is refused (`_add`)
    delay = a._option_string_actions["--delay"]
    delay.dest, delay.help = "schedule_delay", argparse.SUPPRESS
    a.set_defaults(delay=None, schedule_delay=None)
    a.usage = (
        f"{PROG} schedule add NAME (--cron EXPR | --every DURATION) [OPTIONS] -- COMMAND [ARG...]"
    )
    cmds.add_parser("list", help="every schedule", prog=f"{PROG} schedule list")
    for name, text in (
        ("show", "a schedule, its next due times and latest jobs"),
        ("pause", "make no jobs until resumed"),
        ("resume", "due again from the next due time after now"),
        ("remove", "remove a schedule (its jobs stay)"),
        ("run", "one job now; prints its id"),
    ):
        c = cmds.add_parser(name, help=text, prog=f"{PROG} schedule {name}")
        c.add_argument("schedule_name", metavar="NAME", help="the schedule")
    ap = cmds.add_parser(
        "apply", help="make a TOML file's schedules the truth", prog=f"{PROG} schedule apply"
    )
    ap.add_argument("file", metavar="FILE", help="TOML file of [schedules.NAME] tables")
    ap.add_argument("--prune", action="store_true", help="remove schedules the file does not name")
    ap.add_argument(
        "--dry-run", action="store_true", help="print what would change; change nothing"
    )


def run_command(cli: Cli, ns: argparse.Namespace) -> int:
    """`dts-client schedule SUBCOMMAND`."""
    return int(COMMANDS[ns.schedule_command](cli, ns))


class Api:
    """The Schedules service, through the client's channel and its error mapping."""

    def __init__(self, cli: Cli) -> None:
        self.client = cli.client
        self.stub = pb_grpc.SchedulesStub(cli.client.channel)

    def call(self, method: str, request: Any) -> Any:
        return self.client._call(getattr(self.stub, method), request)


def _add(cli: Cli, ns: argparse.Namespace) -> int:
    if ns.schedule_delay is not None:
        raise UsageError("--delay makes no sense for a schedule: its jobs start at their due times")
    cmd = command_words(ns)
    if not cmd:
        raise UsageError("no command given (schedule add NAME --cron EXPR|--every D -- COMMAND)")
    ns.delay = 0.0
    s = Schedule(
        name=ns.schedule_name,
        spec=with_command(spec_from(ns), cmd),
        cron=ns.cron or "",
        every=ns.every or 0.0,
        tz=ns.tz,
        catchup=Catchup(ns.catchup),
        overlap=Overlap(ns.overlap),
    )
    _checked(s)
    req = pb.ScheduleAddRequest(schedule=schedule_to_pb(s))
    added = schedule_from_pb(Api(cli).call("AddSchedule", req))
    said = f"schedule {added.name} added; next due {_when(added.next_due, stamp)}"
    cli.out(schedule_json(added), said)
    return 0


def _list(cli: Cli, ns: argparse.Namespace) -> int:
    resp = Api(cli).call("ListSchedules", pb.ScheduleListRequest())
    found = [schedule_from_pb(m) for m in resp.schedules]
    rows = [
        (
            s.name,
            s.when,
            "paused" if s.paused else "active",
            "-" if s.paused else _when(s.next_due),
            s.catchup,
            s.overlap,
            s.spec.name or s.spec.display[:50],
        )
        for s in found
    ]
    head = ("NAME", "WHEN", "STATE", utc("NEXT"), "CATCHUP", "OVERLAP", "COMMAND")
    cli.out([schedule_json(s) for s in found], table(rows, head) if found else "no schedules")
    return 0


def _show(cli: Cli, ns: argparse.Namespace) -> int:
    req = pb.ScheduleGetRequest(name=ns.schedule_name, upcoming=UPCOMING, jobs=SHOWN_JOBS)
    resp = Api(cli).call("GetSchedule", req)
    s = schedule_from_pb(resp.schedule)
    times = list(resp.upcoming)
    jobs = [wire.job_from_pb(j) for j in resp.jobs]
    obj = schedule_json(s)
    obj["upcoming"] = [iso(t) for t in times]
    obj["jobs"] = [job_json(j) for j in jobs]
    fields = [
        ("name", s.name),
        ("when", s.when),
        ("state", "paused" if s.paused else "active"),
        ("command", s.spec.display),
        ("queue", s.spec.queue),
        ("priority", s.spec.priority),
        ("catchup", s.catchup),
        ("overlap", s.overlap),
        ("skips", f"{s.skips}" + (f" (last {stamp(s.last_skip_at)})" if s.last_skip_at else "")),
        ("created_at", stamp(s.created_at)),
    ]
    lines = [f"{k + ':':<11} {v}" for k, v in fields]
    lines.append(
        "next:" if times else "next:       none (paused)" if s.paused else "next:       none"
    )
    lines += [f"  {stamp(t)}" for t in times]
    rows = [(j.id, _due(j), j.status, "" if j.exit_code is None else j.exit_code) for j in jobs]
    lines += ["", table(rows, ("JOB", utc("DUE"), "STATUS", "EXIT")) if jobs else "no jobs yet"]
    cli.out(obj, "\n".join(lines))
    return 0


def _state(method: str, said: str) -> Any:
    def change(cli: Cli, ns: argparse.Namespace) -> int:
        s = schedule_from_pb(Api(cli).call(method, pb.ScheduleRef(name=ns.schedule_name)))
        cli.out(schedule_json(s), f"schedule {s.name} {said}")
        return 0

    return change


def _run(cli: Cli, ns: argparse.Namespace) -> int:
    job = wire.job_from_pb(Api(cli).call("RunSchedule", pb.ScheduleRef(name=ns.schedule_name)))
    cli.out(job_json(job), str(job.id))
    return 0


def _apply(cli: Cli, ns: argparse.Namespace) -> int:
    wanted = read_schedules(ns.file)
    req = pb.ScheduleApplyRequest(
        schedules=[schedule_to_pb(s) for s in wanted], prune=ns.prune, dry_run=ns.dry_run
    )
    resp = Api(cli).call("ApplySchedules", req)
    changes = [(c.name, c.change) for c in resp.changes]
    lines = [f"{change:<9} {name}" for name, change in changes] or ["no schedules"]
    if ns.dry_run:
        lines.append("dry run: nothing changed")
    obj = {"dry_run": ns.dry_run, "changes": [{"name": n, "change": c} for n, c in changes]}
    cli.out(obj, "\n".join(lines))
    return 0


COMMANDS = {
    "add": _add,
    "list": _list,
    "show": _show,
    "pause": _state("PauseSchedule", "paused"),
    "resume": _state("ResumeSchedule", "resumed"),
    "remove": _state("RemoveSchedule", "removed"),
    "run": _run,
    "apply": _apply,
}


def _checked(s: Schedule) -> None:
    try:
        validate_schedule(s)
    except InvalidArgument as e:
        raise UsageError(str(e)) from None


def _when(t: float, shown: Callable[[float], str] = short) -> str:
    return "never" if math.isinf(t) else shown(t)


def _due(job: Job) -> str:
    return short(job.due_at) if job.due_at else "(run by hand)"


def schedule_json(s: Schedule) -> dict[str, Any]:
    return {
        "name": s.name,
        "cron": s.cron or None,
        "every": s.every or None,
        "tz": s.tz,
        "catchup": s.catchup.value,
        "overlap": s.overlap.value,
        "paused": s.paused,
        "next_due": None if s.paused or math.isinf(s.next_due) else iso(s.next_due),
        "skips": s.skips,
        "last_skip_at": iso(s.last_skip_at),
        "command": s.spec.display,
        "argv": list(s.spec.argv),
        "shell": s.spec.shell,
        "queue": s.spec.queue,
        "priority": s.spec.priority,
        "max_retries": s.spec.max_retries,
        "timeout": s.spec.timeout,
        "env": dict(s.spec.env),
        "cwd": s.spec.cwd,
        "job_name": s.spec.name,
        "limits": limits_json(s.spec.limits),
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }
