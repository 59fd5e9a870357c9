"""The committed dts/v1 code is exactly what `make proto` generates from proto/dts/v1/dts.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("dts_pb2.py", "dts_pb2.pyi", "dts_pb2_grpc.py", "dts_pb2_grpc.pyi")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dts/v1 regenerated into a temp dir with the Makefile's `proto` plugins."""
    out = tmp_path_factory.mktemp("proto")
    # protoc-gen-mypy and protoc-gen-mypy_grpc are installed next to the interpreter (.venv/bin)
    bins = [str(Path(sys.executable).parent), str(REPO / ".venv" / "bin")]
    env = {**os.environ, "PATH": os.pathsep.join([*bins, os.environ.get("PATH", "")])}
    protos = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "proto" / "dts" / "v1").glob("*.proto")
    )
    assert protos, "no .proto files under proto/dts/v1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *protos,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"protoc failed:\n{proc.stdout}\n{proc.stderr}"
    return out / "dts" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_file_is_fresh(fresh: Path, name: str) -> None:
    committed = REPO / "dts" / "v1" / name
    generated = fresh / name
    assert generated.exists(), f"protoc did not produce {name}"
    assert committed.exists(), f"dts/v1/{name} is missing: run make proto"
    assert committed.read_bytes() == generated.read_bytes(), (
        f"dts/v1/{name} differs from what proto/dts/v1/dts.proto generates: run make proto"
    )


def test_generated_and_committed_file_sets_match(fresh: Path) -> None:
    produced = {p.name for p in fresh.iterdir() if p.is_file()}
    committed = {p.name for p in (REPO / "dts" / "v1").glob("*_pb2*") if p.is_file()}
    assert set(GENERATED) <= produced
    assert committed == produced, (
        f"generated {sorted(produced)} but dts/v1 holds {sorted(committed)}: run make proto"
    )
