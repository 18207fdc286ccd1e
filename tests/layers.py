"""Layers for the tests that work without a mount: blobs on disk, their indexes, readers.

One set of helpers for the indexing, reading, prefetch, image and index-cache tests: a
LayerRef for a tar written as a blob (``blob_layer``), an image of such layers
(``image_of``), the data they hold (``text_blocks``, ``big_tar``), a layer indexed
(``indexed_layer``) and its reader opened the way ``load_image`` opens it (``open_layer``).
"""

from __future__ import annotations

import functools
import gzip
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from tarbuild import f, make_tar

from ocifs.blobs import FileBlob
from ocifs.blockcache import BlockCache
from ocifs.gzseek import SeekPoints
from ocifs.layerindex import LayerIndex, index_layer
from ocifs.layerread import GzipLayerReader, LayerReader, open_reader
from ocifs.layout import LayerRef, ResolvedImage
from ocifs.mediatypes import OCI_LAYER_TYPE, Compression
from ocifs.ocibuild import sha256_digest, zstd_bytes
from ocifs.prefetch import PREFETCH_WORKERS, InflatePool, cache_share
from ocifs.tarscan import TarEntry


def blob_layer(
    tmp_path: Path,
    tar: bytes,
    compression: str,
    index: int = 0,
    *,
    blob: bytes | None = None,
    annotations: dict[str, str] | None = None,
) -> LayerRef:
    """Layer ``index`` holding ``tar``, its blob written under ``tmp_path/blobs``: ``blob``
    if given (damaged, or compressed some other way), else ``tar`` stored as ``compression``
    says (gzip at level 1, for speed)."""
    stored = Compression(compression)
    if blob is None:
        if stored is Compression.GZIP:
            blob = gzip.compress(tar, compresslevel=1, mtime=0)
        else:
            blob = zstd_bytes(tar, "-1") if stored is Compression.ZSTD else tar
    digest = sha256_digest(blob)
    path = tmp_path / "blobs" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return LayerRef(
        index,
        digest,
        len(blob),
        OCI_LAYER_TYPE[stored],
        stored,
        sha256_digest(tar),
        FileBlob(path, len(blob)),
        annotations=annotations or {},
    )


def image_of(layers: list[LayerRef]) -> ResolvedImage:
    """An image of these layers, numbered in order, in the layout their blobs are in."""
    layers = [
        LayerRef(
            n,
            x.digest,
            x.size,
            x.media_type,
            x.compression,
            x.diff_id,
            x.blob,
            x.digest_known,
            x.annotations,
        )
        for n, x in enumerate(layers)
    ]
    return ResolvedImage(
        layout=layers[0].blob.path.parent,
        manifest_digest="sha256:" + "0" * 64,
        config_digest="sha256:" + "1" * 64,
        config={},
        platform=None,
        layers=tuple(layers),
    )


def text_blocks(size: int, seed: int) -> bytes:
    """Compressible but not trivial data, so gzip makes real deflate blocks."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=64)) + b"\n"
    return bytes(out[:size])


@functools.cache
def big_tar() -> tuple[bytes, dict[str, bytes]]:
    """A 12 MiB tar (made once per session): text, then random data, then a small file."""
    files = {
        "first": text_blocks(9 << 20, 1),
        "middle": os.urandom(3 << 20),
        "last-small": b"needle at the end\n",
    }
    return make_tar([f(name, data) for name, data in files.items()]), files


class IndexedLayer(NamedTuple):
    """A layer with what indexing it found, as the read tests use the two together."""

    layer: LayerRef
    index: LayerIndex

    @property
    def entries(self) -> list[TarEntry]:
        assert self.index.entries is not None
        return self.index.entries

    @property
    def points(self) -> SeekPoints | None:
        return self.index.points


def indexed_layer(layer: LayerRef, **options: Any) -> IndexedLayer:
    return IndexedLayer(layer, index_layer(layer, **options))


@contextmanager
def open_layer(
    indexed: IndexedLayer, cache: BlockCache | None = None, pool: InflatePool | None = None
) -> Iterator[LayerReader]:
    """The layer's reader as load_image opens it, with a block cache and a prefetch pool;
    a pool made here (like load_image's) is closed after the reader."""
    cache = cache if cache is not None else BlockCache()
    own_pool = InflatePool(PREFETCH_WORKERS, cache_share(cache)) if pool is None else None
    reader = open_reader(indexed.layer, indexed.points, cache, pool or own_pool)
    try:
        yield reader
    finally:
        reader.close()
        if own_pool is not None:
            own_pool.close()


@contextmanager
def open_gzip_layer(
    indexed: IndexedLayer, cache: BlockCache | None = None, pool: InflatePool | None = None
) -> Iterator[GzipLayerReader]:
    with open_layer(indexed, cache, pool) as reader:
        assert isinstance(reader, GzipLayerReader)
        yield reader
