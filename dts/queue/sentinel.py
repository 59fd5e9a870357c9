"""Redis behind Sentinel: `redis+sentinel://` URLs, and a client that follows the master.

    redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB][?OPTIONS]

names the sentinels (port 26379 by default) and the service they watch; every command goes to
the service's current master. `rediss+sentinel://` speaks TLS to the sentinels and the master
alike, with the `ssl_*` options of a `rediss://` URL. USER and PASSWORD are the master's; the
sentinels' own go in `sentinel_username=` and `sentinel_password=`.

redis-py asks the sentinels where the master is only when it opens a connection. After a
failover the old master, if it still runs, takes writes for seconds more (Sentinel turns it into
a replica only about ten seconds later), so the connections to it would carry on there and what
they write would be lost. The pool here asks the sentinels at most every FOLLOW_INTERVAL
seconds, as a connection is taken, and drops the connections to an address that is no longer
the master's; it counts the moves, which RedisQueue.epoch reports as a Redis that may have lost
ids (a replica lags its master), so the server reconciles.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis
from redis.connection import parse_url as parse_redis_url
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

log = logging.getLogger("dts.queue")

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379
FOLLOW_INTERVAL = 1.0  # seconds between two questions to the sentinels, at most
SETTLE = 1.0  # seconds after a move is seen before it is reported (see FollowingPool.settled)

# Query options a sentinel URL takes: the connection's own (to the master, the sentinels get the
# socket ones too), the sentinels' credentials, and TLS's (rediss+sentinel:// only).
SOCKET_OPTIONS = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
MASTER_OPTIONS = (*SOCKET_OPTIONS, "health_check_interval", "client_name", "username", "password")
SENTINEL_AUTH = {"sentinel_username": "username", "sentinel_password": "password"}
TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEMES)


@dataclass(frozen=True)
class SentinelUrl:
    """What a sentinel URL says: where the sentinels are, which service, and how to connect to
    the master (`master`) and to the sentinels (`sentinel`), as redis-py keyword arguments."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    master: dict[str, Any] = field(default_factory=dict)
    sentinel: dict[str, Any] = field(default_factory=dict)


def parse_sentinel_url(url: str, **defaults: Any) -> SentinelUrl:
    """The parts of `url`; ValueError saying what is wrong, never quoting the credentials.
    `defaults` are connection options (timeouts) the URL's query may override."""
    scheme, _, rest = url.partition("://")
    if "#" in rest:
        raise ValueError("'#' must be written %23")
    rest, _, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")  # an unescaped "/" may be in the password
    hosts, slash, path = rest.partition("/")
    master: dict[str, Any] = dict(defaults)
    if at:
        user, _, password = userinfo.partition(":")
        master.update({k: unquote(v) for k, v in (("username", user), ("password", password)) if v})
    sentinels = tuple(_host_port(h, n) for n, h in enumerate(hosts.split(","), 1))
    if not slash or not path.strip("/"):
        raise ValueError("no service: give the sentinels' master name as /SERVICE[/DB]")
    service, _, db = path.partition("/")
    service = unquote(service)
    if not service or any(c.isspace() for c in service):
        raise ValueError(f"bad service name {service!r}")
    db = db.rstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database after /{service}/ must be a number, got {db!r}")
    options = _options(query)
    if db and "db" in options:
        raise ValueError("the database is given twice (path and db=)")
    master["db"] = int(db) if db else options.pop("db", 0)
    sentinel = {k: master[k] for k in SOCKET_OPTIONS if k in master}
    for key, value in options.items():
        if key in SENTINEL_AUTH:
            sentinel[SENTINEL_AUTH[key]] = value
        elif key in TLS_OPTIONS and scheme != "rediss+sentinel":
            raise ValueError(f"{key} is for TLS: write rediss+sentinel://")
        else:
            master[key] = value
            if key in SOCKET_OPTIONS or key in TLS_OPTIONS:
                sentinel[key] = value
    if scheme == "rediss+sentinel":
        master["ssl"] = sentinel["ssl"] = True
    return SentinelUrl(sentinels, service, master, sentinel)


