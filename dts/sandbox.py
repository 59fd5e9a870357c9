"""What a job runs with besides its command: the user it runs as, its environment, its working
directory and its resource limits (set by util-linux `prlimit` before the job's program starts).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import pwd
import resource
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dts.domain import Limits

# Always passed from the worker's environment to jobs: what a program needs to find programs
# and to speak the right language, and nothing that identifies or configures the worker.
ALLOWED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
ALLOWED_ENV_PREFIXES = ("LC_",)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# The worker's own settings and service-manager sockets are never the job's business (the Redis
# URL may carry a password), not even through a `--pass-env` pattern; only naming one exactly
# passes it.
PRIVATE_ENV_PREFIXES = (
    "DTS_",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "SUPERVISOR_",
)


@dataclass(frozen=True)
class RunAs:
    """A user jobs run as: the worker's own, or (`--run-as`, the worker being root) another."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """The user `name` (or a numeric uid); raises KeyError if there is none."""
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def job_environment(
    worker_env: Mapping[str, str],
    pass_env: Sequence[str] = (),
    user: RunAs | None = None,
) -> dict[str, str]:
    """The environment every job starts from, before the variables the job asks for.

    From the worker's own: PATH, LANG, LANGUAGE, TZ, TMPDIR and LC_*, plus what `pass_env`
    names (NAME, a glob such as AWS_*, or * for everything not private to the worker).
    HOME, USER and LOGNAME are those of `user` (--run-as) if given, else the worker's own.
    """
    env: dict[str, str] = {}
    for key, value in worker_env.items():
        private = key.startswith(PRIVATE_ENV_PREFIXES)
        if (
            key in ALLOWED_ENV
            or key.startswith(ALLOWED_ENV_PREFIXES)
            or key in pass_env
            or (not private and any(fnmatch.fnmatchcase(key, p) for p in pass_env))
        ):
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
        return env
    # the worker's own user: what its service manager set (a unit's Environment=HOME=...)
    # comes first, its passwd entry fills in the rest
    me = _own_user()
    own = {"HOME": me.home, "USER": me.name, "LOGNAME": me.name} if me else {}
    for key in ("HOME", "USER", "LOGNAME"):
        found = worker_env.get(key) or own.get(key)
        if found:
            env[key] = found
    return env


def check_pass_env(patterns: Sequence[str]) -> str | None:
    """Why `patterns` is not a valid --pass-env list, or None."""
    for p in patterns:
        if not p or "=" in p or any(c.isspace() for c in p):
            return f"--pass-env takes variable names or globs such as AWS_*, got {p!r}"
    return None


def _own_user() -> RunAs | None:
    try:
        return RunAs.lookup(str(os.geteuid()))
    except KeyError:
        return None


def default_cwd(configured: str, user: RunAs | None) -> str:
    """Where jobs that name no directory run: the worker's --cwd, else the --run-as user's home
    (if it exists), else the worker's own directory ('')."""
    if configured:
        return configured
    if user is not None and os.path.isdir(user.home):
        return user.home
    return ""


# ---- resource limits ----------------------------------------------------------------------------

PRLIMIT = "prlimit"  # util-linux: sets rlimits, then execs the command (no race with the job)


def find_prlimit() -> str | None:
    """The path of util-linux `prlimit`, or None."""
    return shutil.which(PRLIMIT) or shutil.which(PRLIMIT, path="/usr/bin:/bin")


def within_hard_limits(limits: Limits) -> Limits:
    """`limits` lowered to the worker's own hard rlimits, which a job cannot exceed anyway and
    which prlimit, run without privilege, could not raise to."""
    if not limits.rlimits:
        return limits

    def cap(value: int, res: int) -> int:
        hard = resource.getrlimit(res)[1]
        return value if hard == resource.RLIM_INFINITY or value <= hard else hard

    return Limits(
        cpu=cap(limits.cpu, resource.RLIMIT_CPU),
        memory=cap(limits.memory, resource.RLIMIT_AS),
        files=cap(limits.files, resource.RLIMIT_NOFILE),
        processes=cap(limits.processes, resource.RLIMIT_NPROC),
        output=limits.output,
    )


def find_program(name: str, path: str) -> str:
    """Where `name` is on the search path `path` (a job's own PATH), as a shell would find it;
    FileNotFoundError naming it when it is nowhere."""
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return found


def limited_argv(prlimit: str, limits: Limits, argv: Sequence[str], path: str) -> list[str]:
    """`argv` run through prlimit with the kernel-enforced part of `limits`.

    The program is looked up on the job's PATH first, so a missing one fails as it would
    without limits (FileNotFoundError) rather than inside prlimit. CPU time gets a soft limit
    (SIGXCPU, which a job may catch to clean up) and a hard one a second later (SIGKILL).
    """
    program = argv[0] if "/" in argv[0] else find_program(argv[0], path)
    hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
    options = []
    if limits.cpu:
        hard = limits.cpu + 1
        if hard_cpu != resource.RLIM_INFINITY:
            hard = min(hard, hard_cpu)
        options.append(f"--cpu={min(limits.cpu, hard)}:{hard}")
    if limits.memory:
        options.append(f"--as={limits.memory}")
    if limits.files:
        options.append(f"--nofile={limits.files}")
    if limits.processes:
        options.append(f"--nproc={limits.processes}")
    return [prlimit, *options, "--", program, *argv[1:]]
