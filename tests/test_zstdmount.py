"""zstd images mounted through the real ``ocifs`` command and FUSE: layers written by the
``zstd`` and ``pzstd`` tools and by ``skopeo copy --dest-compress-format zstd`` and
``zstd:chunked``, read back byte for byte; a damaged frame under a live mount is EIO and a log
line, and the mount stays up (Z1, Z2, Z3)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chunkedbuild import frames_layer
from layers import text_blocks
from mounting import is_mounted, mounted
from tarbuild import d, f, make_tar, wh

from ocifs.errors import LayerError
from ocifs.layerindex import index_layer
from ocifs.layout import resolve
from ocifs.mediatypes import OCI_LAYER_ZSTD
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

MIB = 1 << 20
VFS = ["--storage-driver", "vfs"]
STORAGE = "containers-storage:[vfs@/var/lib/containers/storage+/run/containers/storage]"


def files_below(top: Path) -> dict[str, bytes]:
    """Every regular file below ``top`` by relative path, with its bytes."""
    found = {}
    for root, _, names in os.walk(top):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(top))] = path.read_bytes()
    return found


def zstd_image(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A zstd layer by ``zstd``, a multi-frame one by ``pzstd`` and a gzip one on top that
    deletes a file of the first."""
    big = text_blocks(12 * MIB, 41)
    lower = make_tar([d("etc"), f("etc/hostname", b"zstd\n"), f("big", big), f("gone", b"x")])
    middle_data = text_blocks(9 * MIB, 42)
    middle = make_tar([d("srv"), f("srv/data", middle_data)])
    source = tmp_path / "middle.tar"
    source.write_bytes(middle)
    pz = subprocess.run(
        ["pzstd", "-q", "-p", "2", "-c", str(source)], capture_output=True, check=True
    ).stdout
    upper = make_tar([f("etc/motd", b"hello\n"), wh("gone")])
    layout = tmp_path / "layout"
    writer = LayoutWriter(layout)
    layers = [
        writer.add_layer(lower, "zstd"),
        (writer.add_blob(pz, OCI_LAYER_ZSTD), sha256_digest(middle)),
        writer.add_layer(upper, "gzip"),
    ]
    writer.add_image(layers, ref="latest", platform=host_platform())
    writer.save()
    expected = {
        "etc/hostname": b"zstd\n",
        "etc/motd": b"hello\n",
        "big": big,
        "srv/data": middle_data,
    }
    return layout, expected


def test_z1_zstd_and_pzstd_layers_mount_and_read_back(tmp_path: Path) -> None:
    """Z1 Z2: the files are the image's, the whiteout applied across compressions, and
    random reads of the big file match."""
    layout, expected = zstd_image(tmp_path)
    with mounted(f"{layout}:latest", tmp_path / "m", "--cache-dir", str(tmp_path / "c")) as mnt:
        assert files_below(mnt) == expected
        rng = random.Random(43)
        with open(mnt / "big", "rb") as big:
            for _ in range(100):
                offset = rng.randrange(len(expected["big"]))
                big.seek(offset)
                assert big.read(4096) == expected["big"][offset : offset + 4096]
    # A second mount from the cache: the frame starts come back from it.
    with mounted(f"{layout}:latest", tmp_path / "m", "--cache-dir", str(tmp_path / "c")) as mnt:
        assert (mnt / "srv" / "data").read_bytes() == expected["srv/data"]


