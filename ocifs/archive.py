"""An image archive read in place: the member table of its outer tar, each member a Blob.

``docker save``, ``podman save`` and ``skopeo copy ... docker-archive:`` / ``oci-archive:`` all
write one tar (gzipped, sometimes, by the user) whose members are the image's documents and
blobs. ``read_members`` reads that outer tar once, with tarscan, for the offset and size of
every member. Over a plain tar only the headers are read: tarscan is handed a stream that
seeks over member data. Over a gzipped tar the stream is inflated once, strictly (CRC,
length, truncation, trailing garbage: gzseek's ``GzipIndexer``), recording seek points on the
way. ``Archive.blob`` then makes a member a Blob: a byte range of the file (``FileBlob``) or of
its decompressed stream (``GzipRangeBlob``, read through gzip cursors started at those
points). Nothing is unpacked, ever.

Member names are normalised (``./`` prefixes, doubled and trailing ``/`` dropped). A name that
is absolute or has a ``..`` component is left out of the table, so it never matches anything.
Symlink and hardlink members are followed inside the archive only (``MAX_LINKS`` deep); a
link that would leave it leads nowhere. Nothing in an archive makes ocifs open a host path.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .blobs import Blob, FileBlob, FileBlobHandle, NotAFile, Progress
from .errors import CompressionError, LayoutError, TarFormatError, show
from .gzseek import DEFAULT_SPACING, GzipCursor, SeekPoints, new_cursor, new_indexer
from .mediatypes import MAGIC_BYTES, Compression, sniff_compression
from .tarscan import FILE, HARDLINK, SYMLINK, Readable, scan_tar

logger = logging.getLogger(__name__)

MAX_LINKS = 16  # symlinks and hardlinks followed from one name
TABLE_READ = 4096  # bytes read after each header of a plain archive: the header, and a little
FILE_CHUNK = 1 << 20  # what the gzip pass reads of the file at a time
SAMPLE_BYTES = 64 << 10  # head and tail of the file, to tell a replaced archive
MAX_IDLE_CURSORS = 4  # per open GzipRangeBlob: sequential readers continue, others restart
SPARSE = "sparse"  # a member's kind when its data is not one byte range (a GNU/PAX sparse file)


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the outer tar, as the table keeps it."""

    kind: str  # tarscan's FILE, DIR, SYMLINK, HARDLINK, ..., or SPARSE
    offset: int  # where its data starts in the tar stream (decompressed, for a gzipped file)
    size: int  # of its data; 0 but for FILE and SPARSE
    link: str | None  # the normalised name a SYMLINK or HARDLINK leads to; None otherwise,
    # and for a link that leaves the archive


@dataclass
class MemberTable:
    """Where every member of an archive is: what ``read_members`` finds, what the cache keeps."""

    compression: Compression  # of the outer file: NONE or GZIP
    members: dict[str, Member]  # by normalised name; a later member of the same name wins
    points: SeekPoints | None  # a gzipped archive's seek points; None for a plain one


@dataclass(frozen=True)
class ArchiveIdentity:
    """What says an archive file is the one a cached member table was read from: where it is
    (real path, device, inode), its size and mtime, and a hash of its head and tail."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    sample: str

    def key(self) -> str:
        """The cache file's name: one per archive file, whatever its content."""
        text = f"ocifs-archive\0{self.path}\0{self.device}\0{self.inode}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def identify(path: Path) -> ArchiveIdentity:
    """The archive's identity now; LayoutError if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            sample = hashlib.sha256(f"{st.st_size}\0".encode())
            sample.update(os.pread(fd, SAMPLE_BYTES, 0))
            sample.update(os.pread(fd, SAMPLE_BYTES, max(0, st.st_size - SAMPLE_BYTES)))
        finally:
            os.close(fd)
    except OSError as error:
        raise LayoutError(f"{path} cannot be read: {error.strerror or error}") from error
    return ArchiveIdentity(
        os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sample.hexdigest()
    )


# --- names -----------------------------------------------------------------------------------


def member_name(name: str) -> str | None:
    """The normalised form of a member name, or None if it is absolute, escapes with ``..``
    or names the archive's root."""
    if name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def symlink_target(name: str, target: str) -> str | None:
    """The normalised name a symlink member ``name`` leads to; None if it leaves the archive
    (an absolute target, or ``..`` above the root)."""
    if target.startswith("/"):
        return None
    joined = posixpath.join(posixpath.dirname(name), target)
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) if parts else None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# --- reading the member table ----------------------------------------------------------------


