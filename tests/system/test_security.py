"""Access control end to end: tokens with roles, TLS and mutual TLS, through the real programs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from redis import exceptions as redis_errors

from dts.channel import ChannelSecurity
from dts.client import Client
from dts.domain import JobSpec
from dts.errors import PermissionDenied, Unauthenticated
from tests.harness import (
    BIN,
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    clean_env,
    free_port,
    run_cli,
    wait_until,
)

CLIENT = "client-token-" + "c" * 20
WORKER = "worker-token-" + "w" * 20
BOUND = "bound-worker-" + "b" * 20
ADMIN = "admin-token-" + "a" * 20


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def _issue(d: Path, name: str, ca: Path, ca_key: Path, ext: str) -> tuple[str, str]:
    key, csr, cert, extfile = (d / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
    extfile.write_text(ext + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    return str(cert), str(key)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca(d, "dts-test-ca")
    other, _ = _ca(d, "some-other-ca")
    server = _issue(d, "server", ca, ca_key, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _issue(d, "worker-1", ca, ca_key, "extendedKeyUsage=clientAuth")
    return Pki(str(ca), *server, *client, str(other))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(tmp_path)
    r.start()
    yield r
    r.kill()


def _tokens(tmp_path: Path, *lines: str) -> str:
    return _write(tmp_path / "tokens", "".join(f"{ln}\n" for ln in lines))


def _token_file(tmp_path: Path, token: str) -> str:
    return _write(tmp_path / f"t-{token[:6]}", token + "\n")


def _server(
    tmp_path: Path, r: RedisProcess, *args: str, probe: ChannelSecurity | None = None
) -> ServerProcess:
    s = ServerProcess(tmp_path, r.url, *args, probe=probe)
    s.start()
    return s


def test_tokens_decide_who_may_do_what(tmp_path: Path, redis_server: RedisProcess) -> None:
    # Given a server that requires tokens (plaintext allowed: it listens on loopback)
    tokens = _tokens(
        tmp_path,
        f"client {CLIENT}",
        f"worker {WORKER}",
        f"worker {BOUND} w-bound",
        f"admin {ADMIN}",
    )
    s = _server(tmp_path, redis_server, "--tokens-file", tokens, "--plaintext-tokens")
    as_client = ChannelSecurity(token=CLIENT, plaintext_token=True)
    as_worker = ChannelSecurity(token=WORKER, plaintext_token=True)
    try:
        # A worker with a worker token registers and runs a client's job
        w = WorkerProcess(
            tmp_path, s.address, redis_server.url, "w1",
            "--token-file", _token_file(tmp_path, WORKER), "--plaintext-token",
            probe=as_client,
        )  # fmt: skip
        w.start()
        ok = run_cli(
            s.address, "--token-file", _token_file(tmp_path, CLIENT), "--plaintext-token",
            "submit", "--wait", "--", "echo", "allowed",
        )  # fmt: skip
        assert (ok.returncode, ok.stdout) == (0, "allowed\n"), ok.stderr
        # The token may also come from DTS_TOKEN
        env = clean_env(DTS_TOKEN=ADMIN)
        listed = run_cli(s.address, "--plaintext-token", "list", env=env)
        assert listed.returncode == 0 and "echo allowed" in listed.stdout, listed.stderr

        # Without a token, or with an unknown one: refused, one line, exit 1
        for args, why in (
            ((), "a token is required"),
            (("--token-file", _token_file(tmp_path, "x" * 24), "--plaintext-token"), "unknown"),
        ):
            r = run_cli(s.address, *args, "list")
            assert r.returncode == 1, r
            assert r.stderr.count("\n") == 1 and "refused the credentials" in r.stderr, r.stderr
            assert why in r.stderr and "Traceback" not in r.stderr
        # A worker token cannot submit; a client token cannot claim or report
        r = run_cli(
            s.address, "--token-file", _token_file(tmp_path, WORKER), "--plaintext-token",
            "submit", "--", "true",
        )  # fmt: skip
        assert r.returncode == 1 and "a worker token may not call Submit" in r.stderr, r.stderr
        with Client(s.address, security=as_worker) as c, pytest.raises(PermissionDenied):
            c.submit([JobSpec(argv=("true",))])
        with Client(s.address, security=as_worker) as c, pytest.raises(PermissionDenied):
            c.submit_one(JobSpec(argv=("true",)))  # over SubmitStream
        with Client(s.address) as c, pytest.raises(Unauthenticated):
            c.submit_one(JobSpec(argv=("true",)))
        with Client(s.address, security=as_client) as c:
            assert c.submit_one(JobSpec(argv=("true",), delay=3600)).id > 0
        from dts.v1 import dts_pb2 as pb
        from dts.v1 import dts_pb2_grpc as pb_grpc

        with Client(s.address, security=as_client) as c:
            stub = pb_grpc.WorkerServiceStub(c.channel)
            with pytest.raises(Exception) as e:
                stub.Exchange(pb.ExchangeRequest(name="w1", claim=[1]), timeout=5)
            assert "PERMISSION_DENIED" in str(e.value)
        # A worker token bound to a name serves only under that name
        impostor = WorkerProcess(
            tmp_path, s.address, redis_server.url, "w-other",
            "--token-file", _token_file(tmp_path, BOUND), "--plaintext-token",
        )  # fmt: skip
        impostor.start(wait=False)
        assert impostor.wait(20) == 1
        assert "belongs to worker w-bound" in impostor.output()
        # A worker without a token stops at once with one clear line
        anonymous = WorkerProcess(tmp_path, s.address, redis_server.url, "w-anon")
        anonymous.start(wait=False)
        assert anonymous.wait(20) == 1
        assert "refused this worker's credentials" in anonymous.output()
        assert "Traceback" not in anonymous.output()
        w.stop()
    finally:
        s.stop()


VIEWER = "viewer-token-" + "v" * 20


def test_a_viewer_reads_everything_and_acts_on_nothing(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    import grpc

    from dts.errors import DeadlineExceeded
    from dts.v1 import dts_pb2 as pb
    from dts.v1 import dts_pb2_grpc as pb_grpc

    # Given a server with a client and a viewer token, and a job the client submitted
    tokens = _tokens(tmp_path, f"client {CLIENT}", f"viewer {VIEWER}")
    s = _server(tmp_path, redis_server, "--tokens-file", tokens, "--plaintext-tokens")
    try:
        with Client(s.address, security=ChannelSecurity(token=CLIENT, plaintext_token=True)) as c:
            job = c.submit([JobSpec(argv=("true",), delay=3600, name="seen")])[0]
        with Client(s.address, security=ChannelSecurity(token=VIEWER, plaintext_token=True)) as v:
            # When the viewer reads: every read answers
            assert [j.id for j in v.list_jobs(name="seen")] == [job.id]
            assert v.get(job.id).spec.name == "seen"
            assert v.history(job.id) == []
            assert v.stats() and v.workers() == [] and len(v.activity(5)) == 5
            assert v.queues() and v.schedules() == []
            with pytest.raises(DeadlineExceeded):  # WaitJob answers: the job is not final
                v.wait(job.id, timeout=0.2)
            # Then every action is refused before it is read
            acts = [
                lambda: v.cancel(job.id),
                lambda: v.retry(job.id),
                lambda: v.submit([JobSpec(argv=("true",))]),
                lambda: v.pause_queue("default"),
                lambda: v.set_queue_limit("default", 1),
                lambda: v.pause_schedule("x"),
                lambda: v.run_schedule("x"),
                lambda: v.purge(1.0),
            ]
            for act in acts:
                with pytest.raises(PermissionDenied, match="a viewer token may not call"):
                    act()
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.WorkerServiceStub(v.channel).Register(
                    pb.RegisterRequest(name="w"), timeout=5
                )
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with Client(s.address, security=ChannelSecurity(token=CLIENT, plaintext_token=True)) as c:
            assert c.get(job.id).status.value == "scheduled"  # untouched
    finally:
        s.stop()


def test_sighup_rereads_the_tokens_file(tmp_path: Path, redis_server: RedisProcess) -> None:
    tokens = _tokens(tmp_path, f"client {CLIENT}")
    s = _server(tmp_path, redis_server, "--tokens-file", tokens, "--plaintext-tokens")
    new = "rotated-client-" + "r" * 20
    try:
        with Client(s.address, security=ChannelSecurity(token=CLIENT, plaintext_token=True)) as c:
            assert c.list_jobs() == []
            # When the file changes and the server gets SIGHUP
            _tokens(tmp_path, f"client {new}")
            s.signal(signal.SIGHUP)
            # Then the old token is refused and the new one works
            wait_until(lambda: _refused(c), 10, what="old token refused")
        with Client(s.address, security=ChannelSecurity(token=new, plaintext_token=True)) as c:
            assert c.list_jobs() == []
        # And a broken file on SIGHUP keeps the tokens in force, saying why
        _tokens(tmp_path, "nonsense")
        s.signal(signal.SIGHUP)
        wait_until(lambda: "tokens not reloaded" in s.output(), 10)
        with Client(s.address, security=ChannelSecurity(token=new, plaintext_token=True)) as c:
            assert c.list_jobs() == []
    finally:
        s.stop()


def _refused(c: Client) -> bool:
    try:
        c.list_jobs()
    except Unauthenticated:
        return True
    return False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tokens-file", "TOKENS"), "without TLS would let tokens cross the network"),
        (
            ("--tokens-file", "TOKENS", "--plaintext-tokens", "--listen", "0.0.0.0:50051"),
            "without TLS would let tokens cross the network",
        ),
        (("--tls-cert", "CERT"), "--tls-cert and --tls-key go together"),
        (("--tls-cert", "CERT", "--tls-key", "NOWHERE"), "--tls-key NOWHERE"),
    ],
)
def test_unsafe_or_broken_security_settings_stop_the_server(
    tmp_path: Path, pki: Pki, args: tuple[str, ...], message: str
) -> None:
    tokens = _tokens(tmp_path, f"client {CLIENT}")
    subst = {"TOKENS": tokens, "CERT": pki.server_cert, "NOWHERE": str(tmp_path / "none")}
    argv = [subst.get(a, a) for a in args]
    message = message.replace("NOWHERE", subst["NOWHERE"])
    r = subprocess.run(
        [str(BIN / "dts-server"), "--db", str(tmp_path / "db"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert r.returncode == 2, r
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_tls_and_tokens(tmp_path: Path, redis_server: RedisProcess, pki: Pki) -> None:
    # Given a TLS server that requires tokens
    tokens = _tokens(tmp_path, f"client {CLIENT}", f"worker {WORKER}")
    tls = ("--tls-cert", pki.server_cert, "--tls-key", pki.server_key)
    as_client = ChannelSecurity(ca=pki.ca, token=CLIENT)
    s = _server(tmp_path, redis_server, *tls, "--tokens-file", tokens, probe=as_client)
    try:
        w = WorkerProcess(
            tmp_path, s.address, redis_server.url, "w1",
            "--tls-ca", pki.ca, "--token-file", _token_file(tmp_path, WORKER),
            probe=as_client,
        )  # fmt: skip
        w.start()
        # A client that trusts the CA gets through, token and all (no plaintext flag needed)
        client_args = ("--tls-ca", pki.ca, "--token-file", _token_file(tmp_path, CLIENT))
        ok = run_cli(s.address, *client_args, "submit", "--wait", "--", "echo", "over tls")
        assert (ok.returncode, ok.stdout) == (0, "over tls\n"), ok.stderr
        # A client that trusts another CA, or speaks plaintext, cannot reach it
        for args in (("--tls-ca", pki.other_ca), ()):
            r = run_cli(s.address, *args, "--rpc-timeout", "3", "list")
            assert r.returncode == 3 and "cannot reach dts-server" in r.stderr, r
        w.stop()
    finally:
        s.stop()


def test_a_live_worker_keeps_its_name_against_another_token(
    tmp_path: Path, redis_server: RedisProcess, pki: Pki
) -> None:
    # Given a TLS server whose tokens file holds two worker tokens bound to no name
    other = "other-worker-" + "o" * 20
    tokens = _tokens(tmp_path, f"client {CLIENT}", f"worker {WORKER}", f"worker {other}")
    tls = ("--tls-cert", pki.server_cert, "--tls-key", pki.server_key)
    as_client = ChannelSecurity(ca=pki.ca, token=CLIENT)
    s = _server(
        tmp_path, redis_server, *tls, "--tokens-file", tokens, "--worker-timeout", "2",
        probe=as_client,
    )  # fmt: skip
    client_args = ("--tls-ca", pki.ca, "--token-file", _token_file(tmp_path, CLIENT))
    try:
        # Then it warns of each at start, and again on reload
        unbound = f"tokens file {tokens}: worker token on line %d is not bound to a worker name"
        assert unbound % 2 in s.output() and unbound % 3 in s.output(), s.output()
        before = s.output().count(unbound % 3)
        s.signal(signal.SIGHUP)
        wait_until(lambda: "reload: 3 token(s) in force" in s.output(), 20, what="the reload")
        # (counted once the reload is done: counting while it ran raced it)
        assert s.output().count(unbound % 3) > before, f"no warning on reload:\n{s.output()}"
        # Given a worker w1 running with the first token
        w = WorkerProcess(
            tmp_path, s.address, redis_server.url, "w1",
            "--tls-ca", pki.ca, "--token-file", _token_file(tmp_path, WORKER), probe=as_client,
        )  # fmt: skip
        w.start()
        # When a process with the second token registers as w1
        (tmp_path / "impostor").mkdir()
        impostor = WorkerProcess(
            tmp_path / "impostor", s.address, redis_server.url, "w1",
            "--tls-ca", pki.ca, "--token-file", _token_file(tmp_path, other),
        )  # fmt: skip
        impostor.start(wait=False)
        # Then it is refused and stops, saying why
        assert impostor.wait(20) == 1, impostor.output()
        assert "worker name w1 is in use by a live worker" in impostor.output()
        assert "PERMISSION_DENIED" in impostor.output()
        # And the real worker keeps its name and runs jobs
        listed = run_cli(s.address, *client_args, "--json", "workers")
        assert [(x["name"], x["pid"]) for x in json.loads(listed.stdout)] == [("w1", w.pid)]
        ok = run_cli(s.address, *client_args, "submit", "--wait", "--", "echo", "still mine")
        assert (ok.returncode, ok.stdout) == (0, "still mine\n"), ok.stderr
        assert w.alive()
        # When the real worker is gone for longer than the worker timeout
        w.kill()
        wait_until(lambda: _worker_states(s.address, client_args) == {"w1": "lost"}, 20)
        # Then another worker token may take the name
        impostor.probe = as_client
        impostor.start()
        assert impostor.alive()
        impostor.stop()
    finally:
        s.stop()


def _worker_states(address: str, client_args: tuple[str, ...]) -> dict[str, str]:
    listed = run_cli(address, *client_args, "--json", "workers")
    return {w["name"]: w["state"] for w in json.loads(listed.stdout)}


def test_mutual_tls_admits_only_certified_workers(
    tmp_path: Path, redis_server: RedisProcess, pki: Pki
) -> None:
    tls = ("--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-client-ca", pki.ca)
    certified = ChannelSecurity(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    s = _server(tmp_path, redis_server, *tls, probe=certified)
    try:
        mine = ("--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key)
        w = WorkerProcess(tmp_path, s.address, redis_server.url, "w1", *mine, probe=certified)
        w.start()
        ok = run_cli(s.address, *mine, "submit", "--wait", "--", "echo", "mutual")
        assert (ok.returncode, ok.stdout) == (0, "mutual\n"), ok.stderr
        r = run_cli(s.address, "--tls-ca", pki.ca, "--rpc-timeout", "3", "list")
        assert r.returncode == 3, r  # no client certificate: the handshake fails
        w.stop()
    finally:
        s.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI is)")
def test_worker_runs_jobs_as_the_run_as_user(tmp_path: Path, redis_server: RedisProcess) -> None:
    s = _server(tmp_path, redis_server)
    try:
        w = WorkerProcess(tmp_path, s.address, redis_server.url, "w1", "--run-as", "nobody")
        w.start()
        r = run_cli(s.address, "submit", "--wait", "--shell", "--", "id -un; echo $HOME")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == "nobody"
        w.stop()
    finally:
        s.stop()


def test_run_as_an_unknown_user_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(BIN / "dts-worker"), "--run-as", "dts-no-such-user"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert r.returncode == 2
    assert r.stderr == "dts-worker: error: --run-as: no user 'dts-no-such-user' on this machine\n"


# ---- Redis: ACL users and passwords, TLS --------------------------------------------------------


def _job_runs(tmp_path: Path, redis: RedisProcess) -> str:
    """Start a server and a worker on `redis`, run one job, return the worker's log."""
    s = _server(tmp_path, redis)
    try:
        w = WorkerProcess(tmp_path, s.address, redis.url, "w1")
        w.start()
        r = run_cli(s.address, "submit", "--wait", "--", "echo", "through redis")
        assert (r.returncode, r.stdout) == (0, "through redis\n"), r.stderr
        w.stop()
        return w.output() + s.output()
    finally:
        s.stop()


