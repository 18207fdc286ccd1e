"""Build tar layers in memory with tarfile, including the awkward entries OCI layers carry."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field


@dataclass
class Member:
    """One tar member to write. ``kind``: file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = 1_700_000_000
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def f(name: str, data: bytes = b"", **kw: object) -> Member:
    return Member(name, "file", data, **kw)  # type: ignore[arg-type]


def d(name: str, **kw: object) -> Member:
    return Member(name, "dir", **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> Member:
    return Member(name, "symlink", linkname=target, **kw)  # type: ignore[arg-type]


def link(name: str, target: str, **kw: object) -> Member:
    return Member(name, "hardlink", linkname=target, **kw)  # type: ignore[arg-type]


def wh(path: str) -> Member:
    """A whiteout for ``path``: ``dir/.wh.name``."""
    head, _, tail = path.rpartition("/")
    return f(f"{head}/.wh.{tail}" if head else f".wh.{tail}")


def opaque(directory: str) -> Member:
    return f(f"{directory}/.wh..wh..opq")


def make_tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Write ``members`` in order, as PAX by default (xattrs go in PAX headers)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = TYPES[member.kind]
            default_mode = 0o755 if member.kind == "dir" else 0o644
            info.mode = default_mode if member.mode is None else member.mode
            info.uid, info.gid, info.mtime = member.uid, member.gid, member.mtime
            info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            info.pax_headers = dict(member.pax)
            if member.kind == "file":
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()
