"""zstd:chunked layers (ocifs.zstdchunked): the tree and reads come from the tar stream, with
a frame per file; footer, annotations and TOC must agree with the stream (Z2, Z3)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from chunkedbuild import OLD_PREFIX, Chunked, chunked_layer
from layers import blob_layer, indexed_layer, open_layer, text_blocks
from tarbuild import d, f, link, make_tar, sym

from ocifs.errors import LayerError
from ocifs.layout import LayerRef

FILES = {
    "etc/hostname": b"chunked\n",
    "usr/bin/big": text_blocks(700_000, 21),
    "usr/bin/other": text_blocks(300_000, 22),
    "usr/lib/empty": b"",
    "var/tail": b"the last file\n",
}


def sample_tar() -> bytes:
    members = [d("etc"), d("usr"), d("usr/bin"), d("usr/lib"), d("var")]
    members += [f(name, data) for name, data in FILES.items()]
    members += [sym("usr/bin/link", "big"), link("usr/bin/hard", "usr/bin/big")]
    return make_tar(members)


def layer_of(tmp_path: Path, chunked: Chunked, tar: bytes, notes: bool = True) -> LayerRef:
    blob, annotations = chunked.assemble()
    return blob_layer(tmp_path, tar, "zstd", blob=blob, annotations=annotations if notes else {})


def refused(tmp_path: Path, chunked: Chunked, tar: bytes, notes: bool = True) -> str:
    with pytest.raises(LayerError) as info:
        indexed_layer(layer_of(tmp_path, chunked, tar, notes))
    message = str(info.value)
    assert "\n" not in message and message.startswith("layer 0 (sha256:")
    return message


@pytest.mark.parametrize(
    "footer_size, prefix, notes",
    [(64, None, True), (40, OLD_PREFIX, True), (64, None, False), (40, OLD_PREFIX, False)],
)
def test_z3_chunked_layer_indexes_and_every_file_reads_from_its_frame(
    tmp_path: Path, footer_size: int, prefix: str | None, notes: bool
) -> None:
    """Z2 Z3: the 64-byte footer and the 40-byte one of older writers, found through the
    annotations (new and old names) or the footer alone; each file's data starts a frame,
    so each is a seek point, and reads give the files' bytes."""
    tar = sample_tar()
    chunked = (
        chunked_layer(tar, footer_size)
        if prefix is None
        else chunked_layer(tar, footer_size, prefix)
    )
    indexed = indexed_layer(layer_of(tmp_path, chunked, tar, notes))
    assert indexed.points is not None
    points = set(indexed.points.uncompressed)
    with open_layer(indexed) as reader:
        for entry in indexed.entries:
            name = entry.path.decode()
            if name in FILES and entry.size:
                assert entry.data_offset in points
                assert reader.pread(entry.data_offset, entry.size) == FILES[name]


def test_z3_footer_that_lies_about_the_toc(tmp_path: Path) -> None:
    """Z3 B3: a footer putting the TOC one byte off: one line, naming the layer."""
    tar = sample_tar()
    chunked = chunked_layer(tar)
    _, honest = chunked.assemble()
    offset = int(honest[chunked.prefix + "manifest-position"].split(":")[0])
    chunked.footer_override = {0: offset + 1}
    message = refused(tmp_path, chunked, tar, notes=False)
    assert f"puts the TOC at blob offset {offset + 1}" in message
    assert "no skippable frame" in message


def test_z3_footer_and_annotation_disagree(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.footer_override = {2: 5}  # the TOC's uncompressed length
    message = refused(tmp_path, chunked, tar)
    assert "manifest-position" in message and "the zstd:chunked footer says" in message


def test_z3_footer_tar_split_that_lies(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.footer_override = {5: 3}  # the tar-split's compressed length
    message = refused(tmp_path, chunked, tar, notes=False)
    assert "puts the tar-split at blob offset" in message


def test_z3_footer_of_unknown_size(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.footer_override = {}
    blob, _ = chunked.assemble()
    # The 64-byte footer's magic at the end of a 48-byte payload.
    stream_end = len(blob) - 72
    forged = blob[:stream_end] + b"P*M\x18" + (48).to_bytes(4, "little") + blob[-48:]
    layer = blob_layer(tmp_path, tar, "zstd", blob=forged)
    with pytest.raises(LayerError) as info:
        indexed_layer(layer)
    assert "footer of 48 bytes" in str(info.value)


def test_z3_manifest_checksum_that_lies(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.annotations_override = {chunked.prefix + "manifest-checksum": "sha256:" + "0" * 64}
    message = refused(tmp_path, chunked, tar)
    assert "manifest-checksum" in message and "the TOC's sha256 is" in message


def test_z3_malformed_position_annotation(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.annotations_override = {chunked.prefix + "manifest-position": "12:x"}
    assert "not 4 numbers joined by ':'" in refused(tmp_path, chunked, tar)


def lying_toc(tar: bytes, change: str) -> Chunked:
    chunked = chunked_layer(tar)
    toc = copy.deepcopy(chunked.toc)
    entries = toc["entries"]
    big = next(e for e in entries if e["name"] == "usr/bin/big")
    other = next(e for e in entries if e["name"] == "usr/bin/other")
    if change == "offset":
        big["offset"] = other["offset"]
    elif change == "size":
        big["size"] += 1
    elif change == "extra":
        entries.append({"type": "reg", "name": "usr/bin/ghost", "size": 0})
    elif change == "missing":
        entries.remove(other)
    elif change == "type":
        big["type"] = "dir"
    elif change == "tarsplit":
        toc["tarSplitDigest"] = "sha256:" + "1" * 64
    chunked.toc = toc
    return chunked


@pytest.mark.parametrize(
    "change, expected",
    [
        ("offset", "puts the data of 'usr/bin/big' (at 0 in it) at blob offset"),
        ("size", "gives 'usr/bin/big' 700001 bytes, the tar stream 700000"),
        ("extra", "lists reg 'usr/bin/ghost', which the tar stream does not hold"),
        ("missing", "lists 11 entries, the tar stream holds 12 (such as 'usr/bin/other')"),
        ("type", "lists dir 'usr/bin/big', which the tar stream does not hold"),
        ("tarsplit", "gives the tar-split digest sha256:1111"),
    ],
)
def test_z3_toc_that_disagrees_with_the_stream(tmp_path: Path, change: str, expected: str) -> None:
    """Z3: the TOC names, types, sizes and data offsets must be the tar stream's."""
    tar = sample_tar()
    message = refused(tmp_path, lying_toc(tar, change), tar)
    assert expected in message


def test_z3_toc_that_is_not_json(tmp_path: Path) -> None:
    tar = sample_tar()
    chunked = chunked_layer(tar)
    chunked.toc = {"version": 2, "entries": []}
    assert "not a version 1 manifest" in refused(tmp_path, chunked, tar)


def test_plain_zstd_layer_is_not_taken_for_chunked(tmp_path: Path) -> None:
    """A layer without footer or annotations is plain zstd: no TOC is looked for."""
    tar = sample_tar()
    indexed = indexed_layer(blob_layer(tmp_path, tar, "zstd"))
    assert indexed.points is not None and len(indexed.points) == 1
