"""What both daemons' Prometheus metrics share: the --metrics-listen option and the /metrics
HTTP server, a thread of its own serving a registry of its own (not prometheus_client's
global one, so two daemons in one process, as in the tests, never mix their metrics)."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from dts.errors import InvalidArgument, Unavailable
from dts.options import ArgumentParser

log = logging.getLogger("dts.metrics")


def add_metrics_option(p: ArgumentParser) -> None:
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, "
        "logged; default: off)",
    )


def parse_metrics_listen(value: str) -> tuple[str, int]:
    """--metrics-listen's HOST:PORT (IPv6 as [::1]:PORT; port 0 picks a free one)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InvalidArgument(f"--metrics-listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class MetricsServer:
    """The /metrics endpoint of one registry, on a daemon thread; stop() closes it."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.registry = registry
        self.address = ""  # HOST:PORT actually bound, once started
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = parse_metrics_listen(self.listen)
        # no `*_created` series beside each counter and histogram: in the text format they
        # are gauges of their own, doubling the series for no use (process-wide setting)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as e:
            raise Unavailable(f"cannot listen on {self.listen} (--metrics-listen): {e}") from e
        bound = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{bound}"
        log.info("metrics at http://%s/metrics", self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
