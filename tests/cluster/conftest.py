"""The cluster tier's fixtures: one cluster of hosts (tests/cluster/cluster.py) for the session,
brought back to steady before each test, and taken down with its namespaces, processes and
files at the end (also when a test failed, and at exit). Without root or without `ip` the tier
is skipped (and so fails under CI=true, tests/conftest.py)."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    why = missing()
    if why:
        pytest.skip(f"cluster tier: {why}")
    stale = netns.sweep_stale()
    if stale:
        print(f"\nremoved the namespaces of a dead run: {stale}")
    root = Path(tempfile.mkdtemp(prefix="dts-cluster-"))
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
