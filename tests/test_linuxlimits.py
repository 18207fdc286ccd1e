"""``ocifs.linuxlimits`` against the kernel it describes (T4, T5, T6).

Each verdict is compared with what this machine's kernel does with the same request: mknod(2)
through glibc for device numbers, lsetxattr(2) on a real file, directory, symlink, device or
fifo for xattrs, symlink(2) and open(2) for path lengths. Refused means the system call fails
with anything but ENOTSUP (containerd, Docker and podman then fail the layer), left out means
ENOTSUP (which they ignore) or a success that leaves no such attribute (an ACL with no
entries removes the ACL), kept means it succeeds and the file has it. These need root
(mknod, trusted.*, security.capability) and a filesystem with user xattrs and ACLs for
``tmp_path`` (ext4 here).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import struct
from pathlib import Path

import pytest

from ocifs import linuxlimits
from ocifs.linuxlimits import (
    ACL_ACCESS,
    ACL_DEFAULT,
    CAPABILITY,
    PATH_MAX,
    clean_path_length,
    device_problem,
    path_problem,
    symlink_target_problem,
    xattr_problems,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mknod, trusted.*, caps")

KINDS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "fifo": stat.S_IFIFO,
}


def make(tmp_path: Path, kind: str) -> Path:
    """A fresh object of ``kind`` to set xattrs on."""
    path = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}"
    if kind == "file":
        path.write_bytes(b"")
    elif kind == "dir":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to("target")
    elif kind == "char":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    else:
        os.mkfifo(path)
    return path


def kernel_verdict(path: Path, name: bytes, value: bytes) -> str:
    """'kept', 'left out' (ENOTSUP, or set and gone) or 'refused' (any other failure) for
    lsetxattr on ``path``: what a container engine's file ends up with."""
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except ValueError:  # a NUL in the name: no system call takes it (Go: EINVAL)
        return "refused"
    except OSError as error:
        return "left out" if error.errno == errno.ENOTSUP else "refused"
    if os.fsdecode(name) in os.listxattr(path, follow_symlinks=False):
        if name == CAPABILITY and not value:
            # The one verdict that changed between the kernels this ran on: Linux 6.18.44
            # refuses an empty capability (EINVAL), an earlier 6.18 build stored it. ocifs
            # takes the newer, stricter verdict (linuxlimits' docstring says so).
            return "refused"
        return "kept"
    return "left out" if removed(path, name, value) else "kept"


def removed(path: Path, name: bytes, value: bytes) -> bool:
    """Whether an xattr that lsetxattr took and listxattr does not show was removed rather
    than kept as the mode bits (an access ACL with only user::, group::, other:: is folded
    into the mode and not stored): set on fresh objects of the same kind with modes 000 and
    777, a folded ACL makes the same mode of both, so it changes at least one of them."""
    for mode in (0o000, 0o777):
        probe = path.parent / f"probe-{len(list(path.parent.iterdir()))}"
        probe.mkdir() if path.is_dir() else probe.write_bytes(b"")
        probe.chmod(mode)
        os.setxattr(probe, name, value)
        if stat.S_IMODE(probe.stat().st_mode) != mode:
            return False
    return True


def ocifs_verdict(name: bytes, value: bytes, kind: str) -> str:
    problems = list(xattr_problems({name: value}, KINDS[kind]))
    if not problems:
        return "kept"
    return "refused" if problems[0].refused else "left out"


def acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
MINIMAL = acl((USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0))
NAMED = acl((USER_OBJ, 6, 0), (USER, 6, 5), (GROUP_OBJ, 4, 0), (MASK, 6, 0), (OTHER, 0, 0))
CAP_V2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
CAP_V3 = struct.pack("<IIIIII", 0x03000000, 1 << 13, 0, 0, 0, 0)

