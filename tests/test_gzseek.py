"""Random access into gzip streams (ocifs.gzseek): the strict indexing pass, seek points and
cursors, checked against the original bytes, Python's gzip module and indexed_gzip."""

from __future__ import annotations

import array
import gzip
import io
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import indexed_gzip
import pytest

from ocifs import gzseek, isal
from ocifs.blobs import BlobHandle, FileBlob
from ocifs.errors import CompressionError
from ocifs.gzseek import CHUNK, GzipCursor, GzipIndexer, SeekPoints

SPACING = 64 << 10

# Every test of the indexing pass runs with each inflater installed here: zlib's (always, the
# fallback) and ISA-L's (where libisal2 is). Their seek points are entered by zlib's cursor.
INFLATERS: dict[str, type[GzipIndexer]] = {"zlib": GzipIndexer}
CURSORS: dict[str, type[GzipCursor]] = {"zlib": GzipCursor}
if isal.available():
    from ocifs.isalseek import IsalGzipCursor, IsalGzipIndexer

    INFLATERS["isal"] = IsalGzipIndexer
    CURSORS["isal"] = IsalGzipCursor


@pytest.fixture(autouse=True, params=sorted(INFLATERS))
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with this inflater's indexer and cursor as the module's ``GzipIndexer``
    and ``GzipCursor``."""
    monkeypatch.setitem(globals(), "GzipIndexer", INFLATERS[request.param])
    monkeypatch.setitem(globals(), "GzipCursor", CURSORS[request.param])
    return str(request.param)


def mixed_data(size: int, seed: int) -> bytes:
    """Compressible text with stretches of random bytes: deflate makes dynamic, fixed and
    stored blocks of many sizes, so block boundaries fall at every bit position."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnop \n", k=rng.randint(2, 12))) for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.2:
            out += rng.randbytes(rng.randint(1, 40_000))
        else:
            out += b" ".join(rng.choices(words, k=rng.randint(10, 3000)))
    return bytes(out[:size])


