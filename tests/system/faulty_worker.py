"""dts-worker with a bug planted in one of its threads, for the tests of a worker dying of one.

    python -m tests.system.faulty_worker slot|heartbeat [dts-worker options]

slot: a slot raises right after running a job whose command mentions CRASH, before it reports
the result. heartbeat: the heartbeat raises as soon as the worker holds a job. The production
code is unchanged: the bug is patched in here, before the worker starts.
"""

from __future__ import annotations

import sys

from dts.domain import Result
from dts.v1 import dts_pb2 as pb
from dts.worker import main as worker
from dts.worker.attempts import Attempts
from dts.worker.runner import Execution


class PlantedBug(RuntimeError):
    """The planted bug."""


def plant(mode: str) -> None:
    if mode == "slot":
        execute = Attempts.execute

        def buggy_execute(self: Attempts, exe: Execution) -> Result:
            result = execute(self, exe)
            if "CRASH" in exe.assignment.spec.display:
                raise PlantedBug(f"planted bug after job {result.job_id} ran")
            return result

        Attempts.execute = buggy_execute  # type: ignore[method-assign]
    elif mode == "heartbeat":
        leases = Attempts.leases

        def buggy_leases(self: Attempts) -> list[pb.Lease]:
            held = leases(self)
            if held:
                raise PlantedBug("planted bug in the heartbeat")
            return held

        Attempts.leases = buggy_leases  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    plant(sys.argv[1])
    sys.exit(worker.main(sys.argv[2:]))
