"""Persist layer indexes and merged trees, so that a later mount reads them instead of the blobs.

Two kinds of file live under the cache directory (``$XDG_CACHE_HOME/ocifs`` by default):

* ``layers/<algorithm>/<hex>``: one layer's index, keyed by its digest: its tar entries and,
  for a gzip layer, its seek points. Blobs are content-addressed, so the file serves any
  layout holding that blob; a second image sharing a base layer reads the base from here.
* ``trees/<hex>``: the merged tree of one sequence of layers, keyed by a hash of their
  digests, so that mounting the same image again needs no merge at all.

Every file is a small header (magic, format version, byte order) and a JSON table of binary
sections, each with its own SHA-256. A file that is truncated, damaged, of another format
version, or describing another blob size is reported as ``CacheMiss`` and never trusted; the
caller indexes again and overwrites it. Writes go to a temporary file that is renamed into
place, so a reader sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import struct
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from . import tarscan
from .gzseek import SeekPoints
from .layerindex import LayerIndex
from .layout import LayerRef
from .tarscan import TarEntry
from .tree import MergedTree

logger = logging.getLogger(__name__)

MAGIC = b"OCIFSIDX"
FORMAT_VERSION = 1  # bump whenever the content or meaning of a cached file changes
SAMPLE_BYTES = 64 << 10
PREAMBLE = struct.Struct("<8sII32s")  # magic, version, header length, header sha256

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


class CacheMiss(Exception):
    """The cache has no usable file for this key; the message says why (for the log)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative value
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocifs"


class IndexCache:
    """The cache directory. Failing to write is logged and otherwise ignored: it is a cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def layer_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)  # the grammar was checked by the resolver
        return self.root / "layers" / algorithm / hex_digest

    def tree_path(self, layers: Iterable[LayerRef]) -> Path:
        return self.root / "trees" / tree_key(layers)

    def load_layer(self, layer: LayerRef, verify: bool, with_entries: bool) -> LayerIndex | None:
        """The layer's index if the cache has a usable one (else None, and the log says why):
        one that describes this blob, was verified if ``verify``, and has what its
        compression's readers need. ``with_entries=False`` leaves the entries on disk."""
        try:
            found = self.read_layer(layer, with_entries)
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

    def read_layer(self, layer: LayerRef, with_entries: bool) -> LayerIndex:
        """The layer's index as the cache holds it; CacheMiss if it has none for this blob."""
        path = self.layer_path(layer.digest)
        wanted = None if with_entries else {"points"}
        meta, sections = read_file(path, "layer", wanted, lazy=frozenset({"points.windows"}))
        if meta.get("digest") != layer.digest or meta.get("blob_size") != layer.size:
            raise CacheMiss(f"{path} describes another blob")
        if meta.get("compression") != layer.compression:
            raise CacheMiss(f"{path} describes another compression")
        if meta.get("sample") != blob_sample(layer):
            raise CacheMiss(f"the blob of {layer.describe()} differs from the one indexed")
        try:
            points = decode_points(meta["points"], sections) if meta.get("points") else None
            entries = decode_entries(meta["entries"], sections) if with_entries else None
            return LayerIndex(
                entries, points, int(meta["uncompressed_size"]), bool(meta["verified"])
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CacheMiss(f"{path} is damaged: {error}") from error

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
        }
        if index.points is not None:
            meta["points"] = encode_points(index.points, sections)
        path = self.layer_path(layer.digest)
        placed = self._write(path, "layer", meta, sections)
        if placed is None or index.points is None:
            return index
        start, length = placed["points.windows"]
        windows = FileSection(path, start, length)
        return dataclasses.replace(index, points=dataclasses.replace(index.points, windows=windows))

    def load_tree(self, layers: Sequence[LayerRef]) -> MergedTree:
        path = self.tree_path(layers)
        meta, sections = read_file(path, "tree", None)
        if meta.get("layers") != [layer.digest for layer in layers]:
            raise CacheMiss(f"{path} describes other layers")
        try:
            return decode_tree(meta, sections)
        except (KeyError, TypeError, ValueError) as error:
            raise CacheMiss(f"{path} is damaged: {error}") from error

    def store_tree(self, layers: Sequence[LayerRef], tree: MergedTree) -> None:
        meta, sections = encode_tree(tree)
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
        with open(layer.path, "rb") as blob:
            size = os.fstat(blob.fileno()).st_size
            sample.update(str(size).encode() + b"\0")
            sample.update(os.pread(blob.fileno(), SAMPLE_BYTES, 0))
            sample.update(os.pread(blob.fileno(), SAMPLE_BYTES, max(0, size - SAMPLE_BYTES)))
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return sample.hexdigest()


