"""A schedules file (TOML) read into schedule definitions: `dts-client schedule apply FILE`.
Every mistake is a UsageError of one line naming the schedule, the key or the line."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

from dts.client.args import UsageError
from dts.domain import MAX_PRIORITY, MIN_PRIORITY, JobSpec
from dts.errors import InvalidArgument
from dts.limits import LIMITS, Limits, parse_duration
from dts.options import limit_arg
from dts.schedule import Catchup, Overlap, Schedule, validate_schedule

LIMIT_KEYS = {f"max_{f.name}": f for f in LIMITS}
KEYS = {
    "cron",
    "every",
    "tz",
    "catchup",
    "overlap",
    "command",
    "shell",
    "queue",
    "priority",
    "retries",
    "backoff",
    "timeout",
    "env",
    "cwd",
    "name",
    *LIMIT_KEYS,
}


def read_schedules(path: str) -> list[Schedule]:
    """The schedules `path` defines, each checked as the server would."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    extra = sorted(set(doc) - {"schedules"})
    if extra:
        raise UsageError(
            f"{path}: unknown table or key {extra[0]!r} (schedules go in [schedules.NAME])"
        )
    tables = doc.get("schedules", {})
    if not isinstance(tables, dict):
        raise UsageError(f"{path}: schedules must be tables ([schedules.NAME])")
    found = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise UsageError(f"{path}: schedules.{name} must be a table ([schedules.{name}])")
        try:
            s = schedule_of(name, table)
            validate_schedule(s)
        except (InvalidArgument, ValueError, TypeError) as e:
            raise UsageError(f"{path}: schedule {name}: {e}") from None
        found.append(s)
    return found


def schedule_of(name: str, t: dict[str, Any]) -> Schedule:
    unknown = sorted(set(t) - KEYS)
    if unknown:
        raise InvalidArgument(f"unknown key {unknown[0]!r}")
    command = t.get("command")
    if command is None:
        raise InvalidArgument('no command (command = ["prog", "arg"] or a shell string)')
    if isinstance(command, str):
        argv, shell = (command,), bool(t.get("shell", True))
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv, shell = tuple(command), bool(t.get("shell", False))
        if shell:
            argv = (" ".join(argv),)
    else:
        raise InvalidArgument("command must be a string or a list of strings")
    env = t.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidArgument("env must be a table of strings")
    spec = JobSpec(
        argv=argv,
        shell=shell,
        queue=_typed(t, "queue", str, "default"),
        priority=_priority(t),
        max_retries=_typed(t, "retries", int, None),
        backoff=_seconds(t, "backoff"),
        timeout=_seconds(t, "timeout"),
        env=tuple(sorted(env.items())),
        cwd=_typed(t, "cwd", str, ""),
        name=_typed(t, "name", str, ""),
        limits=Limits(**{f.name: _limit(t, key) for key, f in LIMIT_KEYS.items()}),
    )
    return Schedule(
        name=name,
        spec=spec,
        cron=_typed(t, "cron", str, ""),
        every=_seconds(t, "every") or 0.0,
        tz=_typed(t, "tz", str, "UTC"),
        catchup=_choice(t, "catchup", Catchup, Catchup.LAST),
        overlap=_choice(t, "overlap", Overlap, Overlap.ALLOW),
    )


def _typed(t: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = t.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
        what = {"str": "string", "int": "whole number"}.get(kind.__name__, kind.__name__)
        raise InvalidArgument(f"{key} must be a {what}, got {value!r}")
    return value


def _priority(t: dict[str, Any]) -> int:
    value: int = _typed(t, "priority", int, MIN_PRIORITY)
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return value


def _seconds(t: dict[str, Any], key: str) -> float | None:
    """A number of seconds, or a duration such as '5m'."""
    value = t.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{key} must be seconds or a duration such as '5m', got {value!r}")
    return float(value)


def _choice(t: dict[str, Any], key: str, kind: Any, default: Any) -> Any:
    value = t.get(key, default)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in kind)
        raise InvalidArgument(f"{key} must be one of {allowed}, got {value!r}") from None


def _limit(t: dict[str, Any], key: str) -> int:
    value = t.get(key, 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return limit_arg(LIMIT_KEYS[key].unit)(value)
        except argparse.ArgumentTypeError as e:
            raise InvalidArgument(f"{key}: {e}") from None
    raise InvalidArgument(f"{key} must be a number or a size such as '512M', got {value!r}")
