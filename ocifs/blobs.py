"""Where a blob's bytes are, and the one way indexing and reads get at them.

A layer blob is a byte range of something: a whole file of a layout directory
(``blobs/sha256/<hex>``), a member of an archive (``docker save``, ``oci-archive``), and later a
range of a registry's blob. Everything that reads blob bytes (indexing, the layer readers, their
cursors and prefetch jobs, the index cache's sample) asks a ``Blob`` for a ``BlobHandle`` and
reads it by offset, so none of them knows which kind of source it is reading; the index cache
keys by digest whatever the source.

A handle's ``pread`` behaves like ``os.pread`` on a file as long as the blob: it returns fewer
bytes only at the blob's end, and raises ``OSError`` when the bytes cannot be had.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .beneath import open_beneath

logger = logging.getLogger(__name__)

# Called with the number of blob (or archive) bytes just read, as a long read goes on.
Progress = Callable[[int], None]


class Readable(Protocol):
    """What reads a stream front to back: a BlobStream, or any binary file."""

    def read(self, size: int = -1, /) -> bytes: ...


class BlobHandle(Protocol):
    """An open blob, read by offset; safe to use from several threads at once."""

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: fewer only at the blob's end; OSError if the
        bytes cannot be read."""
        ...

    def close(self) -> None: ...


class Blob(Protocol):
    """Where one blob's bytes are; cheap to keep, opened for reading with ``open``."""

    @property
    def size(self) -> int: ...

    def open(self) -> BlobHandle:
        """A handle to read it; OSError if it cannot be opened."""
        ...

    def describe(self) -> str:
        """Where the bytes are, for log lines: a path, or a path and a byte range."""
        ...


class NotAFile(OSError):
    """A name that is there but holds no blob: a directory, a device, a sparse archive member."""


@dataclass(frozen=True)
class FileBlob:
    """A blob stored as bytes ``[offset, offset + size)`` of a host file: a layout's blob file
    (offset 0, the whole file) or a member of an uncompressed archive. A layout's blob has its
    directory as ``beneath``: ``path`` is then that directory joined with a path with no
    symlink in it, and every open walks it without following one (``beneath.open_beneath``)."""

    path: Path
    size: int
    offset: int = 0
    beneath: Path | None = None

    def open(self) -> FileBlobHandle:
        return FileBlobHandle(self)

    def describe(self) -> str:
        if self.offset == 0:
            return str(self.path)
        return f"{self.path} bytes {self.offset}-{self.offset + self.size}"


class FileBlobHandle:
    """A file descriptor on a FileBlob's file, with reads kept inside its range."""

    def __init__(self, blob: FileBlob) -> None:
        self.blob = blob
        if blob.beneath is None:
            self.fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)
            return
        self.fd = open_beneath(blob.beneath, str(blob.path.relative_to(blob.beneath)))
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):  # changed since it was looked up
            os.close(self.fd)
            self.fd = -1
            raise NotAFile(errno.EIO, f"{blob.path} is no longer a regular file")

    def pread(self, size: int, offset: int) -> bytes:
        size = max(0, min(size, self.blob.size - offset))
        if size == 0:
            return b""
        return os.pread(self.fd, size, self.blob.offset + offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BlobStream(io.RawIOBase):
    """A blob read front to back (what the indexing pass and the hashers read)."""

    def __init__(self, blob: Blob) -> None:
        super().__init__()
        self.handle = blob.open()
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.handle.pread(len(buffer), self.position)
        count = len(data)
        memoryview(buffer).cast("B")[:count] = data
        self.position += count
        return count

    def read(self, size: int = -1) -> bytes:
        # Straight to pread: no copy through a buffer for the 1 MiB chunks indexing reads.
        if size < 0:
            return self.readall()
        data = self.handle.pread(size, self.position)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        if not self.closed:
            self.handle.close()
        super().close()
