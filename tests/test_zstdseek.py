"""zstd frames (ocifs.zstdseek): the strict frame walker, the indexing pass and the cursors,
checked against streams the real ``zstd`` and ``pzstd`` write, frames made by hand, and the
original bytes (Z1, Z2, B3)."""

from __future__ import annotations

import io
import random
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from layers import text_blocks

from ocifs.blobs import BlobHandle, FileBlob
from ocifs.errors import CompressionError
from ocifs.gzseek import SeekPoints
from ocifs.zstdseek import (
    CHUNK,
    FRAME_MAGIC,
    MAX_BLOCK,
    ZstdCursor,
    ZstdIndexer,
    walk_frames,
)


def zstd(data: bytes, *options: str) -> bytes:
    """The real zstd tool's output for ``data`` (from a pipe: no content size unless asked)."""
    return subprocess.run(
        ["zstd", "-q", "-c", *options], input=data, capture_output=True, check=True
    ).stdout


def pzstd(data: bytes, tmp_path: Path) -> bytes:
    """pzstd's output: a skippable frame (the next frame's size) before each frame."""
    source = tmp_path / "input"
    source.write_bytes(data)
    return subprocess.run(
        ["pzstd", "-q", "-p", "2", "-c", str(source)], capture_output=True, check=True
    ).stdout


def raw_frame(data: bytes, checksum: bool = False, content_size: int | None = None) -> bytes:
    """A frame written by hand: raw blocks (at most MAX_BLOCK each), a window of 128 KiB, the
    content size if given (8 bytes), no checksum unless asked (then a wrong one: tests that
    want a right one use zstd)."""
    descriptor = (0x04 if checksum else 0) | (0xC0 if content_size is not None else 0)
    header = struct.pack("<IB", FRAME_MAGIC, descriptor) + bytes([(17 - 10) << 3])
    if content_size is not None:
        header += struct.pack("<Q", content_size)
    blocks = bytearray()
    pieces = [data[i : i + MAX_BLOCK] for i in range(0, len(data), MAX_BLOCK)] or [b""]
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        blocks += (len(piece) << 3 | int(last)).to_bytes(3, "little") + piece
    return header + bytes(blocks) + (b"\0\0\0\0" if checksum else b"")


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 | nibble, len(payload)) + payload


def index(blob: bytes) -> tuple[bytes, ZstdIndexer]:
    indexer = ZstdIndexer(io.BytesIO(blob))
    data = indexer.read(len(blob) * 100 + (1 << 20))
    assert indexer.read(1) == b""
    assert indexer.uncompressed == len(data)
    return data, indexer


def refused(blob: bytes) -> str:
    with pytest.raises(CompressionError) as info:
        ZstdIndexer(io.BytesIO(blob)).drain()
    message = str(info.value)
    assert "\n" not in message
    return message


def frame_ends(frames: list[bytes]) -> list[int]:
    ends, end = [], 0
    for frame in frames:
        end += len(frame)
        ends.append(end)
    return ends


@pytest.fixture
def handles(tmp_path: Path) -> Iterator[list[BlobHandle]]:
    """Handles of blobs written to files; each is closed after the test."""
    handles: list[BlobHandle] = []
    yield handles
    for handle in handles:
        handle.close()


def open_blob(tmp_path: Path, handles: list[BlobHandle], blob: bytes) -> BlobHandle:
    path = tmp_path / f"blob{len(handles)}.zst"
    path.write_bytes(blob)
    handle = FileBlob(path, len(blob)).open()
    handles.append(handle)
    return handle


# ---- the walker ----


def test_z1_walker_finds_the_frames_zstd_writes() -> None:
    """Z1: one frame per piece, each ending exactly where its bytes end; the checksum flag
    and the content size are read from the header (zstd writes the size with --content-size
    only when it knows it, as from a file; --no-check drops the checksum)."""
    data = text_blocks(600_000, 1)
    frames = [zstd(data[:200_000]), zstd(data[200_000:400_000], "--no-check"), zstd(data[400_000:])]
    walked = walk_frames(io.BytesIO(b"".join(frames)))
    assert [frame.end for frame in walked] == frame_ends(frames)
    assert [frame.start for frame in walked] == [0, *frame_ends(frames)[:-1]]
    assert [frame.number for frame in walked] == [1, 2, 3]
    assert [frame.checksum for frame in walked] == [True, False, True]
    assert not any(frame.skippable for frame in walked)


