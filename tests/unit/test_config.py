"""Unit tests of the programs' options (precedence and validation) and the dts-client command
line.

Every load passes `env=` explicitly and points the default config directory at a temp dir, so
neither the developer's DTS_* variables nor a real /etc/dts leak in.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

import dts.client.cli
import dts.options
import dts.server.config
import dts.worker.config
from dts.channel import DEFAULT_SERVER, parse_hostport
from dts.client.cli import main, split_command
from dts.client.render import limits_json
from dts.domain import Job, JobSpec, submitted_job
from dts.errors import InvalidArgument
from dts.limits import LIMIT_NAMES, LIMITS, LimitField, Limits
from dts.queue.redis import DEFAULT_REDIS_URL
from dts.server.config import ServerConfig, load_server_config
from dts.worker.config import load_worker_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty default config directory and no DTS_* or STATE_DIRECTORY in os.environ."""
    etc = tmp_path / "etc-dts"
    etc.mkdir()
    monkeypatch.setattr(dts.options, "CONFIG_DIR", str(etc))
    for key in list(os.environ):
        if key.startswith("DTS_") or key == "STATE_DIRECTORY":
            monkeypatch.delenv(key)
    return etc


def conf(path: Path, **values: str) -> str:
    """Write a `key = value` config file (keys with '_' written as '-'); return its path."""
    path.write_text(
        "# a comment\n\n" + "".join(f"{k.replace('_', '-')} = {v}\n" for k, v in values.items())
    )
    return str(path)


# ---- server -----------------------------------------------------------------------------------


def test_server_defaults() -> None:
    cfg = load_server_config([], env={})
    assert cfg == ServerConfig(db=os.path.join(".", "dts.db"))
    assert cfg.listen == DEFAULT_SERVER
    assert cfg.redis_url == DEFAULT_REDIS_URL
    assert cfg.worker_timeout == 30.0


def test_missing_default_config_file_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dts.options, "CONFIG_DIR", "/nonexistent/dts-config-dir")
    assert load_server_config([], env={}).listen == DEFAULT_SERVER
    assert load_worker_config([], env={}).queues == ("default",)


def test_server_precedence_flag_env_file_default(tmp_path: Path) -> None:
    f = conf(tmp_path / "s.conf", redis_url="redis://file:1/0", worker_timeout="7", max_lost="5")
    env = {"DTS_REDIS_URL": "redis://env:2/0", "DTS_WORKER_TIMEOUT": "8"}

    cfg = load_server_config(["-c", f], env={})
    assert (cfg.redis_url, cfg.worker_timeout, cfg.max_lost) == ("redis://file:1/0", 7.0, 5)

    cfg = load_server_config(["-c", f], env=env)
    assert (cfg.redis_url, cfg.worker_timeout, cfg.max_lost) == ("redis://env:2/0", 8.0, 5)

    cfg = load_server_config(
        ["-c", f, "--redis-url", "redis://flag:3/0", "--worker-timeout", "9"], env=env
    )
    assert (cfg.redis_url, cfg.worker_timeout, cfg.max_lost) == ("redis://flag:3/0", 9.0, 5)
    assert cfg.default_backoff == 1.0  # set nowhere: the default


def test_env_alone_and_long_config_flag(tmp_path: Path) -> None:
    cfg = load_server_config(
        [], env={"DTS_LISTEN": "0.0.0.0:6000", "DTS_SQLITE_SYNCHRONOUS": "normal"}
    )
    assert (cfg.listen, cfg.sqlite_synchronous) == ("0.0.0.0:6000", "normal")
    f = conf(tmp_path / "s.conf", key_prefix="other:")
    assert load_server_config(["--config", f], env={}).key_prefix == "other:"


