"""Unit tests of per-job limits: the domain's rules (a job lowers its worker's limits, never
raises them) and their enforcement on real short-lived processes by dts.worker.runner."""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import shutil

import pytest

from dts.domain import MAX_LIMIT, Assignment, JobSpec, Outcome, Result, validate_spec
from dts.errors import InvalidArgument
from dts.limits import (
    LIMIT_NAMES,
    LIMITS,
    NO_LIMITS,
    RLIMIT_LIMITS,
    Limits,
    format_size,
    parse_size,
)
from dts.v1 import dts_pb2 as pb
from dts.worker.runner import Execution, RunOptions
from dts.worker.sandbox import find_prlimit

PRLIMIT = find_prlimit()
needs_prlimit = pytest.mark.skipif(PRLIMIT is None, reason="util-linux prlimit is not installed")

# ---- the table of limits --------------------------------------------------------------------


def test_the_table_lists_every_field_of_limits_in_order() -> None:
    fields = dataclasses.fields(Limits)
    assert tuple(f.name for f in fields) == LIMIT_NAMES
    assert tuple(f.name for f in LIMITS) == LIMIT_NAMES
    assert all(f.type == "int" and f.default == 0 for f in fields)


def test_the_table_names_each_field_of_the_wire_message_in_order() -> None:
    assert tuple(f.wire for f in LIMITS) == tuple(f.name for f in pb.Limits.DESCRIPTOR.fields)


def test_each_kernel_limit_names_an_rlimit_and_says_so_to_the_operator() -> None:
    assert tuple(f for f in LIMITS if f.name != "output") == RLIMIT_LIMITS
    for f in LIMITS:
        assert f.submit_help, f.name
        if f.rlimit:
            assert isinstance(getattr(resource, f"RLIMIT_{f.rlimit}"), int), f.name
            assert f"RLIMIT_{f.rlimit}" in f.worker_help, f.name
        else:
            assert not f.worker_help, f.name  # the worker declares its own option for it


def test_the_methods_of_limits_follow_the_table() -> None:
    every = Limits(*range(1, len(LIMITS) + 1))
    assert every.values == tuple(range(1, len(LIMITS) + 1))
    assert every.rlimits and every.any
    for f in LIMITS:
        one = Limits(**{f.name: 3})
        assert one.values == tuple(3 if n == f.name else 0 for n in LIMIT_NAMES)
        assert one.rlimits is bool(f.rlimit), f.name
        assert one.describe() == f"{f.name} {f.show(3)}"
    assert [f.show(2048) for f in LIMITS] == ["2048s", "2K", "2048", "2048", "2K"]


# ---- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "cap", "effective"),
    [
        (0, 0, 0),  # neither sets one: none
        (5, 0, 5),  # only the job: the job's
        (0, 7, 7),  # only the worker: the worker's
        (5, 7, 5),  # the job asks for less: granted
        (9, 7, 7),  # the job asks for more: the worker's cap stands
    ],
)
def test_a_job_can_lower_its_workers_limit_but_not_raise_it(
    job: int, cap: int, effective: int
) -> None:
    for field in ("cpu", "memory", "files", "processes", "output"):
        got = Limits(**{field: job}).within(Limits(**{field: cap}))
        assert getattr(got, field) == effective, field


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("4096", 4096),
        ("64K", 65536),
        ("512M", 512 << 20),
        ("2g", 2 << 30),
        ("1GiB", 1 << 30),
        ("3 MB", 3 << 20),
        ("1T", 1 << 40),
    ],
)
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5G", "10X", "ten", "1e9"])
def test_a_bad_size_is_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidArgument, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("field", ["cpu", "memory", "files", "processes", "output"])
@pytest.mark.parametrize("value", [-1, MAX_LIMIT + 1])
def test_limits_out_of_range_are_invalid(field: str, value: int) -> None:
    with pytest.raises(InvalidArgument, match=f"limit {field} must be between"):
        validate_spec(JobSpec(argv=("true",), limits=Limits(**{field: value})))


def test_describe_names_each_limit_set() -> None:
    assert Limits(cpu=10, memory=512 << 20, output=1000).describe() == (
        "cpu 10s, memory 512M, output 1000"
    )
    assert Limits().describe() == ""


# ---- enforcement ------------------------------------------------------------------------------


def run(
    *argv: str, limits: Limits = NO_LIMITS, timeout: float | None = None, **opts: object
) -> Result:
    options = {"max_output": 1 << 20, "kill_grace": 0.3, "prlimit": PRLIMIT, **opts}
    spec = JobSpec(argv=argv, limits=limits, timeout=timeout)
    return Execution(Assignment(1, 1, spec), RunOptions(**options)).run()  # type: ignore[arg-type]


