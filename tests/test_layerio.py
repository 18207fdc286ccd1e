"""Indexing and reading layer blobs, without a mount (R9, B2, B3, A9)."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import random
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from tarbuild import f, make_tar

from ocifs.errors import LayerError
from ocifs.gzseek import DEFAULT_SPACING, GzipCursor, SeekPoints
from ocifs.image import Image, load_image
from ocifs.layerindex import LayerIndex, index_layer
from ocifs.layerread import (
    BLOCK,
    READAHEAD_BYTES,
    READAHEAD_TRIGGER,
    BlockCache,
    DamagedLayer,
    GzipLayerReader,
    InflateJob,
    InflatePool,
    LayerReader,
    open_reader,
)
from ocifs.layout import LayerRef, ResolvedImage
from ocifs.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_TAR, Compression
from ocifs.ocibuild import sha256_digest
from ocifs.tarscan import TarEntry


def layer_ref(
    tmp_path: Path, blob: bytes, tar: bytes, compression: str, index: int = 0
) -> LayerRef:
    digest = sha256_digest(blob)
    path = tmp_path / f"blob-{index}-{digest[7:19]}"
    path.write_bytes(blob)
    media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER_TAR
    return LayerRef(
        index, digest, len(blob), media_type, Compression(compression), sha256_digest(tar), path
    )


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


def reader_of(indexed: IndexedLayer, cache: BlockCache | None = None) -> LayerReader:
    return open_reader(indexed.layer, indexed.points, cache or BlockCache())


def text_blocks(size: int, seed: int) -> bytes:
    """Compressible but not trivial data, so gzip makes real deflate blocks."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=64)) + b"\n"
    return bytes(out[:size])


@pytest.fixture(scope="module")
def big_tar() -> tuple[bytes, dict[str, bytes]]:
    files = {
        "first": text_blocks(9 << 20, 1),
        "middle": os.urandom(3 << 20),
        "last-small": b"needle at the end\n",
    }
    return make_tar([f(name, data) for name, data in files.items()]), files


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_index_and_read_back_every_file(
    tmp_path: Path, big_tar: tuple[bytes, dict[str, bytes]], compression: str
) -> None:
    tar, files = big_tar
    blob = gzip.compress(tar, compresslevel=1) if compression == "gzip" else tar
    indexed = indexed_layer(layer_ref(tmp_path, blob, tar, compression))
    reader = reader_of(indexed)
    try:
        by_name = {entry.path.decode(): entry for entry in indexed.entries}
        for name, data in files.items():
            entry = by_name[name]
            assert reader.pread(entry.data_offset, entry.size) == data
            middle = entry.size // 2
            assert reader.pread(entry.data_offset + middle, 5) == data[middle : middle + 5]
    finally:
        reader.close()


def test_gzip_reads_start_from_a_seek_point_near_the_offset(
    tmp_path: Path, big_tar: tuple[bytes, dict[str, bytes]]
) -> None:
    """A read near the end of a big gzip layer never decompresses from the layer's start."""
    tar, files = big_tar
    indexed = indexed_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
    reader = reader_of(indexed)
    assert isinstance(reader, GzipLayerReader)
    points = list(reader.points.uncompressed)
    last = next(e for e in indexed.entries if e.path == b"last-small")
    below = max(point for point in points if point <= last.data_offset)
    assert last.data_offset - below <= DEFAULT_SPACING + (1 << 20)
    assert len(points) >= len(tar) // DEFAULT_SPACING
    assert reader.pread(last.data_offset, last.size) == files["last-small"]
    assert reader.cursors[-1].position - below <= DEFAULT_SPACING + 2 * BLOCK
    reader.close()


def test_sequential_reads_continue_where_the_last_one_stopped(
    tmp_path: Path, big_tar: tuple[bytes, dict[str, bytes]]
) -> None:
    """Reading a file front to back uses one cursor that moves on; it is never restarted
    from a seek point, and nothing is inflated twice."""
    tar, files = big_tar
    indexed = indexed_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
    reader = reader_of(indexed, BlockCache(1 << 20))  # too small to hide a restart
    assert isinstance(reader, GzipLayerReader)
    started = []
    original = GzipCursor.__init__

    def counting(self: GzipCursor, fd: int, points: SeekPoints, index: int) -> None:
        started.append(index)
        original(self, fd, points, index)

    entry = next(e for e in indexed.entries if e.path == b"first")
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
    reader.close()