CASES = [
    (b"user.a", b"v"),
    (b"user." + b"n" * 250, b"v"),  # 255 bytes
    (b"user." + b"n" * 251, b"v"),  # 256
    (b"user.big", b"v" * 65537),
    (b"user.", b"v"),
    (b"user.a\x00b", b"v"),
    (b"trusted.a", b"v"),
    (b"trusted.", b"v"),
    (b"security.a", b"v"),
    (b"security.", b"v"),
    (b"foo.bar", b"v"),
    (b"user", b"v"),
    (b"system.foo", b"v"),
    (b"system.posix_acl_accessX", MINIMAL),
    (ACL_ACCESS, MINIMAL),
    (ACL_ACCESS, NAMED),
    (ACL_ACCESS, b""),
    (ACL_ACCESS, acl()),
    (ACL_ACCESS, acl(version=3)),
    (ACL_ACCESS, MINIMAL[:-1]),
    (ACL_ACCESS, b"\x02\x00"),
    (ACL_ACCESS, NAMED.replace(struct.pack("<HHI", MASK, 6, 0), b"")),  # named, no mask
    (ACL_ACCESS, acl((USER_OBJ, 6, 0), (USER, 6, 0xFFFFFFFF), (GROUP_OBJ, 4, 0), (MASK, 6, 0))),
    (ACL_ACCESS, acl((USER_OBJ, 8, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0))),  # perm bit 8
    (ACL_ACCESS, acl((GROUP_OBJ, 4, 0), (USER_OBJ, 6, 0), (OTHER, 4, 0))),  # out of order
    (ACL_DEFAULT, MINIMAL),
    (ACL_DEFAULT, acl()),
    (CAPABILITY, CAP_V2),
    (CAPABILITY, CAP_V3),
    (CAPABILITY, b""),
    (CAPABILITY, CAP_V2[:12]),
    (CAPABILITY, struct.pack("<III", 0x01000000, 1, 0)),  # v1
    (CAPABILITY, struct.pack("<IIIII", 0x02000002, 1, 0, 0, 0)),  # an unknown flag
    (CAPABILITY, CAP_V3[:20] + struct.pack("<I", 0xFFFFFFFF)),
    (CAPABILITY, CAP_V2 + b"\x00"),
]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_t6_xattr_verdicts_are_the_kernels(tmp_path: Path, kind: str) -> None:
    """T6: for every case on every kind of file, ocifs refuses, leaves out or keeps an xattr
    exactly when lsetxattr(2) fails, fails with ENOTSUP, or succeeds."""
    disagree = []
    for name, value in CASES:
        expected = kernel_verdict(make(tmp_path, kind), name, value)
        found = ocifs_verdict(name, value, kind)
        if found != expected:
            disagree.append(f"{name[:30]!r} ({len(value)} bytes): kernel {expected}, ocifs {found}")
    assert disagree == []


@pytest.mark.parametrize("value", [b"", acl()], ids=["empty", "header-only"])
@pytest.mark.parametrize("name", [ACL_ACCESS, ACL_DEFAULT], ids=["access", "default"])
def test_t6_an_acl_with_no_entries_is_left_out_as_the_kernel_removes_it(
    tmp_path: Path, name: bytes, value: bytes
) -> None:
    """T6: setting an ACL with no entries on a directory that has one succeeds and removes
    it (getxattr: ENODATA, listxattr: not there), so ocifs leaves it out rather than list a
    name its getxattr cannot give (the fuzzer's finding), with a reason, not a refusal."""
    directory = make(tmp_path, "dir")
    os.setxattr(directory, name, NAMED)
    assert os.fsdecode(name) in os.listxattr(directory)
    os.setxattr(directory, name, value)
    assert os.fsdecode(name) not in os.listxattr(directory)
    with pytest.raises(OSError) as raised:
        os.getxattr(directory, name)
    assert raised.value.errno == errno.ENODATA
    for kind in ("file", "dir", "char"):
        problems = list(xattr_problems({name: value, b"trusted.a": b"v"}, KINDS[kind]))
        assert [(p.name, p.refused) for p in problems] == [(name, False)], kind
        assert "no entries" in problems[0].reason


def test_t6_random_acls_and_capabilities_agree_with_the_kernel(tmp_path: Path) -> None:
    """T6: 3000 seeded random ACLs (tags, permissions, ids, order, sizes) and file
    capabilities (sizes, revisions, flags, root ids), on a file, a directory and a symlink."""
    rng = random.Random(11)
    tags = [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER, 0, 3, 0x40]
    targets = {kind: make(tmp_path, kind) for kind in ("file", "dir", "symlink")}
    verdicts: dict[str, int] = {}
    disagree = []
    for number in range(3000):
        kind = rng.choice(list(targets))
        if number % 2:
            name = rng.choice([ACL_ACCESS, ACL_DEFAULT])
            entries = [
                (
                    rng.choice(tags[:6] * 6 + tags),
                    rng.choice([0, 4, 6, 7, 7, 8]),
                    rng.choice([0, 5, 0xFFFFFFFF]),
                )
                for _ in range(rng.randrange(0, 7))
            ]
            if rng.random() < 0.5:  # a good skeleton now and then, so valid ACLs come up
                entries = [(USER_OBJ, 6, 0), *entries[:2], (GROUP_OBJ, 4, 0), (MASK, 4, 0)]
                entries.append((OTHER, rng.choice([0, 4, 8]), 0))
            value = acl(*entries, version=rng.choice([2, 2, 2, 1]))
            if rng.random() < 0.1:
                value = value[: rng.randrange(len(value) + 1)]
        else:
            name = CAPABILITY
            size = rng.choice([0, 4, 12, 20, 20, 24, 24, 28])
            magic = rng.choice([0x01000000, 0x02000000, 0x03000000, 0x04000000])
            magic |= rng.choice([0, 0, 1, 2, 0x100])
            value = (magic.to_bytes(4, "little") + rng.randbytes(24))[:size]
            if size == 24 and rng.random() < 0.3:
                value = value[:20] + b"\xff\xff\xff\xff"
        expected = kernel_verdict(targets[kind], name, value)
        found = ocifs_verdict(name, value, kind)
        verdicts[expected] = verdicts.get(expected, 0) + 1
        if found != expected:
            disagree.append(
                f"{name!r} on a {kind}, {value.hex()}: kernel {expected}, ocifs {found}"
            )
    assert disagree[:5] == []
    assert min(verdicts.get(v, 0) for v in ("kept", "left out", "refused")) > 100, verdicts


