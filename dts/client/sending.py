"""How dts-client sends a submit: a large --from-file in chunks, with a progress line on
stderr when it is a terminal, and a warning for each queue of the jobs that no live worker
serves (the jobs are stored all the same and wait for one)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from dts.client.api import Client
from dts.domain import Job, JobSpec
from dts.errors import DtsError

CHUNK = 10_000  # jobs of one Submit call: a larger file goes in several (each durable at once)


def submit_all(client: Client, specs: Sequence[JobSpec], err: TextIO | None = None) -> list[Job]:
    """Submit `specs`, CHUNK at a time; on a terminal, a line that says how far it got. When
    a chunk fails, the ones before it stay stored: stderr says how many, and which ids."""
    err = err or sys.stderr
    show = len(specs) > CHUNK and err.isatty()
    jobs: list[Job] = []
    try:
        for start in range(0, len(specs), CHUNK):
            jobs += client.submit(specs[start : start + CHUNK])
            if show:
                err.write(f"\rsubmitted {len(jobs):,} / {len(specs):,} jobs")
                err.flush()
    except DtsError:
        if show:
            err.write("\n")
        if jobs:
            err.write(
                f"{len(jobs):,} of {len(specs):,} jobs were submitted before the error "
                f"(ids {jobs[0].id} to {jobs[-1].id})\n"
            )
        raise
    if show:
        err.write("\n")
        err.flush()
    return jobs


def warn_unserved(client: Client, err: TextIO | None = None) -> None:
    """A warning on stderr for each queue a submit's answer named as served by no live
    worker, once per queue."""
    err = err or sys.stderr
    for queue in sorted(client.unserved_queues):
        err.write(f'warning: no live worker serves queue "{queue}"; the job waits until one does\n')
    client.unserved_queues.clear()
