"""A byte (and 64 bytes) damaged in each kind of layer under a live mount (V1, B3).

One image, five layers, each holding its own directory of files: uncompressed, gzip, zstd
in one frame (what ``zstd`` writes), zstd in 1 MiB frames (``pzstd``-like) and zstd in one
frame without content checksum (``zstd --no-check``). It is mounted verified (its index,
block sums and all, cached by the first mount), then, in each case, one blob is damaged in
place while a fresh mount is up, and every file of the image is read. The files whose data
lies in a block the damage spoils (``damage.bad_blocks``: wrong decoded from its own seek
point, judged against the tar the layer was made of) fail with EIO and a log line naming
the file, the layer and the offset; every other file reads right; the mount stays up. Then
the blob is put back as it was for the next case.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chunkedbuild import frames_layer
from damage import bad_blocks, damage, files_hit, restore, silent_damage
from layers import text_blocks
from mounting import is_mounted, mounted
from tarbuild import d, f, make_tar

from ocifs.blobs import FileBlob
from ocifs.blockcheck import CHECK_BLOCK
from ocifs.layerindex import LayerIndex, index_layer
from ocifs.layout import LayerRef, resolve
from ocifs.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_TYPE, OCI_LAYER_ZSTD, Compression
from ocifs.ocibuild import LayoutWriter, gzip_bytes, host_platform, sha256_digest, zstd_bytes

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

MIB = 1 << 20
SIZES = (150_000, 420_000, 90_000, 300_000, 260_000)  # files of a few blocks and less
FILES_PER_LAYER = 20

# Each layer: its directory, how its blob is made from its tar, and its media type.
LAYERS = {
    "tar": (lambda tar: tar, OCI_LAYER_TYPE[Compression.NONE]),
    "gzip": (gzip_bytes, OCI_LAYER_GZIP),
    "zstd-one-frame": (lambda tar: zstd_bytes(tar, "-3"), OCI_LAYER_ZSTD),
    "zstd-frames": (lambda tar: frames_layer(tar, MIB), OCI_LAYER_ZSTD),
    "zstd-no-check": (lambda tar: zstd_bytes(tar, "-3", "--no-check"), OCI_LAYER_ZSTD),
}


@dataclass
class Layer:
    ref: LayerRef
    index: LayerIndex
    tar: bytes
    path: Path  # the blob's file

    def span(self, number: int) -> tuple[int, int]:
        """Blob offsets of seek point ``number`` and of the next."""
        assert self.index.points is not None
        compressed = self.index.points.compressed
        return compressed[number], compressed[number + 1]


@dataclass
class Image:
    arg: str
    cache: Path
    layers: dict[str, Layer]
    contents: dict[str, bytes]  # every file of the image by path, as the tars hold it


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    root = tmp_path_factory.mktemp("blockcheck")
    writer = LayoutWriter(root / "layout")
    descriptors = []
    contents: dict[str, bytes] = {}
    tars: dict[str, bytes] = {}
    for number, (name, (compress, media_type)) in enumerate(LAYERS.items()):
        members = [d(name)]
        for file in range(FILES_PER_LAYER):
            data = text_blocks(SIZES[file % len(SIZES)], 100 * number + file)
            members.append(f(f"{name}/{file:02d}", data))
            contents[f"{name}/{file:02d}"] = data
        tar = make_tar(members)
        tars[name] = tar
        descriptors.append((writer.add_blob(compress(tar), media_type), sha256_digest(tar)))
    writer.add_image(descriptors, ref="latest", platform=host_platform())
    writer.save()
    resolved = resolve(root / "layout", "latest")
    layers = {}
    for name, ref in zip(LAYERS, resolved.layers, strict=True):
        assert isinstance(ref.blob, FileBlob)
        layers[name] = Layer(ref, index_layer(ref), tars[name], ref.blob.path)
    found = Image(f"{root / 'layout'}:latest", root / "cache", layers, contents)
    # The first mount indexes and verifies every layer, and caches the index with its sums.
    with mounted(found.arg, root / "first", "--cache-dir", str(found.cache)) as mnt:
        assert (mnt / "tar" / "00").read_bytes() == contents["tar/00"]
    yield found


def read_all(mnt: Path, contents: dict[str, bytes]) -> set[str]:
    """Read every file; the ones that fail with EIO (all others must read right)."""
    failed = set()
    for path, data in sorted(contents.items()):
        try:
            assert (mnt / path).read_bytes() == data, f"{path} read wrong bytes"
        except OSError as error:
            assert error.errno == errno.EIO, f"{path}: {error}"
            failed.add(path)
    return failed


def check_damage(
    image: Image, tmp_path: Path, name: str, offset: int, count: int, check_only: bool
) -> set[tuple[int, int]]:
    """Damage ``count`` bytes at blob offset ``offset`` of layer ``name`` under a live mount,
    read every file of the image, and hold the outcome to the oracle. ``check_only``: the
    damage is such that only the block sums can see it (no checksum in the stream)."""
    layer = image.layers[name]
    log = tmp_path / "daemon.log"
    options = ("--cache-dir", str(image.cache), "--log-file", str(log))
    with mounted(image.arg, tmp_path / "m", *options) as mnt:
        original = damage(layer.path, offset, count, seed=offset)
        try:
            bad = bad_blocks(layer.ref.blob, layer.ref.compression, layer.index.points, layer.tar)
            assert layer.index.entries is not None
            expected = {f"{p.decode()}" for p in files_hit(layer.index.entries, bad)}
            assert expected, f"damage at {offset} spoils no file of {name}: a useless case"
            failed = read_all(mnt, image.contents)
            assert is_mounted(mnt)
            assert sorted(p.name for p in (mnt / name).iterdir())[:2] == ["00", "01"]
        finally:
            restore(layer.path, offset, original)
    assert failed == expected
    lines = [line for line in log.read_text().splitlines() if " EIO: read of " in line]
    position = layer.ref.position
    for path in failed:
        (line, *_) = [line for line in lines if f"'/{path}'" in line]
        assert line.count(f"layer {position} (sha256:") == 1, line
        assert re.search(r"(stream|blob) offset \d+", line), line
        if check_only:
            assert "differs from what the verified indexing pass read" in line, line
    return bad


def unseen(layer: Layer, offsets: range, count: int) -> int:
    """Where damage of ``count`` bytes goes unseen by the decoder (see ``silent_damage``)."""
    points = layer.index.points
    assert points is not None
    ref = layer.ref
    return silent_damage(layer.path, ref.blob, ref.compression, points, layer.tar, offsets, count)


@pytest.mark.parametrize("count", [1, 64])
@pytest.mark.parametrize("where", ["start", "middle", "end", "unseen"])
def test_v1_b3_damaged_gzip_span(image: Image, tmp_path: Path, where: str, count: int) -> None:
    """A gzip span damaged at its start (the first bytes fed at its seek point), in its
    middle or at its end (its last whole bytes before the next seek point); and, from its
    middle on, the first damage that inflates without an error to other bytes (what the
    issue found served as it was: a span read from a seek point never reaches the CRC)."""
    layer = image.layers["gzip"]
    assert layer.index.points is not None and len(layer.index.points) > 4
    start, end = layer.span(2)
    middle = (start + end) // 2
    if where == "unseen":
        offset = unseen(layer, range(middle, end - count, 97), count)
    else:
        offset = {"start": start, "middle": middle, "end": end - 1 - count}[where]
    check_damage(image, tmp_path, "gzip", offset, count, check_only=where == "unseen")


@pytest.mark.parametrize(
    ("count", "at"),
    [(1, 0.4), (64, 0.7)],
)
def test_v1_damaged_uncompressed_layer(image: Image, tmp_path: Path, count: int, at: float) -> None:
    """A tar layer has no checksum of its own: only the block sums see the damage. The
    64 bytes straddle a block boundary, and spoil both blocks."""
    layer = image.layers["tar"]
    offset = int(len(layer.tar) * at)
    if count > 1:
        unit = CHECK_BLOCK[Compression.NONE]
        offset = offset // unit * unit - count // 2
    bad = check_damage(image, tmp_path, "tar", offset, count, check_only=True)
    assert len(bad) == (2 if count > 1 else 1)


@pytest.mark.parametrize("count", [1, 64])
@pytest.mark.parametrize("name", ["zstd-one-frame", "zstd-frames", "zstd-no-check"])
def test_v1_b3_damaged_zstd_layer(image: Image, tmp_path: Path, name: str, count: int) -> None:
    """zstd in one frame (its checksum is checked only by a read that decodes to the frame's
    end), in 1 MiB frames (the middle of the third frame), and in one frame without a
    content checksum, where the first damage from the middle on that decodes without an
    error is what nothing but the block sums can see (Z1)."""
    layer = image.layers[name]
    size = layer.path.stat().st_size
    if name == "zstd-frames":
        start, end = layer.span(2)
        offset = (start + end) // 2
    elif name == "zstd-no-check":
        offset = unseen(layer, range(size // 2, size - count, 1013), count)
    else:
        offset = size // 2
    check_damage(image, tmp_path, name, offset, count, check_only=name == "zstd-no-check")
