"""The FUSE adapter without a mount: what an EIO says in the log, and the tree's path_of."""

from __future__ import annotations

import errno
import io
import logging
import threading
import time
from pathlib import Path

import pyfuse3
import pytest
import trio
from tarbuild import Member, d, f, link, make_tar

from ocifs.fuse_ops import READ_THREADS, ImageOperations
from ocifs.image import load_image
from ocifs.layerread import DamagedLayer
from ocifs.layout import resolve
from ocifs.ocibuild import LayoutWriter, host_platform
from ocifs.tarscan import scan_tar
from ocifs.tree import MergedTree, TreeBuilder


def merge(members: list[Member]) -> MergedTree:
    builder = TreeBuilder()
    builder.apply_layer(0, scan_tar(io.BytesIO(make_tar(members))))
    return builder.freeze()


def ino_of(tree: MergedTree, path: bytes) -> int:
    found = tree.find(path)
    assert found is not None
    return found.ino


def test_path_of_gives_every_inode_its_path_in_the_image() -> None:
    tree = merge([d("etc"), f("etc/passwd"), d("usr/lib/x"), f("usr/lib/x/caf\xe9"), f("z")])
    assert tree.path_of(1) == b"/"
    for path, inode in tree.walk():
        assert tree.path_of(inode.ino) == b"/" + path
    assert tree.path_of(ino_of(tree, b"usr/lib/x")) == b"/usr/lib/x"
    with pytest.raises(KeyError):
        tree.path_of(len(tree) + 1)
    with pytest.raises(KeyError):
        tree.path_of(0)


def test_path_of_a_hardlink_is_one_of_its_names() -> None:
    tree = merge([f("b/file", b"data"), link("a/other", "b/file"), link("c", "b/file")])
    ino = ino_of(tree, b"c")
    assert ino == ino_of(tree, b"a/other") == ino_of(tree, b"b/file")
    assert tree.path_of(ino) in {b"/a/other", b"/b/file", b"/c"}
    assert tree.find(tree.path_of(ino)) is not None


class BrokenReader:
    """A layer reader whose data is gone, as a damaged gzip stream would make it."""

    def __init__(self, describe: str) -> None:
        self.describe = describe

    def pread(self, offset: int, size: int) -> bytes:
        raise DamagedLayer(f"{self.describe}: invalid stored block lengths")

    def close(self) -> None:
        pass


def test_eio_log_line_names_the_file_the_layer_and_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    lower = writer.add_layer(make_tar([f("ok", b"fine")]))
    upper = writer.add_layer(make_tar([d("srv/data"), f("srv/data/table", b"x" * 5000)]))
    writer.add_image([lower, upper], ref="v1", platform=host_platform())
    writer.save()
    image = load_image(resolve(tmp_path / "layout", "v1"))
    layer = image.resolved.layers[1]
    image.readers[1] = BrokenReader(layer.describe())
    operations = ImageOperations(image)
    ino = ino_of(image.tree, b"srv/data/table")

    async def read() -> bytes:
        return await operations.read(ino, 4096, 904)

    with caplog.at_level(logging.ERROR, logger="ocifs"), pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(read)
    assert info.value.errno == errno.EIO
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"EIO: read of '/srv/data/table' (inode {ino}) at offset 4096, 904 bytes,"
        f" from layer 1 ({layer.digest}): invalid stored block lengths"
    )
    image.close()


class SlowReader:
    """A layer reader that takes a while per read and counts the reads in it at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def pread(self, offset: int, size: int) -> bytes:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return b"y" * size

    def close(self) -> None:
        pass


def test_reads_in_threads_at_once_are_capped(tmp_path: Path) -> None:
    """Three times READ_THREADS reads at once: at most READ_THREADS run in threads (each holds
    a block and its reply), the others wait for a turn, and every one is answered."""
    writer = LayoutWriter(tmp_path / "layout")
    layer = writer.add_layer(make_tar([f("big", b"x" * (1 << 20))]))
    writer.add_image([layer], ref="v1", platform=host_platform())
    writer.save()
    image = load_image(resolve(tmp_path / "layout", "v1"))
    slow = SlowReader()
    image.readers[0] = slow
    operations = ImageOperations(image)
    ino = ino_of(image.tree, b"big")
    replies: list[bytes] = []

    async def one(number: int) -> None:
        replies.append(await operations.read(ino, number * 4096, 4096))

    async def many() -> None:
        async with trio.open_nursery() as nursery:
            for number in range(3 * READ_THREADS):
                nursery.start_soon(one, number)

    trio.run(many)
    image.close()
    assert replies == [b"y" * 4096] * (3 * READ_THREADS)
    assert 1 < slow.most <= READ_THREADS
