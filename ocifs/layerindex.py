"""Index a layer in one pass: its entries, seek points and sizes, with its digests checked.

``index_layer`` builds a ``LayerIndex``, the one record of what indexing found; the index
cache stores and loads the same record, and the image's merge and readers use it.

The blob is read once, front to back. For a gzip layer, gzseek inflates it strictly (CRC,
length, truncation, trailing garbage: B3), with ISA-L where it is installed (isalseek), and
records seek points on the way, in a thread of its own (zstdseek does the same for a zstd layer:
frame checksums, frame starts); the tar scanner reads the uncompressed stream, the diff_id hash
and the block sums (``blockcheck``: what every read is checked against later) take every byte of
it in this thread, and the layer digest is hashed from a second file handle in a third. zlib,
ISA-L, libzstd and hashlib let go of the GIL, so the three overlap and a layer indexes in about
the time of the slowest.
Reading the layer afterwards is ``layerread``'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .blobs import BlobStream, Progress
from .blockcheck import CHECK_BLOCK, BlockHasher, BlockSums
from .errors import LayerError, LayoutError, OcifsError
from .gzseek import DEFAULT_SPACING, SeekPoints, new_indexer
from .layout import LayerRef
from .mediatypes import Compression
from .tarscan import TarEntry, scan_tar
from .zstdchunked import check_chunked
from .zstdseek import ZstdIndexer

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # what the indexing pass reads and inflates at a time


class IndexingCancelled(Exception):
    """Raised in an indexing pass once its cancel event is set (Ctrl-C, or another layer
    failed): the pass stops at its next read."""


def new_hash(digest: str) -> Any:
    """A hashlib object for the algorithm a digest names (the grammar was checked already)."""
    return hashlib.new(digest.split(":", 1)[0])


def verify_hash(what: str, expected: str, hasher: Any) -> None:
    actual = f"{expected.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != expected:
        raise LayoutError(f"{what} mismatch: expected {expected}, blob has {actual}")


@dataclass(frozen=True)
class LayerIndex:
    """What indexing a layer finds, built once (by ``index_layer``) or loaded once (from the
    index cache): its entries in archive order, its seek points (for compressions read
    through them), the size of its tar stream, whether its digests were checked, and the
    sums of its stream's blocks (``blockcheck``) that every read is checked against. An
    index built without verification has no sums: they would vouch for bytes nobody
    checked."""

    entries: list[TarEntry] | None  # None when loaded without them: the tree was cached
    points: SeekPoints | None
    uncompressed_size: int
    verified: bool
    blocks: BlockSums | None = None  # only (and always) when verified

    def without_entries(self) -> LayerIndex:
        """The same index without its entries, once the merged tree holds what it needs."""
        return dataclasses.replace(self, entries=None)


def index_layer(
    layer: LayerRef,
    verify: bool = True,
    progress: Progress | None = None,
    spacing: int = DEFAULT_SPACING,
    cancel: threading.Event | None = None,
) -> LayerIndex:
    """Index one layer in one pass; raises LayerError naming the layer on any problem, and
    IndexingCancelled once ``cancel`` is set."""
    indexer = INDEXERS[layer.compression]  # resolve refused the compressions not listed

    def advance(chunk: bytes) -> None:
        if cancel is not None and cancel.is_set():
            raise IndexingCancelled
        if progress is not None:
            progress(len(chunk))

    try:
        with BlobStream(layer.blob) as blob:
            return indexer(layer, blob, verify, advance, spacing)
    except LayerError:
        raise
    except OcifsError as error:
        raise LayerError(f"{layer.describe()}: {error}") from error
    except OSError as error:
        raise LayerError(
            f"{layer.describe()}: cannot read blob: {error.strerror or error}"
        ) from error


class BackgroundStream:
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

    def __enter__(self) -> BackgroundStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Called with each chunk of the blob as it is read; raises IndexingCancelled to stop.
OnInput = Callable[[bytes], None]


def _index_tar(
    layer: LayerRef, blob: BlobStream, verify: bool, advance: OnInput, spacing: int
) -> LayerIndex:
    """An uncompressed layer: the blob is the tar stream, so the layer digest and the
    diff_id hash the same bytes, and one hash serves both when they name one algorithm."""
    diff_hasher = new_hash(layer.diff_id) if verify else None
    same_algorithm = layer.digest.split(":")[0] == layer.diff_id.split(":")[0]
    blob_hasher = new_hash(layer.digest) if verify and not same_algorithm else None
    block_hasher = BlockHasher(CHECK_BLOCK[layer.compression]) if verify else None
    hashers = [h for h in (diff_hasher, blob_hasher, block_hasher) if h is not None]

    def read(size: int) -> bytes:
        chunk = blob.read(size)
        advance(chunk)
        return chunk

    with BackgroundStream(read, f"read-layer-{layer.position}", hashers) as stream:
        entries = list(scan_tar(stream))
        stream.drain()
    if diff_hasher is not None:
        verify_hash("layer digest", layer.digest, blob_hasher or diff_hasher)
        verify_hash("diff_id", layer.diff_id, diff_hasher)
    return LayerIndex(entries, None, blob.tell(), verify, block_sums(block_hasher, blob.tell()))


def _index_gzip(
    layer: LayerRef, blob: BlobStream, verify: bool, advance: OnInput, spacing: int
) -> LayerIndex:
    """A gzip layer, in three threads: this one scans, one inflates (recording seek points),
    one hashes the compressed blob."""
    diff_hasher = new_hash(layer.diff_id) if verify else None
    # Without a known blob digest (a docker-archive's gzip layer) the diff_id checks it all.
    blob_digest = BlobHash(layer) if verify and layer.digest_known else None
    indexer = new_indexer(blob, spacing, advance)
    name = f"read-layer-{layer.position}"
    block_hasher = BlockHasher(CHECK_BLOCK[layer.compression]) if verify else None
    hashers = [h for h in (diff_hasher, block_hasher) if h is not None]
    try:
        with BackgroundStream(indexer.read, name, hashers) as stream:
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
    return LayerIndex(entries, points, points.size, verify, block_sums(block_hasher, points.size))


def _index_zstd(
    layer: LayerRef, blob: BlobStream, verify: bool, advance: OnInput, spacing: int
) -> LayerIndex:
    """A zstd layer, in three threads as gzip: this one scans, one decodes (walking the
    frames, recording their starts), one hashes the blob. A zstd:chunked layer's footer and
    TOC are then checked against the frames and the entries found (Z3)."""
    diff_hasher = new_hash(layer.diff_id) if verify else None
    # Without a known blob digest (a docker-archive's zstd layer) the diff_id checks it all.
    blob_digest = BlobHash(layer) if verify and layer.digest_known else None
    indexer = ZstdIndexer(blob, advance)
    name = f"read-layer-{layer.position}"
    block_hasher = BlockHasher(CHECK_BLOCK[layer.compression]) if verify else None
    hashers = [h for h in (diff_hasher, block_hasher) if h is not None]
    try:
        with BackgroundStream(indexer.read, name, hashers) as stream:
            entries = list(scan_tar(stream))
            stream.drain()
        found = indexer.finish()
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
    check_chunked(layer, found, entries, blob.handle)
    size = found.points.size
    return LayerIndex(entries, found.points, size, verify, block_sums(block_hasher, size))


def block_sums(hasher: BlockHasher | None, size: int) -> BlockSums | None:
    """The sums of the blocks the pass read; it read the whole stream, or it failed."""
    if hasher is None:
        return None
    sums = hasher.finish()
    if sums.size != size:
        raise RuntimeError(f"the block sums cover {sums.size} bytes of a {size}-byte stream")
    return sums


# One indexer per compression ocifs serves (mediatypes.SUPPORTED).
INDEXERS: dict[Compression, Callable[[LayerRef, BlobStream, bool, OnInput, int], LayerIndex]] = {
    Compression.NONE: _index_tar,
    Compression.GZIP: _index_gzip,
    Compression.ZSTD: _index_zstd,
}


class BlobHash:
    """The layer digest of a compressed blob, hashed in a thread of its own from a second
    file handle (the blob is in the page cache: the inflating pass reads it meanwhile)."""

    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.hasher = new_hash(layer.digest)
        self.error: OSError | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"hash-layer-{layer.position}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            with BlobStream(self.layer.blob) as blob:
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
