"""Parse the headers of an uncompressed tar stream into ``TarEntry`` records (B4, A4-A10, T1-T3).

This is ocifs' own tar reader; CPython's ``tarfile`` is not used because it reads differently
from the container engines (it stops silently at a damaged block, applies PAX global headers
to later members, decodes names) and is too slow for multi-gigabyte layers. The engines
(containerd, Docker, podman, umoci) all read layers with Go's ``archive/tar``, so where a
stream is odd this reader does what Go's does, unless that is unsafe (the P, W7 and H3 lines
of the checklist stay errors); the README's "Tar streams" section lists every such case. The
scanner reads the stream once, front to back, in large chunks (the caller hashes every byte
``read`` returns, so member data is read and discarded, never seeked over, and the stream is
read to its very end, past the end-of-archive blocks; only a ``Skippable`` stream, an archive
file whose members are not hashed, is asked to skip member data) and yields one entry per
real member with every extension header folded in:

* V7, ustar, star and GNU headers told apart as Go does (magic, version, star's trailer); the
  checksum is verified (unsigned, or the signed sum some old tars wrote); every numeric field
  of every header is checked, octal (NUL and space padded either side) or GNU base-256;
* names from the ustar or star prefix, GNU ``L``/``K`` long names and links (which win over
  PAX ``path``/``linkpath``, as in Go), and PAX ``path``/``linkpath``; names stay raw bytes;
* PAX ``x`` records (the last ``x`` header before an entry is the one that counts): path,
  linkpath, size, uid, gid, mtime (to the nanosecond, exactly, clamped to what a 64-bit
  nanosecond time can carry: T3), ``SCHILY.xattr.*``; atime, ctime, uname and gname are
  checked and otherwise ignored; PAX ``g`` global headers are checked, end any pending
  extension headers, and apply to nothing (A10);
* GNU sparse files: old GNU ``S`` headers and PAX sparse formats 0.0, 0.1 and 1.0, recognised
  by the same keys and versions as Go (an unknown version is a plain file).

Each entry is then held to what Linux can make of it (``linuxlimits``: device numbers, paths
and link targets within PATH_MAX, xattrs setxattr(2) would take: T4-T6), as the engines'
system calls would hold it; xattrs the engines end up without (ENOTSUP, or an ACL with no
entries, which setxattr takes as a removal) are left out too.

The stream may end at a header boundary, right after a member's data or inside its padding,
after one zero block, or after two zero blocks and anything at all (T1, T2). Each typeflag has
its handler (``_HANDLERS``, after the scanner) and each PAX keyword its parser and field
(``_PAX_FIELDS``). Anything malformed raises ``TarFormatError`` with one line naming the
problem, the byte offset of the header and the entry path when it is known.
"""

from __future__ import annotations

import logging
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, Protocol

from ocifs import linuxlimits
from ocifs.errors import TarFormatError, show

logger = logging.getLogger(__name__)


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Skippable(Readable, Protocol):
    """A stream that can also pass over member data without reading it (an archive file)."""

    def skip(self, size: int, /) -> int:
        """Advance by up to ``size`` bytes; returns how many (fewer only at the end)."""
        ...


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
# The file type the kernel sees for each kind (xattr rules depend on it); a hardlink's is its
# target's, unknown here.
_FILE_TYPES = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    HARDLINK: 0,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}


@dataclass(slots=True)
class TarEntry:
    """One member of a tar stream, with every extension header already folded in."""

    path: bytes  # the name as the archive gives it (GNU longname / PAX path / ustar prefix)
    kind: str  # one of FILE, DIR, SYMLINK, HARDLINK, CHARDEV, BLOCKDEV, FIFO
    mode: int  # permission bits only: mode & 0o7777
    uid: int
    gid: int
    mtime_ns: int  # nanoseconds since the epoch, clamped to MIN/MAX_MTIME_NS
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
MAX_SPECIAL = 1 << 20  # data of one PAX 'x'/'g' or GNU 'L'/'K' header: Go's limit too
MAX_SPARSE_MAP = 64 * 1024 * 1024  # PAX 1.0 sparse map at the start of the member data
MAX_SPARSE_SEGMENTS = 1 << 21  # old GNU sparse map (header and extension blocks)
INT64_MAX = (1 << 63) - 1  # what Go's parsers accept; uid, gid and device numbers too
MIN_MTIME_NS = -(1 << 63)  # mtimes are clamped to what st_mtime_ns (int64) can carry (T3)
MAX_MTIME_NS = (1 << 63) - 1
_LONG_PATH = linuxlimits.PATH_MAX - 1  # paths and link targets this long are measured

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
    "star atime": (476, 488),
    "star ctime": (488, 500),
    "sparse realsize": (483, 495),
}

# Header formats, told apart as Go's archive/tar does (block.getFormat).
V7, USTAR, STAR, GNU = "v7", "ustar", "star", "gnu"

_ZERO_BLOCK = bytes(TAR_BLOCK)
_OCTAL_DIGITS = b"01234567"
_OCTAL_FIELD_BYTES = b"01234567 \x00"  # all a plain octal field may hold
_DECIMAL_DIGITS = b"0123456789"
_LOW_BYTES = bytes(range(128))

