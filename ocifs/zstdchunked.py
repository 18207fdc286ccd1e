"""zstd:chunked (containers/storage): its footer and TOC, checked against the stream (Z3).

A zstd:chunked layer is an ordinary zstd stream whose writer starts a new frame for every
file's data (and at every chunk of a large file), then appends skippable frames: the TOC (a
zstd-compressed JSON manifest of every entry, with the blob offset of its data's first
frame), the tar-split data (newer writers), and last a footer saying where those are. The
layer descriptor's annotations say the same (``io.github.containers.zstd-chunked.*``;
``io.containers.zstd-chunked.*`` in older writers, such as skopeo 1.9).

ocifs reads such a layer like any other zstd layer: its tree comes from the tar stream,
verified against the diff_id, and random access to every file comes from the frame starts
the indexing pass recorded; the TOC adds nothing that is needed. But a layer whose footer,
annotations or TOC disagree with its stream is damaged or forged, and is refused with one
line: where the footer or an annotation puts the TOC and tar-split, what the manifest
checksum says, and for every TOC entry its name, type and size against the tar stream's,
and the offsets of its data (a frame must begin there, holding that file's first byte).

The footer is the payload of the last skippable frame (magic 0x184D2A50), little-endian
uint64s: TOC offset, compressed and uncompressed length, manifest type (1); in the 64-byte
form (containers/storage since 2023) also the tar-split's offset, compressed and
uncompressed length; then the 8-byte magic "GNUlInUx" (the 40-byte form ends in "GnUlInUx").
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .blobs import BlobHandle
from .errors import CompressionError, LayerError, show
from .layout import LayerRef
from .tarscan import TarEntry
from .zstdseek import Frame, ZstdIndex, decompress

logger = logging.getLogger(__name__)

FOOTER_SKIPPABLE_MAGIC = 0x184D2A50
FOOTER_MAGIC = b"GNUlInUx"  # the 64-byte footer
OLD_FOOTER_MAGIC = b"GnUlInUx"  # the 40-byte footer of older writers
FOOTER_SIZES = {64: FOOTER_MAGIC, 40: OLD_FOOTER_MAGIC}
MANIFEST_TYPE_CRFS = 1
ANNOTATION_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
MAX_TOC = 256 << 20  # uncompressed; containers/storage itself refuses far smaller ones
# TOC entry types and the tar scanner's kinds.
TOC_KINDS = {
    "reg": "file",
    "dir": "dir",
    "symlink": "symlink",
    "hardlink": "hardlink",
    "char": "char",
    "block": "block",
    "fifo": "fifo",
}


class ChunkedError(CompressionError):
    """The footer, an annotation or the TOC disagrees with the stream."""


@dataclass(frozen=True)
class Position:
    """Where a skippable frame's payload is, as the footer or an annotation says."""

    offset: int
    length: int
    uncompressed: int


@dataclass(frozen=True)
class Footer:
    toc: Position
    manifest_type: int
    tar_split: Position | None  # the 40-byte footer has none


def read_footer(frames: list[Frame], blob: BlobHandle) -> Footer | None:
    """The footer, if the stream ends in one; None for a plain zstd layer."""
    last = frames[-1]
    size = last.end - last.payload_start
    if not last.skippable or last.magic != FOOTER_SKIPPABLE_MAGIC or size < 8:
        return None
    payload = blob.pread(size, last.payload_start) if size <= 64 else blob.pread(8, last.end - 8)
    magic = payload[-8:]
    if magic not in (FOOTER_MAGIC, OLD_FOOTER_MAGIC):
        return None
    if FOOTER_SIZES.get(size) != magic:
        raise ChunkedError(
            f"zstd:chunked footer of {size} bytes, with magic {magic.decode()!r}, "
            "is of no known form"
        )
    fields = struct.unpack_from(f"<{(size - 8) // 8}Q", payload)
    toc = Position(fields[0], fields[1], fields[2])
    tar_split = Position(fields[4], fields[5], fields[6]) if size == 64 else None
    return Footer(toc, fields[3], tar_split)


def annotation(annotations: dict[str, str], key: str) -> tuple[str, str] | None:
    """(full name, value) of a zstd:chunked annotation under either prefix."""
    for prefix in ANNOTATION_PREFIXES:
        if prefix + key in annotations:
            return prefix + key, annotations[prefix + key]
    return None