def tree_key(layers: Iterable[LayerRef]) -> str:
    text = "\n".join([f"ocifs-tree-v{FORMAT_VERSION}", *(layer.digest for layer in layers)])
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the file format ----


def write_file(
    path: Path, kind: str, meta: dict[str, Any], sections: dict[str, bytes]
) -> dict[str, tuple[int, int]]:
    """Write atomically: a temporary file in the same directory, flushed, then renamed.
    Returns each section's (offset in the file, length)."""
    table: list[tuple[str, int, int, str]] = []
    placed: dict[str, tuple[int, int]] = {}
    offset = 0
    for name, data in sections.items():
        table.append((name, offset, len(data), hashlib.sha256(data).hexdigest()))
        placed[name] = (offset, len(data))
        offset += len(data)
    header = json.dumps(
        {"kind": kind, "byteorder": sys.byteorder, "meta": meta, "sections": table},
        separators=(",", ":"),
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(
                PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest())
            )
            out.write(header)
            for data in sections.values():
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    base = PREAMBLE.size + len(header)
    return {name: (base + start, length) for name, (start, length) in placed.items()}


def read_file(
    path: Path, kind: str, wanted: set[str] | None, lazy: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The meta and the sections of a cache file, all checked: every section, or those whose
    group (the part of the name before the first dot) is ``wanted``."""
    try:
        with open(path, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise CacheMiss(f"{path} is not a regular file")
            preamble = source.read(PREAMBLE.size)
            if len(preamble) != PREAMBLE.size:
                raise CacheMiss(f"{path} is truncated")
            magic, version, header_length, header_hash = PREAMBLE.unpack(preamble)
            if magic != MAGIC:
                raise CacheMiss(f"{path} is not an ocifs index")
            if version != FORMAT_VERSION:
                raise CacheMiss(f"{path} has format version {version}, not {FORMAT_VERSION}")
            header = source.read(header_length)
            if len(header) != header_length or hashlib.sha256(header).digest() != header_hash:
                raise CacheMiss(f"{path} has a damaged header")
            try:
                parsed = json.loads(header)
                if parsed["kind"] != kind or parsed["byteorder"] != sys.byteorder:
                    raise CacheMiss(f"{path} is not a {kind} index for this machine")
                meta = parsed["meta"]
                table = parsed["sections"]
                base = PREAMBLE.size + header_length
                sections: dict[str, Any] = {}
                for name, offset, length, digest in table:
                    if wanted is not None and name.split(".", 1)[0] not in wanted:
                        continue
                    source.seek(base + offset)
                    if name in lazy:  # checked now, read again when needed
                        if hash_stream(source, length) != digest:
                            raise CacheMiss(f"{path} is damaged (section {name})")
                        sections[name] = FileSection(path, base + offset, length)
                        continue
                    data = source.read(length)
                    if len(data) != length:
                        raise CacheMiss(f"{path} is truncated")
                    if hashlib.sha256(data).hexdigest() != digest:
                        raise CacheMiss(f"{path} is damaged (section {name})")
                    sections[name] = data
                # the file must end where the table says: more or less is damage
                end = base + sum(entry[2] for entry in table)
                if os.fstat(source.fileno()).st_size != end:
                    raise CacheMiss(f"{path} has the wrong length")
            except (KeyError, TypeError, ValueError) as error:
                raise CacheMiss(f"{path} has a damaged header: {error}") from error
    except FileNotFoundError:
        raise CacheMiss(f"{path} does not exist") from None
    except OSError as error:
        raise CacheMiss(f"cannot read {path}: {error.strerror or error}") from error
    if not isinstance(meta, dict):
        raise CacheMiss(f"{path} has a damaged header")
    return meta, sections


def hash_stream(source: BinaryIO, length: int) -> str | None:
    """SHA-256 of the next ``length`` bytes, or None if the file ends first."""
    hasher = hashlib.sha256()
    while length:
        chunk = source.read(min(length, 1 << 20))
        if not chunk:
            return None
        hasher.update(chunk)
        length -= len(chunk)
    return hasher.hexdigest()


class FileSection:
    """A section of a cache file left on disk and read by slices when needed.

    The seek-point windows of a big image are tens of MB that a mount touches a little at a
    time; read on demand, they cost the daemon no memory. The file is opened again rather
    than mapped: a cache file damaged under a live mount then fails a read (EIO) instead of
    killing the daemon with SIGBUS. A replaced file is no problem: the open one stays.
    """

    def __init__(self, path: Path, start: int, length: int) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.start = start
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("FileSection slices have no step")
        return os.pread(self.fd, max(0, stop - start), self.start + start)

    def __bytes__(self) -> bytes:
        return self[0 : self.length]

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


def column(sections: dict[str, bytes], name: str, typecode: str, length: int) -> array.array[Any]:
    values = array.array(typecode)
    values.frombytes(sections[name])
    if len(values) != length:
        raise ValueError(f"column {name} has {len(values)} values, not {length}")
    return values


def pack_strings(strings: Iterable[bytes]) -> tuple[bytes, bytes]:
    """Strings back to back, and the end of each as a 'Q' column."""
    blob = bytearray()
    ends = array.array("Q")
    for value in strings:
        blob += value
        ends.append(len(blob))
    return bytes(blob), ends.tobytes()


def unpack_strings(blob: bytes, ends: array.array[Any]) -> list[bytes]:
    strings = []
    start = 0
    for end in ends:
        if end < start or end > len(blob):
            raise ValueError("string bounds out of order")
        strings.append(blob[start:end])
        start = end
    return strings


# ---- layer entries ----

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
                "xattrs": None
                if entry.xattrs is None
                else [[key.hex(), value.hex()] for key, value in entry.xattrs.items()],
                "sparse": None if entry.sparse is None else [list(s) for s in entry.sparse],
            }
    sections["entry.extras"] = json.dumps(extras, separators=(",", ":")).encode()
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
            entry.xattrs = {bytes.fromhex(k): bytes.fromhex(v) for k, v in extra["xattrs"]}
        if extra["sparse"] is not None:
            entry.sparse = tuple((int(a), int(b)) for a, b in extra["sparse"])
    return entries


# ---- gzip seek points ----


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


# ---- merged trees ----

TREE_COLUMNS = (  # MergedTree attribute, typecode
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


def encode_tree(tree: MergedTree) -> tuple[dict[str, Any], dict[str, bytes]]:
    sections = {f"tree.{name}": getattr(tree, name).tobytes() for name, _ in TREE_COLUMNS}
    sections["tree.child_ino"] = tree.child_ino.tobytes()
    sections["tree.child_name"] = tree.child_name.tobytes()
    sections["tree.names"] = tree.names
    sections["tree.targets"] = tree.targets
    extras = {
        "xattrs": {
            str(ino): [[k.hex(), v.hex()] for k, v in xattrs.items()]
            for ino, xattrs in tree.xattrs.items()
        },
        "sparse": {str(ino): [list(s) for s in sparse] for ino, sparse in tree.sparse.items()},
    }
    sections["tree.extras"] = json.dumps(extras, separators=(",", ":")).encode()
    meta = {
        "inodes": len(tree.mode),
        "children": len(tree.child_ino),
        "file_bytes": tree.file_bytes,
    }
    return meta, sections


def decode_tree(meta: dict[str, Any], sections: dict[str, bytes]) -> MergedTree:
    inodes = int(meta["inodes"])
    children = int(meta["children"])
    columns = {name: column(sections, f"tree.{name}", code, inodes) for name, code in TREE_COLUMNS}
    child_ino = column(sections, "tree.child_ino", "I", children)
    child_name = column(sections, "tree.child_name", "Q", children + 1)
    names = sections["tree.names"]
    targets = sections["tree.targets"]
    # Cheap structural checks, so a damaged file cannot send a lookup out of bounds.
    if child_name[-1] != len(names) or any(ino == 0 or ino >= inodes for ino in child_ino):
        raise ValueError("child table out of bounds")
    for first, count in zip(columns["first_child"], columns["child_count"], strict=True):
        if first + count > children:
            raise ValueError("directory run out of bounds")
    extras = json.loads(sections["tree.extras"])
    xattrs = {
        int(ino): {bytes.fromhex(k): bytes.fromhex(v) for k, v in pairs}
        for ino, pairs in extras["xattrs"].items()
    }
    sparse = {
        int(ino): tuple((int(a), int(b)) for a, b in segments)
        for ino, segments in extras["sparse"].items()
    }
    return MergedTree.from_columns(
        columns, child_ino, child_name, names, targets, xattrs, sparse, int(meta["file_bytes"])
    )
