"""Rules of job dependencies that need no store: how many a job may have, what a submit's
references to its own jobs (a workflow's steps) may be, and the cycle among them, if any.

Pure: the server checks every submit with these, and dts-client checks a workflow file with
them before sending it, for a message in the user's own step names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from dts.domain import JobSpec, JobStatus
from dts.errors import InvalidArgument

MAX_DEPENDENCIES: Final = 1000  # jobs one job may depend on (ids and steps together)
MAX_STEPS: Final = 1000  # steps of one workflow (jobs of a submit that name each other)
SUCCEEDED: Final = "succeeded"  # kind of an edge: --after, the dependency must succeed
FINISHED: Final = "finished"  # kind of an edge: --after-finished, any final status will do
KINDS: Final = (SUCCEEDED, FINISHED)


def find_cycle(edges: Mapping[int, Sequence[int]]) -> list[int] | None:
    """A cycle of `edges` (node -> the nodes it depends on) as its nodes in order, the first
    repeated at the end (e.g. [1, 2, 1]), or None. Iterative: 10,000 steps do not recurse."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path: list[int] = [start]
        todo: list[list[int]] = [list(edges.get(start, ()))]
        state[start] = 1
        while path:
            if not todo[-1]:
                state[path.pop()] = 2
                todo.pop()
                continue
            nxt = todo[-1].pop()
            mark = state.get(nxt, 0)
            if mark == 1:
                return [*path[path.index(nxt) :], nxt]
            if mark == 0:
                state[nxt] = 1
                path.append(nxt)
                todo.append(list(edges.get(nxt, ())))
    return None


def check_dependencies(specs: Sequence[JobSpec], label: Callable[[int], str]) -> None:
    """Refuse (InvalidArgument) a submit whose dependencies cannot be: too many for one job,
    an id that is not a job id, a step reference outside the submit or to itself, a cycle
    among its steps, a workflow of more than MAX_STEPS steps. `label(i)` names job i."""
    linked = [i for i, s in enumerate(specs) if s.steps or s.steps_finished]
    if linked and len(specs) > MAX_STEPS:
        raise InvalidArgument(
            f"a workflow has at most {MAX_STEPS} steps, this one has {len(specs)}"
        )
    edges: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        if not spec.waits:
            continue
        total = len(set(spec.after) | set(spec.after_finished)) + len(
            set(spec.steps) | set(spec.steps_finished)
        )
        if total > MAX_DEPENDENCIES:
            raise InvalidArgument(f"{label(i)} depends on {total} jobs; at most {MAX_DEPENDENCIES}")
        for job_id in (*spec.after, *spec.after_finished):
            if job_id <= 0:
                raise InvalidArgument(f"{label(i)}: not a job id: {job_id}")
        for step in (*spec.steps, *spec.steps_finished):
            if not 0 <= step < len(specs):
                raise InvalidArgument(f"{label(i)}: no step {step + 1} in this submit")
            if step == i:
                raise InvalidArgument(f"{label(i)} depends on itself")
        edges[i] = sorted(set(spec.steps) | set(spec.steps_finished))
    cycle = find_cycle(edges)
    if cycle is not None:
        raise InvalidArgument("dependency cycle: " + " -> ".join(label(i) for i in cycle))


def judge(kind: str, status: JobStatus | None) -> bool | None:
    """What one dependency in `status` means for the job waiting on it: True met, False never
    met (an --after dependency that failed or was cancelled), None not yet. A dependency that
    retention deleted (None) was final: met for --after-finished, never met for --after (its
    outcome is not known any more)."""
    if kind == FINISHED:
        return True if status is None or status.final else None
    if status is JobStatus.SUCCEEDED:
        return True
    if status is None or status.final:
        return False
    return None


def broken_note(job_id: int, status: JobStatus | None) -> str:
    """The error of a job cancelled because dependency `job_id` ended in `status`."""
    return f"dependency {job_id} {status.value if status else 'was deleted'}"