class _PlainStream:
    """The outer tar as tarscan reads it: a little after each header, member data skipped.

    A read after a skip is TABLE_READ bytes (a header and a little); reads that follow one
    another (small members, a long PAX header) double, up to FILE_CHUNK."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.position = 0
        self.chunk = TABLE_READ
        self.read_bytes = 0  # what was read, rather than skipped (for the log and the tests)

    def read(self, size: int) -> bytes:
        data = os.pread(self.fd, min(size, self.chunk), self.position)
        self.position += len(data)
        self.read_bytes += len(data)
        self.chunk = min(self.chunk * 2, FILE_CHUNK)
        return data

    def skip(self, size: int) -> int:
        skipped = max(0, min(size, self.size - self.position))
        self.position += skipped
        self.chunk = TABLE_READ
        return skipped


class _FileStream:
    """The gzipped file read front to back, for the inflating pass."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.position = 0

    def read(self, size: int = -1, /) -> bytes:
        data = os.pread(self.fd, FILE_CHUNK if size < 0 else size, self.position)
        self.position += len(data)
        return data


def _scan(stream: Readable, path: Path) -> dict[str, Member]:
    members: dict[str, Member] = {}
    for entry in scan_tar(stream):
        raw = _text(entry.path)
        name = member_name(raw)
        if name is None:
            logger.debug("%s: member %s is outside the archive's root: ignored", path, show(raw))
            continue
        link = None
        if entry.kind == SYMLINK:
            link = symlink_target(name, _text(entry.linkname))
        elif entry.kind == HARDLINK:
            link = member_name(_text(entry.linkname))
        kind = entry.kind if entry.sparse is None else SPARSE
        members[name] = Member(kind, entry.data_offset, entry.size, link)
    return members


def _read_plain(path: Path, fd: int, size: int, progress: Progress | None) -> MemberTable:
    stream = _PlainStream(fd, size)
    members = _scan(stream, path)
    logger.info(
        "%s: %d members, %d bytes of headers read of %d",
        path,
        len(members),
        stream.read_bytes,
        size,
    )
    return MemberTable(Compression.NONE, members, None)


def _read_gzip(path: Path, fd: int, size: int, progress: Progress | None) -> MemberTable:
    on_input = None if progress is None else (lambda chunk: progress(len(chunk)))
    indexer = new_indexer(_FileStream(fd), DEFAULT_SPACING, on_input)
    try:
        members = _scan(indexer, path)
        indexer.drain()
        points = indexer.finish()
    finally:
        indexer.close()
    logger.info(
        "%s: %d members, %d bytes inflated to %d, %d seek points",
        path,
        len(members),
        size,
        points.size,
        len(points),
    )
    return MemberTable(Compression.GZIP, members, points)


# How the member table of an archive stored each way is read (the compressions it may have).
# A plain archive's headers are read in milliseconds, and show no progress; a gzipped one is
# inflated whole, and does.
TABLE_READERS: dict[Compression, Callable[[Path, int, int, Progress | None], MemberTable]] = {
    Compression.NONE: _read_plain,
    Compression.GZIP: _read_gzip,
}


