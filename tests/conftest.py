"""Fixtures: real redis-server, dts-server and dts-worker processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dts.client import Client
from dts.server.store import Store

if TYPE_CHECKING:
    from tests.postgres import Databases
from tests import harness
from tests.harness import RedisProcess, ServerProcess, WorkerProcess, run_cli

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skip report gives (its longrepr is a (path, line, reason) triple)."""
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def fail_the_skip(report: pytest.TestReport | pytest.CollectReport, nodeid: str) -> None:
    """In CI every test must run: a skip, whatever raised it, becomes a loud failure."""
    reason = skip_reason(report)
    report.outcome = "failed"
    report.longrepr = f"{nodeid} was skipped under CI=true ({reason}); CI must run every test"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Skips from skip/skipif markers, pytest.skip in a test or fixture, importorskip."""
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        fail_the_skip(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Skips of a whole module (module-level pytest.skip or importorskip)."""
    report = yield
    if IN_CI and report.skipped:
        fail_the_skip(report, collector.nodeid)
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need redis-server skip locally without it, and fail loudly in CI."""
    if shutil.which("redis-server"):
        return
    for item in items:
        if "unit" not in item.nodeid.split("/"):
            if IN_CI:
                raise pytest.UsageError("redis-server is not installed; CI must install it")
            item.add_marker(pytest.mark.skip(reason="redis-server is not installed"))


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(tmp_path)
    r.start()
    yield r
    r.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server's admin URL for the run: skipped locally without one (and without
    initdb to start one), a failure in CI."""
    from tests import postgres

    try:
        with postgres.server() as url:
            yield url
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of an empty PostgreSQL database of this test's own."""
    from tests import postgres

    with postgres.database(postgres_server) as url:
        yield url


STORES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `dts_store` (every system test does) runs once on each store, unless it
    is marked single_store: it names its store itself."""
    if "dts_store" in metafunc.fixturenames and not metafunc.definition.get_closest_marker(
        "single_store"
    ):
        metafunc.parametrize("dts_store", STORES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def dts_store(request: pytest.FixtureRequest) -> Iterator[Databases | None]:
    """The store the dts-servers the tests start keep their history in, when not given one: a
    SQLite file in their directory, or (param "postgres") a PostgreSQL database of their own.
    Fixtures that start a server take this one, so that they start again for the other store."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    from tests.postgres import Databases

    databases = Databases(request.getfixturevalue("postgres_server"))
    harness.default_db = databases.for_dir
    try:
        yield databases
    finally:
        harness.default_db = harness.sqlite_file
        databases.drop_since(0)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store in turn, empty: a test that takes it is the contract both must keep."""
    if request.param == "sqlite":
        from dts.server.store.sqlite import SqliteStore

        opened: Store = SqliteStore(str(tmp_path / "dts.db"))
    else:
        from dts.server.store.postgres import PostgresStore

        opened = PostgresStore(request.getfixturevalue("postgres_url"))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server shared by a module's tests (each test uses its own key prefix or db)."""
    r = RedisProcess(tmp_path_factory.mktemp("redis"))
    r.start()
    yield r.url
    r.kill()


@dataclass
class Cluster:
    """A redis-server, a dts-server and workers, plus the CLI pointed at them."""

    dir: Path
    redis: RedisProcess
    server: ServerProcess
    workers: list[WorkerProcess] = field(default_factory=list)

    def cli(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run_cli(self.server.address, *args, **kw)  # type: ignore[arg-type]

    def client(self) -> Client:
        return Client(self.server.address)

    def add_worker(
        self, name: str, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        w = WorkerProcess(self.dir, self.server.address, self.redis.url, name, *extra, env=env)
        w.start(wait=wait)
        self.workers.append(w)
        return w

    def restart_server(self, *extra: str) -> None:
        self.server.stop()
        s = ServerProcess(
            self.dir, self.redis.url, *extra, port=self.server.port, db=self.server.db
        )
        s.start()
        self.server = s

    def stop(self) -> None:
        for w in self.workers:
            w.stop(timeout=15)
        self.server.stop()
        self.redis.kill()


def make_cluster(
    root: Path,
    workers: int,
    *server_args: str,
    worker_args: tuple[str, ...] = (),
) -> Cluster:
    r = RedisProcess(root)
    r.start()
    s = ServerProcess(root, r.url, *server_args)
    s.start()
    c = Cluster(root, r, s)
    for i in range(workers):
        c.add_worker(f"w{i + 1}", *worker_args)
    return c


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dts_store: Databases | None
) -> Iterator[Cluster]:
    """Shared by a module: server (2 s worker timeout) and two workers of concurrency 2."""
    c = make_cluster(
        tmp_path_factory.mktemp("cluster"),
        2,
        "--worker-timeout",
        "2",
        worker_args=("--concurrency", "2", "--kill-grace", "1"),
    )
    yield c
    c.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path, dts_store: Databases | None) -> Iterator[Cluster]:
    """A cluster of one's own with no workers yet (tests add the workers they need)."""
    c = make_cluster(tmp_path, 0, "--worker-timeout", "2")
    yield c
    c.stop()
