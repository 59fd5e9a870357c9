"""dts-web as a user runs it: options and their errors, a real HTTP (and HTTPS) listener."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from dts.errors import InvalidArgument
from dts.web.config import DEFAULT_LISTEN, web_config
from tests.harness import BIN, Proc, clean_env, free_port, wait_until
from tests.web.browser import get


def run_web(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dts-web"), *args], capture_output=True, text=True, timeout=30, env=clean_env()
    )


def test_it_binds_this_machine_unless_told() -> None:
    assert DEFAULT_LISTEN == "127.0.0.1:8080"
    assert web_config([], env={}).listen == DEFAULT_LISTEN


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--listen", "nope"], "--listen must be HOST:PORT"),
        (["--server", "a:1,a:1"], "names an address twice"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-cert", "c", "--tls-client-key", "k"], "needs --tls-ca"),
        (["--rpc-timeout", "0"], "--rpc-timeout must be greater than 0"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    with pytest.raises(InvalidArgument, match=said.replace("-", r"\-")):
        web_config(args, env={})
    r = run_web(*args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_help_and_version() -> None:
    r = run_web("--help")
    assert (
        r.returncode == 0
        and "--tls-cert" in r.stdout
        and r.stdout.rstrip().endswith("--tls-key web.key")
    )
    v = run_web("--version")
    assert v.returncode == 0 and v.stdout.startswith("dts-web ")


def _serve(tmp_path: Path, *args: str) -> tuple[Proc, int]:
    port = free_port()
    p = Proc(
        [str(BIN / "dts-web"), "--listen", f"127.0.0.1:{port}", *args],
        tmp_path / f"web-{port}.log",
        env=clean_env(),
    )
    p.start()
    return p, port


def test_it_serves_http(tmp_path: Path) -> None:
    p, port = _serve(tmp_path, "--server", f"127.0.0.1:{free_port()}")
    try:
        said = wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz"), 20, what="dts-web")
        assert said == b"ok\n"
    finally:
        assert p.stop() == 0, p.output()


def test_it_serves_https_with_tls_cert(tmp_path: Path) -> None:
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    p, port = _serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.create_default_context(cafile=str(cert))
    try:
        said = wait_until(
            lambda: get(f"https://127.0.0.1:{port}/healthz", context=context), 20, what="HTTPS"
        )
        assert said == b"ok\n"
    finally:
        assert p.stop() == 0, p.output()
