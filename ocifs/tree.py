"""The merged tree: layers' tar entries replayed into one tree of inodes, as plain data.

Applying a layer happens in two phases, because whiteouts only affect lower layers (W2) and a
layer's entries may come in any order (M6): first every whiteout and opaque marker of the layer
is applied to the tree as the lower layers left it, then every other entry in archive order.
Paths are resolved inside the tree only, never through symlinks and never on the host (P4).
After the last layer, ``freeze`` numbers the inodes (fixed for the life of the mount; hardlinks
share one) and packs the tree into a few typed columns, so that the builder's objects can go.
The frozen tree also turns itself into cache-file sections and back (``encode``, ``decode``).
"""

from __future__ import annotations

import json
import logging
import operator
import stat
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .cachefile import (
    column,
    pack_json,
    sparse_from_json,
    sparse_to_json,
    xattrs_from_json,
    xattrs_to_json,
)
from .errors import MergeError, show
from .tarscan import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, HARDLINK, SYMLINK, TarEntry

logger = logging.getLogger(__name__)

ROOT_INO = 1
ID_MAX = 0xFFFFFFFF  # uid_t and gid_t are 32 bits on Linux
NAME_MAX = 255
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
AUFS_META_PREFIX = b".wh..wh."  # .wh..wh.plnk, .wh..wh.aufs, .wh..wh.orph: never shown (W6)

FILE_TYPES = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}


class Node:
    """One inode of the merged tree. Directories have ``children``; hardlinks share a Node."""

    __slots__ = (
        "children",
        "gid",
        "layer",
        "mode",
        "mtime_ns",
        "nlink",
        "offset",
        "rdev",
        "size",
        "sparse",
        "target",
        "uid",
        "xattrs",
    )

    def __init__(self, mode: int, uid: int = 0, gid: int = 0, mtime_ns: int = 0) -> None:
        self.mode = mode  # full st_mode: file type and permission bits
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.size = 0
        self.rdev = 0
        self.nlink = 1
        self.xattrs: dict[bytes, bytes] | None = None
        self.target = b""  # symlink text
        # The layer of the entry that made the node what it is: for a regular file the layer
        # whose blob holds its data; for a directory the last entry that set its attributes
        # (or the layer that implied it). -1: no layer (the root of an image without layers).
        self.layer = -1
        self.offset = 0  # where that data starts in the layer's uncompressed tar stream
        self.sparse: tuple[tuple[int, int], ...] | None = None
        self.children: dict[bytes, Node] | None = {} if stat.S_ISDIR(mode) else None

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def set_attributes(self, entry: TarEntry) -> None:
        if not (0 <= entry.uid <= ID_MAX and 0 <= entry.gid <= ID_MAX):
            raise MergeError(
                f"entry {show(entry.path)}: owner {entry.uid}:{entry.gid} does not fit in 32 bits"
            )
        self.mode = FILE_TYPES[entry.kind] | entry.mode
        self.uid, self.gid, self.mtime_ns = entry.uid, entry.gid, entry.mtime_ns
        self.xattrs = entry.xattrs or None


def implied_directory(layer: int = -1) -> Node:
    """A parent that no entry names (M8, M9): 0755, owned by 0:0, of the layer that needs it."""
    node = Node(stat.S_IFDIR | 0o755)
    node.layer = layer
    return node


def split_path(raw: bytes) -> tuple[bytes, ...]:
    """Clean a tar name into rootfs-relative components (P1), refusing escapes (P2, P3)."""
    if b"\0" in raw:
        raise MergeError(f"path {show(raw)} contains a NUL byte")
    # Most names are clean already ("usr/lib/x", a directory's with a "/" at the end): they
    # split as they are, without a look at each component.
    parts = raw.rstrip(b"/").split(b"/")
    clean = b"" not in parts and b"." not in parts and b".." not in parts
    if clean and max(map(len, parts)) <= NAME_MAX:
        return tuple(parts)
    components: list[bytes] = []
    for component in raw.split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if not components:
                raise MergeError(f"path {show(raw)} escapes the image root")
            components.pop()
            continue
        if len(component) > NAME_MAX:
            raise MergeError(f"path {show(raw)} has a component longer than {NAME_MAX} bytes")
        components.append(component)
    return tuple(components)


