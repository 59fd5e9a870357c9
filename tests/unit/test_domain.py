"""Unit tests of dts.domain: status transitions, spec validation, display quoting and defaults."""

from __future__ import annotations

import itertools
import math
import shlex
from dataclasses import replace

import pytest

from dts.domain import (
    FINAL_STATUSES,
    MAX_COMMAND_BYTES,
    MAX_ENV_ENTRIES,
    MAX_NAME_CHARS,
    MAX_SECONDS,
    TRANSITIONS,
    Job,
    JobSpec,
    JobStatus,
    can_transition,
    exit_code_for_signal,
    validate_spec,
)
from dts.errors import InvalidArgument

S = JobStatus

# The lifecycle as designed; a change to TRANSITIONS must be a deliberate change here too.
EXPECTED_EDGES = {
    (S.SCHEDULED, S.QUEUED),
    (S.SCHEDULED, S.CANCELLED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.SCHEDULED),
    (S.RUNNING, S.QUEUED),
    (S.RUNNING, S.CANCELLED),
    (S.FAILED, S.QUEUED),
    (S.CANCELLED, S.QUEUED),
    (S.WAITING, S.QUEUED),
    (S.WAITING, S.SCHEDULED),
    (S.WAITING, S.CANCELLED),
    (S.FAILED, S.WAITING),
    (S.CANCELLED, S.WAITING),
}


def test_transition_table_is_the_designed_one() -> None:
    assert set(TRANSITIONS) == EXPECTED_EDGES


@pytest.mark.parametrize(("old", "new"), sorted(EXPECTED_EDGES))
def test_allowed_edges(old: JobStatus, new: JobStatus) -> None:
    assert can_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.SUCCEEDED, S.QUEUED),
        (S.SUCCEEDED, S.RUNNING),
        (S.SUCCEEDED, S.FAILED),
        (S.QUEUED, S.SUCCEEDED),
        (S.QUEUED, S.FAILED),
        (S.SCHEDULED, S.RUNNING),
        (S.SCHEDULED, S.SUCCEEDED),
        (S.FAILED, S.SUCCEEDED),
        (S.FAILED, S.RUNNING),
        (S.CANCELLED, S.RUNNING),
        (S.CANCELLED, S.FAILED),
        (S.WAITING, S.RUNNING),
        (S.WAITING, S.SUCCEEDED),
        (S.WAITING, S.FAILED),
        (S.QUEUED, S.WAITING),
        (S.RUNNING, S.WAITING),
        (S.SUCCEEDED, S.WAITING),
    ],
)
def test_disallowed_edges(old: JobStatus, new: JobStatus) -> None:
    assert not can_transition(old, new)


def test_every_pair_outside_the_table_is_refused() -> None:
    for old, new in itertools.product(JobStatus, JobStatus):
        assert can_transition(old, new) == ((old, new) in EXPECTED_EDGES), (old, new)


def test_no_status_transitions_to_itself() -> None:
    assert not any(can_transition(s, s) for s in JobStatus)


def test_succeeded_is_terminal_and_other_finals_only_go_back_to_queued_or_waiting() -> None:
    assert not any(can_transition(S.SUCCEEDED, s) for s in JobStatus)
    for final in (S.FAILED, S.CANCELLED):
        assert {new for old, new in TRANSITIONS if old == final} == {S.QUEUED, S.WAITING}


def test_final_statuses() -> None:
    assert {s for s in JobStatus if s.final} == {S.SUCCEEDED, S.FAILED, S.CANCELLED}
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED} == FINAL_STATUSES
    assert not S.RUNNING.final
    assert not S.QUEUED.final
    assert not S.SCHEDULED.final
    assert not S.WAITING.final


def test_exit_code_for_signal() -> None:
    assert exit_code_for_signal(9) == 137
    assert exit_code_for_signal(15) == 143


# ---- validate_spec ------------------------------------------------------------------------------

GOOD = JobSpec(
    argv=("python3", "-c", "print('hi')"),
    queue="batch.v2_x-1",
    priority=9,
    max_retries=3,
    backoff=1.5,
    timeout=60.0,
    delay=0.0,
    env=(("FOO", "bar"), ("EMPTY", "")),
    cwd="/tmp",
    name="nightly report",
)


def test_accepts_a_normal_spec() -> None:
    validate_spec(GOOD)
    validate_spec(JobSpec(argv=("true",)))
    validate_spec(JobSpec(argv=("echo hi | wc -c",), shell=True))


def test_accepts_the_boundaries() -> None:
    validate_spec(
        replace(
            GOOD,
            priority=0,
            max_retries=0,
            backoff=0.0,
            timeout=0.0,
            delay=MAX_SECONDS,
            queue="q" * 64,
            name="n" * MAX_NAME_CHARS,
            env=tuple((f"K{i}", "v") for i in range(MAX_ENV_ENTRIES)),
        )
    )
    validate_spec(replace(GOOD, priority=9, max_retries=1000))
    # each argument counts its UTF-8 bytes plus one separator
    validate_spec(JobSpec(argv=("x" * (MAX_COMMAND_BYTES - 1),)))


