"""Foreground reads of indexed layers, without a mount: by offset, by cached gzip blocks."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest
from layers import (
    big_tar,
    blob_layer,
    indexed_layer,
    open_gzip_layer,
    open_layer,
    text_blocks,
)
from tarbuild import f, make_tar

from ocifs import layerindex, layerread, mediatypes
from ocifs.blockcache import CACHE_BLOCK, BlockCache
from ocifs.errors import LayerError
from ocifs.gzseek import DEFAULT_SPACING, GzipCursor, SeekPoints
from ocifs.layerread import DamagedLayer, TarLayerReader, open_reader


def test_every_supported_compression_has_an_indexer_and_a_reader() -> None:
    assert set(layerindex.INDEXERS) == mediatypes.SUPPORTED
    assert set(layerread.READERS) == mediatypes.SUPPORTED


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_index_and_read_back_every_file(tmp_path: Path, compression: str) -> None:
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression))
    with open_layer(indexed) as reader:
        by_name = {entry.path.decode(): entry for entry in indexed.entries}
        for name, data in files.items():
            entry = by_name[name]
            assert reader.pread(entry.data_offset, entry.size) == data
            middle = entry.size // 2
            assert reader.pread(entry.data_offset + middle, 5) == data[middle : middle + 5]


def test_gzip_reads_start_from_a_seek_point_near_the_offset(tmp_path: Path) -> None:
    """A read near the end of a big gzip layer never decompresses from the layer's start."""
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip"))
    with open_gzip_layer(indexed) as reader:
        points = list(reader.points.uncompressed)
        last = next(e for e in indexed.entries if e.path == b"last-small")
        below = max(point for point in points if point <= last.data_offset)
        assert last.data_offset - below <= DEFAULT_SPACING + (1 << 20)
        assert len(points) >= len(tar) // DEFAULT_SPACING
        assert reader.pread(last.data_offset, last.size) == files["last-small"]
        assert reader.cursors[-1].position - below <= DEFAULT_SPACING + 2 * CACHE_BLOCK


def test_sequential_reads_continue_where_the_last_one_stopped(tmp_path: Path) -> None:
    """Reading a file front to back uses one cursor that moves on; it is never restarted
    from a seek point, and nothing is inflated twice."""
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip"))
    started = []
    original = GzipCursor.__init__

    def counting(self: GzipCursor, fd: int, points: SeekPoints, index: int) -> None:
        started.append(index)
        original(self, fd, points, index)

    entry = next(e for e in indexed.entries if e.path == b"first")
    # A cache too small to hide a restart.
    with open_gzip_layer(indexed, BlockCache(1 << 20)) as reader:
        try:
            GzipCursor.__init__ = counting  # type: ignore[method-assign]
            data = b"".join(
                reader.pread(entry.data_offset + at, min(128 << 10, entry.size - at))
                for at in range(0, entry.size, 128 << 10)
            )
        finally:
            GzipCursor.__init__ = original  # type: ignore[method-assign]
        assert data == files["first"]
        assert len(started) == 1
        assert len(reader.points) > 5  # there were seek points it could have restarted from


def test_blocks_are_shared_by_readers_and_bounded(tmp_path: Path) -> None:
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip"))
    cache = BlockCache(4 * CACHE_BLOCK)
    with open_layer(indexed, cache) as reader:
        entry = next(e for e in indexed.entries if e.path == b"first")
        assert reader.pread(entry.data_offset, entry.size) == files["first"]
        assert cache.size <= 4 * CACHE_BLOCK
        assert len(cache.blocks) == 4


