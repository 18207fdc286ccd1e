"""Random access into gzip streams: one strict indexing pass, then cursors from seek points.

This is zlib's zran technique, with zlib called through ctypes. ``ctypes.CDLL`` releases the
GIL during every call, so layers inflate in parallel threads; Python's zlib module cannot be
used because it hides Z_BLOCK, inflatePrime and the inflate{Get,Set}Dictionary calls.

``GzipIndexer`` reads a blob once, front to back, checking it strictly (header, CRC, length,
truncation, trailing garbage), hands out the uncompressed stream as it goes and records seek
points: the start of every gzip member, and a deflate block boundary every ``spacing``
uncompressed bytes, with the 32 KiB window there. ``GzipCursor`` enters the stream at one of
those points and inflates forward, across member boundaries.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import mmap
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from isal import isal_zlib

from . import rawbytes
from .blobs import BlobHandle, Readable
from .errors import CompressionError

logger = logging.getLogger(__name__)

DEFAULT_SPACING = 1 << 20
CHUNK = 1 << 20  # blob bytes read at once by the indexer
# ... and at most by a cursor, which keeps what it read until decoded: a live cursor of every
# layer holds one, so they add up (1 MiB read at once was no faster: a read is a copy).
CURSOR_CHUNK = 256 << 10
OUT_SIZE = 1 << 20  # the indexer's output buffer
FIRST_CURSOR_CHUNK = 64 << 10  # a cursor's first read: most cursors read only a little
SCRATCH_SIZE = 256 << 10  # where skip() inflates to
WINDOW_SIZE = 32 << 10  # deflate's sliding window
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 31  # zlib parses the gzip header and checks CRC32 and ISIZE
RAW_WBITS = -15  # bare deflate data, entered in the middle of a member
TRAILER_SIZE = 8  # CRC32 and ISIZE, which raw inflate does not read
# Consecutive inflate calls that neither take input nor give output before we call it stuck;
# a few are legitimate (bits already buffered can finish a block without a new byte).
MAX_STALLS = 64

Z_NO_FLUSH = 0
Z_BLOCK = 5
Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_ERRORS = {
    -1: "system error",
    -2: "inconsistent stream state",
    -3: "invalid data",
    -4: "out of memory",
    -5: "no progress possible",
    -6: "incompatible zlib version",
    Z_NEED_DICT: "a preset dictionary is needed",
}
# data_type after inflate(Z_BLOCK): bit 7 says "at a block boundary", bit 6 "after the last
# block", bits 0-2 the unused bits in the last input byte.
BOUNDARY, LAST_BLOCK, BIT_MASK = 128, 64, 7


class WindowSource(Protocol):
    """Windows kept outside memory (the index cache reads them from its file on demand)."""

    def __getitem__(self, index: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


WindowBuffer = bytes | bytearray | memoryview | mmap.mmap | WindowSource


class ZStream(ctypes.Structure):
    """zlib's z_stream (zlib.h); zlib keeps a pointer to it, so it must not move (ctypes
    objects do not)."""

    next_in: int | None
    avail_in: int
    next_out: int | None
    avail_out: int
    msg: bytes | None
    data_type: int

    _fields_ = (
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    )


ZStreamPointer = ctypes.POINTER(ZStream)


def _load_zlib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    signatures: dict[str, list[type]] = {
        "inflateInit2_": [ZStreamPointer, ctypes.c_int, ctypes.c_char_p, ctypes.c_int],
        "inflate": [ZStreamPointer, ctypes.c_int],
        "inflateEnd": [ZStreamPointer],
        "inflateReset2": [ZStreamPointer, ctypes.c_int],
        "inflatePrime": [ZStreamPointer, ctypes.c_int, ctypes.c_int],
        "inflateSetDictionary": [ZStreamPointer, ctypes.c_void_p, ctypes.c_uint],
        "inflateGetDictionary": [ZStreamPointer, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)  # inflateGetDictionary needs zlib 1.2.7.1 (2013)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    lib.zlibVersion.argtypes = []
    lib.zlibVersion.restype = ctypes.c_char_p
    return lib


_zlib = _load_zlib()
_ZLIB_VERSION: bytes = _zlib.zlibVersion()
_inflate = _zlib.inflate


def _address(data: bytes) -> int:
    """Where the bytes of ``data`` are; zlib reads them in place, no copy."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


