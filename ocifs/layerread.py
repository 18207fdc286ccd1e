"""Serve byte ranges of an indexed layer's tar stream, safely from many threads.

``open_reader`` picks a layer's reader from ``READERS`` by its compression. A plain tar
member is read by offset from its blob (``blobs``). A gzip layer is served in aligned
blocks kept in the image's BlockCache: a missing block is inflated by a cursor (gzseek)
started at the seek point before it, or by the live cursor that stopped just before it, so
a file read front to back continues where the last read stopped; once a reader is seen to
be sequential, the prefetcher (``prefetch``) inflates the spans ahead of it in the image's
InflatePool. A zstd layer is served the same way, its cursors (zstdseek) starting at frame
starts. A damaged region fails the read that reaches it (``DamagedLayer``, EIO for the mount)
and nothing else.

Every block inflated, by a read or a prefetch job, is checked against the sums of the
verified indexing pass (``blockcheck``) before any of it is served or cached; a tar layer
with sums is read by whole (smaller) blocks too, checked and sliced. A block that differs is
an EIO for the reads that need it, and is never cached (V1). An index built without
verification has no sums, and its layers are served as they decode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ClassVar, Protocol

from . import gzseek, rawbytes, zstdseek
from .blobs import BlobHandle
from .blockcache import CACHE_BLOCK, BlockCache
from .blockcheck import BlockMismatch, BlockSums
from .errors import CompressionError, LayerError
from .gzseek import SeekPoints, new_cursor
from .layout import LayerRef
from .mediatypes import Compression
from .prefetch import Cursor, InflatePool, Prefetcher
from .zstdseek import ZstdCursor, frame_window

logger = logging.getLogger(__name__)

MAX_CURSORS = 4  # live inflaters per layer: sequential readers of a few files at once
KEPT_BEHIND = 4 << 20  # zstd: the passed blocks cached, before the one read
# zstd: live cursors per layer, as many as the image's budget holds (a layer of one long
# frame is read by the cursor nearest before each offset: more cursors, shorter decodes).
ZSTD_MAX_CURSORS = 16
# What the live cursors of all the layers of an image may hold together (CursorBudget):
# 16 one-frame cursors of a zstd layer (2 MiB windows) held 40 MiB, and every layer had its own
# 32 MiB; the rest of the daemon under load fits in about 40 MiB beside the read cache.
CURSOR_MEMORY = 24 << 20
# What one cursor holds: its input (CURSOR_CHUNK), its output scratch, and zlib's window and
# state, or libzstd's context (window aside: its block and literal buffers, measured with
# ZSTD_sizeof_DCtx at 450 KiB over the window).
GZIP_CURSOR_BYTES = gzseek.CURSOR_CHUNK + gzseek.SCRATCH_SIZE + gzseek.WINDOW_SIZE + (8 << 10)
ZSTD_CONTEXT_BYTES = zstdseek.CURSOR_CHUNK + zstdseek.SCRATCH_SIZE + (450 << 10)


class DamagedLayer(OSError):
    """A read hit data that is missing or corrupt; the FUSE adapter answers EIO."""


class LayerReader(Protocol):
    """Random access to the uncompressed tar stream of one layer; safe to call from threads."""

    def pread(self, offset: int, size: int) -> bytes | memoryview:
        """Exactly ``size`` bytes at ``offset`` (a view of a larger read, from a tar layer),
        or DamagedLayer."""
        ...

    def close(self) -> None: ...


class TarLayerReader:
    """An uncompressed layer: the blob is the tar stream, read by offset.

    With block sums, a read takes the whole aligned blocks it overlaps (``CHECK_BLOCK``,
    32 KiB) in one pread, sums them in one tight loop (``BlockSums.check_run``), and serves
    its slice as a view of what it read, without copying (pyfuse3 replies from any
    buffer): a 4 KiB read costs a
    32 KiB pread and one sum. The last block a read checked is kept, as a view: a read that
    falls inside it (small sequential reads) is served from it without a pread. A read that
    only begins in it reads that block again rather than join the two: on this machine
    copying a whole 128 KiB request to join it cost more than reading and summing one
    32 KiB block more (``python -m bench.tarread``). Without sums (an index built with
    ``--no-verify``), exactly the bytes asked for are read."""

    def __init__(self, layer: LayerRef, blocks: BlockSums | None = None) -> None:
        self.layer = layer
        self.blob = layer.blob.open()
        self.blocks = blocks
        # The last block a read checked, (number, its bytes): a view into that read's data.
        self.kept: tuple[int, memoryview] | None = None

    @classmethod
    def open(
        cls,
        layer: LayerRef,
        points: SeekPoints | None,
        cache: BlockCache,
        pool: InflatePool | None,
        blocks: BlockSums | None = None,
        budget: CursorBudget | None = None,
    ) -> TarLayerReader:
        """Its row in READERS: the blob is read as it is, without points, cache, pool or
        cursors."""
        return cls(layer, blocks)

    def pread(self, offset: int, size: int) -> bytes | memoryview:
        blocks = self.blocks
        if blocks is None:
            return self._read(offset, offset + size)
        end = offset + size
        if end > blocks.size:
            raise DamagedLayer(f"{self.layer.describe()}: blob ends before offset {end}")
        if size <= 0:
            return b""
        unit = blocks.block
        first, last = offset // unit, (end - 1) // unit
        start = first * unit
        kept = self.kept  # one read: another thread may replace it meanwhile
        if first == last and kept is not None and kept[0] == first:
            return kept[1][offset - start : end - start]
        stop = min((last + 1) * unit, blocks.size)
        view = memoryview(self._read(start, stop))
        try:
            blocks.check_run(first, view)
        except BlockMismatch as error:
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from None
        self.kept = (last, view[(last - first) * unit :])
        return view[offset - start : end - start]

    def _read(self, start: int, stop: int) -> bytes:
        try:
            data = self.blob.pread(stop - start, start)
        except OSError as error:
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != stop - start:
            raise DamagedLayer(f"{self.layer.describe()}: blob ends before offset {stop}")
        return data

    def close(self) -> None:
        self.blob.close()


class CursorBudget:
    """The memory the live cursors of all the layers of an image hold together, bounded.

    Each reader says what its cursors hold whenever it keeps one more or one fewer. A reader
    that takes the image over the limit asks the others to give back cursors, those holding
    most first; one that is inflating just then keeps its own (it is never waited for), and
    the reader over the limit then gives back its own least recently used ones, down to the
    one it is using. Never held while a reader's lock is waited for.
    """

    def __init__(self, limit: int = CURSOR_MEMORY) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.held: dict[SeekableLayerReader, int] = {}

    def hold(self, reader: SeekableLayerReader, size: int) -> int:
        """Record that ``reader``'s cursors hold ``size`` bytes; how far the image is over."""
        with self.lock:
            if size:
                self.held[reader] = size
            else:
                self.held.pop(reader, None)
            return sum(self.held.values()) - self.limit

    def others(self, reader: SeekableLayerReader) -> list[SeekableLayerReader]:
        """The other readers holding cursors, those holding most first."""
        with self.lock:
            held = sorted(self.held.items(), key=lambda item: -item[1])
        return [other for other, _ in held if other is not reader]