def _host_port(item: str, n: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPV6] or [IPV6]:PORT. An error does not quote it: a password with an
    unescaped '?' would end up here."""
    bad = ValueError(f"sentinel address {n} is not HOST[:PORT] or [IPV6][:PORT]")
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise bad
        port = port[1:]
    else:
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, ""
    if not host or (not item.startswith("[") and any(c in host for c in "[]:@ ")):
        raise bad
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel address {n} has a bad port (1 to 65535)")
    return host, int(port)


def _options(query: str) -> dict[str, Any]:
    """The query's options, their values typed as redis-py types them."""
    if not query:
        return {}
    # redis-py's own URL parser does the typing (and refuses bad values); the URL is ours
    options: dict[str, Any] = parse_redis_url(f"redis://h?{query}")  # type: ignore[no-untyped-call]
    options.pop("host")
    known = {*MASTER_OPTIONS, *SENTINEL_AUTH, *TLS_OPTIONS, "db"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return options


def sentinel_client(url: str, **defaults: Any) -> redis.Redis:
    """A client whose commands go to the current master of the URL's service (nothing is
    dialled here: the sentinels are first asked when the first command is sent)."""
    parts = parse_sentinel_url(url, **defaults)
    sentinel = Sentinels(parts.sentinels, sentinel_kwargs=parts.sentinel, **parts.master)
    client: redis.Redis = sentinel.master_for(parts.service, connection_pool_class=FollowingPool)
    return client


class Sentinels(Sentinel):
    """redis-py's Sentinel, with an error of one short line when no sentinel names a master
    that is up: redis-py's own quotes the repr of each sentinel's client, every connection
    setting of it, a screenful in each log line."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        why = []
        for n, sentinel in enumerate(self.sentinels):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                masters: dict[str, Any] = sentinel.sentinel_masters()  # type: ignore[assignment]
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
                why.append(str(e) if where in str(e) else f"{where}: {e}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                # the one that answered is asked first from now on (as redis-py does)
                self.sentinels[0], self.sentinels[n] = sentinel, self.sentinels[0]
                return state["ip"], int(state["port"])
            why.append(f"{where}: {'its master is down' if state else 'no such service'}")
        raise MasterNotFoundError(f"no master for {service_name!r} ({'; '.join(why)})")


class FollowingPool(SentinelConnectionPool):
    """A SentinelConnectionPool that asks the sentinels where the master is at most every
    FOLLOW_INTERVAL seconds as a connection is taken, not only when one is opened: after a
    failover its idle connections to the old master are closed, and the busy ones as they come
    back (redis-py's own pool does both when it learns the new address)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.failovers = 0  # moves of the master seen since the pool was made
        self.moved_at = -math.inf  # when the last one was seen (time.monotonic)
        self._master: Any = None  # the master's address when last asked
        self._next_ask = 0.0
        self._asking = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.follow()
        return super().get_connection(*args, **kwargs)

    def follow(self) -> None:
        """Ask the sentinels where the master is, unless asked less than FOLLOW_INTERVAL ago
        (or being asked by another thread now)."""
        now = time.monotonic()
        if now < self._next_ask or not self._asking.acquire(blocking=False):
            return
        try:
            self._next_ask = now + FOLLOW_INTERVAL
            try:
                # redis-py's: closes the idle connections when the address changed
                address = self.get_master_address()  # type: ignore[no-untyped-call]
            except redis.RedisError:
                return  # no answer or no master now: the connections find out for themselves
            if self._master is not None and address != self._master:
                self.failovers += 1
                self.moved_at = time.monotonic()
                log.warning(
                    "redis master of %r moved from %s to %s (failover): ids written to the old "
                    "master lately may be lost; the server queues them again",
                    self.service_name,
                    _shown(self._master),
                    _shown(address),
                )
            self._master = address
        finally:
            self._asking.release()

    def settled(self) -> int:
        """The moves seen SETTLE seconds ago or more. A command another thread sent to the old
        master just before the move was seen (its connection was taken before) is answered by
        then: a reconcile started now does not miss what that command wrote there."""
        recent = time.monotonic() - self.moved_at < SETTLE
        return self.failovers - 1 if recent else self.failovers


def _shown(address: Any) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def failovers(client: redis.Redis) -> int:
    """How often the master of `client`'s service moved, as seen SETTLE seconds ago (0 for a
    client without Sentinel)."""
    pool = client.connection_pool
    return pool.settled() if isinstance(pool, FollowingPool) else 0
