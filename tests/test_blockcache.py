"""The cache of decompressed blocks: bounded by total size, least recently used out first."""

from __future__ import annotations

import threading

from ocifs.blockcache import BLOCK_CACHE_BYTES, CACHE_BLOCK, BlockCache


def test_put_get_and_contains() -> None:
    cache = BlockCache(1000)
    assert cache.limit == 1000
    assert cache.get((0, 0)) is None and not cache.contains((0, 0))
    cache.put((0, 0), b"a" * 10)
    cache.put((1, 0), b"b" * 20)  # another layer's block 0 is another block
    assert cache.get((0, 0)) == b"a" * 10
    assert cache.get((1, 0)) == b"b" * 20
    assert cache.contains((0, 0)) and not cache.contains((0, 1))
    assert cache.size == 30


def test_putting_a_block_again_replaces_it_and_its_size() -> None:
    cache = BlockCache(1000)
    cache.put((0, 0), b"a" * 10)
    cache.put((0, 0), b"b" * 30)
    assert cache.get((0, 0)) == b"b" * 30
    assert cache.size == 30 and len(cache.blocks) == 1


def test_total_size_stays_within_the_limit() -> None:
    cache = BlockCache(100)
    for number in range(50):
        cache.put((0, number), bytes(30))
        assert cache.size <= 100
    assert cache.size == 90 and list(cache.blocks) == [(0, 47), (0, 48), (0, 49)]


def test_the_least_recently_used_block_goes_first() -> None:
    cache = BlockCache(30)
    for number in range(3):
        cache.put((0, number), bytes(10))
    assert cache.get((0, 0)) is not None  # a use: block 1 is now the oldest
    cache.put((0, 3), bytes(10))
    assert not cache.contains((0, 1))
    assert [key[1] for key in cache.blocks] == [2, 0, 3]


def test_contains_does_not_count_as_a_use() -> None:
    cache = BlockCache(30)
    for number in range(3):
        cache.put((0, number), bytes(10))
    assert cache.contains((0, 0))
    cache.put((0, 3), bytes(10))
    assert not cache.contains((0, 0)) and cache.contains((0, 1))


def test_a_block_larger_than_the_limit_is_kept_alone() -> None:
    """The block just put is the one its reader needs: it stays, the others go."""
    cache = BlockCache(CACHE_BLOCK // 2)
    cache.put((0, 0), bytes(10))
    cache.put((0, 1), bytes(CACHE_BLOCK))
    assert list(cache.blocks) == [(0, 1)] and cache.size == CACHE_BLOCK
    assert cache.get((0, 1)) == bytes(CACHE_BLOCK)


def test_default_limit_and_threads() -> None:
    cache = BlockCache()
    assert cache.limit == BLOCK_CACHE_BYTES

    def fill(layer: int) -> None:
        for number in range(400):
            cache.put((layer, number), bytes(CACHE_BLOCK))
            cache.get((layer, number // 2))

    threads = [threading.Thread(target=fill, args=(layer,)) for layer in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.size == sum(len(block) for block in cache.blocks.values())
    assert cache.size <= cache.limit