class SeekableLayerReader:
    """A compressed layer read through its seek points, a few live cursors and prefetch jobs:
    gzip (``GzipLayerReader``) and zstd (``ZstdLayerReader``) differ in their cursors only.

    The uncompressed stream is served in aligned blocks kept in the shared BlockCache. A block
    that is not cached is inflated by a cursor: the live one that stopped closest before it
    (a sequential read continues exactly where the last one stopped), one a prefetch job
    parked there, or a new one started at the seek point before it. Blocks a cursor passes on
    its way are cached too: neighbouring files in the same stretch of the layer are read next
    more often than not. Inflating takes the reader's lock; zlib runs without the GIL, so
    other layers are served meanwhile. A block is claimed through the prefetcher before it is
    inflated, so that a read waits for a block a job or another read is producing.
    """

    # How far behind the block read the blocks a cursor passes are cached (None: all of
    # them). A zstd frame can be a whole layer: caching all it passes would flush the cache.
    kept_behind: ClassVar[int | None] = None

    def __init__(
        self,
        layer: LayerRef,
        points: SeekPoints,
        cache: BlockCache,
        pool: InflatePool | None = None,
        blocks: BlockSums | None = None,
        budget: CursorBudget | None = None,
    ) -> None:
        self.layer = layer
        self.points = points
        self.cache = cache
        if blocks is not None and blocks.block != CACHE_BLOCK:
            raise ValueError(f"block sums of {blocks.block} bytes for blocks of {CACHE_BLOCK}")
        self.blocks = blocks  # None: not verified, nothing to check against
        self.blob = layer.blob.open()
        self.lock = threading.Lock()  # the foreground cursors
        self.cursors: list[Cursor] = []  # most recently used last
        self.max_cursors = MAX_CURSORS
        self.cursor_bytes = GZIP_CURSOR_BYTES  # what one cursor holds, about
        # Without the image's, the reader's own: the same bound for this layer alone.
        self.budget = budget if budget is not None else CursorBudget()
        # Without a pool, nothing is inflated ahead of the reads.
        self.prefetcher = Prefetcher(
            layer, self.blob, points, cache, pool, self.open_cursor, blocks
        )
        self.prepare()

    def prepare(self) -> None:
        """Load what the cursors need (a library), so that the first read does not wait."""

    def open_cursor(self, blob: BlobHandle, points: SeekPoints, index: int) -> Cursor:
        """A cursor of this compression at seek point ``index``."""
        raise NotImplementedError

    @classmethod
    def open(
        cls,
        layer: LayerRef,
        points: SeekPoints | None,
        cache: BlockCache,
        pool: InflatePool | None,
        blocks: BlockSums | None = None,
        budget: CursorBudget | None = None,
    ) -> SeekableLayerReader:
        """Its row in READERS: such a layer cannot be read without its seek points."""
        if points is None:
            raise LayerError(f"{layer.describe()}: {layer.compression} layer without seek points")
        return cls(layer, points, cache, pool, blocks, budget)

    @property
    def size(self) -> int:
        return self.points.size

    def pread(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end > self.points.size:
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {end}")
        if size <= 0:
            return b""
        prefetcher = self.prefetcher
        stream = prefetcher.follow(offset, end)
        first, last = offset // CACHE_BLOCK, (end - 1) // CACHE_BLOCK
        if first == last:  # most reads: no list, no join
            if stream is not None:
                prefetcher.schedule(stream, first * CACHE_BLOCK)
            start = first * CACHE_BLOCK
            return self.block(first)[offset - start : end - start]
        # Pieces of the blocks, not slices: the join is the only copy.
        pieces = []
        for number in range(first, last + 1):
            start = number * CACHE_BLOCK
            if stream is not None:
                prefetcher.schedule(stream, start)
            block = self.block(number)
            pieces.append((block, max(offset, start) - start, min(end - start, len(block))))
        return rawbytes.join(pieces)

    def block(self, number: int) -> bytes:
        data = self.cache.get((self.layer.position, number))
        if data is not None:
            return data
        data = self.prefetcher.claim(number)
        if data is not None:
            return data
        try:
            with self.lock:
                return self._inflate_block(number)
        finally:
            self.prefetcher.settle(number)

    def _inflate_block(self, number: int) -> bytes:
        start = number * CACHE_BLOCK
        cursor, opened = self._open_before(start, fresh=False)
        try:
            return self._decode_block(cursor, number)
        except DamagedLayer:
            if opened:
                raise
        # A cursor that came from further back carries what it passed on its way (damage
        # before the seek point, bytes it skipped unchecked); the point's own state does
        # not. So a block is refused only if it is wrong decoded from its own seek point.
        cursor, _ = self._open_before(start, fresh=True)
        return self._decode_block(cursor, number)

    def _open_before(self, start: int, fresh: bool) -> tuple[Cursor, bool]:
        try:
            return self._cursor_before(start, fresh)
        except (CompressionError, OSError) as error:  # a damaged window, an unreadable blob
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error

    def _decode_block(self, cursor: Cursor, number: int) -> bytes:
        """Block ``number``, decoded by ``cursor`` (at or before it), checked and cached;
        DamagedLayer, and the cursor dropped, if it cannot be decoded or differs."""
        start = number * CACHE_BLOCK
        length = min(CACHE_BLOCK, self.points.size - start)
        keep_from = 0 if self.kept_behind is None else start - self.kept_behind
        try:
            while cursor.position < start:
                if cursor.position % CACHE_BLOCK or cursor.position < keep_from:
                    next_block = (cursor.position // CACHE_BLOCK + 1) * CACHE_BLOCK
                    cursor.skip(min(start, next_block) - cursor.position)
                else:
                    passed = cursor.position // CACHE_BLOCK
                    self._keep(passed, cursor.read(CACHE_BLOCK))
            data = cursor.read(length)
        except (CompressionError, OSError) as error:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != length:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {start + length}")
        if self.blocks is not None:
            try:
                self.blocks.check(number, data)
            except BlockMismatch as error:
                self._drop(cursor)  # what it decodes next is suspect too
                where = self.points.compressed[self.points.find(start)]
                raise DamagedLayer(
                    f"{self.layer.describe()}: {error}; {self.layer.compression} data "
                    f"decoded from blob offset {where} on"
                ) from None
        self.cache.put((self.layer.position, number), data)
        return data

    def _keep(self, number: int, data: bytes) -> None:
        """Cache a block a cursor passed on its way, if it checks out; one that does not is
        left out, for the read that wants it to report."""
        if self.blocks is not None:
            try:
                self.blocks.check(number, data)
            except BlockMismatch as error:
                logger.debug("%s: not caching a passed block: %s", self.layer.describe(), error)
                return
        self.cache.put((self.layer.position, number), data)

    def _cursor_before(self, offset: int, fresh: bool = False) -> tuple[Cursor, bool]:
        """The cursor that reaches ``offset`` with the least inflating, and whether it was
        opened just now at the seek point before ``offset`` (always, if ``fresh``)."""
        point = self.points.find(offset)
        floor = self.points.uncompressed[point]
        best: Cursor | None = None
        if not fresh:
            for cursor in self.cursors:
                if cursor.position <= offset and (best is None or cursor.position > best.position):
                    best = cursor
            # Or one a prefetch job left where the reads take over, if it is further on.
            low = floor if best is None else max(floor, best.position + 1)
            parked = self.prefetcher.take_parked(low, offset)
            if parked is not None:
                if len(self.cursors) >= self.max_cursors:
                    self.cursors.pop(0).close()
                self.cursors.append(parked)
                best = parked
        opened = best is None or best.position < floor
        if best is None or opened:
            best = self.open_cursor(self.blob, self.points, point)
            if len(self.cursors) >= self.max_cursors:
                self.cursors.pop(0).close()
        else:
            self.cursors.remove(best)
        self.cursors.append(best)
        self._within_budget()
        return best, opened

    def _within_budget(self) -> None:
        """Give back cursors while the image's hold more than its budget: the other layers'
        first, then this one's, least recently used first, never the one in use (the last).
        Called under ``self.lock``."""
        over = self.budget.hold(self, len(self.cursors) * self.cursor_bytes)
        if over <= 0:
            return
        for other in self.budget.others(self):
            if other.shed() and self.budget.hold(self, len(self.cursors) * self.cursor_bytes) <= 0:
                return
        while len(self.cursors) > 1 and over > 0:
            self.cursors.pop(0).close()
            over = self.budget.hold(self, len(self.cursors) * self.cursor_bytes)

    def shed(self) -> bool:
        """Close this layer's least recently used cursors while the image is over its budget;
        nothing if the layer is being read just now (its lock is never waited for, so two
        readers asking each other cannot deadlock). Whether any was closed."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            closed = False
            over = self.budget.hold(self, len(self.cursors) * self.cursor_bytes)
            while self.cursors and over > 0:
                self.cursors.pop(0).close()
                closed = True
                over = self.budget.hold(self, len(self.cursors) * self.cursor_bytes)
            return closed
        finally:
            self.lock.release()

    def _drop(self, cursor: Cursor) -> None:
        cursor.close()
        if cursor in self.cursors:
            self.cursors.remove(cursor)
            self.budget.hold(self, len(self.cursors) * self.cursor_bytes)

    def close(self) -> None:
        self.prefetcher.close()  # its jobs use the blob handle: they have stopped once it returns
        with self.lock:
            for cursor in self.cursors:
                cursor.close()
            self.cursors.clear()
            self.budget.hold(self, 0)
            self.blob.close()


class GzipLayerReader(SeekableLayerReader):
    """A gzip layer: cursors inflate from deflate block boundaries, with their windows."""

    def prepare(self) -> None:
        gzseek.cursor_class()  # the inflate library is loaded now, not by the first read

    def open_cursor(self, blob: BlobHandle, points: SeekPoints, index: int) -> Cursor:
        return new_cursor(blob, points, index)


class ZstdLayerReader(SeekableLayerReader):
    """A zstd layer: cursors decode from frame starts (Z2). A layer of one long frame (what
    ``zstd`` writes) is read forward from its start; the live cursors make sequential reads
    and reads of neighbouring files continue, and only the blocks just behind a read are
    cached on the way to it."""

    kept_behind = KEPT_BEHIND

    def __init__(
        self,
        layer: LayerRef,
        points: SeekPoints,
        cache: BlockCache,
        pool: InflatePool | None = None,
        blocks: BlockSums | None = None,
        budget: CursorBudget | None = None,
    ) -> None:
        super().__init__(layer, points, cache, pool, blocks, budget)
        self.cursor_bytes = frame_window(self.blob, points.compressed[0]) + ZSTD_CONTEXT_BYTES
        fit = self.budget.limit // self.cursor_bytes
        self.max_cursors = max(1, min(ZSTD_MAX_CURSORS, fit))

    def open_cursor(self, blob: BlobHandle, points: SeekPoints, index: int) -> Cursor:
        return ZstdCursor(blob, points, index)


# What open_reader calls for a layer stored each way: one row per compression ocifs reads.
OpenReader = Callable[
    [
        LayerRef,
        SeekPoints | None,
        BlockCache,
        InflatePool | None,
        BlockSums | None,
        CursorBudget | None,
    ],
    LayerReader,
]
READERS: dict[Compression, OpenReader] = {
    Compression.NONE: TarLayerReader.open,
    Compression.GZIP: GzipLayerReader.open,
    Compression.ZSTD: ZstdLayerReader.open,
}


def open_reader(
    layer: LayerRef,
    points: SeekPoints | None,
    cache: BlockCache,
    pool: InflatePool | None = None,
    blocks: BlockSums | None = None,
    budget: CursorBudget | None = None,
) -> LayerReader:
    """A reader for an indexed layer; raises LayerError if its blob cannot be opened.

    ``cache``, ``pool`` and ``budget`` are the image's, shared by its layers; without a pool
    nothing is prefetched, without a budget the reader has one of its own. ``blocks`` are the
    index's block sums: every block is checked against them (without, as for an index built
    with ``--no-verify``, nothing is)."""
    open_layer = READERS[layer.compression]  # resolve refused the compressions not listed
    try:
        return open_layer(layer, points, cache, pool, blocks, budget)
    except OSError as error:
        raise LayerError(f"{layer.describe()}: cannot open blob: {error.strerror}") from error
