"""Persist layer indexes and merged trees, so that a later mount reads them instead of the blobs.

Two kinds of file live under the cache directory (``$XDG_CACHE_HOME/ocifs`` by default):

* ``layers/<algorithm>/<hex>``: one layer's index, keyed by its digest: its tar entries,
  for a gzip or zstd layer its seek points, and for a verified index the sums of its
  stream's blocks (``blockcheck``). Blobs are content-addressed, so the file serves any
  layout holding that blob; a second image sharing a base layer reads the base from here.
* ``trees/<hex>``: the merged tree of one sequence of layers, keyed by a hash of their
  digests, so that mounting the same image again needs no merge at all.
* ``archives/<hex>``: the member table of an image archive (and a gzipped one's seek points),
  keyed by the archive file's real path, device and inode, and trusted only while its size,
  mtime and a sample of its head and tail are those it was read with (``ArchiveIdentity``).
  An archive's content has no digest to key it by, and hashing a multi-GB file on every mount
  would cost what the cache saves; an archive rewritten in place is read again.

This module is the policy: where the files go, what they are keyed by, when one is trusted
(this blob, verified if asked, with what its compression's readers need), and the sections
of a layer's file (entries and seek points as columns, at the end). Every file is a
``cachefile`` container, which checks it whole and writes it atomically; a file that is
missing, damaged or describes another blob is a ``CacheMiss``, never trusted: the caller
indexes again and overwrites it. The tree encodes itself (``MergedTree.encode``).
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import tarscan
from .archive import SPARSE, ArchiveIdentity, Member, MemberTable
from .blockcheck import ALGORITHM, CHECK_BLOCK, BlockSums
from .cachefile import (
    FORMAT_VERSION,
    CacheMiss,
    FileSection,
    column,
    pack_json,
    pack_strings,
    read_file,
    sparse_from_json,
    sparse_to_json,
    unpack_strings,
    write_file,
    xattrs_from_json,
    xattrs_to_json,
)
from .gzseek import SeekPoints
from .layerindex import LayerIndex
from .layout import LayerRef
from .mediatypes import Compression
from .tarscan import TarEntry
from .tree import MergedTree
from .xdg import ocifs_dir

logger = logging.getLogger(__name__)

SAMPLE_BYTES = 64 << 10

KIND_CODES = {
    tarscan.FILE: "f",
    tarscan.DIR: "d",
    tarscan.SYMLINK: "l",
    tarscan.HARDLINK: "h",
    tarscan.CHARDEV: "c",
    tarscan.BLOCKDEV: "b",
    tarscan.FIFO: "p",
}
KINDS_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}
MEMBER_CODES = {**KIND_CODES, SPARSE: "s"}  # an archive's members: tar kinds, and sparse files
MEMBERS_BY_CODE = {code: kind for kind, code in MEMBER_CODES.items()}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ocifs``, ``~/.cache/ocifs`` by default."""
    return ocifs_dir("XDG_CACHE_HOME", ".cache")


