"""The outer tar of an image archive: its member table, its members as blobs, the cache (X3).

Archives are written by ``archives.write_tar`` (CPython's tarfile: PAX, GNU and ustar forms,
with or without end blocks, plain or gzipped). Members are read back through the blobs the
table gives and compared with the bytes written; a plain archive's table must be read without
reading member data; a gzipped one's members are read through gzip cursors at any offset.
"""

from __future__ import annotations

import errno
import gzip
import os
import random
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from archives import Entry, write_tar

from ocifs import archive as A
from ocifs import sources
from ocifs.archive import Archive, GzipRangeBlob, identify, read_members
from ocifs.blobs import Blob, FileBlob, NotAFile, Progress
from ocifs.cachefile import FileSection
from ocifs.errors import LayoutError
from ocifs.indexcache import IndexCache
from ocifs.mediatypes import Compression

MIB = 1 << 20


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def read(blob: Blob, size: int | None = None, offset: int = 0) -> bytes:
    handle = blob.open()
    try:
        return handle.pread(blob.size if size is None else size, offset)
    finally:
        handle.close()


def open_archive(path: Path) -> Archive:
    return Archive(path, read_members(path))


def member_blob(archive: Archive, name: str) -> Blob:
    found = archive.blob(name)
    assert found is not None, f"{name} not found"
    return found


CONTENT = {
    "manifest.json": b"[]",
    "big.bin": data(1, 3 * MIB + 123),
    "small": b"x" * 700,
    "empty": b"",
}


def entries() -> list[Entry]:
    return [Entry(name, value) for name, value in CONTENT.items()]


# --- the member table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
    ids=["pax", "gnu", "ustar"],
)
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_x3_members_are_byte_ranges_of_the_archive(tmp_path: Path, fmt: int, gzipped: bool) -> None:
    """X3: every member reads back as written, from a plain or a gzipped archive."""
    path = write_tar(tmp_path / "a.tar", entries(), fmt=fmt, gzipped=gzipped)
    archive = open_archive(path)
    expected = Compression.GZIP if gzipped else Compression.NONE
    assert archive.table.compression is expected
    assert set(archive.table.members) == set(CONTENT)
    for name, value in CONTENT.items():
        blob = member_blob(archive, name)
        assert isinstance(blob, GzipRangeBlob if gzipped else FileBlob)
        assert blob.size == len(value)
        assert read(blob) == value


def test_x3_plain_table_seeks_over_member_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X3: reading a plain archive's table reads its headers, not the data of its members."""
    streams: list[A._PlainStream] = []

    class Counted(A._PlainStream):
        def __init__(self, fd: int, size: int) -> None:
            super().__init__(fd, size)
            streams.append(self)

    monkeypatch.setattr(A, "_PlainStream", Counted)
    big = [Entry(f"blob{i}", data(i, 2 * MIB)) for i in range(8)]
    path = write_tar(tmp_path / "a.tar", [*big, Entry("manifest.json", b"[]")])
    table = read_members(path)
    assert len(table.members) == 9
    (stream,) = streams
    assert path.stat().st_size > 16 * MIB
    assert stream.read_bytes <= 9 * A.TABLE_READ + 2 * 512 * 10  # headers and the end blocks


def test_x3_table_of_a_huge_sparse_archive_is_quick(tmp_path: Path) -> None:
    """X3: a 64 GiB member (a hole on disk) costs its header, whatever its size."""
    path = tmp_path / "huge.tar"
    size = 64 << 30
    info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    info.size = size
    tail = tarfile.TarInfo("index.json")
    tail.size = 2
    header = info.tobuf(tarfile.PAX_FORMAT)  # a PAX size record, and the ustar header
    with path.open("wb") as out:
        out.write(header)
        out.seek(len(header) + size)
        out.write(tail.tobuf(tarfile.PAX_FORMAT) + b"{}".ljust(512, b"\0") + bytes(1024))
    archive = open_archive(path)
    assert member_blob(archive, "blobs/sha256/" + "a" * 64).size == size
    assert read(member_blob(archive, "index.json")) == b"{}"


def test_x3_archive_without_end_blocks_is_read_to_its_end(tmp_path: Path) -> None:
    """X3, T1: an outer tar that stops after its last member's data (no end-of-archive
    blocks) is complete, as Go's archive/tar reads it."""
    path = write_tar(tmp_path / "a.tar", entries(), end_blocks=False)
    archive = open_archive(path)
    assert read(member_blob(archive, "empty")) == b""
    assert read(member_blob(archive, "big.bin")) == CONTENT["big.bin"]


