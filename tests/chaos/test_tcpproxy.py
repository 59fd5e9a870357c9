"""The fault-injection proxy itself: pass, delay, blackhole (held, then healed), drop (refused)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.tcpproxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A tiny echo server on a free loopback port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        conn.settimeout(0.05)
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield srv.getsockname()[1]
    stop.set()
    acceptor.join(2)
    for t in threads:
        t.join(2)
    srv.close()


def _roundtrip(sock: socket.socket, payload: bytes, timeout: float = 2.0) -> bytes | None:
    sock.settimeout(timeout)
    sock.sendall(payload)
    got = b""
    try:
        while len(got) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        return None
    return got


def test_proxy_modes(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        # pass
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            assert _roundtrip(s, b"hello") == b"hello"
            # delay: both directions, so a round trip takes at least twice the delay
            proxy.add_delay(0.1)
            t0 = time.monotonic()
            assert _roundtrip(s, b"slow") == b"slow"
            assert time.monotonic() - t0 >= 0.19
            # blackhole: the connection stays open, nothing comes back ...
            proxy.blackhole()
            assert _roundtrip(s, b"held", timeout=0.5) is None
            # ... and a healed cut delivers what was held, in order
            proxy.pass_through()
            s.settimeout(2)
            assert s.recv(16) == b"held"
        # drop: existing connections are reset, new ones refused
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            assert _roundtrip(s, b"x") == b"x"
            proxy.drop()
            s.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(16) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
        # and pass listens again on the same port
        proxy.pass_through()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            assert _roundtrip(s, b"back") == b"back"
    alive = [t.name for t in threading.enumerate() if t.name.startswith("tcpproxy")]
    assert not alive, alive
