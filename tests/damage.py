"""Damage a blob the way a disk or a stray write would, and say which reads it must fail.

``damage`` overwrites bytes of a blob in place, each with a different value, and gives back
what was there. ``bad_blocks`` is the oracle of the block-check tests: the blocks of a
layer's stream that come out wrong (or not at all) when decoded from their own seek point
with the damaged blob, judged against the tar the layer was built from. That is the rule
the readers keep: a block is refused exactly when it is wrong decoded from its seek point,
however the reads before it went. ``files_hit`` maps those blocks to the files whose data
lies in them: the reads that must fail with EIO; every other file must read right.
"""

from __future__ import annotations

import random
from pathlib import Path

from ocifs.blobs import Blob
from ocifs.blockcheck import CHECK_BLOCK
from ocifs.errors import CompressionError
from ocifs.gzseek import GzipCursor, SeekPoints
from ocifs.mediatypes import Compression
from ocifs.prefetch import Cursor
from ocifs.tarscan import FILE, TarEntry
from ocifs.zstdseek import ZstdCursor

CURSORS = {Compression.GZIP: GzipCursor, Compression.ZSTD: ZstdCursor}


def damage(path: Path, offset: int, count: int, seed: int) -> bytes:
    """Overwrite ``count`` bytes at ``offset``, each with a value other than its own; the
    bytes that were there."""
    rng = random.Random(seed)
    with path.open("r+b") as blob:
        blob.seek(offset)
        original = blob.read(count)
        blob.seek(offset)
        blob.write(bytes(byte ^ rng.randint(1, 255) for byte in original))
    return original


def restore(path: Path, offset: int, original: bytes) -> None:
    with path.open("r+b") as blob:
        blob.seek(offset)
        blob.write(original)


def bad_blocks(
    blob: Blob, compression: Compression, points: SeekPoints | None, stream: bytes
) -> set[tuple[int, int]]:
    """The blocks (the checked unit of the compression, as stream offset ranges) of
    ``stream`` (the layer's tar) that the damaged blob no longer gives: read from the blob
    (tar), or decoded by a new cursor from the block's seek point."""
    unit = CHECK_BLOCK[compression]
    bad = set()
    handle = blob.open()
    try:
        for number in range(-(-len(stream) // unit)):
            start = number * unit
            want = stream[start : start + unit]
            if points is None:
                got = handle.pread(len(want), start)
            else:
                try:
                    got = decoded(
                        CURSORS[compression](handle, points, points.find(start)), start, len(want)
                    )
                except CompressionError:
                    got = None
            if got != want:
                bad.add((start, start + len(want)))
    finally:
        handle.close()
    return bad


def decoded(cursor: Cursor, start: int, length: int) -> bytes:
    try:
        cursor.skip(start - cursor.position)
        return cursor.read(length)
    finally:
        cursor.close()


def files_hit(entries: list[TarEntry], bad: set[tuple[int, int]]) -> set[bytes]:
    """The regular (not sparse) files with data in a bad block."""
    hit = set()
    for entry in entries:
        if entry.kind != FILE or not entry.size:
            continue
        start, end = entry.data_offset, entry.data_offset + entry.size
        if any(low < end and start < high for low, high in bad):
            hit.add(entry.path)
    return hit


def silent_damage(
    path: Path,
    blob: Blob,
    compression: Compression,
    points: SeekPoints,
    stream: bytes,
    offsets: range,
    count: int,
) -> int:
    """The first of ``offsets`` where damaging ``count`` bytes goes unseen by the decoder:
    the span holding it decodes from its seek point without an error, but to other bytes
    (a changed literal, say). Such damage is what only the block sums can catch."""
    for offset in offsets:
        point = max(n for n in range(len(points)) if points.compressed[n] <= offset)
        start = points.uncompressed[point]
        end = points.uncompressed[point + 1] if point + 1 < len(points) else points.size
        original = damage(path, offset, count, seed=offset)
        handle = blob.open()
        try:
            got = decoded(CURSORS[compression](handle, points, point), start, end - start)
        except CompressionError:
            got = None
        finally:
            handle.close()
            restore(path, offset, original)
        if got is not None and got != stream[start:end]:
            return offset
    raise AssertionError(f"no damage of {count} bytes in {offsets} goes unseen")
