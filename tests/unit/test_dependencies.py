"""The pure rules of dependencies (dts.dependencies) and the workflow file
(dts.client.workflow): cycles named in the message, limits, step references, TOML keys."""

from __future__ import annotations

import pytest

from dts.client.workflow import edges_text, id_list, load_workflow
from dts.dependencies import check_dependencies, find_cycle, judge
from dts.domain import Dependency, JobSpec, JobStatus, submitted_job
from dts.errors import InvalidArgument

S = JobStatus
BASE = JobSpec(argv=())


def test_find_cycle_names_the_cycle_in_order() -> None:
    assert find_cycle({0: [1], 1: [2], 2: []}) is None
    assert find_cycle({0: [1], 1: [2], 2: [0]}) == [0, 1, 2, 0]
    assert find_cycle({0: [], 1: [2], 2: [1], 3: [1]}) == [1, 2, 1]
    # a long chain does not recurse
    assert find_cycle({i: [i + 1] for i in range(20_000)}) is None


def test_check_dependencies_refuses_what_cannot_be() -> None:
    def label(i: int) -> str:
        return f"s{i}"

    with pytest.raises(InvalidArgument, match="dependency cycle: s0 -> s1 -> s0"):
        check_dependencies([JobSpec(("x",), steps=(1,)), JobSpec(("x",), steps=(0,))], label)
    with pytest.raises(InvalidArgument, match="s0 depends on itself"):
        check_dependencies([JobSpec(("x",), steps_finished=(0,))], label)
    with pytest.raises(InvalidArgument, match="at most 1000"):
        check_dependencies([JobSpec(("x",), after=tuple(range(1, 1002)))], label)
    with pytest.raises(InvalidArgument, match="not a job id: 0"):
        check_dependencies([JobSpec(("x",), after=(0,))], label)
    # 1,000 dependencies are fine, and so is a job listed under both kinds
    check_dependencies([JobSpec(("x",), after=tuple(range(1, 1001)), after_finished=(1,))], label)


def test_judge_says_met_never_or_not_yet() -> None:
    assert judge("succeeded", S.SUCCEEDED) is True
    assert judge("succeeded", S.FAILED) is False
    assert judge("succeeded", S.CANCELLED) is False
    assert judge("succeeded", None) is False  # deleted: its outcome is not known
    assert judge("succeeded", S.RUNNING) is None
    assert judge("succeeded", S.WAITING) is None
    assert judge("finished", S.FAILED) is True
    assert judge("finished", None) is True
    assert judge("finished", S.QUEUED) is None


def test_a_job_with_dependencies_is_made_waiting_with_its_delay_kept() -> None:
    job = submitted_job(1, JobSpec(("x",), after=(5,), delay=30.0), 100.0)
    assert (job.status, job.run_at) == (S.WAITING, 130.0)
    assert submitted_job(1, JobSpec(("x",), steps=(0,)), 100.0).run_at is None
    assert submitted_job(1, JobSpec(("x",)), 100.0).status is S.QUEUED


def test_id_list() -> None:
    assert id_list("3,4,5") == [3, 4, 5]
    for bad in ("3,x", "0", "-2", ""):
        with pytest.raises(Exception, match="job id"):
            id_list(bad)


WORKFLOW = """
[[step]]
name = "fetch"
command = "echo fetch"
retries = 2

[[step]]
name = "build"
command = ["make", "all"]
after = ["fetch"]
queue = "build"
timeout = "5m"
env = { MODE = "release" }

[[step]]
name = "report"
command = "echo done"
after_finished = ["build"]
max_output = "1M"
"""


def test_a_workflow_file_becomes_specs_with_step_references() -> None:
    names, specs = load_workflow(WORKFLOW, BASE)
    assert names == ["fetch", "build", "report"]
    fetch, build, report = specs
    assert (fetch.argv, fetch.shell, fetch.max_retries, fetch.name) == (
        ("echo fetch",),
        True,
        2,
        "fetch",
    )
    assert (build.argv, build.shell, build.steps, build.queue, build.timeout) == (
        ("make", "all"),
        False,
        (0,),
        "build",
        300.0,
    )
    assert build.env == (("MODE", "release"),)
    assert (report.steps, report.steps_finished, report.limits.output) == ((), (1,), 1 << 20)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[step]]\nname='a'\ncommand='x'\nafter=['b']", "step 'a' runs after unknown step 'b'"),
        (
            "[[step]]\nname='a'\ncommand='x'\n[[step]]\nname='a'\ncommand='y'",
            "duplicate step name 'a'",
        ),
        (
            "[[step]]\nname='a'\ncommand='x'\nafter=['b']\n[[step]]\nname='b'\ncommand='y'\nafter=['a']",
            "dependency cycle: step 'a' -> step 'b' -> step 'a'",
        ),
        ("[[step]]\nname='a'\ncommand='x'\nafter=['a']", "step 'a' depends on itself"),
        ("[[step]]\nname='a'\ncommand='x'\ncolour='red'", "step 'a': unknown key 'colour'"),
        ("[[step]]\nname='a'", "step 'a': command must be"),
        ("[[step]]\ncommand='x'", "step 1 has no name"),
        ("steps = 1", "unknown top-level key 'steps'"),
        ("", "no steps"),
        ("[[step]\n", "not TOML"),
        ("[[step]]\nname='a'\ncommand='x'\npriority='high'", "priority must be an integer"),
    ],
)
def test_a_bad_workflow_is_refused_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")) as e:
        load_workflow(text, BASE)
    assert "\n" not in str(e.value)


def test_a_workflow_of_too_many_steps_is_refused() -> None:
    text = "".join(f"[[step]]\nname='s{i}'\ncommand='true'\n" for i in range(10_000))
    with pytest.raises(InvalidArgument, match="at most 1000 steps, this one has 10000"):
        load_workflow(text, BASE)


def test_edges_text() -> None:
    edges = (Dependency(3, S.SUCCEEDED), Dependency(4, None, True))
    assert edges_text(edges) == "3 (succeeded), 4 (deleted, after-finished)"
