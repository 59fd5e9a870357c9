"""redis+sentinel:// URLs: what they name, what is refused (in one line, without the password),
and how the client that follows the master counts failovers (how URLs are shown in logs:
test_redis_url_redaction.py)."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import pytest
import redis

from dts.errors import InvalidArgument, QueueUnavailable
from dts.queue import sentinel as sentinel_mod
from dts.queue.redis import Keys, RedisQueue, check_redis_url, connect
from dts.queue.sentinel import (
    SENTINEL_PORT,
    FollowingPool,
    failovers,
    is_sentinel_url,
    parse_sentinel_url,
)
from dts.server.config import load_server_config
from dts.worker.config import load_worker_config

SECRET = "s3cr%2Ft"  # a password with an escaped '/', as a URL must carry it


def test_the_parts_of_a_full_url() -> None:
    url = f"redis+sentinel://dts:{SECRET}@s1:26380,s2,[::1]:26381/mymaster/3"
    parts = parse_sentinel_url(url, socket_timeout=5)
    assert parts.sentinels == (("s1", 26380), ("s2", SENTINEL_PORT), ("::1", 26381))
    assert parts.service == "mymaster"
    # the credentials are the master's, unescaped; the sentinels get the socket options only
    assert parts.master == {"socket_timeout": 5, "username": "dts", "password": "s3cr/t", "db": 3}
    assert parts.sentinel == {"socket_timeout": 5}


def test_the_smallest_url_and_its_defaults() -> None:
    parts = parse_sentinel_url("redis+sentinel://h/dts")
    assert (parts.sentinels, parts.service, parts.master) == ((("h", 26379),), "dts", {"db": 0})
    assert parse_sentinel_url("redis+sentinel://h/dts/").master["db"] == 0
    assert parse_sentinel_url("redis+sentinel://:pw@h/dts").master == {"password": "pw", "db": 0}


def test_query_options_go_where_they_belong() -> None:
    url = (
        "redis+sentinel://h:1/dts?socket_timeout=1.5&socket_connect_timeout=0.5"
        "&sentinel_username=watch&sentinel_password=w%26tch&health_check_interval=3&db=2"
    )
    parts = parse_sentinel_url(url, socket_timeout=5, socket_connect_timeout=2)
    assert parts.master == {
        "socket_timeout": 1.5,
        "socket_connect_timeout": 0.5,
        "health_check_interval": 3,
        "db": 2,
    }
    assert parts.sentinel == {
        "socket_timeout": 1.5,
        "socket_connect_timeout": 0.5,
        "username": "watch",
        "password": "w&tch",
    }


def test_tls_for_the_master_and_the_sentinels() -> None:
    parts = parse_sentinel_url("rediss+sentinel://h/dts?ssl_ca_certs=/etc/ca.pem")
    for side in (parts.master, parts.sentinel):
        assert side["ssl"] is True and side["ssl_ca_certs"] == "/etc/ca.pem"
    with pytest.raises(ValueError, match="rediss"):
        parse_sentinel_url("redis+sentinel://h/dts?ssl_ca_certs=/etc/ca.pem")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:26379", "no service"),
        ("redis+sentinel://h:26379/", "no service"),
        ("redis+sentinel:///dts", "sentinel address 1"),
        ("redis+sentinel://h,/dts", "sentinel address 2"),
        ("redis+sentinel://h:0/dts", "bad port"),
        ("redis+sentinel://h:70000/dts", "bad port"),
        ("redis+sentinel://h:x/dts", "bad port"),
        ("redis+sentinel://::1:26379/dts", "sentinel address 1"),
        ("redis+sentinel://[::1/dts", "sentinel address 1"),
        ("redis+sentinel://h/dts/x", "must be a number"),
        ("redis+sentinel://h/dts/0/1", "must be a number"),
        ("redis+sentinel://h/d%20s", "bad service name"),
        ("redis+sentinel://h/dts/1?db=2", "twice"),
        ("redis+sentinel://h/dts?socket_timeout=soon", "socket_timeout"),
        ("redis+sentinel://h/dts?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("redis+sentinel://h/dts#frag", "%23"),
    ],
)
def test_bad_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_sentinel_url(url)
    with pytest.raises(InvalidArgument, match=re.escape(why)) as e:
        check_redis_url(url)
    assert str(e.value).startswith("--redis-url ") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://dts:{SECRET}@h:1:2/dts",  # a bad address after the credentials
        f"redis+sentinel://dts:{SECRET}@h/dts/x",
        f"redis+sentinel://dts:{SECRET}@h/dts?nonsense=1",
        "redis+sentinel://dts:s3cr?t@h/dts",  # an unescaped '?' cuts the password in two
        f"redis+sentinel://h/dts?sentinel_password={SECRET}&socket_timeout=x",
    ],
)
def test_refusals_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_redis_url(url)
    for part in ("s3cr", "t@h"):
        assert part not in str(e.value), e.value


def test_good_urls_pass_the_check_of_both_daemons() -> None:
    url = "redis+sentinel://s1:26379,s2:26379,s3:26379/dts/0"
    assert load_server_config(["--redis-url", url], env={}).redis_url == url
    assert load_worker_config([], env={"DTS_REDIS_URL": url}).redis_url == url
    with pytest.raises(InvalidArgument, match="--redis-url"):
        load_worker_config(["--redis-url", "redis+sentinel://s1/"], env={})


def test_only_the_sentinel_schemes_are_sentinel_urls() -> None:
    assert is_sentinel_url("redis+sentinel://h/dts")
    assert is_sentinel_url("rediss+sentinel://h/dts")
    assert not is_sentinel_url("redis://h/0")
    assert not is_sentinel_url("sentinel://h/dts")


# ---- the client: every command to the current master ------------------------------------------


class FakeSentinels:
    """What redis-py's pool asks of its Sentinel: where the master is."""

    def __init__(self) -> None:
        self.master: tuple[str, int] | None = ("127.0.0.1", 7001)
        self.asked = 0

    def discover_master(self, service: str) -> tuple[str, int]:
        self.asked += 1
        if self.master is None:
            raise redis.sentinel.MasterNotFoundError(f"No master found for {service!r}")
        return self.master


