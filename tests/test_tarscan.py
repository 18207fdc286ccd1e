"""Tests of ``ocifs.tarscan``, the tar header parser (checklist lines B4, A4-A10 and T1-T3).

Archives come from CPython's ``tarfile`` (GNU and PAX formats), from GNU tar (sparse files,
out-of-range mtimes) and from hand-crafted blocks with exact damage. Every test checks real
parsed values. Where a stream is odd, the expected behaviour is what Go's archive/tar (read
by containerd, Docker, podman and umoci) does with it, as the README's "Tar streams" says.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from layers import blob_layer

from ocifs import indexcache, tarscan
from ocifs.errors import LayerError, TarFormatError
from ocifs.layerindex import index_layer
from ocifs.ocibuild import sha256_digest
from ocifs.tarscan import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    TarEntry,
    scan_tar,
)
from ocifs.tree import MergedTree, TreeBuilder

MTIME = 1_700_000_000
END = bytes(1024)

# -- helpers -------------------------------------------------------------------------------


class ShortReads:
    """A stream that returns at most ``limit`` bytes per read, and counts what it returned."""

    def __init__(self, data: bytes, limit: int | None = None, seed: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.limit = limit
        self.random = random.Random(seed)
        self.calls = 0

    def read(self, size: int, /) -> bytes:
        self.calls += 1
        if self.limit is not None:
            size = min(size, self.random.randint(1, self.limit))
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


def scan(data: bytes) -> list[TarEntry]:
    return list(scan_tar(io.BytesIO(data)))


def expect_error(data: bytes, *fragments: str) -> str:
    """Scanning ``data`` fails with a one-line TarFormatError containing every fragment."""
    with pytest.raises(TarFormatError) as info:
        scan(data)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def octal(value: int, length: int) -> bytes:
    return b"%0*o\x00" % (length - 1, value)


def header(
    name: bytes = b"f",
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes = b"",
    raw: dict[int, bytes] | None = None,
    signed_checksum: bool = False,
) -> bytes:
    """One 512-byte header block with a correct checksum; ``raw`` overrides bytes at offsets."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = octal(mode, 8)
    block[108:116] = octal(uid, 8)
    block[116:124] = octal(gid, 8)
    block[124:136] = octal(size, 12)
    block[136:148] = octal(mtime, 12)
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    if magic:
        block[257:265] = magic
        block[329:337] = octal(devmajor, 8)
        block[337:345] = octal(devminor, 8)
        block[345 : 345 + len(prefix)] = prefix
    for offset, value in (raw or {}).items():
        block[offset : offset + len(value)] = value
    return checksummed(block, signed=signed_checksum)


def checksummed(block: bytes | bytearray, *, signed: bool = False) -> bytes:
    block = bytearray(block)
    block[148:156] = b" " * 8
    total = sum(b - 256 if signed and b >= 128 else b for b in block)
    block[148:156] = b"%06o\x00 " % total
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    return header(name, size=len(data), **kw) + padded(data)  # type: ignore[arg-type]


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    digits = 1
    while len(str(len(body) + digits)) != digits:
        digits += 1
    return str(len(body) + digits).encode() + body


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    data = b"".join(pax_record(k, v) for k, v in records)
    return member(b"PaxHeader/f", data, typeflag=typeflag)


def tar_bytes(
    build: Callable[[tarfile.TarFile], None], fmt: int = tarfile.PAX_FORMAT, **kw: object
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, **kw) as tar:  # type: ignore[call-overload]
        build(tar)
    return buffer.getvalue()


def add(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = MTIME
    info.mode = 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


FORMATS = pytest.mark.parametrize(
    "fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"]
)


# -- entries from tarfile ------------------------------------------------------------------


@FORMATS
def test_every_kind(fmt: int) -> None:
    """Files, directories, links and devices carry their own fields (A1-A3, A5)."""

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "etc", tarfile.DIRTYPE, mode=0o755, uid=1, gid=2)
        add(tar, "etc/passwd", data=b"root:x:0:0\n", uid=3, gid=4)
        add(tar, "etc/link", tarfile.SYMTYPE, linkname="passwd")
        add(tar, "etc/hard", tarfile.LNKTYPE, linkname="etc/passwd")
        add(tar, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add(tar, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
        add(tar, "run/fifo", tarfile.FIFOTYPE, mode=0o600)

    entries = scan(tar_bytes(build, fmt))
    assert [(e.path, e.kind) for e in entries] == [
        (b"etc/", DIR),  # tarfile writes directories with a trailing slash
        (b"etc/passwd", FILE),
        (b"etc/link", SYMLINK),
        (b"etc/hard", HARDLINK),
        (b"dev/null", CHARDEV),
        (b"dev/sda", BLOCKDEV),
        (b"run/fifo", FIFO),
    ]
    etc, passwd, symlink, hard, null, sda, fifo = entries
    assert (etc.mode, etc.uid, etc.gid, etc.size) == (0o755, 1, 2, 0)
    assert (passwd.mode, passwd.uid, passwd.gid, passwd.size) == (0o644, 3, 4, 11)
    assert passwd.mtime_ns == MTIME * 10**9
    assert passwd.linkname == b"" and passwd.sparse is None and passwd.xattrs is None
    assert (symlink.linkname, symlink.size) == (b"passwd", 0)
    assert (hard.linkname, hard.size) == (b"etc/passwd", 0)
    assert (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)
    assert (sda.devmajor, sda.devminor, sda.mode) == (8, 0, 0o660)
    assert (fifo.mode, fifo.devmajor, fifo.linkname) == (0o600, 0, b"")
    assert etc.header_offset == 0
    assert passwd.header_offset == 512


@FORMATS
def test_a5_special_mode_bits_kept(fmt: int) -> None:
    """A5: setuid, setgid and sticky bits survive; the file type comes from the typeflag."""

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "bin/su", data=b"x", mode=0o4755)
        add(tar, "bin/wall", data=b"y", mode=0o2755)
        add(tar, "tmp", tarfile.DIRTYPE, mode=0o1777)

    su, wall, tmp = scan(tar_bytes(build, fmt))
    assert (su.mode, wall.mode, tmp.mode) == (0o4755, 0o2755, 0o1777)
    assert (su.kind, tmp.kind) == (FILE, DIR)


def test_a5_mode_file_type_bits_dropped() -> None:
    """A5: the S_IFMT bits some writers put in the mode field are dropped."""
    (entry,) = scan(member(b"f", b"ab", mode=0o100755) + END)
    assert entry.mode == 0o755 and entry.kind == FILE


@FORMATS
def test_data_offset_of_many_members(fmt: int) -> None:
    """data_offset..+size is exactly each member's content, for sizes around block edges."""
    rng = random.Random(1)
    sizes = [0, 1, 511, 512, 513, 1023, 1024, 1025, 4096, 70000] + [
        rng.randrange(0, 20000) for _ in range(150)
    ]
    contents = {f"dir/file{i:03d}": rng.randbytes(size) for i, size in enumerate(sizes)}

    def build(tar: tarfile.TarFile) -> None:
        for name, data in contents.items():
            add(tar, name, data=data)

    archive = tar_bytes(build, fmt)
    entries = scan(archive)
    assert len(entries) == len(contents)
    for entry, (name, data) in zip(entries, contents.items(), strict=True):
        assert entry.path == name.encode()
        assert entry.size == len(data)
        assert archive[entry.data_offset : entry.data_offset + entry.size] == data
        assert entry.data_offset % 512 == 0


def test_short_reads_and_every_byte_read() -> None:
    """Short reads give the same entries; the whole stream is read, trailing zeros too."""
    rng = random.Random(2)

    def build(tar: tarfile.TarFile) -> None:
        for i in range(40):
            add(tar, f"f{i}", data=rng.randbytes(rng.randrange(0, 3000)))
            add(tar, f"d{i}", tarfile.DIRTYPE)

    archive = tar_bytes(build)
    expected = scan(archive)
    for limit in (1, 7, 511, 513, 5000):
        stream = ShortReads(archive, limit, seed=limit)
        assert list(scan_tar(stream)) == expected
        assert stream.pos == len(archive)
    whole = ShortReads(archive)
    list(scan_tar(whole))
    assert whole.pos == len(archive)
    assert whole.calls <= 3  # big reads, not one per block


def test_skipping_across_chunk_boundaries() -> None:
    """A few MB member is read past in chunks; the members around it keep exact offsets."""
    rng = random.Random(3)
    big = rng.randbytes(3 * tarscan.CHUNK + 12345)
    small = [rng.randbytes(n) for n in (100, 700, 1500)]

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "a", data=small[0])
        add(tar, "big", data=big)
        add(tar, "b", data=small[1])
        add(tar, "big2", data=big[: tarscan.CHUNK - 512])
        add(tar, "c", data=small[2])

    archive = tar_bytes(build)
    for stream in (io.BytesIO(archive), ShortReads(archive, 300_000)):
        entries = list(scan_tar(stream))
        assert [e.path for e in entries] == [b"a", b"big", b"b", b"big2", b"c"]
        for entry in entries:
            assert len(archive[entry.data_offset : entry.data_offset + entry.size]) == entry.size
        assert archive[entries[1].data_offset : entries[1].data_offset + entries[1].size] == big
        assert archive[entries[2].data_offset :][:700] == small[1]
        assert archive[entries[4].data_offset :][:1500] == small[2]


# -- names (A8) ----------------------------------------------------------------------------


def long_path(length: int) -> str:
    parts, total = [], 0
    while total < length:
        part = "d" * min(40, length - total - 1) if length - total > 41 else "f" * (length - total)
        parts.append(part)
        total += len(part) + 1
    return "/".join(parts)[:length]


@FORMATS
def test_a8_long_path_and_link(fmt: int) -> None:
    """A8: a 300-byte path and link target via GNU L/K (gnu) or PAX path/linkpath (pax)."""
    name = long_path(300)
    target = "t/" + "x" * 298
    assert len(name) == 300 and len(target) == 300

    def build(tar: tarfile.TarFile) -> None:
        add(tar, name, data=b"content")
        add(tar, name + "-l", tarfile.SYMTYPE, linkname=target)
        add(tar, name + "-h", tarfile.LNKTYPE, linkname=name)
        add(tar, "short", data=b"s")

    archive = tar_bytes(build, fmt)
    file, symlink, hard, short = scan(archive)
    assert file.path == name.encode()
    assert archive[file.data_offset : file.data_offset + 7] == b"content"
    assert (symlink.path, symlink.linkname) == (name.encode() + b"-l", target.encode())
    assert (hard.path, hard.linkname) == (name.encode() + b"-h", name.encode())
    assert short.path == b"short"  # extension headers applied to one entry only
    assert file.header_offset == 0 and short.header_offset > hard.header_offset


def test_a8_ustar_prefix() -> None:
    """A8: the ustar prefix field (155 bytes) is joined with the name by a slash."""
    name = "p" * 150 + "/" + "n" * 99
    archive = tar_bytes(lambda tar: add(tar, name, data=b"z"), tarfile.USTAR_FORMAT)
    (entry,) = scan(archive)
    assert entry.path == name.encode() and len(entry.path) == 250
    assert archive[345:350] == b"ppppp"  # really written with the prefix field