def bad(**changes: object) -> JobSpec:
    return replace(GOOD, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (bad(argv=()), "empty"),
        (bad(argv=("",)), "empty"),
        (bad(argv=("   \t",)), "empty"),
        (bad(argv=("",), shell=True), "empty"),
        (bad(argv=(" ",), shell=True), "empty"),
        (bad(argv=("echo", "a\0b")), "NUL"),
        (bad(argv=("ec\0ho",)), "NUL"),
        (bad(argv=("echo", "hi"), shell=True), "one string"),
        (bad(priority=-1), "priority"),
        (bad(priority=10), "priority"),
        (bad(max_retries=-1), "retries"),
        (bad(max_retries=1001), "retries"),
        (bad(timeout=math.nan), "timeout"),
        (bad(timeout=-1.0), "timeout"),
        (bad(timeout=math.inf), "timeout"),
        (bad(timeout=MAX_SECONDS + 1), "timeout"),
        (bad(backoff=math.nan), "backoff"),
        (bad(backoff=-0.5), "backoff"),
        (bad(backoff=math.inf), "backoff"),
        (bad(delay=math.nan), "delay"),
        (bad(delay=-1.0), "delay"),
        (bad(delay=math.inf), "delay"),
        (bad(env=(("A=B", "x"),)), "environment"),
        (bad(env=(("", "x"),)), "environment"),
        (bad(env=(("A\0", "x"),)), "environment"),
        (bad(env=(("A", "x\0y"),)), "environment"),
        (bad(env=tuple((f"K{i}", "v") for i in range(MAX_ENV_ENTRIES + 1))), "environment"),
        (bad(queue=""), "queue"),
        (bad(queue="has space"), "queue"),
        (bad(queue="a/b"), "queue"),
        (bad(queue="q" * 65), "queue"),
        (bad(queue="caf\u00e9"), "queue"),
        (bad(name="n" * (MAX_NAME_CHARS + 1)), "name"),
        (bad(cwd="/tmp\0x"), "cwd"),
        (bad(argv=("x" * MAX_COMMAND_BYTES,)), "longer"),
        (bad(argv=("echo", "\u00e9" * (MAX_COMMAND_BYTES // 2))), "longer"),
        (bad(unique="k" * 201), "unique key is longer than 200"),
        (bad(unique="a\nb"), "unique key must be printable"),
        (bad(unique="\x00"), "unique key must be printable"),
        (bad(unique=" \u3000 "), "not blank"),
    ],
    ids=lambda v: repr(v)[:60] if isinstance(v, str) else None,
)
def test_rejects(spec: JobSpec, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_spec(spec)


@pytest.mark.parametrize("key", ["", "k", "nightly report 1", "caf\u00e9 \u2603", "k" * 200])
def test_unique_keys_taken(key: str) -> None:
    validate_spec(bad(unique=key))
    assert bad(unique=key).with_defaults(1, 2.0, 3.0).unique == key


# ---- display, defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("echo", "hello"), "echo hello"),
        (("ls", "-la", "/tmp/x.txt"), "ls -la /tmp/x.txt"),
        (("echo", "two words"), "echo 'two words'"),
        (("echo", ""), "echo ''"),
        (("echo", "it's"), "echo 'it'\"'\"'s'"),
        (("echo", "$HOME", "*"), "echo '$HOME' '*'"),
        (("a;b",), "'a;b'"),
    ],
)
def test_display_quotes_like_a_shell(argv: tuple[str, ...], expected: str) -> None:
    assert JobSpec(argv=argv).display == expected


@pytest.mark.parametrize(
    "argv",
    [
        ("printf", "%s\\n", "a b", "", "'", '"', "$(rm -rf /)", "`x`", "a\nb", "~", "!x", "#c"),
        ("sh", "-c", "echo 'quoted' && echo \"double\""),
        ("caf\u00e9", "\u00fcber", "tab\there"),
    ],
)
def test_display_splits_back_into_the_same_argv(argv: tuple[str, ...]) -> None:
    assert tuple(shlex.split(JobSpec(argv=argv).display)) == argv


def test_shell_display_is_the_string_itself() -> None:
    assert JobSpec(argv=("echo $HOME | wc",), shell=True).display == "echo $HOME | wc"
    assert JobSpec(argv=(), shell=True).display == ""


def test_with_defaults_fills_only_unset_fields() -> None:
    spec = JobSpec(argv=("true",))
    full = spec.with_defaults(max_retries=3, backoff=2.0, timeout=60.0)
    assert (full.max_retries, full.backoff, full.timeout) == (3, 2.0, 60.0)
    assert replace(full, max_retries=None, backoff=None, timeout=None) == spec


def test_with_defaults_keeps_explicit_zeros() -> None:
    spec = JobSpec(argv=("true",), max_retries=0, backoff=0.0, timeout=0.0)
    assert spec.with_defaults(max_retries=3, backoff=2.0, timeout=60.0) == spec


def test_job_max_retries_is_zero_when_unset() -> None:
    assert Job(1, JobSpec(argv=("true",)), S.QUEUED).max_retries == 0
    assert Job(1, JobSpec(argv=("true",), max_retries=4), S.QUEUED).max_retries == 4
