"""Prefetch: sequential reads of a gzip layer are inflated ahead, span by span, in threads."""

from __future__ import annotations

import gzip
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from layers import IndexedLayer, big_tar, blob_layer, indexed_layer, open_gzip_layer, text_blocks
from tarbuild import f, make_tar

from ocifs.blockcache import CACHE_BLOCK, BlockCache
from ocifs.gzseek import GzipCursor, SeekPoints
from ocifs.layerread import DamagedLayer, LayerReader
from ocifs.prefetch import (
    MAX_PARKED,
    MAX_PARKED_IMAGE,
    PREFETCH_BYTES,
    PREFETCH_TRIGGER,
    InflateJob,
    InflatePool,
    cache_share,
)

SPACING = 256 << 10  # more seek points than the default, so a small layer has many spans


@pytest.fixture(scope="module")
def spans_layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[IndexedLayer, bytes]:
    tar, _ = big_tar()
    path = tmp_path_factory.mktemp("spans")
    ref = blob_layer(path, tar, "gzip", blob=gzip.compress(tar, compresslevel=6))
    return indexed_layer(ref, spacing=SPACING), tar


def read_in_order(
    reader: LayerReader,
    start: int,
    end: int,
    size: int,
    outstanding: int = 2,
    before: Callable[[int], None] | None = None,
) -> bytes:
    """Read [start, end) front to back in ``size`` reads, ``outstanding`` of them in flight
    at once from as many threads, the way the kernel's FUSE readahead does."""
    pieces: list[bytes] = []
    with ThreadPoolExecutor(outstanding) as pool:
        in_flight: list[Future[bytes]] = []
        offset = start
        while offset < end or in_flight:
            while offset < end and len(in_flight) < outstanding:
                if before is not None:
                    before(offset)
                in_flight.append(pool.submit(reader.pread, offset, min(size, end - offset)))
                offset += size
            pieces.append(in_flight.pop(0).result())
    return b"".join(pieces)


@pytest.fixture
def inflated() -> Iterator[dict[str, int]]:
    """Counts what every GzipCursor inflates (read or skipped) and how many start."""
    counts = {"bytes": 0, "cursors": 0}
    lock = threading.Lock()
    read, skip, init = GzipCursor.read, GzipCursor.skip, GzipCursor.__init__

    def counting_read(self: GzipCursor, size: int) -> bytes:
        data = read(self, size)
        with lock:
            counts["bytes"] += len(data)
        return data

    def counting_skip(self: GzipCursor, count: int) -> None:
        with lock:
            counts["bytes"] += min(count, self.points.size - self.position)
        skip(self, count)

    def counting_init(self: GzipCursor, fd: int, points: SeekPoints, index: int) -> None:
        with lock:
            counts["cursors"] += 1
        init(self, fd, points, index)

    GzipCursor.read = counting_read  # type: ignore[method-assign]
    GzipCursor.skip = counting_skip  # type: ignore[method-assign]
    GzipCursor.__init__ = counting_init  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        GzipCursor.read = read  # type: ignore[method-assign]
        GzipCursor.skip = skip  # type: ignore[method-assign]
        GzipCursor.__init__ = init  # type: ignore[method-assign]


def count_puts(cache: BlockCache) -> dict[tuple[int, int], int]:
    """How often each block was put into the cache (an instance attribute shadows put)."""
    puts: dict[tuple[int, int], int] = {}
    put = cache.put

    def counting_put(key: tuple[int, int], block: bytes) -> None:
        puts[key] = puts.get(key, 0) + 1
        put(key, block)

    cache.put = counting_put  # type: ignore[method-assign]
    return puts


def inflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ocifs-inflate")]


def pool_for(cache: BlockCache, workers: int) -> InflatePool:
    return InflatePool(workers, cache_share(cache))


