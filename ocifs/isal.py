"""ISA-L's inflate (Debian's libisal2), called through ctypes, for gzip layers.

ISA-L inflates 2.5 times as fast as zlib on this kind of machine (README "Why this
inflate"). No maintained Python binding exposes what ocifs needs from it (the
``isal`` package's decompressors hide the state: no block boundaries, no bit priming), so
this module binds the library itself, as gzseek binds zlib. ``ctypes.CDLL`` releases the GIL
during every call, so layers inflate in parallel threads.

ISA-L 2.30 has no "stop at a block boundary" flag (``points_to_stop_at`` is a patch of
rapidgzip's fork), but its whole state is one self-contained struct, ``inflate_state``: it
can be copied aside and back, and when the input ends inside a block header the state says
so (``ISAL_BLOCK_HDR``) and holds the bit position where that header starts. isalseek builds
seek points from that. ``available()`` says whether the library can be used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

HIST_SIZE = 32 << 10  # ISAL_DEF_HIST_SIZE
MAX_HDR_SIZE = 328  # ISAL_DEF_MAX_HDR_SIZE
LOOK_AHEAD = (258 + 31) & ~31  # ISAL_LOOK_AHEAD
LARGE_TABLE_SIZE = 18912  # sizeof(struct inflate_huff_code_large), ISA-L 2.30
SMALL_TABLE_SIZE = 2208  # sizeof(struct inflate_huff_code_small)
STATE_SIZE = 87368  # sizeof(struct inflate_state), checked against the headers (tests)

# block_state (enum isal_block_state)
BLOCK_NEW_HDR, BLOCK_HDR, BLOCK_TYPE0, BLOCK_CODED, BLOCK_INPUT_DONE, BLOCK_FINISH = range(6)
# crc_flag
ISAL_DEFLATE = 0
ISAL_GZIP = 1

DECOMP_OK = 0
ERRORS = {
    -1: "invalid block",
    -2: "invalid symbol",
    -3: "invalid distance too far back",
    -4: "incorrect header check",
    -5: "unknown compression method",
    -6: "incorrect data check",
    -9: "invalid operation",
}


class InflateState(ctypes.Structure):
    """ISA-L's ``struct inflate_state`` (igzip_lib.h, 2.30); ISA-L keeps no pointer into it,
    so a byte copy of it is a complete snapshot of an inflate."""

    next_out: int | None
    avail_out: int
    total_out: int
    next_in: int | None
    read_in: int
    avail_in: int
    read_in_length: int
    block_state: int
    bfinal: int
    crc_flag: int
    crc: int
    type0_block_len: int
    tmp_in_size: int
    tmp_out_valid: int
    tmp_out_processed: int

    _fields_ = (
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint32),
        ("total_out", ctypes.c_uint32),
        ("next_in", ctypes.c_void_p),
        ("read_in", ctypes.c_uint64),
        ("avail_in", ctypes.c_uint32),
        ("read_in_length", ctypes.c_int32),
        ("lit_huff_code", ctypes.c_char * LARGE_TABLE_SIZE),
        ("dist_huff_code", ctypes.c_char * SMALL_TABLE_SIZE),
        ("block_state", ctypes.c_int),
        ("dict_length", ctypes.c_uint32),
        ("bfinal", ctypes.c_uint32),
        ("crc_flag", ctypes.c_uint32),
        ("crc", ctypes.c_uint32),
        ("hist_bits", ctypes.c_uint32),
        ("type0_block_len", ctypes.c_int32),
        ("write_overflow_lits", ctypes.c_int32),
        ("write_overflow_len", ctypes.c_int32),
        ("copy_overflow_length", ctypes.c_int32),
        ("copy_overflow_distance", ctypes.c_int32),
        ("wrapper_flag", ctypes.c_int16),
        ("tmp_in_size", ctypes.c_int16),
        ("tmp_out_valid", ctypes.c_int32),
        ("tmp_out_processed", ctypes.c_int32),
        ("tmp_in_buffer", ctypes.c_uint8 * MAX_HDR_SIZE),
        ("tmp_out_buffer", ctypes.c_uint8 * (2 * HIST_SIZE + LOOK_AHEAD)),
    )


TABLES_OFFSET: int = InflateState.lit_huff_code.offset
DIST_TABLE_OFFSET: int = InflateState.dist_huff_code.offset
StatePointer = ctypes.POINTER(InflateState)


def _load() -> ctypes.CDLL | None:
    if os.environ.get("OCIFS_INFLATE", "") == "zlib":
        return None  # forced to zlib (tests and benchmarks of the fallback)
    name = ctypes.util.find_library("isal") or "libisal.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        logger.debug("libisal not found: gzip layers inflate with zlib")
        return None
    if ctypes.sizeof(InflateState) != STATE_SIZE:  # pragma: no cover - a wrong layout
        return None
    lib.isal_inflate_init.argtypes = [StatePointer]
    lib.isal_inflate_init.restype = None
    lib.isal_inflate_reset.argtypes = [StatePointer]
    lib.isal_inflate_reset.restype = None
    lib.isal_inflate.argtypes = [StatePointer]
    lib.isal_inflate.restype = ctypes.c_int
    lib.isal_inflate_set_dict.argtypes = [StatePointer, ctypes.c_void_p, ctypes.c_uint32]
    lib.isal_inflate_set_dict.restype = ctypes.c_int
    return lib


LIB = _load()


def available() -> bool:
    """Whether ISA-L is there to inflate with (and not turned off by OCIFS_INFLATE=zlib)."""
    return LIB is not None


def describe(ret: int) -> str:
    return ERRORS.get(ret, f"ISA-L error {ret}")