def test_default_config_file_is_read(isolated: Path) -> None:
    conf(isolated / "server.conf", listen="127.0.0.1:7000", log_level="debug")
    conf(isolated / "worker.conf", concurrency="6", queues="a,b")
    cfg = load_server_config([], env={})
    assert (cfg.listen, cfg.process.log_level) == ("127.0.0.1:7000", "debug")
    w = load_worker_config([], env={})
    assert (w.concurrency, w.queues) == (6, ("a", "b"))
    # -c FILE values win over the default file's
    other = conf(isolated / "other.conf", listen="127.0.0.1:7001")
    assert load_server_config(["-c", other], env={}).listen == "127.0.0.1:7001"


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False)])
def test_flags_from_env_and_file(tmp_path: Path, value: str, expected: bool) -> None:
    env = {"DTS_DAEMON": value, "DTS_LOG_FILE": str(tmp_path / "log")}
    assert load_server_config([], env=env).process.daemon is expected
    f = conf(tmp_path / "s.conf", daemon=value, log_file=str(tmp_path / "log"))
    assert load_server_config(["-c", f], env={}).process.daemon is expected


def test_daemon_without_a_log_file_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="--daemon needs --log-file"):
        load_server_config(["--daemon"], env={})


def test_real_environment_does_not_leak_when_env_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DTS_REDIS_URL", "redis://leaked:1/0")
    assert load_server_config([], env={}).redis_url == DEFAULT_REDIS_URL
    assert load_server_config([]).redis_url == "redis://leaked:1/0"  # env=None: os.environ


def test_db_default_follows_state_directory_of_the_given_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/leaked/from/process")
    cfg = load_server_config([], env={"STATE_DIRECTORY": "/var/lib/dts"})
    assert cfg.db == "/var/lib/dts/dts.db"


def test_db_default_uses_the_first_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # with env=None the process environment is the one to use (systemd's StateDirectory=)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/dts:/other")
    assert load_server_config([]).db == "/var/lib/dts/dts.db"


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "nonsense"],
        ["--listen", "host:0"],
        ["--listen", "host:65536"],
        ["--listen", ":50051"],
        ["--listen", "host:"],
        ["--listen", "host:port"],
        ["--worker-timeout", "-1"],
        ["--worker-timeout", "0"],
        ["--worker-timeout", "nan"],
        ["--default-retries", "-1"],
        ["--default-backoff", "-0.5"],
        ["--default-timeout", "-1"],
        ["--max-backoff", "0"],
        ["--max-lost", "0"],
        ["--reconcile-interval", "0"],
        ["--retain", "soon"],
        ["--retain", "0"],
        ["--retain-interval", "0"],
        ["--grpc-threads", "0"],
        ["--max-waiters", "0"],
        ["--redis-url", "http://127.0.0.1:6379"],
        ["--redis-url", "127.0.0.1:6379"],
        ["--redis-url", ""],
        ["--redis-url", "redis://127.0.0.1:port/0"],
        ["--redis-url", "redis://127.0.0.1:6379/0?socket_timeout=soon"],
        ["--db", ""],
    ],
)
def test_server_validation_errors(argv: list[str]) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(argv[0])):
        load_server_config(argv, env={})


def test_retain_takes_a_duration_from_flag_env_or_file(tmp_path: Path) -> None:
    assert load_server_config([], env={}).retain == 0.0  # keep every job
    assert load_server_config(["--retain", "30d"], env={}).retain == 30 * 86400
    assert load_server_config([], env={"DTS_RETAIN": "12h"}).retain == 12 * 3600
    f = conf(tmp_path / "s.conf", retain="90m", retain_interval="5")
    cfg = load_server_config(["-c", f], env={})
    assert (cfg.retain, cfg.retain_interval) == (90 * 60, 5.0)
    with pytest.raises(InvalidArgument, match="--retain: not a duration"):
        load_server_config([], env={"DTS_RETAIN": "a month"})


def test_values_from_env_and_file_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--worker-timeout"):
        load_server_config([], env={"DTS_WORKER_TIMEOUT": "-5"})
    f = conf(tmp_path / "s.conf", redis_url="mysql://x")
    with pytest.raises(InvalidArgument, match="--redis-url"):
        load_server_config(["-c", f], env={})


