"""`make run` leaves the address of the cluster it started where `make run-client` and
dts-client find it (RUN_DIR/client.conf), and takes it away when it stops."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dts.client.cli import global_parser
from dts.devrun import ROOT, DevCluster, StopRequest
from tests.harness import BIN, clean_env, kill_quietly, wait_until

pytestmark = pytest.mark.single_store  # make run keeps its own SQLite history


def test_a_plain_client_of_the_checkout_reads_the_conf_make_run_writes_there() -> None:
    default_run = DevCluster(ROOT / ".run", StopRequest())
    assert global_parser()._default_config_files[-1] == str(default_run.client_conf)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_client_reaches_the_cluster_make_run_started(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = tmp_path / "devrun.out"
    with out.open("wb") as log:
        devrun = subprocess.Popen(
            [sys.executable, "-m", "dts.devrun", "--dir", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=ROOT,
        )
    conf = run_dir / "client.conf"
    try:
        wait_until(
            lambda: "Ctrl+C stops everything" in out.read_text() or devrun.poll() is not None,
            60,
            what="make run's cluster",
        )
        assert devrun.poll() is None, out.read_text()
        address = out.read_text().split("dts is running: server ")[1].split(",")[0]
        assert conf.read_text().splitlines()[-1] == f"server = {address}"
        make = subprocess.run(
            [
                *("make", "-s", "-C", str(ROOT), "-o", "build", "run-client"),
                *(f"VENV={BIN.parent}", f"RUN_DIR={run_dir}", "CMD=echo hi from make"),
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
        assert (make.returncode, make.stdout) == (0, "hi from make\n"), make.stderr
        # dts-client given the file (and a global option after the command): its workers
        r = subprocess.run(
            [str(BIN / "dts-client"), "-c", str(conf), "workers", "--json"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
        assert (r.returncode, r.stdout.count('"name"')) == (0, 2), r.stderr
    finally:
        devrun.send_signal(signal.SIGINT)
        try:
            devrun.wait(60)
        finally:
            kill_quietly(devrun.pid)
    assert devrun.returncode == 0, out.read_text()
    assert not conf.exists()
