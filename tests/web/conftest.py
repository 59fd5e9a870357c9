"""Fixtures of the dashboard's tests: a real redis-server, dts-server and worker, and the
dashboard in this process (Starlette's TestClient) or as the dts-web program."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dts.channel import ChannelSecurity
from dts.web.app import create_app
from dts.web.config import WebConfig
from dts.web.dashboard import Dashboard
from tests.conftest import Cluster, make_cluster

CLIENT = "client-token-" + "c" * 20
VIEWER = "viewer-token-" + "v" * 20
WORKER = "worker-token-" + "w" * 20


def write_secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def web_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A server and one worker of concurrency 4, without tokens."""
    c = make_cluster(
        tmp_path_factory.mktemp("web"), 1, worker_args=("--concurrency", "4", "--kill-grace", "1")
    )
    yield c
    c.stop()


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A server that requires tokens (client, viewer, worker), and one worker."""
    from tests.harness import RedisProcess, ServerProcess, WorkerProcess

    d = tmp_path_factory.mktemp("web-tokens")
    tokens = write_secret(d / "tokens", f"client {CLIENT}\nviewer {VIEWER}\nworker {WORKER}\n")
    r = RedisProcess(d)
    r.start()
    probe = ChannelSecurity(token=CLIENT, plaintext_token=True)
    s = ServerProcess(d, r.url, "--tokens-file", tokens, "--plaintext-tokens", probe=probe)
    s.start()
    c = Cluster(d, r, s)
    w = WorkerProcess(
        d, s.address, r.url, "tw1",
        "--token-file", write_secret(d / "worker-token", WORKER), "--plaintext-token",
        "--concurrency", "2", "--kill-grace", "1",
        probe=probe,
    )  # fmt: skip
    w.start()
    c.workers.append(w)
    yield c
    c.stop()


def dashboard(address: str, **kw: object) -> Dashboard:
    security = ChannelSecurity(plaintext_token=True)
    return Dashboard(WebConfig(server=address, security=security, **kw))  # type: ignore[arg-type]


@pytest.fixture
def web(web_cluster: Cluster) -> Iterator[TestClient]:
    with TestClient(create_app(dashboard(web_cluster.server.address))) as tc:
        yield tc


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)
