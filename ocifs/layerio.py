"""Read layer blobs: index a layer in one pass, then serve byte ranges of its tar stream.

Indexing reads the uncompressed tar stream once, front to back: the tar scanner takes the
headers, the diff_id hash takes every byte, and for gzip layers indexed_gzip records seek points
as it goes. A second thread reads the compressed blob for its digest and checks the gzip framing
strictly (CRC, length, truncation, trailing garbage), which indexed_gzip does not always do.
Afterwards a plain tar member is read with ``os.pread``; a gzip member by seeking
indexed_gzip to the nearest seek point, so a read never decompresses the layer from its start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

import indexed_gzip

from .errors import CompressionError, LayerError, LayoutError, OcifsError
from .layout import LayerRef
from .tarscan import TarEntry, scan_tar

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
SEEK_POINT_SPACING = 4 << 20  # one 32 KiB window per 4 MiB: reads start at most 4 MiB back
GZIP_MAGIC = b"\x1f\x8b"

Progress = Callable[[int], None]  # called with the number of compressed bytes just consumed


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

    One indexed_gzip object holds one decompression position, so reads take a lock.
    """

    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.lock = threading.Lock()
        self.gzip: Any = indexed_gzip._IndexedGzipFile(
            filename=str(layer.path),
            spacing=SEEK_POINT_SPACING,
            readbuf_size=256 << 10,
            drop_handles=False,
            auto_build=True,
        )

    def read(self, size: int) -> bytes:
        """Sequential read, used once while indexing (builds the seek points)."""
        try:
            data: bytes = self.gzip.read(size)
        except Exception as error:  # indexed_gzip raises ZranError, CrcError, OSError
            raise CompressionError(f"gzip stream is damaged: {error}") from error
        return data

    def pread(self, offset: int, size: int) -> bytes:
        with self.lock:
            try:
                self.gzip.seek(offset)
                data: bytes = self.gzip.read(size)
            except Exception as error:
                raise DamagedLayer(f"{self.layer.describe()}: {error}") from error
        if len(data) != size:
            raise DamagedLayer(f"{self.layer.describe()}: stream ends before {offset + size}")
        return data

    def close(self) -> None:
        with self.lock:
            self.gzip.close()


def open_reader(layer: LayerRef) -> TarLayerReader | GzipLayerReader:
    if layer.compression == "none":
        return TarLayerReader(layer)
    if layer.compression == "gzip":
        return GzipLayerReader(layer)
    raise LayerError(
        f"{layer.describe()}: {layer.compression} layers ({layer.media_type}) are not supported"
    )


def new_hash(digest: str) -> Any:
    """A hashlib object for the algorithm a digest names (the grammar was checked already)."""
    return hashlib.new(digest.split(":", 1)[0])


class HashingStream:
    """Feeds every byte read through it to a hash, and reports progress."""

    def __init__(self, source: Any, hasher: Any, progress: Progress | None) -> None:
        self.source = source
        self.hasher = hasher
        self.progress = progress

    def read(self, size: int) -> bytes:
        data: bytes = self.source.read(size)
        if self.hasher is not None:
            self.hasher.update(data)
        if self.progress is not None:
            self.progress(len(data))
        return data


def check_gzip_blob(layer: LayerRef, hasher: Any, progress: Progress | None) -> None:
    """Read the compressed blob once: hash it, and check every gzip member strictly (B3)."""
    with open(layer.path, "rb") as blob:
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        members = 1
        pending = b""
        while True:
            chunk = blob.read(CHUNK)
            if hasher is not None:
                hasher.update(chunk)
            if progress is not None:
                progress(len(chunk))
            if not chunk:
                break
            data = pending + chunk if pending else chunk
            pending = b""
            while data:
                if decompressor.eof:
                    if not data.startswith(GZIP_MAGIC[: len(data)]):
                        check_trailing_zeros(data, blob, layer, hasher, progress)
                        return
                    if len(data) < 2:
                        pending = data
                        break
                    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    members += 1
                try:
                    decompressor.decompress(data, 1 << 16)
                    while decompressor.unconsumed_tail and not decompressor.eof:
                        decompressor.decompress(decompressor.unconsumed_tail, 1 << 16)
                except zlib.error as error:
                    raise CompressionError(f"gzip member {members} is damaged: {error}") from error
                data = decompressor.unused_data if decompressor.eof else b""
        if not decompressor.eof or pending:
            raise CompressionError("gzip stream is truncated")


def check_trailing_zeros(
    data: bytes, blob: BinaryIO, layer: LayerRef, hasher: Any, progress: Progress | None
) -> None:
    """Zero padding after the last member is tolerated (as gzip does); anything else is not."""
    while True:
        if data.strip(b"\0"):
            raise CompressionError("garbage after the end of the gzip stream")
        data = blob.read(CHUNK)
        if not data:
            return
        if hasher is not None:
            hasher.update(data)
        if progress is not None:
            progress(len(data))


def check_digest(what: str, expected: str, hasher: Any) -> None:
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
    layer: LayerRef, verify: bool = True, progress: Progress | None = None
) -> IndexedLayer:
    """Index one layer in one pass; raises LayerError naming the layer on any problem."""
    try:
        reader = open_reader(layer)
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
    return IndexedLayer(layer, entries, reader)


def _index(
    layer: LayerRef,
    reader: TarLayerReader | GzipLayerReader,
    verify: bool,
    progress: Progress | None,
) -> list[TarEntry]:
    diff_hasher = new_hash(layer.diff_id) if verify else None
    if isinstance(reader, TarLayerReader):
        with open(layer.path, "rb") as blob:
            entries = list(scan_tar(HashingStream(blob, diff_hasher, progress)))
        if diff_hasher is not None:
            # For an uncompressed layer the blob digest and the diff_id hash the same bytes.
            check_digest("layer digest", layer.digest, diff_hasher.copy())
            check_digest("diff_id", layer.diff_id, diff_hasher)
        return entries
    with ThreadPoolExecutor(max_workers=1) as pool:
        blob_hasher = new_hash(layer.digest) if verify else None
        check = pool.submit(check_gzip_blob, layer, blob_hasher, progress) if verify else None
        try:
            entries = list(scan_tar(HashingStream(reader, diff_hasher, None)))
        finally:
            problem = check.exception() if check is not None else None
        if problem is not None:
            raise problem  # a broken gzip stream explains a tar error better than the tar error
    if blob_hasher is not None:
        check_digest("layer digest", layer.digest, blob_hasher)
    if diff_hasher is not None:
        check_digest("diff_id", layer.diff_id, diff_hasher)
    return entries