def read_members(path: Path, progress: Progress | None = None) -> MemberTable:
    """Read the archive's member table; LayoutError (one line) if it cannot be had.
    ``progress`` is called with the number of archive bytes read, as they are."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise LayoutError(f"{path} cannot be read: {error.strerror or error}") from error
    try:
        size = os.fstat(fd).st_size
        compression = sniff_compression(os.pread(fd, MAGIC_BYTES, 0))
        reader = TABLE_READERS.get(compression)
        if reader is None:
            raise LayoutError(f"{path}: {compression}-compressed archives are not supported")
        return reader(path, fd, size, progress)
    except TarFormatError as error:  # no tar at all, or a damaged or truncated one
        raise LayoutError(f"{path} is not a valid tar archive: {error}") from error
    except CompressionError as error:
        raise LayoutError(f"{path}: {error}") from error
    except OSError as error:
        raise LayoutError(f"{path} cannot be read: {error.strerror or error}") from error
    finally:
        os.close(fd)


# --- members as blobs ------------------------------------------------------------------------


class Archive:
    """An archive file and its member table: members found by name, opened as Blobs."""

    def __init__(self, path: Path, table: MemberTable) -> None:
        self.path = path
        self.table = table

    def find(self, name: str) -> Member | None:
        """The member ``name`` names, links followed inside the archive; None if there is
        none (absent, outside the root, a dangling link, a loop)."""
        key = member_name(name)
        for _ in range(MAX_LINKS + 1):
            if key is None:
                return None
            member = self.table.members.get(key)
            if member is None or member.kind not in (SYMLINK, HARDLINK):
                return member
            key = member.link
        logger.debug("%s: %s: more than %d links", self.path, show(name), MAX_LINKS)
        return None

    def blob(self, name: str) -> Blob | None:
        """The data of member ``name`` as a Blob; None if there is no such member; NotAFile
        if it is there but holds no byte range (a directory, a device, a sparse file)."""
        member = self.find(name)
        if member is None:
            return None
        if member.kind != FILE:
            kind = "a sparse file" if member.kind == SPARSE else f"a {member.kind}"
            raise NotAFile(errno.EINVAL, f"the archive member is {kind}, not a regular file")
        points = self.table.points
        if points is None:
            return FileBlob(self.path, member.size, member.offset)
        return GzipRangeBlob(self.path, points, member.offset, member.size)


@dataclass(frozen=True, eq=False)
class GzipRangeBlob:
    """Bytes ``[offset, offset + size)`` of a gzipped file's decompressed stream: a member of
    a gzipped archive, read through cursors started at the file's seek points."""

    path: Path
    points: SeekPoints
    offset: int
    size: int

    def open(self) -> GzipRangeHandle:
        return GzipRangeHandle(self)

    def describe(self) -> str:
        return f"{self.path} (gzip) bytes {self.offset}-{self.offset + self.size} of its tar"


class GzipRangeHandle:
    """Reads of a GzipRangeBlob. A read takes the idle cursor that stopped closest before it
    (a sequential reader, such as the indexing pass, continues where it stopped) or starts
    one at the seek point before it; cursors run outside the lock, so threads read at once."""

    def __init__(self, blob: GzipRangeBlob) -> None:
        self.blob = blob
        self.file: FileBlobHandle = FileBlob(blob.path, blob.points.compressed_size).open()
        self.lock = threading.Lock()
        self.idle: list[GzipCursor] = []  # most recently used last
        self.closed = False

    def pread(self, size: int, offset: int) -> bytes:
        size = max(0, min(size, self.blob.size - offset))
        if size == 0:
            return b""
        start = self.blob.offset + offset
        try:
            cursor = self._take(start)
            try:
                cursor.skip(start - cursor.position)
                data = cursor.read(size)
            except BaseException:
                cursor.close()  # stopped in the middle of a read: it cannot go on
                raise
        except CompressionError as error:
            raise OSError(errno.EIO, f"{self.blob.path}: {error}") from error
        self._give_back(cursor)
        if len(data) != size:
            raise OSError(errno.EIO, f"{self.blob.path}: gzip stream ends before {start + size}")
        return data

    def _take(self, start: int) -> GzipCursor:
        points = self.blob.points
        index = points.find(start)
        floor = points.uncompressed[index]
        with self.lock:
            best: GzipCursor | None = None
            for cursor in self.idle:
                if floor <= cursor.position <= start and (
                    best is None or cursor.position > best.position
                ):
                    best = cursor
            if best is not None:
                self.idle.remove(best)
                return best
        return new_cursor(self.file, points, index)

    def _give_back(self, cursor: GzipCursor) -> None:
        with self.lock:
            if self.closed:
                cursor.close()
                return
            self.idle.append(cursor)
            if len(self.idle) > MAX_IDLE_CURSORS:
                self.idle.pop(0).close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for cursor in self.idle:
                cursor.close()
            self.idle.clear()
        self.file.close()