def test_z1_walker_reads_content_sizes_of_every_field_width() -> None:
    """Z1: Frame_Content_Size in 1 byte (single segment), 2 (offset by 256), 4 (zstd picks
    the width by the size it is told) and 8 (by hand)."""
    for size in (0, 5, 255, 300, 70_000, 5_000_000):
        blob = zstd(b"x" * size, f"--stream-size={size}")
        (frame,) = walk_frames(io.BytesIO(blob))
        assert frame.content_size == size
    assert walk_frames(io.BytesIO(raw_frame(b"abc", content_size=3)))[0].content_size == 3
    assert walk_frames(io.BytesIO(zstd(b"no size from a pipe")))[0].content_size is None


def test_z1_walker_passes_skippable_frames_pzstd_writes(tmp_path: Path) -> None:
    """Z1: pzstd puts a skippable frame before each frame; they are walked over, numbered 0."""
    blob = pzstd(text_blocks(9 << 20, 2), tmp_path)
    walked = walk_frames(io.BytesIO(blob))
    assert walked[0].skippable and walked[0].start == 0
    assert [frame.skippable for frame in walked] == [True, False] * (len(walked) // 2)
    assert walked[-1].end == len(blob)
    assert [frame.number for frame in walked if not frame.skippable] == list(
        range(1, len(walked) // 2 + 1)
    )


def test_z1_walker_in_any_chunking() -> None:
    """Z1: the same frames whatever the sizes of the pieces the blob is fed in."""
    frames = [zstd(b"abc" * 1000), skippable(b"x" * 20, 7), raw_frame(b"q" * 300_000)]
    blob = b"".join(frames)
    rng = random.Random(3)
    expected = frame_ends(frames)
    from ocifs.zstdseek import FrameWalker

    for _ in range(20):
        walker = FrameWalker()
        position = 0
        while position < len(blob):
            step = rng.choice([1, 2, 3, 5, 100, 70_000])
            walker.feed(blob[position : position + step])
            position += step
        assert [frame.end for frame in walker.finish()] == expected


# ---- indexing ----


def test_z1_indexer_decodes_and_records_every_frame_start() -> None:
    """Z1 Z2: the decoded stream is the original; each frame's start is a seek point, with
    its offset in the decoded stream; the blob is seen whole by on_input."""
    data = text_blocks(3 << 20, 4)
    pieces = [data[: 1 << 20], data[1 << 20 : 2 << 20], data[2 << 20 :]]
    frames = [zstd(piece) for piece in pieces]
    blob = b"".join(frames)
    seen: list[bytes] = []
    indexer = ZstdIndexer(io.BytesIO(blob), seen.append)
    decoded = b""
    while chunk := indexer.read(CHUNK):
        decoded += chunk
    assert decoded == data and b"".join(seen) == blob
    points = indexer.finish().points
    assert list(points.uncompressed) == [0, 1 << 20, 2 << 20]
    assert list(points.compressed) == [0, *frame_ends(frames)[:-1]]
    assert points.size == len(data) and points.compressed_size == len(blob)
    assert all(points.window(i) == b"" for i in range(len(points)))


def test_z1_indexer_single_frame_is_one_point() -> None:
    data = text_blocks(2 << 20, 5)
    decoded, indexer = index(zstd(data, "-1"))
    assert decoded == data
    assert list(indexer.finish().points.uncompressed) == [0]


def test_z1_indexer_hand_made_frames_skippable_and_empty() -> None:
    """Z1: raw blocks, an empty frame, skippable frames before, between and after: the empty
    frame's point gives way to the next frame's (points stay strictly ascending)."""
    frames = [
        skippable(b"lead"),
        raw_frame(b"a" * 200_000, content_size=200_000),
        raw_frame(b""),
        skippable(b"", 15),
        raw_frame(b"b" * 10),
        skippable(b"tail" * 10),
    ]
    blob = b"".join(frames)
    decoded, indexer = index(blob)
    assert decoded == b"a" * 200_000 + b"b" * 10
    result = indexer.finish()
    starts = [0, *frame_ends(frames)[:-1]]
    assert list(result.points.uncompressed) == [0, 200_000]
    assert list(result.points.compressed) == [starts[1], starts[4]]
    assert [frame.skippable for frame in result.frames] == [True, False, False, True, False, True]
    assert result.frames[3].magic == 0x184D2A5F


def test_z1_only_skippable_frames_decode_to_nothing() -> None:
    decoded, indexer = index(skippable(b"nothing here"))
    assert decoded == b""
    assert list(indexer.finish().points.uncompressed) == [0]


@pytest.mark.parametrize("cut", [3, 6, 10, 1000, -5, -4, -2])
def test_b3_truncated_zstd(cut: int) -> None:
    """B3 Z1: a stream cut anywhere inside a frame (header, block, checksum) is refused."""
    blob = zstd(text_blocks(300_000, 6)) + zstd(b"second frame" * 100)
    message = refused(blob[:cut])
    assert message.startswith("zstd stream is truncated")


def test_b3_truncated_in_a_later_frame_names_it() -> None:
    first = zstd(b"one" * 1000)
    message = refused(first + zstd(text_blocks(100_000, 13))[:-100])
    assert "truncated in zstd frame 2" in message and f"offset {len(first)}" in message


def test_b3_bad_frame_checksum() -> None:
    """B3 Z1: a content checksum that does not match the data: libzstd says so, with the frame."""
    first = zstd(b"first" * 1000)
    second = bytearray(zstd(text_blocks(100_000, 7)))
    second[-1] ^= 0x55
    message = refused(first + bytes(second))
    assert "zstd frame 2 is damaged" in message and "checksum" in message


def test_b3_damaged_block_data() -> None:
    blob = bytearray(zstd(text_blocks(400_000, 8), "--no-check"))
    for offset in range(40, len(blob) - 40, 997):
        blob[offset] ^= 0xFF
    assert "damaged" in refused(bytes(blob))


@pytest.mark.parametrize("tail", [b"\0", b"\0" * 4, b"garbage!", b"\x28\xb5\x00"])
def test_b3_garbage_after_the_last_frame(tail: bytes) -> None:
    """B3 Z1: any bytes after the last frame that are not a frame, zeros too."""
    blob = zstd(b"data" * 1000)
    message = refused(blob + tail)
    assert message == f"garbage after the last zstd frame, at blob offset {len(blob)}"


def test_b3_not_zstd_and_empty() -> None:
    assert "not a zstd stream" in refused(b"\x1f\x8b\x08\0 this is gzip")
    assert refused(b"") == "zstd stream is empty"


def test_b3_reserved_bit_dictionary_window_block_type_block_size() -> None:
    """B3 Z1: the header and block fields RFC 8878 reserves or ocifs cannot decode."""
    good = raw_frame(b"hello")
    reserved_bit = good[:4] + bytes([good[4] | 0x08]) + good[5:]
    assert "reserved bit" in refused(reserved_bit)
    dictionary = struct.pack("<IBBB", FRAME_MAGIC, 0x01, 7 << 3, 9) + good[6:]
    assert "needs zstd dictionary 9" in refused(dictionary)
    huge_window = good[:5] + bytes([(31 - 10) << 3]) + good[6:]
    assert "2048 MiB window" in refused(huge_window)
    block_type = good[:6] + bytes([good[6] | 0x06]) + good[7:]
    assert "reserved block type" in refused(block_type)
    oversized = good[:6] + ((MAX_BLOCK + 1) << 3 | 1).to_bytes(3, "little") + b"x" * (MAX_BLOCK + 1)
    assert f"a block of {MAX_BLOCK + 1} bytes" in refused(oversized)


def test_b3_content_size_that_lies() -> None:
    """Z1: a frame whose header gives a content size it does not hold."""
    message = refused(raw_frame(b"x" * 100, content_size=101))
    assert "zstd frame 1" in message and "damaged" in message


# ---- cursors ----


def multi_frame(tmp_path: Path) -> tuple[bytes, bytes, SeekPoints]:
    data = text_blocks(5 << 20, 9)
    step = 700_000
    frames = [zstd(data[i : i + step]) for i in range(0, len(data), step)]
    blob = b"".join(frames[:3]) + skippable(b"between") + b"".join(frames[3:])
    decoded, indexer = index(blob)
    assert decoded == data
    return data, blob, indexer.finish().points


def test_z2_cursor_reads_from_every_point_and_across_frames(
    tmp_path: Path, handles: list[BlobHandle]
) -> None:
    """Z2: a cursor started at any frame start reads the original bytes, on across frame
    boundaries and the skippable frame between two of them."""
    data, blob, points = multi_frame(tmp_path)
    handle = open_blob(tmp_path, handles, blob)
    assert len(points) == 8
    for number in range(len(points)):
        cursor = ZstdCursor(handle, points, number)
        start = points.uncompressed[number]
        assert cursor.read(1000) == data[start : start + 1000]
        cursor.skip(650_000)
        assert cursor.read(300_000) == data[start + 651_000 : start + 951_000]
        cursor.close()


def test_z2_cursor_random_reads_match(tmp_path: Path, handles: list[BlobHandle]) -> None:
    data, blob, points = multi_frame(tmp_path)
    handle = open_blob(tmp_path, handles, blob)
    rng = random.Random(10)
    for _ in range(40):
        offset = rng.randrange(len(data))
        number = points.find(offset)
        cursor = ZstdCursor(handle, points, number)
        cursor.skip(offset - points.uncompressed[number])
        size = rng.choice([1, 4096, 200_000])
        assert cursor.read(size) == data[offset : offset + size]
        assert cursor.position == min(len(data), offset + size)
        cursor.close()


def test_z2_cursor_reads_a_single_frame_to_the_end(
    tmp_path: Path, handles: list[BlobHandle]
) -> None:
    data = text_blocks(3 << 20, 11)
    blob = zstd(data)
    _, indexer = index(blob)
    points = indexer.finish().points
    cursor = ZstdCursor(open_blob(tmp_path, handles, blob), points, 0)
    pieces = []
    while piece := cursor.read(256 << 10):
        pieces.append(piece)
    assert b"".join(pieces) == data and cursor.read(10) == b""


def test_z2_cursor_hand_made_and_empty_frames(tmp_path: Path, handles: list[BlobHandle]) -> None:
    frames = [raw_frame(b"a" * 5), raw_frame(b""), skippable(b"s"), raw_frame(b"b" * 7)]
    blob = b"".join(frames)
    _, indexer = index(blob)
    points = indexer.finish().points
    cursor = ZstdCursor(open_blob(tmp_path, handles, blob), points, 0)
    assert cursor.read(3) == b"aaa" and cursor.read(100) == b"aabbbbbbb"


def test_b3_cursor_on_a_damaged_frame_fails_and_stays_failed(
    tmp_path: Path, handles: list[BlobHandle]
) -> None:
    """B3: a damaged frame fails the read (CompressionError, one line), and the cursor refuses
    to go on; a cursor started at another frame is unaffected."""
    data, blob, points = multi_frame(tmp_path)
    damaged = bytearray(blob)
    damaged[points.compressed[1] + 200] ^= 0xFF
    handle = open_blob(tmp_path, handles, bytes(damaged))
    cursor = ZstdCursor(handle, points, 1)
    with pytest.raises(CompressionError) as info:
        cursor.skip(800_000)  # damaged literals may decode: the checksum at the end fails
    assert "zstd stream is damaged near blob offset" in str(info.value)
    with pytest.raises(CompressionError):
        cursor.read(1)
    other = ZstdCursor(handle, points, 2)
    assert other.read(100) == data[points.uncompressed[2] : points.uncompressed[2] + 100]


def test_b3_cursor_refuses_frames_that_moved(tmp_path: Path, handles: list[BlobHandle]) -> None:
    """A blob whose frames no longer end where the index says (replaced by one of the same
    data cut differently) fails the read rather than serving shifted bytes."""
    data = text_blocks(1 << 20, 12)
    indexed = zstd(data[:500_000]) + zstd(data[500_000:])
    _, indexer = index(indexed)
    points = indexer.finish().points
    other = zstd(data[:400_000]) + zstd(data[400_000:])
    cursor = ZstdCursor(open_blob(tmp_path, handles, other), points, 0)
    with pytest.raises(CompressionError) as info:
        cursor.read(len(data))
    assert "the index says 500000" in str(info.value)
    longer = zstd(data[:600_000]) + zstd(data[600_000:])
    cursor = ZstdCursor(open_blob(tmp_path, handles, longer), points, 0)
    with pytest.raises(CompressionError) as info:
        cursor.read(len(data))
    assert "runs past its indexed end" in str(info.value)


def test_cursor_index_out_of_range() -> None:
    _, indexer = index(zstd(b"abc"))
    with pytest.raises(IndexError):
        ZstdCursor(FileBlob(Path("/dev/null"), 0).open(), indexer.finish().points, 1)