def test_x3_t1_archive_ending_right_after_member_data(tmp_path: Path) -> None:
    """T1 through the skipping stream: the outer tar stops right after the last member's data,
    without even its padding; Go reads it to its end, and so does the member table."""
    whole = write_tar(tmp_path / "a.tar", [Entry("first", b"1" * 3000), Entry("last", b"x" * 700)])
    with tarfile.open(whole) as tar:
        last = tar.getmember("last")
        end = last.offset_data + last.size
    path = tmp_path / "cut.tar"
    path.write_bytes(whole.read_bytes()[:end])
    archive = open_archive(path)
    assert read(member_blob(archive, "last")) == b"x" * 700
    assert read(member_blob(archive, "first")) == b"1" * 3000


def test_x3_long_member_names(tmp_path: Path) -> None:
    """X3, A8: long names in PAX, GNU long-name and ustar prefix form are found."""
    long_name = "d" * 80 + "/" + "n" * 90
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        path = write_tar(tmp_path / f"a{fmt}.tar", [Entry(long_name, b"long")], fmt=fmt)
        assert read(member_blob(open_archive(path), long_name)) == b"long"


def test_x3_names_are_normalized(tmp_path: Path) -> None:
    """X3, P1: ./ prefixes, doubled and trailing slashes; a later member of a name wins."""
    path = write_tar(
        tmp_path / "a.tar",
        [
            Entry("./manifest.json", b"old"),
            Entry("blobs/", kind="dir"),
            Entry("./blobs//sha256/x", b"blob"),
            Entry("manifest.json", b"new"),
        ],
    )
    archive = open_archive(path)
    assert read(member_blob(archive, "manifest.json")) == b"new"
    assert read(member_blob(archive, "./blobs/sha256//x")) == b"blob"
    with pytest.raises(NotAFile):
        archive.blob("blobs")


def test_p4_names_outside_the_archive_never_match(tmp_path: Path) -> None:
    """P4, X3: absolute and ../ names are left out; links leading out lead nowhere, even to
    a host file that exists."""
    host_file = tmp_path / "secret"
    host_file.write_text("host")
    path = write_tar(
        tmp_path / "a.tar",
        [
            Entry("../escape", b"e"),
            Entry("/abs", b"a"),
            Entry("a/../../x", b"x"),
            Entry("to-host", kind="symlink", target=str(host_file)),
            Entry("up", kind="symlink", target="../secret"),
            Entry("hard", kind="hardlink", target="../secret"),
            Entry("ok", b"ok"),
        ],
    )
    archive = open_archive(path)
    assert set(archive.table.members) == {"to-host", "up", "hard", "ok"}
    for name in ("../escape", "/abs", "abs", "escape", "x", "to-host", "up", "hard", "../secret"):
        assert archive.find(name) is None, name
    assert read(member_blob(archive, "ok")) == b"ok"


def test_x1_links_are_followed_inside_the_archive(tmp_path: Path) -> None:
    """X1: a layer member may be a symlink (relative) or a hardlink to another member;
    chains resolve, loops lead nowhere."""
    path = write_tar(
        tmp_path / "a.tar",
        [
            Entry("hex.tar", b"layer"),
            Entry("id/", kind="dir"),
            Entry("id/layer.tar", kind="symlink", target="../hex.tar"),
            Entry("id2/layer.tar", kind="symlink", target="../id/layer.tar"),
            Entry("hard.tar", kind="hardlink", target="id2/layer.tar"),
            Entry("loop1", kind="symlink", target="loop2"),
            Entry("loop2", kind="symlink", target="loop1"),
        ],
    )
    archive = open_archive(path)
    for name in ("id/layer.tar", "id2/layer.tar", "hard.tar"):
        assert read(member_blob(archive, name)) == b"layer"
    assert archive.find("loop1") is None