class IndexCache:
    """The cache directory. Failing to write is logged and otherwise ignored: it is a cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def layer_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)  # the grammar was checked by the resolver
        return self.root / "layers" / algorithm / hex_digest

    def tree_path(self, layers: Iterable[LayerRef]) -> Path:
        return self.root / "trees" / tree_key(layers)

    def load_layer(
        self, layer: LayerRef, verify: bool, with_entries: bool, sample: bool = True
    ) -> LayerIndex | None:
        """The layer's index if the cache has a usable one (else None, and the log says why):
        one that describes this blob, was verified if ``verify``, and has what its
        compression's readers need. ``with_entries=False`` leaves the entries on disk.
        ``sample=False`` takes the blob by its digest, size and compression alone, without
        opening it (``ocifs inspect``, which serves no data from it; a mount checks)."""
        try:
            found = self.read_layer(layer, with_entries, sample)
        except CacheMiss as reason:
            logger.info("indexing %s: %s", layer.describe(), reason)
            return None
        if verify and not found.verified:
            logger.info(
                "indexing %s: its cached index was built without verification", layer.describe()
            )
            return None
        if layer.compression.seekable_by_points and found.points is None:
            logger.info("indexing %s: its cached index has no seek points", layer.describe())
            return None
        return found

    def layer_summary(self, layer: LayerRef, verify: bool) -> tuple[int, int] | None:
        """(uncompressed size, number of entries) of the layer as its cached index gives
        them, from the file's header alone, without opening the blob (``ocifs inspect``);
        None if the cache has no index of this blob (verified, if ``verify``)."""
        path = self.layer_path(layer.digest)
        try:
            meta, _ = read_file(path, "layer", set())
            if meta.get("digest") != layer.digest or meta.get("blob_size") != layer.size:
                raise CacheMiss(f"{path} describes another blob")
            if meta.get("compression") != layer.compression:
                raise CacheMiss(f"{path} describes another compression")
            if verify and meta.get("verified") is not True:
                raise CacheMiss(f"{path} was built without verification")
            return int(meta["uncompressed_size"]), int(meta["entries"]["count"])
        except CacheMiss as reason:
            logger.info("indexing %s: %s", layer.describe(), reason)
        except (KeyError, TypeError, ValueError) as error:
            logger.info("indexing %s: %s is damaged: %s", layer.describe(), path, error)
        return None

    def read_layer(self, layer: LayerRef, with_entries: bool, sample: bool = True) -> LayerIndex:
        """The layer's index as the cache holds it; CacheMiss if it has none for this blob."""
        path = self.layer_path(layer.digest)
        wanted = None if with_entries else {"points", "blocks"}
        meta, sections = read_file(path, "layer", wanted, lazy=frozenset({"points.windows"}))
        if meta.get("digest") != layer.digest or meta.get("blob_size") != layer.size:
            raise CacheMiss(f"{path} describes another blob")
        if meta.get("compression") != layer.compression:
            raise CacheMiss(f"{path} describes another compression")
        if sample and meta.get("sample") != blob_sample(layer):
            raise CacheMiss(f"the blob of {layer.describe()} differs from the one indexed")
        try:
            points = decode_points(meta["points"], sections) if meta.get("points") else None
            entries = decode_entries(meta["entries"], sections) if with_entries else None
            size = int(meta["uncompressed_size"])
            verified = bool(meta["verified"])
            blocks = decode_blocks(meta["blocks"], sections, size) if meta["blocks"] else None
        except (KeyError, TypeError, ValueError) as error:
            raise CacheMiss(f"{path} is damaged: {error}") from error
        # Sums of another kind or block size cannot be checked: as good as none.
        unit = CHECK_BLOCK[layer.compression]
        if blocks is not None and (blocks.algorithm, blocks.block) != (ALGORITHM, unit):
            blocks = None
        if verified and blocks is None:
            raise CacheMiss(f"{path} has no block sums that reads could be checked against")
        return LayerIndex(entries, points, size, verified, blocks)

    def store_layer(self, layer: LayerRef, index: LayerIndex) -> LayerIndex:
        """Store a layer's index (with its entries). Returns the index to serve from: the
        same, but with the seek-point windows read from the file just written rather than
        held in memory; or ``index`` itself if it could not be written (logged)."""
        assert index.entries is not None, "an index is stored with its entries"
        try:
            entry_meta, sections = encode_entries(index.entries)
        except (OverflowError, ValueError) as error:  # numbers no column can hold: merge refuses
            logger.info("not caching the index of %s: %s", layer.describe(), error)
            return index
        meta: dict[str, Any] = {
            "digest": layer.digest,
            "blob_size": layer.size,
            "compression": str(layer.compression),
            "verified": index.verified,
            "sample": blob_sample(layer),
            "uncompressed_size": index.uncompressed_size,
            "entries": entry_meta,
            "points": None,
            "blocks": None,
        }
        if index.points is not None:
            meta["points"] = encode_points(index.points, sections)
        if index.blocks is not None:
            meta["blocks"] = encode_blocks(index.blocks, sections)
        path = self.layer_path(layer.digest)
        placed = self._write(path, "layer", meta, sections)
        if placed is None or index.points is None:
            return index
        start, length = placed["points.windows"]
        windows = FileSection(path, start, length)
        return dataclasses.replace(index, points=dataclasses.replace(index.points, windows=windows))

    def archive_path(self, identity: ArchiveIdentity) -> Path:
        return self.root / "archives" / identity.key()

    def load_archive(self, identity: ArchiveIdentity) -> MemberTable | None:
        """The member table of this archive file if the cache has one read from it as it is
        now (else None, and the log says why). A gzipped archive's seek-point windows stay
        in the cache file until a read needs them."""
        path = self.archive_path(identity)
        try:
            meta, sections = read_file(path, "archive", None, lazy=frozenset({"points.windows"}))
            if meta.get("identity") != dataclasses.asdict(identity):
                raise CacheMiss(f"{identity.path} changed since {path} was written")
            try:
                members = decode_members(meta["members"], sections)
                compression = Compression(meta["compression"])
                points = decode_points(meta["points"], sections) if meta["points"] else None
            except (KeyError, TypeError, ValueError) as error:
                raise CacheMiss(f"{path} is damaged: {error}") from error
        except CacheMiss as reason:
            logger.info("reading the member table of %s: %s", identity.path, reason)
            return None
        return MemberTable(compression, members, points)

    def store_archive(self, identity: ArchiveIdentity, table: MemberTable) -> MemberTable:
        """Store an archive's member table. Returns the table to use: the same, its seek-point
        windows then read from the file just written rather than held in memory."""
        member_meta, sections = encode_members(table.members)
        meta: dict[str, Any] = {
            "identity": dataclasses.asdict(identity),
            "compression": str(table.compression),
            "members": member_meta,
            "points": None,
        }
        if table.points is not None:
            meta["points"] = encode_points(table.points, sections)
        path = self.archive_path(identity)
        placed = self._write(path, "archive", meta, sections)
        if placed is None or table.points is None:
            return table
        start, length = placed["points.windows"]
        windows = FileSection(path, start, length)
        return dataclasses.replace(table, points=dataclasses.replace(table.points, windows=windows))

    def load_tree(self, layers: Sequence[LayerRef]) -> MergedTree:
        path = self.tree_path(layers)
        meta, sections = read_file(path, "tree", None)
        if meta.get("layers") != [layer.digest for layer in layers]:
            raise CacheMiss(f"{path} describes other layers")
        try:
            return MergedTree.decode(meta, sections)
        except (KeyError, TypeError, ValueError) as error:
            raise CacheMiss(f"{path} is damaged: {error}") from error

    def store_tree(self, layers: Sequence[LayerRef], tree: MergedTree) -> None:
        meta, sections = tree.encode()
        meta["layers"] = [layer.digest for layer in layers]
        self._write(self.tree_path(layers), "tree", meta, sections)

    def _write(
        self, path: Path, kind: str, meta: dict[str, Any], sections: dict[str, bytes]
    ) -> dict[str, tuple[int, int]] | None:
        """Where each section was written; None if the file could not be (logged)."""
        try:
            return write_file(path, kind, meta, sections)
        except OSError as error:
            logger.warning("cannot write the index cache %s: %s", path, error.strerror or error)
            return None


