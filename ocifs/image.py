"""The mounted image, defined in one place: the merged tree plus the readers of its layers.

``load_image`` indexes the layers (in parallel, they are independent) or takes their indexes
from the cache, replays them in manifest order into the merged tree (or takes that from the
cache too), and keeps one reader per layer. ``Image.read`` turns a read of a
file into reads of the layer that holds its data, filling the holes of sparse files with zeros.
The FUSE adapter only translates between this and the kernel.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import LayerError, MergeError
from .gzseek import DEFAULT_SPACING
from .indexcache import CachedLayer, CacheMiss, IndexCache
from .layerio import IndexedLayer, Progress, index_layer
from .layerread import BLOCK_CACHE_BYTES, BlockCache, LayerReader, check_supported, open_reader
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

        Raises layerread.DamagedLayer when the layer's data cannot be read.
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


@dataclass
class LoadReport:
    """Where each part of the image came from, for ``ocifs index`` and the log."""

    indexed: list[LayerRef] = field(default_factory=list)  # read from their blobs
    from_cache: list[LayerRef] = field(default_factory=list)  # index file taken from the cache
    tree_from_cache: bool = False


def load_image(
    resolved: ResolvedImage,
    verify: bool = True,
    progress: ProgressFactory | None = None,
    jobs: int | None = None,
    cache: IndexCache | None = None,
    block_cache_bytes: int = BLOCK_CACHE_BYTES,
    spacing: int = DEFAULT_SPACING,
    report: LoadReport | None = None,
) -> Image:
    """Index every layer (or take its index from the cache) and merge them.

    Raises OcifsError (one line) on bad input. With a cache, a layer whose index file is
    usable is not read at all; an index built without verification is not used by a mount
    that verifies. When every layer is cached and so is their merged tree, nothing is merged.
    """
    layers = resolved.layers
    for layer in layers:
        check_supported(layer)
    report = report if report is not None else LoadReport()
    cached: dict[int, CachedLayer] = {}
    if cache is not None:
        for layer in layers:
            found = cached_layer(cache, layer, verify, with_entries=False)
            if found is not None:
                cached[layer.index] = found
    tree: MergedTree | None = None
    if cache is not None and len(cached) == len(layers):
        try:
            tree = cache.load_tree(layers)
            report.tree_from_cache = True
        except CacheMiss as reason:
            logger.info("merging again: %s", reason)
    if tree is None:
        indexed = index_layers(layers, cached, verify, progress, jobs, cache, spacing, report)
        tree = merge(indexed)
        cached = {
            layer.layer.index: CachedLayer(
                layer.verified, layer.uncompressed_size, None, layer.points
            )
            for layer in indexed
        }
        if cache is not None:
            cache.store_tree(layers, tree)
    else:
        report.from_cache.extend(layers)
    logger.info("%d layers, %d inodes", len(layers), len(tree))
    blocks = BlockCache(block_cache_bytes)  # one bound on decompressed data, for all layers
    readers: list[LayerReader] = []
    try:
        for layer in layers:
            readers.append(open_reader(layer, cached[layer.index].points, blocks))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return Image(resolved, tree, readers)


def cached_layer(
    cache: IndexCache, layer: LayerRef, verify: bool, with_entries: bool
) -> CachedLayer | None:
    try:
        found = cache.load_layer(layer, with_entries)
    except CacheMiss as reason:
        logger.info("indexing %s: %s", layer.describe(), reason)
        return None
    if verify and not found.verified:
        logger.info(
            "indexing %s: its cached index was built without verification", layer.describe()
        )
        return None
    if layer.compression == "gzip" and found.points is None:
        logger.info("indexing %s: its cached index has no seek points", layer.describe())
        return None
    return found


def index_layers(
    layers: Sequence[LayerRef],
    cached: dict[int, CachedLayer],
    verify: bool,
    progress: ProgressFactory | None,
    jobs: int | None,
    cache: IndexCache | None,
    spacing: int,
    report: LoadReport,
) -> list[IndexedLayer]:
    """Every layer's entries: from the cache where it has them, else by indexing the blob
    (in parallel: layers are independent). The fresh indexes are stored in the cache."""
    results: dict[int, IndexedLayer] = {}
    missing = []
    for layer in layers:
        found = (
            cached_layer(cache, layer, verify, with_entries=True)
            if cache is not None and layer.index in cached
            else None
        )
        if found is not None and found.entries is not None:
            results[layer.index] = IndexedLayer(
                layer, found.entries, found.points, found.uncompressed_size, found.verified
            )
            report.from_cache.append(layer)
        else:
            missing.append(layer)
    if missing:
        workers = max(1, min(len(missing), jobs or os.cpu_count() or 1))
        stop = threading.Event()

        def index_and_store(layer: LayerRef, advance: Progress) -> IndexedLayer:
            indexed = index_layer(layer, verify, advance, spacing)
            if cache is not None and cache.store_layer(
                layer, verify, indexed.uncompressed_size, indexed.entries, indexed.points
            ):
                # Serve the seek-point windows from the file just written, not from memory.
                stored = cached_layer(cache, layer, verify, with_entries=False)
                if stored is not None and stored.points is not None:
                    indexed.points = stored.points
            return indexed

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="index") as pool:
            futures = [
                pool.submit(
                    index_and_store,
                    layer,
                    stoppable(progress(layer) if progress else None, stop),
                )
                for layer in missing
            ]
            try:
                for layer, future in zip(missing, futures, strict=True):
                    results[layer.index] = future.result()
                    report.indexed.append(layer)
            except BaseException:
                # A bad layer, or Ctrl-C: the other layers stop at their next read.
                stop.set()
                for future in futures:
                    future.cancel()
                raise
    return [results[layer.index] for layer in layers]


def merge(indexed: list[IndexedLayer]) -> MergedTree:
    builder = TreeBuilder()
    for layer in indexed:
        try:
            builder.apply_layer(layer.layer.index, layer.entries)
        except MergeError as error:
            raise LayerError(f"{layer.layer.describe()}: {error}") from error
        layer.entries = []  # the tree holds what it needs; let the entry list go
    return builder.freeze()
