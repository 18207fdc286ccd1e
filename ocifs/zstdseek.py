"""Random access into zstd streams: the frames walked strictly, decoded through libzstd (ctypes).

A zstd stream is a sequence of frames (RFC 8878): regular frames, which decode on their own
from their first byte, and skippable frames, which carry other data (zstd:chunked's TOC). A
frame can only be entered at its start (Z2), so every frame boundary is a seek point and
nothing else is: a stream of one long frame (what ``zstd`` writes) is read forward from its
start, one of many frames (``pzstd``, zstd:chunked) anywhere a frame begins.

``FrameWalker`` parses the frame structure without decoding anything: magic numbers, frame
header descriptors (reserved bit, dictionary, window, content size), every block header and
the content checksum's place, so each frame's extent in the blob is known exactly; a
truncated stream and bytes after the last frame are errors (Z1, B3). ``ZstdIndexer`` reads a
blob once: the walker checks its structure, libzstd decodes it (checking each frame's content
checksum), the two must agree on where every frame ends, and each regular frame's start is
recorded as a seek point. ``ZstdCursor`` starts decoding at a seek point and reads forward,
across frames.

libzstd is Debian's ``libzstd.so.1``, through ctypes, as gzseek calls zlib: ``ctypes.CDLL``
lets go of the GIL during every call, the decoder writes straight into our buffers with
bounded output, and it says where a frame ends in the input (README: "Why this zstd binding").
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import rawbytes
from .blobs import BlobHandle, Readable
from .errors import CompressionError
from .gzseek import SeekPoints

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # blob bytes read at once by the indexer
# ... and at most by a cursor, which keeps what it read until decoded: a live cursor of every
# layer holds one, so they add up (1 MiB read at once was no faster: a read is a copy).
CURSOR_CHUNK = 256 << 10
OUT_SIZE = 1 << 20  # the indexer's output buffer
FIRST_CURSOR_CHUNK = 64 << 10  # a cursor's first read: most cursors read only a little
SCRATCH_SIZE = 256 << 10  # the least a cursor decodes into (skip() too)

FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC = 0x184D2A50  # ... to 0x184D2A5F: the low nibble is the writer's to choose
SKIPPABLE_MASK = 0xFFFFFFF0
MAX_BLOCK = 128 << 10  # Block_Maximum_Size's upper bound, compressed or regenerated
MAX_HEADER = 18  # magic, descriptor, window, dictionary id and content size at their largest
# The largest window libzstd decodes by default (ZSTD_WINDOWLOG_LIMIT_DEFAULT, 2**27); a
# frame asking for more (zstd --long=31) would need ZSTD_d_windowLogMax raised, and memory.
MAX_WINDOW = 1 << 27
RAW, RLE, COMPRESSED, RESERVED = 0, 1, 2, 3
FCS_SIZES = (0, 2, 4, 8)  # by Frame_Content_Size_flag (0 means 1 byte when single segment)
DICT_ID_SIZES = (0, 1, 2, 4)


# ---- libzstd ----


class ZstdBuffer(ctypes.Structure):
    """ZSTD_inBuffer and ZSTD_outBuffer (zstd.h): the same three fields."""

    ptr: int | None
    size: int
    pos: int

    _fields_ = (
        ("ptr", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("pos", ctypes.c_size_t),
    )


ZstdBufferPointer = ctypes.POINTER(ZstdBuffer)


def _load_zstd() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
    lib.ZSTD_createDCtx.argtypes = []
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
    lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ZstdBufferPointer, ZstdBufferPointer]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_versionString.argtypes = []
    lib.ZSTD_versionString.restype = ctypes.c_char_p
    return lib


_zstd = _load_zstd()
ZSTD_VERSION: str = _zstd.ZSTD_versionString().decode()
_decompress_stream = _zstd.ZSTD_decompressStream
_is_error = _zstd.ZSTD_isError


def _address(data: bytes) -> int:
    """Where the bytes of ``data`` are; libzstd reads them in place, no copy."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


