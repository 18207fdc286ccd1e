"""Block checks without a mount (V1): the sums the verified indexing pass takes, their copy in
the index cache, and the readers (and prefetch jobs) refusing a block whose bytes differ from
the indexed ones, without caching it, while every other block reads right."""

from __future__ import annotations

import array
import dataclasses
import gzip
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import xxhash
from chunkedbuild import frames_layer
from damage import bad_blocks, damage, files_hit
from layers import IndexedLayer, big_tar, blob_layer, image_of, indexed_layer, open_layer
from tarbuild import f, make_tar

from ocifs.blobs import FileBlob
from ocifs.blockcache import CACHE_BLOCK, BlockCache
from ocifs.blockcheck import ALGORITHM, CHECK_BLOCK, BlockHasher, BlockMismatch, BlockSums
from ocifs.image import load_image
from ocifs.indexcache import IndexCache
from ocifs.layerindex import index_layer
from ocifs.layerread import (
    DamagedLayer,
    LayerReader,
    SeekableLayerReader,
    TarLayerReader,
    open_reader,
)
from ocifs.mediatypes import Compression
from ocifs.ocibuild import zstd_bytes
from ocifs.prefetch import Cursor, InflatePool, cache_share

COMPRESSIONS = ["none", "gzip", "zstd"]
SPACING = 256 << 10  # a seek point every block or so: small layers have many spans


@pytest.mark.parametrize("unit", sorted(set(CHECK_BLOCK.values())))
def test_hasher_sums_each_block_whatever_the_chunks(unit: int) -> None:
    data = os.urandom(3 * CACHE_BLOCK + 1000)
    expected = [xxhash.xxh3_64_intdigest(data[at : at + unit]) for at in range(0, len(data), unit)]
    for chunk in (1 << 20, unit, unit + 1, 1000, 7, len(data)):
        hasher = BlockHasher(unit)
        for at in range(0, len(data), chunk):
            hasher.update(data[at : at + chunk])
        sums = hasher.finish()
        assert list(sums.sums) == expected, chunk
        assert (sums.size, sums.algorithm, sums.block) == (len(data), ALGORITHM, unit)
    empty = BlockHasher(unit).finish()
    assert (len(empty.sums), empty.size) == (0, 0)


def test_sums_must_cover_the_stream() -> None:
    with pytest.raises(ValueError, match="2 block sums for a stream of"):
        BlockSums(ALGORITHM, CACHE_BLOCK, array.array("Q", [1, 2]), 3 * CACHE_BLOCK)


def test_v1_check_run_checks_whole_blocks_in_one_call() -> None:
    """The tar reader's check (V1): a run of whole blocks from a block's start, the last
    short only at the stream's end, each block summed; anything else is refused."""
    data = random.Random(3).randbytes(10 * 1000 + 123)
    hasher = BlockHasher(1000)
    hasher.update(data)
    sums = hasher.finish()
    view = memoryview(data)
    sums.check_run(0, view)
    sums.check_run(4, view[4000:7000])
    sums.check_run(9, view[9000:])  # the short last block
    with pytest.raises(BlockMismatch, match="not whole blocks"):
        sums.check_run(4, view[4000:6500])
    with pytest.raises(BlockMismatch, match="past the indexed stream"):
        sums.check_run(10, view[:2000])
    spoiled = bytearray(data)
    spoiled[6001] ^= 1
    with pytest.raises(BlockMismatch, match="stream offset 6000-7000 differs"):
        sums.check_run(4, memoryview(spoiled)[4000:8000])


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_v1_the_verified_pass_sums_every_block_of_the_stream(
    tmp_path: Path, compression: str
) -> None:
    """The sums hold the tar stream (the blob itself for an uncompressed layer); an index
    built without verification has none (nothing vouches for the bytes they would hold)."""
    tar, _ = big_tar()
    layer = blob_layer(tmp_path, tar, compression)
    unit = CHECK_BLOCK[layer.compression]
    blocks = index_layer(layer).blocks
    assert blocks is not None and (blocks.size, blocks.block) == (len(tar), unit)
    assert len(blocks.sums) == -(-len(tar) // unit)
    for number in range(len(blocks.sums)):
        blocks.check(number, tar[number * unit : (number + 1) * unit])
    changed = bytearray(tar[unit : 2 * unit])
    changed[100] ^= 1
    with pytest.raises(BlockMismatch, match=f"stream offset {unit}-{2 * unit}"):
        blocks.check(1, bytes(changed))
    with pytest.raises(BlockMismatch):
        blocks.check(1, tar[unit : 2 * unit - 1])  # short
    assert index_layer(layer, verify=False).blocks is None


def with_altered_sum(indexed: IndexedLayer, number: int) -> IndexedLayer:
    """The same index, but its sums say block ``number`` held other bytes: what a reader
    sees when the blob's bytes there changed after indexing."""
    blocks = indexed.index.blocks
    assert blocks is not None
    sums = array.array("Q", blocks.sums)
    sums[number] ^= 1
    index = dataclasses.replace(indexed.index, blocks=dataclasses.replace(blocks, sums=sums))
    return IndexedLayer(indexed.layer, index)


@contextmanager
def without_prefetch(indexed: IndexedLayer, cache: BlockCache) -> Iterator[LayerReader]:
    """The layer's reader with no pool: every block is inflated by the reads themselves."""
    reader = open_reader(indexed.layer, indexed.points, cache, None, indexed.index.blocks)
    try:
        yield reader
    finally:
        reader.close()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_v1_a_block_that_differs_is_refused_and_not_cached(
    tmp_path: Path, compression: str
) -> None:
    tar, _ = big_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression), spacing=SPACING)
    unit = CHECK_BLOCK[indexed.layer.compression]
    cache = BlockCache()
    seekable = compression != "none"  # a tar layer is not cached at all
    with open_layer(with_altered_sum(indexed, 5), cache) as reader:
        for _ in range(2):  # refused again: nothing was cached
            with pytest.raises(DamagedLayer, match=rf"^layer 0 \(sha256:.*offset {5 * unit}-"):
                reader.pread(5 * unit + 100, 4096)
            assert not cache.contains((0, 5))
        with pytest.raises(DamagedLayer):  # a read across it
            reader.pread(5 * unit - 10, 20)
        # Its neighbours read right and are cached (checked) if the reader caches.
        assert reader.pread(4 * unit, unit) == tar[4 * unit : 5 * unit]
        assert reader.pread(6 * unit, 100) == tar[6 * unit : 6 * unit + 100]
        assert cache.contains((0, 4)) == cache.contains((0, 6)) == seekable
        end = len(tar)
        assert reader.pread(end - 5000, 5000) == tar[-5000:]  # the short last block


