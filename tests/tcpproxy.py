"""A small threaded TCP proxy on 127.0.0.1 for fault injection: listen port -> target port.

Modes (switch at any time with `set_mode` or the helpers):

* ``pass``      forward everything at once.
* ``delay``     forward every chunk `delay` seconds after it was read (latency in each direction).
* ``blackhole`` a network partition that does not close anything: open connections stay open
                but nothing moves in either direction (the proxy stops reading, so what the
                peers send waits in kernel buffers, as unacknowledged data waits for TCP
                retransmission); new connections are accepted and held, not forwarded. When the
                mode goes back to ``pass`` the held data flows again, as after a healed cut.
* ``drop``      close every connection at once (RST) and refuse new ones (the listening socket
                is closed, so a connect gets ECONNREFUSED); ``pass`` listens again on the port.

Every loop is bounded by a short poll interval and the `closed` flag; `close()` joins every
thread it started with a timeout. Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
POLL = 0.05  # seconds: how often every loop re-checks the mode and the closed flag
CHUNK = 65536
SEND_TIMEOUT = 5.0  # a peer that does not read for this long gets its connection closed
CONNECT_TIMEOUT = 2.0

PASS = "pass"
DELAY = "delay"
BLACKHOLE = "blackhole"
DROP = "drop"
MODES = (PASS, DELAY, BLACKHOLE, DROP)

_EOF = b""


@dataclass
class ProxyStats:
    """What went through; times are time.monotonic()."""

    accepted: int = 0
    refused_upstream: int = 0
    dropped: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    last_up: float | None = None
    last_down: float | None = None
    errors: list[str] = field(default_factory=list)


class _Conn:
    """One proxied connection: a client socket, its upstream socket and four pump threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        t = threading.Thread(target=self._setup, name="tcpproxy-setup", daemon=True)
        self.threads.append(t)
        t.start()

    def _setup(self) -> None:
        """Connect upstream once the mode lets traffic through, then start the pumps."""
        p = self.proxy
        while not self.closed.is_set() and p.mode == BLACKHOLE:
            p.mode_changed.wait(POLL)
        if self.closed.is_set():
            return
        try:
            up = socket.create_connection((HOST, p.target_port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            p.stats.refused_upstream += 1
            p.stats.errors.append(f"upstream connect: {e}")
            self.close(reset=True)
            return
        up.settimeout(SEND_TIMEOUT)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = up
        if self.closed.is_set():  # closed while connecting
            self.close(reset=True)
            return
        for src, dst, up_dir in ((self.client, up, True), (up, self.client, False)):
            q: queue.Queue[tuple[float, bytes]] = queue.Queue()
            reader = threading.Thread(
                target=self._read, args=(src, q), name="tcpproxy-read", daemon=True
            )
            writer = threading.Thread(
                target=self._write, args=(q, dst, up_dir), name="tcpproxy-write", daemon=True
            )
            self.threads += [reader, writer]
            reader.start()
            writer.start()

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        p = self.proxy
        while not self.closed.is_set():
            if p.mode == BLACKHOLE:  # read nothing: the data waits in the kernel
                p.mode_changed.wait(POLL)
                continue
            try:
                ready, _, _ = select.select([src], [], [], POLL)
                if not ready:
                    continue
                data = src.recv(CHUNK)
            except (OSError, ValueError):
                data = _EOF
            q.put((time.monotonic() + (p.delay if p.mode == DELAY else 0.0), data))
            if not data:
                return

    def _write(self, q: queue.Queue[tuple[float, bytes]], dst: socket.socket, up: bool) -> None:
        p = self.proxy
        while not self.closed.is_set():
            try:
                due, data = q.get(timeout=POLL)
            except queue.Empty:
                continue
            # hold while blackholed; wait out the delay (both bounded by the closed flag)
            while not self.closed.is_set():
                if p.mode == BLACKHOLE:
                    p.mode_changed.wait(POLL)
                    continue
                left = due - time.monotonic()
                if left <= 0:
                    break
                self.closed.wait(min(left, POLL))
            if self.closed.is_set():
                return
            if not data:
                self.close()
                return
            try:
                dst.sendall(data)
            except (OSError, ValueError):
                self.close()
                return
            now = time.monotonic()
            if up:
                p.stats.bytes_up += len(data)
                p.stats.last_up = now
            else:
                p.stats.bytes_down += len(data)
                p.stats.last_down = now

    def close(self, reset: bool = False) -> None:
        """Close both sockets; `reset` sends an RST instead of a FIN."""
        self.closed.set()
        for s in (self.client, self.upstream):
            if s is None:
                continue
            with contextlib.suppress(OSError):
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in list(self.threads):
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` under a switchable fault mode."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.mode = PASS
        self.delay = 0.0
        self.mode_changed = threading.Event()  # pulsed on every mode change
        self.stats = ProxyStats()
        self._listener: socket.socket | None = None
        self._conns: list[_Conn] = []
        self._every_conn: list[_Conn] = []  # for joining at close, dropped ones included
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._accept_thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> TcpProxy:
        self._listen()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="tcpproxy-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:  # dropping: nothing listens
                self.mode_changed.wait(POLL)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us (drop or close)
            client.settimeout(SEND_TIMEOUT)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client)
            with self._lock:
                if self._closed.is_set() or self.mode == DROP:
                    conn.close(reset=True)
                    continue
                self._conns = [c for c in self._conns if not c.closed.is_set()]
                self._conns.append(conn)
                self._every_conn.append(conn)
            self.stats.accepted += 1
            conn.start()

    # ---- modes --------------------------------------------------------------------------------

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        with self._lock:
            previous = self.mode
            self.delay = delay if mode == DELAY else 0.0
            self.mode = mode
            if mode == DROP:
                if self._listener is not None:
                    with contextlib.suppress(OSError):
                        self._listener.close()
                    self._listener = None
                conns, self._conns = self._conns, []
            else:
                conns = []
                if previous == DROP and self._listener is None and not self._closed.is_set():
                    self._listen()
        for c in conns:
            c.close(reset=True)
            self.stats.dropped += 1
        self.mode_changed.set()
        self.mode_changed.clear()

    def pass_through(self) -> None:
        self.set_mode(PASS)

    def drop(self) -> None:
        self.set_mode(DROP)

    def blackhole(self) -> None:
        self.set_mode(BLACKHOLE)

    def add_delay(self, seconds: float) -> None:
        self.set_mode(DELAY, seconds)

    def connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed.is_set())

    # ---- shutdown -----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close every socket and join every thread (bounded by `timeout` overall)."""
        deadline = time.monotonic() + timeout
        self._closed.set()
        with self._lock:
            listener, self._listener = self._listener, None
            self._conns = []
            conns = list(self._every_conn)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for c in conns:
            c.close()
        self.mode_changed.set()
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        for c in conns:
            c.join(max(0.0, deadline - time.monotonic()))
