"""The image-wide budget of live cursors (layerread.CursorBudget), without a mount: what the
cursors of all layers hold together stays within it, other layers give theirs back first,
and a layer being read just then is never waited for."""

from __future__ import annotations

import threading
from pathlib import Path

from layers import big_tar, blob_layer, image_of, indexed_layer, text_blocks
from tarbuild import f, make_tar

from ocifs.blockcache import BlockCache
from ocifs.image import load_image
from ocifs.layerread import (
    CURSOR_MEMORY,
    GZIP_CURSOR_BYTES,
    CursorBudget,
    SeekableLayerReader,
    open_reader,
)

MIB = 1 << 20
# Far enough apart that each read needs a cursor of its own (seek points are 1 MiB apart).
OFFSETS = [MIB // 2, 4 * MIB + 100, 8 * MIB + 200]


def gzip_readers(tmp_path: Path, count: int, budget: CursorBudget) -> list[SeekableLayerReader]:
    """``count`` gzip layers of big_tar, each read without prefetch (no parked cursors)."""
    tar, _ = big_tar()
    cache = BlockCache(64 * MIB)
    readers = []
    for number in range(count):
        indexed = indexed_layer(blob_layer(tmp_path / str(number), tar, "gzip", number))
        reader = open_reader(indexed.layer, indexed.points, cache, None, budget=budget)
        assert isinstance(reader, SeekableLayerReader)
        readers.append(reader)
    return readers


def held(readers: list[SeekableLayerReader]) -> int:
    return sum(len(reader.cursors) * reader.cursor_bytes for reader in readers)


def test_the_cursors_of_all_layers_stay_within_one_budget(tmp_path: Path) -> None:
    tar, _ = big_tar()
    budget = CursorBudget(3 * GZIP_CURSOR_BYTES)
    readers = gzip_readers(tmp_path, 2, budget)
    first, second = readers
    try:
        for offset in OFFSETS:
            assert first.pread(offset, 4096) == tar[offset : offset + 4096]
        assert len(first.cursors) == 3  # all of the budget, for the only layer read
        for offset in OFFSETS[:2]:
            assert second.pread(offset, 4096) == tar[offset : offset + 4096]
            assert held(readers) <= budget.limit
        # The idle layer gave back its least recently used cursors, not the reading one.
        assert len(second.cursors) == 2
        assert len(first.cursors) == 1
        assert first.cursors[0].position == OFFSETS[-1] - OFFSETS[-1] % (256 << 10) + (256 << 10)
        assert sum(budget.held.values()) == held(readers)
    finally:
        for reader in readers:
            reader.close()
    assert budget.held == {}


def test_a_layer_being_read_is_not_waited_for(tmp_path: Path) -> None:
    """A layer inflating just then (its lock held) keeps its cursors; the reader over the
    budget gives back its own instead, down to the one it uses, and takes the other's once
    that one is free."""
    tar, _ = big_tar()
    budget = CursorBudget(2 * GZIP_CURSOR_BYTES)
    readers = gzip_readers(tmp_path, 2, budget)
    busy, reading = readers
    try:
        for offset in OFFSETS[:2]:
            busy.pread(offset, 4096)
        assert len(busy.cursors) == 2
        done = threading.Event()

        def read_all() -> None:
            for offset in OFFSETS:
                assert reading.pread(offset, 4096) == tar[offset : offset + 4096]
            done.set()

        with busy.lock:  # as while it inflates a block
            thread = threading.Thread(target=read_all)
            thread.start()
            assert done.wait(30), "a reader waited for a busy layer's lock"
            thread.join()
            assert len(busy.cursors) == 2
            assert len(reading.cursors) == 1
        assert reading.pread(11 * MIB, 4096) == tar[11 * MIB : 11 * MIB + 4096]
        assert (len(busy.cursors), len(reading.cursors)) == (0, 2)
        assert held(readers) <= budget.limit
    finally:
        for reader in readers:
            reader.close()


def test_an_image_shares_one_budget(tmp_path: Path) -> None:
    """load_image gives every reader of an image the same budget, of CURSOR_MEMORY."""
    tar = make_tar([f("a", text_blocks(1 << 20, 3))])
    layers = [blob_layer(tmp_path, tar, "gzip", 0), blob_layer(tmp_path, tar, "zstd", 1)]
    image = load_image(image_of(layers))
    try:
        budgets = {
            id(reader.budget) for reader in image.readers if isinstance(reader, SeekableLayerReader)
        }
        assert len(budgets) == 1
        reader = image.readers[0]
        assert isinstance(reader, SeekableLayerReader)
        assert reader.budget.limit == CURSOR_MEMORY
    finally:
        image.close()