def member(data: bytes, level: int = 6) -> bytes:
    """One gzip member, written by zlib (no file name, mtime 0)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def member_with_header_fields(data: bytes) -> bytes:
    """A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC, which zlib must parse."""
    extra = b"ab" + struct.pack("<H", 3) + b"xyz"
    header = b"\x1f\x8b\x08" + bytes([0x02 | 0x04 | 0x08 | 0x10]) + b"\0\0\0\0\0\xff"
    header += struct.pack("<H", len(extra)) + extra + b"name.tar\0" + b"a comment\0"
    header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + deflated + trailer


def index(blob: bytes, spacing: int = SPACING) -> tuple[bytes, SeekPoints]:
    indexer = GzipIndexer(io.BytesIO(blob), spacing)
    data = indexer.read(len(blob) * 1000 + (1 << 20))
    assert indexer.read(1) == b""
    assert indexer.uncompressed == len(data)
    return data, indexer.finish()


def refused(blob: bytes, spacing: int = SPACING) -> str:
    with pytest.raises(CompressionError) as info:
        indexer = GzipIndexer(io.BytesIO(blob), spacing)
        indexer.drain()
    message = str(info.value)
    assert "\n" not in message
    return message


BlobFiles = tuple[Path, list[BlobHandle]]  # where blobs are written, and their open handles


@pytest.fixture
def blob_fd(tmp_path: Path) -> Iterator[BlobFiles]:
    """Write blobs to files and open them; every handle is closed after the test."""
    handles: list[BlobHandle] = []
    yield tmp_path, handles
    for handle in handles:
        handle.close()


def open_blob(where: BlobFiles, blob: bytes, name: str = "blob.gz") -> BlobHandle:
    path = where[0] / name
    path.write_bytes(blob)
    handle = FileBlob(path, len(blob)).open()
    where[1].append(handle)
    return handle


def read_at(fd: BlobHandle, points: SeekPoints, offset: int, size: int) -> bytes:
    index = points.find(offset)
    cursor = GzipCursor(fd, points, index)
    try:
        cursor.skip(offset - points.uncompressed[index])
        assert cursor.position == min(offset, points.size)
        data = cursor.read(size)
        assert cursor.position == min(offset, points.size) + len(data)
        return data
    finally:
        cursor.close()


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail a test that hangs instead of letting it block the run."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the test took too long: a cursor loops?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- the indexing pass --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed() -> tuple[bytes, bytes]:
    data = mixed_data(6 << 20, 1)
    return data, member(data)


def test_indexer_yields_the_stream_in_reads_of_any_size(mixed: tuple[bytes, bytes]) -> None:
    data, blob = mixed
    rng = random.Random(2)
    indexer = GzipIndexer(io.BytesIO(blob), SPACING)
    pieces = []
    while True:
        size = rng.choice([0, 1, 511, 4096, 65_536, CHUNK - 1, CHUNK, 3 * CHUNK + 7])
        piece = indexer.read(size)
        if size and not piece:
            break
        if indexer.uncompressed < len(data):
            assert len(piece) == size  # short only at the end
        pieces.append(piece)
    assert b"".join(pieces) == data
    points = indexer.finish()
    assert points.size == len(data)
    assert points.compressed_size == len(blob)
    assert points.spacing == SPACING


def test_seek_points_are_spaced_and_carry_their_windows(mixed: tuple[bytes, bytes]) -> None:
    data, blob = mixed
    _, points = index(blob)
    assert len(points) > len(data) // SPACING // 2
    assert points.uncompressed[0] == 0 and points.compressed[0] == 0 and points.bits[0] == 0
    assert points.window(0) == b""
    for typecode_array in (points.uncompressed, points.compressed, points.window_offsets):
        assert isinstance(typecode_array, array.array) and typecode_array.typecode == "Q"
    assert len(points.bits) == len(points) and len(points.window_offsets) == len(points) + 1
    for i in range(1, len(points)):
        assert points.uncompressed[i] - points.uncompressed[i - 1] >= SPACING
        assert points.compressed[i] > points.compressed[i - 1]
        assert 0 <= points.bits[i] < 8
        offset = points.uncompressed[i]
        window = points.window(i)
        assert window == data[max(0, offset - 32768) : offset]
    # zran's technique only earns its keep if block boundaries inside bytes occur and work
    assert len(set(points.bits)) >= 4


def test_reads_from_every_point_cross_into_the_next(
    mixed: tuple[bytes, bytes], blob_fd: BlobFiles
) -> None:
    data, blob = mixed
    _, points = index(blob)
    fd = open_blob(blob_fd, blob)
    for i in range(len(points)):
        cursor = GzipCursor(fd, points, i)
        offset = points.uncompressed[i]
        assert cursor.position == offset
        assert cursor.read(SPACING + 5000) == data[offset : offset + SPACING + 5000]
        cursor.close()
        cursor.close()  # idempotent
    nonzero = [i for i in range(len(points)) if points.bits[i]]
    assert nonzero, "no seek point inside a byte"


def test_random_reads_match_the_original(mixed: tuple[bytes, bytes], blob_fd: BlobFiles) -> None:
    data, blob = mixed
    _, points = index(blob)
    fd = open_blob(blob_fd, blob)
    rng = random.Random(3)
    for _ in range(150):
        offset = rng.randrange(len(data) + 10)
        size = rng.choice([1, 100, 4096, 70_000, 300_000, 2 << 20])
        assert read_at(fd, points, offset, size) == data[offset : offset + size]
    # at and past the end
    assert read_at(fd, points, len(data) - 10, 4096) == data[-10:]
    assert read_at(fd, points, len(data), 4096) == b""
    assert read_at(fd, points, len(data) + 5, 4096) == b""


def test_cursor_reads_sequentially_to_the_end(
    mixed: tuple[bytes, bytes], blob_fd: BlobFiles
) -> None:
    data, blob = mixed
    _, points = index(blob)
    fd = open_blob(blob_fd, blob)
    cursor = GzipCursor(fd, points, 0)
    pieces = []
    rng = random.Random(4)
    while piece := cursor.read(rng.randint(1, 300_000)):
        pieces.append(piece)
        if rng.random() < 0.3:
            before = cursor.position
            cursor.skip(rng.randint(0, 100_000))
            pieces.append(data[before : cursor.position])
    assert b"".join(pieces) == data
    assert cursor.position == len(data)
    cursor.skip(10)
    assert cursor.position == len(data)
    assert cursor.read(10) == b""
    cursor.close()
    closed = GzipCursor(fd, points, 1)
    closed.close()
    with pytest.raises(ValueError):
        closed.read(1)


def test_seek_points_find_edges(mixed: tuple[bytes, bytes]) -> None:
    data, blob = mixed
    _, points = index(blob)
    assert points.find(0) == 0
    assert points.find(1) == 0
    for i in range(1, len(points)):
        offset = points.uncompressed[i]
        assert points.find(offset) == i
        assert points.find(offset - 1) == i - 1
        assert points.find(offset + 1) == i
    assert points.find(len(data) - 1) == len(points) - 1
    assert points.find(len(data)) == len(points) - 1
    assert points.find(1 << 62) == len(points) - 1
    with pytest.raises(ValueError):
        points.find(-1)
    handle = FileBlob(Path(os.devnull), 0).open()
    with pytest.raises(IndexError):
        GzipCursor(handle, points, len(points))
    handle.close()


def test_small_and_tiny_streams(blob_fd: BlobFiles) -> None:
    for data in (b"", b"x", b"hello world\n" * 3):
        blob = gzip.compress(data)
        got, points = index(blob, spacing=1)
        assert got == data
        assert list(points.uncompressed) == [0]
        fd = open_blob(blob_fd, blob, f"tiny-{len(data)}.gz")
        assert read_at(fd, points, 0, 100) == data


def test_spacing_of_one_makes_a_point_at_every_block(blob_fd: BlobFiles) -> None:
    data = mixed_data(1 << 20, 5)
    blob = member(data, level=1)
    got, points = index(blob, spacing=1)
    assert got == data
    assert len(points) > 10
    fd = open_blob(blob_fd, blob)
    for i in range(len(points)):
        offset = points.uncompressed[i]
        assert read_at(fd, points, offset, 1000) == data[offset : offset + 1000]
    with pytest.raises(ValueError):
        GzipIndexer(io.BytesIO(blob), 0)


def test_points_survive_persisting_through_mmap(
    mixed: tuple[bytes, bytes], blob_fd: BlobFiles
) -> None:
    """The windows may come back as a memory map, the offsets as arrays read from a file."""
    data, blob = mixed
    _, points = index(blob)
    windows_path = blob_fd[0] / "windows"
    windows_path.write_bytes(bytes(points.windows))
    with open(windows_path, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as m:
        loaded = SeekPoints(
            spacing=points.spacing,
            uncompressed=array.array("Q", points.uncompressed.tobytes()),
            compressed=array.array("Q", points.compressed.tobytes()),
            bits=bytes(points.bits),
            window_offsets=array.array("Q", points.window_offsets.tobytes()),
            windows=m,
            size=points.size,
            compressed_size=points.compressed_size,
        )
        fd = open_blob(blob_fd, blob)
        for offset in (0, 123_456, len(data) // 2, len(data) - 5):
            assert read_at(fd, loaded, offset, 50_000) == data[offset : offset + 50_000]
        view = SeekPoints(**{**loaded.__dict__, "windows": memoryview(bytes(points.windows))})
        assert read_at(fd, view, 999_999, 10) == data[999_999:1_000_009]


# --- concatenated members and padding ---------------------------------------------------


@pytest.fixture(scope="module")
def members() -> tuple[list[bytes], bytes]:
    parts = [
        mixed_data(300_000, 10),
        b"",  # an empty member
        b"short member\n",
        mixed_data(500_000, 11),
        b"",
        mixed_data(200_000, 12),
    ]
    blob = b"".join(
        member_with_header_fields(part) if i == 2 else member(part) for i, part in enumerate(parts)
    )
    return parts, blob


def test_concatenated_members_are_one_stream(
    members: tuple[list[bytes], bytes], blob_fd: BlobFiles
) -> None:
    parts, blob = members
    data, points = index(blob)
    assert data == b"".join(parts)
    # every member start is a point with an empty window (the empty members give way to
    # the member after them, at the same offset)
    starts = {}
    compressed_offset = 0
    uncompressed_offset = 0
    for i, part in enumerate(parts):
        starts[uncompressed_offset] = compressed_offset
        encoded = member_with_header_fields(part) if i == 2 else member(part)
        compressed_offset += len(encoded)
        uncompressed_offset += len(part)
    for offset, compressed in starts.items():
        i = points.find(offset)
        assert points.uncompressed[i] == offset
        assert points.window(i) == b""
        assert points.bits[i] == 0
        assert blob[points.compressed[i] : points.compressed[i] + 2] == b"\x1f\x8b"
        assert points.compressed[i] >= compressed
    assert list(points.uncompressed) == sorted(set(points.uncompressed))
    assert any(points.window(i) for i in range(len(points)))  # block points inside members

    fd = open_blob(blob_fd, blob)
    boundaries = sorted(starts)[1:]
    for boundary in boundaries:
        for before in (1, 100, 40_000, 200_000):
            offset = max(0, boundary - before)
            assert read_at(fd, points, offset, 300_000) == data[offset : offset + 300_000]
    # one cursor from the start through every member to the end
    cursor = GzipCursor(fd, points, 0)
    assert cursor.read(len(data) + 100) == data
    cursor.close()
    # from a block point inside the first member (raw deflate, trailer skipped) onwards
    inside = next(i for i in range(len(points)) if points.window(i))
    cursor = GzipCursor(fd, points, inside)
    offset = points.uncompressed[inside]
    assert cursor.read(len(data)) == data[offset:]
    cursor.close()


def test_zero_padding_after_the_end_is_accepted(
    members: tuple[list[bytes], bytes], blob_fd: BlobFiles
) -> None:
    parts, blob = members
    for padding in (1, 2, 511, CHUNK + 10):
        padded = blob + bytes(padding)
        seen: list[bytes] = []
        indexer = GzipIndexer(io.BytesIO(padded), SPACING, seen.append)
        assert indexer.read(10 << 20) == b"".join(parts)
        points = indexer.finish()
        assert b"".join(seen) == padded
        assert points.compressed_size == len(padded)
        fd = open_blob(blob_fd, padded, f"padded-{padding}.gz")
        assert read_at(fd, points, points.size - 1000, 5000) == b"".join(parts)[-1000:]


# --- what the indexing pass refuses -------------------------------------------------------


def test_truncated_streams_are_refused() -> None:
    data = mixed_data(400_000, 20)
    blob = member_with_header_fields(data)
    header_size = blob.index(b"a comment\0") + len(b"a comment\0") + 2
    cuts = [0, 1, 2, 3, 9, 12, header_size - 1, header_size, header_size + 1]
    cuts += [len(blob) // 3, len(blob) // 2, len(blob) - 9, len(blob) - 8, len(blob) - 3]
    cuts += [len(blob) - 1]
    for cut in cuts:
        assert refused(blob[:cut]) == "gzip stream is truncated", cut
    # inside the second member (its first two bytes say a member follows)
    two = member(b"first\n") + blob
    for cut in (len(member(b"first\n")) + 2, len(two) - 4):
        assert refused(two[:cut]) == "gzip stream is truncated", cut


def test_bad_crc_and_length_are_refused() -> None:
    data = mixed_data(200_000, 21)
    blob = member(data)
    bad_crc = blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:]
    assert refused(bad_crc) == "gzip member 1 is damaged: incorrect data check"
    bad_size = blob[:-4] + struct.pack("<I", len(data) + 1)
    assert refused(bad_size) == "gzip member 1 is damaged: incorrect length check"
    assert refused(member(b"one") + bad_size) == "gzip member 2 is damaged: incorrect length check"


def test_damaged_deflate_data_is_refused(inflater: str) -> None:
    blob = bytearray(member(mixed_data(100_000, 22)))
    blob[10] = 0x07  # the first block header: final, type 3 (reserved)
    reason = {"zlib": "invalid block type", "isal": "invalid block"}[inflater]
    assert refused(bytes(blob)) == f"gzip member 1 is damaged: {reason}"
    second = member(b"one") + bytes(blob)
    assert refused(second) == f"gzip member 2 is damaged: {reason}"
    header = bytearray(member(b"x"))
    header[2] = 7  # compression method
    assert refused(bytes(header)) == "gzip member 1 is damaged: unknown compression method"


def test_garbage_after_the_stream_is_refused() -> None:
    blob = member(mixed_data(100_000, 23))
    garbage = "garbage after the end of the gzip stream"
    assert refused(blob + b"this is not gzip") == garbage
    assert refused(blob + b"\x1f") == garbage
    assert refused(blob + b"\0" * 100 + b"\x01") == garbage
    assert refused(blob + bytes(CHUNK + 5) + b"late garbage") == garbage
    assert refused(blob + b"\0\x1f\x8b") == garbage  # a member after padding is garbage too


def test_non_gzip_and_empty_input_are_refused() -> None:
    assert refused(b"") == "gzip stream is truncated"
    assert refused(b"hello, this is plain text\n" * 10) == (
        "gzip member 1 is damaged: incorrect header check"
    )
    assert refused(zlib.compress(b"a zlib stream, not gzip")) == (
        "gzip member 1 is damaged: incorrect header check"
    )
    assert refused(bytes(100)).startswith("gzip member 1 is damaged")


def test_reads_after_a_failure_fail_too() -> None:
    indexer = GzipIndexer(io.BytesIO(b"not gzip at all"), SPACING)
    with pytest.raises(CompressionError, match="incorrect header check"):
        indexer.read(10)
    with pytest.raises(CompressionError, match="incorrect header check"):
        indexer.read(10)
    with pytest.raises(RuntimeError):
        indexer.finish()


def test_finish_needs_the_end() -> None:
    indexer = GzipIndexer(io.BytesIO(member(mixed_data(3 << 20, 24))), SPACING)
    indexer.read(1000)
    with pytest.raises(RuntimeError):
        indexer.finish()
    indexer.drain()
    assert indexer.uncompressed == 3 << 20
    assert indexer.finish().size == 3 << 20
    assert indexer.read(10) == b""
    # the thread that compressed the windows is gone
    assert not [t for t in threading.enumerate() if t.name.startswith("gzseek-window")]


# --- on_input ------------------------------------------------------------------------------


def test_on_input_sees_every_blob_byte_in_order() -> None:
    data = os.urandom(3 << 20)  # incompressible: the blob spans several chunks
    blob = member(data) + member(b"tail")
    seen: list[bytes] = []
    inflated_when_seen: list[int] = []

    def record(chunk: bytes) -> None:
        seen.append(chunk)
        inflated_when_seen.append(indexer.produced)

    indexer = GzipIndexer(io.BytesIO(blob), SPACING, record)
    assert indexer.read(len(data) + 10) == data + b"tail"
    indexer.finish()
    assert len(seen) >= 3
    assert all(isinstance(chunk, bytes) for chunk in seen)
    assert b"".join(seen) == blob
    # each chunk is handed over before any of it is inflated
    assert inflated_when_seen == sorted(inflated_when_seen)
    assert inflated_when_seen[0] == 0
    assert all(at < len(data) for at in inflated_when_seen)


def test_an_exception_from_on_input_propagates() -> None:
    class Stop(Exception):
        pass

    calls = 0

    def stop_at_the_second(chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Stop("cancelled")

    blob = member(os.urandom(3 << 20))
    indexer = GzipIndexer(io.BytesIO(blob), SPACING, stop_at_the_second)
    with pytest.raises(Stop):
        indexer.drain()
    assert calls == 2
    with pytest.raises(CompressionError):
        indexer.read(1)


# --- damage after indexing -----------------------------------------------------------------


def test_cursor_over_a_blob_damaged_after_indexing(
    mixed: tuple[bytes, bytes], blob_fd: BlobFiles, deadline: None
) -> None:
    data, blob = mixed
    _, points = index(blob)
    rng = random.Random(30)
    for case in range(12):
        damaged = bytearray(blob)
        if case < 4:
            start = rng.randrange(len(blob) // 4, len(blob) * 3 // 4)
            damaged[start : start + (64 << 10)] = rng.randbytes(64 << 10)
        elif case < 8:
            damaged[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        elif case < 10:
            del damaged[rng.randrange(len(blob) // 2, len(blob)) :]  # truncated file
        else:
            damaged = bytearray(len(blob))  # zeroed
        fd = open_blob(blob_fd, bytes(damaged), f"damaged-{case}.gz")
        failures = 0
        for i in range(len(points)):
            offset = points.uncompressed[i]
            end = points.uncompressed[i + 1] if i + 1 < len(points) else len(data)
            try:
                got = read_at(fd, points, offset, end - offset)
            except CompressionError as error:
                assert "\n" not in str(error)
                failures += 1
            else:
                # undetected damage can only give wrong bytes where the blob changed
                if got != data[offset:end]:
                    assert damaged[points.compressed[i] :] != blob[points.compressed[i] :]
        if case >= 8:
            assert failures


def test_cursor_reports_a_damaged_window(mixed: tuple[bytes, bytes], blob_fd: BlobFiles) -> None:
    _, blob = mixed
    _, points = index(blob)
    windows = bytearray(points.windows)
    start = points.window_offsets[1]
    windows[start : start + 8] = b"\xff" * 8
    broken = SeekPoints(**{**points.__dict__, "windows": bytes(windows)})
    fd = open_blob(blob_fd, blob)
    with pytest.raises(CompressionError, match="window of gzip seek point 1 is damaged"):
        GzipCursor(fd, broken, 1)


def test_cursor_reports_a_stream_that_ends_too_early(blob_fd: BlobFiles) -> None:
    data = mixed_data(400_000, 31)
    blob = member(data)
    _, points = index(blob)
    longer = SeekPoints(**{**points.__dict__, "size": points.size + 100})
    fd = open_blob(blob_fd, blob + bytes(100))
    with pytest.raises(CompressionError, match="ends at uncompressed offset 400000"):
        read_at(fd, longer, 399_000, 2000)
    fd = open_blob(blob_fd, blob, "exact.gz")
    with pytest.raises(CompressionError, match="ends at uncompressed offset 400000"):
        read_at(fd, longer, 399_000, 2000)
    assert read_at(fd, points, 399_000, 2000) == data[399_000:]


# --- against indexed_gzip and across threads ---------------------------------------------


def test_random_reads_agree_with_indexed_gzip(
    members: tuple[list[bytes], bytes],
    mixed: tuple[bytes, bytes],
    blob_fd: BlobFiles,
) -> None:
    for name, blob in (("members.gz", members[1]), ("mixed.gz", mixed[1])):
        _, points = index(blob)
        fd = open_blob(blob_fd, blob, name)
        oracle = indexed_gzip.IndexedGzipFile(str(blob_fd[0] / name), spacing=SPACING)
        try:
            rng = random.Random(40)
            for _ in range(60):
                offset = rng.randrange(points.size + 100)
                size = rng.choice([1, 4096, 100_000, 1 << 20])
                oracle.seek(offset)
                assert read_at(fd, points, offset, size) == oracle.read(size), (name, offset)
        finally:
            oracle.close()


def test_independent_cursors_in_threads_share_one_fd(
    mixed: tuple[bytes, bytes], blob_fd: BlobFiles
) -> None:
    data, blob = mixed
    _, points = index(blob)
    fd = open_blob(blob_fd, blob)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                offset = rng.randrange(len(data))
                size = rng.choice([4096, 200_000])
                assert read_at(fd, points, offset, size) == data[offset : offset + size]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_indexers_in_threads(
    members: tuple[list[bytes], bytes], mixed: tuple[bytes, bytes]
) -> None:
    results: dict[int, bytes] = {}

    def run(number: int, blob: bytes) -> None:
        results[number] = index(blob)[0]

    blobs = [mixed[1], members[1], mixed[1]]
    threads = [threading.Thread(target=run, args=item) for item in enumerate(blobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: mixed[0], 1: b"".join(members[0]), 2: mixed[0]}


def test_isal_is_used_where_installed_and_zlib_otherwise() -> None:
    """new_indexer picks ISA-L where libisal2 loads; OCIFS_INFLATE=zlib (or no libisal)
    falls back to zlib, whose pass gives the same stream and refuses the same damage (B3)."""
    expected = "IsalGzipIndexer" if "isal" in INFLATERS else "GzipIndexer"
    assert type(gzseek.new_indexer(io.BytesIO(member(b"x")))).__name__ == expected
    script = (
        "import io, zlib; from ocifs import gzseek, isal; assert not isal.available(); "
        "c = zlib.compressobj(6, zlib.DEFLATED, 31); b = c.compress(b'y' * 99) + c.flush(); "
        "i = gzseek.new_indexer(io.BytesIO(b)); assert type(i) is gzseek.GzipIndexer; "
        "assert i.read(1000) == b'y' * 99; print('zlib')"
    )
    env = dict(os.environ, OCIFS_INFLATE="zlib", PYTHONPATH=str(Path(__file__).parent.parent))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "zlib", done.stderr


@pytest.mark.skipif("isal" not in INFLATERS, reason="libisal2 is not installed")
def test_isal_and_zlib_index_a_stream_alike(blob_fd: BlobFiles) -> None:
    """The same stream and the same number of members from both; every ISA-L seek point
    serves, through zlib's cursor, the bytes the stream has there."""
    data = mixed_data(5 << 20, 30)
    blob = member(data[: 2 << 20]) + member(data[2 << 20 :], level=9)
    found = {}
    for name, cls in INFLATERS.items():
        indexer = cls(io.BytesIO(blob), SPACING)
        assert indexer.read(len(data) + 1) == data
        found[name] = indexer.finish()
    points = found["isal"]
    assert len(points) > 40 and points.size == found["zlib"].size == len(data)
    fd = open_blob(blob_fd, blob)
    for seek, cursor in ((points, CURSORS["zlib"]), (found["zlib"], CURSORS["isal"])):
        for i in range(len(seek)):
            offset = seek.uncompressed[i]
            reader = cursor(fd, seek, i)
            assert reader.read(3000) == data[offset : offset + 3000]
            reader.close()


@pytest.mark.skipif(
    "isal" not in INFLATERS or not Path("/usr/include/isa-l/igzip_lib.h").exists(),
    reason="libisal2 or its headers (libisal-dev) are not installed",
)
def test_isal_state_layout_matches_the_headers(tmp_path: Path) -> None:
    """ocifs.isal's ctypes InflateState has the size and field offsets of the installed
    headers' struct inflate_state (isalseek copies it byte for byte and reads its fields)."""
    fields = [name for name, _ in isal.InflateState._fields_]
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <isa-l/igzip_lib.h>\n"
        'int main(void) {\n  printf("%zu\\n", sizeof(struct inflate_state));\n'
        + "".join(
            f'  printf("%zu\\n", offsetof(struct inflate_state, {name}));\n' for name in fields
        )
        + "  return 0;\n}\n"
    )
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(source)], check=True)
    printed = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True)
    numbers = [int(line) for line in printed.stdout.split()]
    offsets = [getattr(isal.InflateState, name).offset for name in fields]
    assert numbers == [isal.STATE_SIZE, *offsets]