class Decoder:
    """One ZSTD_DCtx, decoding a stream of frames (it skips skippable ones); ``end`` frees it.

    ``decode`` moves input to output; libzstd returns 0 exactly when a frame (regular or
    skippable) is decoded and flushed, with ``inp.pos`` just past its last byte."""

    def __init__(self) -> None:
        self.dctx: int | None = _zstd.ZSTD_createDCtx()
        if not self.dctx:
            raise CompressionError("cannot start decoding zstd: out of memory")
        self.inp = ZstdBuffer()
        self.out = ZstdBuffer()
        self.inp_ref = ctypes.byref(self.inp)
        self.out_ref = ctypes.byref(self.out)
        self.input = b""  # what inp.ptr points into: kept alive here

    def set_input(self, data: bytes) -> None:
        self.input = data
        self.inp.ptr = _address(data) if data else None
        self.inp.size = len(data)
        self.inp.pos = 0

    def pending_input(self) -> int:
        return self.inp.size - self.inp.pos

    def decode(self, address: int, size: int) -> tuple[int, int]:
        """Decode into ``size`` bytes at ``address``; (bytes written, libzstd's return)."""
        out = self.out
        out.ptr, out.size, out.pos = address, size, 0
        ret: int = _decompress_stream(self.dctx, self.out_ref, self.inp_ref)
        if _is_error(ret):
            raise DecoderError(_zstd.ZSTD_getErrorName(ret).decode("ascii", "replace"))
        return out.pos, ret

    def end(self) -> None:
        if self.dctx:
            _zstd.ZSTD_freeDCtx(self.dctx)
            self.dctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.end()


class DecoderError(Exception):
    """libzstd refused the data; the message is its error name."""


# ---- the frame structure ----


@dataclass(frozen=True)
class Frame:
    """One frame as the walker found it. ``number`` counts regular frames from 1 (0 for a
    skippable frame); ``start`` and ``end`` are blob offsets of its first byte and past its
    last."""

    number: int
    start: int
    end: int
    skippable: bool
    content_size: int | None = None  # Frame_Content_Size, when the header gives it
    checksum: bool = False  # whether a content checksum closes the frame
    window_size: int = 0
    magic: int = FRAME_MAGIC  # a skippable frame's own magic (0x184D2A5?)

    @property
    def payload_start(self) -> int:
        """Where a skippable frame's user data begins (after magic and size)."""
        return self.start + 8


# The walker's states: what the next bytes are.
MAGIC, SKIP_SIZE, DESCRIPTOR, HEADER, BLOCK_HEADER, CHECKSUM = range(6)