@pytest.mark.parametrize(
    ("size", "outstanding"),
    [(128 << 10, 2), (CACHE_BLOCK, 1), ((1 << 20) - 7, 3), (3 * 4096 + 1, 2)],
)
def test_sequential_reads_with_prefetch_return_the_exact_bytes(
    spans_layer: tuple[IndexedLayer, bytes], size: int, outstanding: int
) -> None:
    indexed, tar = spans_layer
    with open_gzip_layer(indexed) as reader:
        assert read_in_order(reader, 0, len(tar), size, outstanding) == tar
        jobs_started = reader.prefetcher.jobs_started
        assert jobs_started > len(tar) // (2 * SPACING) // 2  # most spans prefetched
        middle = next(e for e in indexed.entries if e.path == b"middle")
        start = middle.data_offset + 12345  # a second run, from inside another file
        expected = tar[start : middle.data_offset + middle.size]
        assert read_in_order(reader, start, start + len(expected), size, outstanding) == expected
    assert not inflate_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_prefetch_inflates_no_block_twice(
    spans_layer: tuple[IndexedLayer, bytes], inflated: dict[str, int], workers: int
) -> None:
    """Jobs and reads claim each block before inflating it: a read waits for a block a job
    is producing, and each job goes on from the cursor the job before left at its end
    (or takes the tail of the block across its start from it), so the stream is inflated
    about once."""
    indexed, tar = spans_layer
    cache = BlockCache()
    pool = pool_for(cache, workers)
    puts = count_puts(cache)
    with open_gzip_layer(indexed, cache, pool) as reader:
        assert read_in_order(reader, 0, len(tar), 128 << 10) == tar
    pool.close()
    assert reader.prefetcher.jobs_started > 5
    assert len(puts) == -(-len(tar) // CACHE_BLOCK)
    assert set(puts.values()) == {1}
    if workers == 1:
        # Each job runs after the one before: it continues that job's cursor. Only the
        # first job enters at a seek point inside a block and skips to the next one.
        assert inflated["bytes"] <= len(tar) + CACHE_BLOCK
        assert inflated["cursors"] <= 2
    else:  # a job that starts late may inflate the tail of its neighbour's block again
        assert inflated["bytes"] <= len(tar) * 1.1


class ManualPool(InflatePool):
    """Keeps the jobs for the test to run, in the order it likes."""

    def submit(self, job: InflateJob) -> bool:
        if self.closed:
            return False
        self.queue.append(job)
        return True


@pytest.mark.parametrize("order", ["later first", "earlier first", "side by side"])
def test_neighbouring_jobs_share_the_block_across_their_seek_point(
    spans_layer: tuple[IndexedLayer, bytes],
    inflated: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    order: str,
) -> None:
    """Each job inflates its part of the block across the seek point where its span meets
    the next one. The second to get there joins the parts; a job that finds the next one
    still queued finishes the block and leaves it its cursor. Whatever the order, nothing
    is inflated twice."""
    indexed, tar = spans_layer
    cache = BlockCache()
    pool = ManualPool(2, cache_share(cache))
    puts = count_puts(cache)
    with open_gzip_layer(indexed, cache, pool) as reader:
        for offset in range(0, PREFETCH_TRIGGER, 128 << 10):  # sequential: jobs queued
            assert reader.pread(offset, 128 << 10) == tar[offset : offset + (128 << 10)]
        jobs = list(pool.queue)
        assert len(jobs) >= 3
        assert all(job.start % CACHE_BLOCK for job in jobs)  # each one has a seam to share
        before = inflated["bytes"]
        if order == "later first":
            for job in reversed(jobs):
                job.run()
        elif order == "earlier first":
            for job in jobs:
                job.run()
        else:  # each job starts, and is held in its first read until the one before ends
            read = GzipCursor.read
            gates: dict[str, threading.Event] = {}

            def gated_read(self: GzipCursor, size: int) -> bytes:
                gate = gates.pop(threading.current_thread().name, None)
                if gate is not None:
                    gate.wait()
                return read(self, size)

            monkeypatch.setattr(GzipCursor, "read", gated_read)
            held: threading.Thread | None = None
            held_gate = threading.Event()
            for job in jobs:
                gates[f"job-{job.start}"] = gate = threading.Event()
                thread = threading.Thread(target=job.run, name=f"job-{job.start}")
                thread.start()
                while f"job-{job.start}" in gates:  # it is in its first read
                    time.sleep(0.001)
                if held is not None:
                    held_gate.set()
                    held.join()
                held, held_gate = thread, gate
            assert held is not None
            held_gate.set()
            held.join()
        last_block_end = min(len(tar), -(-jobs[-1].end // CACHE_BLOCK) * CACHE_BLOCK)
        assert inflated["bytes"] - before == last_block_end - jobs[0].start
        assert not reader.prefetcher.jobs and not reader.prefetcher.pending
        # Read from the cache: reads would queue more jobs, which nobody here runs.
        for number in range(-(-last_block_end // CACHE_BLOCK)):
            block = cache.get((indexed.layer.position, number))
            assert block == tar[number * CACHE_BLOCK : (number + 1) * CACHE_BLOCK]
    pool.close()
    assert set(puts.values()) == {1}


def test_random_reads_do_not_trigger_prefetch(spans_layer: tuple[IndexedLayer, bytes]) -> None:
    indexed, tar = spans_layer
    cache = BlockCache()
    pool = pool_for(cache, 2)
    rng = random.Random(5)
    with open_gzip_layer(indexed, cache, pool) as reader:
        for size in (4096, 4096, 64 << 10):
            for _ in range(100):
                offset = rng.randrange(0, len(tar) - size)
                assert reader.pread(offset, size) == tar[offset : offset + size]
        assert reader.prefetcher.jobs_started == 0
        assert not pool.threads
    pool.close()


def test_close_stops_jobs_in_flight_and_closes_their_cursors(
    spans_layer: tuple[IndexedLayer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    indexed, tar = spans_layer
    cursors: list[GzipCursor] = []
    init, read = GzipCursor.__init__, GzipCursor.read

    def recording_init(self: GzipCursor, fd: int, points: SeekPoints, index: int) -> None:
        cursors.append(self)
        init(self, fd, points, index)

    def slow_read(self: GzipCursor, size: int) -> bytes:
        if threading.current_thread().name.startswith("ocifs-inflate"):
            time.sleep(0.02)  # so that jobs are still running and queued at close
        return read(self, size)

    monkeypatch.setattr(GzipCursor, "__init__", recording_init)
    monkeypatch.setattr(GzipCursor, "read", slow_read)
    cache = BlockCache()
    pool = pool_for(cache, 4)  # the image's: it outlives this layer's reader
    with open_gzip_layer(indexed, cache, pool) as reader:
        assert read_in_order(reader, 0, 1 << 20, 128 << 10, outstanding=1) == tar[: 1 << 20]
        assert reader.prefetcher.jobs and inflate_threads()
    assert cursors and all(cursor.inflater is None for cursor in cursors)
    prefetcher = reader.prefetcher
    assert not prefetcher.jobs and not prefetcher.pending and not prefetcher.parked
    assert inflate_threads()  # idle, for the image's other readers
    pool.close()  # the image closed
    assert not inflate_threads()
    reader.close()  # idempotent


def test_damaged_region_ahead_of_a_sequential_reader_fails_only_the_read_that_reaches_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = text_blocks(8 << 20, 6)
    tar = make_tar([f("text", data)])
    blob = gzip.compress(tar, compresslevel=6)
    ref = blob_layer(tmp_path, tar, "gzip", blob=blob)
    indexed = indexed_layer(ref, spacing=SPACING)
    points = indexed.points
    assert points is not None
    # Damage the compressed data of a span in the middle, ahead of the reader. Inside a
    # member there is no CRC to check, and random bytes may inflate to garbage for a while;
    # a run of one bits is refused by zlib at once.
    span = len(points) // 2
    damage_at = (points.compressed[span] + points.compressed[span + 1]) // 2
    with open(ref.blob.path, "r+b") as damaged:
        damaged.seek(damage_at)
        damaged.write(b"\xff" * 4096)
    first_bad_block = points.uncompressed[span] // CACHE_BLOCK
    first_good_after = points.uncompressed[span + 2]
    caplog.set_level(logging.DEBUG, logger="ocifs.prefetch")
    size = 128 << 10
    with open_gzip_layer(indexed) as reader:
        offset = 0
        while offset + size <= first_bad_block * CACHE_BLOCK:  # prefetch ran into the damage
            assert reader.pread(offset, size) == tar[offset : offset + size]
            offset += size
        assert reader.prefetcher.jobs_started
        with pytest.raises(DamagedLayer):
            while offset < first_good_after:
                reader.pread(offset, size)
                offset += size
        # The jobs past the damage started at seek points of their own: their blocks, and
        # the rest of the layer, read fine.
        rest = tar[first_good_after:]
        assert read_in_order(reader, first_good_after, len(tar), size) == rest
        assert reader.pread(0, 4096) == tar[:4096]
    assert "prefetch of" in caplog.text  # a job met the damage first, and said nothing
    assert not inflate_threads()


def test_prefetch_stays_within_the_cache_bound(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """A small cache gets a short prefetch: blocks are never inflated so far ahead that
    they are evicted before they are read, and the cache never grows past its limit."""
    indexed, tar = spans_layer
    cache = BlockCache(16 * CACHE_BLOCK)
    sizes: list[int] = []
    ahead: list[int] = []
    position = [0]
    put = cache.put

    def checking_put(key: tuple[int, int], block: bytes) -> None:
        put(key, block)
        sizes.append(cache.size)
        if threading.current_thread().name.startswith("ocifs-inflate"):
            ahead.append(key[1] * CACHE_BLOCK - position[0] // CACHE_BLOCK * CACHE_BLOCK)

    cache.put = checking_put  # type: ignore[method-assign]
    with open_gzip_layer(indexed, cache) as reader:
        assert reader.prefetcher.ahead == cache.limit // 4 < PREFETCH_BYTES

        def at(offset: int) -> None:
            position[0] = offset

        assert read_in_order(reader, 0, len(tar), 128 << 10, outstanding=1, before=at) == tar
    assert reader.prefetcher.jobs_started and ahead
    assert max(sizes) <= cache.limit
    assert max(ahead) < reader.prefetcher.ahead
    assert len(sizes) == -(-len(tar) // CACHE_BLOCK)  # so nothing was inflated twice either


def test_a_cache_too_small_for_prefetch_gets_none(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    indexed, tar = spans_layer
    with open_gzip_layer(indexed, BlockCache(4 * CACHE_BLOCK)) as reader:
        assert read_in_order(reader, 0, len(tar), 128 << 10) == tar
        assert reader.prefetcher.jobs_started == 0


def test_stretches_that_do_not_compress_are_left_to_the_reads(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """Inflating stored deflate blocks is a copy: a thread would save nothing, so random
    data gets no prefetch; the read goes on with the cursor the last job parked."""
    indexed, tar = spans_layer
    cache = BlockCache()
    middle = next(e for e in indexed.entries if e.path == b"middle")  # os.urandom
    start, end = middle.data_offset, middle.data_offset + middle.size
    pool = pool_for(cache, 1)
    with open_gzip_layer(indexed, cache, pool) as reader:
        assert read_in_order(reader, start, end, 128 << 10) == tar[start:end]
        assert reader.prefetcher.jobs_started == 0
        # Into it from compressible text: jobs up to the random data, then the reads.
        assert read_in_order(reader, 0, end, 128 << 10) == tar[:end]
        assert 0 < reader.prefetcher.jobs_started < (start + (2 << 20)) // (2 * SPACING)
    pool.close()


def test_a_pool_closed_before_its_reader_settles_the_jobs_it_queued(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """No read waits for a job that will never run: the pool settles its queue at close,
    and the reads that follow inflate by themselves."""
    indexed, tar = spans_layer
    cache = BlockCache()
    pool = ManualPool(2, cache_share(cache))
    with open_gzip_layer(indexed, cache, pool) as reader:
        for offset in range(0, PREFETCH_TRIGGER, 128 << 10):  # sequential: jobs queued
            assert reader.pread(offset, 128 << 10) == tar[offset : offset + (128 << 10)]
        assert pool.queue and reader.prefetcher.pending
        pool.close()
        assert not pool.queue and not pool.outstanding
        assert not reader.prefetcher.jobs and not reader.prefetcher.pending
        assert read_in_order(reader, 0, len(tar), 128 << 10) == tar
        assert not reader.prefetcher.pending
    assert not inflate_threads()


def test_the_pool_budget_bounds_the_bytes_in_flight() -> None:
    pool = InflatePool(2, 10)
    assert pool.reserve(6)
    assert not pool.reserve(5)  # over all readers of the image
    assert pool.reserve(4)
    pool.release(6)
    assert pool.reserve(6)
    assert pool.outstanding == 10
    pool.close()


def test_a_closed_pool_takes_no_jobs(spans_layer: tuple[IndexedLayer, bytes]) -> None:
    indexed, tar = spans_layer
    cache = BlockCache()
    pool = pool_for(cache, 2)
    pool.close()
    with open_gzip_layer(indexed, cache, pool) as reader:
        assert read_in_order(reader, 0, 4 << 20, 128 << 10) == tar[: 4 << 20]
        assert not reader.prefetcher.jobs and not reader.prefetcher.pending
    assert not pool.threads and not inflate_threads()
    assert pool.outstanding == 0


def test_take_parked_hands_over_the_cursor_furthest_on_in_range(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    indexed, _ = spans_layer
    with open_gzip_layer(indexed) as reader:
        prefetcher = reader.prefetcher
        parked = {position: object() for position in (100, 300, 200)}
        prefetcher.parked.update(parked)  # type: ignore[arg-type]
        assert prefetcher.take_parked(150, 250) is parked[200]
        assert prefetcher.take_parked(150, 250) is None  # taken: it is the caller's now
        assert prefetcher.take_parked(0, 1000) is parked[300]
        assert prefetcher.take_parked(101, 299) is None
        assert list(prefetcher.parked) == [100]
        prefetcher.parked.clear()  # not cursors: close must not close them


class FakeCursor:
    """What park needs of a cursor: where it is, and a close that is seen."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.closed = False

    def read(self, size: int) -> bytes:
        raise AssertionError("a parked cursor is not read here")

    def skip(self, count: int) -> None:
        raise AssertionError("a parked cursor is not read here")

    def close(self) -> None:
        self.closed = True


def test_parked_cursors_are_bounded_per_image_not_only_per_layer(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """Layers whose streams stopped keep MAX_PARKED cursors each, but the image as a whole
    keeps at most MAX_PARKED_IMAGE: the oldest parked are closed, the newest stay."""
    indexed, _ = spans_layer
    cache = BlockCache()
    pool = pool_for(cache, 1)
    layers = MAX_PARKED_IMAGE // MAX_PARKED + 2  # more than the image may keep parked
    with ExitStack() as stack:
        readers = [
            stack.enter_context(open_gzip_layer(indexed, cache, pool)) for _ in range(layers)
        ]
        cursors = []
        for number, reader in enumerate(readers):
            for slot in range(MAX_PARKED):
                cursor = FakeCursor((number * MAX_PARKED + slot + 1) * CACHE_BLOCK)
                assert reader.prefetcher.park(cursor)  # type: ignore[arg-type]
                cursors.append(cursor)
        live = [cursor for cursor in cursors if not cursor.closed]
        assert live == cursors[-MAX_PARKED_IMAGE:]
        parked = [c for reader in readers for c in reader.prefetcher.parked.values()]
        assert sorted(map(id, parked)) == sorted(map(id, live))
        # A cursor taken over by a read is the read's: evicting its old slot closes nothing.
        taken = readers[-1].prefetcher.take_parked(0, 1 << 40)
        assert taken is live[-1]
        newer = [FakeCursor(extra + 1) for extra in range(MAX_PARKED_IMAGE)]
        for cursor in newer:
            assert readers[0].prefetcher.park(cursor)  # type: ignore[arg-type]
        assert not taken.closed
        assert all(cursor.closed for cursor in live[:-1])  # the older ones made room
        assert not newer[-1].closed and len(readers[0].prefetcher.parked) == MAX_PARKED
    pool.close()
