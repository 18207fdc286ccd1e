"""Parse the headers of an uncompressed tar stream into ``TarEntry`` records (B4, A4-A10).

This is ocifs' own tar reader; CPython's ``tarfile`` is not used because it is too lenient
(it stops silently at a damaged block, applies PAX global headers to later members, decodes
names) and too slow for multi-gigabyte layers. The scanner reads the stream once, front to
back, in large chunks (the caller hashes every byte ``read`` returns, so member data is read
and discarded, never seeked over) and yields one entry per real member with every extension
header folded in:

* ustar, old GNU and pre-POSIX (v7) headers; the checksum is verified (unsigned, or the
  signed sum some old tars wrote); numbers in octal or GNU base-256;
* names from the ustar prefix (POSIX magic only), GNU ``L``/``K`` long names and links, and
  PAX ``path``/``linkpath``; names stay raw bytes;
* PAX ``x`` records: path, linkpath, size, uid, gid, mtime (to the nanosecond, exactly),
  ``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` extended attributes, SCHILY.devmajor/devminor;
  PAX ``g`` global headers are validated and otherwise ignored;
* GNU sparse files: old GNU ``S`` headers and PAX sparse formats 0.0, 0.1 and 1.0;
* GNU dumpdir ``D`` (a directory) and volume labels ``V`` (skipped).

Each typeflag has its handler (``_HANDLERS``, after the scanner) and each PAX keyword its
parser and field (``_PAX_FIELDS``), as in CPython's tarfile. Anything malformed raises
``TarFormatError`` with one line naming the problem, the byte offset of the header and the
entry path when it is known. The end-of-archive zero block must be followed by zero bytes only.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, Protocol
from urllib.parse import unquote_to_bytes

from ocifs.errors import TarFormatError

logger = logging.getLogger(__name__)


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


# Entry kinds. Strings keep the entries readable in tests and logs; they are interned.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHARDEV = "char"
BLOCKDEV = "block"
FIFO = "fifo"

_LINKS = frozenset((HARDLINK, SYMLINK))  # the kinds that keep a link target
_DEVICES = frozenset((CHARDEV, BLOCKDEV))  # the kinds that keep device numbers


@dataclass(slots=True)
class TarEntry:
    """One member of a tar stream, with every extension header already folded in."""

    path: bytes  # the name as the archive gives it (GNU longname / PAX path / ustar prefix)
    kind: str  # one of FILE, DIR, SYMLINK, HARDLINK, CHARDEV, BLOCKDEV, FIFO
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


TAR_BLOCK = 512  # tar's unit: every header is one, member data is padded to whole ones
CHUNK = 1 << 20  # bytes asked of the stream per read
MAX_SIZE = 1 << 62  # larger sizes (and offsets) are taken as damage
MAX_LONGNAME = 64 * 1024  # GNU 'L' / 'K' data
MAX_PAX = 8 * 1024 * 1024  # PAX 'x' / 'g' data
MAX_SPARSE_MAP = 64 * 1024 * 1024  # PAX 1.0 sparse map at the start of the member data
MAX_SPARSE_SEGMENTS = 1 << 21  # old GNU sparse map (header and extension blocks)
MAX_ID = 1 << 63  # uid / gid / device numbers
MAX_MTIME_NS = (1 << 63) - 1  # mtime_ns must fit a signed 64-bit time

# Numeric header fields that error messages name: name -> (start, end) in the header block.
# The checksum (148, 156) has messages of its own.
_FIELDS = {
    "mode": (100, 108),
    "uid": (108, 116),
    "gid": (116, 124),
    "size": (124, 136),
    "mtime": (136, 148),
    "devmajor": (329, 337),
    "devminor": (337, 345),
    "sparse realsize": (483, 495),
}

_ZERO_BLOCK = bytes(TAR_BLOCK)
_OCTAL_DIGITS = b"01234567"
_OCTAL_FIELD_BYTES = b"01234567 \x00"  # all a plain octal field may hold
_DECIMAL_DIGITS = b"0123456789"
_LOW_BYTES = bytes(range(128))
_POSIX_MAGIC = b"ustar\x00"
_MTIME_RE = re.compile(rb"(-?)([0-9]{1,20})(?:\.([0-9]*))?")

_SCHILY_XATTR = b"SCHILY.xattr."
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."
_GNU_SPARSE = b"GNU.sparse."
_GNU_SPARSE_NAME = b"GNU.sparse.name"


def _show(path: bytes) -> str:
    """A path for an error message: one line, quoted, shortened when very long."""
    text = path.decode("utf-8", "backslashreplace")
    if len(text) > 200:
        text = text[:100] + "..." + text[-97:]
    return repr(text)


def _pad(size: int) -> int:
    """``size`` rounded up to a whole number of blocks."""
    return (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


# -- numbers ---------------------------------------------------------------------------------

# mode, uid, gid, size, mtime and checksum: the adjacent numeric fields at bytes 100-156.
_Numbers = tuple[int, int, int, int, int, int]
_NUMBERS_LAYOUT = struct.Struct("8s8s8s12s12s8s")


def _plain_numbers(block: bytes) -> _Numbers | None:
    """The six numbers at bytes 100-156 when all are plain octal (nearly always), else None.

    None sends the caller to ``_number``, field by field, which also decodes base-256 and says
    what is wrong. A field passes here only as spaces, digits, then NULs and spaces, for which
    the two agree (``_number`` reads up to the first NUL; int() refuses inner spaces and NULs).
    """
    if block[100:156].translate(None, _OCTAL_FIELD_BYTES):
        return None
    mode, uid, gid, size, mtime, checksum = _NUMBERS_LAYOUT.unpack_from(block, 100)
    try:
        return (
            int(mode.rstrip(b"\x00 "), 8),
            int(uid.rstrip(b"\x00 "), 8),
            int(gid.rstrip(b"\x00 "), 8),
            int(size.rstrip(b"\x00 "), 8),
            int(mtime.rstrip(b"\x00 "), 8),
            int(checksum.rstrip(b"\x00 "), 8),
        )
    except ValueError:  # an empty field, a NUL or space among the digits
        return None


class _BadNumber(Exception):
    """A numeric header field that is not a number; turned into TarFormatError by the caller."""


def _number(field: bytes) -> int:
    """Decode an octal (NUL/space padded, empty = 0) or GNU base-256 header number."""
    first = field[0] if field else 0
    if first & 0x80:
        if first & 0x40:
            raise _BadNumber("negative base-256")
        # Positive base-256: the bits after the marker bit are the big-endian value.
        return int.from_bytes(field, "big") - (0x80 << (8 * (len(field) - 1)))
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if not digits:
        return 0
    if digits.translate(None, _OCTAL_DIGITS):
        raise _BadNumber("not octal")
    return int(digits, 8)


def _decimal(value: bytes, limit: int) -> int | None:
    """A PAX decimal value, or None when it is not a plain number no larger than ``limit``."""
    if not value or len(value) > 20 or value.translate(None, _DECIMAL_DIGITS):
        return None
    number = int(value)
    return number if number <= limit else None


# -- PAX keywords ----------------------------------------------------------------------------


def _pax_bytes(value: bytes) -> bytes:
    return value


def _pax_size(value: bytes) -> int | None:
    return _decimal(value, MAX_SIZE)


def _pax_id(value: bytes) -> int | None:
    return _decimal(value, MAX_ID)


def _pax_mtime(value: bytes) -> int | None:
    """Seconds with an optional fraction, as exact nanoseconds (no float on the way)."""
    match = _MTIME_RE.fullmatch(value)
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    nanos = int(whole) * 1_000_000_000 + int((fraction or b"")[:9].ljust(9, b"0"))
    return -nanos if sign else nanos


# PAX keywords that set one TarEntry field: key -> (field, parser). A parser returns None for
# a bad value; an empty value unsets the keyword, so the header's field stays. Not here:
# path and GNU.sparse.name (read first, by _Scanner.member_path, so that every message can
# name the entry), and the families SCHILY.xattr.*, LIBARCHIVE.xattr.* and GNU.sparse.*
# (_Scanner.apply_pax). Other keywords (atime, ctime, uname, gname, comment...) are ignored.
_PAX_FIELDS: dict[bytes, tuple[str, Callable[[bytes], int | bytes | None]]] = {
    b"linkpath": ("linkname", _pax_bytes),
    b"size": ("size", _pax_size),
    b"uid": ("uid", _pax_id),
    b"gid": ("gid", _pax_id),
    b"mtime": ("mtime_ns", _pax_mtime),
    b"SCHILY.devmajor": ("devmajor", _pax_id),
    b"SCHILY.devminor": ("devminor", _pax_id),
}


class _Reader:
    """Sequential reader over ``stream`` that keeps one chunk buffered and counts offsets."""

    __slots__ = ("_base", "_buf", "_eof", "_pos", "_stream")

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _more(self) -> bool:
        """Append one chunk of the stream to the buffer; False at the end of the stream."""
        if self._eof:
            return False
        chunk = self._stream.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        if self._pos >= len(self._buf):
            self._base += len(self._buf)
            self._buf = bytes(chunk)
        else:
            self._base += self._pos
            self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes, or fewer at the end of the stream."""
        while len(self._buf) - self._pos < size and self._more():
            pass
        data = self._buf[self._pos : self._pos + size]
        self._pos += len(data)
        return data

    def skip(self, size: int) -> bool:
        """Read past ``size`` bytes; False if the stream ends first."""
        available = len(self._buf) - self._pos
        if size <= available:
            self._pos += size
            return True
        remaining = size - available
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        while remaining:
            chunk = self._stream.read(CHUNK)
            if not chunk:
                self._eof = True
                return False
            if len(chunk) <= remaining:
                remaining -= len(chunk)
                self._base += len(chunk)
            else:
                self._buf = bytes(chunk)
                self._pos = remaining
                remaining = 0
        return True

    def first_nonzero(self) -> int | None:
        """Read to the end of the stream; the offset of its first nonzero byte, if any."""
        while True:
            rest = self._buf[self._pos :]
            stripped = rest.lstrip(b"\x00")
            if stripped:
                return self.offset + len(rest) - len(stripped)
            self._pos = len(self._buf)
            if not self._more():
                return None


