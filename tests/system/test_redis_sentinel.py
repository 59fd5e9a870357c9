"""Redis as a Sentinel-managed service: a dts-server and a worker given `redis+sentinel://`
follow the master through (a) a failover asked of Sentinel and (b) a kill -9 of the master.
Every job, submitted before or after the fault, runs exactly once; ids the new master never had
(asynchronous replication lost them) are queued again by the server's reconciler.

The Redis side: a master and one replica (diskless sync at once), three sentinels (quorum 2,
down after 1 s). The replica replicates as an ACL user of its own, so a test can cut its link
for sure (that user switched off on the master, its connection killed): what is queued after
that never reaches the replica, as when a master dies before its replica caught up.

Also: a sentinel and a master that speak TLS only (rediss+sentinel://), and a bad sentinel URL
stopping either daemon at start in one line.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis

from dts.client import Client
from dts.domain import Job, JobSpec
from dts.queue.redis import connect
from tests.harness import (
    BIN,
    RedisProcess,
    SentinelProcess,
    ServerProcess,
    WorkerProcess,
    clean_env,
    free_port,
    run_cli,
    sqlite_file,
    wait_until,
)
from tests.system import test_security as security

pytestmark = pytest.mark.single_store  # a SQLite history of its own: Redis is what is tested

SERVICE = "dts"
PASSWORD = "dts-pw-" + "d" * 20  # dts's user on both nodes: never in a log
REPL_PASSWORD = "repl-pw-" + "r" * 20
NODE_ARGS = (
    "--repl-diskless-sync-delay", "0",
    "--user", "default", "on", "nopass", "~*", "&*", "+@all",  # the sentinels and the test
    "--user", "dts", "on", f">{PASSWORD}", "~*", "&*", "+@all",
    "--user", "repl", "on", f">{REPL_PASSWORD}", "+psync", "+replconf", "+ping",
    "--masteruser", "repl", "--masterauth", REPL_PASSWORD,
)  # fmt: skip


@dataclass
class Service:
    """The sentinel-managed Redis of a test."""

    master: RedisProcess
    replica: RedisProcess
    sentinels: list[SentinelProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://dts:{PASSWORD}@{hosts}/{SERVICE}/0"

    def master_port(self) -> int | None:
        """The master's port, once every sentinel names the same one."""
        ports = {int(s.master()["port"]) for s in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def steady(self) -> bool:
        """The replica is in sync, and every sentinel knows the other two and the replica."""
        if self.replica.client().info("replication").get("master_link_status") != "up":
            return False
        return all(
            int(s.master()["port"]) == self.master.port
            and int(s.master()["num-other-sentinels"]) == 2
            and int(s.master()["num-slaves"]) == 1
            for s in self.sentinels
        )

    def cut_replication(self) -> None:
        """The replica loses its link to the master and cannot get it back."""
        m = self.master.client()
        m.execute_command("ACL", "SETUSER", "repl", "off")
        m.execute_command("CLIENT", "KILL", "USER", "repl")
        wait_until(
            lambda: self.replica.client().info("replication")["master_link_status"] == "down",
            10,
            what="the replica's link to go down",
        )

    def stop(self) -> None:
        for p in [*self.sentinels, self.master, self.replica]:
            p.kill()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    dirs = [tmp_path / d for d in ("master", "replica", "sentinels")]
    for d in dirs:
        d.mkdir()
    master = RedisProcess(dirs[0], extra=NODE_ARGS)
    master.start()
    replica = RedisProcess(
        dirs[1], extra=(*NODE_ARGS, "--replicaof", "127.0.0.1", str(master.port))
    )
    svc = Service(master, replica, [])
    try:
        replica.start()
        for _ in range(3):
            s = SentinelProcess(dirs[2], master.port, SERVICE)
            svc.sentinels.append(s)
            s.start()
        started = time.monotonic()
        wait_until(svc.steady, 30, 0.1, what="the sentinels to know each other and the replica")
        print(f"\nsentinel service steady in {time.monotonic() - started:.1f}s")
        yield svc
    finally:
        svc.stop()


def ledger_job(ledger: Path, queue: str = "default") -> JobSpec:
    """A job that appends its id and start time (epoch seconds) to the ledger, then works 0.2s."""
    script = f'echo "$DTS_JOB_ID $(date +%s.%N)" >> {ledger}; sleep 0.2'
    return JobSpec(argv=("sh", "-c", script), queue=queue)


def runs(ledger: Path) -> list[tuple[int, float]]:
    if not ledger.exists():
        return []
    lines = ledger.read_text().splitlines()
    return [(int(a), float(b)) for a, b in (ln.split() for ln in lines if ln.strip())]


def all_succeed_once(c: Client, ledger: Path, jobs: list[Job]) -> None:
    """Every job succeeded, in one attempt, and the ledger shows each ran exactly once."""
    for job in jobs:
        done = c.wait(job.id, 60)
        assert done.status.value == "succeeded", done
        assert done.attempts == 1, (done, c.history(job.id))
    counts = Counter(job_id for job_id, _ in runs(ledger))
    assert counts == Counter(j.id for j in jobs), counts


def logged_at(log: str, text: str) -> float | None:
    """When the first line of `log` holding `text` was written (epoch seconds), if any."""
    for line in log.splitlines():
        if text in line:
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    return None


def users_connected(node: RedisProcess, user: str) -> int:
    return sum(1 for c in node.client().client_list() if c.get("user") == user)


def through_a_fault(tmp_path: Path, service: Service, fault: Callable[[], None], what: str) -> None:
    ledger = tmp_path / "ledger"
    server = ServerProcess(tmp_path, service.url, db=sqlite_file(tmp_path))
    server.start()
    workers = [WorkerProcess(tmp_path, server.address, service.url, "w1", "--concurrency", "2")]
    try:
        workers[0].start()
        with Client(server.address) as c:
            # Given jobs submitted before the fault, some of them done or running
            before = c.submit([ledger_job(ledger) for _ in range(8)])
            wait_until(lambda: len(runs(ledger)) >= 2, 30, what="the first jobs to start")
            # And jobs the replica never sees: its link is cut, then they are queued (in a queue
            # no worker serves yet, so they wait there)
            service.cut_replication()
            lost = c.submit([ledger_job(ledger, "later") for _ in range(3)])
            master = service.master.client()
            wait_until(lambda: master.zcard("dts:queue:later") == 3, 10, what="ids on the master")

            # When the master fails, and jobs are submitted at once
            fault_at = time.time()
            fault()
            after = c.submit([ledger_job(ledger) for _ in range(4)])
            wait_until(
                lambda: service.master_port() == service.replica.port,
                30,
                what="the sentinels to name the replica master",
            )
            switched = time.time() - fault_at
            moved = f"to 127.0.0.1:{service.replica.port} (failover)"
            seen = {
                name: wait_until(lambda p=p: logged_at(p.output(), moved), 15, what=name) - fault_at
                for name, p in (("the server", server), ("worker w1", workers[0]))
            }
            if service.master.alive():  # and nothing of dts talks to the old master any more
                wait_until(
                    lambda: users_connected(service.master, "dts") == 0,
                    5,
                    what="dts's connections to the old master to close",
                )
            # Then a worker serving `later` runs the ids lost with the old master: the server
            # queued them again on the new one
            workers.append(
                WorkerProcess(tmp_path, server.address, service.url, "w2", "--queues", "later")
            )
            workers[1].start()
            everyone = [*before, *lost, *after]
            all_succeed_once(c, ledger, everyone)
            # (the times: from the fault to a job's start, on the machine's one clock)
            since = {job_id: at - fault_at for job_id, at in runs(ledger) if at > fault_at}
            by_w1 = [t for j in everyone if (t := since.get(j.id)) and c.get(j.id).worker == "w1"]
            follow = min(by_w1)
            requeued = max(since[j.id] for j in lost)
        print(
            f"{what}: the sentinels named the new master {switched:.2f}s after the fault; "
            + ", ".join(f"{k} followed it {t:.2f}s after" for k, t in seen.items())
            + f"; the next job started {min(since.values()):.2f}s after the fault, the next on "
            f"the worker that lived through it {follow:.2f}s after; the ids lost with the old "
            f"master had all started {requeued:.2f}s after"
        )
        # And the server reconciled, and no log shows the password
        server_log = server.output()
        assert "redis was missing" in server_log, server_log
        for log in [server_log, *(w.output() for w in workers)]:
            assert PASSWORD not in log and "Traceback" not in log, log
        assert follow < 15, f"the worker took {follow:.1f}s to follow the new master"
    finally:
        for w in workers:
            w.stop(timeout=15)
        server.stop()


def test_a_failover_asked_of_sentinel(tmp_path: Path, service: Service) -> None:
    sentinel = service.sentinels[0].client()
    through_a_fault(
        tmp_path,
        service,
        lambda: sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE),
        "SENTINEL FAILOVER",
    )


