"""The tests' hands inside the cluster's network: a process on the client host that the test
(in the root namespace, which cannot reach the hosts' addresses) drives over its stdin and
stdout, one JSON object a line each way:

    -> {"op": "health", "args": {"addresses": ["10.254.77.11:50051"]}}
    <- {"ok": true, "value": {"10.254.77.11:50051": "SERVING"}}
    <- {"ok": false, "error": "Unavailable: ..."}            (what the op raised)

It asks the dts-servers (dts.client.Client naming every server), the Redis nodes and the
sentinels, and PostgreSQL, and it runs the load: submitters, each a thread with a client of its
own that submits small batches of ledger jobs. Each batch carries one key, and goes again with
that key until it is acknowledged (or 90 s passed: given up), so a job is stored once however
many times its submit was sent, and every stored job was acknowledged. Each batch is recorded:
its key, names, ids, the tries and errors, and when it was sent and answered (time.time(): the
machine's clock, which the test reads too).

    python -m tests.cluster.agent      (started by tests/cluster/cluster.py, `ip netns exec`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis

from dts.client import Client
from dts.client.api import new_key
from dts.domain import JobSpec
from dts.errors import DtsError
from dts.failover import FailoverChannel
from tests.chaos.ledger import Ledger, check

GIVE_UP = 90.0  # seconds a batch is sent again (same key) before it is recorded as given up
RETRY_EVERY = 0.2  # seconds between two tries of a batch whose submit failed

log = logging.getLogger("agent")


def _client(servers: Sequence[str], timeout: float = 5.0) -> Client:
    return Client(",".join(servers), timeout=timeout)


def _current(client: Client) -> str:
    """The server the client's calls go to now."""
    channel = client.channel
    return channel.address if isinstance(channel, FailoverChannel) else client.address


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


class Load:
    """A submitter: every `every` seconds, `batch` ledger jobs that sleep 0.3 to 1.2 s, named
    `tag`-N; until stopped, or for `limit` seconds at most."""

    def __init__(
        self,
        servers: Sequence[str],
        ledger: str,
        tag: str,
        batch: int = 2,
        every: float = 0.25,
        seed: int = 0,
        limit: float = 600.0,
    ) -> None:
        self.servers = list(servers)
        self.ledger = Ledger(Path(ledger))
        self.tag = tag
        self.batch = batch
        self.every = every
        self.rng = random.Random(seed)
        self.limit = limit
        self.records: list[dict[str, Any]] = []
        self.crash = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{tag}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + self.limit
            with _client(self.servers) as client:
                n = 0
                while not self._stop.is_set() and time.monotonic() < deadline:
                    names = [f"{self.tag}-{n + i}" for i in range(self.batch)]
                    n += self.batch
                    sleeps = [self.rng.uniform(0.3, 1.2) for _ in names]
                    specs = [
                        JobSpec(
                            argv=(self.ledger.sleeper(round(s, 2)),),
                            shell=True,
                            env=self.ledger.env,
                            name=name,
                        )
                        for s, name in zip(sleeps, names, strict=True)
                    ]
                    record = submit_until_acknowledged(client, specs)
                    with self._lock:
                        self.records.append(record)
                    self._stop.wait(self.every)
        except BaseException as e:  # reported by load_stop
            self.crash = _short(e)
            log.exception("load %s crashed", self.tag)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(GIVE_UP + 30)
        return {
            "records": self.snapshot(),
            "crash": self.crash,
            "stuck": self._thread.is_alive(),
        }


def submit_until_acknowledged(client: Client, specs: list[JobSpec]) -> dict[str, Any]:
    """Submit `specs` with one key until acknowledged, or GIVE_UP seconds passed."""
    key = new_key()
    record: dict[str, Any] = {
        "key": key,
        "names": [s.name for s in specs],
        "sent": time.time(),
        "answered": None,
        "ids": [],
        "tries": 0,
        "errors": [],
        "server": "",
    }
    give_up = time.monotonic() + GIVE_UP
    while time.monotonic() < give_up:
        record["tries"] += 1
        try:
            jobs = client.submit(specs, key=key)
        except DtsError as e:
            if len(record["errors"]) < 5:
                record["errors"].append(_short(e))
            time.sleep(RETRY_EVERY)  # pacing the tries of a refused submit
            continue
        record["answered"] = time.time()
        record["ids"] = [j.id for j in jobs]
        record["server"] = _current(client)
        break
    return record


# ---- the operations -----------------------------------------------------------------------------

LOADS: dict[str, Load] = {}


def op_ping() -> str:
    return "pong"


def op_health(addresses: list[str]) -> dict[str, str]:
    """Each server's gRPC health, or the error asking it gave."""
    out = {}
    for address in addresses:
        try:
            with Client(address, timeout=2) as c:
                out[address] = c.health()
        except DtsError as e:
            out[address] = _short(e)
    return out


