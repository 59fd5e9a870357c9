"""dts-client: submit jobs and read their status, output and history (text or --json)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dts.channel import DEFAULT_SERVER, add_channel_options, channel_security, server_addresses
from dts.client import Client, follow, purge, queues, schedules
from dts.client.args import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROG,
    SUBMIT_DEFAULTS,
    SUBMIT_FALLBACK,
    SubParser,
    UsageError,
    add_command_argument,
    add_spec_options,
    checked,
    command_words,
    fill_spec_defaults,
    int_in,
    job_id,
    spec_from,
    with_command,
)
from dts.client.parsers import EXAMPLES, finish, late_argv
from dts.client.render import (
    attempt_json,
    by_server,
    fit,
    job_json,
    last_column_width,
    ran_text,
    short,
    stats_json,
    status_fields,
    table,
    utc,
    worker_json,
)
from dts.client.sending import submit_all, warn_unserved
from dts.client.unique import add_unique_option, note_existing, unique_spec, with_existing
from dts.client.workflow import (
    add_dependency_options,
    edges_json,
    status_lines,
    submit_workflow,
    with_dependencies,
)
from dts.domain import Job, JobStatus
from dts.errors import DtsError, InvalidArgument, Unavailable
from dts.options import checkout_client_conf, new_parser

# Commands of their own modules: name -> the function that runs it (see `command_parser`).
HANDLERS: dict[str, Callable[[Cli, argparse.Namespace], int]] = {}
HANDLERS["queues"] = queues.show_queues
HANDLERS["queue"] = queues.change_queue
HANDLERS["wait"] = follow.wait_command


# ---- parser -----------------------------------------------------------------------------------


COMMANDS = {
    "submit": "submit a job (or many with --from-file)",
    "status": "show a job",
    "list": "recent jobs, newest first",
    "history": "every attempt of a job",
    "logs": "captured stdout/stderr of a job's latest (or K-th) attempt",
    "cancel": "cancel a job",
    "retry": "queue a failed or cancelled job again",
    "workers": "registered workers",
    "stats": "job counts by status and queue",
    "ping": "exit 0 when the server is serving (alias: health)",
    "wait": follow.HELP,
    "purge": purge.HELP,
    "queues": queues.COMMANDS["queues"],
    "queue": queues.COMMANDS["queue"],
    "schedule": schedules.HELP,
}
GLOBAL_WITH_VALUE = {
    "--server",
    "--rpc-timeout",
    "-c",
    "--config",
    "--token-file",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    *SUBMIT_FALLBACK,
}


def global_parser() -> argparse.ArgumentParser:
    """Options before the command; these also come from DTS_* variables and client.conf."""
    p = new_parser(
        PROG,
        "Submit jobs to dts and read their status, output and history.",
        EXAMPLES[""],
        more_config_files=checkout_client_conf(),  # `make run`'s cluster, in a checkout
    )
    p.usage = f"{PROG} [--server HOST:PORT] [--json] COMMAND ... (global options also after it)"
    settings_and_examples = p.epilog
    p.epilog = "commands:\n" + "\n".join(f"  {k:<9} {v}" for k, v in COMMANDS.items())
    p.epilog += f"\n  ({PROG} COMMAND --help: its options and examples)\n\n"
    p.epilog += settings_and_examples
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help="dts-server address HOST:PORT, or the addresses of several, comma-separated",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--rpc-timeout", type=float, default=10.0, help="seconds to wait for a reply")
    add_channel_options(p)
    for flag, kind, text in SUBMIT_DEFAULTS:
        p.add_argument(
            flag,
            type=kind,
            default=SUBMIT_FALLBACK[flag],
            help=f"submit: {text}; a default that submit's own flag overrides",
        )
    return p


def split_command(argv: Sequence[str]) -> int:
    """Index of the command word in `argv` (len(argv) when there is none)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in GLOBAL_WITH_VALUE:
            i += 2
            continue
        if not token.startswith("-"):
            return i
        i += 1
    return len(argv)


