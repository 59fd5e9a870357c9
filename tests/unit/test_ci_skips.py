"""The suite's CI rule (tests/conftest.py): under CI=true any skip fails the run, loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every way a test can be skipped: a skip/skipif marker, pytest.skip in a test and in a
# fixture, and a whole module (importorskip); an xfail and a pass are not skips.
TESTS = """
import pytest

@pytest.fixture
def refusing():
    pytest.skip("fixture-reason")

@pytest.mark.skipif(True, reason="marker-reason")
def test_marked():
    pass

def test_skips_itself():
    pytest.skip("test-reason")

def test_uses_fixture(refusing):
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_passes():
    pass
"""
MODULE = 'import pytest\npytest.importorskip("no_such_module_dts")\n\ndef test_x():\n    pass\n'
KEEP_GOING = ["--continue-on-collection-errors"]  # a module's skip must not hide the others
CONFTEST = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_skips.py").write_text(TESTS)
    (tmp_path / "test_module_skip.py").write_text(MODULE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rA",
            "-p",
            "no:cacheprovider",
            *KEEP_GOING,
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_under_ci_every_kind_of_skip_fails_the_run_naming_test_and_reason(
    tmp_path: Path,
) -> None:
    r = run_suite(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    for test, reason in [
        ("test_skips.py::test_marked", "marker-reason"),
        ("test_skips.py::test_skips_itself", "test-reason"),
        ("test_skips.py::test_uses_fixture", "fixture-reason"),
        ("test_module_skip.py", "no_such_module_dts"),
    ]:
        line = f"{test} was skipped under CI=true ("
        assert any(line in ln and reason in ln for ln in r.stdout.splitlines()), (test, r.stdout)
    assert "SKIPPED" not in r.stdout
    assert "XFAIL" in r.stdout and "PASSED test_skips.py::test_passes" in r.stdout


def test_without_ci_skips_stay_skips(tmp_path: Path) -> None:
    r = run_suite(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 skipped" in r.stdout and "was skipped under CI" not in r.stdout
