"""The seed images the fuzzer mutates: small layers written with tarfile, and the tree each
image must show when nothing in its layers was damaged.

A seed is a list of images (each its layers, lowest first, with a platform and a ref) and the
form it is stored in: an OCI layout directory, an index of two platforms (with a nested
index), an oci-archive (gzipped), a classic docker-archive, or that archive unpacked into a
directory. The members cover what the readers and the merge handle: files of many sizes (a
gzip layer with a file over 1 MiB, so a read crosses seek points), directories, relative and
absolute symlinks, hardlinks, a device node, a fifo, xattrs, setuid bits, owners, long names
(PAX and GNU), non-UTF-8 names, sub-second mtimes, whiteouts and an opaque directory.

``expected_tree`` merges a seed image's members the way a runtime would (these seeds are well
formed, so the merge is short) into what the walker of a mount must find, entry by entry.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import tarfile
from dataclasses import dataclass, field
from typing import Any

MTIME = 1_700_000_000
FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = (
    "file",
    "dir",
    "symlink",
    "hardlink",
    "char",
    "block",
    "fifo",
)
TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    HARDLINK: tarfile.LNKTYPE,
    CHAR: tarfile.CHRTYPE,
    BLOCK: tarfile.BLKTYPE,
    FIFO: tarfile.FIFOTYPE,
}
# A valid version-2 file capability (cap_net_raw+ep), as setcap writes it.
CAPABILITY = bytes.fromhex("0000000201200000000000000000000000000000")


@dataclass(frozen=True)
class Member:
    """One tar member of a seed layer."""

    name: str
    kind: str = FILE
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedLayer:
    members: list[Member]
    compression: str  # none, gzip, zstd (one frame), zstd-frames (a frame per 64 KiB)
    tar_format: int = tarfile.PAX_FORMAT


@dataclass(frozen=True)
class SeedImage:
    layers: list[SeedLayer]
    ref: str = "latest"
    platform: tuple[str, str] = ("linux", "amd64")


@dataclass(frozen=True)
class Seed:
    """Images and the form they are stored in (see ``build.FORMS``)."""

    name: str
    form: str
    images: list[SeedImage]


def content(name: str, size: int, compressible: bool = True) -> bytes:
    """Bytes of ``size`` that differ from file to file: text lines or noise, by the name."""
    rng = random.Random(f"content:{name}")
    if not compressible:
        return rng.randbytes(size)
    words = [b"alpha", b"beta", b"gamma", b"delta", name.encode(), b"\n"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])


def make_tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """The members in order, with the end-of-archive blocks, as ``tar`` writes them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = TAR_TYPES[member.kind]
            default = 0o755 if member.kind == DIR else 0o644
            info.mode = default if member.mode is None else member.mode
            info.uid, info.gid, info.mtime = member.uid, member.gid, member.mtime
            info.uname = info.gname = ""
            info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            info.pax_headers = dict(member.pax)
            if member.kind == FILE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def f(name: str, size: int, compressible: bool = True, **kw: Any) -> Member:
    return Member(name, FILE, content(name, size, compressible), **kw)


def d(name: str, **kw: Any) -> Member:
    return Member(name, DIR, **kw)


def base_members() -> list[Member]:
    """A small userland: every kind of entry and attribute the readers handle."""
    long_dir = "usr/share/" + "d" * 90
    return [
        d("etc"),
        f("etc/hostname", 6),
        f("etc/os-release", 300),
        f("etc/passwd", 511),
        Member("etc/localtime", SYMLINK, linkname="/usr/share/zoneinfo/UTC"),
        d("usr"),
        d("usr/bin"),
        f("usr/bin/busybox", 300_000, compressible=False, mode=0o755),
        Member("usr/bin/sh", SYMLINK, linkname="busybox"),
        Member("usr/bin/ls", HARDLINK, linkname="usr/bin/busybox"),
        f("usr/bin/su", 513, mode=0o4755),
        d("usr/share"),
        f("usr/share/big.txt", 1_300_000),
        f("usr/share/block", 512),
        f("usr/share/empty", 0),
        f("usr/share/one", 1),
        d(long_dir),
        f(f"{long_dir}/{'n' * 120}", 700),
        f("usr/share/caf\u00e9-\u00fcnicode", 20),
        f(
            "usr/share/xattrs",
            50,
            pax={
                "SCHILY.xattr.user.comment": "a comment",
                "SCHILY.xattr.user.empty": "",
            },
        ),
        f(
            "usr/bin/ping",
            4096,
            mode=0o755,
            pax={"SCHILY.xattr.security.capability": CAPABILITY.decode("utf-8", "surrogateescape")},
        ),
        d("home"),
        d("home/user", uid=1000, gid=1000, mode=0o700),
        f("home/user/notes", 70_000, uid=1000, gid=1000, mtime=MTIME + 0.25),
        d("dev"),
        Member("dev/null", CHAR, mode=0o666, devmajor=1, devminor=3),
        Member("dev/sda", BLOCK, mode=0o660, devmajor=8, devminor=0),
        d("run"),
        Member("run/initctl", FIFO, mode=0o600),
        d("var"),
        d("var/cache"),
        f("var/cache/old", 2000),
        d("tmp", mode=0o1777),
    ]


