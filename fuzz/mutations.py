"""The mutations, one table per stage of building a case (see ``build``).

Each mutation takes its own ``random.Random`` and what its stage hands it, and returns what
the stage goes on with and one line saying what it did. The stages, in the order a case is
built:

* ``tar``: a layer's uncompressed tar stream (and, for archive forms, the archive's own tar):
  numeric header fields, typeflags, magic, names with ``..`` or absolute, link targets out of
  the tree, crafted members (symlink escapes, hardlinks to host paths, odd xattrs, device
  numbers, paths over PATH_MAX, huge names, GNU long names, sparse headers, whiteouts), PAX
  records (lengths, keys, values), truncation, trailing bytes, flipped bytes. Header edits
  recompute the header checksum (mostly) so that the damage reaches the field parsers.
* ``gzip`` and ``zstd``: a compressed blob: flipped bytes in the header, body or trailer,
  truncation, trailing garbage, header flags, and valid variants (other levels, many members
  or frames, skippable frames) that must mount as the seed does.
* ``json``: a document (index.json, an index, a manifest, a config, manifest.json): keys
  deleted, types changed, huge values, odd digests, ``../`` and absolute paths, media types,
  sizes, and raw bytes (truncated, not UTF-8, nested 100,000 deep, duplicate keys).
* ``files``: the files of the store before it is written: blobs as symlinks (to a canary out
  of the layout, to another blob, to themselves), missing, directories, fifos, empty.
* ``cache``: the index cache after a first ``ocifs index``: files flipped, truncated, swapped,
  or replaced by a fifo, a symlink, a directory.
* ``live``: a blob overwritten in place under the live mount, before the walk reads it (V1:
  every read must then give the image's bytes or EIO).
* ``options``: the command line: --read-cache, --platform, -o values.

Every digest, diff_id and size above a mutated stage is recomputed by ``build`` unless the
case says not to, so that the damage passes the digest checks and reaches the parsers.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import tarbytes as tb

CANARY_NAME = "ocifs-fuzz-canary"
CANARY_DIR = Path("/tmp") / CANARY_NAME  # shared by every run; holds SECRET
CANARY_SECRET = CANARY_DIR / "secret"
# What the canary files hold. No seed and no mutation writes these bytes into an image, so
# seeing them through a mount means a host file was served.
CANARY_TOKEN = b"CANARY-TOKEN-5d0c9e1f7a3b62e4"
# Paths out of the tree or the layout that mutations aim at. The layout is CASE/layout (or
# CASE/image.tar), and CASE/ocifs-fuzz-canary and RUN/ocifs-fuzz-canary exist.
ESCAPES = [
    str(CANARY_SECRET),
    f"../../../../../../../..{CANARY_SECRET}",
    f"../{CANARY_NAME}",
    f"../../{CANARY_NAME}",
    f"../../../{CANARY_NAME}",
    f"/{CANARY_NAME}",
    f"a/../../{CANARY_NAME}",
]

S = TypeVar("S")


@dataclass(frozen=True)
class Mutator(Generic[S]):
    weight: int
    apply: Callable[[random.Random, S], tuple[S, str]]


TarMutator = Mutator[bytes]
BlobMutator = Mutator[bytes]


def pick(rng: random.Random, table: dict[str, Mutator[S]]) -> str:
    names = list(table)
    return rng.choices(names, weights=[table[name].weight for name in names])[0]


def show(data: bytes, limit: int = 60) -> str:
    text = repr(data)
    return (
        text
        if len(text) <= limit
        else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(data)} bytes)"
    )


# --- tar --------------------------------------------------------------------------------------

NUMBER_VALUES = [
    b"77777777777",
    b"\x80" + (1 << 62).to_bytes(11, "big"),
    b"\x80" + (1 << 40).to_bytes(7, "big"),
    b"\xff" * 12,
    b"\xff" + b"\x00" * 6 + b"\x01",
    b" 0 ",
    b"12a",
    b"",
    b"-1",
    b"0x10",
    b"\xc3\xa9",
    b"7" * 12,
    b"00000000001 ",
    b"\x80",
    b"8",
]
TYPEFLAGS = b"0123456789ADGIKLMNSVXgx\0\x7f "
EVIL_NAMES = [
    b"../escape",
    b"a/../../escape",
    b"/absolute/name",
    b"./",
    b"",
    b"..",
    b".",
    b"//",
    b".wh..wh..opq",
    b".wh.",
    b"etc/.wh.",
    b".wh..wh.plnk/x",
    b"etc/.wh...",
    b"dir/",
    b"a" * 100,
    b"\xff\xfe\xfd",
    b"etc/passwd/",
    b"usr/bin/sh/x",
    b"x" * 99 + b"/",
]


def _header(rng: random.Random, tar: bytes) -> tb.Header | None:
    found = tb.headers(tar)
    return rng.choice(found) if found else None


def tar_number(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    field = rng.choice(tb.NUMERIC)
    if field == "size" and rng.random() < 0.5:
        value = tb.octal(max(0, header.size + rng.choice([-513, -1, 1, 511, 512, 1 << 20])), 12)
    else:
        value = rng.choice(NUMBER_VALUES)
    fix = rng.random() < 0.9
    out = tb.set_field(tar, header.offset, field, value, fix)
    return out, f"header at {header.offset} ({show(header.name)}): {field} = {show(value)}" + (
        "" if fix else ", checksum left"
    )


def tar_checksum(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    value = rng.choice([b"0", b"       ", b"\x80\x00\x00\x00\x00\x00\x00\x01", b"999999\0 "])
    return tb.set_field(tar, header.offset, "chksum", value, fix=False), (
        f"header at {header.offset}: chksum = {show(value)}"
    )


def tar_typeflag(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    flag = bytes([rng.choice(TYPEFLAGS)])
    return tb.set_field(tar, header.offset, "typeflag", flag), (
        f"header at {header.offset} ({show(header.name)}): typeflag {header.typeflag!r} -> {flag!r}"
    )


def tar_magic(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    magic = rng.choice([b"ustar  \0", b"ustar\x0000", b"ustar\x0001", b"xxxxxx00", bytes(8)])
    out = tb.set_field(tar, header.offset, "magic", magic[:6])
    out = tb.set_field(out, header.offset, "version", magic[6:])
    return out, f"header at {header.offset}: magic+version = {magic!r}"


def tar_name(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    name = rng.choice(EVIL_NAMES)
    out = tb.set_field(tar, header.offset, "name", name)
    if rng.random() < 0.3:
        out = tb.set_field(out, header.offset, "prefix", rng.choice([b"", b"..", b"/", b"p" * 155]))
    return out, f"header at {header.offset} ({show(header.name)}): name = {show(name)}"


def tar_linkname(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    target = rng.choice([*(e.encode() for e in ESCAPES), header.name, b"", b"etc", b"nothing"])
    out = tb.set_field(tar, header.offset, "linkname", target)
    flag = header.typeflag
    if flag not in (b"1", b"2") or rng.random() < 0.3:
        flag = rng.choice([b"1", b"2"])
        out = tb.set_field(out, header.offset, "typeflag", flag)
        out = tb.set_field(out, header.offset, "size", tb.octal(0, 12)) if flag == b"1" else out
    return out, f"header at {header.offset} ({show(header.name)}): type {flag!r} -> {show(target)}"


def _xattr(rng: random.Random) -> bytes:
    key, value = rng.choice(
        [
            (b"SCHILY.xattr.user.a\0b", b"v"),
            (b"LIBARCHIVE.xattr.%00", b"dg=="),
            (b"LIBARCHIVE.xattr.user.ok", b"dg=="),
            (b"SCHILY.xattr.user." + b"n" * 300, b"v"),
            (b"SCHILY.xattr.user.big", b"v" * 70_000),
            (b"SCHILY.xattr.user.max", b"v" * 65_536),
            (b"SCHILY.xattr.system.posix_acl_access", b"garbage"),
            (b"SCHILY.xattr.system.posix_acl_default", b"\x02\x00\x00\x00"),
            (b"SCHILY.xattr.security.capability", b"\x01\x02"),
            (b"SCHILY.xattr.", b"empty name"),
            (b"SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (b"SCHILY.xattr.user.\xff\xfe", b"\x00\x01"),
            (b"SCHILY.xattr.unknown.ns", b"v"),
            (b"SCHILY.xattr.user.nul", b"a\0b"),
        ]
    )
    return tb.pax_record(key, value)


# Crafted members that a mount must never show, and the class their showing means: ocifs
# should refuse the layer (the conformance line in the comment).
SERVED_MEANS = {
    "dev-big": "device-number-range",  # T5: device numbers beyond Linux's dev_t
}


def _crafted(rng: random.Random) -> tuple[bytes, str]:
    """A run of members the seed would never hold."""
    escape = rng.choice(ESCAPES).encode()
    deep = b"a/" * rng.choice([2047, 2049, 2100, 3000]) + b"f"
    choices: list[tuple[bytes, str]] = [
        (
            tb.member(b"evil", b"2", linkname=escape)
            + tb.member(b"evil/secret", b"0", b"through the link")
            + tb.member(b"hard", b"1", linkname=b"evil/secret"),
            f"symlink evil -> {escape.decode()}, then evil/secret and a hardlink to it",
        ),
        (tb.member(b"hard", b"1", linkname=escape), f"hardlink -> {escape.decode()}"),
        (tb.member(b"sym", b"2", linkname=escape), f"symlink -> {escape.decode()}"),
        (
            tb.member(b"etc", b"2", linkname=escape) + tb.member(b"etc/x", b"0", b"x"),
            "etc replaced by an escaping symlink, then etc/x",
        ),
        (tb.pax_header(_xattr(rng)) + tb.member(b"xattr-file", b"0", b"x"), "odd xattr"),
        (
            tb.pax_header(
                tb.pax_record(
                    b"SCHILY.devmajor", str(rng.choice([1 << 40, 4096, -1, 1 << 12])).encode()
                )
                + tb.pax_record(b"SCHILY.devminor", str(rng.choice([1 << 20, 1 << 32, 5])).encode())
            )
            + tb.member(b"dev-node", b"3"),
            "char device with PAX device numbers",
        ),
        (
            tb.with_checksum(
                tb.member(b"dev-big", b"4")[:329]
                + b"\x80"
                + (1 << 40).to_bytes(7, "big")
                + b"\x80"
                + (1 << 33).to_bytes(7, "big")
                + bytes(512 - 345)
            ),
            "block device with base-256 device numbers",
        ),
        (
            tb.pax_header(tb.pax_record(b"path", deep)) + tb.member(b"x", b"0", b"deep"),
            f"path of {len(deep)} bytes",
        ),
        (
            tb.pax_header(tb.pax_record(b"path", b"../" + b"n" * rng.choice([300, 300_000])))
            + tb.member(b"x", b"0", b"long"),
            "a huge name with a .. component",
        ),
        (
            tb.pax_header(tb.pax_record(b"path", b"d/" + b"n" * 300_000)) + tb.member(b"x", b"0"),
            "a 300 KB name component",
        ),
        (
            tb.gnu_long(b"g" * rng.choice([300, 5000, 1 << 20])) + tb.member(b"x", b"0", b"x"),
            "GNU long name",
        ),
        (tb.gnu_long(b"../gnu-escape") + tb.member(b"x", b"0"), "GNU long name with .."),
        (tb.gnu_long(b"a\0b") + tb.member(b"x", b"0"), "GNU long name with a NUL"),
        (tb.gnu_long(escape, b"K") + tb.member(b"x", b"1"), "GNU long link out of the tree"),
        (tb.gnu_long(b"only"), "GNU long name and nothing after it"),
        (tb.pax_header(tb.pax_record(b"path", b"g")), "PAX header and nothing after it"),
        (
            tb.pax_header(tb.pax_record(b"path", b"global-name"), b"g")
            + tb.member(b"y", b"0", b"y"),
            "PAX global header with a path",
        ),
        (
            tb.member(b"dup", b"5") + tb.member(b"dup", b"0", b"f") + tb.member(b"dup/x", b"0"),
            "dir, file, child",
        ),
        (tb.member(b"fifo", b"6", b"data of a fifo"), "fifo with data"),
        (tb.member(b"sparse", b"S", b"x" * 600), "old GNU sparse header with an empty map"),
        (
            tb.pax_header(
                tb.pax_record(b"GNU.sparse.major", b"1")
                + tb.pax_record(b"GNU.sparse.minor", b"0")
                + tb.pax_record(b"GNU.sparse.name", b"sparse1")
                + tb.pax_record(
                    b"GNU.sparse.realsize", rng.choice([b"1099511627776", b"-5", b"10"])
                )
            )
            + tb.member(
                b"GNUSparseFile.0/sparse1",
                b"0",
                rng.choice([b"1\n0\n5\n", b"9\n", b"x"]).ljust(512, b"\0") + b"hello",
            ),
            "PAX 1.0 sparse file with an odd map",
        ),
        (tb.member(b".wh..wh..opq", b"0"), "opaque marker at the root"),
        (
            tb.member(b".wh.usr", b"0") + tb.member(b"usr/new", b"0", b"n"),
            "whiteout then a child of it",
        ),
        (tb.member(b"etc/.wh.hostname", b"5"), "whiteout as a directory"),
        (
            tb.member(b"loop", b"2", linkname=b"loop") + tb.member(b"loop/x", b"0"),
            "symlink loop, then a child",
        ),
        (
            tb.member(b"h1", b"1", linkname=b"h2") + tb.member(b"h2", b"1", linkname=b"h1"),
            "hardlink cycle",
        ),
        (tb.member(b"hd", b"1", linkname=b"etc"), "hardlink to a directory"),
    ]
    return rng.choice(choices)


def tar_insert(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    found = tb.headers(tar)
    spots = [h.offset for h in found] + [tb.body_end(tar)]
    at = rng.choice(spots)
    crafted, what = _crafted(rng)
    return tar[:at] + crafted + tar[at:], f"at {at}: {what}"


def _records(data: bytes) -> list[bytes]:
    records, offset = [], 0
    while offset < len(data):
        space = data.find(b" ", offset)
        try:
            length = int(data[offset:space])
        except ValueError:
            break
        if length <= 0:
            break
        records.append(data[offset : offset + length])
        offset += length
    return records


PAX_VALUES = [
    (b"size", b"-1"),
    (b"size", b"99999999999999999999"),
    (b"size", b"abc"),
    (b"size", b"+12"),
    (b"uid", b"-1"),
    (b"uid", b"1099511627776"),
    (b"gid", b"4294967296"),
    (b"mtime", b"1e400"),
    (b"mtime", b"-1.5"),
    (b"mtime", b"nan"),
    (b"mtime", b"99999999999999999999.5"),
    (b"atime", b"x"),
    (b"path", b""),
    (b"path", b"../pax-escape"),
    (b"path", b"/abs/pax"),
    (b"path", b"a\0b"),
    (b"linkpath", CANARY_SECRET.as_posix().encode()),
    (b"uname", b"a\0b"),
    (b"hdrcharset", b"BINARY"),
    (b"GNU.sparse.map", b"0,5,1"),
    (b"GNU.sparse.size", b"-1"),
    (b"GNU.sparse.numblocks", b"1000000000"),
    (b"SCHILY.devmajor", b"1099511627776"),
    (b"unknown.key", b"value"),
    (b"", b"empty key"),
    (b"k\0ey", b"v"),
    (b"comment", b"c" * 500_000),
    (b"comment", b"c" * (1 << 20)),
]


def tar_pax(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    """Rewrite the records of a PAX header (inserting one before a member if there is none)."""
    found = tb.headers(tar)
    pax = [h for h in found if h.typeflag in (b"x", b"g")]
    if pax and rng.random() < 0.7:
        header = rng.choice(pax)
        data = tar[header.data_offset : header.data_offset + header.size]
        records = _records(data)
        start, end = header.offset, header.end
    else:
        members = [h for h in found if h.typeflag not in (b"x", b"g", b"L", b"K")] or found
        if not members:
            return tar, "no member"
        header = rng.choice(members)
        records, start, end = [], header.offset, header.offset
    op = rng.choice(["value", "value", "length", "nolf", "noequals", "dup", "garbage"])
    if op == "value" or not records:
        key, value = rng.choice(PAX_VALUES)
        records.append(tb.pax_record(key, value))
        what = f"record {show(key)}={show(value)}"
    else:
        index = rng.randrange(len(records))
        record = records[index]
        space = record.find(b" ")
        if op == "length":
            length = int(record[:space]) + rng.choice([-3, -1, 1, 7, 1 << 30])
            records[index] = str(length).encode() + record[space:]
            what = f"record {index} length {length}"
        elif op == "nolf":
            records[index] = record[:-1] + b"X"
            what = f"record {index} without its newline"
        elif op == "noequals":
            records[index] = record.replace(b"=", b"_", 1)
            what = f"record {index} without '='"
        elif op == "dup":
            records.insert(index, record)
            what = f"record {index} twice"
        else:
            records[index] = rng.choice([b"x", b"10 a=b\n", b"0 \n", b"-5 a=b\n", b"00012 a=bc\n"])
            what = f"record {index} = {show(records[index])}"
    block = tb.pax_header(b"".join(records), header.typeflag if end > start else b"x")
    if end > start:  # keep the header's own name and flags, with the new size
        block = tb.set_field(block, 0, "name", tar[start : start + 100])
    return tar[:start] + block + tar[end:], f"PAX header at {start}: {what}"


def tar_truncate(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    found = tb.headers(tar)
    body = tb.body_end(tar)
    spots = [
        rng.randrange(1, max(2, len(tar))),
        body,
        body + 512,
        *(h.offset + rng.choice([0, 1, 100, 511]) for h in rng.sample(found, min(2, len(found)))),
    ]
    cut = rng.choice(spots)
    return tar[:cut], f"cut at {cut} of {len(tar)}"


def tar_append(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    body = tb.body_end(tar)
    extra, what = rng.choice(
        [
            (rng.randbytes(rng.choice([1, 100, 512, 3000])), "random bytes"),
            (
                bytes(512) + tb.member(b"after-one-zero", b"0", b"late"),
                "a member after one zero block",
            ),
            (
                tb.end_of_archive() + tb.member(b"after-end", b"0", b"late"),
                "a member after the end",
            ),
            (bytes(512), "one zero block only"),
            (bytes(512 * 5), "many zero blocks"),
            (b"", "no end blocks"),
            (bytes(512) + b"x", "a zero block and a byte"),
        ]
    )
    if what.startswith("a member after the end") or what == "random bytes":
        return tar + extra, f"after the end: {what}"
    return tar[:body] + extra, f"at {body}: {what}"


def tar_flip(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    if not tar:
        return tar, "empty"
    data = bytearray(tar)
    spots = []
    for _ in range(rng.choice([1, 1, 2, 4])):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        spots.append(at)
    out = bytes(data)
    if rng.random() < 0.5:
        for header in tb.headers(out):
            if any(header.offset <= at < header.data_offset for at in spots):
                out = (
                    out[: header.offset]
                    + tb.with_checksum(out[header.offset : header.data_offset])
                    + out[header.data_offset :]
                )
    return out, f"bits flipped at {spots}"


def tar_duplicate(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    piece = tar[header.offset : header.end]
    return tar[: header.end] + piece + tar[header.end :], f"member at {header.offset} twice"


def tar_remove(rng: random.Random, tar: bytes) -> tuple[bytes, str]:
    header = _header(rng, tar)
    if header is None:
        return tar, "no header"
    return tar[: header.offset] + tar[
        header.end :
    ], f"member at {header.offset} ({show(header.name)}) removed"


TAR: dict[str, TarMutator] = {
    "number": Mutator(10, tar_number),
    "checksum": Mutator(2, tar_checksum),
    "typeflag": Mutator(5, tar_typeflag),
    "magic": Mutator(3, tar_magic),
    "name": Mutator(6, tar_name),
    "linkname": Mutator(5, tar_linkname),
    "insert": Mutator(16, tar_insert),
    "pax": Mutator(10, tar_pax),
    "truncate": Mutator(3, tar_truncate),
    "append": Mutator(3, tar_append),
    "flip": Mutator(5, tar_flip),
    "duplicate": Mutator(2, tar_duplicate),
    "remove": Mutator(2, tar_remove),
}


# --- gzip and zstd ----------------------------------------------------------------------------


def _flip_in(
    rng: random.Random, blob: bytes, regions: list[tuple[str, int, int]]
) -> tuple[bytes, str]:
    name, start, end = rng.choice([r for r in regions if r[2] > r[1]] or [("all", 0, len(blob))])
    if end <= start:
        return blob, "empty blob"
    data = bytearray(blob)
    spots = []
    for _ in range(rng.choice([1, 1, 2, 8])):
        at = rng.randrange(start, end)
        data[at] = rng.randrange(256) if rng.random() < 0.5 else data[at] ^ (1 << rng.randrange(8))
        spots.append(at)
    return bytes(data), f"bytes changed in the {name} at {spots}"


def _body_regions(blob: bytes, head: int, tail: int) -> list[tuple[str, int, int]]:
    n = len(blob)
    return [
        ("header", 0, min(head, n)),
        ("body start", head, min(head + 64, n - tail)),
        ("body", head, n - tail),
        ("body end", max(head, n - tail - 64), n - tail),
        ("trailer", max(0, n - tail), n),
    ]


def gzip_flip(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    return _flip_in(rng, blob, _body_regions(blob, 10, 8))


def truncate(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    cut = rng.choice(
        [
            len(blob) - 1,
            len(blob) - 4,
            len(blob) - 8,
            len(blob) // 2,
            rng.randrange(max(1, len(blob))),
            0,
        ]
    )
    cut = max(0, cut)
    return blob[:cut], f"cut at {cut} of {len(blob)}"


def gzip_trailing(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    extra, what = rng.choice(
        [
            (bytes(rng.choice([1, 8, 512])), "zero bytes"),
            (rng.randbytes(rng.choice([1, 10, 1000])), "random bytes"),
            (gzip.compress(tb.end_of_archive(), mtime=0), "a second member of zero blocks"),
            (
                gzip.compress(tb.member(b"late", b"0", b"late"), mtime=0),
                "a second member with a file",
            ),
            (gzip.compress(b"", mtime=0), "an empty member"),
            (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", "a lone member header"),
            (b"\x1f\x8b", "the magic alone"),
        ]
    )
    return blob + extra, f"after the stream: {what}"


def gzip_header(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """A member header with optional fields (valid or not) in place of the plain one."""
    flags, extra, what = rng.choice(
        [
            (0x04, b"\x06\x00AB\x02\x00xy", "FEXTRA"),
            (0x08, b"name.tar\0", "FNAME"),
            (0x10, b"a comment\0", "FCOMMENT"),
            (0x02, b"", "FHCRC"),
            (0x04, b"\xff\xff", "FEXTRA longer than the blob"),
            (0x08, b"no terminator", "FNAME without NUL"),
            (0xE0, b"", "reserved flags"),
            (0x1E, b"\x02\x00ABname\0comment\0", "every field"),
        ]
    )
    head = bytearray(blob[:10])
    if len(head) < 10:
        return blob, "too short"
    head[3] = flags
    fields = extra
    if flags & 0x02 and what != "reserved flags":
        crc = zlib.crc32(bytes(head) + extra) & 0xFFFF
        fields = extra + crc.to_bytes(2, "little")
    return bytes(head) + fields + blob[10:], f"header flags {flags:#x}: {what}"


def _deflate(data: bytes, level: int, strategy: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31, 9, strategy)
    return compressor.compress(data) + compressor.flush()


def gzip_variant(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """The same tar stream written another valid way."""
    try:
        tar = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error):
        return blob, "not decodable"
    kind = rng.choice(["members", "level", "strategy", "flushes"])
    if kind == "members":
        cuts = sorted(
            rng.sample(
                range(1, max(2, len(tar))), min(rng.choice([1, 3, 20]), max(1, len(tar) - 1))
            )
        )
        pieces = [tar[a:b] for a, b in zip([0, *cuts], [*cuts, len(tar)], strict=True)]
        return b"".join(gzip.compress(p, mtime=0) for p in pieces), f"{len(pieces)} members"
    if kind == "level":
        level = rng.choice([0, 1, 9])
        return _deflate(tar, level, zlib.Z_DEFAULT_STRATEGY), f"level {level}"
    if kind == "strategy":
        strategy = rng.choice([zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FIXED, zlib.Z_FILTERED])
        return _deflate(tar, 6, strategy), f"strategy {strategy}"
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = bytearray()
    step = rng.choice([512, 4096, 70_000])
    for start in range(0, len(tar), step):
        out += compressor.compress(tar[start : start + step])
        out += compressor.flush(rng.choice([zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH]))
    out += compressor.flush()
    return bytes(out), f"flushes every {step} bytes"


GZIP: dict[str, BlobMutator] = {
    "flip": Mutator(10, gzip_flip),
    "truncate": Mutator(3, truncate),
    "trailing": Mutator(3, gzip_trailing),
    "header": Mutator(3, gzip_header),
    "variant": Mutator(4, gzip_variant),
}


def zstd(data: bytes, *options: str) -> bytes:
    """What the ``zstd`` tool writes (level 3 and a checksum unless ``options`` say)."""
    return subprocess.run(
        ["zstd", "-q", "-c", *options], input=data, capture_output=True, check=True
    ).stdout


def zstd_frames(data: bytes, size: int = 64 << 10, *options: str) -> bytes:
    """``data`` cut into frames of ``size`` bytes, each compressed on its own."""
    return b"".join(
        zstd(data[start : start + size], *options) for start in range(0, len(data), size)
    ) or zstd(b"")


def unzstd(blob: bytes) -> bytes | None:
    result = subprocess.run(["zstd", "-q", "-d", "-c"], input=blob, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def skippable(payload: bytes, magic: int = 0x184D2A50) -> bytes:
    return magic.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def zstd_flip(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    return _flip_in(rng, blob, _body_regions(blob, 6, 4))


def zstd_trailing(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    extra, what = rng.choice(
        [
            (bytes(rng.choice([1, 4, 100])), "zero bytes"),
            (rng.randbytes(rng.choice([1, 9, 1000])), "random bytes"),
            (skippable(b"skip me"), "a skippable frame"),
            (skippable(b"x", 0x184D2A5F), "a skippable frame (last magic)"),
            (b"\x50\x2a\x4d\x18\xff\xff\xff\x00", "a skippable frame longer than the blob"),
            (zstd(tb.end_of_archive()), "a frame of zero blocks"),
            (b"\x28\xb5\x2f\xfd", "a frame magic alone"),
        ]
    )
    return blob + extra, f"after the stream: {what}"


def zstd_header(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    if len(blob) < 6 or blob[:4] != b"\x28\xb5\x2f\xfd":
        return blob, "no frame header"
    data = bytearray(blob)
    bit = rng.choice([0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80])
    data[4] ^= bit
    if rng.random() < 0.5:
        data[5] = rng.choice([0xFF, 0x00, 0xF8, 0x90])
    return bytes(data), f"frame header descriptor ^ {bit:#x}, window byte {data[5]:#x}"


def zstd_variant(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    tar = unzstd(blob)
    if tar is None:
        return blob, "not decodable"
    kind = rng.choice(["level", "nocheck", "frames", "skippable", "nosize"])
    if kind == "level":
        level = rng.choice(["-1", "-19", "--fast=5"])
        return zstd(tar, level), f"zstd {level}"
    if kind == "nocheck":
        return zstd(tar, "--no-check"), "frames without checksums"
    if kind == "nosize":
        return zstd(tar, "--no-content-size"), "no content size"
    size = rng.choice([512, 4096, 100_000])
    frames = zstd_frames(tar, size)
    if kind == "frames":
        return frames, f"a frame per {size} bytes"
    return skippable(b"lead") + zstd_frames(tar, size, "--no-check") + skippable(b""), (
        f"frames of {size} bytes without checksums between skippable frames"
    )


ZSTD: dict[str, BlobMutator] = {
    "flip": Mutator(10, zstd_flip),
    "truncate": Mutator(3, truncate),
    "trailing": Mutator(3, zstd_trailing),
    "header": Mutator(3, zstd_header),
    "variant": Mutator(4, zstd_variant),
}


# --- JSON documents ---------------------------------------------------------------------------

Json = Any  # a decoded document, or bytes for one written raw


def _nodes(doc: Json, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in ``doc`` as a path of keys and indexes (the root is ())."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _nodes(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _nodes(value, (*path, index))
    return out


def _get(doc: Json, path: tuple[Any, ...]) -> Json:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Json, path: tuple[Any, ...], value: Json) -> Json:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _where(path: tuple[Any, ...]) -> str:
    return "/" + "/".join(str(key) for key in path)


ODD_VALUES: list[Json] = [
    None,
    True,
    0,
    -1,
    1 << 64,
    10**400,
    1.5,
    "",
    "x",
    [],
    {},
    [None],
    {"a": 1},
]
ODD_DIGESTS = [
    "sha256:" + "0" * 63,
    "sha256:" + "A" * 64,
    "sha512:" + "0" * 128,
    "md5:" + "0" * 32,
    "sha256:../../../" + CANARY_NAME,
    "sha256:" + "0" * 64 + "/../../x",
    "sha256:",
    ":",
    "sha256:" + "0" * 64 + "\n",
    "../sha256:" + "0" * 64,
    "sha256/" + "0" * 64,
]
MEDIA_TYPES = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.config.v1+json",
    "text/plain",
    "",
]


def json_delete(rng: random.Random, doc: Json) -> tuple[Json, str]:
    keyed = [p for p in _nodes(doc) if p]
    if not keyed:
        return doc, "nothing to delete"
    path = rng.choice(keyed)
    parent = _get(doc, path[:-1])
    del parent[path[-1]]
    return doc, f"deleted {_where(path)}"


def json_type(rng: random.Random, doc: Json) -> tuple[Json, str]:
    path = rng.choice(_nodes(doc))
    value = rng.choice(ODD_VALUES)
    return _set(doc, path, value), f"{_where(path)} = {show(json.dumps(value).encode())}"


def json_huge(rng: random.Random, doc: Json) -> tuple[Json, str]:
    path = rng.choice(_nodes(doc))
    old = _get(doc, path)
    if isinstance(old, str):
        value: Json = old + "x" * rng.choice([300_000, 5_000_000])
    elif isinstance(old, int) and not isinstance(old, bool):
        value = rng.choice([1 << 63, 1 << 64, -(1 << 63), 10**30])
    elif isinstance(old, list):
        value = old * rng.choice([100, 20_000]) if old else [{}] * 20_000
    else:
        value = {f"k{i}": i for i in range(20_000)}
    return _set(doc, path, value), f"{_where(path)} made huge ({type(old).__name__})"


def _field_paths(doc: Json, name: str) -> list[tuple[Any, ...]]:
    return [p for p in _nodes(doc) if p and p[-1] == name]


def json_digest(rng: random.Random, doc: Json) -> tuple[Json, str]:
    paths = _field_paths(doc, "digest") or _field_paths(doc, "diff_ids") or [()]
    path = rng.choice(paths)
    value = rng.choice(ODD_DIGESTS)
    if path and path[-1] == "diff_ids":
        items = _get(doc, path)
        if isinstance(items, list) and items:
            path = (*path, rng.randrange(len(items)))
    return _set(doc, path, value), f"{_where(path)} = {value!r}"


def json_media(rng: random.Random, doc: Json) -> tuple[Json, str]:
    paths = _field_paths(doc, "mediaType") or [("mediaType",)]
    path = rng.choice(paths)
    value = rng.choice(MEDIA_TYPES)
    if isinstance(doc, dict):
        doc = _set(doc, path, value)
    return doc, f"{_where(path)} = {value!r}"


def json_size(rng: random.Random, doc: Json) -> tuple[Json, str]:
    paths = _field_paths(doc, "size")
    if not paths:
        return doc, "no size"
    path = rng.choice(paths)
    old = _get(doc, path)
    value = rng.choice(
        [
            0,
            -1,
            1 << 62,
            (old + 1) if isinstance(old, int) else 1,
            (old - 1) if isinstance(old, int) else 1,
            "12",
        ]
    )
    return _set(doc, path, value), f"{_where(path)} {old!r} -> {value!r}"


def json_path(rng: random.Random, doc: Json) -> tuple[Json, str]:
    """Names that point out of the layout: manifest.json paths, urls, ref names."""
    escape = rng.choice(ESCAPES)
    paths = [
        p
        for p in _nodes(doc)
        if p and p[-1] in ("Config", "Layers", "urls", "org.opencontainers.image.ref.name")
    ]
    if not paths:
        paths = [p for p in _nodes(doc) if p and isinstance(_get(doc, p), str)] or [()]
    path = rng.choice(paths)
    old = _get(doc, path)
    value: Json = [escape] if isinstance(old, list) else escape
    if isinstance(old, list) and old and rng.random() < 0.5:
        path = (*path, rng.randrange(len(old)))
        value = escape
    return _set(doc, path, value), f"{_where(path)} = {escape!r}"


def json_platform(rng: random.Random, doc: Json) -> tuple[Json, str]:
    paths = _field_paths(doc, "platform") or _field_paths(doc, "architecture") or [()]
    path = rng.choice(paths)
    value = rng.choice(
        [
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux"},
            {},
            {"os": "unknown", "architecture": "unknown"},
            "linux/amd64",
            {"os": "linux", "architecture": "amd64", "variant": "v9"},
        ]
    )
    return _set(doc, path, value), f"{_where(path)} = {json.dumps(value)}"


def json_duplicate(rng: random.Random, doc: Json) -> tuple[Json, str]:
    """An item of a list twice (two edits alike give an image with a layer twice, which is
    valid)."""
    lists = [p for p in _nodes(doc) if isinstance(_get(doc, p), list) and _get(doc, p)]
    if not lists:
        return doc, "no list"
    path = rng.choice(lists)
    items = _get(doc, path)
    index = rng.randrange(len(items))
    items.insert(index, copy.deepcopy(items[index]))
    return doc, f"{_where(path)}[{index}] twice"


def json_raw(rng: random.Random, doc: Json) -> tuple[Json, str]:
    text = json.dumps(doc).encode()
    raw, what = rng.choice(
        [
            (text[: len(text) // 2], "cut in half"),
            (text + b" garbage", "trailing garbage"),
            (b"\xef\xbb\xbf" + text, "a byte-order mark"),
            (text.replace(b'"', b'"\xff', 1), "not UTF-8"),
            (b"[" * 100_000 + b"]" * 100_000, "nested 100,000 deep"),
            (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "objects nested 50,000 deep"),
            (b"NaN", "NaN"),
            (b"null", "null"),
            (b"", "empty"),
            (b"[]", "an array"),
            (
                text[:1] + b'"schemaVersion": 2, ' + text[1:] if text.startswith(b"{") else text,
                "a duplicate key",
            ),
            (text + b" " * 5_000_000, "padded past 4 MiB"),
            (text.replace(b":", b': 1e999, "x":', 1), "an infinite number"),
        ]
    )
    return raw, f"raw: {what}"


JSON: dict[str, Mutator[Json]] = {
    "delete": Mutator(6, json_delete),
    "type": Mutator(6, json_type),
    "huge": Mutator(2, json_huge),
    "digest": Mutator(4, json_digest),
    "media": Mutator(3, json_media),
    "size": Mutator(3, json_size),
    "path": Mutator(4, json_path),
    "platform": Mutator(2, json_platform),
    "duplicate": Mutator(2, json_duplicate),
    "raw": Mutator(4, json_raw),
}


# --- the store's files ------------------------------------------------------------------------


@dataclass
class Node:
    """A file of the store before it is written: bytes, or a symlink, a directory, a fifo."""

    kind: str  # file, symlink, dir, fifo
    data: bytes = b""
    target: str = ""


Files = dict[str, Node]


def _blob_names(files: Files) -> list[str]:
    blobs = [
        name for name, node in files.items() if node.kind == "file" and name.startswith("blobs/")
    ]
    return blobs or [name for name, node in files.items() if node.kind == "file"]


def files_symlink(rng: random.Random, files: Files) -> tuple[Files, str]:
    name = rng.choice(_blob_names(files))
    depth = name.count("/")
    target = rng.choice(
        [
            str(CANARY_SECRET),
            "../" * (depth + 1) + CANARY_NAME,
            "../" * depth + rng.choice(_blob_names(files)),
            name.rsplit("/", 1)[-1],  # itself: a loop
            "missing",
        ]
    )
    keep = rng.random() < 0.5 and not target.endswith(CANARY_NAME) and "secret" not in target
    if keep:  # the blob moved aside and linked to: a valid layout
        files[name + ".real"] = files[name]
        target = name.rsplit("/", 1)[-1] + ".real"
    files[name] = Node("symlink", target=target)
    return files, f"{name} -> {target}"


def files_replace(rng: random.Random, files: Files) -> tuple[Files, str]:
    name = rng.choice(_blob_names(files))
    kind = rng.choice(["missing", "dir", "fifo", "empty"])
    if kind == "missing":
        del files[name]
    elif kind == "empty":
        files[name] = Node("file")
    else:
        files[name] = Node(kind)
    return files, f"{name}: {kind}"


def files_extra(rng: random.Random, files: Files) -> tuple[Files, str]:
    name, node = rng.choice(
        [
            ("blobs/sha256/" + "f" * 64, Node("file", b"junk")),
            ("blobs/sha256/not-a-digest", Node("file", b"junk")),
            ("blobs/md5/x", Node("file", b"junk")),
            ("blobs/sha256/link", Node("symlink", target=str(CANARY_SECRET))),
            ("ocifs-extra", Node("fifo")),
        ]
    )
    files[name] = node
    return files, f"extra {name} ({node.kind})"


FILES: dict[str, Mutator[Files]] = {
    "symlink": Mutator(5, files_symlink),
    "replace": Mutator(4, files_replace),
    "extra": Mutator(1, files_extra),
}


# --- the index cache --------------------------------------------------------------------------


def cache_damage(rng: random.Random, cache: Path) -> tuple[Path, str]:
    """Damage one file of an index cache that ``ocifs index`` filled."""
    found = sorted(p for p in cache.rglob("*") if p.is_file())
    if not found:
        return cache, "empty cache"
    path = rng.choice(found)
    where = path.relative_to(cache)
    kind = rng.choice(["flip", "truncate", "fifo", "symlink", "dir", "empty", "swap", "grow"])
    data = path.read_bytes()
    if kind == "flip" and data:
        at = rng.randrange(len(data))
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])
        return cache, f"{where}: byte {at} flipped"
    if kind == "truncate":
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
        return cache, f"{where}: truncated"
    if kind == "grow":
        path.write_bytes(data + rng.randbytes(100))
        return cache, f"{where}: bytes appended"
    if kind == "swap" and len(found) > 1:
        other = rng.choice([p for p in found if p != path])
        path.write_bytes(other.read_bytes())
        return cache, f"{where}: holds {other.relative_to(cache)}"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(rng.choice([str(CANARY_SECRET), "/dev/zero", path.name]))
    elif kind == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"")
    return cache, f"{where}: {kind}"


CACHE: dict[str, Mutator[Path]] = {"damage": Mutator(1, cache_damage)}


# --- the store under a live mount -----------------------------------------------------------


def live_damage(rng: random.Random, store: Path) -> tuple[Path, str]:
    """Overwrite a few bytes of a blob in place (same size, same inode), as a stray write or
    a failing disk would, once the image is mounted and before anything is read."""
    files = (
        [store]
        if store.is_file()
        else sorted(p for p in store.rglob("*") if p.is_file() and not p.is_symlink())
    )
    big = [p for p in files if p.stat().st_size > 4096] or files
    path = rng.choice(big)
    size = path.stat().st_size
    offset = rng.randrange(size)
    length = min(rng.choice([1, 8, 64]), size - offset)
    fd = os.open(path, os.O_WRONLY)
    try:
        old = path.read_bytes()[offset : offset + length]
        os.pwrite(fd, bytes(b ^ 0x5A for b in old), offset)
    finally:
        os.close(fd)
    return store, f"{path.name[:20]}: {length} bytes at {offset} of {size} overwritten"


LIVE: dict[str, Mutator[Path]] = {"damage": Mutator(1, live_damage)}


# --- the command line -------------------------------------------------------------------------


def options(rng: random.Random, args: list[str]) -> tuple[list[str], str]:
    extra = rng.choice(
        [
            ["--read-cache", rng.choice(["-1", "0", "1", "abc", "1T", "99999999999G", "", "64Mi"])],
            [
                "--platform",
                rng.choice(["linux", "/", "a/b/c/d", "linux/amd64/", "linux/riscv64", "\u00e9/x"]),
            ],
            [
                "-o",
                rng.choice(
                    [
                        "suid,dev",
                        "max_read=1",
                        "foo",
                        "allow_other",
                        "rw",
                        ",,,",
                        "fsname=a,b",
                        "nonempty",
                    ]
                ),
            ],
            ["--no-cache"],
            ["--no-verify"],
        ]
    )
    return [*args, *extra], " ".join(extra)


OPTIONS: dict[str, Mutator[list[str]]] = {"options": Mutator(1, options)}


# Stage -> its table (an archive's own tar and gzip stream take the layers' mutations).
TABLES: dict[str, dict[str, Any]] = {
    "tar": TAR,
    "gzip": GZIP,
    "zstd": ZSTD,
    "json": JSON,
    "files": FILES,
    "cache": CACHE,
    "live": LIVE,
    "options": OPTIONS,
    "archive-tar": TAR,
    "archive-gz": GZIP,
}
