"""Every dts program's command line explains itself: each option and positional of every
parser (subcommands too) has help text, help pages end with examples (no configargparse
footer), --version prints the version, and dts-client's global options work after the command."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import dts
from dts.client import cli
from dts.client.parsers import late_argv, subparsers
from dts.options import checkout_client_conf, version
from dts.server import history
from dts.server.config import server_parser
from dts.web.config import web_parser
from dts.worker.config import worker_parser


def every_parser() -> Iterator[argparse.ArgumentParser]:
    yield server_parser()
    yield history.parser()
    yield worker_parser()
    yield web_parser()
    yield cli.global_parser()
    commands = cli.command_parser()
    yield commands
    yield from subparsers(commands)


def test_every_option_and_positional_has_help() -> None:
    missing = [
        f"{p.prog}: {'/'.join(a.option_strings) or a.dest}"
        for p in every_parser()
        for a in p._actions
        if not a.help
    ]
    assert missing == []


def test_client_commands_cover_the_known_ones() -> None:
    progs = {p.prog for p in subparsers(cli.command_parser())}
    assert {"dts-client submit", "dts-client queue limit", "dts-client schedule add"} <= progs


@pytest.mark.parametrize(
    "parser",
    [server_parser(), history.parser(), worker_parser(), web_parser(), cli.global_parser()],
    ids=lambda p: p.prog,
)
def test_help_ends_with_examples_and_no_footer(parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "goo.gl" not in text and "In general, command-line values" not in text
    tail = text.rstrip().split("\n\n")[-1]
    assert tail.startswith("examples:"), tail
    assert parser.prog.split()[0] in tail.splitlines()[1]


@pytest.mark.parametrize("command", [p.prog for p in subparsers(cli.command_parser())])
def test_each_client_command_page_ends_with_examples(command: str) -> None:
    words = command.split()[1:]
    text = help_of(["--server", "h:1", *words, "--help"])
    tail = text.rstrip().split("\n\n")[-1]
    assert tail.startswith("examples:\n  dts-client " + " ".join(words)), tail


def help_of(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 0
    return out.getvalue()


def test_version_of_each_program(capsys: pytest.CaptureFixture[str]) -> None:
    for parser in (
        server_parser(),
        worker_parser(),
        cli.global_parser(),
        history.parser(),
        web_parser(),
    ):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args(["--version"])
        assert exit.value.code == 0
        name = parser.prog.split()[0]
        assert capsys.readouterr().out == f"{name} {version()}\n"
    assert version()[0].isdigit()


@pytest.mark.parametrize(
    ("argv", "late"),
    [
        (["status", "5", "--json"], ["--json"]),
        (["list", "--server", "h:1"], ["--server", "h:1"]),
        (
            ["list", "--queue", "q", "--json", "--rpc-timeout", "3"],
            ["--json", "--rpc-timeout", "3"],
        ),
        (["queue", "pause", "gpu", "--tls-ca", "ca.pem"], ["--tls-ca", "ca.pem"]),
        (["submit", "--json", "--queue", "q", "--", "echo", "--json"], ["--json"]),
        (["submit", "--", "echo", "--server", "x"], []),
        (["schedule", "add", "n", "--every", "1m", "--json", "--", "true"], ["--json"]),
    ],
)
def test_global_options_after_the_command(argv: list[str], late: list[str]) -> None:
    ns = cli.command_parser().parse_args(argv)
    assert late_argv(ns, cli.global_parser()) == late
    assert not any(k.startswith("late_") for k in vars(ns))


def test_same_named_options_stay_the_commands_own() -> None:
    ns = cli.command_parser().parse_args(["list", "--queue", "builds"])
    assert ns.queue == "builds" and late_argv(ns, cli.global_parser()) == []
    ns = cli.command_parser().parse_args(["submit", "--queue", "q", "--", "true"])
    assert ns.queue == "q" and ns.cmd == ["--", "true"]


def test_a_late_global_option_is_checked_like_an_early_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["status", "5", "--rpc-timeout", "soon"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rpc-timeout" in err


def test_an_installed_client_reads_no_checkout_conf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "dts").mkdir()
    monkeypatch.setattr(dts, "__file__", str(tmp_path / "dts" / "__init__.py"))
    assert checkout_client_conf() == []
    (tmp_path / "Makefile").write_text("")
    assert checkout_client_conf() == [str(tmp_path / ".run" / "client.conf")]
