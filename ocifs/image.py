"""The mounted image, defined in one place: the merged tree plus the readers of its layers.

``load_image`` indexes the layers (in parallel, they are independent) or takes their indexes
from the cache, replays them in manifest order into the merged tree (or takes that from the
cache too), and keeps one reader per layer. ``Image.read`` turns a read of a
file into reads of the layer that holds its data, filling the holes of sparse files with zeros.
The image owns what its readers share: the cache of decompressed blocks and the pool of
threads that prefetch for them. The FUSE adapter only translates between this and the kernel.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .blobs import Progress
from .blockcache import BLOCK_CACHE_BYTES, BlockCache
from .cachefile import CacheMiss
from .errors import LayerError, MergeError
from .gzseek import DEFAULT_SPACING
from .indexcache import IndexCache
from .layerindex import LayerIndex, index_layer
from .layerread import CursorBudget, LayerReader, open_reader
from .layout import LayerRef, ResolvedImage
from .prefetch import PREFETCH_WORKERS, InflatePool, cache_share
from .tree import Inode, MergedTree, TreeBuilder
from .views import WHOLE_IMAGE, View, empty_tree, layer_tree

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[LayerRef], Progress | None]


class Image:
    """A resolved image ready to serve: fixed inodes and lazy file contents.

    ``layers`` are the layers the tree's ``layer`` numbers refer to, ``readers[i]`` reads
    ``layers[i]``: every layer of the image, or those of a view (``views``).
    """

    def __init__(
        self,
        resolved: ResolvedImage,
        tree: MergedTree,
        readers: list[LayerReader],
        pool: InflatePool,
        layers: Sequence[LayerRef] | None = None,
        view: View = WHOLE_IMAGE,
    ) -> None:
        self.resolved = resolved
        self.tree = tree
        self.readers = readers
        self.pool = pool  # the readers' prefetch threads
        self.layers = tuple(resolved.layers if layers is None else layers)
        self.view = view

    def read(self, node: Inode, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes of a regular file at ``offset``; short only at end of file
        (a view, not a copy, of what a tar layer's reader read).

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
        self.pool.close()  # after the readers: none of them has a job queued any more


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
    cancel: threading.Event | None = None,
    view: View = WHOLE_IMAGE,
) -> Image:
    """Index every layer (or take its index from the cache) and merge them; or, for a
    ``view``, the layers it needs (``--upto N``: 0..N, merged and cached as the image of
    those layers would be; ``--layer N``: layer N, and its lower ones only if a hardlink
    points into them).

    Raises OcifsError (one line) on bad input, IndexingCancelled once ``cancel`` is set.
    The first question is whether the cache holds the merged tree of these layers: then only
    the layers' seek points are loaded (each cache file read once, without its entries) and
    nothing is merged. Otherwise each layer's index is loaded with its entries or built from
    the blob, and the layers are merged. An index built without verification is not used by
    a load that verifies.
    """
    report = report if report is not None else LoadReport()

    def merged(layers: Sequence[LayerRef]) -> tuple[MergedTree, list[LayerIndex]]:
        return merged_tree(layers, verify, progress, jobs, cache, spacing, report, cancel)

    with collector_paused():
        if view.kind == "layer":
            layer = resolved.layers[view.position]
            own = index_layers([layer], verify, progress, jobs, cache, spacing, report, cancel)
            layers, tree, indexes = single_layer(resolved.layers, view.position, own[0], merged)
        else:
            layers = merged_layers(resolved, view)
            tree, indexes = merged(layers)
    logger.info("%d layers (%s), %d inodes", len(layers), view.describe(), len(tree))
    blocks = BlockCache(block_cache_bytes)  # one bound on decompressed data, for all layers
    pool = InflatePool(PREFETCH_WORKERS, cache_share(blocks))  # one bound on prefetch, too
    budget = CursorBudget()  # and one on the live cursors' memory
    readers: list[LayerReader] = []
    try:
        for layer, index in zip(layers, indexes, strict=True):
            readers.append(open_reader(layer, index.points, blocks, pool, index.blocks, budget))
    except BaseException:
        for reader in readers:
            reader.close()
        pool.close()
        raise
    return Image(resolved, tree, readers, pool, layers, view)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while an image loads, as it was before after.

    Indexing and merging make hundreds of thousands of objects (tar entries, tree nodes)
    that live on, and no cycles: each of the collector's passes over them, more and longer
    as they grew, freed nothing: the large benchmark image's merge of its upper layer's 130k
    entries took 0.5 s instead of 1.0 (README, "Why this inflate")."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def merged_layers(resolved: ResolvedImage, view: View) -> Sequence[LayerRef]:
    """The layers merged for ``view`` (not a single layer's): all, or 0..N for ``--upto N``."""
    return resolved.layers if view.kind == "image" else resolved.layers[: view.position + 1]


def tree_is_cached(resolved: ResolvedImage, view: View, cache: IndexCache) -> bool:
    """Whether loading ``view`` can take its merged tree from ``cache`` (a quick look: the
    file is there). A single layer's tree is never cached: True, as there is none to make."""
    if view.kind == "layer":
        return True
    return cache.tree_path(merged_layers(resolved, view)).is_file()


def single_layer(
    layers: Sequence[LayerRef],
    position: int,
    index: LayerIndex,
    merged: Callable[[Sequence[LayerRef]], tuple[MergedTree, list[LayerIndex]]],
) -> tuple[Sequence[LayerRef], MergedTree, list[LayerIndex]]:
    """Layer ``position`` on its own (``views.layer_tree``), from its index with entries;
    the layers the tree refers to, and their indexes: that layer alone, or all of 0..position
    if a hardlink of it points into the lower ones (their tree merged by ``merged``). Not
    cached: building it costs what merging this one layer does."""
    layer = layers[position]
    lower: list[list[LayerIndex]] = []

    def lower_tree() -> MergedTree:
        if position == 0:
            return empty_tree()
        tree, indexes = merged(layers[:position])
        lower.append(indexes)
        return tree

    assert index.entries is not None, "a layer is shown from its entries"
    try:
        tree, used_lower = layer_tree(position, index.entries, lower_tree)
    except MergeError as error:
        raise LayerError(f"{layer.describe()}: {error}") from error
    index = index.without_entries()
    if not used_lower or position == 0:
        # One layer: the tree's numbers become indexes into (layer,).
        tree.layer = array("i", [-1 if number == -1 else 0 for number in tree.layer])
        return (layer,), tree, [index]
    return layers[: position + 1], tree, [*lower[0], index]


def merged_tree(
    layers: Sequence[LayerRef],
    verify: bool,
    progress: ProgressFactory | None,
    jobs: int | None,
    cache: IndexCache | None,
    spacing: int,
    report: LoadReport,
    cancel: threading.Event | None,
) -> tuple[MergedTree, list[LayerIndex]]:
    """The merged tree of ``layers`` and their indexes (without entries): from the cache, which
    keys a tree by the digests of the layers it merges, or merged and stored there."""
    indexes = None
    tree = cached_tree(cache, layers)
    if tree is not None:
        assert cache is not None
        indexes = cached_indexes(cache, layers, verify)
        if indexes is not None:
            report.from_cache.extend(layers)
            report.tree_from_cache = True
    if tree is None or indexes is None:
        # Each layer is applied as soon as it and those below it are indexed, while the
        # layers above it are still being indexed; its entries are dropped once applied.
        builder = TreeBuilder()
        indexes = index_layers(
            layers,
            verify,
            progress,
            jobs,
            cache,
            spacing,
            report,
            cancel,
            ready=lambda number, index: apply_index(builder, layers[number], index),
        )
        tree = builder.freeze()
        if cache is not None:
            cache.store_tree(layers, tree)
    return tree, indexes


def cached_tree(cache: IndexCache | None, layers: Sequence[LayerRef]) -> MergedTree | None:
    if cache is None:
        return None
    try:
        return cache.load_tree(layers)
    except CacheMiss as reason:
        logger.info("merging: %s", reason)
        return None


def cached_indexes(
    cache: IndexCache, layers: Sequence[LayerRef], verify: bool
) -> list[LayerIndex] | None:
    """Every layer's index without its entries, or None if the cache lacks one of them."""
    indexes = []
    for layer in layers:
        found = cache.load_layer(layer, verify, with_entries=False)
        if found is None:
            return None
        indexes.append(found)
    return indexes


def index_layers(
    layers: Sequence[LayerRef],
    verify: bool,
    progress: ProgressFactory | None,
    jobs: int | None,
    cache: IndexCache | None,
    spacing: int,
    report: LoadReport,
    cancel: threading.Event | None,
    ready: Callable[[int, LayerIndex], LayerIndex] | None = None,
) -> list[LayerIndex]:
    """Every layer's index with its entries: from the cache where it has them, else built
    from the blob (in parallel: layers are independent) and stored in the cache.

    ``ready``, if given, is called in this thread with each layer's number and index, in
    the layers' order, as soon as that layer and those below it are there (while the layers
    above may still be indexing); what it returns is kept in the index's place."""
    results: dict[int, LayerIndex] = {}
    missing = []
    for layer in layers:
        found = cache.load_layer(layer, verify, with_entries=True) if cache is not None else None
        if found is not None:
            results[layer.position] = found
            report.from_cache.append(layer)
        else:
            missing.append(layer)
    cancel = cancel if cancel is not None else threading.Event()
    workers = max(1, min(len(missing), jobs or os.cpu_count() or 1))

    def index_and_store(layer: LayerRef) -> LayerIndex:
        advance = progress(layer) if progress is not None else None
        index = index_layer(layer, verify, advance, spacing, cancel)
        return cache.store_layer(layer, index) if cache is not None else index

    # The pool starts a thread per job submitted: none when the cache had every layer.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="index") as pool:
        pending = {layer.position: pool.submit(index_and_store, layer) for layer in missing}
        try:
            for number, layer in enumerate(layers):
                future = pending.get(layer.position)
                if future is not None:
                    results[layer.position] = future.result()
                    report.indexed.append(layer)
                if ready is not None:
                    results[layer.position] = ready(number, results[layer.position])
        except BaseException:
            # A bad layer, or Ctrl-C: the other layers stop at their next read.
            cancel.set()
            for future in pending.values():
                future.cancel()
            raise
    return [results[layer.position] for layer in layers]


def merge(layers: Sequence[LayerRef], indexes: list[LayerIndex]) -> MergedTree:
    """Replay the layers in order into one tree. Each entry of ``indexes`` is replaced by
    the same index without its entries once applied, so they are freed as the merge goes."""
    builder = TreeBuilder()
    for number, layer in enumerate(layers):
        indexes[number] = apply_index(builder, layer, indexes[number])
    return builder.freeze()


def apply_index(builder: TreeBuilder, layer: LayerRef, index: LayerIndex) -> LayerIndex:
    """Apply ``layer``'s entries to ``builder``; its index without them."""
    entries = index.entries
    assert entries is not None, "a layer is merged from its entries"
    try:
        builder.apply_layer(layer.position, entries)
    except MergeError as error:
        raise LayerError(f"{layer.describe()}: {error}") from error
    return index.without_entries()
