"""What a job runs with besides its command: the user it runs as, its environment, its working
directory (entered with that user's rights) and its resource limits (set by util-linux `prlimit`
before the job's program starts).
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import pwd
import resource
import shutil
import stat
import struct
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from dts.limits import LIMIT_NAMES, RLIMIT_LIMITS, Limits

log = logging.getLogger("dts.sandbox")

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
    (if it exists), else the worker's own directory (''). Warns when the --run-as user may not
    enter it: every such job would fail."""
    if configured:
        where = configured
    elif user is not None and os.path.isdir(user.home):
        where = user.home
    else:
        return ""
    if user is not None and user.uid != 0:
        try:
            os.close(open_dir_as(where, user))
        except OSError as e:
            log.warning(
                "user %s may not enter %s (%s): jobs that name no directory will fail",
                user.name,
                where,
                e.strerror,
            )
    return where


# ---- working directory --------------------------------------------------------------------------
# The spawn changes directory as root, before it changes user (Python cannot change the user of
# one thread, and code between fork and exec is out of the question), so for a --run-as user
# the directory is first looked up here the way the kernel would for that user, and the spawn
# then enters the very directory that was checked, through its descriptor.

MAX_SYMLINKS = 40  # symlinks one lookup may follow before the kernel says ELOOP
ACL_XATTR = "system.posix_acl_access"
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
SEARCH = 1  # the x bit of a directory: what looking up a name in it and entering it take
Acl = list[tuple[int, int, int]]  # (tag, permission bits, uid or gid)


@contextmanager
def job_directory(path: str, user: RunAs | None) -> Iterator[str]:
    """The directory to give the spawn of a job that runs in `path` ('' for the worker's own).

    For the worker's own user (or root) that is `path`, which the spawn enters with the job's
    rights anyway. For another user it is the directory that user reaches by `path` (see
    `open_dir_as`), as /proc/self/fd/N: valid until the spawn has entered it."""
    if not path or user is None or user.uid == 0:
        yield path
        return
    fd = open_dir_as(path, user)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def open_dir_as(path: str, user: RunAs) -> int:
    """A descriptor of the directory `path` names, looked up as `user` would look it up:
    search permission on every directory passed through and on the last one (owner, group
    and other bits, POSIX ACLs), symlinks followed one at a time (protected_symlinks honoured,
    at most MAX_SYMLINKS). Raises the OSError chdir(path) gives `user` (EACCES, ENOENT,
    ENOTDIR, ELOOP...), so a job learns nothing of places its user may not look into."""
    if not path:
        raise _error(errno.ENOENT)
    groups = frozenset((user.gid, *user.groups))
    names = deque(path.split("/"))
    fd = _open_dir("/" if path.startswith("/") else ".")
    try:
        here = os.fstat(fd)
        links = 0
        while names:
            name = names.popleft()
            if not name:
                continue
            _check_search(fd, here, user.uid, groups)
            if name == ".":
                continue
            try:
                found = _open_dir(name, fd)
            except NotADirectoryError:  # not a directory, or a symlink (O_NOFOLLOW)
                link = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(link.st_mode):
                    raise
                links += 1
                if links > MAX_SYMLINKS:
                    raise _error(errno.ELOOP) from None
                _check_follow(here, link, user.uid)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = _open_dir("/")
                    here = os.fstat(fd)
                names.extendleft(reversed(target.split("/")))
                continue
            os.close(fd)
            fd = found
            here = os.fstat(fd)
        _check_search(fd, here, user.uid, groups)  # entering it takes search permission too
        return fd
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError) and e.filename is not None:
            raise _error(e.errno or errno.EIO) from None  # not a component's name: as chdir
        raise


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open a directory (as root: no permission is checked here), never through a symlink.
    Read-only rather than O_PATH: its ACL is then read from the descriptor, not via /proc."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=dir_fd)


def _error(code: int) -> OSError:
    """The error chdir gives, without a file name: the runner names the directory itself."""
    return OSError(code, os.strerror(code))  # OSError() picks the subclass: PermissionError...


def _check_search(fd: int, st: os.stat_result, uid: int, groups: frozenset[int]) -> None:
    if not _permits(st, fd, uid, groups, SEARCH):
        raise _error(errno.EACCES)