class Inflater:
    """One z_stream, allocated by zlib; ``end`` frees it (once)."""

    def __init__(self, wbits: int) -> None:
        self.strm = ZStream()
        self.ptr = ctypes.pointer(self.strm)
        self.live = False
        ret = _zlib.inflateInit2_(self.ptr, wbits, _ZLIB_VERSION, ctypes.sizeof(ZStream))
        if ret != Z_OK:
            raise CompressionError(f"cannot start inflating: {self.describe(ret)}")
        self.live = True
        self.input = b""  # what next_in points into: kept alive here

    def set_input(self, data: bytes) -> None:
        self.input = data
        self.strm.next_in = _address(data)
        self.strm.avail_in = len(data)

    def unconsumed(self) -> bytes:
        avail = self.strm.avail_in
        return self.input[len(self.input) - avail :] if avail else b""

    def describe(self, ret: int) -> str:
        """zlib's message for a failed call, else a word on its return code."""
        msg = self.strm.msg
        if msg:
            return msg.decode("ascii", "replace")
        return Z_ERRORS.get(ret, f"zlib error {ret}")

    def check(self, what: str, ret: int) -> None:
        if ret != Z_OK:
            raise CompressionError(f"{what} failed: {self.describe(ret)}")

    def end(self) -> None:
        if self.live:
            self.live = False
            _zlib.inflateEnd(self.ptr)


@dataclass
class SeekPoints:
    """Where a gzip stream can be entered; plain data, cheap to persist."""

    spacing: int
    uncompressed: array.array[int]  # 'Q', ascending; uncompressed[0] == 0
    compressed: array.array[int]  # 'Q', blob offset of the first byte to feed at the point
    bits: bytes  # per point, 0..7: unused bits of the byte before ``compressed``
    window_offsets: array.array[int]  # 'Q', len(points) + 1 bounds into ``windows``
    windows: WindowBuffer  # each point's window, zlib format (level 1); b"": member start
    size: int  # length of the uncompressed stream
    compressed_size: int  # length of the blob

    def __len__(self) -> int:
        return len(self.uncompressed)

    def find(self, offset: int) -> int:
        """The index of the last point at or before ``offset`` (the last point past the end)."""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return bisect.bisect_right(self.uncompressed, offset) - 1

    def window(self, index: int) -> bytes:
        """The 32 KiB (or less) of uncompressed data before point ``index``; b"" at a member
        start."""
        start, end = self.window_offsets[index], self.window_offsets[index + 1]
        if start == end:
            return b""
        try:
            return zlib.decompress(self.windows[start:end])
        except zlib.error as error:
            raise CompressionError(f"the window of gzip seek point {index} is damaged") from error


