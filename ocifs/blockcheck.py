"""Checksums of a layer's stream, block by block: taken in the verified indexing pass,
checked on every block a read or a prefetch job inflates (or, for a tar layer, reads).

The digests of the indexing pass cover the whole stream, but a read from a seek point never
reaches a gzip member's CRC or a zstd frame's checksum (and a frame may have none); these
sums hold every block to the bytes that pass verified (V1). The unit is an aligned block of
the layer's tar stream, of the size ``CHECK_BLOCK`` gives for its compression. For gzip and
zstd it is the block cache's ``CACHE_BLOCK``: the readers inflate, check and cache exactly
such blocks, so a block is checked once, when it is made, and every read of the cache after
that serves bytes already checked. An uncompressed layer's stream is its blob, read by
offset without a cache: its unit is smaller, so that a 4 KiB read reads and checks 32 KiB
rather than 256 (README "Block checks" has the measurements).

The sum is xxh3_64 (PyPI ``xxhash``): on 256 KiB blocks it runs at tens of GB/s, 10 to 15
times zlib's CRC32 here, so checking a block costs a few microseconds against the hundreds
of inflating it (``python -m bench.blockcheck``).
It guards against damage and changed blobs, not against someone forging a blob (the
digests do that, when the layer is indexed).
"""

from __future__ import annotations

import array
import logging
from dataclasses import dataclass

import xxhash

from .blockcache import CACHE_BLOCK
from .mediatypes import Compression

logger = logging.getLogger(__name__)

ALGORITHM = "xxh3_64"  # recorded in the index: sums of another kind are not compared

# xxhash lets go of the GIL for more than 64 KiB. For a sum of a few microseconds that costs
# more than it saves: getting the GIL back can take a switch interval (5 ms) while the other
# threads run Python. Profiled through a cold read, the checks took 2-3% of the daemon's
# samples that way, 0.2-0.4% fed in 64 KiB pieces, holding it (README "Block checks").
PIECE = 64 << 10


def block_sum(data: bytes | bytearray | memoryview) -> int:
    """xxh3_64 of ``data``, holding the GIL (the same value as ``xxh3_64_intdigest``)."""
    if len(data) <= PIECE:
        return xxhash.xxh3_64_intdigest(data)
    hasher = xxhash.xxh3_64()
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        hasher.update(view[start : start + PIECE])
    return hasher.intdigest()


# The unit summed and checked, by compression (see above).
CHECK_BLOCK: dict[Compression, int] = {
    Compression.NONE: 32 << 10,
    Compression.GZIP: CACHE_BLOCK,
    Compression.ZSTD: CACHE_BLOCK,
}


class BlockMismatch(Exception):
    """A block's bytes are not those the indexing pass summed; the readers turn it into
    DamagedLayer (EIO), naming the layer."""


@dataclass(frozen=True)
class BlockSums:
    """One sum per ``block`` bytes of a stream of ``size`` bytes (the last block may be
    shorter), of the kind ``algorithm`` names."""

    algorithm: str
    block: int
    sums: array.array[int]  # 'Q', one per block
    size: int

    def __post_init__(self) -> None:
        if self.block <= 0 or len(self.sums) != -(-self.size // self.block):
            raise ValueError(
                f"{len(self.sums)} block sums for a stream of {self.size} bytes "
                f"in blocks of {self.block}"
            )

    def length(self, number: int) -> int:
        """The length of block ``number`` (short only for the last)."""
        return min(self.block, self.size - number * self.block)

    def check(self, number: int, data: bytes | memoryview) -> None:
        """Raise BlockMismatch unless ``data`` is block ``number`` as it was indexed."""
        if not 0 <= number < len(self.sums):
            raise BlockMismatch(f"block {number} is past the indexed stream of {self.size} bytes")
        if len(data) != self.length(number) or block_sum(data) != self.sums[number]:
            raise self.mismatch(number)

    def mismatch(self, number: int) -> BlockMismatch:
        """What ``check`` raises for block ``number`` (for a loop that sums blocks itself)."""
        start = number * self.block
        return BlockMismatch(
            f"the data at stream offset {start}-{start + self.length(number)} differs "
            "from what the verified indexing pass read (the blob was damaged or changed)"
        )

    def check_run(self, first: int, data: memoryview) -> None:
        """Raise BlockMismatch unless ``data`` is blocks ``first``, ``first + 1``, ... as
        they were indexed: whole blocks, the last one short only at the stream's end. One
        loop, one call a block (the tar reader checks each read this way, uncopied)."""
        unit = self.block
        start = first * unit
        count = -(-len(data) // unit)
        if first < 0 or first + count > len(self.sums):
            raise BlockMismatch(f"block {first + count - 1} is past the indexed stream")
        if start + len(data) != min(start + count * unit, self.size):
            raise BlockMismatch(f"{len(data)} bytes at stream offset {start} are not whole blocks")
        digest = xxhash.xxh3_64_intdigest if unit <= PIECE else block_sum
        sums = self.sums
        number = first
        for at in range(0, len(data), unit):
            if digest(data[at : at + unit]) != sums[number]:
                raise self.mismatch(number)
            number += 1


class BlockHasher:
    """Fed the stream in order, in chunks of any size (as a hashlib object is); sums each
    block as it completes. ``finish`` gives the sums, once the whole stream was fed."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.sums = array.array("Q")
        self.partial = bytearray()  # the start of a block a chunk ended in
        self.size = 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        self.size += len(view)
        block = self.block
        if self.partial:
            take = block - len(self.partial)
            self.partial += view[:take]
            view = view[take:]
            if len(self.partial) < block:
                return
            self.sums.append(block_sum(self.partial))
            self.partial.clear()
        whole = len(view) - len(view) % block
        sums = self.sums
        for start in range(0, whole, block):  # the usual case: chunks are whole blocks
            sums.append(block_sum(view[start : start + block]))
        if whole < len(view):
            self.partial += view[whole:]

    def finish(self) -> BlockSums:
        if self.partial:
            self.sums.append(block_sum(self.partial))
            self.partial.clear()
        return BlockSums(ALGORITHM, self.block, self.sums, self.size)
