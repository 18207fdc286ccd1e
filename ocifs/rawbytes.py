"""Fresh ``bytes`` for C code to fill, and joins done outside the GIL.

A decoder that inflated into a ctypes buffer and then copied it into ``bytes`` touched every
byte three times, twice holding the GIL (the buffer's zeroing, the copy): under load those
were what the FUSE loop waited for. ``new_bytes`` hands out an uninitialised ``bytes`` of
CPython's own (``PyBytes_FromStringAndSize(NULL, n)``) with the address of its data; the
caller fills all of it before anyone else sees the object, so it is as immutable as any.
``join`` copies pieces of blocks into one reply with ``ctypes.memmove``, which runs without
the GIL, as do the page faults of the new buffer.

Both rely on CPython's layout of ``bytes`` (the data right after a fixed header, at
``id(obj) + DATA_OFFSET``); it is checked once at import, and without it (another Python)
both fall back to plain copies.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

_from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_from_size.restype = ctypes.py_object
_from_size.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]

DATA_OFFSET = bytes.__basicsize__ - 1  # ob_sval: the header, then the data and its NUL


def _layout_holds() -> bool:
    probe = bytes(range(1, 17))
    return ctypes.string_at(id(probe) + DATA_OFFSET, len(probe)) == probe


LAYOUT_HOLDS = _layout_holds()

# A piece of a reply: (block, start, end) within it.
Piece = tuple[bytes, int, int]


def new_bytes(size: int) -> tuple[bytes, int]:
    """An uninitialised ``bytes`` of ``size`` (> 0) and the address of its data. Only
    where ``LAYOUT_HOLDS``; every byte must be written before the object is shared."""
    if size <= 0:
        raise ValueError("new_bytes needs a size above 0")  # b"" is a shared singleton
    data = _from_size(None, size)
    return data, id(data) + DATA_OFFSET


def address(data: bytes) -> int:
    """Where ``data``'s bytes are (only while it is alive: hold a reference)."""
    return id(data) + DATA_OFFSET


def join(pieces: Sequence[Piece]) -> bytes:
    """The pieces back to back (each ``block[start:end]``, within the block), copied with
    the GIL released; only ``bytes`` blocks have their address taken."""
    total = sum(end - start for _, start, end in pieces)
    if not LAYOUT_HOLDS or total < JOIN_MIN or any(type(b) is not bytes for b, _, _ in pieces):
        return b"".join(memoryview(block)[start:end] for block, start, end in pieces)
    out, target = new_bytes(total)
    for block, start, end in pieces:
        ctypes.memmove(target, id(block) + DATA_OFFSET + start, end - start)
        target += end - start
    return out


JOIN_MIN = 64 << 10  # below this a copy under the GIL is quicker than the ctypes calls