class FrameWalker:
    """A push parser of a zstd stream's frames: ``feed`` it the blob in order, ``finish`` at
    its end. Raises CompressionError on anything RFC 8878 does not allow or libzstd could
    not decode: a bad magic, a reserved bit, a dictionary, a window over MAX_WINDOW, a
    reserved block type, an oversized block, truncation, bytes after the last frame."""

    def __init__(self) -> None:
        self.offset = 0  # blob offset of the next byte fed
        self.frames: list[Frame] = []
        self.regular = 0  # regular frames begun
        self.state = MAGIC
        self.need = 4  # bytes of the field being collected
        self.field = bytearray()
        self.skip = 0  # bytes to pass over (a block's body, a skippable frame's data)
        self.after_skip: Callable[[], None] | None = None
        # The frame being walked.
        self.frame_start = 0
        self.descriptor = 0
        self.window_size = 0
        self.content_size: int | None = None
        self.has_checksum = False
        self.skippable_magic = 0
        self.last_block = False

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self.skip:
                step = min(self.skip, size - pos)
                pos += step
                self.offset += step
                self.skip -= step
                if not self.skip:
                    self._skipped()
                continue
            take = min(self.need - len(self.field), size - pos)
            self.field += data[pos : pos + take]
            pos += take
            self.offset += take
            if len(self.field) == self.need:
                field = bytes(self.field)
                self.field.clear()
                self._parse(field)

    def finish(self) -> list[Frame]:
        """Every frame, once the whole blob was fed; raises if the stream is cut short."""
        if self.between_frames() and not self.field:
            if not self.frames:
                raise CompressionError("zstd stream is empty")
            return self.frames
        if self.between_frames() and not is_magic_prefix(bytes(self.field)):
            raise self.garbage()
        if self.state == MAGIC:
            what = f"in a frame magic at blob offset {self.offset - len(self.field)}"
        elif self.state == SKIP_SIZE or self.skippable_magic:
            what = f"in the skippable frame at blob offset {self.frame_start}"
        else:
            what = f"in zstd frame {self.regular} (at blob offset {self.frame_start})"
        raise CompressionError(f"zstd stream is truncated {what}")

    def between_frames(self) -> bool:
        """Whether the bytes fed end where a frame does (or in the magic of the next)."""
        return self.state == MAGIC and not self.skip

    def garbage(self) -> CompressionError:
        """The error for the bytes where a frame magic should be."""
        start = self.offset - len(self.field)
        if not self.frames:
            return CompressionError(
                f"not a zstd stream: it starts with {bytes(self.field).hex()}, not a frame magic"
            )
        return CompressionError(f"garbage after the last zstd frame, at blob offset {start}")

    def _skip(self, count: int, then: Callable[[], None]) -> None:
        if count:
            self.skip = count
            self.after_skip = then
        else:
            then()

    def _skipped(self) -> None:
        then, self.after_skip = self.after_skip, None
        assert then is not None
        then()

    def _expect(self, state: int, need: int) -> None:
        self.state = state
        self.need = need

    def _parse(self, field: bytes) -> None:
        state = self.state
        if state == BLOCK_HEADER:
            self._block_header(int.from_bytes(field, "little"))
        elif state == MAGIC:
            self._magic(field)
        elif state == DESCRIPTOR:
            self._descriptor(field[0])
        elif state == HEADER:
            self._header(field)
        elif state == CHECKSUM:
            self._end_frame()
        elif state == SKIP_SIZE:
            self._skip(int.from_bytes(field, "little"), self._end_skippable)

    def _magic(self, field: bytes) -> None:
        magic = int.from_bytes(field, "little")
        self.frame_start = self.offset - 4
        if magic == FRAME_MAGIC:
            self.regular += 1
            self.skippable_magic = 0
            self._expect(DESCRIPTOR, 1)
        elif magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
            self.skippable_magic = magic
            self._expect(SKIP_SIZE, 4)
        else:
            self.field = bytearray(field)  # for the message: where the stray bytes begin
            raise self.garbage()

    def _descriptor(self, descriptor: int) -> None:
        number = self.regular
        if descriptor & 0x08:
            raise CompressionError(
                f"zstd frame {number} (at blob offset {self.frame_start}) is damaged: "
                "reserved bit set in its frame header"
            )
        self.descriptor = descriptor
        single_segment = bool(descriptor & 0x20)
        fcs_flag = descriptor >> 6
        fcs_size = 1 if fcs_flag == 0 and single_segment else FCS_SIZES[fcs_flag]
        rest = (0 if single_segment else 1) + DICT_ID_SIZES[descriptor & 3] + fcs_size
        self._expect(HEADER, rest)  # at least one byte: a window or a content size

    def _header(self, field: bytes) -> None:
        descriptor, number = self.descriptor, self.regular
        single_segment = bool(descriptor & 0x20)
        pos = 0
        window = 0
        if not single_segment:
            exponent, mantissa = field[0] >> 3, field[0] & 7
            base = 1 << (10 + exponent)
            window = base + (base >> 3) * mantissa
            pos = 1
        dict_size = DICT_ID_SIZES[descriptor & 3]
        dictionary = int.from_bytes(field[pos : pos + dict_size], "little")
        pos += dict_size
        content_size: int | None = None
        if pos < len(field):
            content_size = int.from_bytes(field[pos:], "little")
            if len(field) - pos == 2:
                content_size += 256  # the 2-byte field is offset by 256
        if single_segment:
            assert content_size is not None
            window = content_size
        where = f"zstd frame {number} (at blob offset {self.frame_start})"
        if dictionary:
            raise CompressionError(f"{where} needs zstd dictionary {dictionary}, which ocifs lacks")
        if window > MAX_WINDOW:
            raise CompressionError(
                f"{where} needs a {window >> 20} MiB window, over the {MAX_WINDOW >> 20} MiB "
                "libzstd decodes"
            )
        self.window_size = window
        self.content_size = content_size
        self.has_checksum = bool(descriptor & 0x04)
        self._expect(BLOCK_HEADER, 3)

    def _block_header(self, header: int) -> None:
        self.last_block = bool(header & 1)
        kind = (header >> 1) & 3
        size = header >> 3
        if kind == RESERVED or size > MAX_BLOCK:
            what = "a reserved block type" if kind == RESERVED else f"a block of {size} bytes"
            raise CompressionError(
                f"zstd frame {self.regular} is damaged: {what} at blob offset {self.offset - 3}"
            )
        self._skip(1 if kind == RLE else size, self._after_block)

    def _after_block(self) -> None:
        if not self.last_block:
            self._expect(BLOCK_HEADER, 3)
        elif self.has_checksum:
            self._expect(CHECKSUM, 4)
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames.append(
            Frame(
                self.regular,
                self.frame_start,
                self.offset,
                False,
                self.content_size,
                self.has_checksum,
                self.window_size,
            )
        )
        self._expect(MAGIC, 4)

    def _end_skippable(self) -> None:
        self.frames.append(
            Frame(0, self.frame_start, self.offset, True, magic=self.skippable_magic)
        )
        self.skippable_magic = 0
        self._expect(MAGIC, 4)


