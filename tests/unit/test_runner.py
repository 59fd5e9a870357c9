"""Unit tests of dts.worker.runner: output capping (Capture) and one attempt run as real local
processes.

The processes are short-lived `sh` commands; every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.domain import Assignment, JobSpec, Outcome, Result
from dts.worker.runner import Capture, Execution, RunOptions
from tests.harness import pid_alive, wait_until

# Execution.run leaves its stdout/stderr pipes for the garbage collector to close (the bug
# test_run_closes_its_pipes documents); the other tests here are not about that.

# ---- Capture ----------------------------------------------------------------------------------


def marker(dropped: int) -> bytes:
    return f"\n[dts: output truncated, {dropped} bytes dropped]\n".encode()


def test_capture_under_limit_is_kept_whole() -> None:
    c = Capture(10)
    c.feed(b"abc")
    c.feed(b"")
    c.feed(b"def")
    assert c.value() == b"abcdef"
    assert c.dropped == 0


def test_capture_exactly_at_limit_is_kept_whole() -> None:
    c = Capture(10)
    c.feed(b"0123456789")
    assert c.value() == b"0123456789"
    assert c.dropped == 0


def test_capture_one_byte_over_limit_drops_one() -> None:
    c = Capture(10)
    c.feed(b"0123456789X")
    assert c.value() == b"01234" + marker(1) + b"6789X"


def test_capture_over_limit_keeps_head_and_tail_halves() -> None:
    c = Capture(10)
    data = bytes(range(100))
    c.feed(data)
    assert c.value() == data[:5] + marker(90) + data[-5:]
    assert c.dropped == 90


def test_capture_odd_limit_gives_the_extra_byte_to_the_head() -> None:
    c = Capture(5)
    c.feed(b"abcdefghij")
    assert c.value() == b"abc" + marker(5) + b"ij"


def test_capture_is_independent_of_chunking() -> None:
    data = os.urandom(5000)
    whole = Capture(1000)
    whole.feed(data)
    for size in (1, 7, 499, 500, 501, 4096):
        c = Capture(1000)
        for i in range(0, len(data), size):
            c.feed(data[i : i + size])
        assert c.value() == whole.value() == data[:500] + marker(4000) + data[-500:], size


# ---- Execution --------------------------------------------------------------------------------

FAST = RunOptions(max_output=1 << 20, kill_grace=0.5)


def job(
    *argv: str,
    shell: bool = False,
    timeout: float | None = None,
    env: tuple[tuple[str, str], ...] = (),
    cwd: str = "",
    job_id: int = 7,
    attempt: int = 1,
) -> Assignment:
    return Assignment(
        job_id, attempt, JobSpec(argv=argv, shell=shell, timeout=timeout, env=env, cwd=cwd)
    )


def run(a: Assignment, opts: RunOptions = FAST) -> Result:
    return Execution(a, opts).run()


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test started in the background; SIGKILLed at teardown if they are still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def read_pid(path: Path, strays: list[int]) -> int:
    pid = int(wait_until(lambda: path.exists() and path.read_text().strip(), 5, what=str(path)))
    strays.append(pid)
    return pid


def test_success_captures_stdout_and_stderr_separately() -> None:
    before = time.time()
    r = run(job("sh", "-c", "echo out; echo err >&2; printf more", job_id=42, attempt=3))
    assert (r.job_id, r.attempt) == (42, 3)
    assert r.outcome is Outcome.SUCCEEDED
    assert r.exit_code == 0
    assert r.error == ""
    assert r.stdout == b"out\nmore"
    assert r.stderr == b"err\n"
    assert before <= r.started_at <= r.finished_at <= time.time()


def test_binary_output_is_kept_byte_for_byte() -> None:
    r = run(job("printf", "\\377\\000\\376x"))
    assert r.stdout == b"\xff\x00\xfex"


def test_stdin_is_empty() -> None:
    r = run(job("cat"))
    assert (r.outcome, r.stdout) == (Outcome.SUCCEEDED, b"")


def test_nonzero_exit_fails_with_its_code() -> None:
    r = run(job("sh", "-c", "echo partial; exit 3"))
    assert r.outcome is Outcome.FAILED
    assert r.exit_code == 3
    assert "3" in r.error
    assert r.stdout == b"partial\n"


def test_shell_job_runs_its_string_with_sh() -> None:
    r = run(job("echo abc | tr a-c x-z; echo $((6 * 7))", shell=True))
    assert r.outcome is Outcome.SUCCEEDED
    assert r.stdout == b"xyz\n42\n"


def test_env_is_passed_with_job_id_and_attempt() -> None:
    r = run(
        job(
            "sh",
            "-c",
            'echo "$FOO|$EMPTY|$DTS_JOB_ID|$DTS_ATTEMPT|${PATH:+path}"',
            env=(("FOO", "bar baz"), ("EMPTY", ""), ("DTS_JOB_ID", "spoofed")),
            job_id=123,
            attempt=4,
        )
    )
    assert r.stdout == b"bar baz||123|4|path\n"


def test_cwd_is_honoured(tmp_path: Path) -> None:
    r = run(job("pwd", cwd=str(tmp_path)))
    assert r.stdout == f"{tmp_path}\n".encode()


def test_default_cwd_applies_when_the_job_names_none(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    opts = RunOptions(kill_grace=0.5, default_cwd=str(tmp_path))
    assert run(job("pwd"), opts).stdout == f"{tmp_path}\n".encode()
    assert run(job("pwd", cwd=str(other)), opts).stdout == f"{other}\n".encode()


def test_missing_program_fails_with_127_naming_it() -> None:
    spawned: list[int] = []
    ex = Execution(job("dts-no-such-program-xyz", "arg"), FAST, on_spawn=spawned.append)
    r = ex.run()
    assert r.outcome is Outcome.FAILED
    assert r.exit_code == 127
    assert "dts-no-such-program-xyz" in r.error
    assert spawned == []


def test_missing_cwd_fails_with_127_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    r = run(job("true", cwd=missing))
    assert (r.outcome, r.exit_code) == (Outcome.FAILED, 127)
    assert r.error == f"cannot run true: cannot enter {missing}: No such file or directory"


def test_missing_cwd_of_a_shell_job_names_the_shell_and_the_directory(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    r = run(job("echo hi", shell=True, cwd=missing))
    assert r.error == f"cannot run /bin/sh: cannot enter {missing}: No such file or directory"


def test_a_cwd_that_is_a_file_is_named_as_the_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    r = run(job("true", cwd=str(tmp_path / "file")))
    assert r.error == f"cannot run true: cannot enter {tmp_path / 'file'}: Not a directory"


def test_a_missing_program_in_an_existing_cwd_is_named_with_it(tmp_path: Path) -> None:
    r = run(job("./dts-no-such-program", cwd=str(tmp_path)))
    assert r.error == f"cannot run ./dts-no-such-program in {tmp_path}: No such file or directory"


def test_missing_default_cwd_is_named_in_the_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "worker-cwd")
    r = run(job("true"), RunOptions(kill_grace=0.5, default_cwd=missing))
    assert (r.outcome, r.exit_code) == (Outcome.FAILED, 127)
    assert missing in r.error


def test_non_executable_file_fails_with_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    r = run(job(str(script)))
    assert (r.outcome, r.exit_code) == (Outcome.FAILED, 126)
    assert str(script) in r.error


def test_run_closes_its_pipes() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(job("echo", "hi"))
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


def test_spawn_and_reap_callbacks_get_the_pid() -> None:
    spawned: list[int] = []
    reaped: list[int] = []
    ex = Execution(job("true"), FAST, on_spawn=spawned.append, on_reap=reaped.append)
    ex.run()
    assert spawned == reaped == [ex.pid]


def test_timeout_kills_the_whole_process_group(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    t0 = time.monotonic()
    r = run(job("sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5))
    elapsed = time.monotonic() - t0
    assert r.outcome is Outcome.TIMED_OUT
    assert r.exit_code == 124
    assert "timed out" in r.error
    assert 0.5 <= elapsed < 10
    bg = read_pid(pidfile, strays)
    wait_until(lambda: not pid_alive(bg), 5, what=f"background sleep {bg} to be killed")


def test_timeout_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    # the job ignores SIGTERM; only SIGKILL, kill_grace after the TERM, ends it
    t0 = time.monotonic()
    r = run(
        job("sh", "-c", "trap '' TERM; echo started; while :; do sleep 0.05; done", timeout=0.4),
        RunOptions(kill_grace=0.3),
    )
    elapsed = time.monotonic() - t0
    assert (r.outcome, r.exit_code) == (Outcome.TIMED_OUT, 124)
    assert r.stdout == b"started\n"
    assert 0.7 <= elapsed < 10


def test_zero_timeout_means_none() -> None:
    r = run(job("sh", "-c", "sleep 0.3; echo done", timeout=0.0))
    assert (r.outcome, r.stdout) == (Outcome.SUCCEEDED, b"done\n")


@pytest.mark.parametrize("outcome", [Outcome.CANCELLED, Outcome.RELEASED])
def test_stop_from_another_thread_kills_the_job(
    tmp_path: Path, strays: list[int], outcome: Outcome
) -> None:
    pidfile = tmp_path / "job.pid"
    ex = Execution(job("sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"), FAST)
    results: list[Result] = []
    runner = threading.Thread(target=lambda: results.append(ex.run()))
    t0 = time.monotonic()
    runner.start()
    pid = read_pid(pidfile, strays)
    ex.stop(outcome, "asked to stop")
    ex.stop(Outcome.RELEASED if outcome is Outcome.CANCELLED else Outcome.CANCELLED, "later")
    runner.join(10)
    assert not runner.is_alive()
    assert time.monotonic() - t0 < 10
    (r,) = results
    assert r.outcome is outcome  # the first stop wins
    assert r.error == "asked to stop"
    assert r.exit_code == 128 + signal.SIGTERM
    assert not pid_alive(pid)


def test_stop_before_run_kills_at_once() -> None:
    ex = Execution(job("sleep", "30"), FAST)
    ex.stop(Outcome.CANCELLED, "cancelled early")
    t0 = time.monotonic()
    r = ex.run()
    assert (r.outcome, r.error) == (Outcome.CANCELLED, "cancelled early")
    assert time.monotonic() - t0 < 5


def test_huge_output_is_capped_with_a_marker() -> None:
    total = 5_000_000
    r = run(
        job("sh", "-c", f"head -c {total} /dev/zero | tr '\\0' x; echo tail-end"),
        RunOptions(max_output=1000, kill_grace=0.5),
    )
    assert r.outcome is Outcome.SUCCEEDED
    written = total + len(b"tail-end\n")
    assert r.stdout == b"x" * 500 + marker(written - 1000) + (b"x" * 491 + b"tail-end\n")
    assert len(r.stdout) <= 1000 + len(marker(written))
    assert r.stderr == b""


def test_killed_by_signal_reports_128_plus_n() -> None:
    r = run(job("sh", "-c", "kill -9 $$"))
    assert r.outcome is Outcome.FAILED
    assert r.exit_code == 137
    assert "signal 9" in r.error


def test_leftover_background_processes_are_killed(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    t0 = time.monotonic()
    r = run(job("sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo main done"))
    assert (r.outcome, r.exit_code) == (Outcome.SUCCEEDED, 0)
    assert r.stdout == b"main done\n"
    assert time.monotonic() - t0 < 10
    bg = read_pid(pidfile, strays)
    wait_until(lambda: not pid_alive(bg), 5, what=f"leftover sleep {bg} to be killed")


def test_leftover_without_pipes_is_killed(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    r = run(job("sh", "-c", f"sleep 30 >/dev/null 2>&1 </dev/null & echo $! > {pidfile}"))
    assert r.outcome is Outcome.SUCCEEDED
    bg = read_pid(pidfile, strays)
    wait_until(lambda: not pid_alive(bg), 5, what=f"leftover sleep {bg} to be killed")


def ignoring_term(pidfile: Path) -> str:
    """Shell that starts a SIGTERM-ignoring `sleep 30` off the pipes and waits until it is armed."""
    return (
        f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; exec sleep 30' >/dev/null 2>&1 </dev/null & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done"
    )


def test_leftover_ignoring_sigterm_is_killed(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    r = run(job("sh", "-c", ignoring_term(pidfile)), RunOptions(kill_grace=0.3))
    assert r.outcome is Outcome.SUCCEEDED
    bg = read_pid(pidfile, strays)
    wait_until(lambda: not pid_alive(bg), 1.0, what=f"leftover {bg} to be killed")


def test_timeout_kills_group_members_ignoring_sigterm(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    r = run(
        job("sh", "-c", f"{ignoring_term(pidfile)}; wait", timeout=0.5),
        RunOptions(kill_grace=0.3),
    )
    assert r.outcome is Outcome.TIMED_OUT
    bg = read_pid(pidfile, strays)
    wait_until(lambda: not pid_alive(bg), 1.0, what=f"group member {bg} to be killed")


def test_a_job_finds_its_program_on_its_own_path(tmp_path: Path) -> None:
    # Given a program that is only on the PATH the job asks for
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    prog = bin_dir / "dts-only-here"
    prog.write_text("#!/bin/sh\necho found me\n")
    prog.chmod(0o755)
    # When a job runs it by name with that PATH
    r = run(job("dts-only-here", env=(("PATH", f"{bin_dir}:/usr/bin:/bin"),)))
    # Then it runs, as it would from a shell with that PATH
    assert (r.outcome, r.stdout) == (Outcome.SUCCEEDED, b"found me\n")
    # And with its own PATH lacking the program, it fails with 127 naming it
    r = run(job("dts-only-here", env=(("PATH", "/usr/bin:/bin"),)))
    assert (r.outcome, r.exit_code) == (Outcome.FAILED, 127)
    assert "dts-only-here" in r.error


@pytest.mark.parametrize("where", ["worker's directory", "own directory"])
def test_a_job_starts_with_no_signal_ignored(tmp_path: Path, where: str) -> None:
    # Python ignores SIGPIPE; a job must not inherit that (`yes | head` would print errors)
    cwd = str(tmp_path) if where == "own directory" else ""
    r = run(job("grep", "^SigIgn", "/proc/self/status", cwd=cwd))
    mask = int(r.stdout.split()[1], 16)
    ignored = {n + 1 for n in range(64) if mask >> n & 1}
    # signals 32 and 33 are the C library's own, set up afresh by the job's libc
    assert ignored <= {32, 33}, f"ignored signals {sorted(ignored)}"


def test_a_job_gets_no_descriptor_the_worker_inherited() -> None:
    from dts.worker.runner import close_inherited_fds

    # Given a descriptor the worker inherited from whoever started it
    r, w = os.pipe()
    inherited = os.dup2(w, 250, inheritable=True)
    try:
        close_inherited_fds()
        # When a job lists its open descriptors
        out = run(job("ls", "/proc/self/fd")).stdout.split()
        # Then the inherited one is not among them
        assert b"250" not in out
        assert {b"0", b"1", b"2"} <= set(out)
    finally:
        for fd in (r, w, inherited):
            os.close(fd)


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI is)")


@ROOT_ONLY
def test_run_as_runs_the_job_as_that_user_with_its_home(tmp_path: Path) -> None:
    from dts.worker.sandbox import RunAs

    # Given a worker (root) told to run jobs as nobody
    opts = RunOptions(kill_grace=0.5, run_as=RunAs.lookup("nobody"))
    # When a job prints who it is
    r = run(job("sh", "-c", 'id -un; id -u; echo "$HOME $USER $LOGNAME"'), opts)
    # Then it ran as nobody, with nobody's HOME and names, and no root group kept
    nobody = RunAs.lookup("nobody")
    assert r.outcome is Outcome.SUCCEEDED, r.error
    assert r.stdout.decode().splitlines() == [
        "nobody",
        str(nobody.uid),
        f"{nobody.home} nobody nobody",
    ]
    groups = run(job("id", "-G"), opts).stdout.split()
    assert b"0" not in groups
    # And it cannot write where only root may
    denied = run(job("touch", str(tmp_path / "x")), opts)
    if (tmp_path.stat().st_mode & 0o002) == 0:
        assert denied.outcome is Outcome.FAILED


@ROOT_ONLY
def test_run_as_jobs_are_still_killed_as_a_group_on_timeout(tmp_path: Path) -> None:
    from dts.worker.sandbox import RunAs

    opts = RunOptions(kill_grace=0.3, run_as=RunAs.lookup("nobody"))
    r = run(job("sh", "-c", "sleep 30 & wait", timeout=0.5), opts)
    assert (r.outcome, r.exit_code) == (Outcome.TIMED_OUT, 124)