def upper_members() -> list[Member]:
    """Changes on top of ``base_members``: whiteouts (one of a hardlink's target), an opaque
    directory, a file over a file and over a directory, a hardlink to a lower file."""
    return [
        d("etc"),
        f("etc/.wh.hostname", 0),
        f("etc/motd", 100),
        d("var"),
        d("var/cache"),
        f("var/cache/.wh..wh..opq", 0),
        f("var/cache/new", 3000),
        f("usr/share/one", 7),  # replaces the lower file
        d("usr"),
        d("usr/bin"),
        f("usr/bin/.wh.busybox", 0),  # the target of a lower hardlink: usr/bin/ls stays
        Member("usr/share/block-link", HARDLINK, linkname="usr/share/block"),  # to a lower file
        f("home/user", 10),  # a file in place of a lower directory and its children
        d("srv"),
        f("srv/data", 200_000, compressible=False),
    ]


def small_members(tag: str) -> list[Member]:
    return [
        d("etc"),
        f("etc/hostname", 8),
        f(f"etc/{tag}", 4000),
        Member("bin", SYMLINK, linkname="usr/bin"),
        d("usr"),
        d("usr/bin"),
        f("usr/bin/tool", 90_000, compressible=False, mode=0o755),
        Member("usr/bin/tool2", HARDLINK, linkname="usr/bin/tool"),
    ]


def gnu_members() -> list[Member]:
    """Names only GNU headers (L, K) carry in a GNU-format tar."""
    levels = [d("opt/" + "/".join(["level"] * depth)) for depth in range(1, 31)]
    deep = "/".join(["level"] * 30)
    return [
        d("opt"),
        *levels,
        f("opt/" + "g" * 150, 1000),
        Member("opt/" + "s" * 130, SYMLINK, linkname="../" + "t" * 140),
        f(f"opt/{deep}/leaf", 10),
        f("opt/big", 150_000),
    ]


@functools.cache
def seeds() -> dict[str, Seed]:
    """Every seed, by name (built once: treat them as read-only)."""
    base = SeedLayer(base_members(), "gzip")
    upper = SeedLayer(upper_members(), "gzip")
    plain = SeedLayer(small_members("plain"), "none", tarfile.USTAR_FORMAT)
    gnu = SeedLayer(gnu_members(), "none", tarfile.GNU_FORMAT)
    one_frame = SeedLayer(small_members("zstd"), "zstd")
    frames = SeedLayer(base_members()[:12], "zstd-frames")
    arm = SeedImage([SeedLayer(small_members("arm"), "gzip")], "latest", ("linux", "riscv64"))
    return {
        "gzip2": Seed("gzip2", "layout", [SeedImage([base, upper])]),
        "plain-zstd": Seed("plain-zstd", "layout", [SeedImage([plain, gnu, one_frame, frames])]),
        "index2": Seed(
            "index2",
            "index2",
            [SeedImage([SeedLayer(small_members("amd"), "gzip"), one_frame]), arm],
        ),
        "oci-archive": Seed("oci-archive", "oci-archive-gz", [SeedImage([plain, one_frame])]),
        "docker-archive": Seed(
            "docker-archive",
            "docker-archive",
            [
                SeedImage([plain, SeedLayer(small_members("d1"), "none")], "app:v1"),
                SeedImage([plain, SeedLayer(small_members("d2"), "gzip")], "app:v2"),
            ],
        ),
        "docker-dir": Seed(
            "docker-dir",
            "docker-dir",
            [SeedImage([plain, SeedLayer(upper_members()[:3], "none")], "app:v1")],
        ),
    }


# --- the tree a mount must show --------------------------------------------------------------


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def expected_tree(image: SeedImage) -> dict[str, dict[str, Any]]:
    """path -> what the walker must report for it (see ``walker.describe``), the root "" too."""
    tree: dict[str, dict[str, Any]] = {"": {"type": DIR, "mode": 0o755, "uid": 0, "gid": 0}}
    data: dict[str, bytes] = {}
    for layer in image.layers:
        own: set[str] = set()
        for member in layer.members:
            path = _clean(member.name)
            head, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                for other in [p for p in tree if p.startswith(head + "/") and p not in own]:
                    del tree[other]
                continue
            if base.startswith(".wh."):
                victim = f"{head}/{base[4:]}" if head else base[4:]
                for other in [p for p in tree if p == victim or p.startswith(victim + "/")]:
                    del tree[other]
                continue
            own.add(path)
            if member.kind == HARDLINK:
                target = _clean(member.linkname)
                tree[path] = tree[target]
                data[path] = data[target]
                continue
            entry: dict[str, Any] = {
                "type": member.kind,
                "mode": member.mode
                if member.mode is not None
                else (0o755 if member.kind == DIR else 0o644),
                "uid": member.uid,
                "gid": member.gid,
                "mtime": int(member.mtime),
            }
            if member.kind == FILE:
                data[path] = member.data
                entry["size"] = len(member.data)
                entry["sha256"] = hashlib.sha256(member.data).hexdigest()
            elif member.kind == SYMLINK:
                entry["target"] = member.linkname
                entry["mode"] = 0o777  # what lstat shows of every symlink on Linux
            elif member.kind in (CHAR, BLOCK):
                entry["rdev"] = [member.devmajor, member.devminor]
            xattrs = {
                key.removeprefix("SCHILY.xattr."): value.encode("utf-8", "surrogateescape").hex()
                for key, value in member.pax.items()
                if key.startswith("SCHILY.xattr.")
            }
            if xattrs:
                entry["xattrs"] = xattrs
            if path in tree and tree[path]["type"] == DIR and member.kind == DIR:
                tree[path] = entry  # a directory again: its attributes change, its children stay
            else:
                for other in [p for p in tree if p.startswith(path + "/")]:
                    del tree[other]
                tree[path] = entry
    return tree