def pool_with(sentinels: FakeSentinels) -> FollowingPool:
    return FollowingPool("dts", sentinels)  # type: ignore[arg-type]


def test_connect_makes_a_client_of_the_service_master_without_dialling() -> None:
    client = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/4?socket_timeout=1")
    pool = client.connection_pool
    assert isinstance(pool, FollowingPool) and pool.service_name == "svc"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["socket_timeout"] == 1
    assert pool.connection_kwargs["socket_connect_timeout"] == 2  # connect()'s default stays
    assert failovers(client) == 0
    assert failovers(connect("redis://127.0.0.1:1/0")) == 0


def test_the_pool_asks_the_sentinels_at_most_once_an_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sentinel_mod.time, "monotonic", lambda: now[0])
    sentinels = FakeSentinels()
    pool = pool_with(sentinels)
    pool.follow()
    pool.follow()
    assert sentinels.asked == 1
    now[0] += sentinel_mod.FOLLOW_INTERVAL
    pool.follow()
    assert sentinels.asked == 2 and pool.failovers == 0


def test_a_move_is_counted_once_and_reported_when_settled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sentinel_mod.time, "monotonic", lambda: now[0])
    sentinels = FakeSentinels()
    pool = pool_with(sentinels)
    pool.follow()
    # When the sentinels name another master
    sentinels.master = ("127.0.0.1", 7002)
    now[0] += 1.0
    pool.follow()
    # Then the move is counted, logged with both addresses, and reported SETTLE seconds later
    assert pool.failovers == 1
    assert "moved from 127.0.0.1:7001 to 127.0.0.1:7002" in caplog.text
    assert pool.settled() == 0
    now[0] += sentinel_mod.SETTLE
    assert pool.settled() == 1
    # And asking again, with no master or no answer for a while, changes nothing
    sentinels.master = None
    now[0] += 1.0
    pool.follow()
    sentinels.master = ("127.0.0.1", 7002)
    now[0] += 1.0
    pool.follow()
    assert pool.failovers == 1


class StubClient:
    """Just enough of a redis.Redis for RedisQueue.epoch."""

    def __init__(self, pool: Any) -> None:
        self.connection_pool = pool
        self.value: bytes | None = b"e1"

    def register_script(self, script: str) -> object:
        return object()

    def get(self, key: str) -> bytes | None:
        return self.value


def test_epoch_reports_a_settled_failover_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue on a Sentinel master whose epoch mark is there
    sentinels = FakeSentinels()
    pool = pool_with(sentinels)
    pool.follow()
    q = RedisQueue(StubClient(pool), Keys())  # type: ignore[arg-type]
    assert q.epoch() == "e1"
    # When the master moved (seen now, then SETTLE seconds ago)
    sentinels.master = ("127.0.0.1", 7002)
    pool._next_ask = 0.0
    pool.follow()
    assert q.epoch() == "e1"  # not yet settled
    pool.moved_at = time.monotonic() - sentinel_mod.SETTLE
    # Then the queue says Redis may have lost ids (the server reconciles), once
    assert q.epoch() is None
    assert q.epoch() == "e1"


def test_no_sentinel_to_ask_is_a_queue_error_without_the_passwords() -> None:
    # Given sentinels that are not there (a free port refuses at once)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis+sentinel://dts:m4ster@127.0.0.1:{port}/dts?sentinel_password=w4tch"
    q = RedisQueue(connect(url), Keys())
    # Then a call fails as any Redis outage does, in a short line that names the service and
    # the sentinel but not the passwords (redis-py's own message quotes every setting)
    with pytest.raises(QueueUnavailable) as e:
        q.epoch()
    message = str(e.value)
    assert message.startswith("no master for 'dts' (") and f"127.0.0.1:{port}" in message
    assert len(message) < 200 and "\n" not in message, message
    assert "m4ster" not in message and "w4tch" not in message
