"""How the dashboard writes values: times (UTC, said), durations, output bytes; and how it
reads the jobs page's filters from a query string. Pure functions, used as Jinja filters."""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dts.domain import JobStatus
from dts.errors import InvalidArgument
from dts.limits import format_duration

PAGE = 50  # jobs a page lists unless ?limit= says
MAX_PAGE = 500
TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def when(t: float | None) -> str:
    """A Unix time as 2026-12-05 21:10:02 UTC; '-' for none."""
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def took(start: float | None, end: float | None, now: float | None = None) -> str:
    """How long from `start` to `end` (to now while it runs); '' before it started."""
    if not start:
        return ""
    stop = end or now or time.time()
    return format_duration(max(0.0, round(stop - start, 1)))


def text(data: bytes) -> str:
    """Captured output as text: UTF-8, anything else shown as U+FFFD."""
    return data.decode("utf-8", errors="replace")


def parse_time(value: str, what: str) -> float:
    """A UTC time from a form: YYYY-MM-DD HH:MM[:SS] (or with a T, as a browser sends it),
    or a Unix time."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    for fmt in TIME_FORMATS:
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise InvalidArgument(f"{what} must be a UTC time like 2026-01-31 14:00, got {value!r}")


@dataclass(frozen=True)
class JobQuery:
    """The jobs page's filters and where its page starts, as read from the query string."""

    status: JobStatus | None = None
    queue: str = ""
    name: str = ""
    since: float = 0.0
    until: float = 0.0
    before: int = 0
    limit: int = PAGE
    since_text: str = ""
    until_text: str = ""

    def params(self, before: int = 0) -> dict[str, str]:
        """The query string of this filter (at page `before`), without empty values."""
        got = {
            "status": self.status.value if self.status else "",
            "queue": self.queue,
            "name": self.name,
            "since": self.since_text,
            "until": self.until_text,
            "before": str(before) if before else "",
            "limit": str(self.limit) if self.limit != PAGE else "",
        }
        return {k: v for k, v in got.items() if v}


def job_query(q: Mapping[str, str]) -> JobQuery:
    """The filters of a jobs page request; InvalidArgument for a value that makes no sense."""
    status = q.get("status", "").strip()
    if status and status not in JobStatus.__members__.values():
        raise InvalidArgument(f"unknown status {status!r}")
    since_text, until_text = q.get("since", "").strip(), q.get("until", "").strip()
    return JobQuery(
        status=JobStatus(status) if status else None,
        queue=q.get("queue", "").strip(),
        name=q.get("name", "").strip(),
        since=parse_time(since_text, "since") if since_text else 0.0,
        until=parse_time(until_text, "until") if until_text else 0.0,
        before=_whole(q.get("before", ""), "before", 0, 2**62),
        limit=_whole(q.get("limit", ""), "limit", 1, MAX_PAGE) or PAGE,
        since_text=since_text,
        until_text=until_text,
    )


def _whole(value: str, what: str, lo: int, hi: int) -> int:
    if not value.strip():
        return 0
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be a whole number, got {value!r}") from None
    if not lo <= number <= hi:
        raise InvalidArgument(f"{what} must be between {lo} and {hi}, got {number}")
    return number