def is_magic_prefix(data: bytes) -> bool:
    """Whether ``data`` (under 4 bytes) could begin a frame magic, regular or skippable."""
    if FRAME_MAGIC.to_bytes(4, "little").startswith(data):
        return True
    skippable = SKIPPABLE_MAGIC.to_bytes(4, "little")  # its first byte's low nibble varies
    return data[0] & 0xF0 == skippable[0] and skippable[1:].startswith(data[1:])


def frame_window(blob: BlobHandle, offset: int) -> int:
    """The window of the frame at blob offset ``offset`` (what a decoder of it allocates), from
    its header; 0 if the header cannot be read (the reads that need it will say why)."""
    walker = FrameWalker()
    try:
        walker.feed(blob.pread(MAX_HEADER, offset))
    except (CompressionError, OSError):
        return 0
    return walker.window_size if walker.state == BLOCK_HEADER or walker.frames else 0


def walk_frames(blob: Readable) -> list[Frame]:
    """The frames of a whole blob, without decoding them."""
    walker = FrameWalker()
    while chunk := blob.read(CHUNK):
        walker.feed(chunk)
    return walker.finish()


def decompress(data: bytes, limit: int) -> bytes:
    """A whole small zstd stream (zstd:chunked's TOC), walked and decoded as strictly as a
    layer; CompressionError if it is damaged or holds more than ``limit`` bytes."""
    indexer = ZstdIndexer(io.BytesIO(data))
    try:
        decoded = indexer.read(limit + 1)
        if len(decoded) > limit:
            raise CompressionError(f"zstd stream holds more than the {limit} bytes expected")
        indexer.drain()
        return decoded
    finally:
        indexer.close()


# ---- indexing ----


@dataclass
class ZstdIndex:
    """What the indexing pass finds: seek points (one per regular frame that holds data, in
    the gzip layout with empty windows) and every frame, skippable ones too."""

    points: SeekPoints
    frames: list[Frame]


def frame_points(starts: list[tuple[int, int]], size: int, compressed_size: int) -> SeekPoints:
    """SeekPoints from (uncompressed, compressed) frame starts: no bits, no windows."""
    uncompressed = array.array("Q", [u for u, _ in starts])
    return SeekPoints(
        spacing=0,
        uncompressed=uncompressed,
        compressed=array.array("Q", [c for _, c in starts]),
        bits=bytes(len(starts)),
        window_offsets=array.array("Q", bytes(8 * (len(starts) + 1))),
        windows=b"",
        size=size,
        compressed_size=compressed_size,
    )