def op_stats(servers: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with _client(servers) as c:
        for s in c.stats():
            counts[s.status.value] = counts.get(s.status.value, 0) + s.count
    return counts


def op_workers(servers: list[str]) -> dict[str, str]:
    with _client(servers) as c:
        return {w.name: w.state.value for w in c.workers()}


def op_jobs(url: str, tag: str) -> list[tuple[int, str, str]]:
    """The jobs named `tag`-N in the servers' database (all of them: a listing through the
    API stops at 10,000): (id, name, status)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id, name, status FROM jobs WHERE name ~ %s ORDER BY id",
            (f"^{re.escape(tag)}-[0-9]+$",),
        ).fetchall()
    return [(int(i), str(name), str(status)) for i, name, status in rows]


def op_check(servers: list[str], ledger: str, ids: list[int]) -> dict[str, Any]:
    """The ledger checker's verdict on jobs `ids` (tests/chaos/ledger.py)."""
    with _client(servers, timeout=10) as c:
        verdict = check(c, Ledger(Path(ledger)), ids)
    # (not dataclasses.asdict: it would rebuild each Counter from (key, count) pairs)
    return {f.name: getattr(verdict, f.name) for f in dataclasses.fields(verdict)}


def _redis(host: str, port: int) -> redis.Redis:
    return redis.Redis(
        host, port, socket_timeout=3, socket_connect_timeout=3, decode_responses=True
    )


def op_redis(host: str, port: int, args: list[str]) -> Any:
    """One Redis command (to a node or a sentinel)."""
    with _redis(host, port) as r:
        return r.execute_command(*args)


def op_replication(host: str, port: int) -> dict[str, Any]:
    with _redis(host, port) as r:
        info: dict[str, Any] = r.info("replication")
        return info


def op_sentinels(sentinels: list[tuple[str, int]], service: str) -> list[dict[str, Any] | str]:
    """What each sentinel knows of the service's master, or why it did not say."""
    out: list[dict[str, Any] | str] = []
    for host, port in sentinels:
        try:
            with _redis(host, port) as r:
                m = r.execute_command("SENTINEL", "MASTER", service)
        except redis.RedisError as e:
            out.append(_short(e))
            continue
        state = dict(zip(m[::2], m[1::2], strict=True)) if isinstance(m, list) else dict(m)
        keep = ("ip", "port", "flags", "num-slaves", "num-other-sentinels", "config-epoch")
        out.append({k: state.get(k) for k in keep})
    return out


def op_postgres(url: str) -> int:
    with psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def op_load_start(name: str, **kw: Any) -> str:
    assert name not in LOADS, f"load {name} runs already"
    LOADS[name] = Load(**kw)
    return name


def op_load_records(name: str) -> list[dict[str, Any]]:
    return LOADS[name].snapshot()


def op_load_stop(name: str) -> dict[str, Any]:
    return LOADS.pop(name).stop()


def op_burst(
    servers: list[str], ledger: str, tag: str, count: int, kill_pid: int, kill_after: int
) -> dict[str, Any]:
    """`count` one-job submits over the client's SubmitStream, none waiting for the one
    before; right after the `kill_after`-th is sent, SIGKILL to `kill_pid` (the server they
    go to). Then each one's answer: ids, or the error."""
    book = Ledger(Path(ledger))
    pending = []
    killed_at = None
    with _client(servers, timeout=20) as c:
        for i in range(count):
            spec = JobSpec(
                argv=(book.command("true"),), shell=True, env=book.env, name=f"{tag}-{i}"
            )
            pending.append((spec.name, time.time(), c.submit_async([spec])))
            if i + 1 == kill_after:
                killed_at = time.time()
                os.kill(kill_pid, signal.SIGKILL)
        records = []
        for name, sent, p in pending:
            record: dict[str, Any] = {"names": [name], "sent": sent, "ids": [], "errors": []}
            try:
                record["ids"] = [j.id for j in p.result(90)]
                record["answered"] = time.time()
            except DtsError as e:
                record["errors"].append(_short(e))
                record["answered"] = None
            records.append(record)
        server = _current(c)
    return {"killed_at": killed_at, "records": records, "server": server}


OPS: dict[str, Callable[..., Any]] = {
    name.removeprefix("op_"): fn for name, fn in list(globals().items()) if name.startswith("op_")
}


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply.update(ok=True, value=OPS[request["op"]](**request.get("args", {})))
        except Exception as e:  # the test decides what an error means
            log.info("op %s failed: %s", request.get("op"), _short(e))
            reply.update(ok=False, error=_short(e))
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