def test_v1_an_uncompressed_layer_is_read_and_checked_by_whole_blocks(tmp_path: Path) -> None:
    """A tar layer with sums reads the whole blocks a read overlaps in one pread and checks
    each; a byte changed in the blob fails the reads of its block alone."""
    tar, _ = big_tar()
    layer = blob_layer(tmp_path, tar, "none")
    unit = CHECK_BLOCK[layer.compression]
    indexed = indexed_layer(layer)
    assert isinstance(layer.blob, FileBlob)
    damaged_at = 7 * CACHE_BLOCK + 12345
    bad = damaged_at // unit
    damage(layer.blob.path, damaged_at, 1, seed=1)
    with open_layer(indexed) as reader:
        assert isinstance(reader, TarLayerReader)
        preads: list[tuple[int, int]] = []
        pread = reader.blob.pread

        def counted(size: int, offset: int) -> bytes:
            preads.append((offset, size))
            return pread(size, offset)

        reader.blob.pread = counted  # type: ignore[method-assign]
        assert reader.pread(6 * unit + 10, 4096) == tar[6 * unit + 10 :][:4096]
        assert reader.pread(9 * unit - 10, 4096) == tar[9 * unit - 10 :][:4096]
        assert preads == [(6 * unit, unit), (8 * unit, 2 * unit)]
        # Reads that follow each other: each reads again the block it begins in (one pread,
        # served as a view of it, never joined to the last read's bytes); a read inside the
        # block the last one checked reads nothing.
        preads.clear()
        for number in (10, 11, 12):
            at = number * unit + 100
            data = reader.pread(at, unit)
            assert isinstance(data, memoryview) and data == tar[at : at + unit]
        assert reader.pread(13 * unit + 200, 99) == tar[13 * unit + 200 :][:99]  # kept
        assert preads == [(10 * unit, 2 * unit), (11 * unit, 2 * unit), (12 * unit, 2 * unit)]
        with pytest.raises(DamagedLayer, match=f"stream offset {bad * unit}-{(bad + 1) * unit}"):
            reader.pread(bad * unit + 5, 10)
        with pytest.raises(DamagedLayer):
            reader.pread((bad - 1) * unit, 2 * unit)
        assert reader.pread((bad + 1) * unit, 10) == tar[(bad + 1) * unit :][:10]
        assert reader.pread((bad - 1) * unit, unit) == tar[(bad - 1) * unit : bad * unit]
    # Without sums (an index built with --no-verify) the damaged byte is served as it is.
    unverified = indexed_layer(layer, verify=False)
    with open_layer(unverified) as reader:
        assert reader.pread(damaged_at, 1) != tar[damaged_at : damaged_at + 1]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_v1_a_block_a_cursor_passes_is_checked_before_it_is_cached(
    tmp_path: Path, compression: str
) -> None:
    """A read far from a seek point caches the blocks its cursor passes on the way: only
    those that check out."""
    tar, _ = big_tar()
    blob = gzip.compress(tar, 6, mtime=0) if compression == "gzip" else zstd_bytes(tar, "-3")
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression, blob=blob), spacing=1 << 20)
    points = indexed.points
    assert points is not None
    # A block with a whole block between it and the seek point before it.
    target = next(
        n
        for n in range(len(tar) // CACHE_BLOCK)
        if n * CACHE_BLOCK - points.uncompressed[points.find(n * CACHE_BLOCK)] >= 2 * CACHE_BLOCK
    )
    passed = target - 1
    cache = BlockCache()
    with without_prefetch(with_altered_sum(indexed, passed), cache) as reader:
        start = target * CACHE_BLOCK
        assert reader.pread(start, 4096) == tar[start : start + 4096]
        assert cache.contains((0, target)) and not cache.contains((0, passed))
        with pytest.raises(DamagedLayer, match="differs from what the verified indexing"):
            reader.pread(passed * CACHE_BLOCK, 10)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_v1_prefetch_caches_no_block_that_differs(tmp_path: Path, compression: str) -> None:
    """A prefetch job that meets a block that differs stops there and caches nothing of it;
    the read that reaches the block reports it, and the reads after it go on."""
    tar, _ = big_tar()
    blob = gzip.compress(tar, 6, mtime=0) if compression == "gzip" else frames_layer(tar, 1 << 20)
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression, blob=blob), spacing=SPACING)
    bad = 20  # 5 MiB in, inside "first" (9 MiB of text)
    cache = BlockCache()
    pool = InflatePool(2, cache_share(cache))
    try:
        with open_layer(with_altered_sum(indexed, bad), cache, pool) as reader:
            assert isinstance(reader, SeekableLayerReader)
            offset, size = 0, 128 << 10
            while offset + size <= (bad - 2) * CACHE_BLOCK:  # prefetch runs past the bad block
                assert reader.pread(offset, size) == tar[offset : offset + size]
                offset += size
            deadline = time.monotonic() + 30
            while reader.prefetcher.jobs and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reader.prefetcher.jobs_started and not reader.prefetcher.jobs
            assert not cache.contains((0, bad))
            assert any(cache.contains((0, n)) for n in range(bad + 1, bad + 12))
            with pytest.raises(DamagedLayer, match="stream offset 5242880"):
                while offset < (bad + 1) * CACHE_BLOCK:
                    reader.pread(offset, size)
                    offset += size
            after = (bad + 1) * CACHE_BLOCK
            assert reader.pread(after, 3 << 20) == tar[after : after + (3 << 20)]
    finally:
        pool.close()