def usage_error(capsys: pytest.CaptureFixture[str], argv: Sequence[str], worker: bool) -> str:
    """Load with `argv`, expect argparse's exit 2, return the one stderr line."""
    loader = load_worker_config if worker else load_server_config
    with pytest.raises(SystemExit) as exc:
        loader(argv, env={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unparseable_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--worker-timeout" in usage_error(capsys, ["--worker-timeout", "soon"], worker=False)
    assert "--log-level" in usage_error(capsys, ["--log-level", "loud"], worker=False)
    assert "--concurrency" in usage_error(capsys, ["--concurrency", "many"], worker=True)
    assert "unrecognized" in usage_error(capsys, ["--no-such-option"], worker=False)


def test_missing_explicit_config_file_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = usage_error(capsys, ["-c", str(tmp_path / "absent.conf")], worker=False)
    assert "absent.conf" in err


@pytest.mark.parametrize("prog", ["server", "worker"])
def test_sample_config_documents_the_defaults(prog: str, tmp_path: Path) -> None:
    """Uncommenting every `# key = value` line of etc/dts/PROG.conf changes nothing."""
    text = (REPO / "etc" / "dts" / f"{prog}.conf").read_text()
    lines = [
        m.group(1)
        for m in re.finditer(r"^# ([a-z][a-z-]* = (.*))$", text, re.MULTILINE)
        if not m.group(2).startswith("<")  # placeholders such as <number of CPUs>
    ]
    assert len(lines) >= 5
    f = tmp_path / "sample.conf"
    f.write_text("\n".join(lines) + "\n")
    loader = load_server_config if prog == "server" else load_worker_config
    assert loader(
        ["-c", str(f), "--name", "n"] if prog == "worker" else ["-c", str(f)], env={}
    ) == (loader(["--name", "n"] if prog == "worker" else [], env={}))


@pytest.mark.parametrize("prog", ["server", "worker"])
def test_sample_config_lists_every_option(prog: str) -> None:
    text = (REPO / "etc" / "dts" / f"{prog}.conf").read_text()
    listed = set(re.findall(r"^(?:# )?([a-z][a-z-]*) =", text, re.MULTILINE))
    parser = (
        dts.server.config.server_parser() if prog == "server" else dts.worker.config.worker_parser()
    )
    options = {
        opt[2:]
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config", "--version")
    }
    assert options - listed == set(), f"etc/dts/{prog}.conf does not list these"


# ---- worker -----------------------------------------------------------------------------------


def test_worker_defaults() -> None:
    cfg = load_worker_config([], env={})
    assert cfg.server == DEFAULT_SERVER
    assert cfg.redis_url == DEFAULT_REDIS_URL
    assert cfg.concurrency == (os.cpu_count() or 1)
    assert cfg.queues == ("default",)
    assert cfg.name == f"{socket.gethostname()}:{os.getpid()}"
    assert (cfg.kill_grace, cfg.drain_timeout, cfg.max_output) == (5.0, 60.0, 1 << 20)


def test_worker_limits_and_pass_env() -> None:
    cfg = load_worker_config(
        [
            "--max-memory",
            "2G",
            "--max-cpu",
            "60",
            "--max-files",
            "256",
            "--max-processes",
            "500",
            "--max-output",
            "64K",
            "--max-timeout",
            "3600",
            "--pass-env",
            "AWS_*, HTTPS_PROXY,",
        ],
        env={},
    )
    assert cfg.limits == Limits(cpu=60, memory=2 << 30, files=256, processes=500)
    assert (cfg.max_output, cfg.max_timeout) == (64 << 10, 3600.0)
    assert cfg.pass_env == ("AWS_*", "HTTPS_PROXY")
    assert load_worker_config([], env={}).limits == Limits()


def test_bad_worker_limits_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--max-memory" in usage_error(capsys, ["--max-memory", "lots"], worker=True)
    assert "--max-files" in usage_error(capsys, ["--max-files", "-1"], worker=True)
    with pytest.raises(InvalidArgument, match="--max-timeout"):
        load_worker_config(["--max-timeout", "-5"], env={})
    with pytest.raises(InvalidArgument, match="--pass-env"):
        load_worker_config(["--pass-env", "A=B"], env={})


def test_worker_limits_without_prlimit_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dts.worker.config, "find_prlimit", lambda: None)
    with pytest.raises(InvalidArgument) as exc:
        load_worker_config(["--max-files", "64"], env={})
    assert str(exc.value) == (
        "--max-cpu, --max-memory, --max-files and --max-processes need prlimit (util-linux), "
        "which is not installed"
    )
    assert load_worker_config(["--max-output", "1K"], env={}).max_output == 1024


class SubmitCapture:
    """A client that keeps what dts-client submit would send."""

    def __init__(self) -> None:
        self.specs: list[JobSpec] = []
        self.unserved_queues: set[str] = set()

    def submit(self, specs: Sequence[JobSpec]) -> list[Job]:
        self.specs.extend(specs)
        return [submitted_job(i + 1, spec, 0.0) for i, spec in enumerate(specs)]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("limit", LIMITS, ids=LIMIT_NAMES)
def test_submit_and_the_worker_take_a_max_option_for_every_limit(
    limit: LimitField, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # dts-client submit --max-<name> asks for that limit
    client = SubmitCapture()
    monkeypatch.setattr(dts.client.cli, "Client", lambda *args, **kwargs: client)
    assert main(["submit", limit.flag, "2", "--", "true"]) == 0
    assert [spec.limits for spec in client.specs] == [Limits(**{limit.name: 2})]
    assert capsys.readouterr().out == "1\n"
    # dts-worker --max-<name> caps it (output: the worker's own --max-output)
    monkeypatch.setattr(dts.worker.config, "find_prlimit", lambda: "/usr/bin/prlimit")
    cfg = load_worker_config([limit.flag, "2"], env={})
    if limit.rlimit:
        assert (cfg.limits, cfg.max_output) == (Limits(**{limit.name: 2}), 1 << 20)
    else:
        assert (cfg.limits, cfg.max_output) == (Limits(), 2)


def test_limits_in_json_are_named_as_on_the_wire_and_null_where_unset() -> None:
    assert list(limits_json(Limits(cpu=30, output=1 << 20)).items()) == [
        ("cpu_seconds", 30),
        ("memory_bytes", None),
        ("open_files", None),
        ("processes", None),
        ("output_bytes", 1 << 20),
    ]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--queues", "ok,bad name"], "--queues"),
        (["--queues", ",".join(f"q{i}" for i in range(65))], "--queues"),
        (["--name", "n" * 201], "--name"),
        (["--concurrency", "10001"], "--concurrency"),
    ],
)
def test_worker_settings_the_server_would_refuse_are_refused_at_start(
    argv: list[str], flag: str
) -> None:
    with pytest.raises(InvalidArgument, match=flag):
        load_worker_config(argv, env={})


