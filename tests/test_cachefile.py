"""The cache-file container alone: round trips, lazy sections, and every way a file is refused."""

from __future__ import annotations

import array
import json
import os
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash
from impostors import KINDS, no_hang, put_in_place

from ocifs.cachefile import (
    FORMAT_VERSION,
    MAGIC,
    PREAMBLE,
    CacheMiss,
    FileSection,
    column,
    pack_json,
    pack_strings,
    read_file,
    sparse_from_json,
    sparse_to_json,
    unpack_strings,
    write_file,
    xattrs_from_json,
    xattrs_to_json,
)

META = {"digest": "sha256:" + "a" * 64, "count": 3, "nested": {"list": [1, None, "x"]}}
SECTIONS = {
    "one.a": b"first section",
    "one.b": array.array("Q", [1, 2, 3]).tobytes(),
    "two.big": os.urandom(3 << 20),  # more than hash_stream reads at once
    "three": b"",  # empty sections are allowed
}


def written(tmp_path: Path) -> Path:
    path = tmp_path / "sub" / "dir" / "file"  # parents are made
    write_file(path, "thing", META, SECTIONS)
    return path


def header_length(data: bytes) -> int:
    return int(PREAMBLE.unpack(data[: PREAMBLE.size])[2])


def raw_file(path: Path, header: bytes, body: bytes = b"", version: int = FORMAT_VERSION) -> None:
    """A file with a correct preamble around whatever header and body a test wants."""
    preamble = PREAMBLE.pack(MAGIC, version, len(header), xxhash.xxh3_128_digest(header))
    path.write_bytes(preamble + header + body)


def test_round_trip_gives_back_meta_and_every_section(tmp_path: Path) -> None:
    path = tmp_path / "file"
    placed = write_file(path, "thing", META, SECTIONS)
    meta, sections = read_file(path, "thing", None)
    assert meta == META
    assert sections == SECTIONS
    assert list(sections) == list(SECTIONS)  # in the order written
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    for name, (start, length) in placed.items():  # where write_file says each section went
        assert data[start : start + length] == SECTIONS[name]
    assert len(data) == max(start + length for start, length in placed.values())


def test_header_is_compact_json_with_kind_and_byte_order(tmp_path: Path) -> None:
    data = written(tmp_path).read_bytes()
    magic, version, length, digest = PREAMBLE.unpack(data[: PREAMBLE.size])
    header = data[PREAMBLE.size : PREAMBLE.size + length]
    assert (magic, version, digest) == (MAGIC, FORMAT_VERSION, xxhash.xxh3_128_digest(header))
    parsed = json.loads(header)
    assert (parsed["kind"], parsed["byteorder"], parsed["meta"]) == ("thing", sys.byteorder, META)
    assert [name for name, *_ in parsed["sections"]] == list(SECTIONS)
    assert header == pack_json(parsed) and b" " not in header


def test_wanted_reads_only_the_named_groups(tmp_path: Path) -> None:
    path = written(tmp_path)
    _, ones = read_file(path, "thing", {"one"})
    assert list(ones) == ["one.a", "one.b"]
    _, threes = read_file(path, "thing", {"three"})  # a name without a dot is its own group
    assert threes == {"three": b""}
    meta, none = read_file(path, "thing", set())
    assert meta == META and none == {}


def test_lazy_section_stays_on_disk_and_reads_by_slices(tmp_path: Path) -> None:
    path = written(tmp_path)
    big = SECTIONS["two.big"]
    _, sections = read_file(path, "thing", None, lazy=frozenset({"two.big"}))
    lazy = sections["two.big"]
    assert isinstance(lazy, FileSection)
    assert sections["one.a"] == SECTIONS["one.a"]  # the others are read as bytes
    assert len(lazy) == len(big)
    assert lazy[10:20] == big[10:20]
    assert lazy[len(big) - 5 : len(big) + 100] == big[-5:]  # clipped at the section's end
    assert lazy[5:5] == b""
    assert bytes(lazy) == big
    with pytest.raises(ValueError, match="no step"):
        lazy[0:10:2]
    path.unlink()  # the open descriptor keeps the file that was checked
    write_file(path, "thing", META, {"two.big": b"replaced"})
    assert lazy[0:8] == big[:8]


def test_lazy_section_is_checked_when_the_file_is_read(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1000] ^= 1  # inside two.big, which comes before the empty "three"
    path.write_bytes(bytes(data))
    with pytest.raises(CacheMiss, match=r"damaged \(section two\.big\)"):
        read_file(path, "thing", None, lazy=frozenset({"two.big"}))


def test_lazy_section_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    write_file(path, "thing", {}, {"only": b"x" * 1000})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CacheMiss, match=r"damaged \(section only\)"):
        read_file(path, "thing", None, lazy=frozenset({"only"}))


def truncate_preamble(data: bytes) -> bytes:
    return data[:10]


