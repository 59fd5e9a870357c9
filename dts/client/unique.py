"""dts-client submit --unique: the option, its checks, and the note for a job found by its key
rather than submitted (see README "Unique jobs")."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from dts.client.args import PROG, UsageError
from dts.domain import Job, JobSpec


def add_unique_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unique",
        metavar="KEY",
        default=None,
        help="while a job of the queue with this key is not final, submit nothing and "
        "print that job's id (a note on stderr)",
    )


def unique_spec(base: JobSpec, ns: argparse.Namespace) -> JobSpec:
    """`base` with submit's --unique KEY, if given (UsageError for an empty one, or with
    --from-file: one key cannot name many jobs). The key's other rules are the spec's."""
    key = ns.unique
    if key is None:
        return base
    if not key:
        raise UsageError("--unique takes a key that is not empty")
    if ns.from_file:
        raise UsageError("--unique names one job: it cannot be given with --from-file")
    return replace(base, unique=key)


def note_existing(jobs: Sequence[Job]) -> None:
    """One line on stderr for each job the submit found rather than made."""
    for job in jobs:
        if job.existing:
            sys.stderr.write(
                f"{PROG}: job {job.id} has unique key {job.spec.unique} in queue"
                f" {job.spec.queue} and is not final: not submitted again\n"
            )


def with_existing(obj: dict[str, Any], job: Job) -> dict[str, Any]:
    """A submitted job's JSON, saying whether it existed already."""
    obj["existing"] = job.existing
    return obj