def test_blocks_are_shared_by_readers_and_bounded(
    tmp_path: Path, big_tar: tuple[bytes, dict[str, bytes]]
) -> None:
    tar, files = big_tar
    indexed = indexed_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
    cache = BlockCache(4 * BLOCK)
    reader = reader_of(indexed, cache)
    entry = next(e for e in indexed.entries if e.path == b"first")
    assert reader.pread(entry.data_offset, entry.size) == files["first"]
    assert cache.size <= 4 * BLOCK
    assert len(cache.blocks) == 4
    reader.close()


def test_r9_layer_digest_mismatch(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    ref = layer_ref(tmp_path, tar, tar, "none")
    bad = LayerRef(
        0, "sha256:" + "0" * 64, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.path
    )
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:0+\): layer digest mismatch"):
        index_layer(bad)
    assert index_layer(bad, verify=False).entries  # --no-verify trusts the layout


def test_r9_b2_diff_id_mismatch_in_gzip_layer(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    ref = layer_ref(tmp_path, gzip.compress(tar), tar, "gzip")
    bad = LayerRef(
        0, ref.digest, ref.size, ref.media_type, Compression.GZIP, "sha256:" + "1" * 64, ref.path
    )
    with pytest.raises(LayerError, match="diff_id mismatch"):
        index_layer(bad)


def damaged_gzip_cases() -> dict[str, bytes]:
    tar = make_tar([f("a", text_blocks(300_000, 2)), f("b", b"tail")])
    good = gzip.compress(tar)
    return {
        "truncated": good[: len(good) // 2],
        "truncated-trailer": good[:-3],
        "bad-crc": good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:],
        "garbage-after": good + b"this is not gzip",
    }


@pytest.mark.parametrize("case", sorted(damaged_gzip_cases()))
def test_b3_damaged_gzip_is_refused(tmp_path: Path, case: str) -> None:
    blob = damaged_gzip_cases()[case]
    tar = make_tar([f("a", text_blocks(300_000, 2)), f("b", b"tail")])
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:[0-9a-f]{64}\): .*(gzip|truncated)"):
        index_layer(layer_ref(tmp_path, blob, tar, "gzip"))


def test_b3_concatenated_members_and_zero_padding_are_fine(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"1" * 5000), f("b", b"2" * 5000)])
    blob = gzip.compress(tar[:4096]) + gzip.compress(tar[4096:]) + b"\0" * 1024
    indexed = indexed_layer(layer_ref(tmp_path, blob, tar, "gzip"))
    b = next(e for e in indexed.entries if e.path == b"b")
    reader = reader_of(indexed)
    assert reader.pread(b.data_offset, b.size) == b"2" * 5000
    reader.close()


