"""zstd layers cut into frames the way writers do, for the tests: many frames (``frames_layer``)
and zstd:chunked (``chunked_layer``), written by the real ``zstd`` tool frame by frame.

``chunked_layer`` lays a tar out as containers/storage's compressor does (its footer and
annotations as pkg/chunked/internal/minimal writes them): a frame for each stretch of tar
headers, a frame starting at each regular file's data, the TOC (zstd-compressed JSON) and the
tar-split in skippable frames, then the footer, 64 bytes ("GNUlInUx") or, as older writers
did, 40 ("GnUlInUx"). A ``Chunked`` keeps the parts, so a test can make one of them lie and
``assemble`` the blob again.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass, field
from typing import Any

from ocifs.ocibuild import zstd_bytes

SKIPPABLE = 0x184D2A50
NEW_PREFIX = "io.github.containers.zstd-chunked."
OLD_PREFIX = "io.containers.zstd-chunked."
TOC_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE, len(payload)) + payload


def cut_points(tar: bytes) -> list[int]:
    """Where a writer starts frames: at each regular file's data and just after it."""
    cuts = {0}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            if member.isreg() and member.size:
                cuts.update((member.offset_data, member.offset_data + member.size))
    return sorted(cut for cut in cuts if cut < len(tar))


def frames_of(tar: bytes, cuts: list[int]) -> tuple[bytes, dict[int, int]]:
    """Each stretch between cuts as one frame; and the blob offset of each cut's frame."""
    blob = bytearray()
    starts = {}
    for number, cut in enumerate(cuts):
        end = cuts[number + 1] if number + 1 < len(cuts) else len(tar)
        starts[cut] = len(blob)
        blob += zstd_bytes(tar[cut:end], "-1")
    return bytes(blob), starts


def frames_layer(tar: bytes, piece: int) -> bytes:
    """``tar`` in frames of ``piece`` bytes each (what pzstd or a seekable writer makes)."""
    return frames_of(tar, list(range(0, len(tar), piece)))[0]


@dataclass
class Chunked:
    """The parts of a zstd:chunked blob; ``assemble`` joins them, with footer and notes."""

    stream: bytes  # the frames of the tar stream
    toc: dict[str, Any]
    tar_split: bytes = b'{"type":2,"payload":"dGVzdA=="}\n'
    footer_size: int = 64
    prefix: str = NEW_PREFIX
    # Set to make a part lie: replaced after the honest values are computed.
    footer_override: dict[int, int] = field(default_factory=dict)  # field index -> value
    annotations_override: dict[str, str] = field(default_factory=dict)

    def assemble(self) -> tuple[bytes, dict[str, str]]:
        toc_json = json.dumps(self.toc).encode()
        toc = zstd_bytes(toc_json, "-1")
        split = zstd_bytes(self.tar_split, "-1")
        toc_offset = len(self.stream) + 8
        split_offset = toc_offset + len(toc) + 8
        fields = [toc_offset, len(toc), len(toc_json), 1]
        if self.footer_size == 64:
            fields += [split_offset, len(split), len(self.tar_split)]
        for index, value in self.footer_override.items():
            fields[index] = value
        magic = b"GNUlInUx" if self.footer_size == 64 else b"GnUlInUx"
        footer = struct.pack(f"<{len(fields)}Q", *fields) + magic
        blob = self.stream + skippable(toc)
        if self.footer_size == 64:
            blob += skippable(split)
        blob += skippable(footer)
        notes = {
            self.prefix + "manifest-checksum": "sha256:" + hashlib.sha256(toc).hexdigest(),
            self.prefix + "manifest-position": f"{toc_offset}:{len(toc)}:{len(toc_json)}:1",
        }
        if self.footer_size == 64:
            notes[self.prefix + "tarsplit-position"] = (
                f"{split_offset}:{len(split)}:{len(self.tar_split)}"
            )
        notes.update(self.annotations_override)
        return blob, notes


def chunked_layer(tar: bytes, footer_size: int = 64, prefix: str = NEW_PREFIX) -> Chunked:
    stream, starts = frames_of(tar, cut_points(tar))
    entries = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            entry: dict[str, Any] = {"type": TOC_TYPES[member.type], "name": member.name}
            if member.issym() or member.islnk():
                entry["linkName"] = member.linkname
            if member.isreg():
                entry["size"] = member.size
                if member.size:
                    entry["offset"] = starts[member.offset_data]
                    after = member.offset_data + member.size
                    entry["endOffset"] = starts.get(after, len(stream))
                    entry["digest"] = (
                        "sha256:" + hashlib.sha256(tar[member.offset_data : after]).hexdigest()
                    )
            entries.append(entry)
    toc: dict[str, Any] = {"version": 1, "entries": entries}
    chunked = Chunked(stream, toc, footer_size=footer_size, prefix=prefix)
    if footer_size == 64:
        toc["tarSplitDigest"] = (
            "sha256:" + hashlib.sha256(zstd_bytes(chunked.tar_split, "-1")).hexdigest()
        )
    return chunked
