"""What a zstd writer wrote: the frames of a zstd file, walked by their headers alone.

Nothing is decompressed: each frame's header gives its window, checksum flag and content size,
and its blocks are skipped by their 3-byte headers (RFC 8878, sections 3.1.1 and 3.1.2). The
benchmark records this in build.json so that the table says what it measured: one long frame
(``zstd``, skopeo's ``zstd``), or a frame per file plus skippable frames holding the TOC
(zstd:chunked).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .steps import BenchError

logger = logging.getLogger(__name__)

FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
FCS_BYTES = (
    0,
    2,
    4,
    8,
)  # Frame_Content_Size field sizes by flag (flag 0: 1 byte if single segment)
DICT_ID_BYTES = (0, 1, 2, 4)
BLOCK_RLE = 1
BLOCK_RESERVED = 3


@dataclass
class Frame:
    offset: int
    size: int  # bytes in the file, header to checksum
    skippable: bool
    checksum: bool = False
    window: int = 0  # bytes; 0 for a skippable frame
    content_size: int | None = None  # from the header, when the writer put it there


def read_exactly(file: BinaryIO, count: int, where: str) -> bytes:
    data = file.read(count)
    if len(data) != count:
        raise BenchError(f"zstd file truncated in {where}")
    return data


def frame_header(file: BinaryIO, offset: int) -> Frame:
    """The header of a zstd frame whose magic was just read; the file is left at its blocks."""
    (descriptor,) = read_exactly(file, 1, "a frame header")
    single_segment = bool(descriptor & 0x20)
    fcs_flag = descriptor >> 6
    fcs_bytes = FCS_BYTES[fcs_flag] or (1 if single_segment else 0)
    window = 0
    if not single_segment:
        (window_descriptor,) = read_exactly(file, 1, "a frame header")
        base = 1 << (10 + (window_descriptor >> 3))
        window = base + (base >> 3) * (window_descriptor & 7)
    read_exactly(file, DICT_ID_BYTES[descriptor & 3], "a frame header")
    content_size: int | None = None
    if fcs_bytes:
        content_size = int.from_bytes(read_exactly(file, fcs_bytes, "a frame header"), "little")
        content_size += 256 if fcs_bytes == 2 else 0
    if single_segment:
        window = content_size or 0
    return Frame(offset, 0, False, bool(descriptor & 4), window, content_size)


def skip_blocks(file: BinaryIO) -> None:
    """Skip a frame's blocks, the file left after the last one."""
    while True:
        (header,) = struct.unpack("<I", read_exactly(file, 3, "a block header") + b"\0")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == BLOCK_RESERVED:
            raise BenchError(f"zstd block of reserved type at {file.tell() - 3}")
        file.seek(1 if kind == BLOCK_RLE else size, 1)
        if header & 1:
            return


def walk_frames(file: BinaryIO, length: int) -> list[Frame]:
    """Every frame of a zstd stream of ``length`` bytes, in order."""
    frames: list[Frame] = []
    offset = 0
    while offset < length:
        file.seek(offset)
        (magic,) = struct.unpack("<I", read_exactly(file, 4, "a frame magic"))
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
            (size,) = struct.unpack("<I", read_exactly(file, 4, "a skippable frame header"))
            frame = Frame(offset, 8 + size, True)
        elif magic == FRAME_MAGIC:
            frame = frame_header(file, offset)
            skip_blocks(file)
            frame.size = file.tell() + (4 if frame.checksum else 0) - offset
        else:
            raise BenchError(f"no zstd frame at offset {offset} (magic {magic:#010x})")
        if offset + frame.size > length:
            raise BenchError(f"zstd frame at {offset} runs past the end of the file")
        frames.append(frame)
        offset += frame.size
    return frames


def describe(frames: list[Frame]) -> dict[str, Any]:
    """What build.json keeps of a layer's frames: counts, checksums, windows, the biggest."""
    data = [frame for frame in frames if not frame.skippable]
    return {
        "frames": len(data),
        "skippable_frames": len(frames) - len(data),
        "checksummed_frames": sum(frame.checksum for frame in data),
        "max_window": max((frame.window for frame in data), default=0),
        "largest_frame_bytes": max((frame.size for frame in data), default=0),
        "content_sizes_known": all(frame.content_size is not None for frame in data),
    }


def describe_file(path: Path) -> dict[str, Any]:
    """``describe`` of the frames of a zstd file."""
    with path.open("rb") as file:
        return describe(walk_frames(file, path.stat().st_size))
