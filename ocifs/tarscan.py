"""Read the headers of a tar stream into entries (B4, A4-A10).

STUB: the interface below is fixed; the parser is being written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


# Entry kinds. Strings keep the entries readable in tests and logs; they are interned.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCK = "block"
FIFO = "fifo"


@dataclass(slots=True)
class TarEntry:
    """One member of a tar stream, with every extension header already folded in."""

    path: bytes  # the name as the archive gives it (GNU longname / PAX path / ustar prefix)
    kind: str  # one of FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO
    mode: int  # permission bits only: mode & 0o7777
    uid: int
    gid: int
    mtime_ns: int  # nanoseconds since the epoch; PAX sub-second precision kept
    size: int  # logical size of a FILE (the real size for sparse files); 0 otherwise
    linkname: bytes  # SYMLINK target or HARDLINK target path, raw; b"" otherwise
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None  # from PAX SCHILY.xattr.*; None when there are none
    data_offset: int  # offset of the stored data in the uncompressed tar stream
    sparse: tuple[tuple[int, int], ...] | None  # (logical offset, length) data segments, stored
    # back to back from data_offset; None for a file that is not sparse
    header_offset: int  # offset of the entry's first header block (for error messages)


def scan_tar(stream: Readable) -> Iterator[TarEntry]:
    """Yield the entries of the tar stream read sequentially from ``stream``."""
    raise NotImplementedError
