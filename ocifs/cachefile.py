"""The index cache's file container: one checked file, written atomically, read back or refused.

A file is a preamble (magic, format version, header length, header digest), a JSON header
(the file's kind, the machine's byte order, the caller's meta, and a table of sections) and
the sections' bytes back to back, each with its own digest in the table. The digests are
XXH3-128: they find damage (a torn write, a flipped bit, a file cut short), as SHA-256 did at
a thirteenth of the speed; against someone who can write this user's cache neither helps,
as the digests are in the same file. A later mount of the large benchmark image checks 84
MB of cache: 53 ms with SHA-256, 4 ms with XXH3-128. ``read_file``
checks all of it and raises ``CacheMiss`` with the reason on anything short of a perfect
file: missing, not a regular file of this user's (a FIFO, a symlink, a directory or a device
in its place is never opened as a file, nor waited on: ``open_regular``), truncated, damaged,
of another format version, kind or byte order, or of the wrong length. ``write_file`` goes
through a temporary file renamed into place, so a reader sees either the old file or the new
one, never half of one.

The column helpers at the end turn typed arrays, strings and the few values kept as JSON
into sections and back; what the sections mean is the business of whoever writes them.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

logger = logging.getLogger(__name__)

MAGIC = b"OCIFSIDX"
FORMAT_VERSION = 6  # bump whenever the content or meaning of a cached file changes
PREAMBLE = struct.Struct("<8sII16s")  # magic, version, header length, header digest


class CacheMiss(Exception):
    """The cache has no usable file for this key; the message says why (for the log)."""


def write_file(
    path: Path, kind: str, meta: dict[str, Any], sections: dict[str, bytes]
) -> dict[str, tuple[int, int]]:
    """Write atomically: a temporary file in the same directory, flushed, then renamed.
    Returns each section's (offset in the file, length)."""
    table: list[tuple[str, int, int, str]] = []
    placed: dict[str, tuple[int, int]] = {}
    offset = 0
    for name, data in sections.items():
        table.append((name, offset, len(data), xxhash.xxh3_128_hexdigest(data)))
        placed[name] = (offset, len(data))
        offset += len(data)
    header = pack_json({"kind": kind, "byteorder": sys.byteorder, "meta": meta, "sections": table})
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(
                PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), xxhash.xxh3_128_digest(header))
            )
            out.write(header)
            for data in sections.values():
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    base = PREAMBLE.size + len(header)
    return {name: (base + start, length) for name, (start, length) in placed.items()}


