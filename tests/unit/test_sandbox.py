"""Unit tests of dts.worker.sandbox: the environment, user and working directory jobs start with."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from dts.limits import Limits
from dts.worker.sandbox import (
    RunAs,
    check_pass_env,
    default_cwd,
    job_environment,
    limited_argv,
    within_hard_limits,
)

WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_TIME": "de_DE.UTF-8",
    "TZ": "Europe/Berlin",
    "TMPDIR": "/var/tmp",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t",
    "AWS_REGION": "eu-central-1",
    "DATABASE_URL": "postgres://admin:pw@db/prod",
    "DTS_REDIS_URL": "redis://:secret@h/0",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "SUPERVISOR_ENABLED": "1",
    "INVOCATION_ID": "abc",
}
ME = RunAs.lookup(str(os.geteuid()))


def test_a_job_gets_only_the_allow_list_and_its_users_names() -> None:
    # Given a worker whose environment holds secrets and its own settings
    # When the environment of its jobs is built with no --pass-env
    env = job_environment(WORKER_ENV)
    # Then only the locale, time zone, PATH and TMPDIR pass, with the job user's names
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_TIME": "de_DE.UTF-8",
        "TZ": "Europe/Berlin",
        "TMPDIR": "/var/tmp",
        "HOME": ME.home,
        "USER": ME.name,
        "LOGNAME": ME.name,
    }


def test_pass_env_adds_names_and_globs_but_no_glob_reaches_the_workers_own() -> None:
    env = job_environment(WORKER_ENV, ("AWS_*",))
    assert env["AWS_REGION"] == "eu-central-1" and env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert "DATABASE_URL" not in env
    everything = job_environment(WORKER_ENV, ("*",))
    assert everything["DATABASE_URL"] == WORKER_ENV["DATABASE_URL"]
    private = {"DTS_REDIS_URL", "NOTIFY_SOCKET", "SUPERVISOR_ENABLED", "INVOCATION_ID"}
    assert not private & set(everything)
    # naming one exactly is a deliberate choice, and is honoured
    assert job_environment(WORKER_ENV, ("DTS_*", "NOTIFY_SOCKET")) == {
        **job_environment(WORKER_ENV),
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }


def test_the_workers_own_home_is_kept_when_its_service_manager_set_one() -> None:
    env = job_environment({**WORKER_ENV, "HOME": "/var/lib/dts-worker"})
    assert (env["HOME"], env["USER"]) == ("/var/lib/dts-worker", ME.name)


def test_a_job_without_path_gets_a_standard_one() -> None:
    assert job_environment({})["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_run_as_user_names_and_home_replace_the_workers() -> None:
    nobody = RunAs.lookup("nobody")
    env = job_environment(WORKER_ENV, (), nobody)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (nobody.home, "nobody", "nobody")


@pytest.mark.parametrize("bad", ["", "A=B", "TWO WORDS"])
def test_pass_env_refuses_what_is_not_a_name(bad: str) -> None:
    assert check_pass_env(("PATH", bad)) is not None
    assert check_pass_env(("PATH", "AWS_*", "*")) is None


def test_jobs_of_a_run_as_user_start_in_its_home(tmp_path: Path) -> None:
    home = RunAs("u", 1234, 1234, (1234,), str(tmp_path))
    assert default_cwd("", home) == str(tmp_path)
    assert default_cwd("/srv/jobs", home) == "/srv/jobs"  # the operator's --cwd wins
    gone = RunAs("u", 1234, 1234, (1234,), str(tmp_path / "missing"))
    assert default_cwd("", gone) == ""  # no home: the worker's own directory
    assert default_cwd("", None) == ""


def test_limits_become_prlimit_options_and_the_program_is_found_first() -> None:
    argv = limited_argv(
        "/usr/bin/prlimit",
        Limits(cpu=10, memory=1 << 30, files=64, processes=50, output=100),
        ["sh", "-c", "echo hi"],
        "/usr/bin:/bin",
    )
    assert argv[0] == "/usr/bin/prlimit"
    hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
    cpu = "--cpu=10:11" if hard_cpu == resource.RLIM_INFINITY else argv[1]
    assert argv[1:] == [
        cpu,
        f"--as={1 << 30}",
        "--nofile=64",
        "--nproc=50",
        "--",
        argv[6],
        "-c",
        "echo hi",
    ]
    assert argv[6].endswith("/sh") and os.path.isabs(argv[6])
    with pytest.raises(FileNotFoundError):
        limited_argv("/usr/bin/prlimit", Limits(cpu=1), ["no-such-program-here"], "/usr/bin")


def test_limits_above_the_workers_hard_limit_are_lowered_to_it() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    asked = Limits(files=hard + 1000 if hard != resource.RLIM_INFINITY else 1000)
    expected = hard if hard != resource.RLIM_INFINITY else 1000
    assert within_hard_limits(asked).files == expected
    assert within_hard_limits(Limits(output=5)) == Limits(output=5)