def command_parser() -> argparse.ArgumentParser:
    """The commands and their own options (plain flags: no environment or config file)."""
    p = SubParser(prog=PROG, add_help=False)
    sub = p.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=SubParser, help="what to do"
    )
    sub.required = True

    s = sub.add_parser("submit", help=COMMANDS["submit"], prog=f"{PROG} submit")
    add_spec_options(s)
    s.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end, printing its output as it comes; exit with its exit code",
    )
    s.add_argument(
        "--from-file",
        metavar="FILE",
        help="one shell command a line ('-' for stdin), submitted in one call",
    )
    add_unique_option(s)
    add_dependency_options(s)
    add_command_argument(s)

    for name in ("status", "history", "cancel", "retry"):
        c = sub.add_parser(name, help=COMMANDS[name], prog=f"{PROG} {name}")
        c.add_argument("id", type=job_id, help="the job's id")

    lg = sub.add_parser("logs", help=COMMANDS["logs"], prog=f"{PROG} logs")
    lg.add_argument("id", type=job_id, help="the job's id")
    lg.add_argument(
        "--attempt",
        type=int_in(1, 1_000_000, "--attempt"),
        default=0,
        metavar="K",
        help="the K-th attempt's output (default: the latest)",
    )
    lg.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print the output as it is written until the job ends; exit with its exit code",
    )

    ls = sub.add_parser("list", help=COMMANDS["list"], prog=f"{PROG} list")
    ls.add_argument(
        "--status", choices=[s.value for s in JobStatus], help="only jobs in this status"
    )
    ls.add_argument("--queue", default="", help="only jobs of this queue")
    ls.add_argument("--name", default="", help="only jobs of exactly this name")
    ls.add_argument(
        "--before", type=job_id, default=0, metavar="ID", help="only jobs older than job ID"
    )
    ls.add_argument(
        "--limit", type=int_in(1, 10_000, "--limit"), default=50, help="at most this many jobs"
    )

    for name in ("workers", "stats"):
        sub.add_parser(name, help=COMMANDS[name], prog=f"{PROG} {name}")
    sub.add_parser("ping", help=COMMANDS["ping"], aliases=["health"], prog=f"{PROG} ping")
    purge.add_parsers(sub)
    follow.add_parsers(sub)
    queues.add_parsers(sub)
    schedules.add_parsers(sub)
    finish(p, global_parser())
    return p


HANDLERS["schedule"] = schedules.run_command


