"""FileBlob and BlobStream: a blob as a byte range of a host file, read by offset or in order."""

from __future__ import annotations

from pathlib import Path

from ocifs.blobs import BlobStream, FileBlob


def test_a_range_reads_only_its_own_bytes(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"HEAD" + b"0123456789" + b"TAIL")
    blob = FileBlob(path, 10, offset=4)
    handle = blob.open()
    try:
        assert handle.pread(4, 0) == b"0123"
        assert handle.pread(100, 6) == b"6789"  # short only at the blob's end, never past it
        assert handle.pread(5, 10) == b""
        assert handle.pread(5, 50) == b""
    finally:
        handle.close()
        handle.close()  # closing twice is harmless
    assert blob.describe() == f"{path} bytes 4-14"
    assert FileBlob(path, 18).describe() == str(path)


def test_a_stream_reads_front_to_back_and_tells_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"x" * 3 + bytes(range(200)) + b"y" * 5)
    with BlobStream(FileBlob(path, 200, offset=3)) as stream:
        assert stream.read(150) == bytes(range(150))
        assert stream.tell() == 150
        buffer = bytearray(100)
        assert stream.readinto(buffer) == 50
        assert bytes(buffer[:50]) == bytes(range(150, 200))
        assert stream.read(10) == b""
    with BlobStream(FileBlob(path, 200, offset=3)) as stream:
        assert stream.read() == bytes(range(200))