def test_t6_access_acls_after_chmod_are_the_kernels(tmp_path: Path) -> None:
    """T6: the engines' order (lsetxattr, then chmod to the tar's mode) on real files and
    directories, for 600 seeded valid access ACLs and modes: the ACL the kernel then has
    (or has not) is ``access_acl_after_chmod``'s, byte for byte, and the mode is the tar's."""
    rng = random.Random(5)
    outcomes = {"gone": 0, "kept": 0}
    for number in range(600):
        kind = rng.choice(["file", "dir"])
        entries = [(USER_OBJ, rng.randrange(8), rng.choice([0, 7]))]
        entries += [(USER, rng.randrange(8), uid) for uid in sorted(rng.sample(range(9), 2))][
            : rng.choice([0, 0, 1, 2])
        ]
        entries.append((GROUP_OBJ, rng.randrange(8), 0))
        entries += [(GROUP, rng.randrange(8), gid) for gid in (3, 4)][: rng.choice([0, 0, 1, 2])]
        if len(entries) > 2 or rng.random() < 0.3:
            entries.append((MASK, rng.randrange(8), 0))
        entries.append((OTHER, rng.randrange(8), 0))
        value = acl(*entries)
        assert ocifs_verdict(ACL_ACCESS, value, kind) == "kept", entries
        mode = rng.choice([0o000, 0o644, 0o755, 0o750, 0o4711, 0o1777]) ^ rng.randrange(0o1000)
        path = make(tmp_path, kind)
        os.setxattr(path, ACL_ACCESS, value)
        os.chmod(path, mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        try:
            on_disk: bytes | None = os.getxattr(path, ACL_ACCESS)
        except OSError as error:
            assert error.errno == errno.ENODATA
            on_disk = None
        assert linuxlimits.access_acl_after_chmod(value, mode) == on_disk, (number, entries)
        outcomes["gone" if on_disk is None else "kept"] += 1
    assert min(outcomes.values()) > 50, outcomes


@pytest.mark.parametrize(
    "major,minor",
    [(0, 0), (4095, (1 << 20) - 1), (4096, 0), (0, 1 << 20), (4097, 5), ((1 << 31) - 1, 0)],
)
def test_t5_device_range_is_what_mknod_takes(tmp_path: Path, major: int, minor: int) -> None:
    """T5: the numbers ocifs accepts are those glibc's mknod makes, with the same numbers
    back from stat; the others glibc refuses (EINVAL), and the raw system call, as Go makes
    it, would keep the low bits only (README: containerd makes another device)."""
    path = tmp_path / "dev"
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
    except OSError as error:
        assert error.errno == errno.EINVAL
        assert device_problem(major, minor) is not None
        return
    rdev = os.lstat(path).st_rdev
    assert (os.major(rdev), os.minor(rdev)) == (major, minor)
    assert device_problem(major, minor) is None


def test_t4_path_max_is_what_the_kernel_takes(tmp_path: Path) -> None:
    """T4: a path of 4095 bytes reaches the filesystem (ENOENT), one of 4096 does not
    (ENAMETOOLONG); a symlink target of 4095 bytes is made, one of 4096 is not."""
    base = str(tmp_path)
    for length, code in ((PATH_MAX - 1, errno.ENOENT), (PATH_MAX, errno.ENAMETOOLONG)):
        tail = "/".join(["x" * 200] * 40)
        path = (base + "/" + tail)[:length]
        with pytest.raises(OSError) as info:
            os.stat(path)
        assert info.value.errno == code, length
        assert (path_problem(path.encode(), "path") is None) == (code == errno.ENOENT)
    os.symlink("t" * (PATH_MAX - 1), tmp_path / "fits")
    assert symlink_target_problem(b"t" * (PATH_MAX - 1)) is None
    with pytest.raises(OSError) as info:
        os.symlink("t" * PATH_MAX, tmp_path / "too-long")
    assert info.value.errno == errno.ENAMETOOLONG
    assert symlink_target_problem(b"t" * PATH_MAX) is not None


def test_clean_path_length() -> None:
    """The length a path has once cleaned, as containerd joins it to its root: '/' and the
    components, '.' and empty ones dropped, '..' taking one away."""
    assert clean_path_length(b"") == clean_path_length(b"./") == clean_path_length(b"/") == 1
    assert clean_path_length(b"a/b") == len(b"/a/b")
    assert clean_path_length(b"./a//b/./c/") == len(b"/a/b/c")
    assert clean_path_length(b"a/../b") == len(b"/b")
    assert clean_path_length(b"../../b") == len(b"/b")
    assert linuxlimits.DEV_MAJOR_MAX == 4095 and linuxlimits.DEV_MINOR_MAX == 1048575