def parse_position(name: str, value: str, fields: int) -> tuple[int, ...]:
    parts = value.split(":")
    if len(parts) != fields or not all(part.isdigit() for part in parts):
        raise ChunkedError(
            f"annotation {name} is {show(value)}, not {fields} numbers joined by ':'"
        )
    return tuple(int(part) for part in parts)


def check_chunked(
    layer: LayerRef, found: ZstdIndex, entries: list[TarEntry], blob: BlobHandle
) -> None:
    """Check a zstd:chunked layer's footer, annotations and TOC against its frames and tar
    entries; nothing to do for a plain zstd layer. Raises LayerError naming the layer."""
    try:
        footer = read_footer(found.frames, blob)
        toc_note = annotation(layer.annotations, "manifest-position")
        if footer is None and toc_note is None:
            return
        checked = Checker(found, entries, blob).check(layer.annotations, footer, toc_note)
    except (ChunkedError, OSError) as error:
        raise LayerError(f"{layer.describe()}: {error}") from error
    logger.info(
        "%s: zstd:chunked, TOC of %d entries agrees with the stream", layer.describe(), checked
    )


class Checker:
    """The checks of one layer, with the frames and entries they compare against."""

    def __init__(self, found: ZstdIndex, entries: list[TarEntry], blob: BlobHandle) -> None:
        self.blob = blob
        self.skippable = {f.payload_start: f for f in found.frames if f.skippable}
        self.frame_starts = {f.start for f in found.frames} | {found.frames[-1].end}
        points = found.points
        # Blob offset of a data frame -> offset of its first byte in the tar stream.
        self.decoded_at = dict(zip(points.compressed, points.uncompressed, strict=True))
        self.entries = entries

    def check(
        self,
        annotations: dict[str, str],
        footer: Footer | None,
        toc_note: tuple[str, str] | None,
    ) -> int:
        toc = footer.toc if footer is not None else None
        if toc_note is not None:
            name, value = toc_note
            offset, length, uncompressed, kind = parse_position(name, value, 4)
            noted = Position(offset, length, uncompressed)
            if footer is not None and (noted != footer.toc or kind != footer.manifest_type):
                raise ChunkedError(
                    f"annotation {name} is {show(value)}, the zstd:chunked footer says "
                    f"{footer.toc.offset}:{footer.toc.length}:{footer.toc.uncompressed}:"
                    f"{footer.manifest_type}"
                )
            toc, manifest_type = noted, kind
        else:
            assert footer is not None
            manifest_type = footer.manifest_type
        assert toc is not None
        if manifest_type != MANIFEST_TYPE_CRFS:
            raise ChunkedError(f"zstd:chunked manifest type {manifest_type}, not 1 (CRFS)")
        compressed = self.payload("TOC", toc)
        checksum = annotation(annotations, "manifest-checksum")
        if checksum is not None:
            actual = "sha256:" + hashlib.sha256(compressed).hexdigest()
            if checksum[1] != actual:
                raise ChunkedError(
                    f"annotation {checksum[0]} is {checksum[1]}, the TOC's sha256 is {actual}"
                )
        document = self.toc_document(compressed, toc)
        tar_split = footer.tar_split if footer is not None else None
        split_note = annotation(annotations, "tarsplit-position")
        if split_note is not None:
            noted = Position(*parse_position(split_note[0], split_note[1], 3))
            if tar_split is not None and noted != tar_split:
                raise ChunkedError(
                    f"annotation {split_note[0]} is {show(split_note[1])}, the zstd:chunked footer "
                    f"says {tar_split.offset}:{tar_split.length}:{tar_split.uncompressed}"
                )
            tar_split = noted
        if tar_split is not None and tar_split.length:
            data = self.payload("tar-split", tar_split)
            digest = document.get("tarSplitDigest")
            if isinstance(digest, str) and digest:
                actual = "sha256:" + hashlib.sha256(data).hexdigest()
                if digest != actual:
                    raise ChunkedError(
                        f"zstd:chunked TOC gives the tar-split digest {digest}, it has {actual}"
                    )
        return self.compare_entries(document)

    def payload(self, what: str, position: Position) -> bytes:
        """The bytes of the skippable frame the footer or an annotation points at."""
        frame = self.skippable.get(position.offset)
        if frame is None or frame.end - frame.payload_start != position.length:
            raise ChunkedError(
                f"zstd:chunked footer or annotation puts the {what} at blob offset "
                f"{position.offset} ({position.length} bytes), where no skippable frame "
                "of that size is"
            )
        data = self.blob.pread(position.length, position.offset)
        if len(data) != position.length:
            raise ChunkedError(f"zstd:chunked {what} is cut short")
        return data

    def toc_document(self, compressed: bytes, position: Position) -> dict[str, Any]:
        if position.uncompressed > MAX_TOC:
            raise ChunkedError(f"zstd:chunked TOC of {position.uncompressed} bytes is too large")
        try:
            text = decompress(compressed, position.uncompressed)
        except CompressionError as error:
            raise ChunkedError(f"zstd:chunked TOC: {error}") from error
        if len(text) != position.uncompressed:
            raise ChunkedError(
                f"zstd:chunked TOC holds {len(text)} bytes, the footer or annotation says "
                f"{position.uncompressed}"
            )
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ChunkedError(f"zstd:chunked TOC is not valid JSON: {error}") from error
        if not isinstance(document, dict) or document.get("version") != 1:
            raise ChunkedError("zstd:chunked TOC is not a version 1 manifest")
        if not isinstance(document.get("entries"), list):
            raise ChunkedError("zstd:chunked TOC has no list of entries")
        return document

    def compare_entries(self, document: dict[str, Any]) -> int:
        """Every TOC entry against the tar stream: the same names, types and sizes, in the
        same numbers; each file's data (and chunk) at a frame start holding its first byte."""
        stream: dict[tuple[str, str], list[TarEntry]] = defaultdict(list)
        for entry in self.entries:
            stream[(clean(entry.path.decode("utf-8", "replace")), entry.kind)].append(entry)
        seen: dict[tuple[str, str], int] = defaultdict(int)
        count = 0
        current: TarEntry | None = None
        for raw in document["entries"]:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise ChunkedError("zstd:chunked TOC has an entry without a name")
            name, kind = raw["name"], raw.get("type")
            if kind == "chunk":
                if current is None or clean(name) != clean(current.path.decode("utf-8", "replace")):
                    raise ChunkedError(
                        f"zstd:chunked TOC has a chunk of {show(name)} after no such file"
                    )
                self.check_data(name, raw, current, int(raw.get("chunkOffset", 0)))
                continue
            if kind not in TOC_KINDS:
                raise ChunkedError(f"zstd:chunked TOC entry {show(name)} has type {show(kind)}")
            key = (clean(name), TOC_KINDS[kind])
            matches = stream.get(key, [])
            if seen[key] >= len(matches):
                raise ChunkedError(
                    f"zstd:chunked TOC lists {kind} {show(name)},"
                    " which the tar stream does not hold"
                )
            current = matches[seen[key]]
            seen[key] += 1
            count += 1
            if kind == "reg" and current.sparse is None:
                size = raw.get("size", 0)
                if size != current.size:
                    raise ChunkedError(
                        f"zstd:chunked TOC gives {show(name)} {show(size)} bytes, "
                        f"the tar stream {current.size}"
                    )
                if size:
                    self.check_data(name, raw, current, int(raw.get("chunkOffset", 0)))
        if count != len(self.entries):
            missing = next(
                entry.path.decode("utf-8", "replace")
                for key, entries in stream.items()
                for entry in entries[seen[key] :]
            )
            raise ChunkedError(
                f"zstd:chunked TOC lists {count} entries, the tar stream holds "
                f"{len(self.entries)} (such as {show(missing)})"
            )
        return count

    def check_data(
        self, name: str, raw: dict[str, Any], entry: TarEntry, chunk_offset: int
    ) -> None:
        offset, end = raw.get("offset"), raw.get("endOffset")
        decoded = self.decoded_at.get(offset) if isinstance(offset, int) else None
        if decoded != entry.data_offset + chunk_offset:
            where = "no frame starts there" if decoded is None else f"its frame starts at {decoded}"
            raise ChunkedError(
                f"zstd:chunked TOC puts the data of {show(name)} (at {chunk_offset} in it) at blob "
                f"offset {show(offset)}, but {where} in the tar stream and the data is at "
                f"{entry.data_offset + chunk_offset}"
            )
        if end is not None and end not in self.frame_starts:
            raise ChunkedError(
                f"zstd:chunked TOC ends the data of {show(name)} at blob offset {show(end)}, "
                "where no frame starts"
            )


def clean(name: str) -> str:
    """A tar or TOC name without its leading './' or '/' and empty components."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))