def test_a8_old_gnu_header_ignores_prefix_area() -> None:
    """Old GNU headers ('ustar  ' magic) keep atime/ctime where ustar has the prefix."""
    block = header(b"name", magic=b"ustar  \x00", raw={345: b"00000000017\x00", 357: b"17\x00"})
    (entry,) = scan(block + END)
    assert entry.path == b"name"
    (posix,) = scan(header(b"name", prefix=b"pre") + END)
    assert posix.path == b"pre/name"


@FORMATS
def test_a8_non_utf8_name_kept(fmt: int) -> None:
    """A8: names are raw bytes; b'caf\\xe9' (Latin-1) is not decoded or replaced."""
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    archive = tar_bytes(
        lambda tar: add(tar, name, data=b"x", linkname=""), fmt, errors="surrogateescape"
    )
    (entry,) = scan(archive)
    assert entry.path == b"caf\xe9"


def test_a8_pax_raw_path_and_linkpath() -> None:
    """A8: PAX path and linkpath values are taken as bytes, exactly."""
    archive = (
        pax([(b"path", b"dir/\xff\xfe name\n2"), (b"linkpath", b"\xc3\xa9t\xe9")])
        + header(b"short", typeflag=b"2", linkname=b"other")
        + END
    )
    (entry,) = scan(archive)
    assert entry.path == b"dir/\xff\xfe name\n2"
    assert (entry.kind, entry.linkname) == (SYMLINK, b"\xc3\xa9t\xe9")
    assert entry.header_offset == 0


def test_a8_gnu_longname_wins_over_pax_path_and_empty_values_unset() -> None:
    """Go applies the PAX records first, then a non-empty GNU long name or link over them."""
    longname = member(b"././@LongLink", b"from-gnu\x00", typeflag=b"L")
    (entry,) = scan(longname + pax([(b"path", b"from-pax")]) + header(b"h") + END)
    assert entry.path == b"from-gnu"
    (entry,) = scan(pax([(b"path", b"from-pax")]) + longname + header(b"h") + END)
    assert entry.path == b"from-gnu"
    longlink = member(b"././@LongLink", b"gnu-target", typeflag=b"K")
    archive = pax([(b"linkpath", b"pax-target")]) + longlink + header(b"l", typeflag=b"2")
    assert scan(archive + END)[0].linkname == b"gnu-target"
    empty = member(b"././@LongLink", b"\x00", typeflag=b"L")  # an empty long name is none
    (entry,) = scan(empty + pax([(b"path", b"from-pax")]) + header(b"h") + END)
    assert entry.path == b"from-pax"
    (entry,) = scan(pax([(b"path", b""), (b"uid", b"")]) + header(b"h", uid=5) + END)
    assert (entry.path, entry.uid) == (b"h", 5)


def test_extension_headers_apply_to_next_entry_only() -> None:
    archive = (
        member(b"././@LongLink", b"long/name\x00", typeflag=b"L")
        + pax([(b"mtime", b"5.5"), (b"uid", b"77")])
        + member(b"first", b"1")
        + member(b"second", b"2", uid=3)
        + END
    )
    first, second = scan(archive)
    assert (first.path, first.mtime_ns, first.uid, first.header_offset) == (
        b"long/name",
        5_500_000_000,
        77,
        0,
    )
    assert (second.path, second.mtime_ns, second.uid) == (b"second", MTIME * 10**9, 3)
    assert second.header_offset == archive.index(header(b"second", size=1, uid=3))


# -- PAX values (A4, A6, A7, A10) ----------------------------------------------------------


def test_a4_large_uid_gid_pax_and_base256() -> None:
    """A4: uid/gid beyond the octal field: PAX decimal and GNU base-256."""

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "big", data=b"b", uid=2**40, gid=2**33 + 5)

    (entry,) = scan(tar_bytes(build, tarfile.PAX_FORMAT))
    assert (entry.uid, entry.gid) == (2**40, 2**33 + 5)
    archive = tar_bytes(build, tarfile.GNU_FORMAT)
    assert archive[108] == 0x80  # base-256 in the header itself
    (entry,) = scan(archive)
    assert (entry.uid, entry.gid) == (2**40, 2**33 + 5)


def test_a4_base256_size_and_mtime() -> None:
    size_field = b"\x80" + (5).to_bytes(11, "big")
    mtime_field = b"\x80" + (2**33).to_bytes(11, "big")
    block = header(b"f", raw={124: size_field, 136: mtime_field})
    (entry,) = scan(block + padded(b"hello") + END)
    assert (entry.size, entry.mtime_ns) == (5, 2**33 * 10**9)


def test_a6_mtime_nanoseconds_exact() -> None:
    """A6: the fractional PAX mtime is kept to the nanosecond, without float rounding."""
    cases = {
        b"1700000000.123456789": 1700000000123456789,
        b"1700000000.5": 1700000000500000000,
        b"1700000000": 1700000000000000000,
        b"1700000000.": 1700000000000000000,
        b"1700000000.1234567899999": 1700000000123456789,
        b"-1.25": -1250000000,
        b"0.000000001": 1,
    }
    for value, expected in cases.items():
        (entry,) = scan(pax([(b"mtime", value)]) + member(b"f", b"x") + END)
        assert entry.mtime_ns == expected, value


def test_a6_mtime_from_tarfile_pax_headers() -> None:
    def build(tar: tarfile.TarFile) -> None:
        add(tar, "f", data=b"x", pax_headers={"mtime": "1700000000.999999999"})

    (entry,) = scan(tar_bytes(build))
    assert entry.mtime_ns == 1700000000999999999


CAPABILITY = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def test_a7_xattrs_binary_and_empty() -> None:
    """A7: SCHILY.xattr values are bytes: NULs, newlines, '=' and an empty value kept."""
    archive = (
        pax(
            [
                (b"SCHILY.xattr.security.capability", CAPABILITY),
                (b"SCHILY.xattr.user.empty", b""),
                (b"SCHILY.xattr.user.odd", b"a=b\nc\x00\xff"),
                (b"SCHILY.xattr.user.\xe9", b"latin"),
            ]
        )
        + member(b"bin/ping", b"ELF")
        + member(b"other", b"")
        + END
    )
    ping, other = scan(archive)
    assert ping.xattrs == {
        b"security.capability": CAPABILITY,
        b"user.empty": b"",
        b"user.odd": b"a=b\nc\x00\xff",
        b"user.\xe9": b"latin",
    }
    assert other.xattrs is None


def test_a7_xattrs_from_tarfile() -> None:
    def build(tar: tarfile.TarFile) -> None:
        add(tar, "f", data=b"x", pax_headers={"SCHILY.xattr.user.mime": "text/plain"})

    (entry,) = scan(tar_bytes(build))
    assert entry.xattrs == {b"user.mime": b"text/plain"}


def test_a7_libarchive_xattr_records_ignored_as_by_go() -> None:
    """A7: xattrs come from SCHILY.xattr.* alone. Go and the engines ignore libarchive's
    LIBARCHIVE.xattr.* records (bsdtar writes a SCHILY.xattr.* record next to each)."""
    archive = (
        pax(
            [
                (b"LIBARCHIVE.xattr.user.a%20b", b"AAECAw"),  # unpadded base64 of 00 01 02 03
                (b"LIBARCHIVE.xattr.security.capability", b"AQAAAgAgAAAAAAAAAAAAAAAAAAA="),
                (b"SCHILY.xattr.security.capability", CAPABILITY),
                (b"LIBARCHIVE.xattr.user.x", b"!!"),  # not even base64: never looked at
            ]
        )
        + member(b"f")
        + END
    )
    (entry,) = scan(archive)
    assert entry.xattrs == {b"security.capability": CAPABILITY}


def test_pax_size_and_device_records() -> None:
    """PAX size sets the data size; SCHILY.devmajor/devminor are ignored, as by Go (the
    device numbers come from the header, whose fields hold any Linux dev_t: T5)."""
    archive = (
        pax([(b"SCHILY.devmajor", b"300"), (b"SCHILY.devminor", b"70000")])
        + header(b"dev/x", typeflag=b"3", devmajor=1, devminor=2)
        + pax([(b"size", b"3")])
        + header(b"f", size=999)
        + padded(b"abc")
        + member(b"g", b"after")
        + END
    )
    dev, file, after = scan(archive)
    assert (dev.kind, dev.devmajor, dev.devminor) == (CHARDEV, 1, 2)
    assert (file.size, archive[file.data_offset : file.data_offset + 3]) == (3, b"abc")
    assert archive[after.data_offset : after.data_offset + 5] == b"after"


def test_a10_global_header_changes_nothing() -> None:
    """A10: a PAX 'g' header makes no entry and its path/mtime/uid apply to nothing."""
    archive = (
        pax([(b"path", b"evil"), (b"mtime", b"1.5"), (b"uid", b"9")], typeflag=b"g")
        + member(b"a", b"1")
        + member(b"b", b"2")
        + END
    )
    a, b = scan(archive)
    assert (a.path, a.mtime_ns, a.uid, a.header_offset) == (b"a", MTIME * 10**9, 0, 1024)
    assert b.path == b"b"

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "real", data=b"r")

    archive = tar_bytes(build, pax_headers={"path": "renamed", "comment": "c"})
    assert archive[156:157] == b"g"
    (entry,) = scan(archive)
    assert entry.path == b"real"


def test_global_header_ends_the_pending_extension_headers(caplog: pytest.LogCaptureFixture) -> None:
    """Go hands a 'g' header over as an entry of its own: the 'x' and 'L' headers before it
    describe no entry and are dropped (with a warning); the next entry is on its own."""
    longname = member(b"././@LongLink", b"long\x00", typeflag=b"L")
    ext = pax([(b"path", b"p")]) + longname
    archive = ext + pax([(b"path", b"g")], b"g") + member(b"x") + END
    with caplog.at_level("WARNING", logger="ocifs.tarscan"):
        (entry,) = scan(archive)
    assert (entry.path, entry.header_offset) == (b"x", len(ext) + 1024)
    assert "describe no entry" in caplog.text
    expect_error(pax([(b"uid", b"x")], b"g") + member(b"x") + END, "bad PAX uid", "offset 0")


# -- other typeflags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typeflag", "what"),
    [(b"7", "a contiguous file"), (b"D", "a GNU dumpdir"), (b"V", "a GNU volume label")],
)
def test_typeflags_the_engines_refuse(typeflag: bytes, what: str) -> None:
    """Go's reader hands '7', 'D' and 'V' entries over; containerd, Docker, podman and umoci
    then fail ("unhandled tar header type"), so the layer is refused here too, saying why."""
    archive = member(b"ok") + member(b"odd", b"data", typeflag=typeflag, magic=GNU_MAGIC) + END
    message = expect_error(archive)
    assert message == (
        f"unsupported typeflag {typeflag!r} ({what}, which container engines refuse too)"
        " at offset 512 (entry 'odd')"
    )


