"""dts-web's options: the shipped sample config, precedence, the chart and the filters' parsing
(pure parts of dts.web, no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dts.domain import ActivityBucket, JobStatus
from dts.errors import InvalidArgument
from dts.web.chart import activity_svg, nice_max
from dts.web.config import web_config, web_parser
from dts.web.format import job_query, parse_time, took, when

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "etc" / "dts" / "web.conf"


def test_sample_config_documents_the_defaults(tmp_path: Path) -> None:
    lines = re.findall(r"^# ([a-z][a-z-]* = .*)$", SAMPLE.read_text(), re.MULTILINE)
    assert len(lines) >= 5
    f = tmp_path / "web.conf"
    f.write_text("\n".join(lines) + "\n")
    assert web_config(["-c", str(f)], env={}) == web_config([], env={})


def test_sample_config_lists_every_option() -> None:
    listed = set(re.findall(r"^(?:# )?([a-z][a-z-]*) =", SAMPLE.read_text(), re.MULTILINE))
    options = {
        opt[2:]
        for action in web_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config", "--version")
    }
    assert options - listed == set()


def test_flag_beats_variable_beats_file(tmp_path: Path) -> None:
    f = tmp_path / "web.conf"
    f.write_text("listen = 127.0.0.1:7001\nserver = a:1\n")
    assert web_config(["-c", str(f)], env={}).listen == "127.0.0.1:7001"
    env = {"DTS_WEB_LISTEN": "127.0.0.1:7002", "DTS_LISTEN": "0.0.0.0:9", "DTS_SERVER": "b:2"}
    cfg = web_config(["-c", str(f)], env=env)
    assert (cfg.listen, cfg.server) == ("127.0.0.1:7002", "b:2")  # not dts-server's DTS_LISTEN
    assert web_config(["-c", str(f), "--listen", "127.0.0.1:7003"], env=env).listen.endswith("7003")


def test_a_token_file_is_read_and_checked(tmp_path: Path) -> None:
    good, short = tmp_path / "t", tmp_path / "s"
    good.write_text("viewer-token-" + "v" * 20 + "\n")
    short.write_text("short\n")
    assert web_config(["--token-file", str(good)], env={}).security.token.startswith("viewer")
    with pytest.raises(InvalidArgument, match="at least 16"):
        web_config(["--token-file", str(short)], env={})


def test_the_chart_stacks_each_minute_and_scales() -> None:
    assert [nice_max(n) for n in (0, 1, 3, 7, 10, 11, 420)] == [1, 1, 5, 10, 10, 20, 500]
    svg = activity_svg(
        [ActivityBucket(0.0, 3, 1, 0), ActivityBucket(60.0), ActivityBucket(120.0, 0, 0, 5)]
    )
    assert svg.count('class="ok"') == 1 and svg.count('class="bad"') == 1
    assert svg.count('class="off"') == 1 and svg.count("<title>") == 3
    assert "00:00 UTC: 3 succeeded, 1 failed, 0 cancelled" in svg
    assert ">5<" in svg  # the y axis's top


def test_filters_are_read_or_refused() -> None:
    q = job_query({"status": "failed", "queue": " q ", "since": "2026-01-31T14:00", "limit": "10"})
    assert (q.status, q.queue, q.since, q.limit) == (JobStatus.FAILED, "q", 1769868000.0, 10)
    assert q.params(before=7) == {
        "status": "failed", "queue": "q", "since": "2026-01-31T14:00", "before": "7", "limit": "10"
    }  # fmt: skip
    assert parse_time("2026-01-31 14:00:30", "x") == 1769868030.0
    for bad in (
        {"status": "done"},
        {"limit": "0"},
        {"limit": "501"},
        {"before": "x"},
        {"until": "soon"},
    ):
        with pytest.raises(InvalidArgument):
            job_query(bad)


def test_times_say_their_zone() -> None:
    assert when(0.0) == "-" and when(1769868030.0) == "2026-01-31 14:00:30 UTC"
    assert took(None, None) == "" and took(10.0, 12.5) == "2.5s"


def test_sessions_expire_and_visitors_cannot_push_out_logins() -> None:
    from unittest.mock import MagicMock

    from dts.web.sessions import Access, Sessions

    now = [0.0]
    sessions = Sessions(idle=100.0, clock=lambda: now[0], most=3)
    client = MagicMock()
    login = sessions.new(Access.ACT, client)
    assert login.csrf != login.id and len(login.id) >= 40
    # a flood of visitors without a token pushes out only one another
    visitors = [sessions.new() for _ in range(10)]
    assert sessions.get(login.id) is login
    assert sessions.get(visitors[0].id) is None and sessions.get(visitors[-1].id) is not None
    # a session unused for `idle` is gone, and its client closed
    now[0] = 150.0
    assert sessions.get(login.id) is None
    client.close.assert_called_once()
    assert login.csrf_ok(login.csrf) and not login.csrf_ok("x" * 43)