def blob_sample(layer: LayerRef) -> str:
    """A hash of the blob's first and last 64 KiB and its size: a few microseconds to check.

    A later mount does not hash the whole blob again (that is what makes it quick); this
    catches a blob that was replaced or cut short since it was indexed, though not damage
    in its middle, which reads then report as EIO.
    """
    sample = hashlib.sha256()
    try:
        blob = layer.blob.open()
        try:
            size = layer.blob.size  # resolve checked it against the descriptor
            sample.update(str(size).encode() + b"\0")
            sample.update(blob.pread(SAMPLE_BYTES, 0))
            sample.update(blob.pread(SAMPLE_BYTES, max(0, size - SAMPLE_BYTES)))
        finally:
            blob.close()
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return sample.hexdigest()


def tree_key(layers: Iterable[LayerRef]) -> str:
    text = "\n".join([f"ocifs-tree-v{FORMAT_VERSION}", *(layer.digest for layer in layers)])
    return hashlib.sha256(text.encode()).hexdigest()


# ---- a layer file's sections: its entries ----

ENTRY_COLUMNS = (  # (attribute, typecode)
    ("mode", "Q"),
    ("uid", "Q"),
    ("gid", "Q"),
    ("mtime_ns", "q"),
    ("size", "Q"),
    ("devmajor", "Q"),
    ("devminor", "Q"),
    ("data_offset", "Q"),
    ("header_offset", "Q"),
)


