"""zstd layers without a mount: indexed in one pass, read through frame starts, the block
cache, live cursors and prefetch, stored in the index cache (Z1, Z2)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from chunkedbuild import frames_layer
from layers import big_tar, blob_layer, indexed_layer, open_layer, text_blocks
from tarbuild import f, make_tar

from ocifs.blobs import BlobHandle, FileBlob
from ocifs.blockcache import CACHE_BLOCK, BlockCache
from ocifs.errors import LayerError
from ocifs.gzseek import SeekPoints
from ocifs.indexcache import IndexCache
from ocifs.layerread import (
    CURSOR_MEMORY,
    KEPT_BEHIND,
    ZSTD_CONTEXT_BYTES,
    DamagedLayer,
    ZstdLayerReader,
    open_reader,
)
from ocifs.ocibuild import zstd_bytes
from ocifs.tarscan import TarEntry
from ocifs.zstdseek import ZstdCursor, frame_window


@contextmanager
def counting_cursors() -> Iterator[list[int]]:
    """The seek point of every ZstdCursor started meanwhile."""
    started: list[int] = []
    original = ZstdCursor.__init__

    def counting(self: ZstdCursor, blob: BlobHandle, points: SeekPoints, index: int) -> None:
        started.append(index)
        original(self, blob, points, index)

    ZstdCursor.__init__ = counting  # type: ignore[method-assign]
    try:
        yield started
    finally:
        ZstdCursor.__init__ = original  # type: ignore[method-assign]


def by_name(entries: list[TarEntry]) -> dict[str, TarEntry]:
    return {entry.path.decode(): entry for entry in entries}


def test_z1_index_a_zstd_layer_and_read_back_every_file(tmp_path: Path) -> None:
    """Z1: entries, sizes and digests as for gzip; one frame, one seek point."""
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd"))
    assert indexed.index.verified and indexed.index.uncompressed_size == len(tar)
    assert indexed.points is not None and list(indexed.points.uncompressed) == [0]
    with open_layer(indexed) as reader:
        assert isinstance(reader, ZstdLayerReader)
        entries = by_name(indexed.entries)
        for name, data in files.items():
            assert reader.pread(entries[name].data_offset, entries[name].size) == data


def test_z1_diff_id_is_checked_for_zstd(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    other = zstd_bytes(make_tar([f("a", b"y")]))
    with pytest.raises(LayerError, match="diff_id mismatch"):
        indexed_layer(blob_layer(tmp_path, tar, "zstd", blob=other))


def test_z2_multi_frame_reads_start_at_the_frame_before(tmp_path: Path) -> None:
    """Z2: in a layer of 1 MiB frames, a read starts at the frame before its offset, never
    at the layer's start; random reads match the real bytes."""
    tar, _ = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd", blob=frames_layer(tar, 1 << 20)))
    assert indexed.points is not None and len(indexed.points) == -(-len(tar) // (1 << 20))
    rng = random.Random(5)
    with open_layer(indexed, BlockCache(2 * CACHE_BLOCK)) as reader, counting_cursors() as started:
        for _ in range(60):
            offset = rng.randrange(len(tar) - 4096)
            before = len(started)
            assert reader.pread(offset, 4096) == tar[offset : offset + 4096]
            if len(started) > before:
                point = started[-1]
                assert indexed.points.uncompressed[point] <= offset // CACHE_BLOCK * CACHE_BLOCK
                assert offset - indexed.points.uncompressed[point] < (1 << 20) + CACHE_BLOCK


def test_z2_single_frame_sequential_and_neighbouring_reads_continue(tmp_path: Path) -> None:
    """A file read front to back, then the next file, in a layer that is one frame: one
    cursor does it all, never restarted from the frame's start."""
    first, second = text_blocks(5 << 20, 31), text_blocks(2 << 20, 32)
    tar = make_tar([f("first", first), f("second", second)])
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd"))
    entries = by_name(indexed.entries)
    with open_layer(indexed, BlockCache(1 << 20)) as reader, counting_cursors() as started:
        for name, data in (("first", first), ("second", second)):
            entry = entries[name]
            read = b"".join(
                reader.pread(entry.data_offset + at, min(128 << 10, entry.size - at))
                for at in range(0, entry.size, 128 << 10)
            )
            assert read == data
        assert started == [0]


def test_z2_single_frame_read_behind_the_cursors_restarts_and_caches_little(
    tmp_path: Path,
) -> None:
    """A read before every live cursor starts again at the frame's start; on the way to a
    deep offset only the blocks just behind it are cached, not the whole way."""
    data = text_blocks(24 << 20, 33)
    tar = make_tar([f("data", data)])
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd"))
    offset = by_name(indexed.entries)["data"].data_offset
    cache = BlockCache(64 << 20)
    with open_layer(indexed, cache) as reader, counting_cursors() as started:
        deep = offset + (20 << 20)
        assert reader.pread(deep, 4096) == data[20 << 20 : (20 << 20) + 4096]
        assert len(cache.blocks) <= KEPT_BEHIND // CACHE_BLOCK + 1
        assert reader.pread(offset + 1000, 4096) == data[1000:5096]
        assert started == [0, 0]
        # Just behind the deep read: a cached block, no new cursor.
        behind = deep - CACHE_BLOCK
        assert reader.pread(behind, 10) == data[behind - offset : behind - offset + 10]
        assert started == [0, 0]


def test_z2_prefetch_runs_ahead_in_a_multi_frame_layer(tmp_path: Path) -> None:
    tar, files = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd", blob=frames_layer(tar, 1 << 20)))
    entry = by_name(indexed.entries)["first"]
    with open_layer(indexed) as reader:
        assert isinstance(reader, ZstdLayerReader)
        read = b"".join(
            reader.pread(entry.data_offset + at, min(128 << 10, entry.size - at))
            for at in range(0, entry.size, 128 << 10)
        )
        assert read == files["first"]
        assert reader.prefetcher.jobs_started > 0


def test_b3_damaged_frame_after_indexing_fails_the_read_alone(tmp_path: Path) -> None:
    """B3: a frame damaged after indexing gives DamagedLayer for the reads that reach it;
    reads served by other frames go on."""
    first, second = text_blocks(3 << 20, 34), text_blocks(3 << 20, 35)
    tar = make_tar([f("first", first), f("second", second)])
    blob = frames_layer(tar, 1 << 20)
    layer = blob_layer(tmp_path, tar, "zstd", blob=blob)
    indexed = indexed_layer(layer)
    assert indexed.points is not None
    entries = by_name(indexed.entries)
    with open_layer(indexed) as reader:
        assert isinstance(layer.blob, FileBlob)
        with open(layer.blob.path, "r+b") as damaged:
            damaged.seek(indexed.points.compressed[4] + 100)
            damaged.write(os.urandom(4096))
        entry = entries["second"]
        with pytest.raises(DamagedLayer, match=r"layer 0 \(sha256:.*zstd"):
            for at in range(0, entry.size, 1 << 20):
                reader.pread(entry.data_offset + at, min(1 << 20, entry.size - at))
        assert reader.pread(entries["first"].data_offset, 4096) == first[:4096]


def test_zstd_seek_points_round_trip_through_the_index_cache(tmp_path: Path) -> None:
    """The frame starts are stored as gzip's seek points are (no windows, no bits): the
    layer reads the same from what the cache gives back."""
    tar, files = big_tar()
    layer = blob_layer(tmp_path, tar, "zstd", blob=frames_layer(tar, 1 << 20))
    indexed = indexed_layer(layer)
    cache = IndexCache(tmp_path / "cache")
    cache.store_layer(layer, indexed.index)
    loaded = cache.load_layer(layer, verify=True, with_entries=True)
    assert loaded is not None and loaded.points is not None and indexed.points is not None
    assert list(loaded.points.uncompressed) == list(indexed.points.uncompressed)
    assert list(loaded.points.compressed) == list(indexed.points.compressed)
    assert loaded.entries == indexed.entries
    with open_layer(type(indexed)(layer, loaded)) as reader:
        entry = by_name(indexed.entries)["last-small"]
        assert reader.pread(entry.data_offset, entry.size) == files["last-small"]


def test_open_reader_refuses_a_zstd_layer_without_seek_points(tmp_path: Path) -> None:
    layer = blob_layer(tmp_path, make_tar([f("a", b"x")]), "zstd")
    with pytest.raises(LayerError, match="zstd layer without seek points"):
        open_reader(layer, None, BlockCache())


@pytest.mark.parametrize("level, cursors", [("-1", 16), ("-19", 2)])
def test_z2_live_cursors_as_many_as_their_windows_allow(
    tmp_path: Path, level: str, cursors: int
) -> None:
    """A layer of one frame keeps more live cursors when its window is small (zstd -1: 512
    KiB) than when it is large (zstd -19: 8 MiB): CURSOR_MEMORY bounds them all."""
    tar = make_tar([f("a", text_blocks(1 << 20, 49))])
    layer = blob_layer(tmp_path, tar, "zstd", blob=zstd_bytes(tar, level))
    indexed = indexed_layer(layer)
    with open_layer(indexed) as reader:
        assert isinstance(reader, ZstdLayerReader)
        assert reader.max_cursors == cursors
        assert reader.cursor_bytes == frame_window(reader.blob, 0) + ZSTD_CONTEXT_BYTES
        assert cursors * reader.cursor_bytes <= CURSOR_MEMORY