def test_worker_precedence_flag_env_file_default(tmp_path: Path) -> None:
    f = conf(tmp_path / "w.conf", concurrency="2", queues="fromfile", kill_grace="1.5")
    env = {"DTS_CONCURRENCY": "3", "DTS_QUEUES": "fromenv"}
    cfg = load_worker_config(["-c", f], env={})
    assert (cfg.concurrency, cfg.queues, cfg.kill_grace) == (2, ("fromfile",), 1.5)
    cfg = load_worker_config(["-c", f], env=env)
    assert (cfg.concurrency, cfg.queues, cfg.kill_grace) == (3, ("fromenv",), 1.5)
    cfg = load_worker_config(["-c", f, "--concurrency", "4", "--queues", "flag"], env=env)
    assert (cfg.concurrency, cfg.queues, cfg.kill_grace) == (4, ("flag",), 1.5)
    assert cfg.drain_timeout == 60.0


def test_worker_queue_list_is_trimmed_and_ordered() -> None:
    cfg = load_worker_config(["--queues", " high, default ,,low "], env={})
    assert cfg.queues == ("high", "default", "low")


def test_worker_name_from_flag() -> None:
    assert load_worker_config(["--name", "w7"], env={"DTS_NAME": "env"}).name == "w7"
    assert load_worker_config([], env={"DTS_NAME": "env"}).name == "env"


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["--server", "nonsense"], "--server"),
        (["--server", "host:99999"], "--server"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "-2"], "--concurrency"),
        (["--redis-url", "tcp://x:1"], "--redis-url"),
        (["--queues", ""], "--queues"),
        (["--queues", " , ,"], "--queues"),
        (["--drain-timeout", "-1"], "--drain-timeout"),
        (["--kill-grace", "-1"], "--kill-grace"),
        (["--max-output", "0"], "--max-output"),
    ],
)
def test_worker_validation_errors(argv: list[str], what: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(what)):
        load_worker_config(argv, env={})