def test_x3_sparse_member_is_no_blob(tmp_path: Path) -> None:
    """X3: a sparse member has no single byte range: naming it is an error, not a wrong read."""
    path = tmp_path / "sparse.tar"
    info = tarfile.TarInfo("blob")
    info.size = 4
    info.pax_headers = {
        "GNU.sparse.numblocks": "1",
        "GNU.sparse.map": "0,4",
        "GNU.sparse.size": "100",
    }
    buffer = info.tobuf(tarfile.PAX_FORMAT) + b"data".ljust(512, b"\0") + bytes(1024)
    path.write_bytes(buffer)
    archive = open_archive(path)
    with pytest.raises(NotAFile, match="sparse"):
        archive.blob("blob")
    with pytest.raises(LayoutError, match="is not a regular file"):
        sources.find(sources.ArchiveSource(archive), "blob", "x: blob")


# --- bad archives: one line each -------------------------------------------------------------


def one_line(path: Path) -> str:
    with pytest.raises(LayoutError) as caught:
        read_members(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_x3_truncated_archive(tmp_path: Path) -> None:
    """X3, B4: an archive cut inside a member's data is an error naming the member."""
    whole = write_tar(tmp_path / "a.tar", entries()).read_bytes()
    path = tmp_path / "cut.tar"
    path.write_bytes(whole[: 512 * 3 + MIB])
    message = one_line(path)
    assert "is not a valid tar archive: truncated in member data" in message
    assert "'big.bin'" in message


def test_x3_not_a_tar(tmp_path: Path) -> None:
    """B4: a file that is no tar at all."""
    path = tmp_path / "junk.tar"
    path.write_bytes(data(5, 4096))
    assert "is not a valid tar archive: bad header checksum" in one_line(path)


@pytest.mark.parametrize("cut", [100, 5000])
def test_b3_truncated_gzip_archive(tmp_path: Path, cut: int) -> None:
    """B3: a gzipped archive cut short."""
    whole = write_tar(tmp_path / "a.tar.gz", entries(), gzipped=True).read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(whole[:cut])
    assert "gzip stream is truncated" in one_line(path)


def test_b3_damaged_gzip_archive(tmp_path: Path) -> None:
    """B3: a gzipped archive with a damaged byte (deflate data or CRC) is refused whole."""
    raw = write_tar(tmp_path / "a.tar", entries()).read_bytes()
    whole = bytearray(gzip.compress(raw, 1, mtime=0))
    whole[len(whole) // 2] ^= 0xFF
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(bytes(whole))
    assert "gzip" in one_line(path)


def test_b3_garbage_after_gzip_archive(tmp_path: Path) -> None:
    whole = write_tar(tmp_path / "a.tar.gz", entries(), gzipped=True).read_bytes()
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(whole + b"junk")
    assert "garbage after the end of the gzip stream" in one_line(path)


def test_zstd_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    assert one_line(path) == f"{path}: zstd-compressed archives are not supported"


def test_unreadable_archive(tmp_path: Path) -> None:
    assert "cannot be read" in one_line(tmp_path / "missing.tar")


# --- gzipped archives: members read through gzip cursors -------------------------------------


@pytest.fixture
def gzipped(tmp_path: Path) -> Archive:
    return open_archive(write_tar(tmp_path / "a.tar.gz", entries(), gzipped=True))


def test_x3_gzip_member_reads_at_any_offset(gzipped: Archive) -> None:
    """X3: random ranges of a member of a gzipped archive, across its seek points."""
    points = gzipped.table.points
    assert points is not None and len(points) > 2  # the 3 MiB member spans several
    blob = member_blob(gzipped, "big.bin")
    expected = CONTENT["big.bin"]
    rng = random.Random(7)
    handle = blob.open()
    try:
        for _ in range(50):
            offset = rng.randrange(blob.size)
            size = rng.randrange(1, 300_000)
            assert handle.pread(size, offset) == expected[offset : offset + size]
        assert handle.pread(100, blob.size) == b""
        assert handle.pread(100, blob.size - 10) == expected[-10:]
    finally:
        handle.close()


def test_x3_gzip_member_sequential_reads_continue(gzipped: Archive) -> None:
    """A sequential reader (the indexing pass) reuses its cursor: one cursor for the member."""
    blob = member_blob(gzipped, "big.bin")
    handle = blob.open()
    assert isinstance(handle, A.GzipRangeHandle)
    made: list[int] = []
    original = A.new_cursor  # whichever inflater makes it (zlib or ISA-L)

    def counting(*args: Any) -> Any:
        made.append(1)
        return original(*args)

    A.new_cursor = counting  # type: ignore[assignment]
    try:
        chunks = [handle.pread(64 << 10, offset) for offset in range(0, blob.size, 64 << 10)]
    finally:
        A.new_cursor = original  # type: ignore[assignment]
        handle.close()
    assert b"".join(chunks) == CONTENT["big.bin"]
    assert len(made) == 1


def test_x3_gzip_member_reads_from_threads(gzipped: Archive) -> None:
    """BlobHandle contract: one handle, read from several threads at once."""
    blob = member_blob(gzipped, "big.bin")
    expected = CONTENT["big.bin"]
    handle = blob.open()
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            offset = rng.randrange(blob.size)
            if handle.pread(4096, offset) != expected[offset : offset + 4096]:
                failures.append(f"{seed}@{offset}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handle.close()
    assert failures == []


def test_x3_gzip_member_cut_after_indexing_is_eio(tmp_path: Path) -> None:
    """A gzipped archive cut short after its table was read: the read that reaches the cut
    fails with OSError (EIO), as the BlobHandle contract says, and names the archive."""
    path = write_tar(tmp_path / "a.tar.gz", entries(), gzipped=True)
    archive = open_archive(path)
    blob = member_blob(archive, "big.bin")
    assert read(blob, 1000) == CONTENT["big.bin"][:1000]
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(OSError) as caught:
        read(blob)
    assert caught.value.errno == errno.EIO
    assert str(path) in str(caught.value.strerror)


# --- the member table in the index cache -----------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_x3_member_table_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzipped: bool
) -> None:
    """A later open of the same archive takes the table (and seek points) from the cache:
    nothing is read or inflated again, and the members read the same."""
    path = write_tar(tmp_path / "a.tar", entries(), gzipped=gzipped)
    cache = IndexCache(tmp_path / "cache")
    first = sources.open_archive(path, cache)
    assert list((tmp_path / "cache" / "archives").iterdir()) == [cache.archive_path(identify(path))]

    def no_reading(path: Path) -> None:
        raise AssertionError("the member table was read again")

    monkeypatch.setattr(sources, "read_members", no_reading)
    second = sources.open_archive(path, cache)
    assert second.archive.table.members == first.archive.table.members
    if gzipped:
        points = second.archive.table.points
        assert points is not None and isinstance(points.windows, FileSection)
    for name, value in CONTENT.items():
        assert read(member_blob(second.archive, name)) == value


def test_x3_cached_table_is_not_used_for_a_changed_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive rewritten in place (same path) is read again: its size, mtime and a sample
    of its head and tail are what the cached table is trusted for."""
    reads: list[Path] = []

    def counted(path: Path, progress: Progress | None = None) -> A.MemberTable:
        reads.append(path)
        return read_members(path, progress)

    monkeypatch.setattr(sources, "read_members", counted)
    path = write_tar(tmp_path / "a.tar", entries())
    cache = IndexCache(tmp_path / "cache")
    sources.open_archive(path, cache)
    sources.open_archive(path, cache)
    assert len(reads) == 1
    # another archive at the same path, another size
    changed = [Entry("manifest.json", b"[1]"), Entry("small", b"z")]
    write_tar(path, changed)
    again = sources.open_archive(path, cache)
    assert len(reads) == 2
    assert read(member_blob(again.archive, "small")) == b"z"
    # the same size and mtime, other bytes in the tail: the sample tells
    stamp = path.stat().st_mtime_ns
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"[1]", b"[2]"))
    os.utime(path, ns=(stamp, stamp))
    third = sources.open_archive(path, cache)
    assert len(reads) == 3
    assert read(member_blob(third.archive, "manifest.json")) == b"[2]"
    assert len(list((tmp_path / "cache" / "archives").iterdir())) == 1  # one file per archive


def test_x3_damaged_cache_file_is_read_again(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "a.tar.gz", entries(), gzipped=True)
    cache = IndexCache(tmp_path / "cache")
    sources.open_archive(path, cache)
    cache_file = cache.archive_path(identify(path))
    raw = bytearray(cache_file.read_bytes())
    raw[-10] ^= 1
    cache_file.write_bytes(bytes(raw))
    again = sources.open_archive(path, cache)
    assert read(member_blob(again.archive, "big.bin")) == CONTENT["big.bin"]
    assert cache_file.read_bytes() != bytes(raw)  # rewritten


def test_x3_without_a_cache_nothing_is_written(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "a.tar", entries())
    source = sources.open_archive(path, None)
    assert read(member_blob(source.archive, "small")) == CONTENT["small"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]