def test_the_master_killed(tmp_path: Path, service: Service) -> None:
    through_a_fault(tmp_path, service, service.master.kill, "kill -9 of the master")


@pytest.mark.parametrize("program", ["dts-server", "dts-worker"])
def test_a_bad_sentinel_url_stops_a_daemon_at_start_in_one_line(program: str) -> None:
    bad = f"redis+sentinel://dts:{PASSWORD}@127.0.0.1:26379,127.0.0.1:x/{SERVICE}/0"
    r = subprocess.run(
        [str(BIN / program), "--redis-url", bad],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "sentinel address 2" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr and "***@127.0.0.1:26379" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A certificate for 127.0.0.1, its key, and the CA that signed it."""
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = security._ca(d, "dts-test-ca")
    cert, key = security._issue(d, "redis", ca, ca_key, "subjectAltName=IP:127.0.0.1")
    return cert, key, str(ca)


def test_sentinel_and_master_over_tls(tmp_path: Path, certs: tuple[str, str, str]) -> None:
    # Given a master and a sentinel that speak TLS only, with certificates from our CA
    cert, key, ca = certs
    port = free_port()
    master = RedisProcess(
        tmp_path,
        port,
        (
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
            "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
        ),
        url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}",
    )  # fmt: skip
    sentinel = SentinelProcess(tmp_path, port, SERVICE, quorum=1, tls=certs)
    server: ServerProcess | None = None
    try:
        master.start()
        sentinel.start()
        wait_until(lambda: sentinel.master()["flags"] == "master", 15, what="the sentinel")
        # Then dts works through them with a rediss+sentinel:// URL trusting that CA
        url = f"rediss+sentinel://{sentinel.address}/{SERVICE}/0?ssl_ca_certs={ca}"
        server = ServerProcess(tmp_path, url, db=sqlite_file(tmp_path))
        server.start()
        worker = WorkerProcess(tmp_path, server.address, url, "w1")
        worker.start()
        r = run_cli(server.address, "submit", "--wait", "--", "echo", "through tls")
        assert (r.returncode, r.stdout) == (0, "through tls\n"), r.stderr
        worker.stop()
        # And the same URL without TLS gets nowhere (the sentinel speaks TLS only)
        plain = connect(url.replace("rediss+", "redis+").split("?")[0])
        with pytest.raises(redis.ConnectionError):
            plain.ping()
    finally:
        if server is not None:
            server.stop()
        sentinel.kill()
        master.kill()
