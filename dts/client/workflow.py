"""dts-client's dependencies: submit's --after, --after-finished and --workflow FILE.toml (named
steps submitted as one set of jobs in one call), and what status shows of a job's edges
(see README "Dependencies and workflows")."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dts.client.args import UsageError, checked
from dts.client.sending import warn_unserved
from dts.dependencies import MAX_DEPENDENCIES, MAX_STEPS, check_dependencies
from dts.domain import Dependency, Job, JobSpec
from dts.errors import InvalidArgument
from dts.limits import LIMITS, Limits, parse_duration
from dts.options import limit_arg

if TYPE_CHECKING:
    from dts.client.cli import Cli

# keys of a step, with what each becomes in its JobSpec (the rest: command, after, ...)
_SIMPLE = {"queue": str, "cwd": str, "unique": str}
_SECONDS = ("backoff", "timeout", "delay")
_LIMIT_KEYS = {f"max_{f.name}": f for f in LIMITS}
_KIND_NAMES = {int: "an integer", str: "a string", dict: "a table", bool: "true or false"}
STEP_KEYS = frozenset(
    {"name", "command", "after", "after_finished", "priority", "retries", "env", "shell"}
    | set(_SIMPLE)
    | set(_SECONDS)
    | set(_LIMIT_KEYS)
)


def id_list(text: str) -> list[int]:
    """The argparse type of --after: job ids, comma-separated."""
    ids = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a job id: {part.strip()!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"job id must be a positive integer, got {value}")
        ids.append(value)
    return ids


def add_dependency_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--after",
        type=id_list,
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="wait until these jobs have succeeded (one failed or cancelled cancels this one)",
    )
    p.add_argument(
        "--after-finished",
        type=id_list,
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="wait until these jobs are final, whatever their outcome",
    )
    p.add_argument(
        "--workflow",
        metavar="FILE.toml",
        help="submit the named steps of FILE as one set of jobs (README: Dependencies)",
    )


def with_dependencies(base: JobSpec, ns: argparse.Namespace) -> JobSpec:
    """`base` with submit's --after and --after-finished (UsageError past MAX_DEPENDENCIES)."""
    after = tuple(dict.fromkeys(i for ids in ns.after for i in ids))
    after_finished = tuple(dict.fromkeys(i for ids in ns.after_finished for i in ids))
    if len(set(after) | set(after_finished)) > MAX_DEPENDENCIES:
        raise UsageError(f"a job depends on at most {MAX_DEPENDENCIES} jobs")
    if not after and not after_finished:
        return base
    return replace(base, after=after, after_finished=after_finished)


