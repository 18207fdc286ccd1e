"""Read layer blobs: index a layer in one pass, then serve byte ranges of its tar stream.

Indexing reads the blob once, front to back: the layer digest hashes the compressed bytes,
zlib inflates them strictly (CRC, length, truncation, trailing garbage: B3), the diff_id hash
takes every uncompressed byte and the tar scanner the headers. For a gzip layer, indexed_gzip
records its seek points meanwhile, in a child process of its own (gzindex). Afterwards a
plain tar member is read with ``os.pread``; a gzip member from the seek point before it, so a
read never decompresses the layer from its start.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import logging
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

import indexed_gzip

from .errors import CompressionError, LayerError, LayoutError, OcifsError
from .gzindex import SeekPointBuilder
from .layout import LayerRef
from .tarscan import TarEntry, scan_tar

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
GZIP_WBITS = zlib.MAX_WBITS | 16  # zlib checks the gzip header, CRC and length
SEEK_POINT_SPACING = 4 << 20  # one 32 KiB window per 4 MiB: reads start at most 4 MiB back
MAX_SPAN = 2 * SEEK_POINT_SPACING  # the most a read inflates and keeps at once
SPAN_CACHE_BYTES = 32 << 20
GZIP_MAGIC = b"\x1f\x8b"

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
    """A gzip layer, read through indexed_gzip's seek points.

    indexed_gzip inflates every read from the seek point at or before it, so reads are made
    in whole spans between two seek points (no inflating is thrown away), and the last few
    spans are kept for the reads that follow (sequential reads, neighbouring small files).
    One indexed_gzip object holds one decompression position, so reads take a lock.
    """

    def __init__(self, layer: LayerRef, cache: SpanCache) -> None:
        self.layer = layer
        self.cache = cache
        self.lock = threading.Lock()
        self.gzip: Any = indexed_gzip._IndexedGzipFile(
            filename=str(layer.path),
            spacing=SEEK_POINT_SPACING,
            readbuf_size=1 << 20,
            drop_handles=False,
            auto_build=True,
        )
        self.points: list[int] = []  # uncompressed offsets of the seek points, after indexing
        self.size = 0  # length of the uncompressed stream, after indexing

    def load_index(self, exported: bytes, size: int) -> None:
        """Take the seek points that gzindex built (in indexed_gzip's export format), and the
        length of the uncompressed stream."""
        try:
            self.gzip.import_index(fileobj=io.BytesIO(exported))
        except Exception as error:  # indexed_gzip raises ZranError, OSError
            raise CompressionError(f"cannot load the gzip index: {error}") from error
        self.points = sorted(uncompressed for uncompressed, _ in self.gzip.seek_points())
        self.size = size

    def pread(self, offset: int, size: int) -> bytes:
        pieces = []
        end = offset + size
        while offset < end:
            start, span = self.span(offset)
            piece = span[offset - start : end - start]
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        data = b"".join(pieces)
        if len(data) != size:
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {end}")
        return data

    def span(self, offset: int) -> tuple[int, bytes]:
        """The decompressed span holding ``offset``: from its seek point to the next one.

        Seek points can lie further apart than the spacing asks (a deflate block of zeros
        may hold megabytes); such a stretch is cut into spans of MAX_SPAN.
        """
        index = bisect.bisect_right(self.points, offset) - 1
        point = self.points[index] if index >= 0 else 0
        end = self.points[index + 1] if index + 1 < len(self.points) else self.size
        start = point + (offset - point) // MAX_SPAN * MAX_SPAN
        length = min(MAX_SPAN, end - start)
        key = (self.layer.index, start)
        span = self.cache.get(key)
        if span is None:
            with self.lock:
                # Readahead sends neighbouring reads at once: inflate each span only once.
                span = self.cache.get(key)
                if span is None:
                    try:
                        self.gzip.seek(start)
                        span = self.gzip.read(length)
                    except Exception as error:
                        raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
                    self.cache.put(key, span)
        return start, span

    def close(self) -> None:
        with self.lock:
            self.gzip.close()


class SpanCache:
    """The most recently read decompressed spans of all layers, bounded by their total size."""

    def __init__(self, limit: int = SPAN_CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.spans: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self.lock:
            span = self.spans.get(key)
            if span is not None:
                self.spans.move_to_end(key)
            return span

    def put(self, key: tuple[int, int], span: bytes) -> None:
        with self.lock:
            old = self.spans.pop(key, None)
            self.size += len(span) - (len(old) if old is not None else 0)
            self.spans[key] = span
            while self.size > self.limit and len(self.spans) > 1:
                _, evicted = self.spans.popitem(last=False)
                self.size -= len(evicted)


def open_reader(layer: LayerRef, cache: SpanCache) -> TarLayerReader | GzipLayerReader:
    if layer.compression == "none":
        return TarLayerReader(layer)
    if layer.compression == "gzip":
        return GzipLayerReader(layer, cache)
    raise LayerError(
        f"{layer.describe()}: {layer.compression} layers ({layer.media_type}) are not supported"
    )


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


class GzipStream:
    """The uncompressed stream of a gzip blob, read once, strictly (B3).

    Hashes the compressed bytes on the way in (the layer digest), accepts concatenated
    members and zero padding after the last one (as gzip does), and refuses a truncated
    stream, a bad CRC or length, and any other trailing bytes. indexed_gzip is lenient about
    all of these, so the one pass that must see every byte anyway checks them.
    """

    def __init__(self, blob: BinaryIO, hasher: Any, progress: Progress | None) -> None:
        self.blob = blob
        self.hasher = hasher
        self.progress = progress
        self.decompressor = zlib.decompressobj(GZIP_WBITS)
        self.members = 1
        self.input = b""
        self.ended = False
        self.uncompressed = 0  # bytes of the uncompressed stream read so far

    def _next_input(self) -> bytes:
        chunk = self.blob.read(CHUNK)
        if self.hasher is not None:
            self.hasher.update(chunk)
        if self.progress is not None:
            self.progress(len(chunk))
        return chunk

    def read(self, size: int) -> bytes:
        pieces: list[bytes] = []
        wanted = size
        while wanted > 0 and not self.ended:
            if self.decompressor.eof and not self._next_member():
                break
            if not self.input:
                self.input = self._next_input()
                if not self.input:
                    raise CompressionError("gzip stream is truncated")
            try:
                data = self.decompressor.decompress(self.input, wanted)
            except zlib.error as error:
                raise CompressionError(f"gzip member {self.members} is damaged: {error}") from None
            d = self.decompressor
            self.input = d.unused_data if d.eof else d.unconsumed_tail
            pieces.append(data)
            wanted -= len(data)
        self.uncompressed += size - wanted
        return b"".join(pieces)

    def _next_member(self) -> bool:
        """After a member's end: start the next one, or check what follows the last one."""
        while len(self.input) < len(GZIP_MAGIC):
            more = self._next_input()
            if not more:
                break
            self.input += more
        if self.input.startswith(GZIP_MAGIC):
            self.decompressor = zlib.decompressobj(GZIP_WBITS)
            self.members += 1
            return True
        while self.input:
            if self.input.strip(b"\0"):
                raise CompressionError("garbage after the end of the gzip stream")
            self.input = self._next_input()
        self.ended = True
        return False

    def drain(self) -> None:
        """Read to the end, so the whole blob is hashed and checked."""
        while self.read(CHUNK):
            pass


def verify_hash(what: str, expected: str, hasher: Any) -> None:
    actual = f"{expected.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != expected:
        raise LayoutError(f"{what} mismatch: expected {expected}, blob has {actual}")


class IndexedLayer:
    """A layer after indexing: its entries (in archive order) and a reader for its data."""

    def __init__(self, layer: LayerRef, entries: list[TarEntry], reader: LayerReader) -> None:
        self.layer = layer
        self.entries = entries
        self.reader = reader


def index_layer(
    layer: LayerRef,
    verify: bool = True,
    progress: Progress | None = None,
    cache: SpanCache | None = None,
) -> IndexedLayer:
    """Index one layer in one pass; raises LayerError naming the layer on any problem."""
    try:
        reader = open_reader(layer, cache or SpanCache())
    except OSError as error:
        raise LayerError(f"{layer.describe()}: cannot open blob: {error.strerror}") from error
    try:
        entries = _index(layer, reader, verify, progress)
    except OcifsError as error:
        reader.close()
        if isinstance(error, LayerError):
            raise
        raise LayerError(f"{layer.describe()}: {error}") from error
    except OSError as error:
        reader.close()
        raise LayerError(f"{layer.describe()}: cannot read blob: {error}") from error
    except BaseException:  # stopped by the progress callback
        reader.close()
        raise
    return IndexedLayer(layer, entries, reader)


def _index(
    layer: LayerRef,
    reader: TarLayerReader | GzipLayerReader,
    verify: bool,
    progress: Progress | None,
) -> list[TarEntry]:
    diff_hasher = new_hash(layer.diff_id) if verify else None
    blob_hasher = new_hash(layer.digest) if verify else None
    if isinstance(reader, TarLayerReader):
        # The blob is the tar stream: the layer digest and the diff_id hash the same bytes,
        # so one hash serves both when they name the same algorithm.
        same_algorithm = layer.digest.split(":")[0] == layer.diff_id.split(":")[0]
        hashers = [diff_hasher] if same_algorithm else [diff_hasher, blob_hasher]
        with open(layer.path, "rb") as blob:
            entries = list(scan_tar(HashingStream(blob, [h for h in hashers if h], progress)))
        if diff_hasher is not None:
            verify_hash(
                "layer digest", layer.digest, diff_hasher.copy() if same_algorithm else blob_hasher
            )
            verify_hash("diff_id", layer.diff_id, diff_hasher)
        return entries
    seek_points = SeekPointBuilder(layer.path, SEEK_POINT_SPACING)  # on another core, meanwhile
    try:
        with open(layer.path, "rb") as blob:
            stream = GzipStream(blob, blob_hasher, progress)
            entries = list(scan_tar(HashingStream(stream, [diff_hasher] if verify else [], None)))
            stream.drain()
    except BaseException:
        seek_points.cancel()
        raise
    reader.load_index(seek_points.result(), stream.uncompressed)
    if blob_hasher is not None:
        verify_hash("layer digest", layer.digest, blob_hasher)
    if diff_hasher is not None:
        verify_hash("diff_id", layer.diff_id, diff_hasher)
    return entries
