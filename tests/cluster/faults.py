"""The faults of the cluster tier, each returning once what it broke is back (or, for a kill,
right after the kill: the caller decides when to start the server again):

* kill -9 of a server; a server host's link cut and restored; a rolling restart of all servers;
* a Redis failover asked of Sentinel (SENTINEL FAILOVER), and kill -9 of the Redis master (then
  started again, as a replica of the new master);
* PostgreSQL stopped (fast, or immediate: a crash) and started again.

The fixed durations here (how long a link stays cut, a database stays down) are the faults
themselves; everything else waits for what it needs by polling with a deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .cluster import REDIS_PORTS, Cluster, wait_for


@dataclass
class Hit:
    """A fault: what it was, and when it began and was over (time.time())."""

    kind: str
    target: str
    at: float
    back: float = 0.0
    note: str = ""

    def __str__(self) -> str:
        took = f"{self.back - self.at:.1f}s" if self.back else "-"
        return f"{self.kind} {self.target} ({took}{'; ' + self.note if self.note else ''})"


def kill_server(cl: Cluster, name: str) -> Hit:
    """SIGKILL to server `name`; started again by `restart_server`."""
    return Hit("server-kill", name, cl.kill_server(name))


def restart_server(cl: Cluster, hit: Hit) -> Hit:
    cl.start_server(hit.target)
    hit.back = time.time()
    return hit


def cut_link(cl: Cluster, name: str, seconds: float) -> Hit:
    """Server host `name` cut off for `seconds`; returns once it serves again."""
    host = cl.server_hosts[name]
    host.cut()
    hit = Hit("link-cut", name, time.time(), note=f"{seconds:g}s")
    time.sleep(seconds)  # the fault itself: a fixed duration
    host.restore()
    assert cl.servers[name].alive(), f"server {name} died while cut off"
    cl.wait_serving(name, 30)
    hit.back = time.time()
    return hit


def rolling_restart(cl: Cluster) -> Hit:
    """Each server in turn stopped (SIGTERM: it drains, exit 0) and started again; the next
    once it serves."""
    hit = Hit("rolling-restart", "s1,s2,s3", time.time())
    codes = []
    for name in cl.server_hosts:
        codes.append(cl.stop_server(name))
        cl.start_server(name)
    hit.back = time.time()
    hit.note = f"exit statuses {codes}"
    assert codes == [0, 0, 0], codes
    return hit


def redis_failover(cl: Cluster, kill: bool) -> Hit:
    """SENTINEL FAILOVER (kill=False), or kill -9 of the master and, once the sentinels named a
    new one, the old master started again as its replica. Returns when that is steady."""
    old = wait_for(cl.master, 30, "the sentinels to agree on a master")
    assert old is not None
    (new,) = [p for p in REDIS_PORTS if p != old]
    at = time.time()
    if kill:
        cl.redis[old].kill()
    else:
        host, port = cl.sentinel_addresses[0]
        cl.agent.call("redis", host=host, port=port, args=["SENTINEL", "FAILOVER", "dts"])
    wait_for(lambda: cl.master() == new, 30, f"the sentinels to name {new} the master")
    switched = time.time() - at
    if kill:
        cl.start_redis(old, master=new)
    cl.wait_redis_steady(60)
    kind = "redis-master-kill" if kill else "redis-failover"
    return Hit(kind, f"{old}->{new}", at, time.time(), f"new master named after {switched:.1f}s")


def pg_restart(cl: Cluster, mode: str, hold: float) -> Hit:
    """PostgreSQL stopped (`pg_ctl stop -m mode`) and started again `hold` seconds later."""
    at = time.time()
    cl.pg.halt(mode)
    time.sleep(hold)  # the fault itself: a fixed duration
    cl.pg.start()
    return Hit("postgres-restart", mode, at, time.time(), f"down {hold:g}s")