def load_workflow(text: str, base: JobSpec) -> tuple[list[str], list[JobSpec]]:
    """The step names and specs of a workflow file (TOML, `[[step]]` tables), each step's
    spec `base` with the step's own keys; InvalidArgument naming the first thing wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"not TOML: {e}") from None
    unknown = set(doc) - {"step"}
    if unknown:
        raise InvalidArgument(f"unknown top-level key {sorted(unknown)[0]!r} (steps are [[step]])")
    steps = doc.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise InvalidArgument("no steps (each is a [[step]] table with a name and a command)")
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(
            f"a workflow has at most {MAX_STEPS} steps, this one has {len(steps)}"
        )
    names: list[str] = []
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"step {i + 1} has no name")
        if name in index:
            raise InvalidArgument(f"duplicate step name {name!r}")
        index[name] = i
        names.append(name)
    specs = [_step_spec(step, name, index, base) for step, name in zip(steps, names, strict=True)]
    check_dependencies(specs, lambda i: f"step {names[i]!r}")
    return names, specs


def _step_spec(
    step: Mapping[str, Any], name: str, index: Mapping[str, int], base: JobSpec
) -> JobSpec:
    where = f"step {name!r}"
    unknown = set(step) - STEP_KEYS
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {sorted(unknown)[0]!r}")
    command = step.get("command")
    if isinstance(command, str) and command.strip():
        argv, shell = (command,), True
    elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        argv, shell = tuple(command), False
    else:
        raise InvalidArgument(f"{where}: command must be a string (run by /bin/sh) or a list")
    spec = replace(base, argv=argv, shell=bool(step.get("shell", shell)), name=name)
    changes: dict[str, Any] = {}
    for key, kind in _SIMPLE.items():
        if key in step:
            changes[key] = _typed(where, key, step[key], kind)
    if "priority" in step:
        changes["priority"] = _typed(where, "priority", step["priority"], int)
    if "retries" in step:
        changes["max_retries"] = _typed(where, "retries", step["retries"], int)
    for key in _SECONDS:
        if key in step:
            changes[key] = _seconds(where, key, step[key])
    if "env" in step:
        env = _typed(where, "env", step["env"], dict)
        changes["env"] = tuple(sorted((str(k), str(v)) for k, v in env.items()))
    limits = {f.name: _limit(where, k, step[k]) for k, f in _LIMIT_KEYS.items() if k in step}
    if limits:
        changes["limits"] = replace(base.limits if base.limits.any else Limits(), **limits)
    hard = _refs(where, step.get("after", []), index, "after")
    soft = _refs(where, step.get("after_finished", []), index, "after_finished")
    return replace(
        spec, steps=hard, steps_finished=tuple(i for i in soft if i not in hard), **changes
    )


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidArgument(f"{where}: {key} must be {_KIND_NAMES[kind]}")
    return value


def _seconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise InvalidArgument(f"{where}: {key} must be seconds or a duration such as '5m'")


def _limit(where: str, key: str, value: Any) -> int:
    try:
        return int(limit_arg(_LIMIT_KEYS[key].unit)(str(value)))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise InvalidArgument(f"{where}: {key}: {e}") from None


def _refs(where: str, value: Any, index: Mapping[str, int], key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{where}: {key} must be a list of step names")
    for ref in value:
        if ref not in index:
            raise InvalidArgument(f"{where} runs after unknown step {ref!r}")
    return tuple(dict.fromkeys(index[ref] for ref in value))


def submit_workflow(cli: Cli, ns: argparse.Namespace, base: JobSpec, cmd: Sequence[str]) -> int:
    """submit --workflow FILE: every step in one Submit call; prints each step and its id."""
    if cmd or ns.from_file or ns.unique is not None or ns.wait:
        raise UsageError("--workflow takes no command, --from-file, --unique or --wait")
    try:
        with open(ns.workflow, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {ns.workflow}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{ns.workflow} is not UTF-8 text") from None
    try:
        names, specs = load_workflow(text, base)
    except InvalidArgument as e:
        raise UsageError(f"{ns.workflow}: {e}") from None
    for name, spec in zip(names, specs, strict=True):
        try:
            checked(spec)
        except UsageError as e:
            raise UsageError(f"{ns.workflow}: step {name!r}: {e}") from None
    jobs = cli.client.submit(specs)
    warn_unserved(cli.client)
    pairs = [{"step": name, "id": job.id} for name, job in zip(names, jobs, strict=True)]
    width = max(len(n) for n in names)
    cli.out(pairs, "\n".join(f"{p['step']:<{width}}  {p['id']}" for p in pairs))
    return 0


def edges_json(edges: Sequence[Dependency]) -> list[dict[str, Any]]:
    return [
        {
            "id": d.job_id,
            "status": d.status.value if d.status else None,
            "kind": "finished" if d.finished else "succeeded",
        }
        for d in edges
    ]


def edges_text(edges: Sequence[Dependency]) -> str:
    """'12 (succeeded), 13 (running, after-finished)'; a deleted job shows as 'deleted'."""
    return ", ".join(
        f"{d.job_id} ({d.status.value if d.status else 'deleted'}"
        + (", after-finished)" if d.finished else ")")
        for d in edges
    )


def status_lines(job: Job, width: int) -> list[str]:
    """What status adds for a job with edges."""
    lines = []
    if job.waits_for:
        lines.append(f"{'waits_for:':<{width}} {edges_text(job.waits_for)}")
    if job.waited_by:
        lines.append(f"{'waited_by:':<{width}} {edges_text(job.waited_by)}")
    return lines