@dataclass(frozen=True)
class Whiteout:
    """What a ``.wh.`` entry asks for: remove ``parent/name``, or empty ``parent`` (opaque)."""

    parent: tuple[bytes, ...]
    name: bytes | None  # None for an opaque marker


def classify_whiteout(components: tuple[bytes, ...], raw: bytes) -> Whiteout | bool | None:
    """Whiteout for a ``.wh.`` name, True for AUFS metadata to skip, None for an ordinary path."""
    if WHITEOUT_PREFIX not in raw:  # no component can start with it
        return None
    for position, component in enumerate(components):
        if not component.startswith(WHITEOUT_PREFIX):
            continue
        if component.startswith(AUFS_META_PREFIX):
            if component == OPAQUE_MARKER and position == len(components) - 1:
                return Whiteout(components[:-1], None)
            return True  # AUFS hard-link store and friends: not part of the image (W6)
        if position != len(components) - 1:
            raise MergeError(f"whiteout {show(raw)} is not the last component of its path")
        name = component[len(WHITEOUT_PREFIX) :]
        if name in (b"", b".", b".."):
            raise MergeError(f"invalid whiteout name {show(raw)}")
        return Whiteout(components[:-1], name)
    return None


class TreeBuilder:
    """Replays layers, lowest first, into one merged tree (M1)."""

    def __init__(self) -> None:
        self.root = implied_directory()
        # The last directory ``_make_parents`` walked to, by its components: entries come
        # directory by directory, so most find their parent here. Forgotten whenever a
        # directory leaves the tree, which may be that one or one above it.
        self.last_parent: tuple[tuple[bytes, ...], Node] | None = None

    def apply_layer(self, layer: int, entries: Iterable[TarEntry]) -> None:
        """Apply one layer's entries; raises MergeError naming the entry on a bad one."""
        if self.root.layer == -1:
            self.root.layer = layer  # the root is implied by the first layer, like any parent
        ordinary: list[tuple[tuple[bytes, ...], TarEntry]] = []
        for entry in entries:
            components = split_path(entry.path)
            whiteout = classify_whiteout(components, entry.path)
            if whiteout is None:
                ordinary.append((components, entry))
            elif isinstance(whiteout, Whiteout):
                self._apply_whiteout(whiteout)
        self.last_parent = None  # whiteouts may have removed it
        for components, entry in ordinary:
            self._apply_entry(layer, components, entry)
        self.last_parent = None

    # Phase one: whiteouts and opaque markers against the lower tree.

    def _apply_whiteout(self, whiteout: Whiteout) -> None:
        parent = self._find(whiteout.parent)
        if parent is None or parent.children is None:
            return  # nothing below to remove, and no parents are created (W3)
        if whiteout.name is None:  # opaque: hide every lower child, keep the directory (W4)
            for child in parent.children.values():
                drop(child)
            parent.children.clear()
        elif whiteout.name in parent.children:
            drop(
                parent.children.pop(whiteout.name)
            )  # the name goes; a symlink's target is never looked at (W1)

    # Phase two: everything else, in archive order.

    def _apply_entry(self, layer: int, components: tuple[bytes, ...], entry: TarEntry) -> None:
        if not components:  # the root itself (M10)
            if entry.kind != DIR:
                raise MergeError(f"root entry {show(entry.path)} is not a directory")
            self.root.set_attributes(entry)
            self.root.layer = layer
            return
        parent = self._make_parents(components[:-1], layer)
        assert parent.children is not None
        name = components[-1]
        existing = parent.children.get(name)
        if entry.kind == DIR:
            if existing is not None and existing.is_dir:
                existing.set_attributes(entry)  # keep the children (M3, M6)
                existing.layer = layer
                return
            node = Node(stat.S_IFDIR)
            node.set_attributes(entry)
            node.layer = layer
        elif entry.kind == HARDLINK:
            node = self._link_target(entry)
            if node is existing:
                return
            node.nlink += 1
        else:
            node = new_leaf(layer, entry)
        if existing is not None:
            if existing.is_dir:
                self.last_parent = None
            drop(existing)  # replaced entirely, subtree and all (M2, M4, M7)
        parent.children[name] = node

    def _make_parents(self, components: tuple[bytes, ...], layer: int) -> Node:
        last = self.last_parent
        if last is not None and last[0] == components:
            return last[1]
        directory = self.root
        for name in components:
            assert directory.children is not None
            child = directory.children.get(name)
            if child is None or not child.is_dir:
                if child is not None:
                    drop(child)  # a non-directory in the way becomes a directory (M9)
                child = implied_directory(layer)
                directory.children[name] = child
            directory = child
        self.last_parent = (components, directory)
        return directory

    def _find(self, components: tuple[bytes, ...]) -> Node | None:
        """The node at a path, without following symlinks or creating anything."""
        node = self.root
        for name in components:
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def _link_target(self, entry: TarEntry) -> Node:
        target = self._find(split_path(entry.linkname))
        if target is None:
            raise MergeError(
                f"hardlink {show(entry.path)} points to {show(entry.linkname)},"
                " which does not exist"
            )
        if target.is_dir:
            raise MergeError(
                f"hardlink {show(entry.path)} points to directory {show(entry.linkname)}"
            )
        return target  # its metadata applies; the link header's own is ignored (H2)

    def freeze(self) -> MergedTree:
        return MergedTree(self.root)


