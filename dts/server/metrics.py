"""dts-server's Prometheus metrics: counters of what this server did (an Observer of its
coordinator), and gauges read from the store at scrape time, cached for a moment.

Counters are per process: they start at 0 with the server, and with several servers each
counts what it did itself (sum them in queries). Gauges (jobs by status, workers by state)
are the store's, the same from every server."""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dts.domain import Assignment, Job, JobStatus, Result, StatCount, WorkerInfo, WorkerState
from dts.server.observer import Observer

log = logging.getLogger("dts.metrics")

STORE_CACHE = 5.0  # seconds a scrape's store reads are reused: scrapes cannot load the store
STORE_SHARE = 0.05  # at most this share of the time reading the store for scrapes (a big
# backlog makes the read longer, and the numbers are then reused for longer)
# seconds: from a fraction of a second (short jobs, a busy queue) to hours
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
LIVE = tuple(s for s in JobStatus if not s.final)
TAKING = (WorkerState.IDLE, WorkerState.BUSY)  # a draining worker takes no new jobs


class ServerMetrics(Observer):
    """The server's metric objects, in a registry of their own, fed by the coordinator's
    hooks. A hook does a few dict operations and one increment per label set it touches."""

    active = True

    def __init__(
        self,
        stats: Callable[[], list[StatCount]],
        workers: Callable[[], list[WorkerInfo]],
        cache: float = STORE_CACHE,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted_total = Counter(
            "dts_jobs_submitted",
            "Jobs stored by this server: submits and schedules' jobs",
            ["queue"],
            registry=r,
        )
        self.finished_total = Counter(
            "dts_jobs_finished",
            "Jobs that reached a final status through this server",
            ["queue", "status"],
            registry=r,
        )
        self.lost_total = Counter(
            "dts_attempts_lost",
            "Attempts lost with their worker (found by this server)",
            registry=r,
        )
        self.queue_wait = QueueHistogram(
            "dts_job_queue_wait_seconds",
            "From a job being due (submitted, plus its delay) to its first attempt's start",
        )
        self.run_time = QueueHistogram(
            "dts_job_run_seconds",
            "How long attempts ran, as their workers measured (every attempt reported)",
        )
        r.register(self.queue_wait)
        r.register(self.run_time)
        self.redis_errors = Counter(
            "dts_redis_errors", "Redis operations of this server that failed", registry=r
        )
        self.db_errors = Counter(
            "dts_db_errors", "Store operations of this server that failed", registry=r
        )
        self.gauges = StoreGauges(stats, workers, cache, self.db_error)
        r.register(self.gauges)

    def submitted(self, jobs: Sequence[Job]) -> None:
        for queue, n in Tally(j.spec.queue for j in jobs if not j.existing).items():
            self.submitted_total.labels(queue).inc(n)
            self.gauges.queues.add(queue)

    def started(self, assignments: Sequence[Assignment], now: float) -> None:
        self.queue_wait.observe(
            (a.spec.queue, now - a.ready_at) for a in assignments if a.attempt == 1 and a.ready_at
        )

    def reported(self, results: Sequence[Result], queues: Mapping[int, str]) -> None:
        self.run_time.observe(
            (queues[r.job_id], r.finished_at - r.started_at)
            for r in results
            if r.started_at and r.job_id in queues
        )

    def ended(self, finished: Iterable[tuple[str, str]]) -> None:
        for (queue, status), n in Tally(finished).items():
            self.finished_total.labels(queue, status).inc(n)

    def lost(self, count: int) -> None:
        self.lost_total.inc(count)

    def redis_error(self) -> None:
        self.redis_errors.inc()

    def db_error(self) -> None:
        self.db_errors.inc()


class QueueHistogram(Collector):
    """A histogram by queue, observed a batch at a time (an exchange's attempts): one lock
    taken per batch, where prometheus_client's Histogram takes two per observation."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float] = BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = list(buckets)  # upper bounds; +Inf after them
        self._lock = threading.Lock()
        # queue -> [count of each bucket (not cumulative), count above the last bound, sum]
        self._rows: dict[str, list[float]] = {}

    def observe(self, values: Iterable[tuple[str, float]]) -> None:
        """Observe (queue, seconds) pairs; a negative value (clocks apart) counts as 0."""
        width = len(self._bounds) + 2
        batch: dict[str, list[float]] = {}
        for queue, value in values:
            row = batch.get(queue) or batch.setdefault(queue, [0.0] * width)
            value = max(0.0, value)
            row[bisect_left(self._bounds, value)] += 1  # the first bound >= value: `le`
            row[-1] += value
        if not batch:
            return
        with self._lock:
            for queue, row in batch.items():
                total = self._rows.get(queue) or self._rows.setdefault(queue, [0.0] * width)
                for i, x in enumerate(row):
                    total[i] += x

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["queue"])]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            rows = {queue: list(row) for queue, row in self._rows.items()}
        family = HistogramMetricFamily(self.name, self.documentation, labels=["queue"])
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for queue, row in sorted(rows.items()):
            counts = list(accumulate(row[:-1]))
            family.add_metric([queue], list(zip(les, counts, strict=True)), sum_value=row[-1])
        yield family


class StoreGauges(Collector):
    """dts_jobs{queue,status} (jobs not final), dts_workers{state} and dts_queue_workers{queue}
    (workers taking its jobs), read from the store when scraped; a scrape within `cache`
    seconds of the last read (longer when reads take long: see STORE_SHARE) gets the same
    numbers."""

    def __init__(
        self,
        stats: Callable[[], list[StatCount]],
        workers: Callable[[], list[WorkerInfo]],
        cache: float,
        failed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._workers = workers
        self._cache = cache
        self._failed = failed
        self._clock = clock
        self._lock = threading.Lock()  # one store read at a time, whoever scrapes
        self._read_at = -cache
        self._hold = cache  # seconds the last read's numbers are reused
        self._counts: list[StatCount] = []
        self._states: Tally[str] = Tally()
        self._serving: Tally[str] = Tally()
        # every queue the store showed jobs of, or this server stored jobs in (set.add is
        # atomic: submits add while a scrape reads)
        self.queues: set[str] = set()

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # not read at registration: the store may not be open yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._clock() - self._read_at >= self._hold:
                self._read()
            counts, states, serving = self._counts, self._states, self._serving
        jobs = GaugeMetricFamily(
            "dts_jobs",
            "Jobs not final, by queue and status (from the store)",
            labels=["queue", "status"],
        )
        for c in counts:
            jobs.add_metric([c.queue, c.status.value], c.count)
        workers = GaugeMetricFamily(
            "dts_workers", "Registered workers by state (from the store)", labels=["state"]
        )
        for state in WorkerState:
            workers.add_metric([state.value], states[state.value])
        per_queue = GaugeMetricFamily(
            "dts_queue_workers",
            "Workers taking jobs of the queue: idle or busy, not draining (from the store)",
            labels=["queue"],
        )
        for queue in sorted(set(self.queues) | set(serving)):
            per_queue.add_metric([queue], serving[queue])
        yield jobs
        yield workers
        yield per_queue

    def _read(self) -> None:
        began = self._clock()
        try:
            counts = self._stats()
            found = self._workers()
        except Exception as e:  # the store is away: the last numbers stay, a scrape works
            self._failed()
            log.warning("metrics: cannot read the store: %s", e)
            return
        states = Tally(w.state.value for w in found)
        serving = Tally(q for w in found if w.state in TAKING for q in w.queues)
        self.queues.update(c.queue for c in counts)
        present = {(c.queue, c.status) for c in counts}
        # every live status of every queue seen, 0 when none: a series that vanished at 0
        # would leave alerts and graphs with nothing instead of zero
        counts += [
            StatCount(q, s, 0)
            for q in sorted(set(self.queues))
            for s in LIVE
            if (q, s) not in present
        ]
        self._counts, self._states, self._serving = counts, states, serving
        self._read_at = self._clock()
        self._hold = max(self._cache, (self._read_at - began) / STORE_SHARE)
