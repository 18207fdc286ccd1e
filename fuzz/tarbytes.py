"""Tar streams as bytes, for the mutations: where the headers are, their fields, edits that
keep the header checksum right (so the damage reaches the field parsers, not the checksum
check), and extension headers (PAX records, GNU long names) built by hand.

The header walk is deliberately lenient: it follows sizes from header to header and stops at
the first block it cannot read, since it runs over streams already damaged.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK = 512
# Field name -> (start, end) in a ustar header block.
FIELDS = {
    "name": (0, 100),
    "mode": (100, 108),
    "uid": (108, 116),
    "gid": (116, 124),
    "size": (124, 136),
    "mtime": (136, 148),
    "chksum": (148, 156),
    "typeflag": (156, 157),
    "linkname": (157, 257),
    "magic": (257, 263),
    "version": (263, 265),
    "uname": (265, 297),
    "gname": (297, 329),
    "devmajor": (329, 337),
    "devminor": (337, 345),
    "prefix": (345, 500),
}
NUMERIC = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor")


@dataclass(frozen=True)
class Header:
    """One header block found in a stream: where it is, its type and its data's size."""

    offset: int
    typeflag: bytes
    size: int
    name: bytes

    @property
    def data_offset(self) -> int:
        return self.offset + BLOCK

    @property
    def end(self) -> int:
        """Where the next header starts."""
        return self.data_offset + padded(self.size)


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def number(field: bytes) -> int | None:
    """An octal or GNU base-256 field, None if it is neither."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def headers(tar: bytes) -> list[Header]:
    """Every header block from the start, following sizes, until a zero or unreadable block."""
    found = []
    offset = 0
    while offset + BLOCK <= len(tar):
        block = tar[offset : offset + BLOCK]
        if block == bytes(BLOCK):
            break
        size = number(block[124:136])
        if size is None or size < 0:
            break
        name = block[:100].split(b"\0", 1)[0]
        found.append(Header(offset, block[156:157], size, name))
        offset += BLOCK + padded(size)
    return found


def checksum(block: bytes) -> bytes:
    """The checksum field for ``block``: six octal digits, NUL, space (as tar writes it)."""
    total = sum(block[:148]) + 8 * 32 + sum(block[156:BLOCK])
    return b"%06o\0 " % (total & 0o777777)


def with_checksum(block: bytes) -> bytes:
    return block[:148] + checksum(block) + block[156:]


def set_field(tar: bytes, offset: int, field: str, value: bytes, fix: bool = True) -> bytes:
    """``tar`` with ``field`` of the header at ``offset`` set to ``value`` (padded with NULs or
    cut to the field), and the checksum made right again unless ``fix`` is False."""
    start, end = FIELDS[field]
    value = value[: end - start].ljust(end - start, b"\0")
    block = tar[offset : offset + start] + value + tar[offset + end : offset + BLOCK]
    if fix:
        block = with_checksum(block)
    return tar[:offset] + block + tar[offset + BLOCK :]


def octal(value: int, width: int) -> bytes:
    """``value`` as tar writes it in a field of ``width`` bytes: octal digits and a NUL."""
    return b"%0*o\0" % (width - 1, value)


def header_block(name: bytes, typeflag: bytes, size: int, linkname: bytes = b"") -> bytes:
    """A ustar header block with a right checksum."""
    block = bytearray(BLOCK)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = octal(0o644, 8)
    block[108:116] = octal(0, 8)
    block[116:124] = octal(0, 8)
    block[124:136] = octal(size, 12) if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = octal(1_700_000_000, 12)
    block[156:157] = typeflag
    block[157:257] = linkname[:100].ljust(100, b"\0")
    block[257:265] = b"ustar\x0000"
    block[329:337] = octal(0, 8)
    block[337:345] = octal(0, 8)
    return with_checksum(bytes(block))


def member(name: bytes, typeflag: bytes = b"0", data: bytes = b"", linkname: bytes = b"") -> bytes:
    """A header and its padded data."""
    return header_block(name, typeflag, len(data), linkname) + data.ljust(padded(len(data)), b"\0")


def pax_record(key: bytes, value: bytes) -> bytes:
    """``LEN key=value\\n`` with LEN counting itself, as PAX defines it."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_header(records: bytes, typeflag: bytes = b"x") -> bytes:
    """A PAX extended header (``x``, or ``g`` for a global one) holding ``records``."""
    return member(b"PaxHeaders/fuzz", typeflag, records)


def gnu_long(name: bytes, typeflag: bytes = b"L") -> bytes:
    """A GNU long name (``L``) or long link (``K``) header for the entry after it."""
    return member(b"././@LongLink", typeflag, name + b"\0")


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def body_end(tar: bytes) -> int:
    """Where the members end (the end-of-archive blocks begin), by the header walk."""
    found = headers(tar)
    return found[-1].end if found else 0