class Cli:
    def __init__(self, client: Client, as_json: bool) -> None:
        self.client = client
        self.as_json = as_json

    def out(self, value: Any, text: str) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(value, indent=2) + "\n")
        elif text:
            sys.stdout.write(text + "\n")

    def submit(self, ns: argparse.Namespace) -> int:
        cmd = command_words(ns)
        if ns.workflow:
            return submit_workflow(self, ns, with_dependencies(spec_from(ns), ns), cmd)
        base = with_dependencies(unique_spec(spec_from(ns), ns), ns)
        if ns.from_file:
            if cmd:
                raise UsageError("give either --from-file or a command, not both")
            specs = [replace(base, argv=(line,), shell=True) for line in _read_lines(ns.from_file)]
            if not specs:
                raise UsageError(f"no commands in {ns.from_file}")
        else:
            if not cmd:
                raise UsageError("no command given (submit [OPTIONS] -- COMMAND [ARG...])")
            specs = [with_command(base, cmd)]
        for spec in specs:
            checked(spec)
        jobs = submit_all(self.client, specs)
        warn_unserved(self.client)
        note_existing(jobs)
        if ns.wait:
            return self._wait_all(jobs)
        if self.as_json:
            self.out(
                with_existing(job_json(jobs[0]), jobs[0])
                if len(jobs) == 1 and not ns.from_file
                else [with_existing(job_json(j), j) for j in jobs],
                "",
            )
        else:
            sys.stdout.write("".join(f"{j.id}\n" for j in jobs))
        return 0

    def wait_json(self, ids: Sequence[int]) -> int:
        return self._wait_all([self.client.get(i) for i in ids])

    def _wait_all(self, jobs: Sequence[Job]) -> int:
        if not self.as_json:  # the output as it comes; notes on stderr
            return follow.follow_all(self.client, [j.id for j in jobs], "submit")
        code = 0
        results = []
        for job in jobs:
            final = self.client.wait(job.id)
            out = self.client.logs(job.id) if final.attempts else None
            if self.as_json:
                obj = with_existing(job_json(final), job)
                obj["stdout"] = out.stdout.decode(errors="replace") if out else ""
                obj["stderr"] = out.stderr.decode(errors="replace") if out else ""
                results.append(obj)
            elif out:
                sys.stdout.buffer.write(out.stdout)
                sys.stdout.flush()
                sys.stderr.buffer.write(out.stderr)
                sys.stderr.flush()
            if code == 0:
                code = wait_exit_code(final)
        if self.as_json:
            self.out(results[0] if len(results) == 1 else results, "")
        return code

    def status(self, ns: argparse.Namespace) -> int:
        job = self.client.get(ns.id)
        obj = job_json(job)
        fields = status_fields(job)
        width = max(len(k) for k, _ in fields) + 1
        lines = [f"{k + ':':<{width}} {v}".rstrip() for k, v in fields]
        lines += status_lines(job, width)
        obj["waits_for"], obj["waited_by"] = edges_json(job.waits_for), edges_json(job.waited_by)
        self.out(obj, "\n".join(lines))
        return 0

    def list(self, ns: argparse.Namespace) -> int:
        status = JobStatus(ns.status) if ns.status else None
        jobs = self.client.list_jobs(status, ns.queue, ns.limit, name=ns.name, before_id=ns.before)
        named = any(j.spec.name for j in jobs)  # a NAME column only when a job has a name
        rows = [
            (
                j.id,
                j.status,
                j.spec.queue,
                j.spec.priority,
                j.attempts,
                "" if j.exit_code is None else j.exit_code,
                short(j.created_at),
                *((j.spec.name or "-",) if named else ()),
                j.spec.display,
            )
            for j in jobs
        ]
        head: tuple[str, ...] = ("ID", "STATUS", "QUEUE", "PRI", "ATTEMPTS", "EXIT", utc("CREATED"))
        head += ("NAME", "COMMAND") if named else ("COMMAND",)
        room = last_column_width(rows, head)
        rows = [(*r[:-1], fit(str(r[-1]), room)) for r in rows]
        self.out([job_json(j) for j in jobs], table(rows, head) if jobs else "no jobs")
        return 0

    def history(self, ns: argparse.Namespace) -> int:
        attempts = self.client.history(ns.id)
        rows = [
            (
                a.attempt,
                a.outcome,
                a.worker,
                short(a.started_at),
                short(a.finished_at),
                ran_text(a),
                "" if a.exit_code is None else a.exit_code,
                a.error,
            )
            for a in attempts
        ]
        head = ("ATTEMPT", "OUTCOME", "WORKER", utc("STARTED"), utc("FINISHED"), "RAN", "EXIT")
        text = table(rows, (*head, "ERROR")) if attempts else f"job {ns.id} has not started yet"
        self.out([attempt_json(a) for a in attempts], text)
        return 0

    def logs(self, ns: argparse.Namespace) -> int:
        if ns.follow and not self.as_json:
            return follow.logs_follow(self, ns.id, ns.attempt)
        if ns.follow:  # --json: the output once the job has ended
            self.client.wait(ns.id)
        out, running = self.client.logs_now(ns.id, ns.attempt)
        if running:
            sys.stderr.write(follow.running_note(ns.id, out.attempt) + "\n")
        if self.as_json:
            self.out(
                {
                    "job_id": ns.id,
                    "attempt": out.attempt,
                    "stdout": out.stdout.decode(errors="replace"),
                    "stderr": out.stderr.decode(errors="replace"),
                    "running": running,
                },
                "",
            )
            return 0
        sys.stdout.buffer.write(out.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(out.stderr)
        sys.stderr.flush()
        return 0

    def cancel(self, ns: argparse.Namespace) -> int:
        job = self.client.cancel(ns.id)
        self.out(job_json(job), f"{job.id} {job.status}")
        return 0

    def retry(self, ns: argparse.Namespace) -> int:
        job = self.client.retry(ns.id)
        self.out(job_json(job), f"{job.id} {job.status}")
        return 0

    def workers(self, ns: argparse.Namespace) -> int:
        ws = self.client.workers()
        rows = [
            (
                w.name,
                w.host,
                w.state,
                w.running,
                w.concurrency,
                ",".join(w.queues),
                short(w.last_heartbeat),
                w.server or "-",
            )
            for w in ws
        ]
        head = (
            "NAME",
            "HOST",
            "STATE",
            "RUNNING",
            "SLOTS",
            "QUEUES",
            utc("LAST_HEARTBEAT"),
            "SERVER",
        )
        text = table(rows, head) if ws else "no workers"
        self.out([worker_json(w) for w in ws], text)
        return 0

    def stats(self, ns: argparse.Namespace) -> int:
        counts = self.client.stats()
        obj = stats_json(counts)
        obj["workers_by_server"] = by_server(self.client.workers())
        lines = [f"{s + ':':<11} {n}" for s, n in obj["by_status"].items()]
        lines.append(f"{'total:':<11} {obj['total']}")
        if counts:
            lines += [
                "",
                table([(c.queue, c.status, c.count) for c in counts], ("QUEUE", "STATUS", "COUNT")),
            ]
        if obj["workers_by_server"]:
            rows = list(obj["workers_by_server"].items())
            lines += ["", table(rows, ("SERVER", "WORKERS"))]
        self.out(obj, "\n".join(lines))
        return 0

    def ping(self, ns: argparse.Namespace) -> int:
        """One server: its status. Several: each one's, on a line of its own; serving means
        all of them are."""
        each = self.client.health_of_each()
        if len(each) == 1 and isinstance(each[0][1], DtsError):
            raise each[0][1]
        said = [_said(address, status) for address, status in each]
        if len(said) == 1:
            self.out(said[0], said[0]["status"])
        else:
            self.out(said, "\n".join(" ".join(one.values()) for one in said))
        return 0 if all(one["status"] == "SERVING" for one in said) else 1

    health = ping


def _said(address: str, status: str | DtsError) -> dict[str, str]:
    """What ping says of one server: its health status, or the error code and message."""
    if isinstance(status, DtsError):
        return {"server": address, "status": status.code, "error": status.message}
    return {"server": address, "status": status}


wait_exit_code = follow.exit_code  # `submit --wait`'s exit code


def _read_lines(path: str) -> list[str]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    at = split_command(args)
    gp = global_parser()
    g = gp.parse_args(args[:at])
    if at == len(args):
        gp.error(f"missing COMMAND (one of: {', '.join(COMMANDS)})")
    ns = command_parser().parse_args(args[at:])
    late = late_argv(ns, gp)
    if late:  # global options after the command: as if given before it
        g = gp.parse_args(args[:at] + late)
    ns.server, ns.json, ns.rpc_timeout = g.server, g.json, g.rpc_timeout
    fill_spec_defaults(ns, g)
    try:
        server_addresses(ns.server)
        if not 0 < ns.rpc_timeout < 86400:
            raise InvalidArgument(f"--rpc-timeout must be between 0 and 86400, got {g.rpc_timeout}")
        client = Client(ns.server, timeout=ns.rpc_timeout, security=channel_security(g))
    except InvalidArgument as e:
        gp.error(str(e))
    cli = Cli(client, ns.json)
    try:
        handler = HANDLERS.get(ns.command)
        if handler is not None:
            return handler(cli, ns)
        return int(getattr(cli, ns.command.replace("-", "_"))(ns))
    except UsageError as e:
        sys.stderr.write(f"{PROG} {ns.command}: error: {e}\n")
        return EXIT_USAGE
    except DtsError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return exit_code_for(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        client.close()


HANDLERS["purge"] = purge.purge


def exit_code_for(err: DtsError) -> int:
    if isinstance(err, InvalidArgument):
        return EXIT_USAGE
    if isinstance(err, Unavailable):
        return EXIT_UNAVAILABLE
    return 1


if __name__ == "__main__":
    sys.exit(main())
