"""Views of an image other than the whole of it: layers 0..N merged, and one layer on its own.

``View`` says what is mounted: the image (every layer merged), the image as of layer N
(``--upto N``: layers 0..N merged, exactly as an image made of those layers only), or layer N
alone (``--layer N``). ``choose_layer`` turns what the user typed into a position: a number
counted from 0 at the bottom (as ``ocifs inspect`` lists them), a negative one counted from
the top (-1 is the top layer), or a digest prefix such as ``sha256:3f2a``.

``layer_tree`` builds layer N on its own, as its tar shows it, in the form overlayfs uses for
its layers, so that layer mounts stack with overlayfs back into the image:

* every entry as stored, the last of a path winning (M7), hardlinks as hardlinks (H1);
  parents that the tar does not name are implied, 0755 and owned by 0:0 (M8);
* a whiteout ``D/.wh.N`` is a character device 0/0 named ``D/N``, mode 0000, with the
  whiteout header's owner and mtime (what overlayfs and container engines write for one),
  unless the layer itself has a ``D/N``, which then hides the lower one by itself (W2), or
  ``D`` is a non-directory of the layer (umoci writes whiteouts under a path that became a
  file: the file hides the lower tree already);
* an opaque marker ``D/.wh..wh..opq`` is the xattr ``trusted.overlay.opaque`` and the xattr
  ``user.overlay.opaque`` (for overlayfs' ``userxattr`` mounts), both ``y``, on ``D``;
* AUFS metadata (``.wh..wh.plnk`` and friends) is not part of the image and is not shown (W6);
* a hardlink to a file of a lower layer (H3) is that file as the lower layers leave it (its
  attributes and data; another inode, since its other names are not in this layer): what
  extracting the layer over its lower layers leaves in the layer's own directory. Only then
  are the lower layers merged (through the tree cache, as ``--upto N-1`` would be).
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import MergeError, OcifsError, show
from .layout import LayerRef
from .tarscan import TarEntry
from .tree import (
    MergedTree,
    Node,
    TreeBuilder,
    Whiteout,
    classify_whiteout,
    implied_directory,
    split_path,
)

logger = logging.getLogger(__name__)

OPAQUE_XATTRS = {b"trusted.overlay.opaque": b"y", b"user.overlay.opaque": b"y"}
WHITEOUT_MODE = stat.S_IFCHR  # a character device 0/0 with no permission bits
POSITION = re.compile(r"-?[0-9]+")
DIGEST_PREFIX = re.compile(r"[a-z0-9]+:[0-9a-f]+")


@dataclass(frozen=True)
class View:
    """What a mount shows of the image: all of it, layers 0..position, or layer position."""

    kind: Literal["image", "upto", "layer"] = "image"
    position: int = -1  # for "upto" and "layer", counted from 0 at the bottom

    def describe(self) -> str:
        if self.kind == "upto":
            return f"layers 0 to {self.position}"
        if self.kind == "layer":
            return f"layer {self.position} alone"
        return "every layer"


WHOLE_IMAGE = View()


def choose_layer(option: str, spec: str, layers: Sequence[LayerRef]) -> int:
    """The position ``spec`` names among ``layers``; OcifsError (one line) if none or several.

    ``spec`` is a position (0 is the bottom layer), a negative position (-1 is the top
    layer), or ``ALGORITHM:HEX`` with HEX the start of one layer's digest.
    """
    count = len(layers)
    if count == 0:
        raise OcifsError(f"{option} {show(spec)}: the image has no layers")
    if POSITION.fullmatch(spec):
        number = int(spec)
        position = number + count if number < 0 else number
        if not 0 <= position < count:
            choices = (
                f"{count} layers: 0 to {count - 1} from the bottom, -1 to -{count} from the top"
                if count > 1
                else "1 layer: 0, or -1"
            )
            raise OcifsError(f"{option} {spec}: the image has {choices}")
        return position
    if not DIGEST_PREFIX.fullmatch(spec):
        raise OcifsError(
            f"{option} {show(spec)}: expected a layer position (0 is the bottom, -1 the top)"
            " or the start of a layer digest, such as sha256:3f2a"
        )
    found = sorted({layer.position for layer in layers if layer.digest.startswith(spec)})
    if not found:
        raise OcifsError(f"{option} {show(spec)}: no layer of the image has such a digest")
    if len(found) > 1:
        listed = ", ".join(str(position) for position in found)
        raise OcifsError(
            f"{option} {show(spec)}: layers {listed} all match; give a longer digest or a position"
        )
    return found[0]


def layer_tree(
    position: int, entries: Iterable[TarEntry], lower: Callable[[], MergedTree]
) -> tuple[MergedTree, bool]:
    """Layer ``position`` on its own (see the module docstring); raises MergeError.

    ``lower`` gives the merged tree of the layers below, called only if a hardlink of this
    layer points at a file of theirs. Returns the tree and whether ``lower`` was called: if
    not, every inode's ``layer`` is ``position``; if it was, some are lower positions.
    """
    builder = LayerViewBuilder(lower)
    builder.apply_layer(position, entries)
    return builder.freeze(), builder.lower is not None


class LayerViewBuilder(TreeBuilder):
    """One layer's entries into a tree, whiteouts and opaque markers kept as overlayfs has them."""

    def __init__(self, lower: Callable[[], MergedTree]) -> None:
        super().__init__()
        self.lower_tree = lower
        self.lower: MergedTree | None = None
        self.copies: dict[int, Node] = {}  # a lower inode -> the node made of it here
        self.markers: list[Whiteout] = []

    def apply_layer(self, layer: int, entries: Iterable[TarEntry]) -> None:
        self.root.layer = layer
        ordinary: list[tuple[tuple[bytes, ...], TarEntry]] = []
        markers: list[tuple[Whiteout, TarEntry]] = []
        for entry in entries:
            components = split_path(entry.path)
            whiteout = classify_whiteout(components, entry.path)
            if whiteout is None:
                ordinary.append((components, entry))
            elif isinstance(whiteout, Whiteout):
                markers.append((whiteout, entry))
        self.markers = [whiteout for whiteout, _ in markers]
        for components, entry in ordinary:
            self._apply_entry(layer, components, entry)
        # After every entry: a directory entry after its marker must not drop the xattr
        # (umoci writes the marker first), and a name the layer adds hides the lower one.
        for whiteout, entry in markers:
            self._show_marker(layer, whiteout, entry)

    def _show_marker(self, layer: int, whiteout: Whiteout, entry: TarEntry) -> None:
        directory = self.root
        for name in whiteout.parent:
            assert directory.children is not None
            child = directory.children.get(name)
            if child is None:
                child = implied_directory(layer)
                directory.children[name] = child
            elif not child.is_dir:
                return  # under a non-directory of this layer, which hides the lower tree itself
            directory = child
        assert directory.children is not None
        if whiteout.name is None:
            directory.xattrs = {**(directory.xattrs or {}), **OPAQUE_XATTRS}
            return
        if whiteout.name in directory.children:
            return  # the layer's own entry of that name hides the lower one (W2)
        node = Node(WHITEOUT_MODE)
        node.set_attributes(entry)  # checks the owner, as for any entry
        node.mode = WHITEOUT_MODE
        node.xattrs = None
        node.layer = layer
        directory.children[whiteout.name] = node

    def _link_target(self, entry: TarEntry) -> Node:
        components = split_path(entry.linkname)
        node = self.root
        for name in components:
            if node.children is None:
                break  # a non-directory of this layer in the way: the merge's error
            child = node.children.get(name)
            if child is None:
                return self._lower_target(entry, components)
            node = child
        return super()._link_target(entry)

    def _lower_target(self, entry: TarEntry, components: tuple[bytes, ...]) -> Node:
        """The lower layers' file a hardlink of this layer names, as a node of this tree."""
        missing = MergeError(
            f"hardlink {show(entry.path)} points to {show(entry.linkname)}, which does not exist"
        )
        if any(hides(whiteout, components) for whiteout in self.markers):
            raise missing  # this layer removed it before adding the link (W2: whiteouts first)
        if self.lower is None:
            logger.info("a hardlink of this layer points below it: merging the lower layers")
            self.lower = self.lower_tree()
        found = self.lower.find(entry.linkname)
        if found is None:
            raise missing
        if found.is_dir:
            raise MergeError(
                f"hardlink {show(entry.path)} points to directory {show(entry.linkname)}"
            )
        node = self.copies.get(found.ino)
        if node is None:
            node = Node(found.mode, found.uid, found.gid, found.mtime_ns)
            node.size, node.rdev, node.layer = found.size, found.rdev, found.layer
            node.offset, node.sparse, node.target = found.offset, found.sparse, found.target
            node.xattrs = dict(found.xattrs) if found.xattrs else None
            node.nlink = 0  # each name of it in this layer counts one
            self.copies[found.ino] = node
        return node


def hides(whiteout: Whiteout, components: tuple[bytes, ...]) -> bool:
    """Whether ``whiteout`` removes the lower path ``components`` (W1, W4)."""
    depth = len(whiteout.parent)
    if components[:depth] != whiteout.parent or len(components) <= depth:
        return False
    return whiteout.name is None or components[depth] == whiteout.name


def empty_tree() -> MergedTree:
    """The tree below layer 0: an empty root."""
    return MergedTree(implied_directory())