def truncate_header(data: bytes) -> bytes:
    return data[: PREAMBLE.size + header_length(data) // 2]


def truncate_section(data: bytes) -> bytes:
    return data[:-100]


def flip_header_byte(data: bytes) -> bytes:
    at = PREAMBLE.size + header_length(data) // 2
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def flip_section_byte(data: bytes) -> bytes:
    at = PREAMBLE.size + header_length(data) + 3  # inside one.a
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def old_version(data: bytes) -> bytes:
    return data[:8] + struct.pack("<I", 0) + data[12:]


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated-preamble": (truncate_preamble, "is truncated"),
    "truncated-header": (truncate_header, "has a damaged header"),
    "truncated-section": (truncate_section, "is truncated"),
    "extra-bytes": (lambda data: data + b"\0", "has the wrong length"),
    "flipped-header-byte": (flip_header_byte, "has a damaged header"),
    "flipped-section-byte": (flip_section_byte, r"is damaged \(section one\.a\)"),
    "old-version": (old_version, f"has format version 0, not {FORMAT_VERSION}"),
    "not-ocifs": (lambda data: b"hello" * 100, "is not an ocifs index"),
    "empty": (lambda data: b"", "is truncated"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_is_a_cache_miss_that_says_why(tmp_path: Path, case: str) -> None:
    damage, reason = DAMAGE[case]
    path = written(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CacheMiss, match=reason) as caught:
        read_file(path, "thing", None)
    assert str(path) in str(caught.value)  # the log names the file


def test_file_of_another_kind_or_byte_order_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path)
    with pytest.raises(CacheMiss, match="is not a layer index for this machine"):
        read_file(path, "layer", None)
    other_order = "big" if sys.byteorder == "little" else "little"
    raw_file(
        path, pack_json({"kind": "thing", "byteorder": other_order, "meta": {}, "sections": []})
    )
    with pytest.raises(CacheMiss, match="is not a thing index for this machine"):
        read_file(path, "thing", None)


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        pack_json({"kind": "thing"}),  # no byte order, meta or sections
        pack_json({"kind": "thing", "byteorder": sys.byteorder, "meta": {}, "sections": [[1]]}),
        pack_json({"kind": "thing", "byteorder": sys.byteorder, "meta": [], "sections": []}),
    ],
)
def test_header_that_hashes_right_but_makes_no_sense_is_refused(
    tmp_path: Path, header: bytes
) -> None:
    path = tmp_path / "file"
    raw_file(path, header)
    with pytest.raises(CacheMiss, match="has a damaged header"):
        read_file(path, "thing", None)


def test_missing_file_directory_and_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheMiss, match="does not exist"):
        read_file(tmp_path / "absent", "thing", None)
    with pytest.raises(CacheMiss, match=r"is not a regular file \(it is a directory\)"):
        read_file(tmp_path, "thing", None)
    with pytest.raises(CacheMiss, match=r"/dev/null is not a regular file \(it is a character"):
        read_file(Path("/dev/null"), "thing", None)


@pytest.mark.parametrize("kind", KINDS)
def test_anything_but_a_regular_file_of_ours_is_a_miss_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO in a cache file's place made read_file block forever in open(2); a symlink, a
    directory and a file of another uid are misses too (the cache is rebuilt, not trusted).
    Each is refused without waiting, from the main thread (a hang fails the test by its
    alarm), and so is a lazy section's reopening (FileSection)."""
    if kind == "other-uid" and os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = written(tmp_path)
    put_in_place(path, kind)
    reasons = {
        "fifo": "is not a regular file (it is a FIFO)",
        "symlink": "is not a regular file (it is a symlink)",
        "directory": "is not a regular file (it is a directory)",
        "other-uid": "is owned by uid 65534, not by this user",
    }
    with no_hang("read_file"):
        with pytest.raises(CacheMiss) as info:
            read_file(path, "thing", None, lazy=frozenset({"two.big"}))
        assert str(info.value) == f"{path} {reasons[kind]}"
        with pytest.raises(CacheMiss, match=re.escape(reasons[kind])):
            FileSection(path, 0, 10)


def test_a_lazy_section_reads_the_file_that_was_checked(tmp_path: Path) -> None:
    """The section keeps the descriptor read_file checked: a file renamed over the path
    afterwards (another mount's rebuild) changes nothing it reads."""
    path = written(tmp_path)
    _, sections = read_file(path, "thing", None, lazy=frozenset({"two.big"}))
    write_file(path, "thing", META, {**SECTIONS, "two.big": b"x" * len(SECTIONS["two.big"])})
    assert bytes(sections["two.big"]) == SECTIONS["two.big"]


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = written(tmp_path)
    before = path.read_bytes()

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ocifs.cachefile.os.replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_file(path, "thing", {}, {"new": b"new"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["file"]


def test_column_checks_its_length() -> None:
    sections = {"c": array.array("q", [-1, 0, 1]).tobytes()}
    assert list(column(sections, "c", "q", 3)) == [-1, 0, 1]
    with pytest.raises(ValueError, match="column c has 3 values, not 4"):
        column(sections, "c", "q", 4)
    with pytest.raises(ValueError):  # not a whole number of items
        column({"c": b"12345"}, "c", "Q", 1)
    with pytest.raises(KeyError):
        column(sections, "absent", "q", 0)


def test_strings_round_trip_and_bad_bounds_are_refused() -> None:
    strings = [b"", b"etc", b"\xff\x00binary", b"", b"x" * 300]
    blob, ends = pack_strings(strings)
    assert blob == b"".join(strings)
    end_column = column({"ends": ends}, "ends", "Q", len(strings))
    assert unpack_strings(blob, end_column) == strings
    with pytest.raises(ValueError, match="out of order"):
        unpack_strings(b"abc", array.array("Q", [2, 1]))
    with pytest.raises(ValueError, match="out of order"):
        unpack_strings(b"abc", array.array("Q", [4]))


def test_xattrs_and_sparse_maps_survive_json() -> None:
    xattrs = {b"user.z": b"\x00\xff", b"security.capability": b"\x01\x00\x00\x02", b"a": b""}
    text = json.dumps(xattrs_to_json(xattrs))
    again = xattrs_from_json(json.loads(text))
    assert again == xattrs and list(again) == list(xattrs)  # order kept
    sparse = ((0, 10), (65536, 0), (1 << 40, 20))
    assert sparse_from_json(json.loads(json.dumps(sparse_to_json(sparse)))) == sparse
    with pytest.raises(ValueError):
        xattrs_from_json([["not hex", "00"]])
    with pytest.raises(ValueError):
        sparse_from_json([[1, 2, 3]])