class GzipIndexer:
    """One strict pass over a gzip blob: yields the uncompressed stream, records seek points.

    Accepts concatenated members and zero padding after the last one (as gzip does); refuses
    a truncated stream, a bad CRC or length, damaged deflate data and other trailing bytes.
    """

    def __init__(
        self,
        blob: Readable,
        spacing: int = DEFAULT_SPACING,
        on_input: Callable[[bytes], None] | None = None,
    ) -> None:
        if spacing < 1:
            raise ValueError(f"seek point spacing must be positive, not {spacing}")
        self.blob = blob
        self.spacing = spacing
        self.on_input = on_input
        self.uncompressed = 0  # bytes handed to the caller
        self.inflater: Inflater | Any | None = self._new_inflater()
        self.blob_offset = 0  # blob bytes read; the input being inflated ends here
        self.produced = 0  # uncompressed bytes inflated (ahead of ``uncompressed``)
        self.member = 1
        self.ended = False
        self.failure: str | None = None
        self.out = ctypes.create_string_buffer(OUT_SIZE)
        self.out_address = ctypes.addressof(self.out)
        self.pending = 0  # out[pending:filled] is inflated but not yet handed out
        self.filled = 0
        self.dictionary = ctypes.create_string_buffer(WINDOW_SIZE)
        self.dictionary_length = ctypes.c_uint()
        self.point_uncompressed = array.array("Q")
        self.point_compressed = array.array("Q")
        self.point_bits = bytearray()
        # Each point's compressed window (``_compress_window``), or None at a member start.
        self.point_windows: list[Future[bytes] | None] = []
        self.compressor: ThreadPoolExecutor | None = None
        self._add_point(0, 0, 0, None)

    def _new_inflater(self) -> Inflater | Any:
        """The inflater ``_fill`` drives (isalseek's subclass makes its own)."""
        return Inflater(GZIP_WBITS)

    def read(self, size: int) -> bytes:
        """The next up-to-``size`` bytes of the uncompressed stream; short only at the end."""
        pieces = []
        wanted = size
        while wanted > 0:
            available = self.filled - self.pending
            if not available:
                if self.ended:
                    break
                self._refill()
                continue
            take = min(available, wanted)
            pieces.append(ctypes.string_at(self.out_address + self.pending, take))
            self.pending += take
            wanted -= take
        data = b"".join(pieces)
        self.uncompressed += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the whole blob is checked (and seen by ``on_input``)."""
        while not self.ended:
            self._refill()
        self.uncompressed = self.produced
        self.pending = self.filled

    def finish(self) -> SeekPoints:
        """The seek points; only once the end of the stream was reached."""
        if not self.ended:
            raise RuntimeError("the gzip stream was not read to its end")
        self._stop_compressor(wait=True)
        logger.debug(
            "gzip stream of %d bytes (%d compressed, %d members): %d seek points",
            self.produced,
            self.blob_offset,
            self.member,
            len(self.point_uncompressed),
        )
        windows = [b"" if window is None else window.result() for window in self.point_windows]
        window_offsets = array.array("Q", [0])
        end = 0
        for window in windows:
            end += len(window)
            window_offsets.append(end)
        return SeekPoints(
            spacing=self.spacing,
            uncompressed=self.point_uncompressed,
            compressed=self.point_compressed,
            bits=bytes(self.point_bits),
            window_offsets=window_offsets,
            windows=b"".join(windows),
            size=self.produced,
            compressed_size=self.blob_offset,
        )

    def close(self) -> None:
        """Free the inflater early (the end of the stream or an error does it too)."""
        if self.inflater is not None:
            self.inflater.end()
            self.inflater = None
        if not self.ended:
            self._stop_compressor(wait=False)

    def _stop_compressor(self, wait: bool) -> None:
        if self.compressor is not None:
            self.compressor.shutdown(wait=wait, cancel_futures=not wait)
            self.compressor = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _refill(self) -> None:
        if self.failure is not None:
            raise CompressionError(self.failure)
        if self.inflater is None:
            raise RuntimeError("the gzip indexer was closed")
        try:
            self._fill(self.inflater)
        except CompressionError as error:
            self.failure = str(error)
            self.close()
            raise
        except BaseException:  # on_input stopped us, or the blob could not be read
            self.failure = "the gzip indexing was stopped"
            self.close()
            raise

    def _fill(self, inflater: Inflater) -> None:
        """Inflate into the output buffer, from its start, until it is full or the stream
        ends; record seek points on the way."""
        strm, ptr, inflate = inflater.strm, inflater.ptr, _inflate
        strm.next_out = self.out_address
        room = OUT_SIZE
        produced = self.produced
        stalls = 0
        while room:
            if not strm.avail_in and not self._read_input(inflater):
                raise CompressionError("gzip stream is truncated")
            # Inflate freely until a seek point is due, then stop at each block boundary
            # (Z_BLOCK) until one comes.
            due_in = self.point_uncompressed[-1] + self.spacing - produced
            if due_in > 0:
                flush = Z_NO_FLUSH
                give = min(room, due_in)
            else:
                flush = Z_BLOCK
                give = room
            strm.avail_out = give
            avail_in = strm.avail_in
            ret = inflate(ptr, flush)
            made = give - strm.avail_out
            produced += made
            room -= made
            if ret in (Z_OK, Z_BUF_ERROR):  # BUF_ERROR: needs input, or none taken
                if made or strm.avail_in != avail_in:
                    stalls = 0
                elif strm.avail_in:
                    stalls += 1
                    if stalls > MAX_STALLS:
                        raise CompressionError(
                            f"gzip member {self.member} is damaged: inflate makes no progress"
                        )
                if flush == Z_BLOCK and strm.data_type & (BOUNDARY | LAST_BLOCK) == BOUNDARY:
                    self.produced = produced
                    self._add_block_point(inflater)
            elif ret == Z_STREAM_END:
                self.produced = produced
                if not self._next_member(inflater):
                    break
            else:
                raise CompressionError(
                    f"gzip member {self.member} is damaged: {inflater.describe(ret)}"
                )
        self.produced = produced
        self.pending = 0
        self.filled = OUT_SIZE - room

    def _read_chunk(self) -> bytes:
        chunk = self.blob.read(CHUNK)
        if chunk and self.on_input is not None:
            self.on_input(chunk)
        self.blob_offset += len(chunk)
        return chunk

    def _read_input(self, inflater: Inflater) -> bool:
        chunk = self._read_chunk()
        inflater.set_input(chunk)
        return bool(chunk)

    def _next_member(self, inflater: Inflater) -> bool:
        """After a member's end (zlib checked its trailer): start the next member, or check
        that only zero bytes follow the last one."""
        rest = inflater.unconsumed()
        while len(rest) < len(GZIP_MAGIC):
            chunk = self._read_chunk()
            if not chunk:
                break
            rest += chunk
        if rest.startswith(GZIP_MAGIC):
            self._restart(inflater, self.blob_offset - len(rest))
            self.member += 1
            self._add_point(self.produced, self.blob_offset - len(rest), 0, None)
            inflater.set_input(rest)
            return True
        while rest:
            if rest.count(0) != len(rest):
                raise CompressionError("garbage after the end of the gzip stream")
            rest = self._read_chunk()
        inflater.set_input(b"")
        self.ended = True
        self.close()
        return False

    def _restart(self, inflater: Inflater, header: int) -> None:
        """Make ``inflater`` ready for the next member, whose header is at blob offset
        ``header`` (the one step in which the inflaters' member changes differ)."""
        inflater.check("inflateReset2", _zlib.inflateReset2(inflater.ptr, GZIP_WBITS))

    def _add_block_point(self, inflater: Inflater) -> None:
        strm = inflater.strm
        self.dictionary_length.value = WINDOW_SIZE
        inflater.check(
            "inflateGetDictionary",
            _zlib.inflateGetDictionary(
                inflater.ptr, self.dictionary, ctypes.byref(self.dictionary_length)
            ),
        )
        window = ctypes.string_at(self.dictionary, self.dictionary_length.value)
        offset = self.blob_offset - strm.avail_in
        compressed_window = self._compress_window(window)
        self._add_point(self.produced, offset, strm.data_type & BIT_MASK, compressed_window)

    def _compress_window(self, window: bytes) -> Future[bytes]:
        """``window`` compressed in the indexer's own thread, on another core when there is
        one. ISA-L's deflate (python-isal), level 1: the zlib format ``SeekPoints.window``
        reads with zlib, as small as zlib's level 1 and about five times as fast (README
        "Why this inflate"); both let go of the GIL."""
        if self.compressor is None:
            self.compressor = ThreadPoolExecutor(1, thread_name_prefix="gzseek-window")
        return self.compressor.submit(isal_zlib.compress, window, 1)

    def _add_point(
        self, uncompressed: int, compressed: int, bits: int, window: Future[bytes] | None
    ) -> None:
        if self.point_uncompressed and self.point_uncompressed[-1] == uncompressed:
            # Nothing came since the last point (an empty member, or a block boundary just
            # before a member's end): the later point serves the same offset, with less to
            # inflate. So the offsets stay strictly ascending.
            self.point_uncompressed.pop()
            self.point_compressed.pop()
            self.point_bits.pop()
            dropped = self.point_windows.pop()
            if dropped is not None:
                dropped.cancel()
        self.point_uncompressed.append(uncompressed)
        self.point_compressed.append(compressed)
        self.point_bits.append(bits)
        self.point_windows.append(window)


def new_indexer(
    blob: Readable,
    spacing: int = DEFAULT_SPACING,
    on_input: Callable[[bytes], None] | None = None,
) -> GzipIndexer:
    """The fastest indexer there is: ISA-L's (isalseek) where libisal is installed, else
    zlib's; both give the same stream, the same checks and seek points zlib's cursors enter."""
    from . import isal

    if isal.available():
        from .isalseek import IsalGzipIndexer

        return IsalGzipIndexer(blob, spacing, on_input)
    return GzipIndexer(blob, spacing, on_input)


@functools.cache
def cursor_class() -> type[GzipCursor]:
    """ISA-L's cursor (isalseek) where libisal is installed, else zlib's; both read the same
    bytes from the same points. Loading the library takes a ``find_library`` (a subprocess):
    a reader asks at mount time, so that no read waits for it."""
    from . import isal

    if isal.available():
        from .isalseek import IsalGzipCursor

        return IsalGzipCursor
    return GzipCursor


def new_cursor(blob: BlobHandle, points: SeekPoints, index: int) -> GzipCursor:
    """A cursor at seek point ``index``, of ``cursor_class()``."""
    return cursor_class()(blob, points, index)


class GzipCursor:
    """An inflater positioned somewhere in the uncompressed stream; reads forward from there.
    Not thread safe (the caller locks)."""

    def __init__(self, blob: BlobHandle, points: SeekPoints, index: int) -> None:
        if not 0 <= index < len(points):
            raise IndexError(f"no gzip seek point {index} (there are {len(points)})")
        self.blob = blob
        self.points = points
        self.position = points.uncompressed[index]
        self.input_offset = points.compressed[index]  # blob offset of the next read
        self.chunk = FIRST_CURSOR_CHUNK
        self.member_ended = False
        self.failure: str | None = None
        self.scratch: ctypes.Array[ctypes.c_char] | None = None
        window = points.window(index)
        self.raw = bool(window)  # inside a member: bare deflate, no header, trailer unread
        self.inflater: Inflater | Any | None = self._new_inflater()
        try:
            if self.raw:
                self._enter_block(self.inflater, points.bits[index], window)
        except BaseException:
            self.close()
            raise

    def _new_inflater(self) -> Inflater | Any:
        """The inflater ``_inflate`` drives (isalseek's subclass makes its own)."""
        return Inflater(RAW_WBITS if self.raw else GZIP_WBITS)

    def _enter_block(self, inflater: Inflater, bits: int, window: bytes) -> None:
        if bits:
            # The point starts inside the byte before: feed its unused high bits first.
            before = self.blob.pread(1, self.input_offset - 1)
            if len(before) != 1:
                raise CompressionError("gzip stream is truncated")
            inflater.check(
                "inflatePrime", _zlib.inflatePrime(inflater.ptr, bits, before[0] >> (8 - bits))
            )
        inflater.check(
            "inflateSetDictionary",
            _zlib.inflateSetDictionary(inflater.ptr, window, len(window)),
        )

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the stream."""
        size = min(size, self.points.size - self.position)
        if size <= 0:
            return b""
        return rawbytes.filled(size, self._inflate_into)

    def skip(self, count: int) -> None:
        """Advance by ``count`` bytes (at most to the end) without keeping them."""
        count = min(count, self.points.size - self.position)
        if count <= 0:
            return
        if self.scratch is None:
            self.scratch = ctypes.create_string_buffer(SCRATCH_SIZE)
        address = ctypes.addressof(self.scratch)
        while count:
            step = min(count, SCRATCH_SIZE)
            self._inflate_into(address, step)
            count -= step

    def close(self) -> None:
        """Free the inflater; idempotent."""
        if self.inflater is not None:
            self.inflater.end()
            self.inflater = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _inflate_into(self, address: int, size: int) -> None:
        """Inflate exactly ``size`` bytes to ``address``, and advance."""
        if self.failure is not None:
            raise CompressionError(self.failure)
        if self.inflater is None:
            raise ValueError("read from a closed gzip cursor")
        try:
            self._inflate(self.inflater, address, size)
        except BaseException as error:
            # The inflater is somewhere in the middle of this read: it cannot go on.
            self.failure = str(error) if isinstance(error, CompressionError) else "stopped"
            self.close()
            raise
        self.position += size

    def _inflate(self, inflater: Inflater, address: int, size: int) -> None:
        strm, ptr, inflate = inflater.strm, inflater.ptr, _inflate
        strm.next_out = address
        strm.avail_out = size
        stalls = 0
        while strm.avail_out:
            if self.member_ended:
                self._next_member(inflater, size - strm.avail_out)
            if not strm.avail_in:
                self._read_input(inflater)
            avail_in, avail_out = strm.avail_in, strm.avail_out
            ret = inflate(ptr, Z_NO_FLUSH)
            if ret in (Z_OK, Z_BUF_ERROR):
                if strm.avail_out != avail_out or strm.avail_in != avail_in:
                    stalls = 0
                elif strm.avail_in:
                    stalls += 1
                    if stalls > MAX_STALLS:
                        raise self._damaged(inflater, "inflate makes no progress")
            elif ret == Z_STREAM_END:
                # The next member is looked for only if more bytes are wanted: after the
                # last one come zero bytes or nothing.
                self.member_ended = True
            else:
                raise self._damaged(inflater, inflater.describe(ret))

    def _read_input(self, inflater: Inflater) -> None:
        data = self.blob.pread(self.chunk, self.input_offset)
        if not data:
            raise CompressionError("gzip stream is truncated")
        self.input_offset += len(data)
        self.chunk = min(self.chunk * 2, CURSOR_CHUNK)
        inflater.set_input(data)

    def _next_member(self, inflater: Inflater, done: int) -> None:
        offset = self.input_offset - inflater.strm.avail_in
        if self.raw:
            offset += TRAILER_SIZE
        if self.blob.pread(len(GZIP_MAGIC), offset) != GZIP_MAGIC:
            raise CompressionError(
                f"gzip stream is damaged: it ends at uncompressed offset {self.position + done}"
                f", before the indexed end {self.points.size}"
            )
        inflater.check("inflateReset2", _zlib.inflateReset2(inflater.ptr, GZIP_WBITS))
        self.raw = False
        self.member_ended = False
        self.input_offset = offset
        inflater.set_input(b"")

    def _damaged(self, inflater: Inflater, reason: str) -> CompressionError:
        offset = self.input_offset - inflater.strm.avail_in
        return CompressionError(f"gzip stream is damaged near blob offset {offset}: {reason}")