class ZstdIndexer:
    """One strict pass over a zstd blob: yields the decoded stream, records frame starts.

    Each chunk of the blob goes to the walker first (so a structural fault is reported as
    one), then to libzstd (which checks content checksums); the decoder must end a frame
    exactly where the walker says each one ends, and a frame that gives its content size
    must hold that many bytes.
    """

    def __init__(self, blob: Readable, on_input: Callable[[bytes], None] | None = None) -> None:
        self.blob = blob
        self.on_input = on_input
        self.walker = FrameWalker()
        self.decoder: Decoder | None = Decoder()
        self.blob_offset = 0  # blob bytes read and fed
        self.produced = 0  # decoded bytes (ahead of ``uncompressed``)
        self.uncompressed = 0  # decoded bytes handed out
        self.frame_begin = 0  # ``produced`` where the frame being decoded began
        self.ended_frames = 0  # frames the decoder has finished
        self.starts: list[tuple[int, int]] = []
        self.ended = False
        self.failure: str | None = None
        self.out = ctypes.create_string_buffer(OUT_SIZE)
        self.out_address = ctypes.addressof(self.out)
        self.pending = 0  # out[pending:filled] is decoded but not yet handed out
        self.filled = 0

    def read(self, size: int) -> bytes:
        """The next up-to-``size`` bytes of the decoded stream; short only at the end."""
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

    def finish(self) -> ZstdIndex:
        """The seek points and frames; only once the end of the stream was reached."""
        if not self.ended:
            raise RuntimeError("the zstd stream was not read to its end")
        frames = self.walker.frames
        starts = self.starts or [(0, 0)]  # only skippable frames: nothing to decode
        logger.debug(
            "zstd stream of %d bytes (%d compressed, %d frames): %d seek points",
            self.produced,
            self.blob_offset,
            len(frames),
            len(starts),
        )
        return ZstdIndex(frame_points(starts, self.produced, self.blob_offset), frames)

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.end()
            self.decoder = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _refill(self) -> None:
        if self.failure is not None:
            raise CompressionError(self.failure)
        if self.decoder is None:
            raise RuntimeError("the zstd indexer was closed")
        try:
            self._fill(self.decoder)
        except CompressionError as error:
            self.failure = str(error)
            self.close()
            raise
        except BaseException:  # on_input stopped us, or the blob could not be read
            self.failure = "the zstd indexing was stopped"
            self.close()
            raise

    def _fill(self, decoder: Decoder) -> None:
        """Decode into the output buffer, from its start, until it is full or the blob ends."""
        room = OUT_SIZE
        address = self.out_address
        while room:
            if not decoder.pending_input() and not self._read_input(decoder):
                self._at_end()
                break
            consumed_before = decoder.inp.pos
            try:
                made, ret = decoder.decode(address + OUT_SIZE - room, room)
            except DecoderError as error:
                if self.ended_frames == len(self.walker.frames) and self.walker.between_frames():
                    # libzstd balks at bytes after the last frame the walker knows: stray
                    # bytes too few yet for the walker to judge.
                    raise self.walker.garbage() from None
                raise self._damaged(decoder, str(error)) from None
            room -= made
            self.produced += made
            if ret == 0:
                self._frame_ended(self.blob_offset - decoder.pending_input())
            elif not made and decoder.inp.pos == consumed_before and decoder.pending_input():
                raise self._damaged(decoder, "the decoder makes no progress")
        self.pending = 0
        self.filled = OUT_SIZE - room

    def _read_input(self, decoder: Decoder) -> bool:
        chunk = self.blob.read(CHUNK)
        if not chunk:
            return False
        if self.on_input is not None:
            self.on_input(chunk)
        self.walker.feed(chunk)  # structure first: its messages are the clearer ones
        self.blob_offset += len(chunk)
        decoder.set_input(chunk)
        return True

    def _frame_ended(self, end: int) -> None:
        """libzstd finished a frame at blob offset ``end``: the walker's next frame must end
        there too."""
        frames = self.walker.frames
        if self.ended_frames >= len(frames) or frames[self.ended_frames].end != end:
            walked = frames[self.ended_frames].end if self.ended_frames < len(frames) else None
            raise CompressionError(
                f"zstd stream is damaged: libzstd ends a frame at blob offset {end}, "
                f"its block headers at {walked}"
            )
        frame = frames[self.ended_frames]
        self.ended_frames += 1
        if frame.skippable:
            return
        held = self.produced - self.frame_begin
        if frame.content_size is not None and held != frame.content_size:
            raise CompressionError(
                f"zstd frame {frame.number} is damaged: it holds {held} bytes, "
                f"its header says {frame.content_size}"
            )
        if self.starts and self.starts[-1][0] == self.frame_begin:
            # The frame before held nothing: this one serves the same offset.
            self.starts.pop()
        self.starts.append((self.frame_begin, frame.start))
        self.frame_begin = self.produced

    def _at_end(self) -> None:
        frames = self.walker.finish()  # truncation, stray bytes
        if self.ended_frames != len(frames):
            raise CompressionError(
                f"zstd stream is truncated: libzstd did not finish frame {self.ended_frames + 1}"
            )
        self.ended = True
        self.close()

    def _damaged(self, decoder: Decoder, reason: str) -> CompressionError:
        offset = self.blob_offset - decoder.pending_input()
        number = next(
            (f.number for f in self.walker.frames[self.ended_frames :] if not f.skippable),
            self.walker.regular,
        )
        return CompressionError(
            f"zstd frame {number} is damaged near blob offset {offset}: {reason}"
        )


# ---- reading ----