def test_damaged_region_after_indexing_gives_damaged_layer_then_recovers(tmp_path: Path) -> None:
    """B: a read that hits damaged data fails alone; other reads keep working."""
    first, second = text_blocks(6 << 20, 3), text_blocks(6 << 20, 4)
    tar = make_tar([f("first", first), f("second", second)])
    blob = gzip.compress(tar, compresslevel=6)
    ref = blob_layer(tmp_path, tar, "gzip", blob=blob)
    indexed = indexed_layer(ref)
    with open_layer(indexed) as reader:
        entry = {e.path: e for e in indexed.entries}[b"second"]
        with open(ref.blob.path, "r+b") as damaged:
            damaged.seek(len(blob) * 3 // 4)
            damaged.write(os.urandom(64 << 10))
        with pytest.raises(DamagedLayer):
            for offset in range(0, entry.size, 1 << 20):
                reader.pread(entry.data_offset + offset, 1 << 20)
        head = {e.path: e for e in indexed.entries}[b"first"]
        assert reader.pread(head.data_offset, 4096) == first[:4096]


def test_reads_across_seek_points_far_apart(tmp_path: Path) -> None:
    """A run of zeros packs megabytes into one deflate block, so seek points can lie further
    apart than the spacing, and the stream can run on well past the last one."""
    zeros = bytes(40 << 20)
    tail = text_blocks(1 << 20, 7)
    tar = make_tar([f("zeros", zeros), f("tail", tail), f("zeros2", zeros), f("end", b"end")])
    # memLevel 9 lets zlib hold 32k symbols, each up to 258 zeros, in one block: 8.4 MB.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31, 9)
    blob = compressor.compress(tar) + compressor.flush()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip", blob=blob))
    with open_gzip_layer(indexed) as reader:
        points = list(reader.points.uncompressed)
        gaps = [b - a for a, b in zip(points, [*points[1:], reader.size], strict=True)]
        assert max(gaps) > 4 * DEFAULT_SPACING  # the case this test is about
        entries = {e.path: e for e in indexed.entries}
        assert reader.pread(entries[b"tail"].data_offset, len(tail)) == tail
        assert reader.pread(entries[b"end"].data_offset, 3) == b"end"
        middle = entries[b"zeros2"].data_offset + (25 << 20)
        assert reader.pread(middle, 1 << 20) == bytes(1 << 20)


def test_gzip_reader_without_a_pool_reads_alone(tmp_path: Path) -> None:
    """open_reader without a pool (as the index-cache tests use it): nothing prefetched."""
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip"))
    reader = open_reader(indexed.layer, indexed.points, BlockCache())
    assert isinstance(reader, layerread.GzipLayerReader)
    try:
        entry = next(e for e in indexed.entries if e.path == b"first")
        data = b"".join(
            reader.pread(entry.data_offset + at, min(128 << 10, entry.size - at))
            for at in range(0, entry.size, 128 << 10)
        )
        assert data == files["first"]
        assert reader.prefetcher.jobs_started == 0
        assert not reader.prefetcher.pending
    finally:
        reader.close()
    reader.close()  # idempotent


def test_uncompressed_reader_refuses_reads_past_the_blob(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    indexed = indexed_layer(blob_layer(tmp_path, tar, "none"))
    with open_layer(indexed) as reader:
        assert isinstance(reader, TarLayerReader)
        assert reader.pread(len(tar) - 10, 10) == tar[-10:]
        with pytest.raises(DamagedLayer, match="blob ends before offset"):
            reader.pread(len(tar) - 10, 11)


def test_gzip_reader_refuses_reads_past_the_stream(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip"))
    with open_layer(indexed) as reader:
        assert reader.pread(len(tar) - 10, 10) == tar[-10:]
        assert reader.pread(len(tar), 0) == b""
        with pytest.raises(DamagedLayer, match="stream ends before"):
            reader.pread(len(tar) - 10, 11)


def test_open_reader_refuses_a_gzip_layer_without_seek_points(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    layer = blob_layer(tmp_path, tar, "gzip")
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:.*gzip layer without seek points"):
        open_reader(layer, None, BlockCache())


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_open_reader_names_the_layer_of_a_missing_blob(tmp_path: Path, compression: str) -> None:
    tar = make_tar([f("a", b"x")])
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression))
    indexed.layer.blob.path.unlink()
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:.*cannot open blob"):
        open_reader(indexed.layer, indexed.points, BlockCache())
