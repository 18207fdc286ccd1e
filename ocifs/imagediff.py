"""``ocifs diff``: what differs between two images, entry by entry, contents by content.

Two parts. ``compare_trees`` is pure: it walks two merged trees side by side (each
directory's children are name-sorted, so a merge of the two runs) and says which paths were
added, removed or changed, and which attributes changed: type, mode (permission bits, with
setuid, setgid and sticky), owner (uid or gid), size, content, link target, device numbers,
xattrs, hardlinks, and with ``mtime=True`` the modification time. A regular file's content
is settled there without reading whenever it can be: sizes that differ say it changed, an
empty file is equal to an empty file, and two entries whose data starts at the same offset
of the same tar stream are equal (a layer's tar stream is named by its diff_id, the digest
of that stream, checked when the layer was indexed unless ``--no-verify``): so the files of
the base layers two images share cost nothing. What is left, same-size files from
different streams, is a list of pairs for ``ContentComparer``, which reads both from the
images' lazy readers in a pool of threads, in chunks, stopping at the first difference.

What is reported, and how (README "Comparing images"):

* A path only in B is added (``A``), a path only in A removed (``D``). Under an added or
  removed directory, every path is listed too, so that the paths agree with ``diff -r``
  (which names only the top, in "Only in").
* A path in both is changed (``M``) when an attribute differs. A type change says ``type``
  alone; what was under a directory is then removed (or added, the other way), path by path.
  A symlink's size is its target's length: a new target says ``target``, not ``size``. A
  regular file's size change says ``size`` and ``content``; a directory's size and link count
  are not compared (they follow from its children).
* ``links``: a file is a hardlink of others, or no longer, or of other paths: the set of
  paths naming its inode differs between A and B.
* Modification times are not compared unless asked: most changes of the inputs touch them
  (a rebuilt layer, a directory whose children changed), as ``diff -r`` and ``git`` ignore
  them.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import OcifsError, show
from .image import Image
from .tree import ROOT_INO, Inode, MergedTree

logger = logging.getLogger(__name__)

# In the order the text output lists them.
ATTRIBUTES = (
    "type",
    "mode",
    "owner",
    "size",
    "content",
    "target",
    "device",
    "xattrs",
    "links",
    "mtime",
)
ADDED, REMOVED, CHANGED = "A", "D", "M"
TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
CHUNK = 1 << 20  # bytes of each image compared at a time
WORKERS = 4  # files compared at once (inflating releases the GIL)


def type_name(mode: int) -> str:
    return TYPE_NAMES.get(stat.S_IFMT(mode), "unknown")


@dataclass(frozen=True)
class Change:
    """One reported path: added (``b`` only), removed (``a`` only) or changed (both)."""

    status: str  # ADDED, REMOVED or CHANGED
    path: bytes  # relative to the image root, b"" for the root itself
    a: Inode | None
    b: Inode | None
    changed: tuple[str, ...] = ()  # of ATTRIBUTES, for CHANGED


@dataclass(frozen=True)
class Pending:
    """A regular file in both images, of the same size, from different tar streams or
    offsets: only its bytes can say whether it changed."""

    path: bytes
    a: Inode
    b: Inode


@dataclass
class ContentStats:
    same_place: int = 0  # files equal without reading: same stream and offset, or empty
    compared: int = 0  # files whose bytes were compared
    differed: int = 0  # of those, the ones that differ
    bytes_read: int = 0  # from both images together


@dataclass
class TreeComparison:
    """What ``compare_trees`` found: changes by path, what is left to read, the hardlinks."""

    changes: dict[bytes, Change]
    pending: list[Pending]
    stats: ContentStats
    links_a: dict[int, tuple[bytes, ...]]  # the paths of each multiply-linked inode of A
    links_b: dict[int, tuple[bytes, ...]]

    def finish(self, differing: set[bytes]) -> ImageDiff:
        """The result, once the pending paths whose bytes differ are known."""
        changes = dict(self.changes)
        for item in self.pending:
            if item.path in differing:
                old = changes.get(item.path)
                changes[item.path] = with_attribute(old, item.path, item.a, item.b, "content")
        return ImageDiff(
            [changes[path] for path in sorted(changes)], self.stats, self.links_a, self.links_b
        )


def with_attribute(old: Change | None, path: bytes, a: Inode, b: Inode, name: str) -> Change:
    """The change of a path in both trees, with one more attribute changed."""
    changed = {name, *(old.changed if old is not None else ())}
    return Change(CHANGED, path, a, b, tuple(item for item in ATTRIBUTES if item in changed))


@dataclass
class ImageDiff:
    changes: list[Change]  # sorted by path, as bytes (the root, b"", first)
    stats: ContentStats = field(default_factory=ContentStats)
    links_a: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    links_b: dict[int, tuple[bytes, ...]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        statuses = [change.status for change in self.changes]
        return {
            "added": statuses.count(ADDED),
            "removed": statuses.count(REMOVED),
            "changed": statuses.count(CHANGED),
        }


@dataclass(frozen=True)
class Side:
    """One image as the comparison sees it: its tree, and what names each layer's tar
    stream (its diff_id), by layer position."""

    tree: MergedTree
    streams: Sequence[str]


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def below(tree: MergedTree, directory: int, path: bytes) -> Iterator[tuple[bytes, int]]:
    """Every (path, ino) under a directory, parents first."""
    stack = [(path, directory)]
    while stack:
        top, ino = stack.pop()
        for name, child in tree.children(ino):
            child_path = join(top, name)
            yield child_path, child
            if tree.is_dir(child):
                stack.append((child_path, child))


class _Walk:
    """One comparison of two trees (``compare_trees``)."""

    def __init__(self, a: Side, b: Side, mtime: bool) -> None:
        self.a, self.b = a, b
        self.mtime = mtime
        self.changes: dict[bytes, Change] = {}
        self.pending: list[Pending] = []
        self.stats = ContentStats()
        # The paths of each inode of more than one name, in either tree, and the paths in
        # both whose inodes have more than one name in one of them (compared at the end).
        self.paths_a: dict[int, list[bytes]] = {}
        self.paths_b: dict[int, list[bytes]] = {}
        self.linked: list[tuple[bytes, int, int]] = []

    def run(self) -> TreeComparison:
        self.compare(b"", ROOT_INO, ROOT_INO)
        self.directory(b"", ROOT_INO, ROOT_INO)
        links_a = {ino: tuple(sorted(paths)) for ino, paths in self.paths_a.items()}
        links_b = {ino: tuple(sorted(paths)) for ino, paths in self.paths_b.items()}
        for path, ino_a, ino_b in self.linked:
            if links_a.get(ino_a, (path,)) != links_b.get(ino_b, (path,)):
                self.add_attribute(path, ino_a, ino_b, "links")
        return TreeComparison(self.changes, self.pending, self.stats, links_a, links_b)

    def add_attribute(self, path: bytes, ino_a: int, ino_b: int, name: str) -> None:
        self.changes[path] = with_attribute(
            self.changes.get(path), path, self.a.tree.inode(ino_a), self.b.tree.inode(ino_b), name
        )

    def note_links(
        self, path: bytes, tree: MergedTree, ino: int, into: dict[int, list[bytes]]
    ) -> None:
        if tree.nlink[ino] > 1 and not tree.is_dir(ino):
            into.setdefault(ino, []).append(path)

    def only(self, status: str, path: bytes, ino: int) -> None:
        """A path in one tree only, and everything under it."""
        tree, into = (self.b.tree, self.paths_b) if status == ADDED else (self.a.tree, self.paths_a)
        entries = [(path, ino)]
        if tree.is_dir(ino):
            entries.extend(below(tree, ino, path))
        for entry_path, entry_ino in entries:
            node = tree.inode(entry_ino)
            self.note_links(entry_path, tree, entry_ino, into)
            a, b = (None, node) if status == ADDED else (node, None)
            self.changes[entry_path] = Change(status, entry_path, a, b)

    def directory(self, path: bytes, dir_a: int, dir_b: int) -> None:
        """Compare the children of a directory in both trees, and below (iteratively: trees
        may be deep)."""
        stack = [(path, dir_a, dir_b)]
        tree_a, tree_b = self.a.tree, self.b.tree
        while stack:
            top, ino_a, ino_b = stack.pop()
            children_a = list(tree_a.children(ino_a))
            children_b = list(tree_b.children(ino_b))
            i = j = 0
            while i < len(children_a) or j < len(children_b):
                name_a = children_a[i][0] if i < len(children_a) else None
                name_b = children_b[j][0] if j < len(children_b) else None
                if name_b is None or (name_a is not None and name_a < name_b):
                    self.only(REMOVED, join(top, children_a[i][0]), children_a[i][1])
                    i += 1
                elif name_a is None or name_b < name_a:
                    self.only(ADDED, join(top, children_b[j][0]), children_b[j][1])
                    j += 1
                else:
                    child_path = join(top, name_a)
                    child_a, child_b = children_a[i][1], children_b[j][1]
                    both_dirs = self.compare(child_path, child_a, child_b)
                    if both_dirs:
                        stack.append((child_path, child_a, child_b))
                    i += 1
                    j += 1

    def compare(self, path: bytes, ino_a: int, ino_b: int) -> bool:
        """Compare one path in both trees; True if it is a directory in both (whose children
        are still to compare)."""
        a, b = self.a.tree, self.b.tree
        mode_a, mode_b = a.mode[ino_a], b.mode[ino_b]
        kind = stat.S_IFMT(mode_a)
        if kind != stat.S_IFMT(mode_b):
            self.changes[path] = Change(CHANGED, path, a.inode(ino_a), b.inode(ino_b), ("type",))
            self.note_links(path, a, ino_a, self.paths_a)
            self.note_links(path, b, ino_b, self.paths_b)
            if kind == stat.S_IFDIR:
                for name, child in a.children(ino_a):
                    self.only(REMOVED, join(path, name), child)
            if stat.S_ISDIR(mode_b):
                for name, child in b.children(ino_b):
                    self.only(ADDED, join(path, name), child)
            return False
        changed: list[str] = []
        if stat.S_IMODE(mode_a) != stat.S_IMODE(mode_b):
            changed.append("mode")
        if a.uid[ino_a] != b.uid[ino_b] or a.gid[ino_a] != b.gid[ino_b]:
            changed.append("owner")
        if kind == stat.S_IFREG:
            changed.extend(self.file_data(path, ino_a, ino_b))
        elif kind == stat.S_IFLNK:
            if a.inode(ino_a).target != b.inode(ino_b).target:
                changed.append("target")
        elif kind in (stat.S_IFCHR, stat.S_IFBLK) and a.rdev[ino_a] != b.rdev[ino_b]:
            changed.append("device")
        if (a.xattrs.get(ino_a) or {}) != (b.xattrs.get(ino_b) or {}):
            changed.append("xattrs")
        if self.mtime and a.mtime_ns[ino_a] != b.mtime_ns[ino_b]:
            changed.append("mtime")
        if kind != stat.S_IFDIR:
            self.note_links(path, a, ino_a, self.paths_a)
            self.note_links(path, b, ino_b, self.paths_b)
            if a.nlink[ino_a] > 1 or b.nlink[ino_b] > 1:
                self.linked.append((path, ino_a, ino_b))
        if changed:
            self.changes[path] = Change(
                CHANGED, path, a.inode(ino_a), b.inode(ino_b), tuple(changed)
            )
        return kind == stat.S_IFDIR

    def file_data(self, path: bytes, ino_a: int, ino_b: int) -> list[str]:
        """The data attributes of a regular file in both trees; a pair to read if only its
        bytes can tell."""
        a, b = self.a.tree, self.b.tree
        size = a.size[ino_a]
        if size != b.size[ino_b]:
            return ["size", "content"]
        if size == 0 or (
            self.a.streams[a.layer[ino_a]] == self.b.streams[b.layer[ino_b]]
            and a.offset[ino_a] == b.offset[ino_b]
            and a.sparse.get(ino_a) == b.sparse.get(ino_b)
        ):
            self.stats.same_place += 1
            return []
        self.pending.append(Pending(path, a.inode(ino_a), b.inode(ino_b)))
        return []


def compare_trees(a: Side, b: Side, mtime: bool = False) -> TreeComparison:
    """Compare two trees: every difference their entries show, and the regular files whose
    bytes must be compared to know (``TreeComparison.pending``)."""
    return _Walk(a, b, mtime).run()


class ContentComparer:
    """Compares the bytes of files of two images, in parallel, from their lazy readers."""

    def __init__(self, a: Image, b: Image, workers: int = WORKERS, chunk: int = CHUNK) -> None:
        self.a, self.b = a, b
        self.workers = workers
        self.chunk = chunk
        self.lock = threading.Lock()
        self.bytes_read = 0

    def differing(self, pending: Sequence[Pending], stats: ContentStats) -> set[bytes]:
        """The paths among ``pending`` whose bytes differ (each pair of inodes read once)."""
        pairs: dict[tuple[int, int], list[Pending]] = {}
        for item in pending:
            pairs.setdefault((item.a.ino, item.b.ino), []).append(item)
        # In the order of A's data, so that a compressed layer is read forward.
        order = sorted(pairs.values(), key=lambda items: (items[0].a.layer, items[0].a.offset))
        differ: set[bytes] = set()
        if not order:
            return differ
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(self.workers, len(order))), thread_name_prefix="diff"
        )
        try:
            futures = [pool.submit(self._compare, items[0]) for items in order]
            for items, future in zip(order, futures, strict=True):
                stats.compared += 1
                if future.result():
                    stats.differed += 1
                    differ.update(item.path for item in items)
        finally:
            pool.shutdown(cancel_futures=True)  # on an error, the others stop soon
        stats.bytes_read += self.bytes_read
        logger.info(
            "compared %d files' bytes (%d differ), %d bytes read",
            stats.compared,
            stats.differed,
            stats.bytes_read,
        )
        return differ

    def _compare(self, item: Pending) -> bool:
        """Whether the bytes of a pair of same-size files differ; OcifsError if unreadable."""
        offset = 0
        try:
            while offset < item.a.size:
                data_a = self.a.read(item.a, offset, self.chunk)
                data_b = self.b.read(item.b, offset, self.chunk)
                with self.lock:
                    self.bytes_read += len(data_a) + len(data_b)
                if data_a != data_b:
                    return True
                if not data_a:
                    break
                offset += len(data_a)
        except OSError as error:  # layerread.DamagedLayer, or a blob gone
            raise OcifsError(f"cannot compare {show(item.path)}: {error}") from error
        return False


def side_of(image: Image) -> Side:
    return Side(image.tree, [layer.diff_id for layer in image.resolved.layers])


def diff_images(a: Image, b: Image, mtime: bool = False, workers: int = WORKERS) -> ImageDiff:
    """Every difference between two images; OcifsError if a file's bytes cannot be read."""
    comparison = compare_trees(side_of(a), side_of(b), mtime)
    logger.info(
        "%d entries differ by their attributes, %d files to read, %d equal by place",
        len(comparison.changes),
        len(comparison.pending),
        comparison.stats.same_place,
    )
    comparer = ContentComparer(a, b, min(workers, (os.cpu_count() or 1) * 2))
    return comparison.finish(comparer.differing(comparison.pending, comparison.stats))
