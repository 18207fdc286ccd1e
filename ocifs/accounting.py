"""Per-layer accounting, dive's questions: what each layer added, changed and deleted, the
bytes it stored and how many of them the final image hides, and the image's efficiency.

Pure functions over the layers' tar entries (``tarscan.TarEntry``, lowest layer first), so
they are tested without a mount. The layers are replayed as ``tree.TreeBuilder`` replays
them (whiteouts and opaque markers first, against the lower layers; then the other entries
in archive order; implied parents; a non-directory in the way of a path replaced; a
hardlink another name of its target's inode), into a small tree of its own that remembers,
for each inode, the layer and path that made it and how many names it still has.

What is counted, per layer:

* ``added``: paths the layer's entries name that the image after the layer shows and the
  layers below did not.
* ``modified``: paths the layer's entries name that the layers below showed and that the
  image after the layer shows as another inode (a file over a file, a directory over a
  file, ...). A directory entry over a directory that stays a directory only restates its
  attributes (its children are kept) and is not counted.
* ``deleted``: paths the layers below showed that the image after this layer no longer
  shows: whiteouts, every entry an opaque marker removes, and the contents of a directory
  replaced by a non-directory (a path deleted and created again by the layer is
  ``modified``).
* ``bytes_added``: the logical sizes of the layer's regular files. A hardlink stores no data
  of its own and adds none.
* ``bytes_hidden`` (wasted space): those of the layer's regular files whose inode the final
  image does not show under any name, because a later layer (or a later entry of the same
  layer) replaced or deleted every name it had. A file hardlinked elsewhere is hidden only
  once all its names are gone, and is counted once.

``efficiency`` is dive's score (wagoodman/dive, ``filetree.Efficiency``): for every path, each
layer that writes a non-directory there counts its size, and each layer that deletes it
counts 0; the score is the sum over paths of the smallest count divided by the sum of all
counts (1.0 for an image that stores no bytes). Unlike dive, a deleted directory counts a 0
at every path below it (dive counts the whiteout once, at the directory's path, so deleting
a directory full of files cost nothing in its score). ``wasted_bytes`` is the exact sum of
``bytes_hidden``; the two answer different questions (dive's score also counts a file that
grew as partly wasted) and both are reported.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .tarscan import DIR, FILE, HARDLINK, TarEntry
from .tree import WHITEOUT_PREFIX, Whiteout, classify_whiteout, split_path

logger = logging.getLogger(__name__)

TOP_HIDDEN = 10  # largest hidden files reported by default

Path = tuple[bytes, ...]


@dataclass
class LayerAccount:
    """What one layer did to the image below it."""

    position: int
    added: int = 0
    modified: int = 0
    deleted: int = 0
    bytes_added: int = 0
    bytes_hidden: int = 0


@dataclass(frozen=True)
class HiddenFile:
    """A regular file stored in a layer that the final image does not show."""

    path: (
        bytes  # where the layer wrote it, from the root ("/etc/x"; a hardlinked file's first name)
    )
    layer: int  # the layer that stores its data
    size: int
    hidden_by: int  # the layer that took away its last name


@dataclass
class Accounting:
    layers: list[LayerAccount]
    efficiency: float
    total_bytes: int  # file data stored in all layers
    wasted_bytes: int  # of which the final image shows nothing
    largest_hidden: list[HiddenFile] = field(default_factory=list)
    hidden_files: int = 0  # how many files are hidden (largest_hidden holds the top ones)


class _Node:
    """An inode of the replayed tree; hardlinks share one."""

    __slots__ = ("children", "hidden_by", "is_file", "layer", "names", "path", "size")

    def __init__(self, layer: int, path: Path, is_dir: bool, size: int = 0) -> None:
        self.layer = layer  # the layer whose entry (or implied parent) made it
        self.path = path
        self.children: dict[bytes, _Node] | None = {} if is_dir else None
        self.size = size
        self.is_file = False  # a regular file, whose data its layer stores
        self.names = 1  # names it has in the tree (a directory has one)
        self.hidden_by = -1


class _Replay:
    """The layers replayed, with the counts gathered on the way."""

    def __init__(self) -> None:
        self.root = _Node(-1, (), True)
        self.files: list[_Node] = []  # every regular file any layer stored
        self.sizes: dict[Path, list[int]] = {}  # dive's score: [sum, smallest] per path
        self.layer = 0
        self.removed: set[Path] = set()  # paths the layers below showed, taken away
        self.placed: set[Path] = set()  # paths the current layer put an inode at

    # --- dive's per-path sizes

    def seen(self, path: Path, size: int) -> None:
        counts = self.sizes.get(path)
        if counts is None:
            self.sizes[path] = [size, size]
        else:
            counts[0] += size
            counts[1] = min(counts[1], size)

    # --- the tree

    def find(self, path: Path) -> _Node | None:
        node = self.root
        for name in path:
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def remove(self, node: _Node, path: Path, replaced: bool) -> None:
        """A name of ``node`` (at ``path``) leaves the tree, a directory with everything
        below it. ``replaced``: a new entry takes the same path (not a deletion in dive's
        terms for that path itself)."""
        stack = [(node, path, replaced)]
        while stack:
            current, where, same_path = stack.pop()
            if where not in self.placed:  # a name from below (a hardlink's may be newer)
                self.removed.add(where)
            if current.children is None:
                current.names -= 1
                if not same_path:
                    self.seen(where, 0)
                if current.names == 0 and current.is_file:
                    current.hidden_by = self.layer
            else:
                stack.extend(
                    (child, (*where, name), False) for name, child in current.children.items()
                )

    def parents(self, path: Path) -> _Node:
        directory = self.root
        for depth, name in enumerate(path):
            assert directory.children is not None
            child = directory.children.get(name)
            if child is None or child.children is None:
                if child is not None:
                    self.remove(child, path[: depth + 1], replaced=True)
                child = _Node(self.layer, path[: depth + 1], True)
                directory.children[name] = child
                self.placed.add(path[: depth + 1])
            directory = child
        return directory

    # --- one layer

    def apply(self, position: int, entries: Sequence[TarEntry]) -> LayerAccount:
        self.layer = position
        self.removed = set()
        self.placed = set()
        account = LayerAccount(position)
        ordinary: list[tuple[Path, TarEntry]] = []
        for entry in entries:
            components = split_path(entry.path)
            # No component can start with ".wh." if the name holds no ".wh." at all.
            whiteout = (
                classify_whiteout(components, entry.path) if WHITEOUT_PREFIX in entry.path else None
            )
            if whiteout is None:
                ordinary.append((components, entry))
            elif isinstance(whiteout, Whiteout):
                self.whiteout(whiteout)
        # Each path the layer's entries name, with the inode the layers below showed there
        # (None if none; a whiteout of this layer may have taken it: then it is in removed).
        touched: dict[Path, _Node | None] = {}
        for components, entry in ordinary:
            self.entry(components, entry, account, touched)
        for path, below in touched.items():
            now = self.find(path)
            if now is None:
                continue  # gone again by the layer's end: deleted if it was below
            if below is None and path not in self.removed:
                account.added += 1
            elif now is not below:  # another inode there (a kept directory is the same)
                account.modified += 1
        account.deleted = sum(1 for path in self.removed if self.find(path) is None)
        return account

    def whiteout(self, whiteout: Whiteout) -> None:
        parent = self.find(whiteout.parent)
        if parent is None or parent.children is None:
            return
        if whiteout.name is None:
            for name, child in parent.children.items():
                self.remove(child, (*whiteout.parent, name), replaced=False)
            parent.children.clear()
        elif whiteout.name in parent.children:
            child = parent.children.pop(whiteout.name)
            self.remove(child, (*whiteout.parent, whiteout.name), replaced=False)

    def entry(
        self, path: Path, entry: TarEntry, account: LayerAccount, touched: dict[Path, _Node | None]
    ) -> None:
        if not path:
            return  # the root: its attributes only (a non-directory root fails the merge)
        # A parent made here means the path was not below (unless a whiteout took it).
        parent = self.parents(path[:-1])
        assert parent.children is not None
        name = path[-1]
        existing = parent.children.get(name)
        if path not in touched:
            touched[path] = existing if path not in self.placed else None
        if entry.kind == DIR:
            if existing is not None and existing.children is not None:
                return
            node = _Node(self.layer, path, True)
        elif entry.kind == HARDLINK:
            target = self.find(split_path(entry.linkname))
            if target is None or target.children is not None:
                return  # the merge refuses this layer (a dangling or directory hardlink)
            self.seen(path, 0)
            if target is existing:
                return
            target.names += 1
            node = target
        else:
            node = _Node(self.layer, path, False, entry.size if entry.kind == FILE else 0)
            if entry.kind == FILE:
                node.is_file = True
                self.files.append(node)
                account.bytes_added += entry.size
            self.seen(path, node.size)
        if existing is not None:
            self.remove(existing, path, replaced=True)
        parent.children[name] = node
        self.placed.add(path)


def account_layers(layers: Sequence[Sequence[TarEntry]], top: int = TOP_HIDDEN) -> Accounting:
    """Replay ``layers`` (each a layer's entries in archive order, lowest layer first) and
    count what each did; ``top`` largest hidden files are listed. Raises MergeError (from
    ``tree.split_path`` and ``classify_whiteout``) on an entry the merge refuses too."""
    replay = _Replay()
    accounts = [replay.apply(position, entries) for position, entries in enumerate(layers)]
    hidden = [node for node in replay.files if node.names <= 0]
    for node in hidden:
        accounts[node.layer].bytes_hidden += node.size
    largest = heapq.nlargest(top, hidden, key=lambda node: (node.size, -node.layer))
    total = sum(account.bytes_added for account in accounts)
    smallest = sum(counts[1] for counts in replay.sizes.values())
    stored = sum(counts[0] for counts in replay.sizes.values())
    return Accounting(
        layers=accounts,
        efficiency=1.0 if stored == 0 else smallest / stored,
        total_bytes=total,
        wasted_bytes=sum(account.bytes_hidden for account in accounts),
        largest_hidden=[
            HiddenFile(b"/" + b"/".join(node.path), node.layer, node.size, node.hidden_by)
            for node in largest
        ],
        hidden_files=len(hidden),
    )
