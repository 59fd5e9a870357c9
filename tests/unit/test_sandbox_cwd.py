"""Unit tests of dts.worker.sandbox's working directory for --run-as users: every answer of
`open_dir_as` is checked against the kernel's own, a chdir by a process of that user, on real
directories with modes, owners, groups, POSIX ACLs and symlinks (root is needed to make them)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.worker import sandbox
from dts.worker.sandbox import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    ACL_XATTR,
    MAX_SYMLINKS,
    RunAs,
    default_cwd,
    job_directory,
    open_dir_as,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI is)")

NOBODY = RunAs("nobody", 65534, 65534, (65534,), "/nonexistent")
OTHER = RunAs("other", 12345, 12345, (12345,), "/nonexistent")  # owns private/
MEMBER = RunAs("member", 23456, 23456, (23456, 4242), "/nonexistent")  # in group 4242
USERS = {"nobody": NOBODY, "other": OTHER, "member": MEMBER}
ANY = 0xFFFFFFFF  # the id field of ACL entries that have none

# A process of the user tries each directory: its errno, or 0 and where it landed.
ORACLE = """
import json, os, sys
out = []
for path in json.loads(sys.argv[1]):
    try:
        os.chdir(path)
    except OSError as e:
        out.append([e.errno, 0, 0])
    else:
        st = os.stat(".")
        out.append([0, st.st_dev, st.st_ino])
    os.chdir(sys.argv[2])