def test_nul_typeflag_with_a_trailing_slash_is_a_directory() -> None:
    """Pre-POSIX tars wrote directories as NUL-typeflag entries ending in '/': Go reads them
    as directories (in any format) with no data; a '0' entry is a file whatever its name."""
    archive = (
        member(b"olddir/", b"", typeflag=b"\x00", magic=b"")
        + member(b"olddir2/", b"", typeflag=b"0", magic=b"")
        + member(b"olddir/file", b"data", typeflag=b"\x00", magic=b"")
        + member(b"ustar/", b"", typeflag=b"\x00")
        + END
    )
    old1, old2, file, ustar = scan(archive)
    assert (old1.kind, old2.kind, file.kind, ustar.kind) == (DIR, FILE, FILE, DIR)
    assert file.size == 4 and old1.size == 0
    # The directory's size field skips nothing: the next header follows right away.
    archive = header(b"d/", typeflag=b"\x00", size=100) + member(b"next", b"N") + END
    directory, nxt = scan(archive)
    assert (directory.kind, directory.size, nxt.header_offset) == (DIR, 0, 512)


def test_hardlink_size_field_has_no_data() -> None:
    """Data follows only regular files: a hardlink's size field does not skip blocks."""
    archive = (
        header(b"h", typeflag=b"1", size=1000, linkname=b"target")
        + header(b"l", typeflag=b"2", size=5, linkname=b"t")
        + member(b"next", b"N")
        + END
    )
    hard, sym, nxt = scan(archive)
    assert (hard.kind, hard.size, hard.linkname) == (HARDLINK, 0, b"target")
    assert (sym.kind, sym.size) == (SYMLINK, 0)
    assert nxt.path == b"next" and nxt.header_offset == 1024


def test_signed_checksum_accepted() -> None:
    """Old tars summed the header as signed chars; both sums are accepted."""
    block = header(b"\xe9\xe9\xff", signed_checksum=True)
    assert block != header(b"\xe9\xe9\xff")
    (entry,) = scan(block + END)
    assert entry.path == b"\xe9\xe9\xff"


def test_header_byte_sum_is_exact() -> None:
    """The scanner sums a header through Adler-32 in two halves: the same sum as ``sum``
    for every byte value, at both extremes and for random blocks (B4's checksum)."""
    rng = random.Random(11)
    blocks = [bytes(512), b"\xff" * 512, b"\x01" * 512, b"\xff" * 256 + bytes(256)]
    blocks += [rng.randbytes(512) for _ in range(200)]
    for block in blocks:
        assert tarscan._byte_sum(block) == sum(block)


# -- tar streams as the engines read them (T1, T2) -----------------------------------------
# Go's archive/tar (containerd, Docker, podman, umoci) ends an archive normally at the end of
# input at a header boundary, inside a member's padding (tryReadFull returns io.EOF), after
# one zero block, or at two zero blocks (nothing after them is read); end of input inside a
# header or inside member data is io.ErrUnexpectedEOF, a zero block then a header ErrHeader.

LAST = bytes(range(256)) * 12  # 3072 bytes


def entry_fields(entries: list[TarEntry]) -> list[tuple[bytes, str, int, int]]:
    return [(e.path, e.kind, e.size, e.data_offset) for e in entries]


def test_t1_end_at_a_header_boundary() -> None:
    """T1: input that ends where the next header would start is a normal end."""
    (a, b) = scan(member(b"a", b"1") + member(b"b", b"22"))
    assert (a.path, b.path, b.size) == (b"a", b"b", 2)
    assert scan(header(b"d/", typeflag=b"5") + header(b"l", typeflag=b"2", linkname=b"t"))
    assert scan(b"") == []
    assert scan(END) == []


@pytest.mark.parametrize("size", [1, 100, 511, 512, 513, 3000])
def test_t1_end_right_after_member_data(size: int) -> None:
    """T1: input that ends right after the last member's data, with no padding and no zero
    blocks (what ``umoci insert`` 0.4.7 writes) is a normal end: every entry, exact offsets,
    every byte read, whatever the reads return."""
    whole = member(b"a", b"1") + member(b"last", LAST[:size]) + END
    cut = whole[: 1024 + 512 + size]
    expected = entry_fields(scan(whole))
    assert entry_fields(scan(cut)) == expected
    last = scan(cut)[-1]
    assert cut[last.data_offset :] == LAST[:size]
    for limit in (1, 7, 513):
        stream = ShortReads(cut, limit, seed=size)
        assert entry_fields(list(scan_tar(stream))) == expected
        assert stream.pos == len(cut)


def test_t1_end_inside_padding() -> None:
    """T1: input that ends anywhere inside the last member's padding is a normal end."""
    whole = member(b"a", b"1") + member(b"last", LAST[:700]) + END
    expected = entry_fields(scan(whole))
    for end in range(1024 + 512 + 700, 1024 + 512 + 1024):
        assert entry_fields(scan(whole[:end])) == expected, end
    # the padding's bytes are not looked at (Go discards them)
    dirty = bytearray(whole[: 1024 + 512 + 1000])
    dirty[1024 + 512 + 700 :] = b"\xff" * 300
    assert entry_fields(scan(bytes(dirty))) == expected


def test_t1_end_inside_member_data_is_refused() -> None:
    """T1: input that ends inside a member's data is an error naming the entry."""
    whole = member(b"a", b"1") + member(b"last", LAST[:700]) + END
    for end in (1024 + 512, 1024 + 513, 1024 + 512 + 699):
        message = expect_error(whole[:end], "truncated in member data")
        assert message == "truncated in member data at offset 1024 (entry 'last')"


def test_t1_end_inside_a_header_is_refused() -> None:
    """T1: input that ends inside a header block is an error."""
    whole = member(b"a", b"1") + member(b"b", b"2") + END
    for end in (1025, 1100, 1535):
        assert expect_error(whole[:end]) == "truncated in a header at offset 1024 (after entry 'a')"


def test_t1_end_after_sparse_member_data() -> None:
    """T1: a sparse member's data may end the input too (old GNU and PAX 1.0 formats)."""
    data = b"0123456789"
    old = old_gnu_sparse([(0, 4), (10, 6)], 30, data)
    (entry,) = scan(old[: 512 + len(data)])
    assert (entry.size, entry.sparse) == (30, ((0, 4), (10, 6)))
    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"ten"),
        (b"GNU.sparse.realsize", b"100"),
    ]
    archive = pax(records) + member(b"GNUSparseFile.0/ten", padded(b"1\n0\n4\n") + b"wxyz")
    (entry,) = scan(archive[: len(archive) - 508])
    assert (entry.path, entry.size, entry.sparse) == (b"ten", 100, ((0, 4),))


def test_t1_extension_headers_that_end_the_input_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """T1: extension headers followed by the end of input (or by zero blocks, or cut in
    their padding) describe no entry; Go drops them, and so does ocifs, with a warning.
    Their data must be complete: a cut in it is an error."""
    first = member(b"a", b"1")
    longname = member(b"././@LongLink", b"long/name\x00", typeflag=b"L")
    ext = pax([(b"path", b"p")])
    cases = [first + ext, first + ext + END, first + longname, first + ext[:-100]]
    for archive in cases:
        caplog.clear()
        with caplog.at_level("WARNING", logger="ocifs.tarscan"):
            assert [e.path for e in scan(archive)] == [b"a"]
        assert "at offset 1024 describe no entry" in caplog.text
    expect_error(first + ext[:517], "truncated in the data of a PAX header", "offset 1024")
    expect_error(first + longname[:515], "truncated in the data of a GNU long name header")


def test_t2_one_zero_block_then_eof() -> None:
    """T2: one zero block and then the end of input is a normal end."""
    archive = member(b"a", b"1") + bytes(512)
    assert [e.path for e in scan(archive)] == [b"a"]
    assert scan(bytes(512)) == []


def test_t2_zero_block_then_header_is_refused() -> None:
    """T2, B4: a zero block followed by anything but a zero block is an error, as in Go
    (ErrHeader): one zero block hides no header (CPython's tarfile would stop at it)."""
    good = member(b"a", b"1")
    message = expect_error(good + bytes(512) + member(b"hidden", b"2") + END)
    assert message == (
        "non-zero block at offset 1536 after the zero block at offset 1024 (after entry 'a')"
    )
    expect_error(good + bytes(512) + b"\x01" + bytes(511) + END, "non-zero block")


def test_t2_zero_block_then_partial_block_is_refused() -> None:
    """T2: a zero block followed by less than a block is an error (Go: ErrUnexpectedEOF),
    even when those bytes are zeros."""
    for tail in (bytes(1), bytes(100), bytes(511)):
        message = expect_error(member(b"a", b"1") + bytes(512) + tail)
        assert message == "truncated in the end-of-archive marker at offset 1536 (after entry 'a')"


def test_t2_two_zero_blocks_then_anything(caplog: pytest.LogCaptureFixture) -> None:
    """T2: after two zero blocks the archive has ended: Go reads nothing further and the
    engines then read the rest for the diff_id only; ocifs reads every byte to the end (its
    caller hashes them), makes no entry of them, and notes them in the log."""
    good = member(b"a", b"1")
    trailing = member(b"hidden", b"2") + b"junk" + bytes(3 * tarscan.CHUNK) + b"\xff"
    archive = good + END + trailing
    for stream in (ShortReads(archive), ShortReads(archive, 100_000, seed=1)):
        with caplog.at_level("INFO", logger="ocifs.tarscan"):
            assert [e.path for e in scan_tar(stream)] == [b"a"]
        assert stream.pos == len(archive)
    assert f"ignoring {len(trailing)} bytes after the end-of-archive marker" in caplog.text
    assert "the first nonzero one at offset 2048" in caplog.text
    # more than two zero blocks: a normal end too
    assert [e.path for e in scan(good + bytes(512 * 7))] == [b"a"]


def test_t2_end_marker_with_trailing_zero_padding() -> None:
    """T2: tarfile (like GNU tar) pads the archive to a 10 KiB record with zero blocks."""
    archive = tar_bytes(lambda tar: add(tar, "x", data=b"1"))
    assert len(archive) == 10240
    assert [e.path for e in scan(archive)] == [b"x"]
    assert scan(member(b"a") + bytes(1024) + bytes(3 * tarscan.CHUNK + 7))[0].path == b"a"


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_t2_diff_id_covers_bytes_after_the_end(tmp_path: Path, compression: str) -> None:
    """T2: the diff_id is the hash of the whole uncompressed stream, bytes after the
    end-of-archive blocks included: they index, and a diff_id without them fails."""
    head = member(b"a", b"content") + END
    tar = head + b"trailing bytes the engines hash too" + bytes(700)
    layer = blob_layer(tmp_path, tar, compression)
    index = index_layer(layer)
    assert [e.path for e in index.entries] == [b"a"] and index.uncompressed_size == len(tar)
    short = dataclasses.replace(layer, diff_id=sha256_digest(head))
    with pytest.raises(LayerError, match="diff_id mismatch"):
        index_layer(short)


# -- damage (B4) ---------------------------------------------------------------------------


def test_b4_bad_checksum() -> None:
    archive = bytearray(member(b"usr/bin/ls", b"ELF") + member(b"usr/bin/cat", b"x") + END)
    archive[1024 + 5] ^= 0x01  # a name byte of the second header
    message = expect_error(bytes(archive), "checksum", "offset 1024", "'usr/bin/ls'")
    assert message == "bad header checksum at offset 1024 (after entry 'usr/bin/ls')"
    first = bytearray(archive)
    first[100] ^= 0x04
    assert expect_error(bytes(first), "checksum") == "bad header checksum at offset 0"
    broken = bytearray(header(b"f"))
    broken[148:156] = b"zz\x00     "
    expect_error(bytes(broken) + END, "checksum", "offset 0")


