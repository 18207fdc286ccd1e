"""Fresh ``bytes`` for C code to fill, and joins done outside the GIL.

A decoder that inflated into a ctypes buffer and then copied it into ``bytes`` touched every
byte three times, twice holding the GIL (the buffer's zeroing, the copy): under load those
were what the FUSE loop waited for. ``new_bytes`` hands out an uninitialised ``bytes`` of
CPython's own (``PyBytes_FromStringAndSize(NULL, n)``) with the address of its data; the
caller fills all of it before anyone else sees the object, so it is as immutable as any.
``join`` copies pieces of blocks into one reply with ``ctypes.memmove``, which runs without
the GIL, as do the page faults of the new buffer.

A fresh buffer of 128 KiB or more is a mapping of its own (the daemon fixes glibc's mmap
threshold, so that evicted blocks go back to the system): each 1 MiB reply cost an mmap, 256
page faults and a munmap, the two system calls holding the GIL. So ``join`` reuses its
replies (``ReplyBuffers``): a reply nothing refers to any more (pyfuse3 has sent it) is
written again for the next read of that size. Only an object no one else holds is reused,
which CPython's reference count tells exactly, so no reader ever sees its bytes change.

All of this relies on CPython's layout of ``bytes`` (the data right after a fixed header, at
``id(obj) + DATA_OFFSET``, its cached hash just before); it is checked once at import, and
without it (another Python) everything falls back to plain copies.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable, Sequence

_from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_from_size.restype = ctypes.py_object
_from_size.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]

DATA_OFFSET = bytes.__basicsize__ - 1  # ob_sval: the header, then the data and its NUL
HASH_OFFSET = DATA_OFFSET - ctypes.sizeof(ctypes.c_ssize_t)  # ob_shash, -1 until hashed


def _layout_holds() -> bool:
    probe = bytes(range(1, 17))
    if ctypes.string_at(id(probe) + DATA_OFFSET, len(probe)) != probe:
        return False
    unhashed = ctypes.c_ssize_t.from_address(id(probe) + HASH_OFFSET).value
    hash(probe)
    hashed = ctypes.c_ssize_t.from_address(id(probe) + HASH_OFFSET).value
    return unhashed == -1 and hashed == hash(probe)


LAYOUT_HOLDS = _layout_holds()

# A piece of a reply: (block, start, end) within it.
Piece = tuple[bytes, int, int]


def new_bytes(size: int) -> tuple[bytes, int]:
    """An uninitialised ``bytes`` of ``size`` (> 0) and the address of its data. Only
    where ``LAYOUT_HOLDS``; every byte must be written before the object is shared."""
    if size <= 0:
        raise ValueError("new_bytes needs a size above 0")  # b"" is a shared singleton
    data = _from_size(None, size)
    return data, address(data)


def address(data: bytes) -> int:
    """Where ``data``'s bytes are (only while it is alive: hold a reference)."""
    return id(data) + DATA_OFFSET


def filled(size: int, fill: Callable[[int, int], None]) -> bytes:
    """``size`` (> 0) bytes that ``fill(address, size)`` writes, in place where the layout
    holds (no zeroing, no copy under the GIL), else into a buffer then copied."""
    if not LAYOUT_HOLDS:
        buffer = ctypes.create_string_buffer(size)
        fill(ctypes.addressof(buffer), size)
        return buffer.raw
    out, target = new_bytes(size)
    fill(target, size)
    return out


def join(pieces: Sequence[Piece]) -> bytes:
    """The pieces back to back (each ``block[start:end]``, within the block), copied with
    the GIL released; only ``bytes`` blocks have their address taken."""
    total = sum(end - start for _, start, end in pieces)
    if not LAYOUT_HOLDS or total < JOIN_MIN or any(type(b) is not bytes for b, _, _ in pieces):
        return b"".join(memoryview(block)[start:end] for block, start, end in pieces)
    out, target = REPLIES.take(total)
    for block, start, end in pieces:
        ctypes.memmove(target, address(block) + start, end - start)
        target += end - start
    return out


JOIN_MIN = 64 << 10  # below this a copy under the GIL is quicker than the ctypes calls


class ReplyBuffers:
    """A few reply buffers, each reused for a reply of its size once nothing else refers
    to it; ``keep`` bounds what they hold (sequential reads come in 1 MiB requests, two or
    three in flight)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.buffers: list[bytes] = []
        self.reused = 0

    def take(self, size: int) -> tuple[bytes, int]:
        """A ``bytes`` of ``size`` for the caller to fill, and the address of its data: a
        kept one that is free, else a new one (kept, if there is room or a free one of
        another size to give up)."""
        with self.lock:
            free_elsewhere = None
            for index in range(len(self.buffers)):
                # References: the list and getrefcount's argument. No more means no
                # reader, no view and no reply in flight holds it.
                if sys.getrefcount(self.buffers[index]) > 2:
                    continue
                if len(self.buffers[index]) == size:
                    buffer = self.buffers[index]
                    ctypes.c_ssize_t.from_address(id(buffer) + HASH_OFFSET).value = -1
                    self.reused += 1
                    return buffer, address(buffer)
                free_elsewhere = index
            data, target = new_bytes(size)
            if len(self.buffers) < self.keep:
                self.buffers.append(data)
            elif free_elsewhere is not None:
                self.buffers[free_elsewhere] = data
            return data, target


REPLIES = ReplyBuffers(keep=4)