_USTAR_MAGIC = b"ustar\x00"
_GNU_MAGIC = b"ustar  \x00"  # magic "ustar " and version " \0"
_STAR_TRAILER = b"tar\x00"

# devmajor and devminor of nearly every header that is no device, as writers leave them.
_NO_DEVICES = frozenset((bytes(16), b"0000000\x00" * 2, b"0000000 " * 2))

_SCHILY_XATTR = b"SCHILY.xattr."
_GNU_SPARSE_NAME = b"GNU.sparse.name"
_GNU_SPARSE_MAP = b"GNU.sparse.map"
_GNU_SPARSE_OFFSET = b"GNU.sparse.offset"
_GNU_SPARSE_NUMBYTES = b"GNU.sparse.numbytes"
# PAX keys whose value may hold no NUL (Go's validPAXRecord; other values are binary).
_NO_NUL_VALUES = frozenset((b"path", b"linkpath", b"uname", b"gname"))


def _byte_sum(block: bytes) -> int:
    """The sum of a 512-byte header's bytes, as ``sum(block)``, a fifth of its time (the
    scanner's most frequent call): Adler-32's first half is 1 plus the sum of the bytes
    modulo 65521, exact for 256 bytes or fewer (at most 65,280)."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _pad(size: int) -> int:
    """``size`` rounded up to a whole number of blocks."""
    return (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


def _format(block: bytes) -> str:
    """The header's format: star and ustar by magic (and star's trailer), GNU by magic and
    version, anything else is V7 (Go's getFormat, once the checksum is good)."""
    magic = block[257:263]
    if magic == _USTAR_MAGIC:
        return STAR if block[508:512] == _STAR_TRAILER else USTAR
    if block[257:265] == _GNU_MAGIC:
        return GNU
    return V7


def clamp_mtime_ns(nanoseconds: int) -> int:
    """An mtime as the nearest value a 64-bit nanosecond time can carry (T3)."""
    if nanoseconds < MIN_MTIME_NS:
        return MIN_MTIME_NS
    return min(nanoseconds, MAX_MTIME_NS)


# -- numbers ---------------------------------------------------------------------------------

# mode, uid, gid, size, mtime and checksum: the adjacent numeric fields at bytes 100-156.
_Numbers = tuple[int, int, int, int, int, int]
_NUMBERS_LAYOUT = struct.Struct("8s8s8s12s12s8s")
# What every header's numeric fields say: mode, uid, gid, size, mtime (seconds), devmajor,
# devminor (0 for V7 headers, which have no such fields).
_Fields = tuple[int, int, int, int, int, int, int]


def _plain_numbers(block: bytes) -> _Numbers | None:
    """The six numbers at bytes 100-156 when all are plain octal (nearly always), else None.

    None sends the caller to ``_number``, field by field, which also decodes base-256 and says
    what is wrong. A field passes here only as spaces, digits, then NULs and spaces, for which
    the two agree (int() strips the leading spaces and refuses inner spaces and NULs).
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


def _plain_devices(block: bytes) -> tuple[int, int] | None:
    """devmajor and devminor when both are plain octal, else None (as _plain_numbers)."""
    if block[329:345].translate(None, _OCTAL_FIELD_BYTES):
        return None
    try:
        major = int(block[329:337].rstrip(b"\x00 ") or b"0", 8)
        return major, int(block[337:345].rstrip(b"\x00 ") or b"0", 8)
    except ValueError:
        return None


class _BadNumber(Exception):
    """A numeric header field that is not a number; turned into TarFormatError by the caller."""


def _octal(field: bytes) -> int:
    """An octal header field as Go reads one: NULs and spaces trimmed from both ends, then
    the digits up to the first NUL; empty is 0."""
    digits = field.strip(b" \x00").split(b"\x00", 1)[0]
    if not digits:
        return 0
    if digits.translate(None, _OCTAL_DIGITS):
        raise _BadNumber("not octal")
    return int(digits, 8)


def _number(field: bytes) -> int:
    """An octal or GNU base-256 header number; base-256 is two's complement, so it may be
    negative (GNU tar writes mtimes before 1970 that way). Not range-checked here."""
    if field and field[0] & 0x80:
        bits = 8 * len(field) - 1  # every bit but the marker
        value = int.from_bytes(field, "big") & ((1 << bits) - 1)
        return value - (1 << bits) if field[0] & 0x40 else value
    return _octal(field)


def _go_int(text: bytes) -> int | None:
    """A decimal as Go's strconv.ParseInt(text, 10, 64) reads one (an optional sign, digits,
    within int64), or None."""
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if not digits or digits.translate(None, _DECIMAL_DIGITS):
        return None
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > 19:  # also keeps int() away from its limit on huge digit strings
        return None
    value = -int(digits) if text[:1] == b"-" else int(digits)
    return value if -INT64_MAX - 1 <= value <= INT64_MAX else None


def _pax_time_ns(value: bytes) -> int | None:
    """A PAX time (seconds, an optional sign, an optional fraction) as exact nanoseconds,
    clamped to int64 (T3); None if it is not one. Go reads the same texts, but refuses the
    seconds that overflow int64 instead of clamping them."""
    seconds, _, fraction = value.partition(b".")
    negative = seconds[:1] == b"-"
    digits = seconds[1:] if seconds[:1] in (b"+", b"-") else seconds
    if not digits or digits.translate(None, _DECIMAL_DIGITS):
        return None
    if fraction.translate(None, _DECIMAL_DIGITS):
        return None
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > 19:  # far outside what int64 nanoseconds can carry
        return MIN_MTIME_NS if negative else MAX_MTIME_NS
    nanos = int(digits) * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    return clamp_mtime_ns(-nanos if negative else nanos)


# -- PAX keywords ----------------------------------------------------------------------------


def _pax_bytes(value: bytes) -> bytes:
    return value


def _pax_id(value: bytes) -> int | None:
    number = _go_int(value)
    # Go reads a negative id, and chown(2) then takes -1 as "leave it": not an owner.
    return number if number is not None and number >= 0 else None


# PAX keywords that set one TarEntry field: key -> (field, parser), as Go's mergePAX reads
# them. A parser returns None for a bad value; an empty value unsets the keyword, so the
# header's field stays. A field of None checks the value and keeps nothing (atime, ctime).
# Not here: path and the GNU.sparse.* keys (read by _Scanner.member_path and the sparse
# code), and SCHILY.xattr.* (_Scanner.apply_pax). Other keywords are ignored, as by Go, among
# them SCHILY.devmajor/devminor and LIBARCHIVE.xattr.* (libarchive writes SCHILY.xattr.* too).
_PAX_FIELDS: dict[bytes, tuple[str | None, Callable[[bytes], int | bytes | None]]] = {
    b"linkpath": ("linkname", _pax_bytes),
    b"size": ("size", _go_int),
    b"uid": ("uid", _pax_id),
    b"gid": ("gid", _pax_id),
    b"mtime": ("mtime_ns", _pax_time_ns),
    b"atime": (None, _pax_time_ns),
    b"ctime": (None, _pax_time_ns),
}


class _Reader:
    """Sequential reader over ``stream`` that keeps one chunk buffered and counts offsets."""

    __slots__ = ("_base", "_buf", "_eof", "_pos", "_skip", "_stream")

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        # A layer's stream is hashed, so it is read whole; an archive's is skipped over.
        self._skip: Callable[[int], int] | None = getattr(stream, "skip", None)

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
        if self._skip is not None:
            skipped = self._skip(remaining)
            self._base += skipped
            self._eof = skipped < remaining
            return not self._eof
        while remaining:
            chunk = self._stream.read(CHUNK) if not self._eof else b""
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

    def rest(self) -> tuple[int, int | None]:
        """Read to the end of the stream: how many bytes were left, and the offset of the first
        nonzero one (None if all were zero)."""
        start = self.offset
        first: int | None = None
        while True:
            if first is None:
                rest = self._buf[self._pos :]
                stripped = rest.lstrip(b"\x00")
                if stripped:
                    first = self.offset + len(rest) - len(stripped)
            self._pos = len(self._buf)
            if not self._more():
                return self.offset - start, first


class _Pending:
    """Extension headers seen since the last real entry; they apply to the next one only."""

    __slots__ = ("longlink", "longname", "pax", "start")

    def __init__(self) -> None:
        self.start: int | None = None
        self.longname: bytes | None = None
        self.longlink: bytes | None = None
        self.pax: list[tuple[bytes, bytes]] = []  # the records of the last 'x' header

    def empty(self) -> bool:
        return self.start is None


class _Scanner:
    def __init__(self, stream: Readable) -> None:
        self.reader = _Reader(stream)
        self.pending = _Pending()
        self.last_path: bytes | None = None  # for "after entry ..." in messages

    def fail(self, problem: str, offset: int, path: bytes | None = None) -> NoReturn:
        if path is not None:
            where = f" (entry {show(path)})"
        elif self.last_path is not None:
            where = f" (after entry {show(self.last_path)})"
        else:
            where = ""
        raise TarFormatError(f"{problem} at offset {offset}{where}")

    # -- blocks and numbers -------------------------------------------------------------

    def header_number(self, block: bytes, what: str, offset: int) -> int:
        """The numeric field ``what`` (a key of _FIELDS) of a header, octal or base-256; it
        must fit int64 (Go's limit), but for the mtime, which is clamped later (T3)."""
        start, end = _FIELDS[what]
        try:
            value = _number(block[start:end])
        except _BadNumber as error:
            self.fail_in_header(block, f"bad {what} field ({error}) in header", offset)
        if what != "mtime" and not -INT64_MAX - 1 <= value <= INT64_MAX:
            self.fail_in_header(block, f"bad {what} field (over 64 bits) in header", offset)
        return value

    def fail_in_header(self, block: bytes, problem: str, offset: int) -> NoReturn:
        """Fail on a header; for a real entry, name it and the offset where it starts (its
        first extension header)."""
        if block[156:157] in _KINDS:
            if self.pending.start is not None:
                offset = self.pending.start
            self.fail(problem, offset, self.member_path(block) or None)
        self.fail(problem, offset)

    def check_checksum(self, block: bytes, offset: int, stored: int | None) -> None:
        """``stored``: the checksum field when _plain_numbers could read it, else None."""
        field = block[148:156]
        if stored is None:
            try:  # octal only, as in Go: a base-256 checksum is no checksum
                stored = _octal(field)
            except _BadNumber:
                self.fail("bad header checksum field", offset)
            if not field.strip(b"\x00 "):
                self.fail("empty header checksum field", offset)
        unsigned = _byte_sum(block) - sum(field) + 8 * 32
        if stored == unsigned:
            return
        high = len(block.translate(None, _LOW_BYTES)) - len(field.translate(None, _LOW_BYTES))
        if stored == unsigned - 256 * high:
            return
        self.fail("bad header checksum", offset)

    def header_fields(self, block: bytes, offset: int, fmt: str) -> _Fields:
        """Check the checksum and every numeric field of a header, as Go's readHeader does for
        every header, extension headers included; the fields' values, not range-checked."""
        numbers = _plain_numbers(block)
        if numbers is not None:
            self.check_checksum(block, offset, numbers[5])
            mode, uid, gid, size, mtime, _ = numbers
        else:
            self.check_checksum(block, offset, None)
            mode = self.header_number(block, "mode", offset)
            uid = self.header_number(block, "uid", offset)
            gid = self.header_number(block, "gid", offset)
            size = self.header_number(block, "size", offset)
            mtime = self.header_number(block, "mtime", offset)
        if fmt == V7:  # no device fields
            return mode, uid, gid, size, mtime, 0, 0
        devices = (0, 0) if block[329:345] in _NO_DEVICES else _plain_devices(block)
        if devices is not None:
            devmajor, devminor = devices
        else:
            devmajor = self.header_number(block, "devmajor", offset)
            devminor = self.header_number(block, "devminor", offset)
        if fmt == STAR:  # star keeps atime and ctime after its shorter prefix
            self.header_number(block, "star atime", offset)
            self.header_number(block, "star ctime", offset)
        return mode, uid, gid, size, mtime, devmajor, devminor

    def data_size(self, size: int, offset: int, path: bytes | None) -> int:
        """The size of a member's data, refused when no stream could hold it."""
        if size < 0:
            self.fail(f"negative size {size} in header", offset, path)
        if size > MAX_SIZE:
            self.fail(f"absurd size {size} in header", offset, path)
        return size

    def read_data(self, size: int, offset: int, what: str) -> bytes:
        """The data of an extension header; its padding may be cut short by the end (T1)."""
        if size < 0:
            self.fail(f"negative size {size} in a {what} header", offset)
        data = self.reader.take(size)
        if len(data) < size:
            self.fail(f"truncated in the data of a {what} header", offset)
        self.reader.skip(_pad(size) - size)
        return data

    def skip_data(self, size: int, offset: int, path: bytes | None) -> None:
        """Read past a member's data, then its padding: the stream may end anywhere in the
        padding, or right after the data, without end blocks (T1, as ``umoci insert`` writes
        layers); Go's reader takes that as the end of the archive, and so does this one."""
        if not self.reader.skip(size):
            self.fail("truncated in member data", offset, path)
        self.reader.skip(_pad(size) - size)

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
                self.end(offset)  # at a header boundary, without end blocks (T1)
                return
            if block == _ZERO_BLOCK:
                self.end_blocks(offset)
                return
            fmt = _format(block)
            fields = self.header_fields(block, offset, fmt)
            handler = handlers.get(block[156:157], _Scanner.unknown)
            entry = handler(self, block, offset, fields, fmt)
            if entry is not None:
                if (  # what linux_limits could refuse; most entries are none of these
                    entry.xattrs is not None
                    or len(entry.path) >= _LONG_PATH
                    or len(entry.linkname) >= _LONG_PATH
                    or entry.kind in _DEVICES
                ):
                    self.linux_limits(entry)
                if not self.pending.empty():
                    self.pending = _Pending()
                self.last_path = entry.path
                yield entry

    def linux_limits(self, entry: TarEntry) -> None:
        """Refuse what Linux cannot make of the entry, as the engines' system calls would
        (T4-T6: ``linuxlimits``); leave out the xattrs they end up without, with a warning;
        the access ACL as their chmod to the entry's mode after setxattr leaves it."""
        offset, path = entry.header_offset, entry.path
        problem = linuxlimits.path_problem(path, "path")
        if problem is None and entry.kind == HARDLINK:
            problem = linuxlimits.path_problem(entry.linkname, "hardlink target")
        if problem is None and entry.kind == SYMLINK:
            problem = linuxlimits.symlink_target_problem(entry.linkname)
        if problem is None and entry.kind in _DEVICES:
            problem = linuxlimits.device_problem(entry.devmajor, entry.devminor)
        if problem is not None:
            self.fail(problem, offset, path)
        if entry.xattrs is None:
            return
        for name, reason, refused in linuxlimits.xattr_problems(
            entry.xattrs, _FILE_TYPES[entry.kind]
        ):
            if refused:
                self.fail(f"xattr {show(name)}: {reason}", offset, path)
            logger.warning(
                "tar stream: entry %s at offset %d: xattr %s left out: %s;"
                " container engines end up without it too",
                show(path),
                offset,
                show(name),
                reason,
            )
            del entry.xattrs[name]
        access = entry.xattrs.get(linuxlimits.ACL_ACCESS)
        if access is not None and entry.kind != SYMLINK:
            after = linuxlimits.access_acl_after_chmod(access, entry.mode)
            if after is None:
                del entry.xattrs[linuxlimits.ACL_ACCESS]
            else:
                entry.xattrs[linuxlimits.ACL_ACCESS] = after
        if not entry.xattrs:
            entry.xattrs = None

    def end_blocks(self, offset: int) -> None:
        """The first zero block at ``offset``: one more and anything after (T2), or the end."""
        second = self.reader.take(TAR_BLOCK)
        if not second:
            self.end(offset)  # one zero block, then the end: Go takes it as the end too
            return
        if len(second) < TAR_BLOCK:
            self.fail("truncated in the end-of-archive marker", offset + TAR_BLOCK)
        if second != _ZERO_BLOCK:
            self.fail(f"non-zero block at offset {offset + TAR_BLOCK} after the zero block", offset)
        self.end(offset)
        left, nonzero = self.reader.rest()
        if nonzero is not None:  # the engines ignore it too; the diff_id covers it
            logger.info(
                "ignoring %d bytes after the end-of-archive marker at offset %d "
                "(the first nonzero one at offset %d)",
                left,
                offset,
                nonzero,
            )

    def end(self, offset: int) -> None:
        """The archive ends at ``offset``; extension headers that no entry follows are dropped,
        as Go drops them, and said so."""
        if not self.pending.empty():
            logger.warning(
                "tar stream: the extension headers at offset %s describe no entry (the archive "
                "ends at offset %d); ignored",
                self.pending.start,
                offset,
            )

    # -- real entries: the parts every kind shares --------------------------------------

    def member_path(self, block: bytes) -> bytes:
        """The entry's path: the header's name (with the prefix its format has), then the PAX
        path, then the GNU long name, each when not empty (in that order, as in Go)."""
        pending = self.pending
        if pending.longname:
            return pending.longname
        name = None
        for key, value in pending.pax:
            if key == b"path" and value:
                name = value
        if name is not None:
            return name
        name = block[0:100].split(b"\x00", 1)[0]
        prefix = _prefix(block)
        return prefix + b"/" + name if prefix else name

    def member(
        self, block: bytes, offset: int, fields: _Fields, fmt: str
    ) -> tuple[TarEntry, dict[bytes, bytes] | None]:
        """The entry of a real header with the pending extension headers applied; no data read.

        Its size is still the stored size, for the handler to skip; also returns the GNU.sparse.*
        PAX records when they make it a PAX sparse file as Go recognises one (None otherwise).
        Errors name the offset of the entry's first header (its extension headers included),
        so that is its header_offset.
        """
        pending = self.pending
        if pending.start is not None:
            offset = pending.start
        kind = _KINDS[block[156:157]]
        path = self.member_path(block)
        shown: bytes | None = path or None
        mode, uid, gid, size, mtime, devmajor, devminor = fields
        mtime_ns = mtime * 1_000_000_000
        if not MIN_MTIME_NS <= mtime_ns <= MAX_MTIME_NS:
            mtime_ns = clamp_mtime_ns(mtime_ns)
        linkname = block[157:257].split(b"\x00", 1)[0]
        entry = TarEntry(
            path,
            kind,
            mode,
            uid,
            gid,
            mtime_ns,
            size,
            linkname,
            devmajor,
            devminor,
            None,  # xattrs
            self.reader.offset,  # data_offset
            None,  # sparse
            offset,  # header_offset
        )
        sparse = None
        if pending.pax:
            self.apply_pax(entry, pending.pax, offset, shown)
            if block[156:157] != b"S":  # old GNU sparse files keep their own map (as in Go)
                sparse = _pax_sparse_records(pending.pax)
        if pending.longlink:
            entry.linkname = pending.longlink
        if sparse is not None and sparse.get(_GNU_SPARSE_NAME):
            entry.path = path = sparse[_GNU_SPARSE_NAME]

        if mode < 0 or entry.uid < 0 or entry.gid < 0:
            for what, value in (("mode", mode), ("uid", entry.uid), ("gid", entry.gid)):
                if value < 0:  # only base-256 says so; chown(2) takes uid -1 as "leave it"
                    self.fail(f"bad {what} field (negative) in header", offset, path or None)
        entry.mode = mode & 0o7777
        if not path:
            self.fail("entry with an empty name", offset)
        if b"\x00" in path:
            self.fail("NUL byte in the entry name", offset, path)
        if kind in _LINKS:
            if b"\x00" in entry.linkname:
                self.fail("NUL byte in the link target", offset, path)
        else:
            entry.linkname = b""
        if kind in _DEVICES:
            if devmajor < 0 or devminor < 0:
                self.fail("negative device number in header", offset, path)
        else:
            entry.devmajor = entry.devminor = 0
        return entry, sparse

    def apply_pax(
        self,
        entry: TarEntry | None,
        records: list[tuple[bytes, bytes]],
        offset: int,
        shown: bytes | None,
    ) -> None:
        """Set the entry's fields from PAX records, in order (the last one wins); with no
        entry (a global header), only check the values, as Go's mergePAX does."""
        for key, value in records:
            if not value:  # an empty value unsets the keyword: the header's value stays
                continue
            rule = _PAX_FIELDS.get(key)
            if rule is not None:
                field, parse = rule
                parsed = parse(value)
                if parsed is None:
                    self.fail(f"bad PAX {key.decode()} {value[:40]!r}", offset, shown)
                if field is not None and entry is not None:
                    setattr(entry, field, parsed)
        if entry is None:
            return
        for key, value in records:  # empty values too: engines set an empty xattr (A7)
            if key.startswith(_SCHILY_XATTR):
                name = key[len(_SCHILY_XATTR) :]
                if not name:
                    self.fail("PAX xattr record without a name", offset, shown)
                if entry.xattrs is None:
                    entry.xattrs = {}
                entry.xattrs[name] = value  # binary and empty values kept as they are

    # -- the handlers of _HANDLERS, one per kind of header --------------------------------
    # Each takes the header block, its offset, its numeric fields and format, reads what
    # follows the header, and returns the entry (None for an extension header).

    def regular(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> TarEntry:
        """'0' and NUL: a file, maybe PAX sparse; NUL with a name ending in '/' is a
        directory without data, as pre-POSIX tars wrote them (and as Go reads them)."""
        entry, sparse = self.member(block, offset, fields, fmt)
        path = entry.path
        # The name before a GNU.sparse.name rename decides, as in Go.
        if block[156:157] == b"\x00" and self.member_path(block).endswith(b"/"):
            if sparse is not None:
                self.fail("GNU sparse map on a directory", entry.header_offset, path)
            entry.kind = DIR
            entry.size = 0
            return entry
        stored = self.data_size(entry.size, entry.header_offset, path)
        if sparse is not None:
            map_size = 0
            logical = self.sparse_size(sparse, stored, entry.header_offset, path)
            if sparse.get(b"GNU.sparse.major") == b"1":
                segments, map_size = self.sparse_map_1(stored, entry.header_offset, path)
            else:
                segments = self.sparse_map_0(sparse, entry.header_offset, path)
            entry.data_offset = self.reader.offset
            checked = self.check_map(
                segments, logical, stored - map_size, entry.header_offset, path
            )
            self.skip_data(stored - map_size, entry.header_offset, path)
            entry.size = logical
            entry.sparse = checked
            return entry
        self.skip_data(stored, entry.header_offset, path)
        return entry

    def header_only(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> TarEntry:
        """'1'-'6': links, devices, directories, FIFOs: no data, whatever the size field says."""
        entry, sparse = self.member(block, offset, fields, fmt)
        if sparse is not None:
            self.fail(f"GNU sparse map on a {entry.kind}", entry.header_offset, entry.path)
        entry.size = 0
        return entry

    def old_sparse(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> TarEntry:
        """'S': an old GNU sparse file; its map is in the header and extension blocks."""
        entry, _ = self.member(block, offset, fields, fmt)
        path = entry.path
        if fmt != GNU:  # star has an 'S' of its own, laid out otherwise (Go refuses it too)
            self.fail("old GNU sparse header without the GNU magic", entry.header_offset, path)
        stored = self.data_size(entry.size, entry.header_offset, path)
        sparse, logical = self.old_gnu_sparse(block, stored, entry.header_offset, path)
        entry.data_offset = self.reader.offset
        self.skip_data(stored, entry.header_offset, path)
        entry.size = logical
        entry.sparse = sparse
        return entry

    def long_name(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> None:
        """'L': the GNU long name of the next entry (the last one wins; empty is none)."""
        self.pending.longname = self.gnu_long_data(fields[3], offset, "GNU long name")

    def long_link(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> None:
        """'K': the GNU long link target of the next entry."""
        self.pending.longlink = self.gnu_long_data(fields[3], offset, "GNU long link")

    def gnu_long_data(self, size: int, offset: int, what: str) -> bytes:
        if size > MAX_SPECIAL:
            self.fail(f"{what} of {size} bytes (over {MAX_SPECIAL})", offset)
        data = self.read_data(size, offset, what).split(b"\x00", 1)[0]
        if self.pending.start is None:
            self.pending.start = offset
        return data

    def pax_extended(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> None:
        """'x': PAX records for the next entry; a later 'x' header replaces them (as in Go)."""
        records = self.pax_data(fields[3], offset)
        if self.pending.start is None:
            self.pending.start = offset
        self.pending.pax = records

    def pax_global(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> None:
        """'g': checked, then ignored: its defaults apply to no entry (A10). Go hands it to the
        engines as an entry of its own (which they skip), so it ends the pending headers."""
        records = self.pax_data(fields[3], offset)
        self.apply_pax(None, records, offset, None)
        if not self.pending.empty():
            logger.warning(
                "tar stream: a PAX global header at offset %d ends the extension headers "
                "from offset %s, which describe no entry; ignored",
                offset,
                self.pending.start,
            )
            self.pending = _Pending()
        logger.debug("ignoring PAX global header at offset %d", offset)

    def unknown(self, block: bytes, offset: int, fields: _Fields, fmt: str) -> NoReturn:
        """Any other typeflag: an error, as the engines' apply code makes it."""
        if self.pending.start is not None:
            offset = self.pending.start
        typeflag = block[156:157]
        path = self.member_path(block)
        what = _REFUSED.get(typeflag)
        reason = f" ({what}, which container engines refuse too)" if what else ""
        self.fail(f"unsupported typeflag {typeflag!r}{reason}", offset, path or None)

    # -- PAX --------------------------------------------------------------------------

    def pax_data(self, size: int, offset: int) -> list[tuple[bytes, bytes]]:
        """The records of a PAX 'x' or 'g' header, read from its data."""
        if size > MAX_SPECIAL:
            self.fail(f"PAX header of {size} bytes (over {MAX_SPECIAL})", offset)
        return self.pax_records(self.read_data(size, offset, "PAX"), offset)

    def pax_records(self, data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
        """Split PAX extended header data into (key, value) records, strictly, in order, as
        Go's parsePAXRecord: "LENGTH key=value\\n", LENGTH counting the whole record. GNU
        sparse 0.0 offset/numbytes pairs become one GNU.sparse.map record at the end."""
        records: list[tuple[bytes, bytes]] = []
        sparse_map: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            space = data.find(b" ", pos)
            length = _go_int(data[pos:space]) if space > pos else None
            if length is None or length < space - pos + 4 or length > end - pos:
                self.fail(f"malformed PAX record length at byte {pos} of the PAX header", offset)
            record_end = pos + length
            if data[record_end - 1] != 0x0A:
                self.fail(f"PAX record at byte {pos} does not end in a newline", offset)
            equals = data.find(b"=", space + 1, record_end - 1)
            if equals <= space + 1:
                self.fail(f"malformed PAX record at byte {pos} (no key=value)", offset)
            key, value = data[space + 1 : equals], data[equals + 1 : record_end - 1]
            if b"\x00" in key:
                self.fail(f"NUL byte in the key of the PAX record at byte {pos}", offset)
            if key in _NO_NUL_VALUES and b"\x00" in value:
                self.fail(f"NUL byte in the PAX {key.decode()} value at byte {pos}", offset)
            if key in (_GNU_SPARSE_OFFSET, _GNU_SPARSE_NUMBYTES):
                expected = _GNU_SPARSE_OFFSET if len(sparse_map) % 2 == 0 else _GNU_SPARSE_NUMBYTES
                if key != expected:
                    other = expected.decode().rpartition(".")[2]
                    self.fail(f"{key.decode()} without {other} in the PAX header", offset)
                if b"," in value:
                    self.fail(f"bad PAX {key.decode()} {value[:40]!r}", offset)
                sparse_map.append(value)
            else:
                records.append((key, value))
            pos = record_end
        if sparse_map:
            records.append((_GNU_SPARSE_MAP, b",".join(sparse_map)))
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
        """Validate a sparse map (Go's validateSparseEntries, and the data it must cover);
        drop its zero-length segments."""
        if logical < 0 or logical > MAX_SIZE:
            self.fail(f"absurd sparse file size {logical}", offset, path)
        position = 0
        total = 0
        kept: list[tuple[int, int]] = []
        for start, length in segments:
            if start < 0 or length < 0:
                self.fail("negative number in the sparse map", offset, path)
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
        logical = self.header_number(block, "sparse realsize", offset)
        segments: list[tuple[int, int]] = []
        area, count, extended = block[386:482], 4, block[482]
        while True:
            for i in range(count):
                entry = area[i * 24 : i * 24 + 24]
                if entry[0] == 0:
                    break  # an entry whose offset field is empty ends the map (GNU, BSD, Go)
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

    def sparse_size(
        self, records: dict[bytes, bytes], stored: int, offset: int, path: bytes
    ) -> int:
        """The real size of a PAX sparse file: GNU.sparse.size, else GNU.sparse.realsize, else
        the stored size (Go's order)."""
        for key in (b"GNU.sparse.size", b"GNU.sparse.realsize"):
            text = records.get(key)
            if text:
                number = _go_int(text)
                if number is None:
                    self.fail(f"bad PAX {key.decode()} {text[:40]!r}", offset, path)
                return number
        return stored

    def sparse_map_0(
        self, records: dict[bytes, bytes], offset: int, path: bytes
    ) -> list[tuple[int, int]]:
        """The map of PAX sparse formats 0.0 and 0.1 (GNU.sparse.map, GNU.sparse.numblocks)."""
        blocks = _go_int(records.get(b"GNU.sparse.numblocks", b""))
        if blocks is None or blocks < 0:
            self.fail("GNU sparse map without a valid GNU.sparse.numblocks", offset, path)
        text = records.get(_GNU_SPARSE_MAP, b"")
        numbers = text.split(b",") if text else []
        if len(numbers) != 2 * blocks:
            self.fail(
                f"GNU.sparse.numblocks is {blocks} but the map has {len(numbers)} numbers",
                offset,
                path,
            )
        values = [_go_int(n) for n in numbers]
        checked: list[int] = []
        for n in values:
            if n is None:
                self.fail("bad number in GNU.sparse.map", offset, path)
            checked.append(n)
        return list(zip(checked[::2], checked[1::2], strict=True))

    def sparse_map_1(
        self, size: int, offset: int, path: bytes
    ) -> tuple[list[tuple[int, int]], int]:
        """Read the PAX 1.0 sparse map at the start of the member data: (map, its size).

        The map is read in whole blocks of the member's data, as Go reads it."""
        reader = self.reader
        data = bytearray()
        lines = 0
        needed: int | None = None
        while needed is None or lines < needed:
            if len(data) + TAR_BLOCK > min(size, MAX_SPARSE_MAP):
                self.fail("sparse map runs past the member data", offset, path)
            block_offset = reader.offset
            block = reader.take(TAR_BLOCK)
            if len(block) < TAR_BLOCK:
                self.fail("truncated in the sparse map", block_offset, path)
            data += block
            lines += block.count(b"\n")
            if needed is None and lines:
                count = _go_int(bytes(data[: data.index(b"\n")]))
                if count is None or count < 0:
                    self.fail("bad entry count in the sparse map", offset, path)
                needed = 1 + 2 * count
        numbers: list[int] = []
        for line in bytes(data).split(b"\n", needed)[1:needed]:
            number = _go_int(line)
            if number is None:
                self.fail("bad number in the sparse map", offset, path)
            numbers.append(number)
        return list(zip(numbers[::2], numbers[1::2], strict=True)), len(data)


def _prefix(block: bytes) -> bytes:
    """The prefix the header's format puts before its name: ustar's 155 bytes, star's 131; none
    for V7 and GNU, except the GNU headers old Go writers (before Go 1.8) filled with a ustar
    prefix, which Go still reads as one where atime/ctime do not parse (golang.org/issue/12594)."""
    if block[257:262] != b"ustar":  # V7
        return b""
    fmt = _format(block)
    if fmt == USTAR:
        return block[345:500].split(b"\x00", 1)[0]
    if fmt == STAR:
        return block[345:476].split(b"\x00", 1)[0]
    if fmt == GNU:
        try:
            for field in (block[345:357], block[357:369]):
                if field[0]:
                    _number(field)
        except _BadNumber:
            prefix = block[345:500].split(b"\x00", 1)[0]
            if not prefix.translate(None, _LOW_BYTES):  # ASCII only, as Go's isASCII
                return prefix
    return b""


def _pax_sparse_records(records: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The PAX records as a dict when they make a PAX sparse file, as Go recognises one:
    versions 0.0/0.1 and 1.0 by GNU.sparse.major/minor, or 0.x by a non-empty map. An
    unknown version, or sparse keys without a map, leave a plain file (Go reads it so)."""
    if not any(key.startswith(b"GNU.sparse.") for key, _ in records):
        return None
    found = dict(records)
    major, minor = found.get(b"GNU.sparse.major", b""), found.get(b"GNU.sparse.minor", b"")
    if (major, minor) in ((b"0", b"0"), (b"0", b"1"), (b"1", b"0")):
        return found
    if major or minor:
        logger.info(
            "GNU sparse format %s.%s is unknown: a plain file, as in Go", show(major), show(minor)
        )
        return None
    return found if found.get(_GNU_SPARSE_MAP) else None


# A handler for every typeflag (the header's byte 156), as CPython's tarfile dispatches them.
_Handler = Callable[[_Scanner, bytes, int, _Fields, str], TarEntry | None]
_HANDLERS: dict[bytes, _Handler] = {
    b"0": _Scanner.regular,
    b"\x00": _Scanner.regular,  # pre-POSIX regular file, or directory if the name ends in '/'
    b"1": _Scanner.header_only,  # hard link
    b"2": _Scanner.header_only,  # symbolic link
    b"3": _Scanner.header_only,  # character device
    b"4": _Scanner.header_only,  # block device
    b"5": _Scanner.header_only,  # directory
    b"6": _Scanner.header_only,  # FIFO
    b"S": _Scanner.old_sparse,
    b"L": _Scanner.long_name,
    b"K": _Scanner.long_link,
    b"x": _Scanner.pax_extended,
    b"g": _Scanner.pax_global,
}
# The kind of entry each real entry's typeflag makes (NUL may still turn out a directory).
_KINDS = {
    b"0": FILE,
    b"\x00": FILE,
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHARDEV,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
    b"S": FILE,
}
# Typeflags Go's reader hands over but containerd, Docker, podman and umoci refuse to apply
# ("unhandled tar header type"), which other tars read: their error says why.
_REFUSED = {
    b"7": "a contiguous file",
    b"D": "a GNU dumpdir",
    b"V": "a GNU volume label",
}


def scan_tar(stream: Readable) -> Iterator[TarEntry]:
    """Yield the entries of the tar stream read sequentially from ``stream``.

    Every byte of the stream is read exactly once, in order, up to its end (past the
    end-of-archive blocks too, for the caller's hash). Raises ``TarFormatError`` for malformed
    input.
    """
    yield from _Scanner(stream).scan()
