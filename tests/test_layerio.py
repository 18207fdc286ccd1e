"""Indexing and reading layer blobs, without a mount (R9, B2, B3, A9)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from tarbuild import f, make_tar

from ocifs.errors import LayerError
from ocifs.gzseek import DEFAULT_SPACING, GzipCursor, SeekPoints
from ocifs.image import Image, load_image
from ocifs.layerio import (
    BLOCK,
    BlockCache,
    DamagedLayer,
    GzipLayerReader,
    IndexedLayer,
    LayerReader,
    index_layer,
    open_reader,
)
from ocifs.layout import LayerRef, ResolvedImage
from ocifs.ocibuild import OCI_LAYER_GZIP, OCI_LAYER_TAR, sha256_digest


def layer_ref(
    tmp_path: Path, blob: bytes, tar: bytes, compression: str, index: int = 0
) -> LayerRef:
    digest = sha256_digest(blob)
    path = tmp_path / f"blob-{index}-{digest[7:19]}"
    path.write_bytes(blob)
    media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER_TAR
    return LayerRef(index, digest, len(blob), media_type, compression, sha256_digest(tar), path)


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
    indexed = index_layer(layer_ref(tmp_path, blob, tar, compression))
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
    indexed = index_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
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
    indexed = index_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
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
    indexed = index_layer(layer_ref(tmp_path, gzip.compress(tar, compresslevel=1), tar, "gzip"))
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
    bad = LayerRef(0, "sha256:" + "0" * 64, ref.size, ref.media_type, "none", ref.diff_id, ref.path)
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:0+\): layer digest mismatch"):
        index_layer(bad)
    assert index_layer(bad, verify=False).entries  # --no-verify trusts the layout


def test_r9_b2_diff_id_mismatch_in_gzip_layer(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    ref = layer_ref(tmp_path, gzip.compress(tar), tar, "gzip")
    bad = LayerRef(0, ref.digest, ref.size, ref.media_type, "gzip", "sha256:" + "1" * 64, ref.path)
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
    indexed = index_layer(layer_ref(tmp_path, blob, tar, "gzip"))
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
    indexed = index_layer(ref)
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
    indexed = index_layer(ref)
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
    indexed = index_layer(layer_ref(tmp_path, blob, tar, "gzip"))
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
    good = LayerRef(0, sha512, ref.size, ref.media_type, "none", ref.diff_id, ref.path)
    indexed = index_layer(good)
    assert [e.path for e in indexed.entries] == [b"a"]
    bad = LayerRef(
        0, "sha512:" + "0" * 128, ref.size, ref.media_type, "none", ref.diff_id, ref.path
    )
    with pytest.raises(LayerError, match="layer digest mismatch"):
        index_layer(bad)
