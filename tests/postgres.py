"""A PostgreSQL server for the tests: the machine's own on 127.0.0.1:5432 when it answers, else a
throwaway cluster started with initdb/pg_ctl on a free port (DTS_TEST_POSTGRES=own forces that);
each test gets a database of its own, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.harness import free_port

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        candidate = version / "bin" / name
        if candidate.exists():
            return str(candidate)
    return None


class Cluster:
    """A throwaway PostgreSQL cluster (run as an unprivileged user when we are root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dts-pg-"))
        self.port = free_port()
        self.user = ""
        if os.geteuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run(
            [*prefix, *argv], check=True, capture_output=True, text=True, timeout=120, cwd="/"
        )

    def start(self) -> str:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb and pg_ctl are not installed (Debian: postgresql)")
        data = self.dir / "data"
        self._run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.resume()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (fast: sessions are ended; immediate: as a crash), keeping its data."""
        self._run(str(_pg_bin("pg_ctl")), "-D", str(self.dir / "data"), "-m", mode, "stop")

    def resume(self) -> None:
        """Start the stopped server again on the same port."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        log = str(self.dir / "postgres.log")  # the server must not hold our pipes open
        pg_ctl = str(_pg_bin("pg_ctl"))
        self._run(pg_ctl, "-D", str(self.dir / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        if pg_ctl:
            with contextlib.suppress(subprocess.SubprocessError):
                self._run(pg_ctl, "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test run; RuntimeError saying why when
    there is none and none can be started."""
    if os.environ.get("DTS_TEST_POSTGRES") != "own" and _answers(LOCAL):
        yield LOCAL
        return
    cluster = Cluster()
    try:
        try:
            url = cluster.start()
        except (subprocess.CalledProcessError, OSError, KeyError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise RuntimeError(f"no PostgreSQL answers and none could be started: {detail}") from e
        yield url
    finally:
        cluster.stop()


def create_database(admin_url: str) -> str:
    """A new, empty database on the server of `admin_url`; its URL."""
    name = f"dts_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of `url`, ending whatever sessions it still has."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server of `admin_url`, dropped at the end."""
    url = create_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


class Databases:
    """A database per directory, made when first asked for: what a dts-server started by the
    tests in that directory keeps its history in when the tests run on PostgreSQL."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.made: dict[Path, str] = {}

    def for_dir(self, workdir: Path) -> str:
        if workdir not in self.made:
            self.made[workdir] = create_database(self.admin_url)
        return self.made[workdir]

    def drop_since(self, count: int) -> None:
        """Drop the databases made after the first `count` (their servers have stopped)."""
        for workdir in list(self.made)[count:]:
            drop_database(self.admin_url, self.made.pop(workdir))