def proc_limits(result: Result) -> dict[str, str]:
    """'Max open files' -> soft limit, from a job's `cat /proc/self/limits`."""
    rows = {}
    for line in result.stdout.decode().splitlines()[1:]:
        m = re.match(r"(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
        if m:
            rows[m[1]] = m[2]
    return rows


@needs_prlimit
def test_the_kernel_sees_the_limits_a_job_asked_for() -> None:
    # Given a job asking for each kernel-enforced limit
    limits = Limits(cpu=30, memory=1 << 30, files=64, processes=4000)
    # When it reads its own limits
    r = run("cat", "/proc/self/limits", limits=limits)
    # Then the kernel enforces exactly those
    assert r.outcome is Outcome.SUCCEEDED, r.error
    got = proc_limits(r)
    assert got["Max cpu time"] == "30"
    assert got["Max address space"] == str(1 << 30)
    assert got["Max open files"] == "64"
    assert got["Max processes"] == "4000"


@needs_prlimit
def test_the_workers_limits_apply_to_jobs_that_ask_for_none_or_for_more() -> None:
    worker = Limits(files=64, memory=2 << 30)
    none = proc_limits(run("cat", "/proc/self/limits", limits=Limits(), limits_cap=worker))
    more = proc_limits(
        run("cat", "/proc/self/limits", limits=Limits(files=100_000), limits_cap=worker)
    )
    less = proc_limits(run("cat", "/proc/self/limits", limits=Limits(files=32), limits_cap=worker))
    assert (none["Max open files"], more["Max open files"], less["Max open files"]) == (
        "64",
        "64",
        "32",
    )
    assert none["Max address space"] == str(2 << 30)


@needs_prlimit
def test_a_job_over_its_cpu_time_is_killed_and_says_so() -> None:
    r = run("sh", "-c", "while :; do :; done", limits=Limits(cpu=1), timeout=30)
    assert r.outcome is Outcome.FAILED
    assert r.error.startswith("CPU time limit of 1s reached"), r.error
    assert r.exit_code in (128 + 24, 128 + 9)  # SIGXCPU, or SIGKILL a second later


@needs_prlimit
def test_a_job_over_its_open_files_gets_emfile() -> None:
    python = shutil.which("python3") or "python3"
    script = "import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(100)]"
    r = run(python, "-c", script, limits=Limits(files=20))
    assert r.outcome is Outcome.FAILED
    assert b"Too many open files" in r.stderr


@needs_prlimit
def test_a_job_over_its_memory_cannot_allocate() -> None:
    python = shutil.which("python3") or "python3"
    ok = run(python, "-c", "b = bytearray(64 << 20)", limits=Limits(memory=1 << 30))
    assert ok.outcome is Outcome.SUCCEEDED, ok.stderr
    r = run(python, "-c", "b = bytearray(512 << 20)", limits=Limits(memory=256 << 20))
    assert r.outcome is Outcome.FAILED
    assert b"MemoryError" in r.stderr


def test_a_job_keeps_less_output_when_it_asks_to() -> None:
    r = run("head", "-c", "10000", "/dev/zero", limits=Limits(output=100))
    assert r.outcome is Outcome.SUCCEEDED
    assert r.stdout.startswith(b"\0" * 50) and b"9900 bytes dropped" in r.stdout
    # but not more than the worker keeps
    r = run("head", "-c", "10000", "/dev/zero", limits=Limits(output=1 << 20), max_output=1000)
    assert b"9000 bytes dropped" in r.stdout


def test_the_workers_max_timeout_caps_every_job() -> None:
    r = run("sleep", "30", max_timeout=0.3)
    assert (r.outcome, r.exit_code) == (Outcome.TIMED_OUT, 124)
    assert r.error == "timed out after 0.3s (the worker's max-timeout)"
    r = run("sleep", "30", timeout=60, max_timeout=0.3)
    assert r.error == "timed out after 0.3s (the worker's max-timeout)"
    r = run("sleep", "30", timeout=0.2, max_timeout=10)  # a shorter one of its own stands
    assert r.error == "timed out after 0.2s"


def test_a_job_with_limits_on_a_worker_without_prlimit_fails_clearly() -> None:
    r = run("true", limits=Limits(cpu=5), prlimit=None)
    assert (r.outcome, r.exit_code) == (Outcome.FAILED, 127)
    assert r.error == (
        "cannot apply resource limits (cpu 5s): "
        "prlimit (util-linux) is not installed on this worker"
    )
    assert run("true", limits=Limits(output=5), prlimit=None).outcome is Outcome.SUCCEEDED


@needs_prlimit
def test_a_missing_program_with_limits_fails_as_it_does_without() -> None:
    plain = run("no-such-program-dts")
    limited = run("no-such-program-dts", limits=Limits(files=10))
    assert (plain.outcome, plain.exit_code) == (limited.outcome, limited.exit_code)
    assert plain.exit_code == 127
    assert plain.error == limited.error


@needs_prlimit
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI is)")
def test_limits_hold_for_jobs_run_as_another_user() -> None:
    from dts.worker.sandbox import RunAs

    r = run(
        "sh", "-c", "id -un; grep 'Max open files' /proc/self/limits",
        limits=Limits(files=48), run_as=RunAs.lookup("nobody"),
    )  # fmt: skip
    assert r.outcome is Outcome.SUCCEEDED, r.error
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "nobody" and re.match(r"Max open files\s+48\s", lines[1])