@pytest.mark.parametrize("how", ["front to back", "back to front", "random"])
def test_v1_the_blocks_refused_are_those_wrong_from_their_own_seek_point(
    tmp_path: Path, how: str
) -> None:
    """Real damage in a gzip span: whichever order the reads come in (a live cursor may
    have come through the damage on its way), exactly the blocks that are wrong decoded
    from their own seek point are refused, and every other block reads right."""
    tar, _ = big_tar()
    layer = blob_layer(tmp_path, tar, "gzip", blob=gzip.compress(tar, 6, mtime=0))
    indexed = indexed_layer(layer, spacing=1 << 20)
    points = indexed.points
    assert points is not None and isinstance(layer.blob, FileBlob)
    span = 3
    damage(layer.blob.path, points.compressed[span + 1] - 40, 30, seed=2)  # the span's end
    spoiled = bad_blocks(layer.blob, layer.compression, points, tar)
    bad = {start // CACHE_BLOCK for start, _ in spoiled}
    assert bad
    numbers = list(range(-(-len(tar) // CACHE_BLOCK)))
    if how == "back to front":
        numbers.reverse()
    elif how == "random":
        random.Random(3).shuffle(numbers)
    refused = set()
    with without_prefetch(indexed, BlockCache()) as reader:
        for number in numbers:
            start = number * CACHE_BLOCK
            end = min(len(tar), start + CACHE_BLOCK)
            try:
                assert reader.pread(start, end - start) == tar[start:end], number
            except DamagedLayer:
                refused.add(number)
    assert refused == bad


class Garbling:
    """A cursor that decodes, then flips a bit of what it hands out: one that passed damage
    on its way, as far as the blocks after it are concerned."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.closed = False

    @property
    def position(self) -> int:
        return self.cursor.position

    def read(self, size: int) -> bytes:
        data = bytearray(self.cursor.read(size))
        if data:
            data[0] ^= 1
        return bytes(data)

    def skip(self, count: int) -> None:
        self.cursor.skip(count)

    def close(self) -> None:
        self.closed = True
        self.cursor.close()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_v1_a_live_cursor_that_gives_wrong_bytes_is_replaced_by_one_from_the_seek_point(
    tmp_path: Path, compression: str
) -> None:
    """A sequential read goes on with the live cursor; if what it decodes differs, the block
    is decoded again from its own seek point before it is refused: a live cursor may carry
    damage from before the point that the point's own state does not."""
    tar, _ = big_tar()
    blob = gzip.compress(tar, 6, mtime=0) if compression == "gzip" else frames_layer(tar, 1 << 20)
    indexed = indexed_layer(blob_layer(tmp_path, tar, compression, blob=blob))
    cache = BlockCache()
    with without_prefetch(indexed, cache) as reader:
        assert isinstance(reader, SeekableLayerReader)
        assert reader.pread(2 * CACHE_BLOCK, CACHE_BLOCK) == tar[2 * CACHE_BLOCK : 3 * CACHE_BLOCK]
        (live,) = reader.cursors
        assert live.position == 3 * CACHE_BLOCK
        garbling = Garbling(live)
        reader.cursors[0] = garbling
        assert reader.pread(3 * CACHE_BLOCK, 100) == tar[3 * CACHE_BLOCK : 3 * CACHE_BLOCK + 100]
        assert garbling.closed and garbling not in reader.cursors


def test_v1_files_hit_are_those_with_data_in_a_bad_block(tmp_path: Path) -> None:
    """The test oracle itself, on an uncompressed layer: a damaged block names the files
    whose data lies in it, and no others."""
    unit = CHECK_BLOCK[Compression.NONE]
    tar = make_tar([f("a", b"a" * unit), f("b", b"b" * 10), f("c", b"c" * unit)])
    layer = blob_layer(tmp_path, tar, "none")
    entries = index_layer(layer).entries
    assert entries is not None and isinstance(layer.blob, FileBlob)
    b = next(e for e in entries if e.path == b"b")
    damage(layer.blob.path, b.data_offset + 5, 1, seed=4)
    bad = bad_blocks(layer.blob, layer.compression, None, tar)
    start = b.data_offset // unit * unit
    assert bad == {(start, start + unit)}
    # a's data ends 512 bytes into b's block (its header came first), and c's begins in it.
    assert files_hit(entries, bad) == {b"a", b"b", b"c"}
    assert files_hit(entries, {(0, 512)}) == set()  # a's header alone: no file's data


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_v1_cached_indexes_keep_the_sums(tmp_path: Path, compression: str) -> None:
    tar, _ = big_tar()
    layer = blob_layer(tmp_path, tar, compression)
    indexed = index_layer(layer)
    cache = IndexCache(tmp_path / "cache")
    cache.store_layer(layer, indexed)
    for with_entries in (True, False):
        loaded = cache.load_layer(layer, verify=True, with_entries=with_entries)
        assert loaded is not None and loaded.blocks is not None and indexed.blocks is not None
        assert loaded.blocks == indexed.blocks
    # An index built without verification stores none, and a verifying load does not use it;
    # a load that does not verify reads with none.
    cache.store_layer(layer, index_layer(layer, verify=False))
    assert cache.load_layer(layer, verify=True, with_entries=False) is None
    unverified = cache.load_layer(layer, verify=False, with_entries=False)
    assert unverified is not None and unverified.blocks is None


def test_v1_a_cached_verified_index_without_usable_sums_is_a_miss(tmp_path: Path) -> None:
    """Sums of another algorithm cannot be checked: the layer is indexed again."""
    tar, _ = big_tar()
    layer = blob_layer(tmp_path, tar, "gzip")
    indexed = index_layer(layer)
    assert indexed.blocks is not None
    other = dataclasses.replace(indexed.blocks, algorithm="crc32")
    cache = IndexCache(tmp_path / "cache")
    cache.store_layer(layer, dataclasses.replace(indexed, blocks=other))
    assert cache.load_layer(layer, verify=True, with_entries=True) is None


def test_v1_a_mount_without_verify_over_a_verified_index_still_checks(tmp_path: Path) -> None:
    """``--no-verify`` takes a verified index from the cache as it is, sums and all."""
    tar, _ = big_tar()
    resolved = image_of([blob_layer(tmp_path, tar, "gzip")])
    cache = IndexCache(tmp_path / "cache")
    load_image(resolved, verify=True, cache=cache).close()
    image = load_image(resolved, verify=False, cache=cache)
    try:
        reader = image.readers[0]
        assert isinstance(reader, SeekableLayerReader) and reader.blocks is not None
    finally:
        image.close()
    image = load_image(resolved, verify=False, cache=None)
    try:
        reader = image.readers[0]
        assert isinstance(reader, SeekableLayerReader) and reader.blocks is None
    finally:
        image.close()
