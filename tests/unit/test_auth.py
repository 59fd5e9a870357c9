"""Tokens files, token lookup and where a token may be sent."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from dts.channel import ChannelSecurity, is_loopback, open_channel, read_token
from dts.errors import InvalidArgument
from dts.server.api.auth import Credential, Role, TokenAuth, load_tokens

CLIENT = "c" * 32
WORKER = "w" * 32


def _tokens(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_tokens_file_lines_give_roles_and_worker_names(tmp_path: Path) -> None:
    path = _tokens(tmp_path, f"# ops\nclient {CLIENT}\n\nworker {WORKER} node-1  # bound\n")
    assert load_tokens(path) == [
        Credential(Role.CLIENT, CLIENT),
        Credential(Role.WORKER, WORKER, "node-1"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root " + CLIENT, "line 1: role must be one of client, worker, admin"),
        ("client short", "line 1: a token must be at least 16"),
        (f"client {CLIENT} name", "line 1: only a worker token is bound"),
        (f"client {CLIENT}\nworker {CLIENT}", "a token appears twice"),
        ("client", "line 1: expected ROLE TOKEN"),
        ("# nothing\n", "no tokens in it"),
    ],
)
def test_a_bad_tokens_file_is_refused_naming_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_tokens(_tokens(tmp_path, text))


def test_a_missing_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="nowhere: No such file"):
        load_tokens(str(tmp_path / "nowhere"))


def test_lookup_finds_the_credential_of_a_token_and_nothing_else() -> None:
    auth = TokenAuth([Credential(Role.CLIENT, CLIENT), Credential(Role.WORKER, WORKER)])
    assert auth.lookup(CLIENT) == Credential(Role.CLIENT, CLIENT)
    assert auth.lookup(WORKER) == Credential(Role.WORKER, WORKER)
    assert auth.lookup(CLIENT[:-1]) is None
    assert auth.lookup("") is None


def test_an_unbound_worker_token_is_warned_of_naming_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _tokens(
        tmp_path, f"client {CLIENT}\nworker {WORKER}\nworker {'b' * 32} node-1\nadmin {'a' * 32}\n"
    )
    with caplog.at_level(logging.WARNING, "dts.auth"):
        load_tokens(path)
    assert caplog.messages == [
        f"tokens file {path}: worker token on line 2 is not bound to a worker name; any holder"
        " can register as any worker"
    ]


def test_the_credential_id_of_a_call_names_its_token_without_giving_it_away() -> None:
    bound, other = "b" * 32, "o" * 32
    auth = TokenAuth(
        [
            Credential(Role.WORKER, WORKER),
            Credential(Role.WORKER, bound, "node-1"),
            Credential(Role.WORKER, other, "node-1"),
        ]
    )

    def of(token: str) -> str:
        cred = auth.identify([("user-agent", "x"), ("authorization", f"Bearer {token}")])
        return cred.id if cred is not None else ""

    # an unbound token: a short fingerprint that does not contain the token
    fingerprint = "sha256:" + hashlib.sha256(WORKER.encode()).hexdigest()[:16]
    assert of(WORKER) == fingerprint and WORKER not in fingerprint
    # every token bound to a name is that worker (a rotated token keeps its identity)
    assert of(bound) == of(other) == "bound:node-1"
    # no token, or one that is not known
    assert of("x" * 32) == ""
    assert auth.identify([]) is None


def test_token_comes_from_the_file_before_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text(CLIENT + "\n")
    assert read_token(str(f), {"DTS_TOKEN": WORKER}) == CLIENT
    assert read_token("", {"DTS_TOKEN": WORKER}) == WORKER
    assert read_token("", {}) == ""
    with pytest.raises(InvalidArgument, match=r"\$DTS_TOKEN: a token must be"):
        read_token("", {"DTS_TOKEN": "short"})


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.3.4.5:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("10.0.0.1:1", False),
        ("example.com:1", False),
        ("[2001:db8::1]:1", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_a_token_is_never_sent_in_plaintext_off_this_machine() -> None:
    sec = ChannelSecurity(token=CLIENT, plaintext_token=True)
    with pytest.raises(InvalidArgument, match=r"without TLS to 10\.0\.0\.1:50051"):
        open_channel("10.0.0.1:50051", sec, [])
    with pytest.raises(InvalidArgument, match=r"without TLS to 127\.0\.0\.1:50051"):
        open_channel("127.0.0.1:50051", ChannelSecurity(token=CLIENT), [])
    open_channel("127.0.0.1:50051", sec, []).close()  # allowed: loopback, and asked for


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@h:6379/0", "redis://***@h:6379/0"),
        ("redis://dts:s3cret@h:6379/0", "redis://***@h:6379/0"),
        (
            "rediss://dts:p@ss@h:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://***@h:6380/0?ssl_ca_certs=/ca.pem",
        ),
        ("redis://h/0?password=s3cret&db=1", "redis://h/0?password=***&db=1"),
        ("unix://dts:s3cret@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
    ],
)
def test_redis_urls_are_logged_without_credentials(url: str, shown: str) -> None:
    from dts.queue.redis import redacted_url

    assert redacted_url(url) == shown


VIEWER_READS = {
    "Scheduler": {
        "GetJob", "WaitJob", "ListJobs", "GetHistory", "GetLogs", "FollowLogs", "ListWorkers",
        "GetStats", "GetActivity",
    },
    "Queues": {"ListQueues"},
    "Schedules": {"ListSchedules", "GetSchedule"},
}  # fmt: skip


def test_a_viewer_may_call_the_reads_and_nothing_else() -> None:
    # every method of every service the server has, from the generated descriptors
    from dts.server.api.auth import SERVICE_ROLES, Role, may_call
    from dts.v1 import dts_pb2 as pb

    seen = 0
    for service in pb.DESCRIPTOR.services_by_name.values():
        prefix = f"/dts.v1.{service.name}/"
        roles = SERVICE_ROLES[prefix]
        for method in service.methods:
            path = prefix + method.name
            reads = VIEWER_READS.get(service.name, set())
            assert may_call(Role.VIEWER, path, roles) is (method.name in reads), path
            # the other roles are as they were: by service
            for role in (Role.CLIENT, Role.WORKER, Role.ADMIN):
                assert may_call(role, path, roles) is (role in roles), (role, path)
            seen += 1
    assert seen >= 25