@pytest.fixture(scope="module")
def skopeo_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A one-layer image committed by buildah (vfs storage), copied by skopeo as zstd and as
    zstd:chunked into OCI layouts; and the directory it was made from."""
    work = tmp_path_factory.mktemp("skopeo")
    context = work / "context"
    (context / "etc").mkdir(parents=True)
    (context / "usr" / "bin").mkdir(parents=True)
    (context / "etc" / "hostname").write_bytes(b"from buildah\n")
    (context / "usr" / "bin" / "big").write_bytes(text_blocks(6 * MIB, 44))
    (context / "usr" / "bin" / "random").write_bytes(random.Random(45).randbytes(2 * MIB))
    for number in range(50):
        (context / "usr" / f"small-{number}").write_bytes(b"small %d\n" % number)
    name = f"localhost/ocifs-zstd-test-{uuid.uuid4().hex[:12]}"
    container = subprocess.run(
        ["buildah", *VFS, "from", "scratch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(
            ["buildah", *VFS, "copy", container, str(context), "/"], capture_output=True, check=True
        )
        subprocess.run(
            ["buildah", *VFS, "commit", "-q", container, name], capture_output=True, check=True
        )
        layouts = []
        for form in ("zstd", "zstd:chunked"):
            layout = work / form.replace(":", "-")
            source, destination = f"{STORAGE}{name}", f"oci:{layout}:latest"
            subprocess.run(
                ["skopeo", "copy", "-q", "--dest-compress-format", form, source, destination],
                capture_output=True,
                check=True,
            )
            layouts.append(layout)
        yield context, layouts[0].parent
    finally:
        subprocess.run(["buildah", *VFS, "rm", container], capture_output=True)
        subprocess.run(["buildah", *VFS, "rmi", "-f", name], capture_output=True)


@pytest.mark.parametrize("form", ["zstd", "zstd-chunked"])
def test_z3_skopeo_zstd_and_zstd_chunked_images_mount(
    skopeo_images: tuple[Path, Path], tmp_path: Path, form: str
) -> None:
    """Z1 Z3: what skopeo writes (zstd:chunked with its TOC, footer and annotations, checked)
    mounts and reads as the directory buildah committed."""
    context, layouts = skopeo_images
    layout = layouts / form
    index = (layout / "index.json").read_text()
    manifest_digest = index.split('"digest":"sha256:', 1)[1].split('"', 1)[0]
    manifest = (layout / "blobs" / "sha256" / manifest_digest).read_text()
    assert OCI_LAYER_ZSTD in manifest
    assert ("zstd-chunked.manifest-position" in manifest) == (form == "zstd-chunked")
    with mounted(f"{layout}:latest", tmp_path / "m", "--no-cache") as mnt:
        assert files_below(mnt) == files_below(context)


def test_b3_damaged_zstd_frame_under_a_live_mount_is_eio(tmp_path: Path) -> None:
    """B3: a frame damaged after mounting fails the reads that reach it with EIO and a log
    line naming the file, the layer and the damage; the mount stays up and serves the rest."""
    first, second = text_blocks(6 * MIB, 46), text_blocks(14 * MIB, 47)
    tar = make_tar([f("small", b"early\n"), f("first", first), f("second", second)])
    layout = tmp_path / "layout"
    writer = LayoutWriter(layout)
    descriptor = writer.add_blob(frames_layer(tar, MIB), OCI_LAYER_ZSTD)
    writer.add_image([(descriptor, sha256_digest(tar))], ref="latest", platform=host_platform())
    writer.save()
    blob = writer.blob_path(descriptor["digest"])
    size = blob.stat().st_size
    log = tmp_path / "daemon.log"
    options = ("--no-verify", "--no-cache", "--log-file", str(log))
    with mounted(f"{layout}:latest", tmp_path / "m", *options) as mnt:
        assert (mnt / "first").read_bytes() == first
        with blob.open("r+b") as raw:  # the second file's frames, far past prefetch's reach
            raw.seek(int(size * 0.85))
            raw.write(random.Random(48).randbytes(int(size * 0.1)))
        with pytest.raises(OSError) as info, open(mnt / "second", "rb") as damaged:
            damaged.read()
        assert info.value.errno == errno.EIO
        assert is_mounted(mnt)
        assert (mnt / "small").read_bytes() == b"early\n"
        assert hashlib.sha256((mnt / "first").read_bytes()).digest() == (
            hashlib.sha256(first).digest()
        )
    lines = [line for line in log.read_text().splitlines() if "EIO" in line]
    assert lines, log.read_text()
    assert "'/second'" in lines[0] and "layer 0 (sha256:" in lines[0] and "zstd" in lines[0]


def test_z3_skopeo_chunked_layer_is_checked_against_its_toc(
    skopeo_images: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Z3: skopeo's zstd:chunked layer (its footer and the io.containers.zstd-chunked.*
    annotations of skopeo 1.9) goes through the TOC checks and agrees; the same blob with an
    annotation that lies about the TOC's checksum is refused."""
    _, layouts = skopeo_images
    (layer,) = resolve(layouts / "zstd-chunked", "latest").layers
    assert any("zstd-chunked.manifest-position" in key for key in layer.annotations)
    with caplog.at_level(logging.INFO, logger="ocifs.zstdchunked"):
        index_layer(layer)
    assert "zstd:chunked, TOC of" in caplog.text and "agrees with the stream" in caplog.text
    key = next(k for k in layer.annotations if k.endswith("manifest-checksum"))
    lying = dataclasses.replace(layer, annotations={**layer.annotations, key: "sha256:" + "0" * 64})
    with pytest.raises(LayerError, match="manifest-checksum"):
        index_layer(lying)
