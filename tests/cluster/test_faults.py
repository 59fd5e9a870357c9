"""Each fault of the cluster tier under load (a submitter on the client host naming every
server, two worker hosts running ledger jobs), then the queue drained and every job judged:
every submit acknowledged in the end, the stored jobs exactly the acknowledged ones, lost = 0,
duplicate completions = 0 (tests/cluster/load.py).

The server kills measure how long a client and the workers that talked to the killed server
take to carry on: to the client's next acknowledged submit (target 3 s) and to each worker's
next claim (target 5 s); the tests allow twice that.
"""

from __future__ import annotations

import pytest

from . import faults
from .cluster import Cluster, wait_for
from .load import Run, acknowledged, next_submit

SUBMIT_TARGET = 3.0  # seconds from a server's kill to the next submit of a client naming all
CLAIM_TARGET = 5.0  # ... to the next claim of a worker that talked to it


def ordered(cl: Cluster, first: str) -> list[str]:
    """Every server's address, `first`'s first: a client given these talks to `first`."""
    return [cl.address(first)] + [a for a in cl.addresses if a != cl.address(first)]


@pytest.mark.timeout(300)
def test_a_server_killed(cl: Cluster, run: Run) -> None:
    """kill -9 of the server the workers talk to (and the client: it is first in its list)."""
    target = cl.talks_to(cl.workers["w1"])
    on_target = [w for w, p in cl.workers.items() if cl.talks_to(p) == target]
    leader = cl.leader()
    run.start(every=0.1, order=ordered(cl, target))
    run.wait_going()
    hit = faults.kill_server(cl, target)
    # the server stays down until the client and each of those workers went on without it
    wait_for(
        lambda: (
            next_submit(run.live(), hit.at) is not None
            and all(cl.claims_after(w, hit.at) for w in on_target)
        ),
        30,
        "a submit and a claim of each worker after the kill",
        0.25,
    )
    submit = next_submit(run.live(), hit.at)
    claims = {w: cl.claims_after(w, hit.at)[0] - hit.at for w in on_target}
    faults.restart_server(cl, hit)
    run.wait_going(acks=8, starts=0, after=hit.back)
    print(
        f"\nkilled {target} ({'the leader' if target == leader else 'not the leader'}); from"
        f" the kill to the client's next submit: {submit:.2f}s; to the next claim of "
        + ", ".join(f"{w}: {t:.2f}s" for w, t in claims.items())
    )
    run.finish()
    assert submit is not None and submit <= 2 * SUBMIT_TARGET, submit
    assert claims and all(t <= 2 * CLAIM_TARGET for t in claims.values()), claims


@pytest.mark.timeout(300)
def test_a_server_host_cut_off_for_20s(cl: Cluster, run: Run) -> None:
    """The link of the host of the server the workers talk to cut for 20 s, then restored:
    the client and the workers carry on through the other servers (their calls to the cut one
    fail when gRPC's keepalive gives up on it), and it serves again once its link is back."""
    target = cl.talks_to(cl.workers["w1"])
    leader = cl.leader()
    run.start(order=ordered(cl, target))
    run.wait_going()
    hit = faults.cut_link(cl, target, 20)
    records = run.live()
    during = [r for r in acknowledged(records, hit.at) if r["answered"] < hit.back]
    submit = next_submit(records, hit.at)
    claims = {w: (cl.claims_after(w, hit.at) or [float("nan")])[0] - hit.at for w in cl.workers}
    run.wait_going(acks=8, starts=0, after=hit.back)
    print(
        f"\ncut {target} ({'the leader' if target == leader else 'not the leader'}) for 20s:"
        f" {len(during)} submits acknowledged meanwhile, the first {submit:.2f}s after the cut;"
        " first claims after it: "
        + ", ".join(f"{w}: {t:.2f}s" for w, t in claims.items())
        + f"; the lead is now {cl.leader()}"
    )
    run.finish()
    assert len(during) >= 8, f"only {len(during)} submits acknowledged during the cut"


@pytest.mark.timeout(300)
def test_a_rolling_restart_of_all_servers(cl: Cluster, run: Run) -> None:
    run.start()
    run.wait_going()
    hit = faults.rolling_restart(cl)
    run.wait_going(acks=8, starts=0, after=hit.back)
    slowest = max(r["answered"] - r["sent"] for r in acknowledged(run.live(), hit.at))
    print(f"\n{hit}; the slowest submit meanwhile took {slowest:.2f}s")
    run.finish()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill", [False, True], ids=["sentinel-failover", "master-killed"])
def test_a_redis_master_failover(cl: Cluster, run: Run, kill: bool) -> None:
    """The Redis master fails over: asked of Sentinel, or killed (then started again as the new
    master's replica). Ids on the old master its replica never got are queued again by the
    server's reconciler."""
    run.start()
    run.wait_going()
    hit = faults.redis_failover(cl, kill)
    run.wait_going(acks=8, starts=8, after=hit.back)
    started = [e.at - hit.at for e in run.ledger.starts() if e.at > hit.at]
    print(f"\n{hit}; the first job started {min(started):.2f}s after the fault")
    run.finish()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted(cl: Cluster, run: Run, mode: str) -> None:
    """PostgreSQL stopped (fast; immediate: a crash) for 2 s: submits are refused meanwhile and
    sent again with their keys until acknowledged; the servers serve again by themselves."""
    run.start()
    run.wait_going()
    hit = faults.pg_restart(cl, mode, 2.0)
    run.wait_going(acks=8, starts=8, after=hit.back)
    records = run.live()
    retried = [r for r in records if r["tries"] > 1]
    first = next_submit(records, hit.back)
    print(
        f"\n{hit}; {len(retried)} batches were sent again ({sum(r['tries'] - 1 for r in retried)}"
        f" extra tries); the first acknowledged {first:.2f}s after PostgreSQL was back"
    )
    run.finish()
    assert retried, "no submit was refused while PostgreSQL was down"
    assert first is not None and first < 15, first


@pytest.mark.timeout(300)
def test_submits_streamed_while_their_server_is_killed(cl: Cluster, run: Run) -> None:
    """300 one-job submits streamed (submit_async) by a client naming every server; its server
    is killed after the 150th is sent. Each is acknowledged, and stored once: those whose
    answer was lost went again, to another server, with their keys."""
    run.start()
    run.wait_going()
    target = "s1" if cl.servers["s1"].alive() else "s2"
    out = cl.agent.call(
        "burst", timeout=240, servers=ordered(cl, target), ledger=str(run.ledger_path),
        tag=f"{run.tag}b", count=300, kill_pid=cl.servers[target].pid, kill_after=150,
    )  # fmt: skip
    run.records += [{**r, "tries": 1} for r in out["records"]]
    failed = [r for r in out["records"] if r["answered"] is None]
    after = [r["answered"] - out["killed_at"] for r in out["records"] if r["answered"]]
    print(
        f"\nstreamed 300 submits, {target} killed after the 150th: {300 - len(failed)}"
        f" acknowledged, the last {max(after):.2f}s after the kill; the client ended on"
        f" {cl.server_of(out['server'])}"
    )
    assert not failed, failed[:5]
    run.finish()  # (its steady() starts the killed server again first)
