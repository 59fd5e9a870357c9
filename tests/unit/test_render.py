"""What dts-client's text shows: status names everything a job asked for (its environment's
variables by name only), list shows the command cut to fit, and every table says its times'
zone."""

from __future__ import annotations

import argparse

import pytest

from dts.client import render
from dts.client.cli import Cli
from dts.domain import Job, JobSpec, JobStatus
from dts.limits import Limits

T = 1_767_323_045.5  # 2026-01-02 03:04:05.5 UTC


def full_job() -> Job:
    spec = JobSpec(
        argv=("./build.sh", "--all"),
        queue="builds",
        priority=7,
        max_retries=3,
        backoff=2.0,
        timeout=600.0,
        env=(("MODE", "nightly"), ("API_TOKEN", "s3cret-value")),
        cwd="/srv/app",
        name="nightly",
        limits=Limits(cpu=600, memory=2 << 30),
        unique="nightly-build",
    )
    return Job(7, spec, JobStatus.SCHEDULED, created_at=T, run_at=T + 60)


def test_status_shows_everything_the_job_asked_for() -> None:
    fields = dict(render.status_fields(full_job()))
    assert fields["command"] == "./build.sh --all"
    assert fields["shell"] == "no"
    assert (fields["queue"], fields["priority"], fields["unique"]) == ("builds", 7, "nightly-build")
    assert (fields["max_retries"], fields["backoff"], fields["timeout"]) == (
        3,
        "2s, doubling",
        "600s",
    )
    assert fields["cwd"] == "/srv/app"
    assert fields["env"] == "MODE, API_TOKEN"
    assert fields["limits"] == "cpu 600s, memory 2G"
    assert fields["created_at"] == "2026-01-02 03:04:05 UTC"
    assert fields["run_at"] == "2026-01-02 03:05:05 UTC"


def test_status_never_shows_an_environment_value(capsys: pytest.CaptureFixture[str]) -> None:
    Cli(Stub([full_job()]), as_json=False).status(argparse.Namespace(id=7))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "env:" in out and "API_TOKEN" in out and "s3cret-value" not in out
    assert "timeout:     600s" in out and "run_at:      2026-01-02 03:05:05 UTC" in out


def test_status_of_a_job_that_set_nothing_says_whose_settings_apply() -> None:
    job = Job(1, JobSpec(argv=("echo hi",), shell=True, timeout=0.0), JobStatus.QUEUED)
    fields = dict(render.status_fields(job))
    assert fields["shell"].startswith("yes")
    assert fields["timeout"] == "none"
    assert fields["cwd"] == "(the worker's)" and fields["limits"] == "(the worker's)"
    assert fields["env"] == "-"
    assert "unique" not in fields


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("echo hi", 20, "echo hi"),
        ("echo   a\nb", 20, "echo a b"),
        ("x" * 30, 10, "xxxxxxx..."),
    ],
)
def test_fit_cuts_to_one_line_of_the_room_given(text: str, width: int, shown: str) -> None:
    assert render.fit(text, width) == shown


def test_last_column_gets_what_the_terminal_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setattr(
        "shutil.get_terminal_size", lambda: __import__("os").terminal_size((60, 20))
    )
    rows = [(1, "queued", "a command")]
    # "ID" 2 + 2, "STATUS" 6 + 2: 12 used of 60
    assert render.last_column_width(rows, ("ID", "STATUS", "COMMAND")) == 48


def test_time_headers_say_utc() -> None:
    assert render.utc("CREATED") == "CREATED (UTC)"
    assert render.short(T) == "2026-01-02 03:04:05"


class Stub:
    """The part of a Client that status and list read."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def get(self, job_id: int) -> Job:
        return next(j for j in self.jobs if j.id == job_id)

    def list_jobs(self, status: object, queue: str, limit: int, **filters: object) -> list[Job]:
        return self.jobs


def test_list_shows_the_command_and_the_name_when_set(capsys: pytest.CaptureFixture[str]) -> None:
    plain = Job(8, JobSpec(argv=("sh", "-c", "echo " + "x" * 200)), JobStatus.QUEUED, created_at=T)
    cli = Cli(Stub([full_job(), plain]), as_json=False)  # type: ignore[arg-type]
    cli.list(argparse.Namespace(status=None, queue="", limit=50, name="", before=0))
    head, first, second = capsys.readouterr().out.splitlines()
    assert head.split()[-4:] == ["CREATED", "(UTC)", "NAME", "COMMAND"]
    assert first.endswith("nightly  ./build.sh --all")
    assert "2026-01-02 03:04:05" in first
    command = second[second.index("sh -c") :]
    assert command.endswith("...") and len(command) == 100  # not a terminal: 100 characters
    assert " -  " in second  # no name


def test_list_without_names_has_no_name_column(capsys: pytest.CaptureFixture[str]) -> None:
    job = Job(9, JobSpec(argv=("true",)), JobStatus.QUEUED, created_at=T)
    Cli(Stub([job]), as_json=False).list(
        argparse.Namespace(status=None, queue="", limit=5, name="", before=0)
    )  # type: ignore[arg-type]
    head = capsys.readouterr().out.splitlines()[0]
    assert "NAME" not in head and head.endswith("COMMAND")
