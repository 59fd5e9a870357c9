"""Reading a schedules file (dts-client schedule apply): the sample, every kind of value, and
each mistake one line naming the schedule and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dts.client.args import UsageError
from dts.client.schedule_file import read_schedules
from dts.limits import Limits
from dts.schedule import Catchup, Overlap

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "dts" / "schedules.toml"


def test_the_sample_file_reads_as_its_comments_say() -> None:
    report, beat = sorted(read_schedules(str(SAMPLE)), key=lambda s: s.name, reverse=True)
    assert report.name == "nightly-report" and report.cron == "30 2 * * *"
    assert report.tz == "Europe/Paris" and report.catchup is Catchup.LAST
    assert report.overlap is Overlap.SKIP and report.spec.max_retries == 2
    assert report.spec.timeout == 3600.0 and report.spec.env == (("REPORT_FORMAT", "pdf"),)
    assert report.spec.argv[0] == "sh" and not report.spec.shell
    assert beat.every == 300.0 and beat.catchup is Catchup.NONE
    assert beat.spec.shell and beat.spec.argv == ("echo alive",)
    assert beat.spec.limits == Limits(memory=256 << 20) and beat.spec.priority == 1


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_a_list_command_with_shell_is_joined_and_numbers_are_seconds(tmp_path: Path) -> None:
    (s,) = read_schedules(
        write(
            tmp_path,
            '[schedules.a]\nevery = 90\ncommand = ["echo", "$HOME"]\nshell = true\n'
            "backoff = 2.5\nmax_files = 64\n",
        )
    )
    assert s.every == 90.0 and s.spec.argv == ("echo $HOME",) and s.spec.shell
    assert s.spec.backoff == 2.5 and s.spec.limits == Limits(files=64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[schedules.a]\nevery = "1m"\ncommand = 5\n', "command must be a string or a list"),
        ('[schedules.a]\nevery = "1m"\ncommand = "x"\npriority = 10\n', "priority must be"),
        (
            '[schedules.a]\nevery = "1m"\ncommand = "x"\nretries = "2"\n',
            "retries must be a whole number",
        ),
        ('[schedules.a]\nevery = "1m"\ncommand = "x"\ncatchup = "most"\n', "catchup must be"),
        ('[schedules.a]\nevery = "1m"\ncommand = "x"\nenv = { A = 1 }\n', "env must be"),
        ('[schedules.a]\nevery = "1m"\ncommand = "x"\nmax_memory = "lots"\n', "max_memory"),
        ('[schedules.a]\ncommand = "x"\n', "either a cron expression or an interval"),
        ('[schedules."a b"]\nevery = "1m"\ncommand = "x"\n', "schedule name"),
        ("schedules = 3\n", "schedules must be tables"),
        ("[schedules]\na = 3\n", "schedules.a must be a table"),
    ],
)
def test_mistakes_are_one_line_naming_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as e:
        read_schedules(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_a_missing_or_binary_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_schedules(str(tmp_path / "none.toml"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe[")
    with pytest.raises(UsageError):
        read_schedules(str(bad))