def encode_entries(entries: list[TarEntry]) -> tuple[dict[str, Any], dict[str, bytes]]:
    sections: dict[str, bytes] = {}
    for attribute, typecode in ENTRY_COLUMNS:
        sections[f"entry.{attribute}"] = array.array(
            typecode, [getattr(entry, attribute) for entry in entries]
        ).tobytes()
    sections["entry.kind"] = "".join(KIND_CODES[entry.kind] for entry in entries).encode()
    sections["entry.path"], sections["entry.path_end"] = pack_strings(e.path for e in entries)
    sections["entry.link"], sections["entry.link_end"] = pack_strings(e.linkname for e in entries)
    extras = {}
    for number, entry in enumerate(entries):
        if entry.xattrs is not None or entry.sparse is not None:
            extras[str(number)] = {
                "xattrs": None if entry.xattrs is None else xattrs_to_json(entry.xattrs),
                "sparse": None if entry.sparse is None else sparse_to_json(entry.sparse),
            }
    sections["entry.extras"] = pack_json(extras)
    return {"count": len(entries)}, sections


def decode_entries(meta: dict[str, Any], sections: dict[str, bytes]) -> list[TarEntry]:
    count = int(meta["count"])
    columns = [column(sections, f"entry.{name}", code, count) for name, code in ENTRY_COLUMNS]
    kinds = sections["entry.kind"].decode("ascii")
    if len(kinds) != count:
        raise ValueError("kind column has the wrong length")
    paths = unpack_strings(sections["entry.path"], column(sections, "entry.path_end", "Q", count))
    links = unpack_strings(sections["entry.link"], column(sections, "entry.link_end", "Q", count))
    extras = json.loads(sections["entry.extras"])
    entries = []
    kind_of = KINDS_BY_CODE
    for number, (
        mode,
        uid,
        gid,
        mtime_ns,
        size,
        major,
        minor,
        data_offset,
        header_offset,
    ) in enumerate(zip(*columns, strict=True)):
        entries.append(
            TarEntry(
                paths[number],
                kind_of[kinds[number]],
                mode,
                uid,
                gid,
                mtime_ns,
                size,
                links[number],
                major,
                minor,
                None,
                data_offset,
                None,
                header_offset,
            )
        )
    for number, extra in extras.items():
        entry = entries[int(number)]
        if extra["xattrs"] is not None:
            entry.xattrs = xattrs_from_json(extra["xattrs"])
        if extra["sparse"] is not None:
            entry.sparse = sparse_from_json(extra["sparse"])
    return entries


# ---- an archive file's sections: its members ----