def _permits(st: os.stat_result, fd: int, uid: int, groups: frozenset[int], want: int) -> bool:
    """The kernel's rule for a user without capabilities (fs/namei.c acl_permission_check)."""
    mode = st.st_mode
    if st.st_uid == uid:
        return (mode >> 6) & want == want
    if mode & stat.S_IRWXG:  # an ACL's mask shows in the group bits; none: no ACL to read
        acl = _acl(fd)
        if acl is not None:
            return _acl_permits(acl, st, uid, groups, want)
    if st.st_gid in groups:
        return (mode >> 3) & want == want
    return mode & want == want


def _acl(fd: int) -> Acl | None:
    """The POSIX access ACL of the file behind `fd`, or None when it has none. An ACL that
    cannot be read as one allows nothing."""
    try:
        raw = os.getxattr(fd, ACL_XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return []
    return [struct.unpack_from("<HHI", raw, at) for at in range(4, len(raw), 8)]


def _acl_permits(acl: Acl, st: os.stat_result, uid: int, groups: frozenset[int], want: int) -> bool:
    """fs/posix_acl.c posix_acl_permission: the owner entry, else a named user entry, else
    any matching group entry that grants `want` (through the mask), else `other` unless a
    group entry matched."""
    matched = False
    for i, (tag, perm, ident) in enumerate(acl):
        if tag == ACL_USER_OBJ and st.st_uid == uid:
            return perm & want == want
        if tag == ACL_USER and ident == uid:
            return _masked(acl, i, want)
        if (tag == ACL_GROUP_OBJ and st.st_gid in groups) or (tag == ACL_GROUP and ident in groups):
            matched = True
            if perm & want == want:
                return _masked(acl, i, want)
        if tag == ACL_OTHER:
            return not matched and perm & want == want
    return False


def _masked(acl: Acl, i: int, want: int) -> bool:
    mask = next((perm for tag, perm, _ in acl[i + 1 :] if tag == ACL_MASK), 7)
    return acl[i][1] & mask & want == want


def _check_follow(parent: os.stat_result, link: os.stat_result, uid: int) -> None:
    """fs.protected_symlinks: in a sticky world-writable directory (/tmp) a symlink is only
    followed by its owner, or when the directory's owner owns it too."""
    if link.st_uid == uid:
        return
    sticky = stat.S_ISVTX | stat.S_IWOTH
    if parent.st_mode & sticky != sticky or parent.st_uid == link.st_uid:
        return
    if _protected_symlinks():
        raise _error(errno.EACCES)


def _protected_symlinks() -> bool:
    try:
        with open("/proc/sys/fs/protected_symlinks") as f:
            return f.read().strip() != "0"
    except OSError:
        return False


# ---- resource limits ----------------------------------------------------------------------------

PRLIMIT = "prlimit"  # util-linux: sets rlimits, then execs the command (no race with the job)


def find_prlimit() -> str | None:
    """The path of util-linux `prlimit`, or None."""
    return shutil.which(PRLIMIT) or shutil.which(PRLIMIT, path="/usr/bin:/bin")


# The kernel's limits (dts.domain.RLIMIT_LIMITS): each one's place among Limits' values, its
# resource and its prlimit option (named after the resource: --cpu, --as, --nofile, --nproc)
RLIMITS: Final[tuple[tuple[int, int, str], ...]] = tuple(
    (LIMIT_NAMES.index(f.name), getattr(resource, f"RLIMIT_{f.rlimit}"), f"--{f.rlimit.lower()}")
    for f in RLIMIT_LIMITS
)


def within_hard_limits(limits: Limits) -> Limits:
    """`limits` lowered to the worker's own hard rlimits, which a job cannot exceed anyway and
    which prlimit, run without privilege, could not raise to."""
    if not limits.rlimits:
        return limits
    values = list(limits.values)
    for i, res, _ in RLIMITS:
        hard = resource.getrlimit(res)[1]
        if hard != resource.RLIM_INFINITY and values[i] > hard:
            values[i] = hard
    return Limits(*values)


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
    values = limits.values
    options = []
    for i, res, option in RLIMITS:
        value = values[i]
        if not value:
            continue
        if res == resource.RLIMIT_CPU:
            hard = value + 1
            hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
            if hard_cpu != resource.RLIM_INFINITY:
                hard = min(hard, hard_cpu)
            options.append(f"{option}={min(value, hard)}:{hard}")
        else:
            options.append(f"{option}={value}")
    return [prlimit, *options, "--", program, *argv[1:]]