# ---- parse_hostport ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, "--x") == expected


@pytest.mark.parametrize("value", ["", "host", "host:", ":1", "host:-1", "host:1.5", "h:0"])
def test_parse_hostport_rejects(value: str) -> None:
    with pytest.raises(InvalidArgument, match="--x must be HOST:PORT"):
        parse_hostport(value, "--x")


def test_parse_hostport_rejects_unicode_digits() -> None:
    with pytest.raises(InvalidArgument):
        parse_hostport("host:\u00b2", "--x")


# ---- dts-client command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], 0),
        (["list"], 0),
        (["--json"], 1),
        (["--json", "status", "1"], 1),
        (["--server", "h:1", "list"], 2),
        (["--server=h:1", "list"], 1),
        (["-c", "f.conf", "--rpc-timeout", "3", "submit", "--", "ls", "-l"], 4),
        (["--config", "f.conf", "--json", "logs", "5"], 3),
        (["--server", "h:1"], 2),
    ],
)
def test_split_command(argv: list[str], expected: int) -> None:
    assert split_command(argv) == expected


def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """dts.cli.main's exit code (returned or raised), stdout and stderr."""
    try:
        code: object = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["submit", "--priority", "12", "--", "true"], "--priority"),
        (["submit", "--priority", "x", "--", "true"], "--priority"),
        (["submit", "--env", "FOO", "--", "true"], "--env"),
        (["submit", "--env", "=x", "--", "true"], "--env"),
        (["submit", "--timeout", "-1", "--", "true"], "--timeout"),
        (["submit", "--timeout", "inf", "--", "true"], "--timeout"),
        (["submit", "--retries", "1001", "--", "true"], "--retries"),
        (["submit"], "no command"),
        (["submit", "--"], "no command"),
        (["submit", "--queue", "bad queue", "--", "true"], "queue"),
        (["status", "abc"], "job id"),
        (["status", "0"], "job id"),
        (["status"], "id"),
        (["logs", "3", "--attempt", "0"], "--attempt"),
        (["list", "--status", "done"], "--status"),
        (["frobnicate"], "frobnicate"),
        (["--server", "nonsense", "list"], "--server"),
        (["--server", "host:0", "list"], "--server"),
        (["--rpc-timeout", "0", "list"], "--rpc-timeout"),
        (["--json"], "COMMAND"),
        ([], "COMMAND"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, out, err = run_main(capsys, argv)
    assert code == 2, err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("dts-client")
    assert fragment in err


def test_cli_server_with_unicode_digit_port_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_main(capsys, ["--server", "host:\u00b2", "list"])
    assert code == 2
    assert err.count("\n") == 1


def test_cli_reads_its_global_options_from_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTS_SERVER", "nonsense-from-env")
    code, _, err = run_main(capsys, ["list"])
    assert code == 2
    assert "nonsense-from-env" in err


def test_cli_flag_beats_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the flag's bad value is reported, not the (valid) one from the environment
    monkeypatch.setenv("DTS_SERVER", "127.0.0.1:1")
    code, _, err = run_main(capsys, ["--server", "flag-value", "status", "1"])
    assert code == 2
    assert "flag-value" in err