def test_b4_truncated() -> None:
    archive = member(b"a", b"1") + member(b"file", b"x" * 3000) + END
    expect_error(archive[: 1024 + 512 + 1000], "truncated in member data", "'file'")
    expect_error(archive[: 1024 + 512 + 2999], "truncated in member data", "offset 1024")
    expect_error(archive[: 1024 + 100], "truncated in a header", "offset 1024", "'a'")
    long = member(b"././@LongLink", b"n" * 2000, typeflag=b"L")
    expect_error(long[:1000], "truncated", "long name", "offset 0")


def test_b4_bad_numbers() -> None:
    negative = b"\xff" * 12
    expect_error(header(b"f", raw={124: negative}) + END, "size", "negative", "offset 0")
    overflow = b"\x80" + (2**63).to_bytes(11, "big")  # Go's base-256 overflows int64
    expect_error(header(b"f", raw={124: overflow}) + END, "bad size field (over 64 bits)")
    absurd = b"\x80" + (2**62 + 1).to_bytes(11, "big")
    expect_error(header(b"f", raw={124: absurd}) + END, "absurd size 4611686018427387905")
    expect_error(header(b"f", raw={100: b"07x4\x00"}) + END, "bad mode", "'f'")
    expect_error(header(b"g", raw={108: b"\xff" * 8}) + END, "bad uid", "negative", "'g'")
    expect_error(pax([(b"size", b"-1")]) + member(b"f") + END, "negative size -1", "'f'")
    expect_error(pax([(b"size", b"9" * 30)]) + member(b"f") + END, "bad PAX size")
    expect_error(pax([(b"uid", b"1e3")]) + member(b"f") + END, "bad PAX uid", "'f'")
    expect_error(pax([(b"mtime", b"1.2.3")]) + member(b"f") + END, "bad PAX mtime")
    expect_error(pax([(b"mtime", b"9x")]) + member(b"f") + END, "bad PAX mtime")


