"""The cluster tier's fixtures: one cluster of hosts (tests/cluster/cluster.py) for the session,
brought back to steady before each test, and taken down with its namespaces, processes and
files at the end (also when a test failed, and at exit). Without root or without `ip` the tier
is skipped (and so fails under CI=true, tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.harness import pid_alive, wait_until
from tests.postgres import _pg_bin

from . import netns
from .cluster import Cluster
from .load import Run


def missing() -> str:
    why = netns.missing()
    if why:
        return why
    for tool in ("redis-server", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not _pg_bin("initdb") or not _pg_bin("pg_ctl"):
        return "initdb and pg_ctl are not installed (Debian: postgresql)"
    return ""


RUN_DIR = re.compile(r"^dts-cluster-(\d+)-")


def sweep_dead_runs() -> list[str]:
    """What a run killed outright (SIGKILL: no finalizer, no atexit) left behind: its
    PostgreSQL is shut down, its namespaces emptied and deleted, its directory removed."""
    dirs = []
    for d in sorted(Path(tempfile.gettempdir()).glob("dts-cluster-*")):
        m = RUN_DIR.match(d.name)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        stop_postmaster(d / "pg" / "data")
        dirs.append(d)
    namespaces = netns.sweep_stale()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return [*map(str, dirs), *namespaces]


def stop_postmaster(data: Path) -> None:
    """SIGQUIT to the postmaster of `data` (an immediate shutdown, which frees its shared
    memory as a SIGKILL would not), if its pid file names one that runs on `data`."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if str(data).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not pid_alive(pid), 15, what="the postmaster to exit")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    why = missing()
    if why:
        pytest.skip(f"cluster tier: {why}")
    stale = sweep_dead_runs()
    if stale:
        print(f"\nremoved what runs killed outright left: {stale}")
    root = Path(tempfile.mkdtemp(prefix=f"dts-cluster-{os.getpid()}-"))
    root.chmod(0o755)  # PostgreSQL (user postgres) has its directory in it
    c: Cluster | None = None
    try:
        c = Cluster(root)
        c.start()
        yield c
    finally:
        if c is not None:
            c.close()
            left = c.net.left()
            assert not left, f"namespaces left behind: {left}"
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def cl(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's cluster, steady: every host linked, PostgreSQL up, a Redis master with its
    replica in sync under three agreeing sentinels, the three servers serving, the two workers
    registered. A failed test prints the tail of every log."""
    cluster.steady()
    yield cluster
    if request.node.stash.get(FAILED, False):
        for name, text in cluster.logs().items():
            print(f"\n----- {name} (last 60 lines)")
            print("\n".join(text.splitlines()[-60:]))


@pytest.fixture
def run(cl: Cluster, request: pytest.FixtureRequest) -> Iterator[Run]:
    """The test's load and ledger (tag: the test's name, shortened); its submitters are stopped
    at the end whatever happened."""
    tag = re.sub(r"[^a-z0-9]", "", request.node.name.removeprefix("test_").lower())[:24]
    r = Run(cl, tag)
    yield r
    with contextlib.suppress(Exception):
        r.stop()
