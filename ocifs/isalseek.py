"""gzseek's ``GzipIndexer`` and ``GzipCursor`` with ISA-L's inflate, which is faster than zlib's.

The same strict pass (header, CRC32 and ISIZE of every member, truncation, trailing
garbage: B3) and the same ``SeekPoints``: a point is a deflate block boundary (a blob offset,
the unused bits of the byte before it, the 32 KiB window), so gzseek's zlib cursors enter the
stream at points this indexer found, and a stream indexed either way serves the same bytes.

ISA-L cannot be told to stop at a block boundary, so once a point is due the indexer looks
for one (``_search``): it copies the inflate state aside, feeds ``SEARCH_STEP`` bytes of
input, and sees whether a new block began (its Huffman tables changed, or it is a stored
block). If so it bisects the step, inflating again from the copy each time, for an input end
that falls inside the new block's header: there ISA-L stops in ``ISAL_BLOCK_HDR`` and its
state holds the bit position where the header starts, which is the boundary. A stored
block's length is known, so its end is fed exactly. Blocks whose header fits in one byte
(fixed Huffman codes) may be passed over; the next block serves (``python -m bench.inflate``
measures what the search costs).

``IsalGzipCursor`` enters a point as zlib's cursor does: the window through
``isal_inflate_set_dict``, the bits of the byte before put in the state's bit buffer.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from . import isal
from .errors import CompressionError
from .gzseek import (
    CURSOR_CHUNK,
    GZIP_MAGIC,
    MAX_STALLS,
    OUT_SIZE,
    TRAILER_SIZE,
    WINDOW_SIZE,
    GzipCursor,
    GzipIndexer,
    _address,
)

logger = logging.getLogger(__name__)

SEARCH_STEP = 4 << 10  # input fed at a time while looking for a block boundary


class IsalInflater:
    """One ``inflate_state`` (ours: ctypes memory that does not move) and its input."""

    def __init__(self) -> None:
        lib = isal.LIB
        if lib is None:
            raise RuntimeError("ISA-L is not available")
        self.state = isal.InflateState()
        self.ptr = ctypes.pointer(self.state)
        self.address = ctypes.addressof(self.state)
        self.snapshot: ctypes.Array[ctypes.c_char] | None = None  # the indexer's, made at need
        self.snapshot_address = 0
        lib.isal_inflate_init(self.ptr)
        self.state.crc_flag = isal.ISAL_GZIP
        self.input = b""
        self.input_address = 0
        self.state.next_in = None
        self.state.avail_in = 0

    def set_input(self, data: bytes) -> None:
        self.input = data
        self.input_address = _address(data) if data else 0
        self.state.next_in = self.input_address or None
        self.state.avail_in = len(data)

    def position(self) -> int:
        """How much of the input ISA-L took (into its state, or as output)."""
        if not self.input:
            return 0
        return (self.state.next_in or 0) - self.input_address

    def unconsumed(self) -> bytes:
        return self.input[self.position() :]

    def save(self) -> None:
        if self.snapshot is None:
            self.snapshot = ctypes.create_string_buffer(isal.STATE_SIZE)
            self.snapshot_address = ctypes.addressof(self.snapshot)
        ctypes.memmove(self.snapshot_address, self.address, isal.STATE_SIZE)

    def restore(self) -> None:
        ctypes.memmove(self.address, self.snapshot_address, isal.STATE_SIZE)

    def tables(self) -> bytes:
        """Enough of the Huffman decoding tables of the block being inflated to tell a new
        block (the distance codes' lookup table, and the start of the literal/length one)."""
        return ctypes.string_at(self.address + isal.DIST_TABLE_OFFSET, isal.SMALL_TABLE_SIZE) + (
            ctypes.string_at(self.address + isal.TABLES_OFFSET, 4096)
        )

    def end(self) -> None:
        self.input = b""


class IsalGzipIndexer(GzipIndexer):
    """``GzipIndexer`` inflating with ISA-L; the same reads, checks and seek points."""

    def _new_inflater(self) -> Any:
        self.history = b""  # the last WINDOW_SIZE bytes of output before ``out``
        self.member_start = 0  # uncompressed offset where the current member began
        self.input_start = 0  # blob offset of the inflater's input[0]
        self.fill_start = 0  # uncompressed offset of out[0]
        self.trailer_before = b""  # the last 8 bytes of the input before this one
        return IsalInflater()

    def _read_input(self, inflater: Any) -> bool:
        self.trailer_before = (self.trailer_before + inflater.input)[-8:]
        chunk = self._read_chunk()
        self.input_start = self.blob_offset - len(chunk)
        inflater.set_input(chunk)
        return bool(chunk)

    def _fill(self, inflater: Any) -> None:
        """Inflate into the output buffer, from its start, until it is full or the stream
        ends; record seek points on the way."""
        self._keep_history()
        self.fill_start = self.produced
        state = inflater.state
        room = OUT_SIZE
        stalls = 0
        while room:
            if inflater.position() == len(inflater.input) and not self._read_input(inflater):
                raise CompressionError("gzip stream is truncated")
            due_in = self.point_uncompressed[-1] + self.spacing - self.produced
            before = inflater.position()
            if due_in > 0 or not state.wrapper_flag or self.produced == self.member_start:
                give = min(room, due_in) if due_in > 0 else room
                made = self._run(inflater, len(inflater.input), OUT_SIZE - room, give)
            else:
                made = self._search(inflater, OUT_SIZE - room, room)
            self.produced += made
            room -= made
            if state.block_state == isal.BLOCK_FINISH:
                if not self._next_member(inflater):
                    break
                stalls = 0
            elif made or inflater.position() != before:
                stalls = 0
            else:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise CompressionError(
                        f"gzip member {self.member} is damaged: inflate makes no progress"
                    )
        self.pending = 0
        self.filled = OUT_SIZE - room

    def _keep_history(self) -> None:
        """Before ``out`` is overwritten: keep the end of what it held, for windows."""
        filled = self.filled
        if filled >= WINDOW_SIZE:
            self.history = ctypes.string_at(self.out_address + filled - WINDOW_SIZE, WINDOW_SIZE)
        elif filled:
            kept = self.history[len(self.history) - (WINDOW_SIZE - filled) :]
            self.history = kept + ctypes.string_at(self.out_address, filled)

    def _run(self, inflater: Any, end: int, out_at: int, room: int) -> int:
        """One isal_inflate call on the input up to ``end``, writing at ``out`` + ``out_at``;
        returns the bytes it wrote."""
        state = inflater.state
        state.avail_in = end - inflater.position()
        state.next_out = self.out_address + out_at
        state.avail_out = room
        ret = isal.LIB.isal_inflate(inflater.ptr)  # type: ignore[union-attr]
        made: int = room - state.avail_out
        if ret < 0:
            raise CompressionError(self._damage(inflater, ret))
        return made

    def _damage(self, inflater: Any, ret: int) -> str:
        if ret == -6:  # ISAL_INCORRECT_CHECKSUM: the CRC32, or the length?
            trailer = (self.trailer_before + inflater.input[: inflater.position()])[-8:]
            crc = int.from_bytes(trailer[:4], "little")
            if len(trailer) == 8 and crc == inflater.state.crc:
                return f"gzip member {self.member} is damaged: incorrect length check"
        return f"gzip member {self.member} is damaged: {isal.describe(ret)}"

    def _search(self, inflater: Any, out_at: int, room: int) -> int:
        """Inflate on until a block boundary (or the member's end, or a full buffer); take a
        seek point there. Returns the bytes written."""
        state = inflater.state
        start = inflater.position()
        if state.block_state in (isal.BLOCK_HDR, isal.BLOCK_NEW_HDR):
            # Stopped in a header already: hand out what ISA-L still holds, with no more
            # input, and the boundary is here.
            made = 0 if self._at_boundary(inflater) else self._run(inflater, start, out_at, room)
            if self._at_boundary(inflater) and self._take_point(inflater, out_at + made):
                return made
            if made:
                return made
        rest = len(inflater.input) - start
        if state.block_state == isal.BLOCK_TYPE0 and state.read_in_length % 8 == 0:
            # A stored block: its end is known; end the input there, in its next header.
            step = min(rest, max(0, state.type0_block_len - state.read_in_length // 8))
        else:
            step = min(rest, SEARCH_STEP)
        inflater.save()
        tables = inflater.tables()
        made = self._run(inflater, start + step, out_at, room)
        if self._at_boundary(inflater):
            self._take_point(inflater, out_at + made)
            return made
        if not self._new_block(inflater, tables):
            return made
        # A block began after ``low`` (where the copy is) and its header was read by ``high``.
        low, high = start, start + step
        at = out_at  # where the output at ``low`` ends
        inflater.restore()
        while high - low > 1:
            middle = (low + high) // 2
            made = self._run(inflater, middle, at, room - (at - out_at))
            if self._at_boundary(inflater):
                self._take_point(inflater, at + made)
                return at + made - out_at
            if state.block_state == isal.BLOCK_TYPE0 or not state.avail_out:
                return at + made - out_at  # a stored block began, or the buffer is full
            if self._new_block(inflater, tables):
                high = middle
                inflater.restore()
            else:
                low = middle
                at += made
                inflater.save()
        # The header is inside one byte (fixed Huffman codes): no point at this block.
        return at + self._run(inflater, high, at, room - (at - out_at)) - out_at

    def _at_boundary(self, inflater: Any) -> bool:
        state = inflater.state
        return bool(
            state.block_state in (isal.BLOCK_HDR, isal.BLOCK_NEW_HDR)
            and state.tmp_out_processed == state.tmp_out_valid
        )

    def _new_block(self, inflater: Any, tables: bytes) -> bool:
        state = inflater.state
        if state.block_state in (isal.BLOCK_FINISH, isal.BLOCK_INPUT_DONE):
            return False
        return bool(state.block_state == isal.BLOCK_TYPE0 or inflater.tables() != tables)

    def _take_point(self, inflater: Any, out_end: int) -> bool:
        """A seek point at the block header ISA-L stopped in; ``out_end`` is where the output
        before it ends in ``out``."""
        state = inflater.state
        produced = self.fill_start + out_end
        if produced in (self.member_start, self.point_uncompressed[-1]):
            return False
        byte = self.input_start + inflater.position() - state.tmp_in_size
        bit = 8 * byte - state.read_in_length
        compressed = -(-bit // 8)
        bits = 8 * compressed - bit
        length = min(WINDOW_SIZE, produced - self.member_start)
        if out_end >= length:
            window = ctypes.string_at(self.out_address + out_end - length, length)
        else:
            before = self.history[len(self.history) - (length - out_end) :]
            window = before + ctypes.string_at(self.out_address, out_end)
        self._add_point(produced, compressed, bits, self._compress_window(window))
        return True

    def _restart(self, inflater: Any, header: int) -> None:
        """ISA-L's member change: reset, gzip checks on, and the member's offsets."""
        isal.LIB.isal_inflate_reset(inflater.ptr)  # type: ignore[union-attr]
        inflater.state.crc_flag = isal.ISAL_GZIP
        self.member_start = self.produced
        self.input_start = header


class IsalGzipCursor(GzipCursor):
    """``GzipCursor`` inflating with ISA-L: enters a seek point with its window and the unused
    bits of the byte before it, reads on across members, checks each later member's trailer."""

    def _new_inflater(self) -> Any:
        inflater = IsalInflater()
        inflater.state.crc_flag = isal.ISAL_DEFLATE if self.raw else isal.ISAL_GZIP
        return inflater

    def _enter_block(self, inflater: Any, bits: int, window: bytes) -> None:
        ret = isal.LIB.isal_inflate_set_dict(inflater.ptr, window, len(window))  # type: ignore[union-attr]
        if ret != 0:
            raise CompressionError(f"cannot enter the gzip stream: {isal.describe(ret)}")
        if bits:
            before = self.blob.pread(1, self.input_offset - 1)
            if len(before) != 1:
                raise CompressionError("gzip stream is truncated")
            inflater.state.read_in = before[0] >> (8 - bits)
            inflater.state.read_in_length = bits

    def _inflate(self, inflater: Any, address: int, size: int) -> None:
        state = inflater.state
        done = 0
        stalls = 0
        while done < size:
            if self.member_ended:
                self._next_member(inflater, done)
            if inflater.position() == len(inflater.input):
                self._read_input(inflater)
            before = inflater.position()
            state.avail_in = len(inflater.input) - before
            state.next_out = address + done
            state.avail_out = size - done
            ret = isal.LIB.isal_inflate(inflater.ptr)  # type: ignore[union-attr]
            made = size - done - state.avail_out
            done += made
            if ret < 0:
                raise self._damaged(inflater, isal.describe(ret))
            if state.block_state == isal.BLOCK_FINISH:
                self.member_ended = True
            elif made or inflater.position() != before:
                stalls = 0
            else:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise self._damaged(inflater, "inflate makes no progress")

    def _read_input(self, inflater: Any) -> None:
        data = self.blob.pread(self.chunk, self.input_offset)
        if not data:
            raise CompressionError("gzip stream is truncated")
        self.input_offset += len(data)
        self.chunk = min(self.chunk * 2, CURSOR_CHUNK)
        inflater.set_input(data)

    def _next_member(self, inflater: Any, done: int) -> None:
        state = inflater.state
        # Whole bytes ISA-L read ahead are given back; the bits left are the last byte's pad.
        offset = self._offset(inflater) - state.read_in_length // 8
        if self.raw:
            offset += TRAILER_SIZE
        if self.blob.pread(len(GZIP_MAGIC), offset) != GZIP_MAGIC:
            raise CompressionError(
                f"gzip stream is damaged: it ends at uncompressed offset {self.position + done}"
                f", before the indexed end {self.points.size}"
            )
        isal.LIB.isal_inflate_reset(inflater.ptr)  # type: ignore[union-attr]
        state.crc_flag = isal.ISAL_GZIP
        self.raw = False
        self.member_ended = False
        self.input_offset = offset
        inflater.set_input(b"")

    def _offset(self, inflater: Any) -> int:
        """The blob offset of the next input byte ISA-L has not taken."""
        return int(self.input_offset - (len(inflater.input) - inflater.position()))

    def _damaged(self, inflater: Any, reason: str) -> CompressionError:
        offset = self._offset(inflater)
        return CompressionError(f"gzip stream is damaged near blob offset {offset}: {reason}")
