"""dts-worker's Prometheus metrics: its slots, the jobs it runs and ran, its connections.

The counter is per process (it starts at 0 with the worker); the gauges are read when
scraped from what the worker holds and how its links stand."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dts.domain import Outcome
from dts.worker.link import Link


class WorkerMetrics:
    """The worker's metric objects, in a registry of their own."""

    def __init__(self, slots: int, running: Callable[[], int], server: Link, redis: Link) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("dts_worker_slots", "Jobs this worker runs at once", registry=r).set(slots)
        Gauge(
            "dts_worker_jobs_running",
            "Attempts this worker holds: running, or claimed ahead to run next",
            registry=r,
        ).set_function(running)
        self.jobs_total = Counter(
            "dts_worker_jobs",
            "Attempts this worker ended, by result (succeeded, failed, timed_out, cancelled, "
            "released)",
            ["result"],
            registry=r,
        )
        # each result from 0, so rates see the first one; children found without labels()
        self._results: dict[Outcome, Counter] = {
            outcome: self.jobs_total.labels(outcome.value)
            for outcome in Outcome
            if outcome not in (Outcome.RUNNING, Outcome.LOST)
        }
        r.register(Connections({"server": server, "redis": redis}))

    def ended(self, outcome: Outcome) -> None:
        child = self._results.get(outcome) or self.jobs_total.labels(outcome.value)
        child.inc()


class Connections(Collector):
    """dts_worker_connected{peer}: 1 while the link to the server or to Redis is up."""

    def __init__(self, links: dict[str, Link]) -> None:
        self._links = links

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self.collect())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "dts_worker_connected",
            "1 while this worker's last call to the peer (server, redis) got through",
            labels=["peer"],
        )
        for peer, link in self._links.items():
            g.add_metric([peer], 1.0 if link.up else 0.0)
        yield g