def test_redis_acl_user_with_a_password(tmp_path: Path) -> None:
    # Given a Redis whose default user is off and whose one user needs a password
    password = "pw-" + "p" * 24
    port = free_port()
    redis = RedisProcess(
        tmp_path,
        port,
        ("--user", "default", "off", "--user", "dts", "on", f">{password}", "~*", "&*", "+@all"),
        url=f"redis://dts:{password}@127.0.0.1:{port}/0",
    )
    redis.start()
    try:
        # Then dts works through it with the user in the URL, and never logs the password
        logs = _job_runs(tmp_path, redis)
        assert "***@127.0.0.1" in logs and password not in logs
        # And without credentials Redis refuses (the ACL is real)
        with pytest.raises(redis_errors.AuthenticationError):
            Redis(port=port, socket_timeout=5).set("x", 1)
    finally:
        redis.kill()


def test_redis_over_tls(tmp_path: Path, pki: Pki) -> None:
    # Given a Redis that speaks TLS only, with a certificate from our CA
    port = free_port()
    redis = RedisProcess(
        tmp_path,
        port,
        (
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", pki.server_cert,
            "--tls-key-file", pki.server_key, "--tls-ca-cert-file", pki.ca,
            "--tls-auth-clients", "no",
        ),
        url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.ca}",
    )  # fmt: skip
    redis.start()
    try:
        # Then dts works through it with a rediss:// URL trusting that CA
        _job_runs(tmp_path, redis)
        # And a client that trusts another CA is refused at the handshake
        other = Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.other_ca}")
        with pytest.raises(redis_errors.ConnectionError):
            other.ping()
    finally:
        redis.kill()


