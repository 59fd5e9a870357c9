"""The schedules' part of the store contract, on every store (the `store` fixture): schedules
kept whole, one job per schedule and due time however often it is inserted, and the reads
the ticker and `schedule show` use."""

from __future__ import annotations

import threading
from dataclasses import replace

from dts.domain import JobSpec
from dts.limits import Limits
from dts.schedule import Catchup, Overlap, Schedule
from dts.server.store import Store

SPEC = JobSpec(
    argv=("echo", "hi"),
    queue="reports",
    priority=4,
    max_retries=2,
    env=(("A", "1"),),
    cwd="/tmp",
    name="lbl",
    limits=Limits(memory=1 << 20),
)
S = Schedule(
    "nightly",
    SPEC,
    cron="30 2 * * *",
    tz="Europe/Paris",
    catchup=Catchup.ALL,
    overlap=Overlap.SKIP,
    next_due=1000.0,
    created_at=1.0,
    updated_at=2.0,
)


def test_a_schedule_reads_back_whole_and_its_name_is_unique(store: Store) -> None:
    # Given a schedule added
    with store.transaction() as tx:
        assert tx.insert_schedule(S)
    # When the same name is added again, then it is refused and the first one stays
    with store.transaction() as tx:
        assert not tx.insert_schedule(replace(S, every=60.0, cron=""))
    assert store.schedules() == [S] and store.schedule("nightly") == S
    # And an update writes every field; a delete removes it
    changed = replace(S, paused=True, skips=3, last_skip_at=5.0, spec=replace(SPEC, timeout=9.0))
    with store.transaction() as tx:
        tx.update_schedule(changed)
        assert tx.get_schedule("nightly") == changed
    assert store.schedule("nightly") == changed
    with store.transaction() as tx:
        assert tx.delete_schedule("nightly") and not tx.delete_schedule("nightly")
    assert store.schedules() == [] and store.schedule("nightly") is None


def test_each_due_time_makes_one_job_and_runs_by_hand_any_number(store: Store) -> None:
    spec = SPEC.with_defaults(0, 1.0, 0.0)
    with store.transaction() as tx:
        made = tx.insert_schedule_jobs([spec, spec], "nightly", [1000.0, 2000.0], 10.0)
    assert [(j.schedule, j.due_at) for j in made] == [("nightly", 1000.0), ("nightly", 2000.0)]
    # When the same due time is inserted again (another server's tick), nothing is added
    with store.transaction() as tx:
        again = tx.insert_schedule_jobs([spec, spec], "nightly", [2000.0, 3000.0], 11.0)
        by_hand = tx.insert_schedule_jobs([spec, spec], "nightly", [None, None], 12.0)
        assert tx.latest_schedule_job("nightly") == by_hand[-1]
    assert [j.due_at for j in again] == [3000.0] and len(by_hand) == 2
    jobs = store.schedule_jobs("nightly", 10)
    assert [j.due_at for j in jobs] == [None, None, 3000.0, 2000.0, 1000.0]
    assert store.get_job(made[0].id) == made[0]
    assert store.get_job(made[0].id).spec == spec  # type: ignore[union-attr]
    # another schedule may have the same due time
    with store.transaction() as tx:
        assert len(tx.insert_schedule_jobs([spec], "other", [1000.0], 13.0)) == 1


def test_racing_inserts_of_one_due_time_make_one_job(store: Store) -> None:
    spec = SPEC.with_defaults(0, 1.0, 0.0)
    made: list[int] = []

    def fire() -> None:
        with store.transaction() as tx:
            made.extend(j.id for j in tx.insert_schedule_jobs([spec], "s", [500.0], 1.0))

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(store.schedule_jobs("s", 10)) == 1


def test_the_next_due_time_is_of_schedules_not_paused(store: Store) -> None:
    assert store.next_schedule_due() is None
    with store.transaction() as tx:
        tx.insert_schedule(replace(S, name="a", next_due=300.0, paused=True))
        tx.insert_schedule(replace(S, name="b", next_due=400.0))
    assert store.next_schedule_due() == 400.0
