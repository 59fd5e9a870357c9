"""Schedules on the wire: the Schedules service's messages to the domain's and back."""

from __future__ import annotations

from dts import wire
from dts.errors import InvalidArgument
from dts.schedule import Catchup, Overlap, Schedule
from dts.v1 import dts_pb2 as pb

SERVICE = "dts.v1.Schedules"


def schedule_to_pb(s: Schedule) -> pb.Schedule:
    return pb.Schedule(
        name=s.name,
        spec=wire.spec_to_pb(s.spec),
        cron=s.cron,
        every=s.every,
        tz=s.tz,
        catchup=s.catchup.value,
        overlap=s.overlap.value,
        paused=s.paused,
        next_due=s.next_due,
        skips=s.skips,
        last_skip_at=s.last_skip_at or 0.0,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


def schedule_from_pb(msg: pb.Schedule) -> Schedule:
    """The schedule a message defines (InvalidArgument for an unknown policy name)."""
    try:
        catchup = Catchup(msg.catchup or Catchup.LAST)
    except ValueError:
        raise InvalidArgument(f"catchup must be none, last or all, got {msg.catchup!r}") from None
    try:
        overlap = Overlap(msg.overlap or Overlap.ALLOW)
    except ValueError:
        raise InvalidArgument(f"overlap must be allow or skip, got {msg.overlap!r}") from None
    return Schedule(
        name=msg.name,
        spec=wire.spec_from_pb(msg.spec),
        cron=msg.cron,
        every=msg.every,
        tz=msg.tz or "UTC",
        catchup=catchup,
        overlap=overlap,
        paused=msg.paused,
        next_due=msg.next_due,
        skips=msg.skips,
        last_skip_at=msg.last_skip_at or None,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
    )