def test_live_output_flows_with_tokens(tmp_path: Path, redis_server: RedisProcess) -> None:
    # Given a server that requires tokens, and a worker whose token is bound to its name
    tokens = _tokens(tmp_path, f"client {CLIENT}", f"worker {BOUND} w-bound")
    s = _server(tmp_path, redis_server, "--tokens-file", tokens, "--plaintext-tokens")
    as_client = ChannelSecurity(token=CLIENT, plaintext_token=True)
    client_token = ("--token-file", _token_file(tmp_path, CLIENT), "--plaintext-token")
    try:
        w = WorkerProcess(
            tmp_path, s.address, redis_server.url, "w-bound",
            "--token-file", _token_file(tmp_path, BOUND), "--plaintext-token",
            probe=as_client,
        )  # fmt: skip
        w.start()
        flag = tmp_path / "go"
        script = f"echo live; until [ -e {flag} ]; do sleep 0.05; done; echo done"
        with Client(s.address, security=as_client) as c:
            jid = c.submit([JobSpec(argv=(script,), shell=True)])[0].id
            wait_until(lambda: c.get(jid).status == "running", 10, what="the job to run")
            # When a client follows it: the worker's SendOutput (its bound token) is accepted
            # and the client's FollowLogs and GetLogs carry the client's token
            wait_until(lambda: c.logs_now(jid)[0].stdout == b"live\n", 10, what="live output")
        follow = subprocess.Popen(
            [str(BIN / "dts-client"), "--server", s.address, *client_token,
             "logs", str(jid), "--follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
        )  # fmt: skip
        flag.touch()
        out, err = follow.communicate(timeout=30)
        assert (follow.returncode, out) == (0, b"live\ndone\n"), err
        w.stop()
    finally:
        s.stop()