def new_leaf(layer: int, entry: TarEntry) -> Node:
    node = Node(FILE_TYPES[entry.kind])
    node.set_attributes(entry)
    node.layer = layer
    if entry.kind == FILE:
        node.size = entry.size
        node.offset = entry.data_offset
        node.sparse = entry.sparse
    elif entry.kind == SYMLINK:
        node.mode = stat.S_IFLNK | 0o777  # Linux symlinks are always 0777, whatever the header says
        node.target = entry.linkname
        node.size = len(entry.linkname)  # A2
    elif entry.kind in (CHARDEV, BLOCKDEV):
        node.rdev = make_rdev(entry.devmajor, entry.devminor)
    return node


def make_rdev(major: int, minor: int) -> int:
    """Linux's dev_t encoding, as os.makedev does, without its range errors on odd input."""
    major &= 0xFFFFFFFF
    minor &= 0xFFFFFFFF
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


def drop(node: Node) -> None:
    """A name of ``node`` leaves the tree; a directory takes its whole subtree with it (H5)."""
    if node.children is None:
        node.nlink -= 1
        return
    stack = [node]
    while stack:
        directory = stack.pop()
        assert directory.children is not None
        for child in directory.children.values():
            if child.children is None:
                child.nlink -= 1
            else:
                stack.append(child)


class Inode(NamedTuple):
    """What the frozen tree knows of one inode, made on demand from its columns."""

    ino: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    rdev: int
    nlink: int
    layer: int  # layer of the entry that made it (a regular file: holds its data); -1: none
    offset: int  # where that data starts in the layer's uncompressed tar stream
    sparse: tuple[tuple[int, int], ...] | None
    xattrs: dict[bytes, bytes] | None
    target: bytes  # a symlink's text, b"" otherwise

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


