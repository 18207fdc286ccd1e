"""The bounded cache of decompressed blocks, shared by the readers of all layers of an image.

Blocks are kept by (layer position, block number), most recently used last, and the least
recently used are evicted once their total size passes the limit.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

logger = logging.getLogger(__name__)

CACHE_BLOCK = 256 << 10  # unit of the decompressed-data cache: two of the kernel's 128 KiB reads
BLOCK_CACHE_BYTES = 64 << 20

# (layer position, block number); block n holds the layer's stream from n * CACHE_BLOCK on.
BlockKey = tuple[int, int]


class BlockCache:
    """The most recently read decompressed blocks of all layers, bounded by their total size."""

    def __init__(self, limit: int = BLOCK_CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.blocks: OrderedDict[BlockKey, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def contains(self, key: BlockKey) -> bool:
        """Whether a block is cached, without counting as a use."""
        with self.lock:
            return key in self.blocks

    def get(self, key: BlockKey) -> bytes | None:
        with self.lock:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
            return block

    def put(self, key: BlockKey, block: bytes) -> None:
        with self.lock:
            old = self.blocks.pop(key, None)
            self.size += len(block) - (len(old) if old is not None else 0)
            self.blocks[key] = block
            # The newest block stays even if it alone is over the limit: its reader needs it.
            while self.size > self.limit and len(self.blocks) > 1:
                _, evicted = self.blocks.popitem(last=False)
                self.size -= len(evicted)