def read_file(
    path: Path, kind: str, wanted: set[str] | None, lazy: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The meta and the sections of a cache file, all checked: every section, or those whose
    group (the part of the name before the first dot) is ``wanted``. A section named in
    ``lazy`` is checked now but left on disk, as a ``FileSection``."""
    try:
        with os.fdopen(open_regular(path), "rb") as source:
            preamble = source.read(PREAMBLE.size)
            if len(preamble) != PREAMBLE.size:
                raise CacheMiss(f"{path} is truncated")
            magic, version, header_length, header_hash = PREAMBLE.unpack(preamble)
            if magic != MAGIC:
                raise CacheMiss(f"{path} is not an ocifs index")
            if version != FORMAT_VERSION:
                raise CacheMiss(f"{path} has format version {version}, not {FORMAT_VERSION}")
            header = source.read(header_length)
            if len(header) != header_length or xxhash.xxh3_128_digest(header) != header_hash:
                raise CacheMiss(f"{path} has a damaged header")
            try:
                parsed = json.loads(header)
                if parsed["kind"] != kind or parsed["byteorder"] != sys.byteorder:
                    raise CacheMiss(f"{path} is not a {kind} index for this machine")
                meta = parsed["meta"]
                table = parsed["sections"]
                base = PREAMBLE.size + header_length
                sections: dict[str, Any] = {}
                for name, offset, length, digest in table:
                    if wanted is not None and name.split(".", 1)[0] not in wanted:
                        continue
                    source.seek(base + offset)
                    if name in lazy:  # checked now, read again when needed
                        if hash_stream(source, length) != digest:
                            raise CacheMiss(f"{path} is damaged (section {name})")
                        section = FileSection(path, base + offset, length, os.dup(source.fileno()))
                        sections[name] = section
                        continue
                    data = source.read(length)
                    if len(data) != length:
                        raise CacheMiss(f"{path} is truncated")
                    if xxhash.xxh3_128_hexdigest(data) != digest:
                        raise CacheMiss(f"{path} is damaged (section {name})")
                    sections[name] = data
                # the file must end where the table says: more or less is damage
                end = base + sum(entry[2] for entry in table)
                if os.fstat(source.fileno()).st_size != end:
                    raise CacheMiss(f"{path} has the wrong length")
            except (KeyError, TypeError, ValueError) as error:
                raise CacheMiss(f"{path} has a damaged header: {error}") from error
    except OSError as error:
        raise CacheMiss(f"cannot read {path}: {error.strerror or error}") from error
    if not isinstance(meta, dict):
        raise CacheMiss(f"{path} has a damaged header")
    return meta, sections


def open_regular(path: Path) -> int:
    """A descriptor of ``path`` open for reading; CacheMiss unless it is a regular file that
    this user owns. A FIFO, a device, a directory or a symlink put in the cache's place is
    never opened as one, nor waited on: a FIFO would block open(2) until a writer came."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise CacheMiss(f"{path} does not exist") from None
    if not stat.S_ISREG(before.st_mode):
        raise CacheMiss(f"{path} is not a regular file (it is {file_kind(before.st_mode)})")
    if before.st_uid != os.geteuid():
        raise CacheMiss(f"{path} is owned by uid {before.st_uid}, not by this user")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags)  # replaced since the lstat: it is the fstat that counts
    found = os.fstat(fd)
    if (found.st_dev, found.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise CacheMiss(f"{path} was replaced while it was opened")
    return fd


def file_kind(mode: int) -> str:
    """What a file of ``mode`` is, for a log line."""
    for test, kind in FILE_KINDS:
        if test(mode):
            return kind
    return "of an unknown kind"


FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def hash_stream(source: BinaryIO, length: int) -> str | None:
    """The digest of the next ``length`` bytes, or None if the file ends first."""
    hasher = xxhash.xxh3_128()
    while length:
        chunk = source.read(min(length, 1 << 20))
        if not chunk:
            return None
        hasher.update(chunk)
        length -= len(chunk)
    return hasher.hexdigest()


class FileSection:
    """A section of a cache file left on disk and read by slices when needed.

    The seek-point windows of a big image are tens of MB that a mount touches a little at a
    time; read on demand, they cost the daemon no memory. The file is opened again rather
    than mapped: a cache file damaged under a live mount then fails a read (EIO) instead of
    killing the daemon with SIGBUS. A replaced file is no problem: the open one stays.
    """

    def __init__(self, path: Path, start: int, length: int, fd: int | None = None) -> None:
        """The section at ``start`` of ``path``: of the open file ``fd`` if given (which it
        takes over), else of ``path`` opened again, if it is still a regular file of ours."""
        self.fd = open_regular(path) if fd is None else fd
        self.start = start
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("FileSection slices have no step")
        return os.pread(self.fd, max(0, stop - start), self.start + start)

    def __bytes__(self) -> bytes:
        return self[0 : self.length]

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


# ---- sections from values and back ----


def column(sections: dict[str, bytes], name: str, typecode: str, length: int) -> array.array[Any]:
    """The section ``name`` as an array of ``typecode``; ValueError unless it has ``length``."""
    values = array.array(typecode)
    values.frombytes(sections[name])
    if len(values) != length:
        raise ValueError(f"column {name} has {len(values)} values, not {length}")
    return values


def pack_strings(strings: Iterable[bytes]) -> tuple[bytes, bytes]:
    """Strings back to back, and the end of each as a 'Q' column."""
    blob = bytearray()
    ends = array.array("Q")
    for value in strings:
        blob += value
        ends.append(len(blob))
    return bytes(blob), ends.tobytes()


def unpack_strings(blob: bytes, ends: array.array[Any]) -> list[bytes]:
    """The strings ``pack_strings`` packed; ValueError if an end is out of order or bounds."""
    strings = []
    start = 0
    for end in ends:
        if end < start or end > len(blob):
            raise ValueError("string bounds out of order")
        strings.append(blob[start:end])
        start = end
    return strings


def pack_json(value: Any) -> bytes:
    """Compact JSON, as the header and every JSON section are written."""
    return json.dumps(value, separators=(",", ":")).encode()


# The rare extras of a tar entry or an inode are kept as JSON: xattrs as [key hex, value hex]
# pairs (in the dict's order), a sparse map as [offset, length] pairs.


def xattrs_to_json(xattrs: dict[bytes, bytes]) -> list[list[str]]:
    return [[key.hex(), value.hex()] for key, value in xattrs.items()]


def xattrs_from_json(pairs: Any) -> dict[bytes, bytes]:
    return {bytes.fromhex(key): bytes.fromhex(value) for key, value in pairs}


def sparse_to_json(sparse: tuple[tuple[int, int], ...]) -> list[list[int]]:
    return [list(segment) for segment in sparse]


def sparse_from_json(segments: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(offset), int(length)) for offset, length in segments)