class _Pending:
    """Extension headers seen since the last real entry; they apply to the next one only."""

    __slots__ = ("longlink", "longname", "pax", "pax_bytes", "start")

    def __init__(self) -> None:
        self.start: int | None = None
        self.longname: bytes | None = None
        self.longlink: bytes | None = None
        self.pax: list[tuple[bytes, bytes]] = []
        self.pax_bytes = 0  # PAX data seen for this entry, over all its 'x' headers

    def empty(self) -> bool:
        return self.start is None


class _Scanner:
    def __init__(self, stream: Readable) -> None:
        self.reader = _Reader(stream)
        self.pending = _Pending()
        self.last_path: bytes | None = None  # for "after entry ..." in messages

    def fail(self, problem: str, offset: int, path: bytes | None = None) -> NoReturn:
        if path is not None:
            where = f" (entry {_show(path)})"
        elif self.last_path is not None:
            where = f" (after entry {_show(self.last_path)})"
        else:
            where = ""
        raise TarFormatError(f"{problem} at offset {offset}{where}")

    # -- blocks and numbers -------------------------------------------------------------

    def header_number(self, block: bytes, what: str, offset: int, path: bytes | None) -> int:
        """The numeric field ``what`` (a key of _FIELDS) of a header, octal or base-256."""
        start, end = _FIELDS[what]
        try:
            return _number(block[start:end])
        except _BadNumber as error:
            self.fail(f"bad {what} field ({error}) in header", offset, path)

    def check_checksum(self, block: bytes, offset: int, stored: int | None) -> None:
        """``stored``: the checksum field when _plain_numbers could read it, else None."""
        field = block[148:156]
        if stored is None:
            try:
                stored = _number(field)
            except _BadNumber:
                self.fail("bad header checksum field", offset)
            if not field.strip(b"\x00 "):
                self.fail("empty header checksum field", offset)
        unsigned = sum(block) - sum(field) + 8 * 32
        if stored == unsigned:
            return
        high = len(block.translate(None, _LOW_BYTES)) - len(field.translate(None, _LOW_BYTES))
        if stored == unsigned - 256 * high:
            return
        self.fail("bad header checksum", offset)

    def read_data(self, size: int, offset: int, what: str) -> bytes:
        """The data (padded to a block) of an extension header, without its padding."""
        data = self.reader.take(_pad(size))
        if len(data) < _pad(size):
            self.fail(f"truncated in the data of a {what} header", offset)
        return data[:size]

    def skip_data(self, size: int, offset: int, path: bytes | None) -> None:
        if not self.reader.skip(_pad(size)):
            self.fail("truncated in member data", offset, path)

    # -- the scan ---------------------------------------------------------------------

    def scan(self) -> Iterator[TarEntry]:
        reader = self.reader
        handlers = _HANDLERS
        while True:
            offset = reader.offset
            block = reader.take(TAR_BLOCK)
            if len(block) < TAR_BLOCK:
                if block:
                    self.fail("truncated in a header", offset)
                if not self.pending.empty():
                    self.fail("archive ends after an extension header", offset)
                return  # the end of the stream at a header boundary, without end blocks
            if block == _ZERO_BLOCK:
                if not self.pending.empty():
                    self.fail("end of archive right after an extension header", offset)
                garbage = reader.first_nonzero()
                if garbage is not None:
                    self.fail(
                        f"nonzero byte at offset {garbage} after the end-of-archive marker",
                        offset,
                    )
                return
            numbers = _plain_numbers(block)
            if numbers is not None:
                self.check_checksum(block, offset, numbers[5])
                size = numbers[3]
            else:
                self.check_checksum(block, offset, None)
                size = self.header_number(block, "size", offset, None)
            if size > MAX_SIZE:
                self.fail(f"absurd size {size} in header", offset)
            handler = handlers.get(block[156:157], _Scanner.unknown)
            entry = handler(self, block, size, offset, numbers)
            if entry is not None:
                if not self.pending.empty():
                    self.pending = _Pending()
                self.last_path = entry.path
                yield entry

    # -- real entries: the parts every kind shares --------------------------------------

    def member_path(self, block: bytes) -> bytes:
        """The entry's path: PAX path or GNU.sparse.name, GNU long name, or the header's."""
        name = block[0:100].split(b"\x00", 1)[0]
        if block[257:263] == _POSIX_MAGIC:
            prefix = block[345:500].split(b"\x00", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        pending = self.pending
        if pending.longname is not None:
            name = pending.longname
        sparse_name = None
        for key, value in pending.pax:
            if key == b"path" and value:
                name = value
            elif key == _GNU_SPARSE_NAME and value:
                sparse_name = value
        # The real name of a PAX sparse file, whatever the order of the records.
        return name if sparse_name is None else sparse_name

    def member(
        self, block: bytes, size: int, offset: int, numbers: _Numbers | None
    ) -> tuple[TarEntry, list[tuple[bytes, bytes]]]:
        """The entry of a real header with the pending extension headers applied; no data read.

        Its size is still the stored size, for the handler to skip; also returns the
        GNU.sparse.* PAX records. Errors name the offset of the entry's first header (its
        extension headers included), so that is its header_offset.
        """
        pending = self.pending
        if pending.start is not None:
            offset = pending.start
        kind = _KINDS[block[156:157]]
        path = self.member_path(block)
        shown: bytes | None = path or None
        if numbers is not None:
            mode, uid, gid, _, mtime, _ = numbers
        else:
            mode = self.header_number(block, "mode", offset, shown)
            uid = self.header_number(block, "uid", offset, shown)
            gid = self.header_number(block, "gid", offset, shown)
            mtime = self.header_number(block, "mtime", offset, shown)
        linkname = block[157:257].split(b"\x00", 1)[0]
        if pending.longlink is not None:
            linkname = pending.longlink
        devmajor = devminor = 0
        if kind in _DEVICES and block[257:262] == b"ustar":
            devmajor = self.header_number(block, "devmajor", offset, shown)
            devminor = self.header_number(block, "devminor", offset, shown)
        entry = TarEntry(
            path=path,
            kind=kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime_ns=mtime * 1_000_000_000,
            size=size,
            linkname=linkname,
            devmajor=devmajor,
            devminor=devminor,
            xattrs=None,
            data_offset=self.reader.offset,
            sparse=None,
            header_offset=offset,
        )
        sparse_records = self.apply_pax(entry, shown) if pending.pax else []

        if not path:
            self.fail("entry with an empty name", offset)
        if b"\x00" in path:
            self.fail("NUL byte in the entry name", offset, shown)
        if not -MAX_MTIME_NS <= entry.mtime_ns <= MAX_MTIME_NS:
            self.fail("mtime out of range", offset, path)
        if kind in _LINKS:
            if b"\x00" in entry.linkname:
                self.fail("NUL byte in the link target", offset, path)
        else:
            entry.linkname = b""
        if kind not in _DEVICES:
            entry.devmajor = entry.devminor = 0
        return entry, sparse_records

    def apply_pax(self, entry: TarEntry, shown: bytes | None) -> list[tuple[bytes, bytes]]:
        """Set the entry's fields from the pending PAX records, in order (the last one wins).

        Returns the GNU.sparse.* records, which describe the sparse map.
        """
        sparse_records: list[tuple[bytes, bytes]] = []
        offset = entry.header_offset
        for key, value in self.pending.pax:
            rule = _PAX_FIELDS.get(key)
            if rule is not None:
                if value:
                    field, parse = rule
                    parsed = parse(value)
                    if parsed is None:
                        self.fail(f"bad PAX {key.decode()} {value[:40]!r}", offset, shown)
                    setattr(entry, field, parsed)
            elif key.startswith(_SCHILY_XATTR):
                name = key[len(_SCHILY_XATTR) :]
                if not name:
                    self.fail("PAX xattr record without a name", offset, shown)
                if entry.xattrs is None:
                    entry.xattrs = {}
                entry.xattrs[name] = value  # binary and empty values kept as they are
            elif key.startswith(_LIBARCHIVE_XATTR):
                name = unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])
                if not name:
                    self.fail("PAX xattr record without a name", offset, shown)
                try:  # libarchive writes base64 without its '=' padding
                    decoded = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
                except (binascii.Error, ValueError):
                    self.fail(f"bad base64 value for xattr {_show(name)}", offset, shown)
                if entry.xattrs is None:
                    entry.xattrs = {}
                entry.xattrs[name] = decoded
            elif key.startswith(_GNU_SPARSE) and value and key != _GNU_SPARSE_NAME:
                sparse_records.append((key, value))
        return sparse_records

    # -- the handlers of _HANDLERS, one per kind of header --------------------------------
    # Each takes the header block, its size field, its offset and _plain_numbers(block),
    # reads what follows the header, and returns the entry (None for an extension header).

    def regular(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> TarEntry:
        """'0', NUL and '7' (contiguous): a file, maybe PAX sparse, or a pre-POSIX directory."""
        entry, sparse_records = self.member(block, size, offset, numbers)
        if block[257:262] != b"ustar" and entry.path.endswith(b"/"):
            entry.kind = DIR  # pre-POSIX archives mark directories with a trailing slash
        elif sparse_records:
            path = entry.path
            sparse, logical, map_size = self.pax_sparse(
                sparse_records, entry.size, entry.header_offset, path
            )
            entry.data_offset = self.reader.offset
            self.skip_data(entry.size - map_size, entry.header_offset, path)
            entry.size = logical
            entry.sparse = sparse
            return entry
        self.skip_data(entry.size, entry.header_offset, entry.path)
        if entry.kind == DIR:
            entry.size = 0
        return entry

    def header_only(
        self, block: bytes, size: int, offset: int, numbers: _Numbers | None
    ) -> TarEntry:
        """'1'-'6': links, devices, directories, FIFOs: no data, whatever the size field says."""
        entry, _ = self.member(block, size, offset, numbers)
        entry.size = 0
        return entry

    def dumpdir(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> TarEntry:
        """'D': a GNU dumpdir, a directory whose data (a list of its names) is skipped."""
        entry, _ = self.member(block, size, offset, numbers)
        self.skip_data(entry.size, entry.header_offset, entry.path)
        entry.size = 0
        return entry

    def old_sparse(
        self, block: bytes, size: int, offset: int, numbers: _Numbers | None
    ) -> TarEntry:
        """'S': an old GNU sparse file; its map is in the header and extension blocks."""
        entry, _ = self.member(block, size, offset, numbers)
        path = entry.path
        sparse, logical = self.old_gnu_sparse(block, entry.size, entry.header_offset, path)
        entry.data_offset = self.reader.offset
        self.skip_data(entry.size, entry.header_offset, path)
        entry.size = logical
        entry.sparse = sparse
        return entry

    def long_name(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> None:
        """'L': the GNU long name of the next entry."""
        self.pending.longname = self.gnu_long_data(size, offset, "GNU long name")

    def long_link(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> None:
        """'K': the GNU long link target of the next entry."""
        self.pending.longlink = self.gnu_long_data(size, offset, "GNU long link")

    def gnu_long_data(self, size: int, offset: int, what: str) -> bytes:
        if size > MAX_LONGNAME:
            self.fail(f"{what} of {size} bytes (over {MAX_LONGNAME})", offset)
        data = self.read_data(size, offset, what).split(b"\x00", 1)[0]
        if self.pending.start is None:
            self.pending.start = offset
        return data

    def pax_extended(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> None:
        """'x': PAX records for the next entry; several such headers add up."""
        records = self.pax_data(size, offset)
        pending = self.pending
        pending.pax_bytes += size
        if pending.pax_bytes > MAX_PAX:
            self.fail(f"PAX headers of one entry over {MAX_PAX} bytes", offset)
        if pending.start is None:
            pending.start = offset
        pending.pax.extend(records)

    def pax_global(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> None:
        """'g': validated, then ignored; its defaults apply to no entry (A10)."""
        self.pax_data(size, offset)
        logger.debug("ignoring PAX global header at offset %d", offset)

    def volume_label(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> None:
        """'V': a GNU volume label, which is no entry."""
        logger.debug("skipping GNU volume label at offset %d", offset)
        self.skip_data(size, offset, None)

    def unknown(self, block: bytes, size: int, offset: int, numbers: _Numbers | None) -> NoReturn:
        """Any other typeflag (GNU multi-volume 'M', vendor types...): an error."""
        if self.pending.start is not None:
            offset = self.pending.start
        path = self.member_path(block)
        self.fail(f"unsupported typeflag {block[156:157]!r}", offset, path or None)

    # -- PAX --------------------------------------------------------------------------

    def pax_data(self, size: int, offset: int) -> list[tuple[bytes, bytes]]:
        """The records of a PAX 'x' or 'g' header, read from its data."""
        if size > MAX_PAX:
            self.fail(f"PAX header of {size} bytes (over {MAX_PAX})", offset)
        return self.pax_records(self.read_data(size, offset, "PAX"), offset)

    def pax_records(self, data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
        """Split PAX extended header data into (key, value) records, strictly, in order."""
        records: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(data)
        while pos < end:
            space = data.find(b" ", pos, min(end, pos + 21))
            length_text = data[pos:space] if space > pos else b""
            length = _decimal(length_text, end - pos)
            if length is None or length < space - pos + 4:
                self.fail(f"malformed PAX record length at byte {pos} of the PAX header", offset)
            record_end = pos + length
            if data[record_end - 1] != 0x0A:
                self.fail(f"PAX record at byte {pos} does not end in a newline", offset)
            equals = data.find(b"=", space + 1, record_end - 1)
            if equals <= space + 1:
                self.fail(f"malformed PAX record at byte {pos} (no key=value)", offset)
            records.append((data[space + 1 : equals], data[equals + 1 : record_end - 1]))
            pos = record_end
        return records

    # -- sparse files -----------------------------------------------------------------

    def check_map(
        self,
        segments: list[tuple[int, int]],
        logical: int,
        stored: int,
        offset: int,
        path: bytes,
    ) -> tuple[tuple[int, int], ...]:
        """Validate a sparse map; drop its zero-length segments."""
        if logical > MAX_SIZE:
            self.fail(f"absurd sparse file size {logical}", offset, path)
        position = 0
        total = 0
        kept: list[tuple[int, int]] = []
        for start, length in segments:
            if start < position:
                self.fail("sparse map segments overlap or are out of order", offset, path)
            if start + length > logical:
                self.fail("sparse map segment beyond the end of the file", offset, path)
            position = start + length
            total += length
            if length:
                kept.append((start, length))
        if total != stored:
            self.fail(f"sparse map covers {total} bytes but {stored} are stored", offset, path)
        return tuple(kept)

    def old_gnu_sparse(
        self, block: bytes, size: int, offset: int, path: bytes
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        """The map of an old GNU 'S' header and its extension blocks, and the real size."""
        logical = self.header_number(block, "sparse realsize", offset, path)
        segments: list[tuple[int, int]] = []
        area, count, extended = block[386:482], 4, block[482]
        while True:
            for i in range(count):
                entry = area[i * 24 : i * 24 + 24]
                if entry[12] == 0:
                    break  # an entry whose numbytes field is empty ends the map
                if len(segments) >= MAX_SPARSE_SEGMENTS:
                    self.fail(f"sparse map of over {MAX_SPARSE_SEGMENTS} segments", offset, path)
                try:
                    segments.append((_number(entry[:12]), _number(entry[12:])))
                except _BadNumber as error:
                    self.fail(f"bad sparse map entry ({error})", offset, path)
            if not extended:
                break
            ext_offset = self.reader.offset
            ext = self.reader.take(TAR_BLOCK)
            if len(ext) < TAR_BLOCK:
                self.fail("truncated in a sparse extension header", ext_offset, path)
            area, count, extended = ext[:504], 21, ext[504]
        return self.check_map(segments, logical, size, offset, path), logical

    def pax_sparse(
        self, keys: list[tuple[bytes, bytes]], size: int, offset: int, path: bytes
    ) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """The map of a PAX sparse file (0.0, 0.1, 1.0): (map, real size, bytes of 1.0 map)."""
        fields: dict[bytes, bytes] = {}
        offsets: list[int] = []
        lengths: list[int] = []
        for key, value in keys:
            if key == b"GNU.sparse.offset" or key == b"GNU.sparse.numbytes":
                number = _decimal(value, MAX_SIZE)
                if number is None:
                    self.fail(f"bad PAX {key.decode()} {value[:40]!r}", offset, path)
                if key == b"GNU.sparse.offset":
                    if len(offsets) != len(lengths):
                        self.fail("GNU.sparse.offset without numbytes", offset, path)
                    offsets.append(number)
                else:
                    if len(lengths) + 1 != len(offsets):
                        self.fail("GNU.sparse.numbytes without offset", offset, path)
                    lengths.append(number)
            else:
                fields[key] = value
        if len(offsets) != len(lengths):
            self.fail("GNU.sparse.offset without numbytes", offset, path)

        def number_field(key: bytes) -> int | None:
            value = fields.get(key)
            if value is None:
                return None
            number = _decimal(value, MAX_SIZE)
            if number is None:
                self.fail(f"bad PAX {key.decode()} {value[:40]!r}", offset, path)
            return number

        major = number_field(b"GNU.sparse.major")
        minor = number_field(b"GNU.sparse.minor")
        map_size = 0
        if major is not None or minor is not None:
            if (major, minor) != (1, 0):
                self.fail(f"unsupported GNU sparse format {major}.{minor}", offset, path)
            logical = number_field(b"GNU.sparse.realsize")
            segments, map_size = self.sparse_map_1(size, offset, path)
        else:
            logical = number_field(b"GNU.sparse.size")
            if logical is None:
                logical = number_field(b"GNU.sparse.realsize")
            text = fields.get(b"GNU.sparse.map")
            if text is not None:
                numbers = text.split(b",") if text else []
                values = [_decimal(n, MAX_SIZE) for n in numbers]
                if len(values) % 2:
                    self.fail("GNU.sparse.map has an odd count of numbers", offset, path)
                checked: list[int] = []
                for n in values:
                    if n is None:
                        self.fail("bad number in GNU.sparse.map", offset, path)
                    checked.append(n)
                segments = list(zip(checked[::2], checked[1::2], strict=True))
            elif offsets:
                segments = list(zip(offsets, lengths, strict=True))
            else:
                # GNU.sparse.* keys that describe no map: not a sparse file after all.
                self.fail("GNU sparse headers without a sparse map", offset, path)
            blocks = number_field(b"GNU.sparse.numblocks")
            if blocks is not None and blocks != len(segments):
                self.fail(
                    f"GNU.sparse.numblocks is {blocks} but the map has {len(segments)}",
                    offset,
                    path,
                )
        if logical is None:
            self.fail("sparse file without its real size", offset, path)
        stored = size - map_size
        return self.check_map(segments, logical, stored, offset, path), logical, map_size

    def sparse_map_1(
        self, size: int, offset: int, path: bytes
    ) -> tuple[list[tuple[int, int]], int]:
        """Read the PAX 1.0 sparse map at the start of the member data: (map, its size)."""
        reader = self.reader
        data = bytearray()
        lines = 0
        needed: int | None = None
        while needed is None or lines < needed:
            if len(data) >= min(size, MAX_SPARSE_MAP):
                self.fail("sparse map runs past the member data", offset, path)
            block_offset = reader.offset
            block = reader.take(TAR_BLOCK)
            if len(block) < TAR_BLOCK:
                self.fail("truncated in the sparse map", block_offset, path)
            data += block
            lines += block.count(b"\n")
            if needed is None and lines:
                count = _decimal(bytes(data[: data.index(b"\n")]), size)
                if count is None:
                    self.fail("bad entry count in the sparse map", offset, path)
                needed = 1 + 2 * count
        numbers: list[int] = []
        for line in bytes(data).split(b"\n", needed)[1:needed]:
            number = _decimal(line, MAX_SIZE)
            if number is None:
                self.fail("bad number in the sparse map", offset, path)
            numbers.append(number)
        return list(zip(numbers[::2], numbers[1::2], strict=True)), len(data)


# A handler for every typeflag (the header's byte 156), as CPython's tarfile dispatches them.
_HANDLERS: dict[bytes, Callable[[_Scanner, bytes, int, int, _Numbers | None], TarEntry | None]]
_HANDLERS = {
    b"0": _Scanner.regular,
    b"\x00": _Scanner.regular,  # pre-POSIX regular file
    b"7": _Scanner.regular,  # contiguous file: a regular file to all but its writer
    b"1": _Scanner.header_only,  # hard link
    b"2": _Scanner.header_only,  # symbolic link
    b"3": _Scanner.header_only,  # character device
    b"4": _Scanner.header_only,  # block device
    b"5": _Scanner.header_only,  # directory
    b"6": _Scanner.header_only,  # FIFO
    b"D": _Scanner.dumpdir,
    b"S": _Scanner.old_sparse,
    b"L": _Scanner.long_name,
    b"K": _Scanner.long_link,
    b"x": _Scanner.pax_extended,
    b"g": _Scanner.pax_global,
    b"V": _Scanner.volume_label,
}
# The kind of entry each real entry's typeflag makes ('0', NUL and '7' may still turn out to
# be pre-POSIX directories).
_KINDS = {
    b"0": FILE,
    b"\x00": FILE,
    b"7": FILE,
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHARDEV,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
    b"D": DIR,
    b"S": FILE,
}


def scan_tar(stream: Readable) -> Iterator[TarEntry]:
    """Yield the entries of the tar stream read sequentially from ``stream``.

    Every byte of the stream is read exactly once, in order, up to its end (the end-of-archive
    marker must be followed by zero bytes only). Raises ``TarFormatError`` for malformed input.
    """
    yield from _Scanner(stream).scan()