class ZstdCursor:
    """A decoder positioned somewhere in the decoded stream; reads forward from there, across
    frames. Not thread safe (the caller locks).

    It checks the frame boundaries the index recorded: a frame must end exactly where a seek
    point (or the end of the stream) is, and never run past one, so a damaged or replaced
    blob fails the read instead of shifting the data."""

    def __init__(self, blob: BlobHandle, points: SeekPoints, index: int) -> None:
        if not 0 <= index < len(points):
            raise IndexError(f"no zstd seek point {index} (there are {len(points)})")
        self.blob = blob
        self.points = points
        self.position = points.uncompressed[index]
        self.input_offset = points.compressed[index]  # blob offset of the next read
        self.chunk = FIRST_CURSOR_CHUNK
        self.failure: str | None = None
        self.scratch: ctypes.Array[ctypes.c_char] | None = None
        self.decoder: Decoder | None = Decoder()
        self.next_point = index + 1  # the boundary where the frame being decoded must end
        self.frame_done = False  # the decoder ended the data frame at ``position``

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the stream."""
        size = min(size, self.points.size - self.position)
        if size <= 0:
            return b""
        return rawbytes.filled(size, self._decode_into)

    def skip(self, count: int) -> None:
        """Advance by ``count`` bytes (at most to the end) without keeping them."""
        count = min(count, self.points.size - self.position)
        address = self._buffer(SCRATCH_SIZE)
        while count > 0:
            step = min(count, SCRATCH_SIZE)
            self._decode_into(address, step)
            count -= step

    def _buffer(self, size: int) -> int:
        """The address of a buffer of at least ``size`` bytes, kept for the next skip."""
        if self.scratch is None or len(self.scratch) < size:
            self.scratch = ctypes.create_string_buffer(max(size, SCRATCH_SIZE))
        return ctypes.addressof(self.scratch)

    def close(self) -> None:
        """Free the decoder; idempotent."""
        if self.decoder is not None:
            self.decoder.end()
            self.decoder = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _decode_into(self, address: int, size: int) -> None:
        """Decode exactly ``size`` bytes to ``address``, and advance."""
        if self.failure is not None:
            raise CompressionError(self.failure)
        if self.decoder is None:
            raise ValueError("read from a closed zstd cursor")
        try:
            self._decode(self.decoder, address, size)
        except BaseException as error:
            # The decoder is somewhere in the middle of this read: it cannot go on.
            self.failure = str(error) if isinstance(error, CompressionError) else "stopped"
            self.close()
            raise

    def _boundary(self) -> int:
        points = self.points
        return (
            points.uncompressed[self.next_point] if self.next_point < len(points) else points.size
        )

    def _decode(self, decoder: Decoder, address: int, size: int) -> None:
        done = 0
        stalls = 0
        while done < size:
            # Never past the next boundary: there the frame must end before more is decoded.
            room = min(size - done, self._boundary() - self.position)
            if not decoder.pending_input():
                self._read_input(decoder)
            before = decoder.inp.pos
            try:
                made, ret = decoder.decode(address + done, room)
            except DecoderError as error:
                raise self._damaged(decoder, str(error)) from None
            if made:
                self.frame_done = False
            done += made
            self.position += made
            if ret == 0:
                self._frame_ended(decoder)
            if made or decoder.inp.pos != before or ret == 0:
                stalls = 0
            else:
                stalls += 1
                if stalls > 2:  # input there, no room for output: the frame runs long
                    raise self._damaged(decoder, "a frame runs past its indexed end")

    def _frame_ended(self, decoder: Decoder) -> None:
        """The decoder ended a frame: the data frame must end at the next boundary; the
        skippable or empty frames after it end where it did."""
        if self.frame_done:
            return
        if self.position != self._boundary():
            raise self._damaged(
                decoder,
                f"a frame ends at uncompressed offset {self.position}, "
                f"the index says {self._boundary()}",
            )
        self.next_point += 1
        self.frame_done = True

    def _read_input(self, decoder: Decoder) -> None:
        data = self.blob.pread(self.chunk, self.input_offset)
        if not data:
            raise CompressionError("zstd stream is truncated")
        self.input_offset += len(data)
        self.chunk = min(self.chunk * 2, CURSOR_CHUNK)
        decoder.set_input(data)

    def _damaged(self, decoder: Decoder, reason: str) -> CompressionError:
        offset = self.input_offset - decoder.pending_input()
        return CompressionError(f"zstd stream is damaged near blob offset {offset}: {reason}")
