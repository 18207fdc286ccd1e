"""Read layer blobs: index a layer in one pass, then serve byte ranges of its tar stream.

Indexing reads the blob once, front to back. For a gzip layer, gzseek inflates it strictly
(CRC, length, truncation, trailing garbage: B3) and records seek points on the way, while the
layer digest hashes the compressed bytes, the diff_id hash every uncompressed byte and the
tar scanner the headers. Afterwards a plain tar member is read with ``os.pread``; a gzip member
by a cursor started at the seek point before it, or continuing where the last read stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from .errors import CompressionError, LayerError, LayoutError, OcifsError
from .gzseek import DEFAULT_SPACING, GzipCursor, GzipIndexer, SeekPoints
from .layout import LayerRef
from .tarscan import TarEntry, scan_tar

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # what the indexing pass reads and inflates at a time
BLOCK = 256 << 10  # unit of the decompressed-data cache: two of the kernel's 128 KiB reads
BLOCK_CACHE_BYTES = 64 << 20
MAX_CURSORS = 4  # live inflaters per layer: sequential readers of a few files at once

# Called with the number of blob bytes just read; it may raise to stop the indexing.
Progress = Callable[[int], None]


class DamagedLayer(OSError):
    """A read hit data that is missing or corrupt; the FUSE adapter answers EIO."""


class LayerReader(Protocol):
    """Random access to the uncompressed tar stream of one layer; safe to call from threads."""

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, or DamagedLayer."""
        ...

    def close(self) -> None: ...


