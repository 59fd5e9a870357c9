"""A real systemd to test the shipped units against: Debian bookworm booted in systemd-nspawn.

The host's PID 1 need not be systemd. The root file system is built once with debootstrap and
cached (`CACHE/rootfs`, ~330 MB, ~60 s to build); every boot runs on a tmpfs overlay of it
(--volatile=overlay), so nothing a test does survives the container. The container has a
network of its own (--private-network: only its loopback), so its redis-server and dts-server
can use their default ports without meeting the host's; Python packages come from a wheel
directory the host builds once (`CACHE/wheels-*`) and binds in. Commands run inside with
`nsenter -t <container init> -a`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DTS_TEST_CACHE", "/var/cache/dts-test"))
SUITE = "bookworm"
# supervisor: the worker pool under Debian's supervisord; procps: /bin/kill, which the units'
# ExecReload= uses (every non-minimal Debian has it).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "redis-server",
    "make",
    "procps",
    "supervisor",
)
HOSTNAME = "dts-test"
PR_SET_PDEATHSIG = 1
SRC = "/usr/src/dts"  # where the checkout is, inside the container
WHEELS = "/var/cache/dts-wheels"
# What the tests give commands run inside: not the host's environment (its PATH, PIP_* ...).
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
}


def log(message: str) -> None:
    sys.stderr.write(f"[systemd tier] {message}\n")


# ---- host side: tools, root file system, wheels ---------------------------------------------


def ensure_host_tools() -> None:
    """systemd-nspawn (package systemd-container) and debootstrap, installed when missing."""
    if shutil.which("systemd-nspawn") and shutil.which("debootstrap"):
        return
    log("installing systemd-container and debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, timeout=300, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "systemd-container", "debootstrap"],
        check=True,
        timeout=600,
        env=env,
    )


def debian_mirror() -> str:
    """The Debian mirror apt already uses on this host."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and line.split()[1:]:
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and not parts[1].startswith("["):
                return parts[1]
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time (two test runs may start together)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def rootfs() -> Path:
    """The cached root file system, built first when missing or made for other packages."""
    path = CACHE / "rootfs"
    stamp = f"{SUITE} {','.join(PACKAGES)}\n"
    with cache_lock():
        marker = path / ".dts-test-rootfs"
        if marker.exists() and marker.read_text() == stamp:
            return path
        ensure_host_tools()
        build = CACHE / "rootfs.build"
        shutil.rmtree(build, ignore_errors=True)
        mirror = debian_mirror()
        log(f"building the {SUITE} root file system with debootstrap from {mirror} (~60 s)")
        started = time.monotonic()
        include = f"--include={','.join(PACKAGES)}"
        subprocess.run(
            ["debootstrap", "--variant=minbase", include, SUITE, str(build), mirror],
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
        (build / "etc/hostname").write_text(f"{HOSTNAME}\n")
        (build / ".dts-test-rootfs").write_text(stamp)
        shutil.rmtree(path, ignore_errors=True)
        build.rename(path)
        log(f"root file system ready in {time.monotonic() - started:.0f}s: {path}")
    return path


def wheelhouse() -> Path:
    """Wheels of dts's dependencies (and of its build backend) for the container's pip.

    Built by the host's venv pip: the host and bookworm both run CPython 3.11 on x86-64, so
    the wheels fit. Keyed by the files that name the dependencies.
    """
    key = hashlib.sha256(
        (ROOT / "setup.cfg").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()[:16]
    path = CACHE / f"wheels-{key}"
    with cache_lock():
        if path.is_dir():
            return path
        build = CACHE / "wheels.build"
        shutil.rmtree(build, ignore_errors=True)
        log("building wheels for the container's pip")
        pip = [str(Path(sys.executable).parent / "pip"), "wheel", "--quiet", "-w", str(build)]
        # bookworm's Python is 3.11.2: redis needs async-timeout below 3.11.3, which the
        # host's newer 3.11 does not pull in; setuptools and wheel build dts itself.
        extra = ["setuptools>=68", "wheel", "async-timeout>=4.0.3"]
        subprocess.run([*pip, str(ROOT), *extra], check=True, timeout=600, cwd=ROOT)
        for own in build.glob("dts-*.whl"):
            own.unlink()  # `make install` builds dts from the checkout
        build.rename(path)
    return path


def copy_checkout(dest: Path) -> None:
    """The project's files as a checkout has them (tracked and new, not ignored)."""
    git = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        listed = subprocess.run(git, cwd=ROOT, capture_output=True)
        names = listed.stdout.decode().split("\0") if listed.returncode == 0 else None
    except FileNotFoundError:
        names = None
    if names is None:  # not a git checkout (an unpacked archive): skip the usual junk
        junk = shutil.ignore_patterns(
            ".git", ".venv", ".run", "build", "dist", "*.egg-info", ".*cache", "__pycache__"
        )
        shutil.copytree(ROOT, dest, ignore=junk, dirs_exist_ok=True)
        return
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


# ---- the container ----------------------------------------------------------------------------


class Container:
    """A booted container; `run()` executes a command inside it."""

    def __init__(self, rootfs: Path, workdir: Path, wheels: Path, name: str = HOSTNAME) -> None:
        self.rootfs = rootfs
        self.dir = workdir
        self.wheels = wheels
        self.name = name
        self.src = workdir / "src"
        self.log = workdir / "nspawn.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self) -> None:
        self.src.mkdir(parents=True, exist_ok=True)
        copy_checkout(self.src)
        argv = ["systemd-nspawn", "--quiet", "--directory", str(self.rootfs)]
        argv += ["--machine", self.name, "--boot", "--register=no", "--keep-unit"]
        argv += ["--console=passive", "--volatile=overlay", "--private-network"]
        argv += [f"--bind={self.src}:{SRC}", f"--bind-ro={self.wheels}:{WHEELS}"]
        with open(self.log, "ab") as out:
            self.nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # a killed test run powers the container off
            )
        self.init_pid = wait_for(self._find_init, 30, "the container's init")
        try:
            state = wait_for(self._booted, 90, "the container to boot")
        except AssertionError as e:
            jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout
            raise AssertionError(
                f"{e}\npending jobs:\n{jobs}\nnspawn: {self._log_tail()}"
            ) from None
        log(f"container booted ({state}): nspawn pid {self.nspawn.pid}, init pid {self.init_pid}")

    def _find_init(self) -> int | None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited: {self._log_tail()}")
        for pid in children(self.nspawn.pid):
            return pid
        return None

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def _booted(self) -> str | None:
        r = self.run("systemctl", "is-system-running", check=False, timeout=30)
        state = r.stdout.strip()
        return state if state in ("running", "degraded") else None

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        cwd: str = "/",
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (its namespaces, root, a clean environment)."""
        environment = [f"{k}={v}" for k, v in {**INSIDE_ENV, **(env or {})}.items()]
        inner = ["/usr/bin/env", "-i", "-C", cwd, *environment, *argv]
        r = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *inner],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"in the container: {' '.join(argv)} exited {r.returncode}\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/bash", "-c", script, **kw)  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        args = [f"--property={p}" for p in props]
        out = self.run("systemctl", "show", *args, unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install(self, *make_args: str) -> subprocess.CompletedProcess[str]:
        """`make install` from the checkout, as the operator does, with pip offline."""
        pip_offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS}
        return self.run("make", "install", *make_args, cwd=SRC, env=pip_offline, timeout=300)

    def shutdown(self) -> None:
        proc, self.nspawn = self.nspawn, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # nspawn powers the container off
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            log(f"the container did not power off in 30 s; killing nspawn {proc.pid}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log(f"systemd-nspawn {proc.pid} survived SIGKILL; left behind")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def lines_matching(text: str, pattern: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.search(pattern, ln)]
