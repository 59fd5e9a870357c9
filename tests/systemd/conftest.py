"""Fixtures of the systemd tier: a booted Debian container with dts installed by `make install`.

Durations: the first run builds the root file system (debootstrap, ~60 s) and the wheels
(~10 s); after that a container boots in ~1 s and `make install` takes ~5 s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.systemd.container import Container, rootfs, wait_for, wheelhouse


@pytest.fixture(scope="session")
def system_image() -> tuple[Path, Path]:
    missing = ""
    if os.geteuid() != 0:
        missing = "the systemd tier needs root (debootstrap, systemd-nspawn)"
    elif not shutil.which("apt-get") and not shutil.which("systemd-nspawn"):
        missing = "the systemd tier needs a Debian host (apt-get) or systemd-nspawn"
    if missing:
        if IN_CI:  # in CI a skipped tier is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    return rootfs(), wheelhouse()


def boot(image: tuple[Path, Path], workdir: Path) -> Container:
    c = Container(image[0], workdir, image[1])
    try:
        c.boot()
    except BaseException:
        c.shutdown()
        raise
    return c


@pytest.fixture(scope="session")
def box(
    system_image: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """One container for the tier, dts installed, Redis running (Debian's unit)."""
    c = boot(system_image, tmp_path_factory.mktemp("box"))
    try:
        c.install()
        wait_for(
            lambda: c.run("systemctl", "is-active", "redis-server", check=False).returncode == 0,
            30,
            "redis-server in the container",
        )
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def fresh_box(system_image: tuple[Path, Path], tmp_path: Path) -> Iterator[Container]:
    """A container of its own, nothing installed yet."""
    c = boot(system_image, tmp_path)
    try:
        yield c
    finally:
        c.shutdown()
