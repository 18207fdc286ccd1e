"""Indexing layer blobs, without a mount: digests checked, damaged gzip refused (R9, B2, B3)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from layers import blob_layer, indexed_layer, open_layer, text_blocks
from tarbuild import f, make_tar

from ocifs.errors import LayerError
from ocifs.layerindex import index_layer
from ocifs.layout import LayerRef
from ocifs.mediatypes import Compression


def test_r9_layer_digest_mismatch(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    ref = blob_layer(tmp_path, tar, "none")
    bad = LayerRef(
        0, "sha256:" + "0" * 64, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.blob
    )
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:0+\): layer digest mismatch"):
        index_layer(bad)
    assert index_layer(bad, verify=False).entries  # --no-verify trusts the layout


def test_r9_b2_diff_id_mismatch_in_gzip_layer(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"x")])
    ref = blob_layer(tmp_path, tar, "gzip", blob=gzip.compress(tar))
    bad = LayerRef(
        0, ref.digest, ref.size, ref.media_type, Compression.GZIP, "sha256:" + "1" * 64, ref.blob
    )
    with pytest.raises(LayerError, match="diff_id mismatch"):
        index_layer(bad)


def damaged_gzip_cases() -> dict[str, bytes]:
    tar = make_tar([f("a", text_blocks(300_000, 2)), f("b", b"tail")])
    good = gzip.compress(tar)
    return {
        "truncated": good[: len(good) // 2],
        "truncated-trailer": good[:-3],
        "bad-crc": good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:],
        "garbage-after": good + b"this is not gzip",
    }


@pytest.mark.parametrize("case", sorted(damaged_gzip_cases()))
def test_b3_damaged_gzip_is_refused(tmp_path: Path, case: str) -> None:
    blob = damaged_gzip_cases()[case]
    tar = make_tar([f("a", text_blocks(300_000, 2)), f("b", b"tail")])
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:[0-9a-f]{64}\): .*(gzip|truncated)"):
        index_layer(blob_layer(tmp_path, tar, "gzip", blob=blob))


def test_b3_concatenated_members_and_zero_padding_are_fine(tmp_path: Path) -> None:
    tar = make_tar([f("a", b"1" * 5000), f("b", b"2" * 5000)])
    blob = gzip.compress(tar[:4096]) + gzip.compress(tar[4096:]) + b"\0" * 1024
    indexed = indexed_layer(blob_layer(tmp_path, tar, "gzip", blob=blob))
    b = next(e for e in indexed.entries if e.path == b"b")
    with open_layer(indexed) as reader:
        assert reader.pread(b.data_offset, b.size) == b"2" * 5000


def test_uncompressed_tar_hash_matches_digest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buffer.getvalue()
    ref = blob_layer(tmp_path, data, "none")
    assert ref.digest == "sha256:" + hashlib.sha256(data).hexdigest() == ref.diff_id
    indexed = indexed_layer(ref)
    assert [e.path for e in indexed.entries] == [b"x"]


def test_r9_uncompressed_layer_with_sha512_digest_and_sha256_diff_id(tmp_path: Path) -> None:
    """The blob digest and the diff_id hash the same bytes but may name other algorithms."""
    tar = make_tar([f("a", b"x")])
    ref = blob_layer(tmp_path, tar, "none")
    sha512 = "sha512:" + hashlib.sha512(tar).hexdigest()
    good = LayerRef(0, sha512, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.blob)
    indexed = indexed_layer(good)
    assert [e.path for e in indexed.entries] == [b"a"]
    bad = LayerRef(
        0, "sha512:" + "0" * 128, ref.size, ref.media_type, Compression.NONE, ref.diff_id, ref.blob
    )
    with pytest.raises(LayerError, match="layer digest mismatch"):
        index_layer(bad)