# Every array of a MergedTree, with its typecode; the index cache stores them in this order.
INODE_COLUMNS = (  # column[ino]; ino 0 is a placeholder
    ("mode", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("mtime_ns", "q"),
    ("size", "Q"),
    ("rdev", "Q"),
    ("nlink", "I"),
    ("layer", "i"),
    ("offset", "Q"),
    ("parent", "I"),
    ("first_child", "I"),
    ("child_count", "I"),
)
CHILD_COLUMNS = (  # column[position in the child table]
    ("child_ino", "I"),
    ("child_name", "Q"),  # one more than the children: where the last name ends
)


class MergedTree:
    """The finished tree, compact: inode attributes in typed columns indexed by inode number.

    Hundreds of thousands of entries are normal, so the tree keeps no object per entry: each
    directory's children are a contiguous, name-sorted run of (name, ino) pairs, with all
    names in one bytes object and all symlink texts in another. The rare extras (xattrs,
    sparse maps) sit in dicts keyed by inode number. The builder's objects can then be freed.
    """

    # Made by __init__ and decode from INODE_COLUMNS and CHILD_COLUMNS, which give the types.
    mode: array[int]
    uid: array[int]
    gid: array[int]
    mtime_ns: array[int]
    size: array[int]
    rdev: array[int]
    nlink: array[int]
    layer: array[int]  # see Node.layer: the data's layer for a regular file, -1 for none
    offset: array[int]  # data offset; for a symlink, its text's place in targets
    parent: array[int]  # a directory's parent
    first_child: array[int]  # a directory's run in the child columns
    child_count: array[int]
    child_ino: array[int]
    child_name: array[int]  # start of each child's name in names

    def __init__(self, root: Node) -> None:
        for attribute, typecode in INODE_COLUMNS:
            setattr(self, attribute, array(typecode, [0]))
        self.layer[0] = -1  # inode 0 has no data, like every inode but a regular file
        for attribute, typecode in CHILD_COLUMNS:
            setattr(self, attribute, array(typecode))
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.sparse: dict[int, tuple[tuple[int, int], ...]] = {}
        self.file_bytes = 0
        names = bytearray()
        targets = bytearray()
        numbers: dict[int, int] = {}  # id(node) -> ino, so that hardlinks get one number

        def number(node: Node, parent: int) -> int:
            ino = len(self.mode)
            numbers[id(node)] = ino
            self._add_inode(node, ino, parent, targets)
            return ino

        queue = deque([(root, number(root, ROOT_INO))])
        while queue:  # breadth first: each directory's children are numbered together
            directory, directory_ino = queue.popleft()
            assert directory.children is not None
            self.first_child[directory_ino] = len(self.child_ino)
            self.child_count[directory_ino] = len(directory.children)
            subdirectories = 0
            for name in sorted(directory.children):
                child = directory.children[name]
                child_ino = numbers.get(id(child))
                if child_ino is None:
                    child_ino = number(child, directory_ino)
                    if child.children is not None:
                        queue.append((child, child_ino))
                if child.children is not None:
                    subdirectories += 1
                self.child_ino.append(child_ino)
                self.child_name.append(len(names))
                names += name
            self.nlink[directory_ino] = 2 + subdirectories  # A11
        self.child_name.append(len(names))
        self.names = bytes(names)
        self.targets = bytes(targets)

    def encode(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The tree as a cache file's meta and sections (``decode`` reads them back)."""
        sections = {
            f"tree.{attribute}": getattr(self, attribute).tobytes()
            for attribute, _ in (*INODE_COLUMNS, *CHILD_COLUMNS)
        }
        sections["tree.names"] = self.names
        sections["tree.targets"] = self.targets
        extras = {
            "xattrs": {str(ino): xattrs_to_json(xattrs) for ino, xattrs in self.xattrs.items()},
            "sparse": {str(ino): sparse_to_json(sparse) for ino, sparse in self.sparse.items()},
        }
        sections["tree.extras"] = pack_json(extras)
        meta = {
            "inodes": len(self.mode),
            "children": len(self.child_ino),
            "file_bytes": self.file_bytes,
        }
        return meta, sections

    @classmethod
    def decode(cls, meta: dict[str, Any], sections: dict[str, bytes]) -> MergedTree:
        """The tree ``encode`` wrote; KeyError, TypeError or ValueError if it is damaged."""
        inodes = int(meta["inodes"])
        children = int(meta["children"])
        lengths = {"child_ino": children, "child_name": children + 1}
        tree = cls.__new__(cls)
        for attribute, typecode in (*INODE_COLUMNS, *CHILD_COLUMNS):
            length = lengths.get(attribute, inodes)
            setattr(tree, attribute, column(sections, f"tree.{attribute}", typecode, length))
        tree.names = sections["tree.names"]
        tree.targets = sections["tree.targets"]
        # Cheap structural checks, so a damaged file cannot send a lookup out of bounds (min,
        # max and map run in C: a loop in Python was a quarter of a later mount's load).
        if tree.child_name[-1] != len(tree.names) or (
            children and (min(tree.child_ino) == 0 or max(tree.child_ino) >= inodes)
        ):
            raise ValueError("child table out of bounds")
        if max(map(operator.add, tree.first_child, tree.child_count), default=0) > children:
            raise ValueError("directory run out of bounds")
        extras = json.loads(sections["tree.extras"])
        tree.xattrs = {int(ino): xattrs_from_json(pairs) for ino, pairs in extras["xattrs"].items()}
        tree.sparse = {
            int(ino): sparse_from_json(segments) for ino, segments in extras["sparse"].items()
        }
        tree.file_bytes = int(meta["file_bytes"])
        return tree

    def _add_inode(self, node: Node, ino: int, parent: int, targets: bytearray) -> None:
        self.mode.append(node.mode)
        self.uid.append(node.uid)
        self.gid.append(node.gid)
        self.mtime_ns.append(node.mtime_ns)
        self.rdev.append(node.rdev)
        self.nlink.append(node.nlink)
        self.layer.append(node.layer)
        self.parent.append(parent)
        self.first_child.append(0)
        self.child_count.append(0)
        if stat.S_ISLNK(node.mode):
            self.offset.append(len(targets))
            targets += node.target
        else:
            self.offset.append(node.offset)
        self.size.append(node.size)
        if node.children is None:
            self.file_bytes += node.size
        if node.xattrs:
            self.xattrs[ino] = node.xattrs
        if node.sparse is not None:
            self.sparse[ino] = node.sparse

    def __len__(self) -> int:
        """Number of inodes, the root included."""
        return len(self.mode) - 1

    def inode(self, ino: int) -> Inode:
        """The inode ``ino``; raises KeyError for a number this tree never gave out."""
        if not 0 < ino < len(self.mode):
            raise KeyError(ino)
        mode = self.mode[ino]
        size = self.size[ino]
        offset = self.offset[ino]
        target = self.targets[offset : offset + size] if stat.S_ISLNK(mode) else b""
        return Inode(
            ino,
            mode,
            self.uid[ino],
            self.gid[ino],
            self.mtime_ns[ino],
            size,
            self.rdev[ino],
            self.nlink[ino],
            self.layer[ino],
            offset,
            self.sparse.get(ino),
            self.xattrs.get(ino),
            target,
        )

    @property
    def root(self) -> Inode:
        return self.inode(ROOT_INO)

    def is_dir(self, ino: int) -> bool:
        return 0 < ino < len(self.mode) and stat.S_ISDIR(self.mode[ino])

    def parent_of(self, directory: int) -> int:
        return self.parent[directory]

    def path_of(self, ino: int) -> bytes:
        """The path of ``ino`` in the image, such as b"/etc/passwd" (a hardlink: the name it
        was numbered under, since ``parent`` holds that directory for every inode). For log
        lines: each step searches the parent's children for the inode."""
        if not 0 < ino < len(self.mode):
            raise KeyError(ino)
        names: list[bytes] = []
        while ino != ROOT_INO:
            parent = self.parent[ino]
            first = self.first_child[parent]
            index = self.child_ino.index(ino, first, first + self.child_count[parent])
            names.append(self.child_name_at(index))
            ino = parent
        return b"/" + b"/".join(reversed(names))

    def child_name_at(self, index: int) -> bytes:
        return self.names[self.child_name[index] : self.child_name[index + 1]]

    def children(self, directory: int, start: int = 0) -> Iterator[tuple[bytes, int]]:
        """(name, ino) of a directory's children in name order, from position ``start``."""
        first = self.first_child[directory]
        for index in range(first + start, first + self.child_count[directory]):
            yield self.child_name_at(index), self.child_ino[index]

    def lookup(self, directory: int, name: bytes) -> int | None:
        """The inode number of ``name`` in ``directory``, by binary search of its names."""
        if not self.is_dir(directory):
            return None
        if name == b".":
            return directory
        if name == b"..":
            return self.parent[directory]
        low = self.first_child[directory]
        high = low + self.child_count[directory]
        while low < high:
            middle = (low + high) // 2
            found = self.child_name_at(middle)
            if found < name:
                low = middle + 1
            elif found > name:
                high = middle
            else:
                return self.child_ino[middle]
        return None

    def walk(self) -> Iterator[tuple[bytes, Inode]]:
        """Every (path, inode) pair below the root, parents first; for tests and tools."""
        stack: list[tuple[bytes, int]] = [(b"", ROOT_INO)]
        while stack:
            path, directory = stack.pop()
            for name, ino in self.children(directory):
                child_path = path + b"/" + name if path else name
                yield child_path, self.inode(ino)
                if self.is_dir(ino):
                    stack.append((child_path, ino))

    def find(self, path: bytes) -> Inode | None:
        ino: int | None = ROOT_INO
        for name in split_path(path):
            assert ino is not None
            ino = self.lookup(ino, name)
            if ino is None:
                return None
        assert ino is not None
        return self.inode(ino)