class TarLayerReader:
    """An uncompressed layer: the blob is the tar stream, read by offset."""

    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.fd = os.open(layer.path, os.O_RDONLY | os.O_CLOEXEC)

    def pread(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as error:
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != size:
            raise DamagedLayer(f"{self.layer.describe()}: blob ends before offset {offset + size}")
        return data

    def close(self) -> None:
        os.close(self.fd)


class GzipLayerReader:
    """A gzip layer, read through its seek points and a few live inflaters.

    The uncompressed stream is served in aligned blocks kept in the shared BlockCache. A block
    that is not cached is inflated by a cursor: the live one that stopped closest before it
    (a sequential read continues exactly where the last one stopped), or a new one started at
    the seek point before it. Blocks a cursor passes on its way are cached too: neighbouring
    files in the same stretch of the layer are read next more often than not. Inflating takes
    the reader's lock; zlib runs without the GIL, so other layers are served meanwhile.
    """

    def __init__(self, layer: LayerRef, points: SeekPoints, cache: BlockCache) -> None:
        self.layer = layer
        self.points = points
        self.cache = cache
        self.fd = os.open(layer.path, os.O_RDONLY | os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.cursors: list[GzipCursor] = []  # most recently used last

    @property
    def size(self) -> int:
        return self.points.size

    def pread(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end > self.points.size:
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {end}")
        pieces = []
        block = offset // BLOCK
        while offset < end:
            data = self.block(block)
            start = block * BLOCK
            pieces.append(data[offset - start : end - start])
            offset = start + len(data)
            block += 1
        return b"".join(pieces)

    def block(self, number: int) -> bytes:
        key = (self.layer.index, number)
        data = self.cache.get(key)
        if data is None:
            with self.lock:
                # Readahead sends neighbouring reads at once: inflate each block only once.
                data = self.cache.get(key)
                if data is None:
                    data = self._inflate_block(number)
        return data

    def _inflate_block(self, number: int) -> bytes:
        start = number * BLOCK
        length = min(BLOCK, self.points.size - start)
        try:
            cursor = self._cursor_before(start)
        except (CompressionError, OSError) as error:  # a damaged window, an unreadable blob
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        try:
            while cursor.position < start:
                if cursor.position % BLOCK:
                    ahead = min(start, (cursor.position // BLOCK + 1) * BLOCK) - cursor.position
                    cursor.skip(ahead)
                else:
                    passed = cursor.position // BLOCK
                    self.cache.put((self.layer.index, passed), cursor.read(BLOCK))
            data = cursor.read(length)
        except (CompressionError, OSError) as error:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != length:
            self._drop(cursor)
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {start + length}")
        self.cache.put((self.layer.index, number), data)
        return data

    def _cursor_before(self, offset: int) -> GzipCursor:
        """The cursor that reaches ``offset`` with the least inflating."""
        point = self.points.find(offset)
        best: GzipCursor | None = None
        for cursor in self.cursors:
            if cursor.position <= offset and (best is None or cursor.position > best.position):
                best = cursor
        if best is None or best.position < self.points.uncompressed[point]:
            best = GzipCursor(self.fd, self.points, point)
            if len(self.cursors) >= MAX_CURSORS:
                self.cursors.pop(0).close()
        else:
            self.cursors.remove(best)
        self.cursors.append(best)
        return best

    def _drop(self, cursor: GzipCursor) -> None:
        cursor.close()
        if cursor in self.cursors:
            self.cursors.remove(cursor)

    def close(self) -> None:
        with self.lock:
            for cursor in self.cursors:
                cursor.close()
            self.cursors.clear()
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class BlockCache:
    """The most recently read decompressed blocks of all layers, bounded by their total size."""

    def __init__(self, limit: int = BLOCK_CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self.lock:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
            return block

    def put(self, key: tuple[int, int], block: bytes) -> None:
        with self.lock:
            old = self.blocks.pop(key, None)
            self.size += len(block) - (len(old) if old is not None else 0)
            self.blocks[key] = block
            while self.size > self.limit and len(self.blocks) > 1:
                _, evicted = self.blocks.popitem(last=False)
                self.size -= len(evicted)


def new_hash(digest: str) -> Any:
    """A hashlib object for the algorithm a digest names (the grammar was checked already)."""
    return hashlib.new(digest.split(":", 1)[0])


class HashingStream:
    """Feeds every byte read through it to some hashes, and reports progress."""

    def __init__(self, source: Any, hashers: list[Any], progress: Progress | None) -> None:
        self.source = source
        self.hashers = hashers
        self.progress = progress

    def read(self, size: int) -> bytes:
        data: bytes = self.source.read(size)
        for hasher in self.hashers:
            hasher.update(data)
        if self.progress is not None:
            self.progress(len(data))
        return data


def verify_hash(what: str, expected: str, hasher: Any) -> None:
    actual = f"{expected.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != expected:
        raise LayoutError(f"{what} mismatch: expected {expected}, blob has {actual}")


class IndexedLayer:
    """A layer after indexing: its entries (archive order), seek points, and whether the
    blob was checked against its digests."""

    def __init__(
        self,
        layer: LayerRef,
        entries: list[TarEntry],
        points: SeekPoints | None,
        uncompressed_size: int,
        verified: bool,
    ) -> None:
        self.layer = layer
        self.entries = entries
        self.points = points
        self.uncompressed_size = uncompressed_size
        self.verified = verified


def check_supported(layer: LayerRef) -> None:
    if layer.compression not in ("none", "gzip"):
        raise LayerError(
            f"{layer.describe()}: {layer.compression} layers ({layer.media_type}) are not supported"
        )


def open_reader(
    layer: LayerRef, points: SeekPoints | None, cache: BlockCache
) -> TarLayerReader | GzipLayerReader:
    """A reader for an indexed layer; raises LayerError if its blob cannot be opened."""
    check_supported(layer)
    try:
        if layer.compression == "gzip":
            if points is None:
                raise LayerError(f"{layer.describe()}: gzip layer without seek points")
            return GzipLayerReader(layer, points, cache)
        return TarLayerReader(layer)
    except OSError as error:
        raise LayerError(f"{layer.describe()}: cannot open blob: {error.strerror}") from error


def index_layer(
    layer: LayerRef,
    verify: bool = True,
    progress: Progress | None = None,
    spacing: int = DEFAULT_SPACING,
) -> IndexedLayer:
    """Index one layer in one pass; raises LayerError naming the layer on any problem."""
    check_supported(layer)
    try:
        with open(layer.path, "rb") as blob:
            return _index(layer, blob, verify, progress, spacing)
    except LayerError:
        raise
    except OcifsError as error:
        raise LayerError(f"{layer.describe()}: {error}") from error
    except OSError as error:
        raise LayerError(
            f"{layer.describe()}: cannot read blob: {error.strerror or error}"
        ) from error


class ReadAhead:
    """Reads a stream in a thread of its own, a few chunks ahead of its consumer.

    Indexing a layer is two jobs: inflating and hashing (zlib and hashlib let go of the GIL)
    and scanning tar headers (Python, holding it). Run one after the other they add up; in two
    threads they overlap, and a layer indexes in about the time of the slower one. Whatever
    the producer raises (damage, a digest check, Ctrl-C's stop) is raised again in ``read``.
    """

    def __init__(
        self, read: Callable[[int], bytes], name: str, hashers: list[Any], depth: int = 4
    ) -> None:
        self.source = read
        self.hashers = hashers  # fed here, in the consumer's thread: it has time to spare
        self.chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.ended = False
        self.thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        try:
            while not self.stopped.is_set():
                chunk = self.source(CHUNK)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stopped.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int) -> bytes:
        """The next chunk (the scanner asks for CHUNK bytes; chunks are at most that)."""
        if self.ended:
            return b""
        item = self.chunks.get()
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        if not item:
            self.ended = True
        for hasher in self.hashers:
            hasher.update(item)
        return item

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _index(
    layer: LayerRef,
    blob: BinaryIO,
    verify: bool,
    progress: Progress | None,
    spacing: int,
) -> IndexedLayer:
    diff_hasher = new_hash(layer.diff_id) if verify else None
    name = f"read-layer-{layer.index}"
    if layer.compression == "none":
        # The blob is the tar stream: the layer digest and the diff_id hash the same bytes,
        # so one hash serves both when they name the same algorithm.
        blob_hasher = new_hash(layer.digest) if verify else None
        same_algorithm = layer.digest.split(":")[0] == layer.diff_id.split(":")[0]
        hashers = [diff_hasher] if same_algorithm else [diff_hasher, blob_hasher]
        counter = HashingStream(blob, [], progress)
        with ReadAhead(counter.read, name, [h for h in hashers if h]) as stream:
            entries = list(scan_tar(stream))
            stream.drain()
        if diff_hasher is not None:
            verify_hash(
                "layer digest", layer.digest, diff_hasher.copy() if same_algorithm else blob_hasher
            )
            verify_hash("diff_id", layer.diff_id, diff_hasher)
        return IndexedLayer(layer, entries, None, blob.tell(), verify)

    # Three threads: this one scans, one inflates, one hashes the compressed blob.
    blob_digest = BlobHash(layer) if verify else None
    advance = None if progress is None else (lambda chunk: progress(len(chunk)))
    indexer = GzipIndexer(blob, spacing, advance)
    try:
        with ReadAhead(indexer.read, name, [diff_hasher] if diff_hasher else []) as stream:
            entries = list(scan_tar(stream))
            stream.drain()
        points = indexer.finish()
    except BaseException:
        if blob_digest is not None:
            blob_digest.cancel()
        raise
    finally:
        indexer.close()
    if blob_digest is not None:
        verify_hash("layer digest", layer.digest, blob_digest.result())
    if diff_hasher is not None:
        verify_hash("diff_id", layer.diff_id, diff_hasher)
    return IndexedLayer(layer, entries, points, points.size, verify)


class BlobHash:
    """The layer digest of a compressed blob, hashed in a thread of its own from a second
    file handle (the blob is in the page cache: the inflating pass reads it meanwhile)."""

    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.hasher = new_hash(layer.digest)
        self.error: OSError | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"hash-layer-{layer.index}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            with open(self.layer.path, "rb") as blob:
                while not self.stopped.is_set():
                    chunk = blob.read(CHUNK)
                    if not chunk:
                        return
                    self.hasher.update(chunk)
        except OSError as error:
            self.error = error

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.hasher

    def cancel(self) -> None:
        self.stopped.set()
        self.thread.join()
