"""The persistent index cache, without a mount: round trips, damage, reuse across images."""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
import struct
import sys
from pathlib import Path

import pytest
from layers import blob_layer, image_of
from tarbuild import Member, d, f, link, make_tar, sym

from ocifs import cachefile, indexcache, tarscan
from ocifs.blobs import FileBlob
from ocifs.blockcache import CACHE_BLOCK, BlockCache
from ocifs.blockcheck import ALGORITHM, BlockSums
from ocifs.cachefile import CacheMiss, read_file
from ocifs.errors import LayerError
from ocifs.gzseek import SeekPoints
from ocifs.image import LoadReport, load_image
from ocifs.indexcache import IndexCache
from ocifs.layerindex import LayerIndex, index_layer
from ocifs.layerread import DamagedLayer, open_reader
from ocifs.layout import LayerRef, ResolvedImage
from ocifs.mediatypes import OCI_LAYER_GZIP, Compression
from ocifs.ocibuild import sha256_digest
from ocifs.tarscan import TarEntry, scan_tar
from ocifs.tree import TreeBuilder

# A v2 vfs_cap_data (20 bytes: the kernel takes no other size, T6): cap_net_raw, effective.
PING_CAPABILITY = "\x01\x00\x00\x02\x00\x20" + "\x00" * 14


