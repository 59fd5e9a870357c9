"""Hosts on one machine: network namespaces, each joined by a veth pair to a bridge in a
namespace of its own (the switch), with addresses of a private test range that exist only inside
those namespaces. The root namespace gets no interface, address or route.

    switch namespace:  bridge br0, with one port per host (p-<host>)
    host namespace:    lo, and eth0 (the other end of its port) with 10.254.77.N/24

A host runs programs with `ip netns exec NS ...`. Cutting a host's link is its port on the
switch set down (a cable pulled at the switch): packets to and from the host are dropped, and
nothing tells the peers; setting it up again restores it.

Namespaces are named dtsc<pid>-<host>, pid being the test run's: `close()` kills every process
still in them (it asks the kernel which: `ip netns pids`) and deletes them, and runs at exit
too; a run that died without it leaves namespaces whose pid is gone, which the next run removes
the same way (`sweep_stale`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import Proc, pid_alive

SUBNET = "10.254.77"  # a /24 of the private range, only ever inside the namespaces
BRIDGE = "br0"
OURS = re.compile(r"^dtsc(\d+)-[a-z0-9]+$")  # the names of the namespaces this module makes


class NetnsError(RuntimeError):
    pass


def missing() -> str:
    """Why hosts cannot be made here ('' when they can): root and iproute2 are needed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return ""


def ip(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def namespaces() -> list[str]:
    """The names of the machine's named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    r = ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def empty(ns: str, timeout: float = 15) -> None:
    """SIGKILL every process in namespace `ns` (each by its pid), until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_in(ns)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {ns} outlived SIGKILL for {timeout}s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # the kernel takes them down: poll again (bounded by the deadline)


def remove(ns: str) -> None:
    """Empty namespace `ns` of processes and delete it."""
    try:
        empty(ns)
    finally:
        ip("netns", "delete", ns, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces of test runs that died without removing theirs; their names."""
    stale = []
    for ns in namespaces():
        m = OURS.match(ns)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            remove(ns)
            stale.append(ns)
    return stale


@dataclass
class Host:
    """A machine of the test cluster: a network namespace with one address."""

    name: str
    ns: str
    ip: str
    switch: str  # the switch's namespace
    cut_at: float | None = None  # time.time() its link was cut, while it is

    @property
    def port(self) -> str:
        """Its port on the switch."""
        return f"p-{self.name}"

    def argv(self, *argv: str) -> list[str]:
        """`argv` run on this host."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self, *argv: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.argv(*argv), capture_output=True, text=True, timeout=timeout, cwd="/"
        )
        if check and r.returncode != 0:
            raise NetnsError(f"{self.name}: {' '.join(argv)}: {r.stderr.strip() or r.stdout}")
        return r

    def cut(self) -> None:
        """Pull the host's cable: its port on the switch goes down."""
        ip("-n", self.switch, "link", "set", self.port, "down")
        self.cut_at = time.time()

    def restore(self) -> None:
        ip("-n", self.switch, "link", "set", self.port, "up")
        self.cut_at = None

    def pids(self) -> list[int]:
        return pids_in(self.ns)


class HostProc(Proc):
    """A program run on a host (`ip netns exec` execs it: the pid is the program's own)."""

    def __init__(
        self, host: Host, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.host = host
        self.program = list(argv)
        super().__init__(host.argv(*argv), log, env)


@dataclass
class Network:
    """The switch and the hosts of one test run. `close()` (also run at exit) takes them all
    down, processes included; it may be called more than once."""

    prefix: str = field(default_factory=lambda: f"dtsc{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)  # namespaces, in order of making

    def __post_init__(self) -> None:
        atexit.register(self.close)
        self.switch = self._namespace("switch")
        ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.switch, "link", "set", BRIDGE, "up")

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def add_host(self, name: str, number: int) -> Host:
        """Host `name` at SUBNET.`number`, its link up."""
        assert name not in self.hosts and re.fullmatch(r"[a-z0-9]{1,8}", name), name
        ns = self._namespace(name)
        host = Host(name, ns, f"{SUBNET}.{number}", self.switch)
        # both ends made right in their namespaces: nothing appears in the root one
        ip("link", "add", "eth0", "netns", ns, "type", "veth",
           "peer", "name", host.port, "netns", self.switch)  # fmt: skip
        ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE)
        ip("-n", self.switch, "link", "set", host.port, "up")
        ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill whatever runs in the namespaces, and delete them."""
        for ns in reversed(self.made):
            with contextlib.suppress(NetnsError, subprocess.SubprocessError):
                remove(ns)
        self.made.clear()
        self.hosts.clear()

    def left(self) -> list[str]:
        """Namespaces of this run that still exist."""
        return [ns for ns in namespaces() if ns.startswith(f"{self.prefix}-")]
