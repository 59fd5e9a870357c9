"""Log lines on stderr: `<N>`-prefixed for journald, ISO-timestamped otherwise, or JSON.

systemd tells a service that its stderr is the journal by setting JOURNAL_STREAM to the
device:inode of that stream; the tests do the same for a file they give as stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dts.daemon import logs
from tests.harness import (
    BIN,
    clean_env,
    free_port,
    pid_alive,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.single_store  # names its store itself: runs once

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")
PRIORITY_LINE = re.compile(r"^<([0-7])>")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def journal_env(stream: Path) -> dict[str, str]:
    st = os.stat(stream)
    return clean_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")


def run_server(
    tmp_path: Path, redis_url: str, journald: bool, *extra: str, stop: bool = True
) -> tuple[int, list[str]]:
    """Start dts-server with stderr to a file, let it serve (or fail), stop it; its lines.

    It logs info (listening, stopping), a warning (a stale pid file it replaces) and an error
    (a Redis it cannot reach at start, with --redis-url pointing nowhere).
    """
    err = tmp_path / "stderr"
    err.write_text("")
    pidfile = tmp_path / "server.pid"
    pidfile.write_text("garbage\n")
    port = free_port()
    argv = [str(BIN / "dts-server"), "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url]
    argv += ["--db", str(tmp_path / "dts.db"), "--pidfile", str(pidfile), *extra]
    env = journal_env(err) if journald else clean_env()
    with open(err, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, stdin=subprocess.DEVNULL)
    try:
        if stop:
            ping = lambda: run_cli(f"127.0.0.1:{port}", "ping").returncode == 0  # noqa: E731
            wait_until(lambda: ping() or proc.poll() is not None, 20, what="serving")
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, err.read_text().splitlines()


def test_under_journald_every_line_has_a_priority_and_no_timestamp(
    tmp_path: Path, redis_url: str
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    code, lines = run_server(tmp_path, dead_redis, journald=True)
    assert code == 0
    assert lines
    for line in lines:
        assert PRIORITY_LINE.match(line), line
        assert not TIMESTAMP.search(line), line
    priorities = {int(PRIORITY_LINE.match(ln).group(1)) for ln in lines}  # type: ignore[union-attr]
    assert {6, 4, 3} <= priorities
    by_text = {ln[3:]: ln[:3] for ln in lines}
    assert by_text[next(t for t in by_text if "listening on" in t)] == "<6>"
    assert by_text[next(t for t in by_text if "replaced stale pid file" in t)] == "<4>"
    assert by_text[next(t for t in by_text if "redis unavailable" in t)] == "<3>"


def test_under_journald_a_failed_start_is_one_error_line(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "a-file").write_text("")
    bad_db = str(tmp_path / "a-file" / "dts.db")
    code, lines = run_server(tmp_path, redis_url, True, "--db", bad_db, stop=False)
    assert code == 1
    errors = [ln for ln in lines if ln.startswith("<3>")]
    assert len(errors) == 1 and "cannot open database" in errors[0], lines
    assert all(PRIORITY_LINE.match(ln) for ln in lines), lines


def test_without_journald_lines_have_an_iso_timestamp(tmp_path: Path, redis_url: str) -> None:
    code, lines = run_server(tmp_path, redis_url, journald=False)
    assert code == 0
    assert lines
    for line in lines:
        assert ISO_LINE.match(line), line
    assert any(" WARNING dts.server: replaced stale pid file" in ln for ln in lines)


def test_a_journal_stream_that_is_not_our_stderr_is_ignored(tmp_path: Path, redis_url: str) -> None:
    # Given JOURNAL_STREAM inherited from a parent whose stderr was the journal (a job of a
    # systemd-run worker, a program of a supervisord that systemd started), but our stderr is
    # a file
    other = tmp_path / "elsewhere"
    other.write_text("")
    err = tmp_path / "stderr"
    err.write_text("")
    pidfile = tmp_path / "p.pid"
    argv = [str(BIN / "dts-server"), "--listen", f"127.0.0.1:{free_port()}"]
    argv += ["--redis-url", redis_url, "--db", str(tmp_path / "x.db"), "--pidfile", str(pidfile)]
    with open(err, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=journal_env(other))
    try:
        wait_until(lambda: "listening on" in err.read_text() or proc.poll() is not None, 20)
    finally:
        proc.terminate()
        proc.wait(30)
    lines = err.read_text().splitlines()
    assert lines and all(ISO_LINE.match(ln) for ln in lines), lines


@pytest.mark.parametrize("journald", [False, True])
def test_json_format_is_one_object_per_line(tmp_path: Path, redis_url: str, journald: bool) -> None:
    code, lines = run_server(tmp_path, redis_url, journald, "--log-format", "json")
    assert code == 0
    assert len(lines) >= 3
    records = []
    for line in lines:
        if journald:
            assert PRIORITY_LINE.match(line), line
            line = line[3:]
        obj = json.loads(line)
        assert set(obj) >= {"time", "level", "logger", "message", "pid"}
        assert ISO_LINE.match(obj["time"] + " INFO ")
        records.append(obj)
    assert {"info", "warning"} <= {r["level"] for r in records}
    assert any("listening on" in r["message"] for r in records)


def test_worker_lines_under_journald_too(tmp_path: Path, redis_url: str) -> None:
    # A worker whose server is not there yet logs a warning about it, at priority 4
    err = tmp_path / "stderr"
    err.write_text("")
    argv = [str(BIN / "dts-worker"), "--server", f"127.0.0.1:{free_port()}"]
    argv += ["--redis-url", redis_url, "--name", "jw"]
    with open(err, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=journal_env(err))
    try:
        wait_until(lambda: "unavailable" in err.read_text(), 20)
        assert pid_alive(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    lines = err.read_text().splitlines()
    assert all(PRIORITY_LINE.match(ln) and not TIMESTAMP.search(ln) for ln in lines), lines
    assert any(ln.startswith("<4>WARNING dts.worker: server") for ln in lines), lines


def test_a_traceback_keeps_its_priority_on_every_line() -> None:
    # journald reads each line as an entry: a multi-line record must prefix each line
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("dts.x", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    text = logs.TextFormatter(journald=True).format(record)
    lines = text.splitlines()
    assert len(lines) > 2 and all(ln.startswith("<3>") for ln in lines), lines
    assert lines[0] == "<3>ERROR dts.x: failed"
    assert lines[-1] == "<3>RuntimeError: boom"