print(json.dumps(out))
"""


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def _set_acl(path: Path, *entries: tuple[int, int, int]) -> None:
    try:
        os.setxattr(path, ACL_XATTR, _acl(*entries))
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        pytest.skip(f"{path.parent} has no POSIX ACLs")


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """Directories under /tmp (pytest's own tree is root's alone, so nobody could enter any)."""
    base = Path(tempfile.mkdtemp(prefix="dts-cwd-", dir="/tmp"))
    base.chmod(0o755)
    try:
        sub = _dir(_dir(base / "open", 0o755) / "sub", 0o755)
        _dir(_dir(base / "private", 0o700, OTHER.uid, OTHER.gid) / "exists", 0o755)
        _dir(_dir(base / "group", 0o750, 0, 4242) / "in", 0o755)
        _dir(base / "listable", 0o744)  # read but no search for others
        (base / "file").write_text("not a directory")
        # ACLs: nobody named with search on a 0700 directory; nobody named without it on an
        # open one; group 4242 with search on a 0700 one; a mask that takes search away
        _set_acl(
            _dir(base / "acl-allow", 0o700),
            (ACL_USER_OBJ, 7, ANY), (ACL_USER, 1, NOBODY.uid), (ACL_GROUP_OBJ, 0, ANY),
            (ACL_MASK, 1, ANY), (ACL_OTHER, 0, ANY),
        )  # fmt: skip
        _set_acl(
            _dir(base / "acl-deny", 0o755),
            (ACL_USER_OBJ, 7, ANY), (ACL_USER, 0, NOBODY.uid), (ACL_GROUP_OBJ, 5, ANY),
            (ACL_MASK, 5, ANY), (ACL_OTHER, 5, ANY),
        )  # fmt: skip
        _set_acl(
            _dir(base / "acl-group", 0o700),
            (ACL_USER_OBJ, 7, ANY), (ACL_GROUP_OBJ, 0, ANY), (ACL_GROUP, 1, 4242),
            (ACL_MASK, 1, ANY), (ACL_OTHER, 0, ANY),
        )  # fmt: skip
        _set_acl(
            _dir(base / "acl-masked", 0o700),
            (ACL_USER_OBJ, 7, ANY), (ACL_USER, 7, NOBODY.uid), (ACL_GROUP_OBJ, 0, ANY),
            (ACL_MASK, 4, ANY), (ACL_OTHER, 0, ANY),
        )  # fmt: skip
        links = base / "open"
        (links / "to-sub").symlink_to("sub")
        (links / "to-private").symlink_to("../private/exists")
        (links / "to-abs").symlink_to(sub)
        (links / "to-file").symlink_to(base / "file")
        (links / "dangling").symlink_to("nowhere")
        (links / "loop-a").symlink_to("loop-b")
        (links / "loop-b").symlink_to("loop-a")
        for i in range(MAX_SYMLINKS + 1):  # chain-0 -> chain-1 -> ... -> sub
            (links / f"chain-{i}").symlink_to(f"chain-{i + 1}" if i < MAX_SYMLINKS else "sub")
        # a symlink of another user in a sticky world-writable directory (protected_symlinks)
        sticky = _dir(base / "sticky", 0o1777)
        (sticky / "theirs").symlink_to(sub)
        os.lchown(sticky / "theirs", OTHER.uid, OTHER.gid)
        yield base
    finally:
        shutil.rmtree(base)


PATHS = [
    "open", "open/sub", "open/sub/", "open//sub", "open/./sub", "open/sub/..", "open/sub/../..",
    "open/missing", "private", "private/exists", "private/missing", "private/exists/..",
    "group", "group/in", "listable", "file", "file/x", "open/sub/../../private/exists",
    "acl-allow", "acl-deny", "acl-group", "acl-masked",
    "open/to-sub", "open/to-sub/", "open/to-private", "open/to-abs", "open/to-file",
    "open/dangling", "open/loop-a", "open/chain-0", "open/chain-1", "open/to-sub/..",
    "sticky/theirs", "",
]  # fmt: skip


def _oracle(user: RunAs, paths: list[str], start: Path) -> list[list[int]]:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 for a process of the test user")
    r = subprocess.run(
        [python, "-c", ORACLE, json.dumps(paths), str(start)],
        cwd=start,
        user=user.uid,
        group=user.gid,
        extra_groups=list(user.groups),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(r.stdout))


def _ours(user: RunAs, path: str) -> list[int]:
    try:
        fd = open_dir_as(path, user)
    except OSError as e:
        assert e.filename is None, e  # the runner names the directory, chdir-like
        return [e.errno or 0, 0, 0]
    try:
        st = os.fstat(fd)
        return [0, st.st_dev, st.st_ino]
    finally:
        os.close(fd)


@pytest.mark.parametrize("who", USERS)
@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_the_directory_check_gives_the_kernels_answer(
    tree: Path, who: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = USERS[who]
    paths = [str(tree / p) if form == "absolute" and p else p for p in PATHS]
    # When the kernel and open_dir_as look each path up for the user
    expected = _oracle(user, paths, tree)
    monkeypatch.chdir(tree)
    got = [_ours(user, p) for p in paths]
    # Then they agree on every one: the same errno, or the same directory
    assert dict(zip(paths, got, strict=True)) == dict(zip(paths, expected, strict=True))


def test_the_tree_covers_both_answers_for_every_user(tree: Path) -> None:
    """The comparison above means something only if each user is both let in and kept out."""
    for user in USERS.values():
        codes = {_ours(user, str(tree / p))[0] for p in PATHS if p}
        assert {0, errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.ELOOP} <= codes, user
    assert _ours(NOBODY, str(tree / "acl-allow"))[0] == 0
    assert _ours(OTHER, str(tree / "acl-allow"))[0] == errno.EACCES
    assert _ours(NOBODY, str(tree / "acl-deny"))[0] == errno.EACCES
    assert _ours(MEMBER, str(tree / "acl-group"))[0] == 0
    assert _ours(NOBODY, str(tree / "acl-masked"))[0] == errno.EACCES


def test_a_path_inside_a_closed_directory_gets_one_answer_whether_it_exists_or_not(
    tree: Path,
) -> None:
    for path in ("private/exists", "private/missing", "private/exists/../exists"):
        with pytest.raises(PermissionError):
            open_dir_as(str(tree / path), NOBODY)


def test_a_symlink_of_another_user_in_a_sticky_directory_is_not_followed_when_protected(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernel's answer depends on fs.protected_symlinks, which the oracle test sees as set
    monkeypatch.setattr(sandbox, "_protected_symlinks", lambda: True)
    with pytest.raises(PermissionError):
        open_dir_as(str(tree / "sticky/theirs"), NOBODY)
    os.close(open_dir_as(str(tree / "sticky/theirs"), OTHER))  # its owner may follow it
    monkeypatch.setattr(sandbox, "_protected_symlinks", lambda: False)
    os.close(open_dir_as(str(tree / "sticky/theirs"), NOBODY))


def test_job_directory_is_the_checked_directory_for_another_user_only(tree: Path) -> None:
    for user in (None, RunAs("root", 0, 0, (0,), "/root")):
        with job_directory(str(tree / "private/exists"), user) as where:
            assert where == str(tree / "private/exists")
    with job_directory("", NOBODY) as where:
        assert where == ""
    with job_directory(str(tree / "open/to-sub"), NOBODY) as where:
        assert where.startswith("/proc/self/fd/")
        assert os.stat(where).st_ino == os.stat(tree / "open/sub").st_ino
    assert not os.path.exists(where)  # the descriptor is closed afterwards
    with pytest.raises(PermissionError), job_directory(str(tree / "private"), NOBODY):
        pass


def test_a_default_directory_the_user_may_not_enter_is_warned_of(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "dts.sandbox"):
        assert default_cwd(str(tree / "open"), NOBODY) == str(tree / "open")
        assert caplog.messages == []
        assert default_cwd(str(tree / "private"), NOBODY) == str(tree / "private")
    assert caplog.messages == [
        f"user nobody may not enter {tree / 'private'} (Permission denied): jobs that name no"
        " directory will fail"
    ]