def test_b4_oversized_extension_headers() -> None:
    """B4: GNU long names and links and PAX headers over 1 MiB are refused, as Go refuses
    them (ErrFieldTooLong); 1 MiB exactly is read."""
    big = tarscan.MAX_SPECIAL + 1
    expect_error(header(b"././@LongLink", typeflag=b"L", size=big) + END, "long name", "1048577")
    expect_error(header(b"././@LongLink", typeflag=b"K", size=big) + END, "long link")
    name = b"./" * (tarscan.MAX_SPECIAL // 2 - 1) + b"n"  # clean, it is "/n": within PATH_MAX
    ok = member(b"././@LongLink", name + b"\x00", typeflag=b"L")
    (entry,) = scan(ok + member(b"x") + END)
    assert entry.path == name and len(name) == tarscan.MAX_SPECIAL - 1
    expect_error(header(b"p", typeflag=b"x", size=big) + END, "PAX header of 1048577 bytes")
    expect_error(header(b"p", typeflag=b"g", size=big) + END, "PAX header")
    (entry,) = scan(pax([(b"comment", b"c" * (tarscan.MAX_SPECIAL - 20))]) + member(b"f") + END)
    assert entry.path == b"f"


def test_b4_unknown_typeflag() -> None:
    message = expect_error(member(b"ok") + member(b"weird", b"", typeflag=b"Q") + END)
    assert message == "unsupported typeflag b'Q' at offset 512 (entry 'weird')"
    expect_error(member(b"m", b"", typeflag=b"M") + END, "typeflag b'M'")


def test_b4_malformed_pax_records() -> None:
    def pax_raw(data: bytes) -> bytes:
        return member(b"PaxHeader", data, typeflag=b"x") + member(b"f") + END

    good = pax_record(b"path", b"p")
    assert scan(pax_raw(good))[0].path == b"p"
    for bad in (
        b"11 path=p\n",  # length too long for the data
        b"8 path=p\n",  # length too short: the record does not end in a newline
        b"x path=p\n",  # length not a number
        b"10 path:p\n",  # no '='
        b"5 =p\n",  # empty key
        good + b"\x00\x00",  # trailing NULs
        b"08path=p\n",  # no space after the length
    ):
        expect_error(pax_raw(bad), "PAX", "offset 0")
    assert scan(pax_raw(b""))[0].path == b"f"
    expect_error(pax([(b"SCHILY.xattr.", b"v")]) + member(b"f") + END, "xattr record without")


def test_b4_bad_names() -> None:
    expect_error(member(b"") + END, "empty name", "offset 0")
    expect_error(pax([(b"path", b"a\x00b")]) + member(b"f") + END, "NUL byte in the PAX path")
    linkpath = pax([(b"linkpath", b"a\x00b")]) + header(b"l", typeflag=b"2") + END
    expect_error(linkpath, "NUL byte in the PAX linkpath value", "offset 0")
    expect_error(pax([(b"uname", b"r\x00t")]) + member(b"f") + END, "NUL byte in the PAX uname")
    expect_error(pax([(b"a\x00b", b"v")]) + member(b"f") + END, "NUL byte in the key")
    long = member(b"././@LongLink", b"l\x00ong", typeflag=b"L")  # a long name ends at a NUL
    assert scan(long + member(b"f") + END)[0].path == b"l"


def test_never_another_exception_on_random_damage() -> None:
    """Flipped bytes and cuts anywhere give entries or TarFormatError, nothing else."""
    rng = random.Random(4)

    def build(tar: tarfile.TarFile) -> None:
        add(tar, "d" * 120, data=b"a" * 700, pax_headers={"SCHILY.xattr.user.x": "v"})
        add(tar, "l", tarfile.SYMTYPE, linkname="t" * 200)
        add(tar, "f", data=b"b" * 100, pax_headers={"mtime": "12.5"})

    archives = [tar_bytes(build), tar_bytes(build, tarfile.GNU_FORMAT)]
    sparse_header = bytearray(header(b"s", typeflag=b"S", size=10, magic=b"ustar  \x00"))
    sparse_header[386:410] = octal(0, 12) + octal(10, 12)
    sparse_header[483:495] = octal(20, 12)
    archives.append(checksummed(sparse_header) + padded(b"x" * 10) + END)
    for _ in range(1500):
        archive = bytearray(rng.choice(archives))
        for _ in range(rng.randint(1, 3)):
            archive[rng.randrange(0, len(archive))] = rng.randrange(256)
        # re-checksum the damaged header so that damage reaches the field parsers
        start = rng.randrange(0, len(archive) // 512) * 512
        archive[start : start + 512] = checksummed(archive[start : start + 512])
        if rng.random() < 0.3:
            archive = archive[: rng.randrange(len(archive))]
        try:
            scan(bytes(archive))
        except TarFormatError as error:
            assert "\n" not in str(error)


# -- sparse files (A9) ---------------------------------------------------------------------


def reconstruct(archive: bytes, entry: TarEntry) -> bytes:
    """The logical content of a sparse entry, from its map and packed data."""
    assert entry.sparse is not None
    out = bytearray(entry.size)
    position = entry.data_offset
    for start, length in entry.sparse:
        out[start : start + length] = archive[position : position + length]
        position += length
    return bytes(out)


def make_sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> bytes:
    subprocess.run(["truncate", "-s", str(size), str(path)], check=True)
    for offset, data in pieces:
        subprocess.run(
            [
                "dd",
                f"of={path}",
                "bs=4096",
                f"seek={offset // 4096}",
                "conv=notrunc",
                "status=none",
            ],
            input=data,
            check=True,
            capture_output=True,
        )
    return path.read_bytes()


GNU_TAR_SPARSE = [
    ["--format=gnu"],
    ["--format=pax", "--sparse-version=0.0"],
    ["--format=pax", "--sparse-version=0.1"],
    ["--format=pax", "--sparse-version=1.0"],
]


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("options", GNU_TAR_SPARSE, ids=["gnu", "pax0.0", "pax0.1", "pax1.0"])
def test_a9_sparse_from_gnu_tar(tmp_path: Path, options: list[str]) -> None:
    """A9: GNU tar sparse archives (old GNU 'S' and PAX 0.0/0.1/1.0) rebuild the file."""
    version = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    if "GNU tar" not in version:
        pytest.skip("tar is not GNU tar")
    rng = random.Random(5)
    block = 4096
    # many segments: the old GNU format needs sparse extension blocks beyond 4
    pieces = [(i * 16 * block, rng.randbytes(block * rng.randint(1, 2))) for i in range(1, 30)]
    files = {
        "hole-at-end": (64 * 16 * block, pieces),
        "data-at-end": (30 * 16 * block, [*pieces, (30 * 16 * block - block, b"E" * block)]),
        "data-at-start": (40 * block, [(0, b"S" * block), (20 * block, b"M" * 100)]),
    }
    contents = {}
    for name, (size, file_pieces) in files.items():
        contents[name] = make_sparse(tmp_path / name, size, file_pieces)
    (tmp_path / "plain").write_bytes(b"plain file")
    archive_path = tmp_path / "out.tar"
    subprocess.run(
        [
            "tar",
            *options,
            "--sparse",
            "-cf",
            str(archive_path),
            "-C",
            str(tmp_path),
            "hole-at-end",
            "plain",
            "data-at-end",
            "data-at-start",
        ],
        check=True,
    )
    archive = archive_path.read_bytes()
    entries = {e.path: e for e in scan(archive)}
    assert set(entries) == {b"hole-at-end", b"plain", b"data-at-end", b"data-at-start"}
    holes = os.stat(tmp_path / "hole-at-end").st_blocks * 512 < len(contents["hole-at-end"])
    for name, data in contents.items():
        entry = entries[name.encode()]
        assert (entry.kind, entry.size) == (FILE, len(data))
        assert entry.sparse is not None
        if holes:
            assert len(entry.sparse) > 1
        assert reconstruct(archive, entry) == data
        assert all(length > 0 for _, length in entry.sparse)
    plain = entries[b"plain"]
    assert plain.sparse is None
    assert archive[plain.data_offset : plain.data_offset + plain.size] == b"plain file"


def old_gnu_sparse(
    segments: list[tuple[int, int]], realsize: int, data: bytes, name: bytes = b"s"
) -> bytes:
    """An old GNU 'S' header with extension blocks as needed, then the data."""
    block = bytearray(header(name, typeflag=b"S", size=len(data), magic=b"ustar  \x00"))
    block[483:495] = octal(realsize, 12)
    first, rest = segments[:4], segments[4:]
    for i, (offset, length) in enumerate(first):
        block[386 + 24 * i : 410 + 24 * i] = octal(offset, 12) + octal(length, 12)
    block[482] = 1 if rest else 0
    out = checksummed(block)
    while rest:
        ext = bytearray(512)
        chunk, rest = rest[:21], rest[21:]
        for i, (offset, length) in enumerate(chunk):
            ext[24 * i : 24 * i + 24] = octal(offset, 12) + octal(length, 12)
        ext[504] = 1 if rest else 0
        out += bytes(ext)
    return out + padded(data)


def test_a9_old_gnu_sparse_handmade() -> None:
    segments = [(i * 1000, 10) for i in range(30)]
    data = bytes(range(256)) + bytes(44)
    archive = old_gnu_sparse(segments, 40000, data) + member(b"after", b"A") + END
    sparse, after = scan(archive)
    assert (sparse.kind, sparse.size, sparse.sparse) == (FILE, 40000, tuple(segments))
    assert sparse.data_offset == 512 * 3  # header + 2 extension blocks
    assert archive[sparse.data_offset : sparse.data_offset + 300] == data
    assert archive[after.data_offset : after.data_offset + 1] == b"A"


def test_a9_sparse_map_validation() -> None:
    expect_error(old_gnu_sparse([(0, 10), (5, 10)], 100, b"x" * 20), "overlap", "'s'")
    expect_error(old_gnu_sparse([(10, 10), (0, 10)], 100, b"x" * 20), "out of order")
    expect_error(old_gnu_sparse([(0, 10), (95, 10)], 100, b"x" * 20), "beyond the end")
    expect_error(old_gnu_sparse([(0, 10)], 100, b"x" * 20), "covers 10 bytes but 20")

    def pax01(map_text: bytes, size: int, data: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
        blocks = str(len(map_text.split(b",")) // 2).encode()
        records = [
            (b"GNU.sparse.size", str(size).encode()),
            (b"GNU.sparse.numblocks", blocks),
            (b"GNU.sparse.name", b"real/name"),
            (b"GNU.sparse.map", map_text),
            *extra,
        ]
        return pax(records) + member(b"GNUSparseFile.1/name", data) + END

    (entry,) = scan(pax01(b"0,3,10,2", 20, b"abcde", []))
    assert (entry.path, entry.size, entry.sparse) == (b"real/name", 20, ((0, 3), (10, 2)))
    odd = pax01(b"0,3,10", 20, b"abc", [])
    expect_error(odd, "numblocks is 1 but the map has 3", "'real/name'")
    expect_error(pax01(b"0,3,x,2", 20, b"abcde", []), "bad number in GNU.sparse.map")
    expect_error(pax01(b"0,3,2,2", 20, b"abcde", []), "overlap")
    expect_error(pax01(b"0,-3,10,2", 20, b"abcde", []), "negative number in the sparse map")
    expect_error(pax01(b"0,3,10,2", 20, b"abcd", []), "covers 5 bytes but 4")
    expect_error(
        pax01(b"0,3,10,2", 20, b"abcde", [(b"GNU.sparse.numblocks", b"3")]), "numblocks is 3"
    )
    expect_error(  # Go needs numblocks for the 0.x formats (GNU tar always writes it)
        pax01(b"0,3,10,2", 20, b"abcde", [(b"GNU.sparse.numblocks", b"")]), "numblocks"
    )
    (signed,) = scan(pax01(b"+0,3,10,+2", 20, b"abcde", []))  # Go's ParseInt takes a sign
    assert signed.sparse == ((0, 3), (10, 2))
    (nosize,) = scan(pax01(b"0,3,3,2", 20, b"abcde", [(b"GNU.sparse.size", b"")]))
    assert (nosize.size, nosize.sparse) == (5, ((0, 3), (3, 2)))  # the stored size, as in Go

    def pax10(map_lines: bytes, data: bytes, major: bytes = b"1") -> bytes:
        records = [
            (b"GNU.sparse.major", major),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", b"ten"),
            (b"GNU.sparse.realsize", b"100"),
        ]
        stored = padded(map_lines) + data
        return pax(records) + member(b"GNUSparseFile.2/ten", stored) + END

    archive = pax10(b"2\n0\n4\n50\n2\n", b"wxyz12")
    (entry,) = scan(archive)
    assert (entry.size, entry.sparse, entry.data_offset) == (100, ((0, 4), (50, 2)), 2048)
    assert archive[2048:2054] == b"wxyz12"
    # a map of more than one block
    many = [(i * 3, 1) for i in range(33)]
    big_map = b"".join([b"%d\n" % 33] + [b"%020d\n%020d\n" % pair for pair in many])
    assert len(big_map) > 1024
    (entry,) = scan(pax10(big_map, b"q" * 33))
    assert entry.sparse == tuple(many) and entry.data_offset == 1536 + 1536
    expect_error(pax10(b"2\n0\n4\n50\n", b"wxyz12"), "sparse map", "'ten'")
    expect_error(pax10(b"2\n0\n4\nz\n2\n", b"wxyz12"), "bad number in the sparse map")
    expect_error(pax10(b"1\n0\n4\n", b"wxyz12"), "covers 4 bytes but 6")
    # An unknown version is no sparse file to Go: a plain file of the stored bytes, with the
    # header's name (GNU.sparse.name renames only the sparse files it knows).
    archive = pax10(b"2\n0\n4\n50\n2\n", b"wxyz12", major=b"2")
    (plain,) = scan(archive)
    assert (plain.path, plain.size, plain.sparse) == (b"GNUSparseFile.2/ten", 512 + 6, None)
    assert archive[plain.data_offset : plain.data_offset + 3] == b"2\n0"


def test_a9_pax_sparse_0_0_handmade() -> None:
    records = [
        (b"GNU.sparse.size", b"30"),
        (b"GNU.sparse.numblocks", b"2"),
        (b"GNU.sparse.offset", b"5"),
        (b"GNU.sparse.numbytes", b"2"),
        (b"GNU.sparse.offset", b"20"),
        (b"GNU.sparse.numbytes", b"10"),
    ]
    archive = pax(records) + member(b"zero", b"AB0123456789") + END
    (entry,) = scan(archive)
    assert (entry.path, entry.size, entry.sparse) == (b"zero", 30, ((5, 2), (20, 10)))
    assert reconstruct(archive, entry) == bytes(5) + b"AB" + bytes(13) + b"0123456789"
    swapped = [*records[:3], records[4], records[3], *records[5:]]
    expect_error(pax(swapped) + member(b"zero", b"AB0123456789") + END, "GNU.sparse")


def test_a9_sparse_map_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """B4: an endless chain of sparse extension blocks or map lines is cut off."""
    monkeypatch.setattr(tarscan, "MAX_SPARSE_SEGMENTS", 10)
    segments = [(i * 10, 1) for i in range(11)]
    expect_error(old_gnu_sparse(segments, 200, b"x" * 11) + END, "over 10 segments", "'s'")
    assert scan(old_gnu_sparse(segments[:10], 200, b"x" * 10) + END)[0].sparse == tuple(
        segments[:10]
    )
    monkeypatch.setattr(tarscan, "MAX_SPARSE_MAP", 1024)
    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.realsize", b"100"),
    ]
    endless = b"1" * 5000  # no newline ever
    expect_error(pax(records) + member(b"f", endless) + END, "sparse map runs past")


def test_octal_field_variants() -> None:
    """Octal fields: NUL or space padded, leading spaces, empty = 0; anything else fails."""
    variants = {
        b"0000755\x00": 0o755,
        b"    755 ": 0o755,
        b"755\x00\x00\x00\x00\x00": 0o755,
        b"0000755 ": 0o755,
        b"\x00" * 8: 0,
        b" " * 8: 0,
        b"755\x00junk": 0o755,
    }
    for field, expected in variants.items():
        (entry,) = scan(header(b"f", raw={100: field, 108: field}) + END)
        assert (entry.mode, entry.uid) == (expected, expected), field
    for bad in (b"7 55\x00", b"+755\x00", b"7_55\x00", b"0o755\x00", b"\t755\x00", b"789\x00"):
        expect_error(header(b"f", raw={100: bad + b"\x00" * (8 - len(bad))}) + END, "bad mode")


def test_octal_fields_trimmed_of_nuls_and_spaces_on_both_sides() -> None:
    """Go trims NULs and spaces from both ends of an octal field, then reads to the first
    NUL: leading NULs are padding too (not an empty field)."""
    for field, expected in {
        b"\x00\x00\x00755\x00": 0o755,
        b"\x00 755 \x00\x00": 0o755,
        b" \x00\x00\x00\x0017": 0o17,
    }.items():
        (entry,) = scan(header(b"f", raw={100: field, 108: field}) + END)
        assert (entry.mode, entry.uid) == (expected, expected), field
    size = b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0012"  # 10 bytes of data
    archive = header(b"f", raw={124: size}) + padded(b"0123456789") + member(b"g") + END
    f_entry, g_entry = scan(archive)
    assert (f_entry.size, g_entry.header_offset) == (10, 1024)
    # digits after a NUL are not read (Go's parseString), spaces among digits are refused
    (entry,) = scan(header(b"f", raw={100: b"\x007\x005\x00\x00\x00\x00"}) + END)
    assert entry.mode == 0o7
    expect_error(header(b"f", raw={100: b"\x007 5\x00\x00\x00\x00"}) + END, "bad mode")


def test_base256_numbers_as_go_reads_them() -> None:
    """GNU base-256 is two's complement: a negative mtime is a time before 1970 (GNU tar
    writes them so); a negative mode, uid, gid, size or device number is refused (Go reads
    it, but no engine can apply it: chown(2) takes uid -1 as "leave the owner"); more than
    63 bits is refused, as by Go, except in the mtime, which is clamped (T3)."""

    def b256(value: int, length: int) -> bytes:
        return (value % (1 << (8 * length)) | (1 << (8 * length - 1))).to_bytes(length, "big")

    assert b256(-1, 8) == b"\xff" * 8
    (entry,) = scan(header(b"f", raw={136: b256(-86400, 12), 108: b256(2**40, 8)}) + END)
    assert (entry.mtime_ns, entry.uid) == (-86400 * 10**9, 2**40)
    for offset, what in ((100, "mode"), (108, "uid"), (116, "gid")):
        message = expect_error(header(b"f", raw={offset: b256(-5, 8)}) + END)
        assert message == f"bad {what} field (negative) in header at offset 0 (entry 'f')"
    expect_error(header(b"f", raw={124: b256(-512, 12)}) + END, "negative size -512", "'f'")
    device = header(b"c", typeflag=b"3", raw={329: b256(-1, 8)})
    expect_error(device + END, "negative device number", "'c'")
    overflow = b"\x80\x00\x00\x00" + b"\xff" * 8  # 2**64 - 1: only 12-byte fields can
    expect_error(header(b"f", raw={124: overflow}) + END, "bad size field (over 64 bits)")
    # a symlink's size field is ignored, whatever it holds (Go: header-only types read no data)
    (link_entry,) = scan(header(b"l", typeflag=b"2", raw={124: b256(-1, 12)}) + END)
    assert (link_entry.kind, link_entry.size) == (SYMLINK, 0)


def test_checksum_is_octal_only() -> None:
    """Go reads the checksum field as octal only: a base-256 checksum is a bad header; a
    checksum with leading NULs or spaces is fine."""
    block = bytearray(header(b"f"))
    good = bytes(block[148:156])
    block[148:156] = b"\x00" + good[:6].lstrip(b"0").rjust(6, b" ") + b"\x00"
    assert scan(bytes(block) + END)[0].path == b"f"
    total = int(good[:6], 8)
    block[148:156] = b"\x80" + total.to_bytes(7, "big")
    expect_error(bytes(block) + END, "bad header checksum field", "offset 0")


def test_every_numeric_field_of_every_header_is_checked() -> None:
    """Go parses mode, uid, gid, size and mtime of every header (extension headers too) and
    the device fields of every non-V7 one, and refuses the archive if one is not a number."""
    bad_pax = bytearray(pax([(b"path", b"p")]))
    bad_pax[100:108] = b"9\x00\x00\x00\x00\x00\x00\x00"
    message = expect_error(checksummed(bad_pax[:512]) + bytes(bad_pax[512:]) + member(b"f") + END)
    assert message == "bad mode field (not octal) in header at offset 0"
    file_with_bad_devices = header(b"f", raw={329: b"zz\x00"})
    expect_error(file_with_bad_devices + END, "bad devmajor field (not octal)", "'f'")
    # V7 headers have no device fields: what those bytes hold is part of nothing
    (v7,) = scan(header(b"f", magic=b"", raw={329: b"zz\x00"}) + END)
    assert v7.path == b"f"


def test_header_formats_as_go_tells_them_apart() -> None:
    """A8: ustar and star have a prefix (155 and 131 bytes), GNU ('ustar  \\0') and V7 none;
    a 'ustar ' magic with another version is V7 (no device fields); GNU headers from Go
    before 1.8, which put a ustar prefix where GNU keeps atime and ctime, have that prefix
    read where those fields are not numbers (golang.org/issue/12594)."""
    star = header(b"name", prefix=b"p" * 131, raw={476: b"00000000017\x00", 508: b"tar\x00"})
    assert scan(star + END)[0].path == b"p" * 131 + b"/name"
    expect_error(header(b"n", raw={488: b"x\x00", 508: b"tar\x00"}) + END, "bad star ctime")
    old_go = header(b"name", magic=GNU_MAGIC, raw={345: b"some/prefix\x00"})
    assert scan(old_go + END)[0].path == b"some/prefix/name"
    not_ascii = header(b"name", magic=GNU_MAGIC, raw={345: b"pr\xe9fix\x00"})
    assert scan(not_ascii + END)[0].path == b"name"
    odd_version = header(b"c", typeflag=b"3", magic=b"ustar 00", devmajor=1, devminor=3)
    (device,) = scan(odd_version + END)
    assert (device.kind, device.devmajor, device.devminor) == (CHARDEV, 0, 0)
    expect_error(header(b"s", typeflag=b"S") + END, "old GNU sparse header without the GNU magic")


def test_the_last_pax_header_before_an_entry_wins() -> None:
    """Go keeps the records of the last 'x' header before an entry, not a merge of them."""
    archive = (
        pax([(b"path", b"from-first"), (b"uid", b"5")])
        + pax([(b"mtime", b"7")])
        + member(b"f", b"x", uid=1)
        + END
    )
    (entry,) = scan(archive)
    assert (entry.path, entry.uid, entry.mtime_ns, entry.header_offset) == (b"f", 1, 7 * 10**9, 0)


def test_pax_records_parse_as_go_parses_them() -> None:
    """The record length is a ParseInt: a sign and leading zeros are fine; the first '='
    splits key and value; lengths under 5 or past the data, and NULs in keys, fail."""

    def pax_raw(data: bytes) -> bytes:
        return member(b"PaxHeader", data, typeflag=b"x") + member(b"f") + END

    assert scan(pax_raw(b"+11 path=p\n"))[0].path == b"p"
    assert scan(pax_raw(b"0012 path=p\n"))[0].path == b"p"
    zeros = b"0" * 25 + b"35 path=p\n"
    assert scan(pax_raw(zeros))[0].path == b"p"
    assert scan(pax_raw(b"12 path=a=b\n"))[0].path == b"a=b"
    for bad in (b"-9 path=p\n", b"4 k=\n", b"99999999999999999999999 path=p\n", b"12 p\x00th=p\n"):
        expect_error(pax_raw(bad), "PAX", "offset 0")


def test_pax_numbers_parse_as_go_parses_them() -> None:
    """uid, gid and size are ParseInt values (a sign, leading zeros); negative ids are
    refused; mtimes take a sign and a fraction of any length."""
    cases = [
        ((b"uid", b"+7"), "uid", 7),
        ((b"gid", b"007"), "gid", 7),
        ((b"mtime", b"+5.5"), "mtime_ns", 5_500_000_000),
        ((b"mtime", b"-0.5"), "mtime_ns", -500_000_000),
        ((b"mtime", b"-1.25"), "mtime_ns", -1_250_000_000),
        ((b"mtime", b"0012."), "mtime_ns", 12 * 10**9),
    ]
    for record, field, expected in cases:
        (entry,) = scan(pax([record]) + member(b"f") + END)
        assert getattr(entry, field) == expected, record
    (sized,) = scan(pax([(b"size", b"+3")]) + header(b"f", size=99) + padded(b"abc") + END)
    assert sized.size == 3
    for record in ((b"uid", b"-1"), (b"uid", b"9223372036854775808"), (b"mtime", b".5")):
        expect_error(pax([record]) + member(b"f") + END, f"bad PAX {record[0].decode()}")
    for text in (b"1.5x", b"1.-5", b"--1", b"1e3", b" 1"):
        expect_error(pax([(b"mtime", text)]) + member(b"f") + END, "bad PAX mtime")


# -- mtimes (T3) -----------------------------------------------------------------------------

MAX_NS = 2**63 - 1
MIN_NS = -(2**63)
YEAR_2300 = 10_413_792_000  # 2300-01-01T00:00:00Z


def test_t3_pax_mtime_out_of_range_is_clamped() -> None:
    """T3: a PAX mtime past what int64 nanoseconds carry (about 1677..2262) is clamped to
    the nearest value they carry; nothing is refused, however long the number."""
    cases = {
        str(YEAR_2300).encode(): MAX_NS,
        b"9223372036.854775807": MAX_NS,
        b"9223372036.854775808": MAX_NS,
        b"9223372036.854775806": MAX_NS - 1,
        b"-9223372036.854775808": MIN_NS,
        b"-9223372036.854775809": MIN_NS,
        b"-9223372037": MIN_NS,
        b"99999999999999999999999999": MAX_NS,
        b"9" * 5000: MAX_NS,  # no int() digit limit reached
        b"-" + b"9" * 5000 + b".5": MIN_NS,
        b"0" * 5000 + b"12": 12 * 10**9,
        b"-302486400": -302_486_400 * 10**9,  # 1960 stays negative
    }
    for value, expected in cases.items():
        (entry,) = scan(pax([(b"mtime", value)]) + member(b"f", b"x") + END)
        assert entry.mtime_ns == expected, value[:40]


def test_t3_header_mtime_out_of_range_is_clamped() -> None:
    """T3: base-256 mtimes (positive and negative, up to 95 bits) are clamped the same
    way; the largest octal mtime (8**11 - 1 seconds, in 2242) is exact."""

    def b256(value: int) -> bytes:
        return (value % (1 << 96) | (1 << 95)).to_bytes(12, "big")

    cases = {
        b256(YEAR_2300): MAX_NS,
        b256(2**94 - 1): MAX_NS,
        b256(-(2**94)): MIN_NS,
        b256(-(2**40)): MIN_NS,
        b256(-86400): -86400 * 10**9,
        octal(8**11 - 1, 12): (8**11 - 1) * 10**9,
        b256(9_223_372_036): 9_223_372_036 * 10**9,
    }
    for field, expected in cases.items():
        (entry,) = scan(header(b"f", raw={136: field}) + END)
        assert entry.mtime_ns == expected, field


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_t3_gnu_tar_year_2300_and_1960(tmp_path: Path, fmt: str) -> None:
    """T3: GNU tar writes a 2300 mtime as base-256 (gnu) or a PAX record (posix), and a 1960
    one as negative base-256 or a negative PAX record: clamped and kept negative."""
    (tmp_path / "future").write_bytes(b"f")
    (tmp_path / "past").write_bytes(b"p")
    os.utime(tmp_path / "future", (YEAR_2300, YEAR_2300))
    os.utime(tmp_path / "past", (-302_486_400, -302_486_400))
    archive_path = tmp_path / "out.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "-cf", str(archive_path), "-C", str(tmp_path), "future", "past"],
        check=True,
    )
    archive = archive_path.read_bytes()
    if fmt == "gnu":  # base-256 in the header itself
        assert archive[136] == 0x80 and archive[1024 + 136] == 0xFF
    entries = {e.path: e.mtime_ns for e in scan(archive)}
    assert entries == {b"future": MAX_NS, b"past": -302_486_400 * 10**9}


def test_t3_clamped_mtime_survives_the_tree_and_the_cache() -> None:
    """T3: a clamped mtime and a negative one come through the index cache's entry codec and
    the merged tree's columns (int64) unchanged."""
    archive = (
        pax([(b"mtime", str(YEAR_2300).encode())])
        + member(b"future", b"f")
        + pax([(b"mtime", b"-99999999999")])
        + member(b"ancient", b"a")
        + member(b"past", b"p", raw={136: (2**96 - 86400 | 2**95).to_bytes(12, "big")})
        + END
    )
    entries = scan(archive)
    meta, sections = indexcache.encode_entries(entries)
    decoded = indexcache.decode_entries(meta, sections)
    assert [e.mtime_ns for e in decoded] == [MAX_NS, MIN_NS, -86400 * 10**9]
    builder = TreeBuilder()
    builder.apply_layer(0, decoded)
    tree = builder.freeze()
    tree_meta, tree_sections = tree.encode()
    again = MergedTree.decode(tree_meta, tree_sections)
    for frozen in (tree, again):
        times = {
            name: frozen.inode(frozen.lookup(1, name) or 0).mtime_ns
            for name in (b"future", b"ancient", b"past")
        }
        assert times == {b"future": MAX_NS, b"ancient": MIN_NS, b"past": -86400 * 10**9}


# -- the handler and PAX tables ------------------------------------------------------------

GNU_MAGIC = b"ustar  \x00"


def typeflag_case(typeflag: bytes) -> tuple[bytes, list[tuple[bytes, str, int, bytes]]]:
    """An archive whose first header has ``typeflag`` and a 3-byte size field, then a member
    "next"; and the (path, kind, size, linkname) of the entries it must give."""
    data = b"abc"  # stored after the header only where the typeflag says data follows
    nxt = member(b"next", b"N")
    after = [(b"next", FILE, 1, b"")]

    def with_data(name: bytes, **kw: object) -> bytes:
        return member(name, data, typeflag=typeflag, **kw) + nxt + END

    def header_only(name: bytes, **kw: object) -> bytes:
        return header(name, typeflag=typeflag, size=len(data), **kw) + nxt + END  # type: ignore[arg-type]

    cases: dict[bytes, tuple[bytes, list[tuple[bytes, str, int, bytes]]]] = {
        b"0": (with_data(b"f"), [(b"f", FILE, 3, b""), *after]),
        b"\x00": (with_data(b"f", magic=b""), [(b"f", FILE, 3, b""), *after]),
        b"1": (header_only(b"h", linkname=b"f"), [(b"h", HARDLINK, 0, b"f"), *after]),
        b"2": (header_only(b"l", linkname=b"t"), [(b"l", SYMLINK, 0, b"t"), *after]),
        b"3": (header_only(b"c", devmajor=1, devminor=3), [(b"c", CHARDEV, 0, b""), *after]),
        b"4": (header_only(b"b", devmajor=8), [(b"b", BLOCKDEV, 0, b""), *after]),
        b"5": (header_only(b"d"), [(b"d", DIR, 0, b""), *after]),
        b"6": (header_only(b"p"), [(b"p", FIFO, 0, b""), *after]),
        b"S": (old_gnu_sparse([(2, 3)], 9, data) + nxt + END, [(b"s", FILE, 9, b""), *after]),
        b"L": (with_data(b"././@LongLink"), [(b"abcnext", FILE, 1, b"")]),
        b"K": (
            member(b"././@LongLink", b"target", typeflag=b"K")
            + header(b"l", typeflag=b"2")
            + nxt
            + END,
            [(b"l", SYMLINK, 0, b"target"), *after],
        ),
        b"x": (pax([(b"path", b"renamed")]) + nxt + END, [(b"renamed", FILE, 1, b"")]),
        b"g": (pax([(b"path", b"renamed")], typeflag=b"g") + nxt + END, after),
    }
    if typeflag == b"L":  # the long name is the data itself: make it a whole name
        archive = member(b"././@LongLink", b"abcnext\x00", typeflag=b"L") + nxt + END
        return archive, cases[b"L"][1]
    return cases[typeflag]


@pytest.mark.parametrize("typeflag", sorted(tarscan._HANDLERS), ids=repr)
def test_every_handler(typeflag: bytes) -> None:
    """Each typeflag of the handler table: its entry (or none), and the data it skips."""
    archive, expected = typeflag_case(typeflag)
    entries = scan(archive)
    assert [(e.path, e.kind, e.size, e.linkname) for e in entries] == expected
    nxt = entries[-1]
    assert archive[nxt.data_offset : nxt.data_offset + 1] == b"N"
    # an extension header of "next" itself is where its entry starts
    assert nxt.header_offset == (0 if typeflag in b"Lx" else nxt.data_offset - 512)
    if typeflag in tarscan._KINDS:
        assert entries[0].header_offset == 0
        assert (typeflag in b"34") == (entries[0].devmajor != 0)


def test_handler_table_and_kind_table_agree() -> None:
    """Every real entry's typeflag has a kind; extension headers and labels have none."""
    no_entry = {b"L", b"K", b"x", b"g"}
    assert set(tarscan._KINDS) == set(tarscan._HANDLERS) - no_entry
    expect_error(member(b"q", typeflag=b"A") + END, "unsupported typeflag b'A'", "'q'")


def test_unknown_typeflag_names_the_extended_path() -> None:
    archive = member(b"ok") + pax([(b"path", b"long/name")]) + header(b"short", typeflag=b"M")
    assert expect_error(archive + END) == (
        "unsupported typeflag b'M' at offset 512 (entry 'long/name')"
    )


# key -> (a good value, the field it sets, what it becomes)
PAX_FIELD_CASES: dict[bytes, tuple[bytes, str, object]] = {
    b"linkpath": (b"t\xffarget", "linkname", b"t\xffarget"),
    b"size": (b"2", "size", 2),
    b"uid": (b"4000000000", "uid", 4_000_000_000),
    b"gid": (b"70000", "gid", 70000),
    b"mtime": (b"-3.5", "mtime_ns", -3_500_000_000),
    b"atime": (b"1.5", "", None),  # checked, kept nowhere
    b"ctime": (b"+2", "", None),
}


@pytest.mark.parametrize("key", sorted(tarscan._PAX_FIELDS), ids=bytes.decode)
def test_every_pax_field(key: bytes) -> None:
    """Each keyword of the PAX table sets its field, an empty value keeps the header's, and a
    bad value fails naming the keyword."""
    value, field, expected = PAX_FIELD_CASES[key]
    typeflag = b"2" if field == "linkname" else b"0"
    data = b"xy" if typeflag == b"0" else b""

    def entry(records: list[tuple[bytes, bytes]]) -> TarEntry:
        plain = header(b"e", typeflag=typeflag, size=len(data), linkname=b"l", devmajor=1)
        (found,) = scan(pax(records) + plain + padded(data) + END)
        return found

    if not field:  # checked only: the entry is the header's
        plain = header(b"e", typeflag=typeflag, size=len(data), linkname=b"l", devmajor=1)
        found, (expected_entry,) = entry([(key, value)]), scan(plain + padded(data) + END)
        found.data_offset, found.header_offset = expected_entry.data_offset, 0
        assert found == expected_entry
        expect_error(pax([(key, b"1x")]) + member(b"e") + END, f"bad PAX {key.decode()} b'1x'")
        return
    assert getattr(entry([(key, value)]), field) == expected
    kept = getattr(scan(header(b"e", typeflag=typeflag, linkname=b"l", devmajor=1) + END)[0], field)
    if field != "size":  # a header-only kind's size is 0 whatever the PAX size says
        assert getattr(entry([(key, b"")]), field) == kept
    if key != b"linkpath":
        expect_error(pax([(key, b"1x")]) + member(b"e") + END, f"bad PAX {key.decode()} b'1x'")


def test_pax_table_is_all_tested() -> None:
    assert set(PAX_FIELD_CASES) == set(tarscan._PAX_FIELDS)
    assert all(
        field is None or field in TarEntry.__slots__ for field, _ in tarscan._PAX_FIELDS.values()
    )


def test_unknown_and_lookalike_pax_keys_are_ignored() -> None:
    """Keywords ocifs does not use change nothing, however they look (as before the table)."""
    ignored = [
        (b"atime", b"1.5"),
        (b"ctime", b"-7"),
        (b"uname", b"root"),
        (b"gname", b"wheel"),
        (b"comment", b"c"),
        (b"charset", b"BINARY"),
        (b"SCHILY.fflags", b"nodump"),
        (b"SCHILY.xattr", b"no dot, so no name"),
        (b"LIBARCHIVE.creationtime", b"1"),
        (b"pathx", b"elsewhere"),
        (b"Size", b"99"),
        (b"GNU.sparse", b"no dot"),
        (b"SCHILY.devmajor", b"300"),  # Go reads no device numbers from PAX records
        (b"LIBARCHIVE.xattr.user.x", b"eA"),
    ]
    plain = member(b"f", b"data", uid=3, mtime=7)
    (expected,) = scan(plain + END)
    (entry,) = scan(pax(ignored) + plain + END)
    for field in TarEntry.__slots__:
        if field not in ("data_offset", "header_offset"):
            assert getattr(entry, field) == getattr(expected, field), field
    assert entry.data_offset == expected.data_offset + len(pax(ignored))


def test_gnu_sparse_keys_without_a_map_are_no_sparse_file() -> None:
    """Go makes a PAX sparse file only of a known version or a map; GNU.sparse.name renames
    only such a file. Otherwise the GNU.sparse.* keys change nothing."""
    (entry,) = scan(pax([(b"GNU.sparse.name", b"real")]) + member(b"f", b"abc") + END)
    assert (entry.path, entry.size, entry.sparse) == (b"f", 3, None)
    records = [(b"GNU.sparse.name", b"real"), (b"GNU.sparse.size", b"99")]
    (entry,) = scan(pax(records) + member(b"f", b"abc") + END)
    assert (entry.path, entry.size, entry.sparse) == (b"f", 3, None)
    # A sparse map on a header-only entry is refused, as by Go.
    sparse = [(b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.map", b"0,0")]
    expect_error(pax(sparse) + header(b"l", typeflag=b"2") + END, "sparse map on a symlink")


@pytest.mark.parametrize("name", sorted(tarscan._FIELDS))
def test_every_numeric_field_named_in_its_error(name: str) -> None:
    start, end = tarscan._FIELDS[name]
    bad = b"9" + b"\x00" * (end - start - 1)
    typeflag = b"S" if name == "sparse realsize" else b"3" if name.startswith("dev") else b"0"
    magic = GNU_MAGIC if typeflag == b"S" else b"ustar\x0000"
    raw = {start: bad}
    if name.startswith("star"):  # star's trailer makes the header a star header
        raw[508] = b"tar\x00"
    block = header(b"n", typeflag=typeflag, magic=magic, raw=raw)
    expect_error(block + END, f"bad {name} field (not octal) in header at offset 0")


def test_plain_numbers_agree_with_the_slow_path() -> None:
    """The fast path reads a field only where _number would read the same value."""
    rng = random.Random(7)
    alphabet = b"01234567 \x00" * 4 + b"9+-_\t"
    spans = [(100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156)]
    taken = 0
    for _ in range(20000):
        block = bytearray(512)
        for start, end in spans:
            block[start:end] = b"%0*o\x00" % (end - start - 1, rng.randrange(8**5))
        start, end = rng.choice(spans)  # one field of odd but maybe plain bytes
        block[start:end] = bytes(rng.choice(alphabet) for _ in range(end - start))
        numbers = tarscan._plain_numbers(bytes(block))
        if numbers is not None:
            taken += 1
            assert list(numbers) == [tarscan._number(block[s:e]) for s, e in spans]
    assert taken > 1000  # the fast path was exercised, not just refused


# -- what Linux can carry (T4, T5, T6: linuxlimits) ------------------------------------------


def base256(value: int, length: int = 8) -> bytes:
    """A GNU base-256 header number (the marker bit, then big-endian)."""
    return bytes([0x80]) + value.to_bytes(length - 1, "big")


@pytest.mark.parametrize(
    "typeflag,fields,shown",
    [
        (b"3", {"devmajor": 4096}, "4096:0"),  # 7 octal digits carry up to 2097151
        (b"4", {"devminor": 1 << 20}, "0:1048576"),
        (b"3", {"raw": {329: base256(1 << 40)}}, "1099511627776:0"),  # GNU base-256
        (b"4", {"raw": {337: base256(1 << 32)}}, "0:4294967296"),
    ],
    ids=["major-octal", "minor-octal", "major-base256", "minor-base256"],
)
def test_t5_device_numbers_beyond_linux_are_refused(
    typeflag: bytes, fields: dict[str, object], shown: str
) -> None:
    """T5 B4: a device number Linux's dev_t cannot carry (major over 4095, minor over
    1048575) fails the layer while it is indexed, naming the entry and the number, in a
    ustar octal field and in GNU base-256 alike."""
    archive = member(b"ok") + header(b"dev/big", typeflag=typeflag, **fields) + END  # type: ignore[arg-type]
    message = expect_error(archive, f"device number {shown}", "(entry 'dev/big')", "offset 512")
    assert "major 0-4095, minor 0-1048575" in message


def test_t5_largest_device_numbers_and_ignored_fields() -> None:
    """T5: 4095:1048575 is carried; device fields of what is no device are ignored whatever
    they hold; SCHILY.devmajor of 2^40 is ignored (as by Go) and the header's numbers stand."""
    archive = (
        header(b"dev/max", typeflag=b"3", devmajor=4095, devminor=(1 << 20) - 1)
        + member(b"file", raw={329: base256(1 << 40)})
        + pax([(b"SCHILY.devmajor", str(1 << 40).encode())])
        + header(b"dev/pax", typeflag=b"4", devmajor=8, devminor=1)
        + END
    )
    largest, file, dev = scan(archive)
    assert (largest.devmajor, largest.devminor) == (4095, (1 << 20) - 1)
    assert (file.kind, file.devmajor, file.devminor) == (FILE, 0, 0)
    assert (dev.kind, dev.devmajor, dev.devminor) == (BLOCKDEV, 8, 1)


def long_name_member(name: bytes, **kw: object) -> bytes:
    """A GNU long name (as tarfile writes names over 100 bytes) and its entry."""
    return member(b"././@LongLink", name + b"\x00", typeflag=b"L") + header(b"x", **kw)  # type: ignore[arg-type]


def test_t4_paths_over_path_max_are_refused() -> None:
    """T4 B4: a path whose clean form (/ and its components) does not fit in PATH_MAX (4096
    bytes with its NUL) fails the layer, and the message quotes the name shortened; 4095
    bytes are read. A single entry 100,000 directories deep is a 200 KB path."""
    component = b"c" * 254
    fits = b"/".join([component] * 16) + b"/" + b"f" * 14  # clean: 16 * 255 + 15 = 4095
    (entry,) = scan(long_name_member(fits) + END)
    assert entry.path == fits and len(b"/" + fits) == 4095
    message = expect_error(
        long_name_member(fits + b"g") + END, "path is 4096 bytes long (clean, from /)"
    )
    assert "over PATH_MAX (4096 bytes with its NUL)" in message
    deep = b"d/" * 100_000 + b"f"
    message = expect_error(long_name_member(deep) + END, "path is 200002 bytes long")
    assert "'d/d/d/d/d/" in message and "(200001 bytes)" in message and len(message) < 300


def test_t4_long_names_that_clean_up_short_are_read() -> None:
    """T4: the clean path counts: `./` runs, doubled slashes and `a/..` pairs are not part of
    it (containerd joins the clean path to its root), so such a name is read."""
    for name in (b"./" * 3000 + b"f", b"a//" * 2000 + b"f", b"a/../" * 1000 + b"f"):
        (entry,) = scan(long_name_member(name) + END)
        assert entry.path == name


def test_t4_link_targets_over_path_max_are_refused() -> None:
    """T4 B4: a symlink whose target text is over 4095 bytes (symlink(2) refuses it:
    ENAMETOOLONG), and a hardlink whose target path is, fail the layer; 4095 is read."""
    fits = b"t" * 4095
    archive = member(b"././@LongLink", fits + b"\x00", typeflag=b"K") + header(b"l", typeflag=b"2")
    (link,) = scan(archive + END)
    assert (link.kind, link.linkname) == (SYMLINK, fits)
    too_long = member(b"././@LongLink", fits + b"t\x00", typeflag=b"K")
    expect_error(too_long + header(b"l", typeflag=b"2") + END, "symlink target of 4096 bytes")
    target = b"x/" * 2048
    archive = member(b"././@LongLink", target + b"\x00", typeflag=b"K") + header(
        b"h", typeflag=b"1"
    )
    expect_error(archive + END, "hardlink target is 4096 bytes long", "(entry 'h')")


def xattr_archive(
    name: bytes, value: bytes, typeflag: bytes = b"0", linkname: bytes = b""
) -> bytes:
    return (
        pax([(b"SCHILY.xattr." + name, value)])
        + header(b"e", typeflag=typeflag, linkname=linkname)
        + END
    )


ACL_GOOD = struct.pack("<IHHIHHIHHI", 2, 1, 6, 0, 4, 4, 0, 0x20, 4, 0)  # u::rw- g::r-- o::r--
# u::rw- u:5:rw- g::r-- m::r-- o::r--, ids as the kernel writes them back: mode 0644's ACL
ACL_NAMED = struct.pack(
    "<I" + "HHI" * 5,
    2,
    1,
    6,
    2**32 - 1,
    2,
    6,
    5,
    4,
    4,
    2**32 - 1,
    0x10,
    4,
    2**32 - 1,
    0x20,
    4,
    2**32 - 1,
)


@pytest.mark.parametrize(
    "name,value,typeflag,fragment",
    [
        (b"user." + b"n" * 251, b"v", b"0", "a name of 256 bytes, over 255 (ERANGE)"),
        (b"user.big", b"v" * 65537, b"0", "a value of 65537 bytes, over 65536 (E2BIG)"),
        (b"system.posix_acl_access", b"\x02\x00", b"0", "shorter than its header (EINVAL)"),
        (b"system.posix_acl_access", ACL_GOOD + b"\x00", b"0", "no whole number of entries"),
        (b"system.posix_acl_access", ACL_GOOD[:-8], b"0", "lacks user::, group:: or other::"),
        (b"system.posix_acl_default", ACL_GOOD, b"0", "a default ACL on what is not a dir"),
        (b"security.capability", CAPABILITY[:12], b"0", "12 bytes, magic 0x02000001"),
        (b"security.capability", b"\x00\x00\x00\x01" + bytes(8), b"0", "12 bytes, magic"),
        (b"user.x", b"v", b"2", "a user.* attribute on what is not a file or a directory"),
        (b"user.", b"v", b"0", "no name after the namespace (EINVAL)"),
    ],
    ids=[
        "long-name",
        "big-value",
        "acl-short",
        "acl-ragged",
        "acl-no-other",
        "default-acl-on-file",
        "capability-short",
        "capability-v1",
        "user-on-symlink",
        "bare-namespace",
    ],
)
def test_t6_xattrs_the_kernel_refuses_fail_the_layer(
    name: bytes, value: bytes, typeflag: bytes, fragment: str
) -> None:
    """T6 B4: an xattr setxattr(2) refuses (as it refuses it when an engine applies the
    layer, failing the layer) fails the scan, naming the entry and the attribute."""
    message = expect_error(xattr_archive(name, value, typeflag, b"t"), "(entry 'e')", fragment)
    assert f"xattr {tarscan.show(name)}:" in message


def test_t6_a_nul_in_an_xattr_name_is_refused_as_a_pax_key() -> None:
    """T6 B4: SCHILY.xattr.user.a\\0b would be two names; the PAX key holding a NUL is refused
    before it becomes one (as by Go). LIBARCHIVE.xattr.%00 is ignored, as by Go."""
    expect_error(xattr_archive(b"user.a\x00b", b"v"), "NUL byte in the key of the PAX record")
    (entry,) = scan(pax([(b"LIBARCHIVE.xattr.%00", b"AA")]) + member(b"f") + END)
    assert entry.xattrs is None


def test_t6_xattrs_the_engines_leave_out_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """T6: a name in no namespace Linux handles, an ACL of another version, an ACL on a
    symlink: setxattr fails with ENOTSUP, which containerd, Docker and podman ignore; the
    attribute is left out with a warning naming it, the others of the entry stay."""
    acl_v3 = b"\x03" + ACL_GOOD[1:]
    archive = (
        pax([(b"SCHILY.xattr.foo.bar", b"1"), (b"SCHILY.xattr.user.kept", b"2")])
        + member(b"f")
        + pax([(b"SCHILY.xattr.system.nfs4_acl", b"x")])
        + member(b"g")
        + pax([(b"SCHILY.xattr.system.posix_acl_access", acl_v3)])
        + member(b"h")
        + pax([(b"SCHILY.xattr.system.posix_acl_access", ACL_GOOD)])
        + header(b"l", typeflag=b"2", linkname=b"f")
        + END
    )
    with caplog.at_level("WARNING", logger="ocifs.tarscan"):
        f, g, h, link = scan(archive)
    assert f.xattrs == {b"user.kept": b"2"}
    assert (g.xattrs, h.xattrs, link.xattrs) == (None, None, None)
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 4
    assert "xattr 'foo.bar' left out: a namespace Linux has no handler for" in left_out[0]
    assert "an ACL of version 3, not 2 (EOPNOTSUPP)" in left_out[2]
    assert "entry 'l'" in left_out[3] and "an ACL on a symlink" in left_out[3]


def test_t6_access_acls_are_as_the_engines_chmod_leaves_them() -> None:
    """T6: an engine sets the xattrs, then chmods to the tar's mode. An ACL of user::,
    group::, other:: only is folded into the mode and chmod then sets the tar's: no ACL is
    left. Any other ACL stays, with user::, mask:: and other:: from the mode; a default ACL
    is not touched by chmod."""
    named = struct.pack(  # u::rwx u:5:rw- g::r-- m::rwx o::rwx, ids of the objects 0
        "<I" + "HHI" * 5, 2, 1, 7, 0, 2, 6, 5, 4, 4, 0, 0x10, 7, 0, 0x20, 7, 0
    )
    archive = (
        pax([(b"SCHILY.xattr.system.posix_acl_access", ACL_GOOD), (b"SCHILY.xattr.user.a", b"1")])
        + member(b"minimal", mode=0o600)
        + pax([(b"SCHILY.xattr.system.posix_acl_access", ACL_GOOD)])
        + member(b"alone", mode=0o600)
        + pax([(b"SCHILY.xattr.system.posix_acl_access", named)])
        + member(b"named", mode=0o4640)
        + pax([(b"SCHILY.xattr.system.posix_acl_default", named)])
        + header(b"d/", typeflag=b"5", mode=0o700)
        + END
    )
    minimal, alone, named_entry, d = scan(archive)
    assert minimal.xattrs == {b"user.a": b"1"} and minimal.mode == 0o600
    assert alone.xattrs is None
    none = 2**32 - 1
    assert named_entry.mode == 0o4640
    assert named_entry.xattrs == {  # u::rw- u:5:rw- g::r-- m::r-- o::---
        b"system.posix_acl_access": struct.pack(
            "<I" + "HHI" * 5, 2, 1, 6, none, 2, 6, 5, 4, 4, none, 0x10, 4, none, 0x20, 0, none
        )
    }
    assert d.xattrs == {b"system.posix_acl_default": named}


def test_t6_xattrs_the_kernel_takes_are_kept() -> None:
    """T6 A7: what setxattr takes stays byte for byte: a 255-byte name, a 65536-byte value,
    empty values, a valid ACL (on a file, as chmod to its mode leaves it; a default one on a
    directory), v2 and v3 file
    capabilities, trusted.* and security.* names, user.* on a hardlink (its target decides)."""
    cap_v3 = struct.pack("<IIIIII", 0x03000000, 1 << 13, 0, 0, 0, 1000)
    records = [
        (b"user." + b"n" * 250, b"v"),
        (b"user.big", b"v" * 65536),
        (b"user.empty", b""),
        (b"system.posix_acl_access", ACL_NAMED),
        (b"security.capability", cap_v3),
        (b"trusted.overlay.x", b"y"),
        (b"security.selinux", b"system_u:object_r:bin_t:s0"),
    ]
    archive = (
        pax([(b"SCHILY.xattr." + k, v) for k, v in records])
        + member(b"f")
        + pax([(b"SCHILY.xattr.system.posix_acl_default", ACL_GOOD)])
        + header(b"d/", typeflag=b"5")
        + pax([(b"SCHILY.xattr.trusted.empty", b""), (b"SCHILY.xattr.user.h", b"1")])
        + header(b"h", typeflag=b"1", linkname=b"f")
        + END
    )
    f, d, h = scan(archive)
    assert f.xattrs == dict(records)
    assert d.xattrs == {b"system.posix_acl_default": ACL_GOOD}
    assert h.xattrs == {b"trusted.empty": b"", b"user.h": b"1"}
    # An empty file capability is not one: Linux 6.18.44 refuses it (linuxlimits).
    empty_cap = pax([(b"SCHILY.xattr.security.capability", b"")]) + member(b"f") + END
    with pytest.raises(TarFormatError, match="not a file capability"):
        scan(empty_cap)
