"""The image without a mount: load_image merges the layers, Image.read maps file reads (A9)."""

from __future__ import annotations

import gc
import io
import subprocess
import threading
from pathlib import Path

import pytest
from layers import big_tar, blob_layer, image_of
from tarbuild import f, make_tar

from ocifs.errors import LayerError
from ocifs.image import Image, LoadReport, collector_paused, index_layers, load_image
from ocifs.layerindex import LayerIndex
from ocifs.layerread import GzipLayerReader
from ocifs.tree import Inode


def read_all(image: Image, node: Inode) -> bytes:
    out = io.BytesIO()
    offset = 0
    while True:
        chunk = image.read(node, offset, 128 << 10)
        if not chunk:
            return out.getvalue()
        out.write(chunk)
        offset += len(chunk)


def inflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ocifs-inflate")]


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
        ref = blob_layer(tmp_path, tar, "none", index=0)
        image = load_image(image_of([ref]))
        try:
            node = image.tree.find(b"sparse")
            assert node is not None and node.size == len(expected)
            assert read_all(image, node) == expected, version
            assert image.read(node, (1 << 20) - 5, 10) == b"\0" * 5 + b"A" * 5
        finally:
            image.close()


def test_load_image_names_the_layer_of_a_merge_error(tmp_path: Path) -> None:
    good = make_tar([f("a", b"x")])
    bad = make_tar([f("../escape", b"x")])
    refs = [blob_layer(tmp_path, good, "none", 0), blob_layer(tmp_path, bad, "none", 1)]
    with pytest.raises(LayerError, match=r"layer 1 \(sha256:.*escapes the image root"):
        load_image(image_of(refs))


def test_reads_past_the_end_of_a_file_are_short(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"0123456789")])
    image = load_image(image_of([blob_layer(tmp_path, tar, "gzip")]))
    try:
        node = image.tree.find(b"a")
        assert node is not None
        assert image.read(node, 4, 100) == b"456789"
        assert image.read(node, 10, 100) == b""
        assert image.read(node, 50, 1) == b""
    finally:
        image.close()


def test_layers_share_the_image_pool_and_close_stops_it(tmp_path: Path) -> None:
    """One prefetch pool per image, handed to every layer's reader; Image.close ends its
    threads after the readers."""
    tar, files = big_tar()
    other = make_tar([f("other", files["first"])])
    layers = [blob_layer(tmp_path, tar, "gzip", 0), blob_layer(tmp_path, other, "gzip", 1)]
    image = load_image(image_of(layers))
    try:
        for reader in image.readers:
            assert isinstance(reader, GzipLayerReader) and reader.prefetcher.pool is image.pool
        for name in (b"first", b"other"):
            node = image.tree.find(name)
            assert node is not None
            assert read_all(image, node) == files["first"]
        assert image.pool.threads  # sequential reads were prefetched for
    finally:
        image.close()
    assert not inflate_threads()


def test_index_layers_hands_each_layer_over_in_order_and_keeps_what_it_gets_back(
    tmp_path: Path,
) -> None:
    """The merge takes each layer as soon as it and those below are indexed (and keeps the
    index without its entries): ``ready`` sees them in the layers' order, with entries."""
    tars = [make_tar([f(f"file{n}", b"x" * n)]) for n in range(3)]
    refs = image_of([blob_layer(tmp_path, tar, "gzip", n) for n, tar in enumerate(tars)]).layers
    seen: list[tuple[int, int]] = []

    def ready(number: int, index: LayerIndex) -> LayerIndex:
        assert index.entries is not None
        seen.append((number, len(index.entries)))
        return index.without_entries()

    indexes = index_layers(refs, True, None, 3, None, 1 << 20, LoadReport(), None, ready=ready)
    assert seen == [(0, 1), (1, 1), (2, 1)]
    assert all(index.entries is None for index in indexes)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_while_an_image_loads_and_as_it_was_after(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() == enabled
        with pytest.raises(ValueError), collector_paused():
            raise ValueError("a failed load")
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