def test_damaged_region_after_indexing_gives_damaged_layer_then_recovers(tmp_path: Path) -> None:
    """B: a read that hits damaged data fails alone; other reads keep working."""
    first, second = text_blocks(6 << 20, 3), text_blocks(6 << 20, 4)
    tar = make_tar([f("first", first), f("second", second)])
    blob = gzip.compress(tar, compresslevel=6)
    ref = layer_ref(tmp_path, blob, tar, "gzip")
    indexed = indexed_layer(ref)
    reader = reader_of(indexed)
    entry = {e.path: e for e in indexed.entries}[b"second"]
    with open(ref.path, "r+b") as damaged:
        damaged.seek(len(blob) * 3 // 4)
        damaged.write(os.urandom(64 << 10))
    with pytest.raises(DamagedLayer):
        for offset in range(0, entry.size, 1 << 20):
            reader.pread(entry.data_offset + offset, 1 << 20)
    head = {e.path: e for e in indexed.entries}[b"first"]
    assert reader.pread(head.data_offset, 4096) == first[:4096]
    reader.close()


def test_a9_sparse_files_read_zeros_in_holes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    sparse = source / "sparse"
    with open(sparse, "wb") as out:
        out.truncate(5 << 20)
        out.seek(1 << 20)
        out.write(b"A" * 10000)
        out.seek(4 << 20)
        out.write(b"B" * 70000)
    expected = sparse.read_bytes()
    for version in ("0.0", "0.1", "1.0"):
        tar_path = tmp_path / f"s-{version}.tar"
        subprocess.run(
            [
                "tar",
                "--format=pax",
                "--sparse",
                f"--sparse-version={version}",
                "-cf",
                str(tar_path),
                "-C",
                str(source),
                "sparse",
            ],
            check=True,
        )
        tar = tar_path.read_bytes()
        ref = layer_ref(tmp_path, tar, tar, "none", index=0)
        image = load_image(ResolvedImage(tmp_path, "", "", {}, None, (ref,)))
        try:
            node = image.tree.find(b"sparse")
            assert node is not None and node.size == len(expected)
            assert read_all(image, node) == expected, version
            assert image.read(node, (1 << 20) - 5, 10) == b"\0" * 5 + b"A" * 5
        finally:
            image.close()


def read_all(image: Image, node: object) -> bytes:
    out = io.BytesIO()
    offset = 0
    while True:
        chunk = image.read(node, offset, 128 << 10)  # type: ignore[arg-type]
        if not chunk:
            return out.getvalue()
        out.write(chunk)
        offset += len(chunk)


def test_load_image_names_the_layer_of_a_merge_error(tmp_path: Path) -> None:
    good = make_tar([f("a", b"x")])
    bad = make_tar([f("../escape", b"x")])
    refs = (layer_ref(tmp_path, good, good, "none", 0), layer_ref(tmp_path, bad, bad, "none", 1))
    with pytest.raises(LayerError, match=r"layer 1 \(sha256:.*escapes the image root"):
        load_image(ResolvedImage(tmp_path, "", "", {}, None, refs))


def test_uncompressed_tar_hash_matches_digest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buffer.getvalue()
    ref = layer_ref(tmp_path, data, data, "none")
    assert ref.digest == "sha256:" + hashlib.sha256(data).hexdigest() == ref.diff_id
    indexed = indexed_layer(ref)
    assert [e.path for e in indexed.entries] == [b"x"]


def test_reads_across_seek_points_far_apart(tmp_path: Path) -> None:
    """A run of zeros packs megabytes into one deflate block, so seek points can lie further
    apart than the spacing, and the stream can run on well past the last one."""
    zeros = bytes(40 << 20)
    tail = text_blocks(1 << 20, 7)
    tar = make_tar([f("zeros", zeros), f("tail", tail), f("zeros2", zeros), f("end", b"end")])
    # memLevel 9 lets zlib hold 32k symbols, each up to 258 zeros, in one block: 8.4 MB.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31, 9)
    blob = compressor.compress(tar) + compressor.flush()
    indexed = indexed_layer(layer_ref(tmp_path, blob, tar, "gzip"))
    reader = reader_of(indexed)
    assert isinstance(reader, GzipLayerReader)
    points = list(reader.points.uncompressed)
    gaps = [b - a for a, b in zip(points, [*points[1:], reader.size], strict=True)]
    assert max(gaps) > 4 * DEFAULT_SPACING  # the case this test is about
    entries = {e.path: e for e in indexed.entries}
    assert reader.pread(entries[b"tail"].data_offset, len(tail)) == tail
    assert reader.pread(entries[b"end"].data_offset, 3) == b"end"
    middle = entries[b"zeros2"].data_offset + (25 << 20)
    assert reader.pread(middle, 1 << 20) == bytes(1 << 20)
    reader.close()


def test_r9_uncompressed_layer_with_sha512_digest_and_sha256_diff_id(tmp_path: Path) -> None:
    """The blob digest and the diff_id hash the same bytes but may name other algorithms."""
    tar = make_tar([f("a", b"x")])
    ref = layer_ref(tmp_path, tar, tar, "none")
    sha512 = "sha512:" + hashlib.sha512(tar).hexdigest()
    good = LayerRef(0, sha512, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.path)
    indexed = indexed_layer(good)
    assert [e.path for e in indexed.entries] == [b"a"]
    bad = LayerRef(
        0, "sha512:" + "0" * 128, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.path
    )
    with pytest.raises(LayerError, match="layer digest mismatch"):
        index_layer(bad)


# Readahead: sequential reads of a gzip layer are inflated ahead, span by span, in threads.

SPACING = 256 << 10  # more seek points than the default, so a small layer has many spans


@pytest.fixture(scope="module")
def spans_layer(
    tmp_path_factory: pytest.TempPathFactory, big_tar: tuple[bytes, dict[str, bytes]]
) -> tuple[IndexedLayer, bytes]:
    tar, _ = big_tar
    path = tmp_path_factory.mktemp("spans")
    ref = layer_ref(path, gzip.compress(tar, compresslevel=6), tar, "gzip")
    return indexed_layer(ref, spacing=SPACING), tar


def gzip_reader(indexed: IndexedLayer, cache: BlockCache | None = None) -> GzipLayerReader:
    reader = reader_of(indexed, cache)
    assert isinstance(reader, GzipLayerReader)
    return reader


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


@pytest.mark.parametrize(
    ("size", "outstanding"),
    [(128 << 10, 2), (BLOCK, 1), ((1 << 20) - 7, 3), (3 * 4096 + 1, 2)],
)
def test_sequential_reads_with_readahead_return_the_exact_bytes(
    spans_layer: tuple[IndexedLayer, bytes], size: int, outstanding: int
) -> None:
    indexed, tar = spans_layer
    reader = gzip_reader(indexed)
    try:
        assert read_in_order(reader, 0, len(tar), size, outstanding) == tar
        assert reader.jobs_started > len(tar) // (2 * SPACING) // 2  # most spans read ahead
        middle = next(e for e in indexed.entries if e.path == b"middle")
        start = middle.data_offset + 12345  # a second run, from inside another file
        expected = tar[start : middle.data_offset + middle.size]
        assert read_in_order(reader, start, start + len(expected), size, outstanding) == expected
    finally:
        reader.close()
    assert not inflate_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_readahead_inflates_no_block_twice(
    spans_layer: tuple[IndexedLayer, bytes], inflated: dict[str, int], workers: int
) -> None:
    """Jobs and reads claim each block before inflating it: a read waits for a block a job
    is producing, and each job goes on from the cursor the job before left at its end
    (or takes the tail of the block across its start from it), so the stream is inflated
    about once."""
    indexed, tar = spans_layer
    cache = BlockCache()
    cache.pool = InflatePool(workers, cache.limit // 4)
    puts = count_puts(cache)
    reader = gzip_reader(indexed, cache)
    try:
        assert read_in_order(reader, 0, len(tar), 128 << 10) == tar
    finally:
        reader.close()
    assert reader.jobs_started > 5
    assert len(puts) == -(-len(tar) // BLOCK)
    assert set(puts.values()) == {1}
    if workers == 1:
        # Each job runs after the one before: it continues that job's cursor. Only the
        # first job enters at a seek point inside a block and skips to the next one.
        assert inflated["bytes"] <= len(tar) + BLOCK
        assert inflated["cursors"] <= 2
    else:  # a job that starts late may inflate the tail of its neighbour's block again
        assert inflated["bytes"] <= len(tar) * 1.1


class ManualPool(InflatePool):
    """Keeps the jobs for the test to run, in the order it likes."""

    def submit(self, job: InflateJob) -> bool:
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
    cache.pool = pool = ManualPool(2, cache.limit // 4)
    puts = count_puts(cache)
    reader = gzip_reader(indexed, cache)
    try:
        for offset in range(0, READAHEAD_TRIGGER, 128 << 10):  # sequential: jobs queued
            assert reader.pread(offset, 128 << 10) == tar[offset : offset + (128 << 10)]
        jobs = list(pool.queue)
        assert len(jobs) >= 3
        assert all(job.start % BLOCK for job in jobs)  # each one has a seam to share
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
        last_block_end = min(len(tar), -(-jobs[-1].end // BLOCK) * BLOCK)
        assert inflated["bytes"] - before == last_block_end - jobs[0].start
        assert not reader.jobs and not reader.pending
        # Read from the cache: reads would queue more jobs, which nobody here runs.
        for number in range(-(-last_block_end // BLOCK)):
            block = cache.get((indexed.layer.position, number))
            assert block == tar[number * BLOCK : (number + 1) * BLOCK]
    finally:
        reader.close()
    assert set(puts.values()) == {1}


def test_random_reads_do_not_trigger_readahead(spans_layer: tuple[IndexedLayer, bytes]) -> None:
    indexed, tar = spans_layer
    cache = BlockCache()
    reader = gzip_reader(indexed, cache)
    rng = random.Random(5)
    try:
        for size in (4096, 4096, 64 << 10):
            for _ in range(100):
                offset = rng.randrange(0, len(tar) - size)
                assert reader.pread(offset, size) == tar[offset : offset + size]
        assert reader.jobs_started == 0
        assert not cache.pool.threads
    finally:
        reader.close()


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
    cache.pool.attach()  # another layer's reader: the pool outlives this one
    reader = gzip_reader(indexed, cache)
    assert read_in_order(reader, 0, 1 << 20, 128 << 10, outstanding=1) == tar[: 1 << 20]
    assert reader.jobs and inflate_threads()
    reader.close()
    assert cursors and all(cursor.inflater is None for cursor in cursors)
    assert not reader.jobs and not reader.pending and not reader.parked
    assert inflate_threads()  # idle, for the other reader
    cache.pool.detach()  # the last reader of the image closed
    assert not inflate_threads()
    reader.close()  # idempotent


def test_damaged_region_ahead_of_a_sequential_reader_fails_only_the_read_that_reaches_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = text_blocks(8 << 20, 6)
    tar = make_tar([f("text", data)])
    blob = gzip.compress(tar, compresslevel=6)
    ref = layer_ref(tmp_path, blob, tar, "gzip")
    indexed = indexed_layer(ref, spacing=SPACING)
    points = indexed.points
    assert points is not None
    # Damage the compressed data of a span in the middle, ahead of the reader. Inside a
    # member there is no CRC to check, and random bytes may inflate to garbage for a while;
    # a run of one bits is refused by zlib at once.
    span = len(points) // 2
    damage_at = (points.compressed[span] + points.compressed[span + 1]) // 2
    with open(ref.path, "r+b") as damaged:
        damaged.seek(damage_at)
        damaged.write(b"\xff" * 4096)
    first_bad_block = points.uncompressed[span] // BLOCK
    first_good_after = points.uncompressed[span + 2]
    reader = gzip_reader(indexed)
    caplog.set_level(logging.DEBUG, logger="ocifs.layerread")
    size = 128 << 10
    try:
        offset = 0
        while offset + size <= first_bad_block * BLOCK:  # readahead ran into the damage
            assert reader.pread(offset, size) == tar[offset : offset + size]
            offset += size
        assert reader.jobs_started
        with pytest.raises(DamagedLayer):
            while offset < first_good_after:
                reader.pread(offset, size)
                offset += size
        # The jobs past the damage started at seek points of their own: their blocks, and
        # the rest of the layer, read fine.
        rest = tar[first_good_after:]
        assert read_in_order(reader, first_good_after, len(tar), size) == rest
        assert reader.pread(0, 4096) == tar[:4096]
    finally:
        reader.close()
    assert "readahead of" in caplog.text  # a job met the damage first, and said nothing
    assert not inflate_threads()


def test_readahead_stays_within_the_cache_bound(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """A small cache gets a short readahead: blocks are never inflated so far ahead that
    they are evicted before they are read, and the cache never grows past its limit."""
    indexed, tar = spans_layer
    cache = BlockCache(16 * BLOCK)
    sizes: list[int] = []
    ahead: list[int] = []
    position = [0]
    put = cache.put

    def checking_put(key: tuple[int, int], block: bytes) -> None:
        put(key, block)
        sizes.append(cache.size)
        if threading.current_thread().name.startswith("ocifs-inflate"):
            ahead.append(key[1] * BLOCK - position[0] // BLOCK * BLOCK)

    cache.put = checking_put  # type: ignore[method-assign]
    reader = gzip_reader(indexed, cache)
    try:
        assert reader.ahead == cache.limit // 4 < READAHEAD_BYTES

        def at(offset: int) -> None:
            position[0] = offset

        assert read_in_order(reader, 0, len(tar), 128 << 10, outstanding=1, before=at) == tar
    finally:
        reader.close()
    assert reader.jobs_started and ahead
    assert max(sizes) <= cache.limit
    assert max(ahead) < reader.ahead
    assert len(sizes) == -(-len(tar) // BLOCK)  # so nothing was inflated twice either


def test_a_cache_too_small_for_readahead_gets_none(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    indexed, tar = spans_layer
    reader = gzip_reader(indexed, BlockCache(4 * BLOCK))
    try:
        assert read_in_order(reader, 0, len(tar), 128 << 10) == tar
        assert reader.jobs_started == 0
    finally:
        reader.close()


def test_stretches_that_do_not_compress_are_left_to_the_reads(
    spans_layer: tuple[IndexedLayer, bytes],
) -> None:
    """Inflating stored deflate blocks is a copy: a thread would save nothing, so random
    data gets no readahead; the read goes on with the cursor the last job parked."""
    indexed, tar = spans_layer
    cache = BlockCache()
    cache.pool = InflatePool(1, cache.limit // 4)
    reader = gzip_reader(indexed, cache)
    middle = next(e for e in indexed.entries if e.path == b"middle")  # os.urandom
    start, end = middle.data_offset, middle.data_offset + middle.size
    try:
        assert read_in_order(reader, start, end, 128 << 10) == tar[start:end]
        assert reader.jobs_started == 0
        # Into it from compressible text: jobs up to the random data, then the reads.
        assert read_in_order(reader, 0, end, 128 << 10) == tar[:end]
        assert 0 < reader.jobs_started < (start + (2 << 20)) // (2 * SPACING)
    finally:
        reader.close()
