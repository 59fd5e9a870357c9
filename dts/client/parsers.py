"""The finishing of dts-client's command parsers: examples at the end of every help page, and
the global options (--json, --server, token, TLS ...) that each command also takes after its
name, handed back to the global parser so they mean exactly what they mean before it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from dts.client.args import PROG
from dts.options import HelpFormatter

LATE = "late_"  # dest prefix of a global option given after the command

# Examples of each command's help page, by the words after `dts-client`.
EXAMPLES: dict[str, str] = {
    "": """\
  dts-client submit -- echo hello                   # prints the new job id
  dts-client submit --wait --shell -- 'make -C /src all | tail -1'
  dts-client status 42 --json
  dts-client list --status failed --server h1:50051,h2:50051
  dts-client -c .run/client.conf workers            # the cluster `make run` started""",
    "submit": """\
  dts-client submit -- echo hello
  dts-client submit --shell -- 'make -C /src all | tail -1'
  dts-client submit --retries 3 --backoff 2 --timeout 600 --queue builds --priority 7 -- ./build.sh
  dts-client submit --delay 60 --env MODE=nightly --cwd /srv/app --name nightly -- ./run.sh
  dts-client submit --max-cpu 600 --max-memory 2G -- ./build.sh
  dts-client submit --wait -- ./check.sh            # exits with the job's exit code
  dts-client submit --from-file jobs.txt            # one shell command a line, one id a line
  dts-client submit --unique nightly --after 41 -- ./report.sh""",
    "status": """\
  dts-client status 42
  dts-client status 42 --json""",
    "list": """\
  dts-client list
  dts-client list --status failed --queue builds --limit 20
  dts-client list --name nightly --before 1200          # the next page: ids below 1200
  dts-client list --json""",
    "history": """\
  dts-client history 42""",
    "logs": """\
  dts-client logs 42                                # stdout to stdout, stderr to stderr
  dts-client logs 42 --attempt 2""",
    "cancel": """\
  dts-client cancel 42""",
    "retry": """\
  dts-client retry 42""",
    # `wait` comes with live output (issue 16): its examples are ready for it
    "wait": """\
  dts-client wait 42                                # exits with the job's exit code
  dts-client wait 42 43 44                          # the first non-zero of them""",
    "workers": """\
  dts-client workers
  dts-client workers --json""",
    "stats": """\
  dts-client stats""",
    "ping": """\
  dts-client ping
  dts-client ping --server h1:50051,h2:50051        # one line per server""",
    "purge": """\
  dts-client purge --older-than 30d
  dts-client purge --older-than 12h --status failed --queue builds""",
    "queues": """\
  dts-client queues""",
    "queue": """\
  dts-client queue pause gpu
  dts-client queue resume gpu
  dts-client queue limit gpu 4
  dts-client queue limit gpu none""",
    "queue pause": """\
  dts-client queue pause gpu""",
    "queue resume": """\
  dts-client queue resume gpu""",
    "queue limit": """\
  dts-client queue limit gpu 4
  dts-client queue limit gpu none""",
    "schedule": """\
  dts-client schedule add nightly --cron '0 3 * * *' --tz Europe/Paris -- ./nightly.sh
  dts-client schedule list
  dts-client schedule apply schedules.toml --prune""",
    "schedule add": """\
  dts-client schedule add nightly --cron '0 3 * * *' --tz Europe/Paris -- ./nightly.sh
  dts-client schedule add poll --every 5m --overlap skip --shell -- 'curl -fsS $URL'""",
    "schedule list": """\
  dts-client schedule list""",
    "schedule show": """\
  dts-client schedule show nightly""",
    "schedule pause": """\
  dts-client schedule pause nightly""",
    "schedule resume": """\
  dts-client schedule resume nightly""",
    "schedule remove": """\
  dts-client schedule remove nightly""",
    "schedule run": """\
  dts-client schedule run nightly""",
    "schedule apply": """\
  dts-client schedule apply schedules.toml
  dts-client schedule apply schedules.toml --prune --dry-run""",
}


def subparsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`p`'s command parsers and theirs, each once (aliases share one)."""
    seen: set[int] = set()
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child
                    yield from subparsers(child)


def late_options(global_parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The global options a command also takes after its name: all but help, version and the
    submit defaults (submit has those of its own)."""
    skipped = {"--queue", "--priority", "--retries", "--backoff", "--timeout", "--delay"}
    return [
        a
        for a in global_parser._actions
        if a.option_strings
        and a.dest not in ("help", "version")
        and not skipped & set(a.option_strings)
    ]


def finish(commands: argparse.ArgumentParser, global_parser: argparse.ArgumentParser) -> None:
    """Give every command parser its examples and the global options it lacks."""
    late = late_options(global_parser)
    for p in subparsers(commands):
        words = p.prog.removeprefix(PROG).strip()
        examples = EXAMPLES.get(words)
        if examples:
            p.epilog = f"examples:\n{examples}"
        p.formatter_class = HelpFormatter
        p.usage = _with_globals(p.format_usage().removeprefix("usage: ").rstrip("\n"))
        group = p.add_argument_group("global options (also accepted before the command)")
        for a in late:
            flags = [f for f in a.option_strings if f not in p._option_string_actions]
            if not flags:
                continue
            if a.nargs == 0:
                group.add_argument(
                    *flags, dest=LATE + a.dest, action="store_const", const=True, help=a.help
                )
            else:
                metavar = a.metavar or a.dest.upper()
                group.add_argument(*flags, dest=LATE + a.dest, metavar=metavar, help=a.help)
            group._group_actions[-1].default = argparse.SUPPRESS


def _with_globals(usage: str) -> str:
    """`usage` naming the global options in one word (they would double its length), before
    the job's command where it has one: after `--` every word is the command's."""
    for command in (" -- COMMAND", " ..."):
        at = usage.rfind(command)
        if at >= 0 and usage[at:].strip() in (command.strip(), "-- COMMAND [ARG...]"):
            return f"{usage[:at]} [GLOBAL OPTIONS]{usage[at:]}"
    return f"{usage} [GLOBAL OPTIONS]"


def late_argv(ns: argparse.Namespace, global_parser: argparse.ArgumentParser) -> list[str]:
    """The global options given after the command, as words for the global parser."""
    words: list[str] = []
    for a in late_options(global_parser):
        value = getattr(ns, LATE + a.dest, None)
        if value is None:
            continue
        delattr(ns, LATE + a.dest)
        flag = next(f for f in a.option_strings if f.startswith("--"))
        words += [flag] if a.nargs == 0 else [flag, value]
    return words