def encode_members(members: dict[str, Member]) -> tuple[dict[str, Any], dict[str, bytes]]:
    values = list(members.values())
    sections: dict[str, bytes] = {}
    names = (name.encode("utf-8", "surrogateescape") for name in members)
    sections["member.name"], sections["member.name_end"] = pack_strings(names)
    links = ((m.link or "").encode("utf-8", "surrogateescape") for m in values)
    sections["member.link"], sections["member.link_end"] = pack_strings(links)
    sections["member.offset"] = array.array("Q", [m.offset for m in values]).tobytes()
    sections["member.size"] = array.array("Q", [m.size for m in values]).tobytes()
    sections["member.kind"] = "".join(MEMBER_CODES[m.kind] for m in values).encode()
    return {"count": len(values)}, sections


def decode_members(meta: dict[str, Any], sections: dict[str, bytes]) -> dict[str, Member]:
    count = int(meta["count"])
    names = unpack_strings(sections["member.name"], column(sections, "member.name_end", "Q", count))
    links = unpack_strings(sections["member.link"], column(sections, "member.link_end", "Q", count))
    offsets = column(sections, "member.offset", "Q", count)
    sizes = column(sections, "member.size", "Q", count)
    kinds = sections["member.kind"].decode("ascii")
    if len(kinds) != count:
        raise ValueError("kind column has the wrong length")
    members = {}
    for name, link, offset, size, code in zip(names, links, offsets, sizes, kinds, strict=True):
        text = link.decode("utf-8", "surrogateescape")
        members[name.decode("utf-8", "surrogateescape")] = Member(
            MEMBERS_BY_CODE[code], offset, size, text or None
        )
    return members


# ---- a layer file's sections: its gzip seek points ----


def encode_points(points: SeekPoints, sections: dict[str, bytes]) -> dict[str, Any]:
    sections["points.uncompressed"] = points.uncompressed.tobytes()
    sections["points.compressed"] = points.compressed.tobytes()
    sections["points.bits"] = bytes(points.bits)
    sections["points.window_offsets"] = points.window_offsets.tobytes()
    sections["points.windows"] = bytes(points.windows[0 : len(points.windows)])
    return {
        "count": len(points),
        "spacing": points.spacing,
        "size": points.size,
        "compressed_size": points.compressed_size,
    }


def decode_points(meta: dict[str, Any], sections: dict[str, bytes]) -> SeekPoints:
    count = int(meta["count"])
    window_offsets = column(sections, "points.window_offsets", "Q", count + 1)
    windows = sections["points.windows"]
    if window_offsets[-1] != len(windows) or list(window_offsets) != sorted(window_offsets):
        raise ValueError("window bounds out of order")
    bits = sections["points.bits"]
    if len(bits) != count or any(b > 7 for b in bits):
        raise ValueError("bad bit counts")
    uncompressed = column(sections, "points.uncompressed", "Q", count)
    if count == 0 or uncompressed[0] != 0:
        raise ValueError("seek points do not start at 0")
    return SeekPoints(
        spacing=int(meta["spacing"]),
        uncompressed=uncompressed,
        compressed=column(sections, "points.compressed", "Q", count),
        bits=bits,
        window_offsets=window_offsets,
        windows=windows,
        size=int(meta["size"]),
        compressed_size=int(meta["compressed_size"]),
    )


# ---- a layer file's sections: its block sums ----


def encode_blocks(blocks: BlockSums, sections: dict[str, bytes]) -> dict[str, Any]:
    sections["blocks.sums"] = blocks.sums.tobytes()
    return {"algorithm": blocks.algorithm, "block": blocks.block, "count": len(blocks.sums)}


def decode_blocks(meta: dict[str, Any], sections: dict[str, bytes], size: int) -> BlockSums:
    """The sums as stored; ValueError unless there is one per block of the stream."""
    sums = column(sections, "blocks.sums", "Q", int(meta["count"]))
    return BlockSums(str(meta["algorithm"]), int(meta["block"]), sums, size)
