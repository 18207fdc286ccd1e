"""The mounted image, defined in one place: the merged tree plus the readers of its layers.

``load_image`` indexes the layers (in parallel, they are independent), replays them in manifest
order into the merged tree, and keeps one reader per layer. ``Image.read`` turns a read of a
file into reads of the layer that holds its data, filling the holes of sparse files with zeros.
The FUSE adapter only translates between this and the kernel.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .errors import LayerError, MergeError
from .layerio import IndexedLayer, LayerReader, Progress, SpanCache, index_layer
from .layout import LayerRef, ResolvedImage
from .tree import Inode, MergedTree, TreeBuilder

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[LayerRef], Progress | None]


class Image:
    """A resolved image ready to serve: fixed inodes and lazy file contents."""

    def __init__(self, resolved: ResolvedImage, tree: MergedTree, readers: list[LayerReader]):
        self.resolved = resolved
        self.tree = tree
        self.readers = readers

    def read(self, node: Inode, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular file at ``offset``; short only at end of file.

        Raises layerio.DamagedLayer when the layer's data cannot be read.
        """
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        reader = self.readers[node.layer]
        if node.sparse is None:
            return reader.pread(node.offset + offset, end - offset)
        result = bytearray(end - offset)  # holes read as zeros (A9)
        stored = node.offset  # the segments' data is packed back to back in the archive
        for segment_start, segment_length in node.sparse:
            low = max(offset, segment_start)
            high = min(end, segment_start + segment_length)
            if low < high:
                data = reader.pread(stored + low - segment_start, high - low)
                result[low - offset : high - offset] = data
            stored += segment_length
        return bytes(result)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class IndexingStopped(Exception):
    """Raised inside an indexing thread once the mount has been given up."""


def stoppable(progress: Progress | None, stop: threading.Event) -> Progress:
    """A progress callback that also ends the indexing once ``stop`` is set."""

    def advance(count: int) -> None:
        if stop.is_set():
            raise IndexingStopped
        if progress is not None:
            progress(count)

    return advance


def load_image(
    resolved: ResolvedImage,
    verify: bool = True,
    progress: ProgressFactory | None = None,
    jobs: int | None = None,
) -> Image:
    """Index every layer and merge them; raises OcifsError (one line) on bad input."""
    layers = resolved.layers
    workers = max(1, min(len(layers), jobs or os.cpu_count() or 1))
    indexed: list[IndexedLayer] = []
    cache = SpanCache()  # one bound on decompressed data held, whatever the number of layers
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="index") as pool:
        futures = [
            pool.submit(
                index_layer,
                layer,
                verify,
                stoppable(progress(layer) if progress else None, stop),
                cache,
            )
            for layer in layers
        ]
        try:
            for future in futures:
                indexed.append(future.result())
        except BaseException:  # a bad layer, or Ctrl-C: the other layers stop at their next read
            stop.set()
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled() and future.exception() is None:
                    future.result().reader.close()
            raise
    builder = TreeBuilder()
    for layer in indexed:
        try:
            builder.apply_layer(layer.layer.index, layer.entries)
        except MergeError as error:
            for other in indexed:
                other.reader.close()
            raise LayerError(f"{layer.layer.describe()}: {error}") from error
        layer.entries = []  # the tree holds what it needs; let the entry list go
    tree = builder.freeze()
    logger.info("merged %d layers into %d inodes", len(indexed), len(tree))
    return Image(resolved, tree, [layer.reader for layer in indexed])