def awkward_members() -> list[Member]:
    return [
        d("etc"),
        f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", uid=0, gid=0, mode=0o644),
        f("etc/shadow", b"secret", mode=0o640, gid=42),
        sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
        link("etc/passwd-link", "etc/passwd"),
        Member("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        Member("dev/sda", "block", devmajor=8, devminor=0),
        Member("run/fifo", "fifo"),
        f("bin/ping", b"\x7fELF", pax={"SCHILY.xattr.security.capability": PING_CAPABILITY}),
        f("x" * 150 + "/long-name-" + "y" * 120, b"long"),
        f("usr/lib/setuid", b"#!", mode=0o4755, uid=65534, gid=65534),
        f("times/ns", b"", pax={"mtime": "1700000000.123456789"}),
        f("big-ids", b"", uid=2**32 - 2, gid=2**31),
    ]


def tree_listing(tree: object) -> list[tuple[bytes, tuple[object, ...]]]:
    return [(path, tuple(inode)) for path, inode in tree.walk()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_layer_index_round_trip_keeps_every_entry_field(tmp_path: Path, compression: str) -> None:
    """Entries come back equal, field by field: names, modes, ids, ns mtimes, devices,
    link names, xattrs (A5-A8), data offsets; gzip seek points come back too."""
    tar = make_tar([*awkward_members(), f("data", os.urandom(3 << 20))])
    layer = blob_layer(tmp_path, tar, compression)
    indexed = index_layer(layer, spacing=256 << 10)
    cache = IndexCache(tmp_path / "cache")
    cache.store_layer(layer, indexed)

    loaded = cache.load_layer(layer, verify=True, with_entries=True)
    assert loaded is not None and loaded.verified
    assert loaded.uncompressed_size == len(tar)
    assert loaded.entries == indexed.entries
    assert loaded.entries == list(scan_tar(_Reader(tar)))
    if compression == "gzip":
        assert loaded.points is not None and indexed.points is not None
        assert len(loaded.points) == len(indexed.points) > 4
        assert list(loaded.points.uncompressed) == list(indexed.points.uncompressed)
        assert list(loaded.points.compressed) == list(indexed.points.compressed)
        assert bytes(loaded.points.bits) == bytes(indexed.points.bits)
        for n in range(len(loaded.points)):
            assert loaded.points.window(n) == indexed.points.window(n)
    else:
        assert loaded.points is None
    points_only = cache.load_layer(layer, verify=True, with_entries=False)
    assert points_only is not None and points_only.entries is None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def read(self, size: int) -> bytes:
        chunk = bytes(self.data[self.at : self.at + size])
        self.at += len(chunk)
        return chunk


def test_merged_tree_round_trip_is_identical(tmp_path: Path) -> None:
    """Inode numbers, attributes, children order, hardlink sharing (H1), xattrs, symlink
    texts: the tree read back walks exactly like the one stored."""
    lower = make_tar(awkward_members())
    upper = make_tar([f("etc/.wh.shadow"), f("etc/new", b"new"), d("etc", mode=0o700)])
    builder = TreeBuilder()
    builder.apply_layer(0, scan_tar(_Reader(lower)))
    builder.apply_layer(1, scan_tar(_Reader(upper)))
    tree = builder.freeze()
    layers = [blob_layer(tmp_path, lower, "none"), blob_layer(tmp_path, upper, "none", 1)]
    cache = IndexCache(tmp_path / "cache")
    cache.store_tree(layers, tree)

    again = cache.load_tree(layers)
    assert tree_listing(again) == tree_listing(tree)
    assert len(again) == len(tree)
    assert again.file_bytes == tree.file_bytes
    passwd = again.find(b"etc/passwd")
    assert passwd is not None and passwd.nlink == 2
    assert again.find(b"etc/passwd-link") == passwd
    assert again.find(b"etc/shadow") is None
    with pytest.raises(CacheMiss, match="does not exist"):
        cache.load_tree(layers[:1])


def cached_image(tmp_path: Path, compression: str = "gzip") -> tuple[ResolvedImage, IndexCache]:
    lower = make_tar([d("usr"), f("usr/a", b"a" * 5000), f("usr/big", os.urandom(1 << 20))])
    upper = make_tar([f("usr/.wh.a"), f("usr/b", b"bee")])
    resolved = image_of(
        [blob_layer(tmp_path, lower, compression), blob_layer(tmp_path, upper, compression, 1)]
    )
    return resolved, IndexCache(tmp_path / "cache")


def load(resolved: ResolvedImage, cache: IndexCache | None, verify: bool = True) -> LoadReport:
    report = LoadReport()
    image = load_image(resolved, verify=verify, cache=cache, report=report)
    try:
        big = image.tree.find(b"usr/big")
        assert big is not None
        data = image.read(big, 0, big.size)
        assert len(data) == 1 << 20
        assert image.tree.find(b"usr/a") is None
        b = image.tree.find(b"usr/b")
        assert b is not None and image.read(b, 0, 10) == b"bee"
    finally:
        image.close()
    return report


def test_second_load_reads_no_blob_and_merges_nothing(tmp_path: Path) -> None:
    resolved, cache = cached_image(tmp_path)
    first = load(resolved, cache)
    assert first.indexed == list(resolved.layers) and not first.tree_from_cache
    second = load(resolved, cache)
    assert second.indexed == [] and second.tree_from_cache
    assert second.from_cache == list(resolved.layers)


def test_image_sharing_a_base_layer_takes_it_from_the_cache(tmp_path: Path) -> None:
    """Blobs are content-addressed: the base indexed for one image serves another."""
    resolved, cache = cached_image(tmp_path)
    load(resolved, cache)
    other_upper = blob_layer(
        tmp_path, make_tar([f("usr/.wh.a"), f("usr/b", b"bee"), f("usr/c", b"c")]), "gzip", 1
    )
    other = image_of([resolved.layers[0], other_upper])
    report = load(other, cache)
    assert [layer.digest for layer in report.from_cache] == [resolved.layers[0].digest]
    assert [layer.digest for layer in report.indexed] == [other_upper.digest]
    assert not report.tree_from_cache
    assert load(other, cache).tree_from_cache


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    resolved, cache = cached_image(tmp_path)
    load(resolved, None)
    assert not cache.root.exists()


def test_index_built_without_verification_is_not_trusted_by_a_verifying_load(
    tmp_path: Path,
) -> None:
    """R9 still holds with a cache: --no-verify indexes are re-done (and checked) on a
    load that verifies; an unverifying load takes a verified index."""
    resolved, cache = cached_image(tmp_path)
    assert load(resolved, cache, verify=False).indexed == list(resolved.layers)
    assert load(resolved, cache, verify=True).indexed == list(resolved.layers)
    report = load(resolved, cache, verify=False)
    assert report.indexed == [] and report.tree_from_cache


def damage_cases() -> list[str]:
    return [
        "truncated-preamble",
        "truncated-header",
        "truncated-section",
        "extra-bytes",
        "flipped-header-byte",
        "flipped-section-byte",
        "old-version",
        "not-ocifs",
        "empty",
        "directory",
        "other-blob-same-name",
    ]


@pytest.mark.parametrize("case", damage_cases())
def test_damaged_cache_file_is_ignored_and_rebuilt(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated, corrupt or old-format cache file is never trusted: the layer is
    indexed again and the file replaced by a good one."""
    resolved, cache = cached_image(tmp_path)
    load(resolved, cache)
    layer = resolved.layers[0]
    path = cache.layer_path(layer.digest)
    data = path.read_bytes()
    preamble = cachefile.PREAMBLE.size
    _, _, header_length, _ = cachefile.PREAMBLE.unpack(data[:preamble])
    if case == "truncated-preamble":
        path.write_bytes(data[:10])
    elif case == "truncated-header":
        path.write_bytes(data[: preamble + header_length // 2])
    elif case == "truncated-section":
        path.write_bytes(data[:-100])
    elif case == "extra-bytes":
        path.write_bytes(data + b"\0")
    elif case == "flipped-header-byte":
        at = preamble + header_length // 2
        path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    elif case == "flipped-section-byte":
        at = len(data) - 50
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])
    elif case == "old-version":
        path.write_bytes(data[:8] + struct.pack("<I", 0) + data[12:])
    elif case == "not-ocifs":
        path.write_bytes(b"hello" * 100)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.unlink()
        path.mkdir()
    blob = layer.blob.path.read_bytes()
    if case == "other-blob-same-name":
        layer.blob.path.write_bytes(blob[:3] + bytes([blob[3] ^ 1]) + blob[4:])  # gzip FLG byte
    with pytest.raises(CacheMiss):
        cache.read_layer(layer, with_entries=True)
    assert cache.load_layer(layer, verify=False, with_entries=True) is None  # logged, not raised
    layer.blob.path.write_bytes(blob)
    if case == "other-blob-same-name":
        assert cache.read_layer(layer, with_entries=True).entries  # the right blob is back
        return
    if case == "directory":
        path.rmdir()
    cache.tree_path(resolved.layers).unlink()  # so the merge needs the layer's entries
    with caplog.at_level(logging.INFO, logger="ocifs"):
        report = load(resolved, cache)
    assert layer in report.indexed
    assert cache.read_layer(layer, with_entries=True).entries  # rebuilt, and good


def test_a_blob_replaced_under_its_name_is_indexed_again(tmp_path: Path) -> None:
    """The cache keys on the digest, but checks a sample of the blob: a different blob
    under the same name (damaged, swapped) is never served from the old index."""
    resolved, cache = cached_image(tmp_path)
    load(resolved, cache)
    layer = resolved.layers[1]
    original = layer.blob.path.read_bytes()
    layer.blob.path.write_bytes(original[:-8] + b"\0" * 8)  # the gzip trailer is gone
    with pytest.raises(CacheMiss, match="differs from the one indexed"):
        cache.read_layer(layer, with_entries=False)
    with pytest.raises(LayerError, match=r"mismatch|damaged|truncated"):
        load(resolved, cache)


def test_write_is_atomic_and_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved, cache = cached_image(tmp_path)
    load(resolved, cache)
    path = cache.layer_path(resolved.layers[0].digest)
    before = path.read_bytes()

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ocifs.cachefile.os.replace", fail)
    indexed = index_layer(resolved.layers[0])
    assert cache.store_layer(resolved.layers[0], indexed) is indexed  # not written: logged
    assert path.read_bytes() == before
    leftovers = [p.name for p in cache.root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_unwritable_cache_dir_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolved, _ = cached_image(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="ocifs"):
        report = load(resolved, IndexCache(blocker / "cache"))
    assert report.indexed == list(resolved.layers)
    assert "cannot write the index cache" in caplog.text


def test_cache_file_names_come_from_the_digest_only(tmp_path: Path) -> None:
    """Nothing in an image chooses a host path: the file name is the digest's hex."""
    resolved, cache = cached_image(tmp_path)
    load(resolved, cache)
    names = sorted(
        p.relative_to(cache.root).as_posix() for p in cache.root.rglob("*") if p.is_file()
    )
    hexes = sorted(f"layers/sha256/{layer.digest[7:]}" for layer in resolved.layers)
    key = indexcache.tree_key(resolved.layers)
    assert names == sorted([*hexes, f"trees/{key}"])
    meta, _ = read_file(cache.layer_path(resolved.layers[0].digest), "layer", set())
    assert meta["digest"] == resolved.layers[0].digest
    assert json.dumps(meta)  # plain JSON
    assert hashlib.sha256(b"").hexdigest() not in names


def test_windows_stay_on_disk_and_damage_under_a_live_mount_fails_only_the_read(
    tmp_path: Path,
) -> None:
    """Seek-point windows of a cached layer are read from the cache file when a cursor
    starts, not held in memory; if that file is damaged meanwhile, the read fails (the
    mount answers EIO) and nothing else does."""
    data = os.urandom(3 << 20)
    tar = make_tar([f("data", data)])
    layer = blob_layer(tmp_path, tar, "gzip")
    cache = IndexCache(tmp_path / "cache")
    indexed = index_layer(layer, spacing=256 << 10)
    stored = cache.store_layer(layer, indexed)
    assert stored.points is not None and isinstance(stored.points.windows, cachefile.FileSection)
    found = cache.load_layer(layer, verify=True, with_entries=False)
    assert found is not None
    points = found.points
    assert points is not None and isinstance(points.windows, cachefile.FileSection)
    entry = indexed.entries[0]
    reader = open_reader(layer, points, BlockCache(1 << 20))
    try:
        assert reader.pread(entry.data_offset + (2 << 20), 4096) == data[2 << 20 : (2 << 20) + 4096]
        path = cache.layer_path(layer.digest)
        with open(path, "r+b") as damaged:  # the windows are the last section
            damaged.seek(-len(points.windows), os.SEEK_END)
            damaged.write(b"\xff" * len(points.windows))
        with pytest.raises(DamagedLayer):
            reader.pread(entry.data_offset + (1 << 20), 4096)  # a new cursor: a window needed
        assert reader.pread(entry.data_offset, 100) == data[:100]  # the first point has none
    finally:
        reader.close()


# The sha256 of the two cache files that ``store_fixed_layer_and_tree`` writes. FORMAT_VERSION
# 1's were taken from the code before the format's code was split up (commit e090620); version
# 2 (the tar scanner reads streams as Go does, so old indexes of odd layers are stale) and 3
# (entries Linux cannot carry are refused while indexing: T4-T6) changed only the version
# fields; then, before anything released used version 3, the layer file gained the block sums
# of a verified layer (meta "blocks" and section "blocks.sums", from the blockcheck branch),
# and its digest changed without another bump. Version 4: the tree's layer column names the
# layer of every inode (a directory's last attribute change, the layer that implied a parent,
# a symlink's or a device's entry), not only of regular files (-1 before), for -o provenance;
# the layer file changed only in its version field. Version 5: access ACLs are stored as the
# engines' chmod leaves them (so old caches hold the tar's raw ACLs); only the version fields
# changed. Version 6: the preamble's and the sections' digests are XXH3-128 (16 bytes in the
# preamble, 32 hex digits in the table), not SHA-256. If these change, so must FORMAT_VERSION,
# or old caches are misread.
FIXED_LAYER_FILE_SHA256 = "dfe5e9e9c70764b19ecb745ff03bf19434c9aa367efaa3763b690e4a0d481961"
FIXED_TREE_FILE_SHA256 = "d4cf275ee28bd6bf9bab6b64c507d8242e0850539d52a1f30c525d21e5d5e7a5"
FIXED_MTIME_NS = 1_700_000_000_123_456_789


def fixed_entry(
    path: bytes,
    kind: str,
    mode: int = 0o644,
    *,
    uid: int = 0,
    gid: int = 0,
    mtime_ns: int = FIXED_MTIME_NS,
    size: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[bytes, bytes] | None = None,
    data_offset: int = 0,
    sparse: tuple[tuple[int, int], ...] | None = None,
    header_offset: int = 0,
) -> TarEntry:
    return TarEntry(
        path,
        kind,
        mode,
        uid,
        gid,
        mtime_ns,
        size,
        linkname,
        devmajor,
        devminor,
        xattrs,
        data_offset,
        sparse,
        header_offset,
    )


def fixed_seek_points(compressed_size: int) -> SeekPoints:
    """Two seek points with a window each, made by hand (no zlib: its output may vary)."""
    return SeekPoints(
        spacing=1 << 20,
        uncompressed=array.array("Q", [0, 1 << 20]),
        compressed=array.array("Q", [10, 4000]),
        bits=b"\x00\x05",
        window_offsets=array.array("Q", [0, 0, 7]),
        windows=b"windows",
        size=3 << 20,
        compressed_size=compressed_size,
    )


def store_fixed_layer_and_tree(root: Path) -> tuple[Path, Path]:
    """Store one layer index and one merged tree built from fixed values only (no tarfile,
    no zlib, whose output may vary between versions), covering every column: each entry
    kind, xattrs, a sparse map, 32-bit ids, a negative mtime, seek points with a window."""
    lower = [
        fixed_entry(b"etc", tarscan.DIR, 0o755),
        fixed_entry(
            b"etc/passwd",
            tarscan.FILE,
            size=27,
            xattrs={b"user.note": b"\x00\xff", b"security.capability": b"\x01\x00\x00\x02"},
            data_offset=1536,
            header_offset=1024,
        ),
        fixed_entry(
            b"etc/shadow", tarscan.FILE, 0o640, gid=42, size=6, data_offset=2560, header_offset=2048
        ),
        fixed_entry(
            b"etc/localtime",
            tarscan.SYMLINK,
            0o777,
            linkname=b"/usr/share/zoneinfo/UTC",
            header_offset=3072,
        ),
        fixed_entry(
            b"etc/passwd-link", tarscan.HARDLINK, linkname=b"etc/passwd", header_offset=3584
        ),
        fixed_entry(
            b"dev/null", tarscan.CHARDEV, 0o666, devmajor=1, devminor=3, header_offset=4096
        ),
        fixed_entry(
            b"dev/sda", tarscan.BLOCKDEV, 0o660, devmajor=8, devminor=0, header_offset=4608
        ),
        fixed_entry(b"run/fifo", tarscan.FIFO, header_offset=5120),
        fixed_entry(
            b"var/sparse",
            tarscan.FILE,
            size=1 << 20,
            data_offset=6144,
            sparse=((0, 10), (65536, 20)),
            header_offset=5632,
        ),
        fixed_entry(
            b"big-ids",
            tarscan.FILE,
            uid=2**32 - 2,
            gid=2**31,
            mtime_ns=-1,
            data_offset=7168,
            header_offset=6656,
        ),
    ]
    upper = [
        fixed_entry(b"etc/.wh.shadow", tarscan.FILE),
        fixed_entry(b"etc/new", tarscan.FILE, size=3, data_offset=1024, header_offset=512),
        fixed_entry(b"etc", tarscan.DIR, 0o700, xattrs={b"user.dir": b"up"}, header_offset=1536),
    ]
    blob = b"ocifs golden blob\n" * 5000
    (root / "blob").write_bytes(blob)
    gzip_layer = Compression("gzip")
    layer = LayerRef(
        0,
        sha256_digest(blob),
        len(blob),
        OCI_LAYER_GZIP,
        gzip_layer,
        "sha256:" + "2" * 64,
        FileBlob(root / "blob", len(blob)),
    )
    points = fixed_seek_points(compressed_size=len(blob))
    cache = IndexCache(root / "cache")
    blocks = BlockSums(ALGORITHM, CACHE_BLOCK, array.array("Q", [0x0123456789ABCDEF]), 8192)
    cache.store_layer(layer, LayerIndex(lower, points, 8192, True, blocks))
    builder = TreeBuilder()
    builder.apply_layer(0, lower)
    builder.apply_layer(1, upper)
    upper_layer = LayerRef(
        1, "sha256:" + "3" * 64, 10, OCI_LAYER_GZIP, gzip_layer, "sha256:" + "4" * 64, layer.blob
    )
    cache.store_tree([layer, upper_layer], builder.freeze())
    return cache.layer_path(layer.digest), cache.tree_path([layer, upper_layer])


@pytest.mark.skipif(sys.byteorder != "little", reason="the digests were taken on little-endian")
def test_cache_files_are_byte_identical_to_format_version_1(tmp_path: Path) -> None:
    """The on-disk format is pinned: the same input gives the same bytes as before."""
    layer_file, tree_file = store_fixed_layer_and_tree(tmp_path)
    assert hashlib.sha256(layer_file.read_bytes()).hexdigest() == FIXED_LAYER_FILE_SHA256
    assert hashlib.sha256(tree_file.read_bytes()).hexdigest() == FIXED_TREE_FILE_SHA256


def fixed_points() -> tuple[dict[str, object], dict[str, bytes]]:
    points = fixed_seek_points(compressed_size=9000)
    sections: dict[str, bytes] = {}
    meta = indexcache.encode_points(points, sections)
    return meta, sections


def test_seek_points_round_trip_and_damage_does_not_decode() -> None:
    meta, sections = fixed_points()
    points = indexcache.decode_points(meta, sections)
    assert (list(points.uncompressed), list(points.compressed)) == ([0, 1 << 20], [10, 4000])
    assert (points.bits, points.windows, points.size) == (b"\x00\x05", b"windows", 3 << 20)
    damage = {
        "window bounds": {"points.windows": b"window"},
        "bad bit counts": {"points.bits": b"\x00\x08"},
        "do not start at 0": {
            "points.uncompressed": array.array("Q", [1, 1 << 20]).tobytes(),
        },
    }
    for message, edit in damage.items():
        with pytest.raises(ValueError, match=message):
            indexcache.decode_points(meta, {**sections, **edit})


def test_entries_round_trip_and_damage_does_not_decode() -> None:
    entries = list(scan_tar(_Reader(make_tar(awkward_members()))))
    meta, sections = indexcache.encode_entries(entries)
    assert indexcache.decode_entries(meta, sections) == entries
    with pytest.raises(ValueError, match="kind column"):
        indexcache.decode_entries(meta, {**sections, "entry.kind": sections["entry.kind"][1:]})
    with pytest.raises(ValueError, match=r"column entry\.uid"):
        indexcache.decode_entries(meta, {**sections, "entry.uid": sections["entry.uid"][8:]})
    with pytest.raises(KeyError):
        indexcache.decode_entries(meta, {**sections, "entry.kind": b"z" * len(entries)})
