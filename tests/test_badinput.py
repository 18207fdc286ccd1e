"""Bad input on the command line: every case fails before anything is mounted (B1-B5).

Each case writes a small layout that is wrong in exactly one way (JSON and blobs written by hand
where the defect is in a digest, so that only the tested check can fire), runs
``ocifs mount`` and asserts: a non-zero exit, exactly one non-empty line on stderr that carries
the key facts (the ref asked and the refs present, the layer index and digest, the entry name),
no traceback, and nothing mounted. Ids: B1-B5, R2, R3, R5, R7-R10, W7, P2, P3, H3, M10, T4-T6,
X1.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from chunkedbuild import chunked_layer
from mounting import OCIFS, dev_fuse_mode, is_mounted, run_ocifs, unmount
from tarbuild import Member, d, f, link, make_tar

from ocifs.mediatypes import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME,
)
from ocifs.ocibuild import gzip_bytes, host_platform, sha256_digest, zstd_bytes

GOOD_TAR = make_tar([d("etc"), f("etc/hostname", b"ocifs\n"), f("hello", b"hi\n")])


class Layout:
    """An OCI layout written by hand, so any digest, size or diff_id can be made wrong."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.manifests: list[dict[str, Any]] = []

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256_digest(data)
        self.path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def layer(
        self, tar: bytes, compression: str = "gzip", media_type: str | None = None
    ) -> tuple[dict[str, Any], str]:
        data = gzip_bytes(tar) if compression == "gzip" else tar
        default = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER_TAR
        return self.blob(data, media_type or default), sha256_digest(tar)

    def image(
        self,
        layers: list[tuple[dict[str, Any], str]],
        ref: str | None = "latest",
        platform: tuple[str, str] | None = None,
        listed: bool = True,
    ) -> dict[str, Any]:
        os_name, arch = platform or host_platform()
        config = {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
            "config": {},
        }
        config_descriptor = self.blob(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [descriptor for descriptor, _ in layers],
        }
        descriptor = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"os": os_name, "architecture": arch}
        if listed:
            self.list(descriptor, ref)
        return descriptor

    def nested_index(self, manifests: list[dict[str, Any]], ref: str) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        self.list(self.blob(json.dumps(index).encode(), OCI_INDEX), ref)

    def list(self, descriptor: dict[str, Any], ref: str | None) -> None:
        entry = dict(descriptor)
        if ref is not None:
            entry["annotations"] = {REF_NAME: ref}
        self.manifests.append(entry)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.manifests}
        (self.root / "index.json").write_text(json.dumps(index))


def two_layers(root: Path, upper: bytes, compression: str = "gzip") -> tuple[Layout, dict]:
    """A good layer 0 and the given tar as layer 1; returns the layout and layer 1's
    descriptor."""
    layout = Layout(root)
    lower = layout.layer(GOOD_TAR)
    top = layout.layer(upper, compression)
    layout.image([lower, top])
    return layout, top[0]


def mount_fails(tmp_path: Path, image: str, *facts: str, options: tuple[str, ...] = ()) -> str:
    """Run ``ocifs mount``; check the failure contract; return the one line of stderr."""
    mountpoint = tmp_path / "mnt"
    if not mountpoint.exists():
        mountpoint.mkdir()
    try:
        result = run_ocifs("mount", *options, image, str(mountpoint))
        assert result.returncode != 0, "ocifs mount succeeded on bad input"
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
        line = lines[0]
        assert line.strip(), "stderr is empty"
        for fact in facts:
            assert fact in line, f"{fact!r} missing from: {line}"
        assert not is_mounted(mountpoint), "a failed mount left the mountpoint mounted"
        return line
    finally:
        if mountpoint.exists():
            unmount(mountpoint)


# --- the layout (B1, R2, R3, R5) -------------------------------------------------------------


def test_b1_layout_dir_missing(tmp_path: Path) -> None:
    """B1: the layout directory does not exist."""
    missing = tmp_path / "no-such-layout"
    mount_fails(tmp_path, f"{missing}:latest", str(missing))


def test_b1_no_oci_layout_file(tmp_path: Path) -> None:
    """B1: the layout has no oci-layout file."""
    layout = Layout(tmp_path / "layout")
    layout.image([layout.layer(GOOD_TAR)])
    (layout.root / "oci-layout").unlink()
    mount_fails(tmp_path, f"{layout.root}:latest", "oci-layout")


def test_b1_malformed_index_json(tmp_path: Path) -> None:
    """B1: index.json is not JSON."""
    layout = Layout(tmp_path / "layout")
    layout.image([layout.layer(GOOD_TAR)])
    (layout.root / "index.json").write_text('{"schemaVersion": 2, "manifests": [')
    mount_fails(tmp_path, f"{layout.root}:latest", "index.json")


def test_r3_ref_not_found_lists_refs(tmp_path: Path) -> None:
    """R3: an unknown ref names the ref asked and lists the refs present."""
    layout = Layout(tmp_path / "layout")
    layout.image([layout.layer(GOOD_TAR)], ref="latest")
    layout.image([layout.layer(make_tar([f("v1")]))], ref="v1.0")
    mount_fails(tmp_path, f"{layout.root}:v2", "v2", "latest", "v1.0")


def test_r2_digest_not_found(tmp_path: Path) -> None:
    """R2 R3: LAYOUT@DIGEST with a digest that no descriptor has names that digest."""
    layout = Layout(tmp_path / "layout")
    layout.image([layout.layer(GOOD_TAR)])
    absent = "sha256:" + "ab" * 32
    mount_fails(tmp_path, f"{layout.root}@{absent}", absent)


def test_r5_platform_not_present(tmp_path: Path) -> None:
    """R5: --platform that the image index does not have lists the platforms present."""
    layout = Layout(tmp_path / "layout")
    amd64 = layout.image([layout.layer(GOOD_TAR)], platform=("linux", "amd64"), listed=False)
    arm64 = layout.image([layout.layer(GOOD_TAR)], platform=("linux", "arm64"), listed=False)
    layout.nested_index([amd64, arm64], "multi")
    wanted = ("--platform", "linux/s390x")
    image = f"{layout.root}:multi"
    mount_fails(tmp_path, image, "linux/s390x", "linux/amd64", "linux/arm64", options=wanted)


def test_mountpoint_missing(tmp_path: Path) -> None:
    """The mountpoint does not exist: one line naming it, nothing created."""
    layout = Layout(tmp_path / "layout")
    layout.image([layout.layer(GOOD_TAR)])
    mountpoint = tmp_path / "no-such-mountpoint"
    result = run_ocifs("mount", f"{layout.root}:latest", str(mountpoint))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert str(mountpoint) in lines[0]
    assert not mountpoint.exists()


# --- blobs (B2, R7, R9, R10) -----------------------------------------------------------------


def test_r10_missing_layer_blob(tmp_path: Path) -> None:
    """R10 B2: a missing layer blob is named by its layer index and digest."""
    layout, top = two_layers(tmp_path / "layout", make_tar([f("upper", b"up")]))
    layout.path(top["digest"]).unlink()
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"])


def test_r9_layer_digest_mismatch(tmp_path: Path) -> None:
    """R9 B2: the blob's content changed, same size; still valid gzip of the same tar (only the
    gzip header's mtime differs), so only the digest check can catch it."""
    layout, top = two_layers(tmp_path / "layout", make_tar([f("upper", b"up")]))
    path = layout.path(top["digest"])
    data = bytearray(path.read_bytes())
    data[4:8] = (123456789).to_bytes(4, "little")
    assert gzip.decompress(bytes(data)) == gzip.decompress(path.read_bytes())
    path.write_bytes(bytes(data))
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"])


def test_r9_diff_id_mismatch(tmp_path: Path) -> None:
    """R9 B2: the config's diff_id does not match the decompressed layer."""
    layout = Layout(tmp_path / "layout")
    lower = layout.layer(GOOD_TAR)
    descriptor, _ = layout.layer(make_tar([f("upper", b"up")]))
    wrong = sha256_digest(b"not this layer")
    layout.image([lower, (descriptor, wrong)])
    line = mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", descriptor["digest"])
    assert "diff" in line.lower()


def zstd_layer(
    root: Path, data: bytes, tar: bytes, notes: dict[str, str] | None = None
) -> tuple[Layout, dict]:
    """Layer 1 is tar+zstd with the blob ``data``; its descriptor (digest, size) and diff_id
    fit that blob and ``tar``, so only the zstd stream can be wrong."""
    layout = Layout(root)
    lower = layout.layer(GOOD_TAR)
    descriptor = layout.blob(data, OCI_LAYER_ZSTD)
    if notes:
        descriptor["annotations"] = notes
    layout.image([lower, (descriptor, sha256_digest(tar))])
    return layout, descriptor


ZSTD_TAR = make_tar([f(f"file{i}", bytes([65 + i % 26]) * 20_000) for i in range(20)])


def test_b3_not_a_zstd_stream(tmp_path: Path) -> None:
    """R7 B3: a tar+zstd layer whose blob is a plain tar: one line, naming the layer."""
    layout, top = zstd_layer(tmp_path / "layout", GOOD_TAR, GOOD_TAR)
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "not a zstd stream")


def test_b3_z1_truncated_zstd(tmp_path: Path) -> None:
    """B3 Z1: a zstd stream cut in half."""
    compressed = zstd_bytes(ZSTD_TAR)
    layout, top = zstd_layer(tmp_path / "layout", compressed[: len(compressed) // 2], ZSTD_TAR)
    mount_fails(
        tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "zstd stream is truncated"
    )


def test_b3_z1_bad_zstd_frame_checksum(tmp_path: Path) -> None:
    """B3 Z1: the content checksum at the end of the frame does not match its data."""
    compressed = bytearray(zstd_bytes(ZSTD_TAR))
    compressed[-2] ^= 0xFF
    layout, top = zstd_layer(tmp_path / "layout", bytes(compressed), ZSTD_TAR)
    line = mount_fails(
        tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "zstd frame 1 is damaged"
    )
    assert "checksum" in line


def test_b3_z1_garbage_after_the_last_zstd_frame(tmp_path: Path) -> None:
    """B3 Z1: bytes after the last frame."""
    compressed = zstd_bytes(ZSTD_TAR)
    data = compressed + b"this is not a zstd frame\n"
    layout, top = zstd_layer(tmp_path / "layout", data, ZSTD_TAR)
    mount_fails(
        tmp_path,
        f"{layout.root}:latest",
        "layer 1",
        top["digest"],
        f"garbage after the last zstd frame, at blob offset {len(compressed)}",
    )


def test_b3_z3_zstd_chunked_footer_that_lies(tmp_path: Path) -> None:
    """B3 Z3: a zstd:chunked footer putting the TOC where no skippable frame is."""
    chunked = chunked_layer(ZSTD_TAR)
    _, honest = chunked.assemble()
    offset = int(honest[chunked.prefix + "manifest-position"].split(":")[0])
    chunked.footer_override = {0: offset - 100}
    data, _ = chunked.assemble()
    layout, top = zstd_layer(tmp_path / "layout", data, ZSTD_TAR)
    mount_fails(
        tmp_path,
        f"{layout.root}:latest",
        "layer 1",
        top["digest"],
        f"zstd:chunked footer or annotation puts the TOC at blob offset {offset - 100}",
    )


def test_b3_z3_zstd_chunked_annotation_that_lies(tmp_path: Path) -> None:
    """B3 Z3: the manifest's annotation and the blob's footer disagree."""
    chunked = chunked_layer(ZSTD_TAR)
    data, notes = chunked.assemble()
    key = chunked.prefix + "manifest-position"
    offset, length, size, kind = notes[key].split(":")
    notes[key] = f"{offset}:{length}:{int(size) + 1}:{kind}"
    layout, top = zstd_layer(tmp_path / "layout", data, ZSTD_TAR, notes)
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], f"annotation {key} is")


# --- compression and tar (B3, B4) ------------------------------------------------------------


def damaged_gzip_layer(root: Path, damage: str) -> tuple[Layout, dict]:
    """Layer 1 is gzip, damaged; its descriptor (digest, size) and diff_id fit the damaged
    blob and the original tar, so only decompression can fail."""
    layout = Layout(root)
    lower = layout.layer(GOOD_TAR)
    tar = make_tar([f(f"file{i}", bytes([65 + i % 26]) * 20_000) for i in range(20)])
    compressed = gzip_bytes(tar)
    if damage == "truncated":
        data = compressed[: len(compressed) // 2]
    else:
        data = compressed + b"this is not a gzip member, just trailing garbage\n"
    top = (layout.blob(data, OCI_LAYER_GZIP), sha256_digest(tar))
    layout.image([lower, top])
    return layout, top[0]


def test_b3_truncated_gzip(tmp_path: Path) -> None:
    """B3: a gzip stream cut in half."""
    layout, top = damaged_gzip_layer(tmp_path / "layout", "truncated")
    mount_fails(
        tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "gzip stream is truncated"
    )


def test_b3_garbage_after_gzip_stream(tmp_path: Path) -> None:
    """B3: bytes after the end of the gzip stream."""
    layout, top = damaged_gzip_layer(tmp_path / "layout", "garbage")
    mount_fails(
        tmp_path,
        f"{layout.root}:latest",
        "layer 1",
        top["digest"],
        "garbage after the end of the gzip stream",
    )


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_b4_bad_header_checksum_mid_archive(tmp_path: Path, compression: str) -> None:
    """B4: one flipped byte in the second member's header; digest and diff_id are recomputed so
    only the tar is bad. The message names the layer and the header's offset."""
    members = [f("first", b"1" * 100), f("second", b"2" * 100), f("third", b"3" * 100)]
    tar = bytearray(make_tar(members, fmt=tarfile.USTAR_FORMAT))
    offset = 1024  # header 512 bytes + 100 bytes of data padded to 512
    assert tar[offset : offset + 6] == b"second"
    tar[offset + 3] ^= 0x20  # "second" -> "seCond", checksum left as it was
    layout, top = two_layers(tmp_path / "layout", bytes(tar), compression)
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], str(offset))


# --- entries (B5: P2, P3, W7, H3, M10) -------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil"])
def test_p2_path_escaping_the_root(tmp_path: Path, name: str) -> None:
    """P2 B5: a name that escapes the root rejects the layer, naming the entry; nothing is
    written outside."""
    work = tmp_path / "work"
    work.mkdir()
    layout, top = two_layers(work / "layout", make_tar([d("a"), f(name, b"evil\n")]))
    mount_fails(work, f"{layout.root}:latest", "layer 1", top["digest"], "evil")
    for place in [tmp_path, work, work / "layout", work / "layout" / "blobs"]:
        assert not (place / "evil").exists()
    assert list((work / "mnt").iterdir()) == []


def test_p3_component_over_255_bytes(tmp_path: Path) -> None:
    """P3 B5: a name component longer than 255 bytes."""
    long_name = "d/" + "x" * 256
    layout, top = two_layers(tmp_path / "layout", make_tar([d("d"), f(long_name, b"long")]))
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"])


@pytest.mark.parametrize("name", ["d/.wh..", "d/.wh...", "d/.wh.", "d/.wh.x/y"])
def test_w7_bad_whiteout(tmp_path: Path, name: str) -> None:
    """W7 B5: `.wh.` with an empty name, `.wh..`, `.wh...`, and `.wh.` inside a path."""
    layout, top = two_layers(tmp_path / "layout", make_tar([d("d"), f(name)]))
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], name)


@pytest.mark.parametrize(
    "members,target",
    [
        ([link("l", "missing-target")], "missing-target"),
        ([d("somedir"), link("l", "somedir")], "somedir"),
    ],
    ids=["missing", "directory"],
)
def test_h3_bad_hardlink_target(tmp_path: Path, members: list[Member], target: str) -> None:
    """H3 B5: a hardlink to a target that does not exist, or to a directory."""
    layout, top = two_layers(tmp_path / "layout", make_tar(members))
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], target)


def test_m10_root_entry_not_a_directory(tmp_path: Path) -> None:
    """M10 B5: a `./` root entry that is a regular file."""
    layout, top = two_layers(tmp_path / "layout", make_tar([f("./", b"not a dir")]))
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"])


@pytest.mark.fuse
def test_good_layout_mounts(tmp_path: Path) -> None:
    """Control: the hand-written layout without a defect mounts (so the cases above fail for
    their defect alone)."""
    layout, _ = two_layers(tmp_path / "layout", make_tar([f("upper", b"up")]))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_ocifs("mount", f"{layout.root}:latest", str(mountpoint))
    try:
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in mountpoint.iterdir()) == ["etc", "hello", "upper"]
    finally:
        unmount(mountpoint)


def test_tar_helpers_are_sane() -> None:
    """The bad-checksum case relies on ustar members at 512-byte boundaries."""
    tar = make_tar([f("first", b"1" * 100)], fmt=tarfile.USTAR_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert [m.name for m in t] == ["first"]


# --- what Linux cannot carry (T4, T5, T6) and names too long to quote (B1-B5) ---------------

LONG = 300_000  # bytes of the names a fuzzer put where a name goes


def short_line(line: str) -> None:
    """The line quotes the long name by its ends and its length, and stays short."""
    assert f"({LONG} bytes)" in line or f"({LONG + 1} bytes)" in line, line[:500]
    assert "…" in line and len(line) < 600, len(line)


def test_b4_t4_a_300_kb_entry_name_is_one_short_line(tmp_path: Path) -> None:
    """B4 T4: an entry whose name is 300 KB (a PAX path) fails the layer as longer than
    PATH_MAX, and the one line quotes the name by its start and end, saying how long it was
    (it used to quote all 300 KB)."""
    name = "n" * (LONG - 4) + "/end"
    layout, top = two_layers(tmp_path / "layout", make_tar([f(name, b"x")]))
    line = mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "PATH_MAX")
    short_line(line)
    assert "'nnnnnnnnnn" in line and "nnnn/end'" in line


def long_json_layout(root: Path, where: str) -> Layout:
    """A layout with a 300 KB string where a ref, a media type or a digest goes."""
    layout = Layout(root)
    layer = layout.layer(GOOD_TAR)
    if where == "ref":
        layout.image([layer], ref="r" * LONG)
        layout.image([layout.layer(make_tar([f("b")]))], ref="other")
    elif where == "mediaType":
        layout.image([({**layer[0], "mediaType": "m" * LONG}, layer[1])])
    else:
        layout.image([({**layer[0], "digest": "sha256:" + "d" * (LONG - 7)}, layer[1])])
    return layout


@pytest.mark.parametrize("where", ["ref", "mediaType", "digest"])
def test_b1_300_kb_strings_in_json_are_one_short_line(tmp_path: Path, where: str) -> None:
    """B1 R3 R7 R8: a 300 KB ref name (listed among the refs present), media type or digest
    is quoted by its ends and its length."""
    layout = long_json_layout(tmp_path / "layout", where)
    short_line(mount_fails(tmp_path, f"{layout.root}:nope" if where == "ref" else str(layout.root)))


def test_x1_a_300_kb_member_name_in_manifest_json_is_one_short_line(tmp_path: Path) -> None:
    """X1 B1: a docker-archive whose manifest.json names a 300 KB config member."""
    manifest = json.dumps([{"Config": "c" * LONG, "RepoTags": ["a:1"], "Layers": []}]).encode()
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    short_line(mount_fails(tmp_path, f"{archive}:a:1", "is missing from the archive"))


@pytest.mark.parametrize(
    "member,shown",
    [
        (Member("dev/big", "char", devmajor=1 << 40), "1099511627776:0"),  # GNU base-256
        (Member("dev/major", "block", devmajor=4096), "4096:0"),
        (Member("dev/minor", "char", devminor=1 << 20), "0:1048576"),
    ],
    ids=["base256-major", "octal-major", "octal-minor"],
)
def test_t5_device_numbers_beyond_linux_fail_the_mount(
    tmp_path: Path, member: Member, shown: str
) -> None:
    """T5 B4: a device number Linux cannot carry fails the layer while it is indexed (it
    used to mount and fail later), naming the layer, the entry and the number."""
    tar = make_tar([member], fmt=tarfile.GNU_FORMAT)
    layout, top = two_layers(tmp_path / "layout", tar)
    mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], member.name, shown)


def test_t4_an_entry_100_000_directories_deep_fails_the_mount(tmp_path: Path) -> None:
    """T4 B4: one entry 100,000 directories deep (a 200 KB path) is refused, in one line."""
    layout, top = two_layers(tmp_path / "layout", make_tar([f("d/" * 100_000 + "f")]))
    line = mount_fails(tmp_path, f"{layout.root}:latest", "layer 1", "200002 bytes long")
    assert top["digest"] in line and len(line) < 600


ACL_GOOD = struct.pack("<IHHIHHIHHI", 2, 1, 6, 0, 4, 4, 0, 0x20, 4, 0)
# u::rwx u:7:rw- g::r-x m::rwx o::r-x: with mode 0750, chmod makes its mask r-x and other ---
ACL_NAMED = struct.pack("<I" + "HHI" * 5, 2, 1, 7, 0, 2, 6, 7, 4, 5, 0, 0x10, 7, 0, 0x20, 5, 0)


def xattr(name: str, value: bytes) -> dict[str, str]:
    return {f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")}


@pytest.mark.parametrize(
    "name,value,fragment",
    [
        ("user." + "n" * 251, b"v", "a name of 256 bytes, over 255 (ERANGE)"),
        ("user.big", b"v" * 65537, "a value of 65537 bytes, over 65536 (E2BIG)"),
        ("system.posix_acl_access", ACL_GOOD[:-8], "an ACL the kernel refuses"),
        ("system.posix_acl_access", b"\x02\x00\x00", "shorter than its header"),
        ("security.capability", b"\x00\x00\x00\x02" + bytes(8), "not a file capability"),
    ],
    ids=["name-over-255", "value-over-64k", "acl-invalid", "acl-short", "capability-invalid"],
)
def test_t6_xattrs_the_kernel_refuses_fail_the_mount(
    tmp_path: Path, name: str, value: bytes, fragment: str
) -> None:
    """T6 B4: an xattr setxattr(2) refuses fails the layer, as it fails the layer when a
    container engine applies it (these used to be served and fail getxattr/listxattr)."""
    tar = make_tar([f("etc/file", b"x", pax=xattr(name, value))])
    layout, top = two_layers(tmp_path / "layout", tar)
    shown = name if len(name) < 100 else name[:50]
    mount_fails(
        tmp_path, f"{layout.root}:latest", "layer 1", top["digest"], "etc/file", shown, fragment
    )


@pytest.mark.fuse
def test_t6_xattrs_the_engines_leave_out_are_left_out_of_the_mount(tmp_path: Path) -> None:
    """T6 A7 A3: a name in no namespace Linux handles is left out, with one warning line,
    as containerd leaves it out (ENOTSUP); LIBARCHIVE.xattr.%00 (which made listxattr fail
    with EIO) is ignored as by Go; the largest device number Linux carries is served."""
    members = [
        f("odd", b"x", pax={**xattr("foo.bar", b"1"), **xattr("user.kept", b"2")}),
        f("libarchive", b"y", pax={"LIBARCHIVE.xattr.%00": "AA"}),
        Member("dev/largest", "char", devmajor=4095, devminor=(1 << 20) - 1),
    ]
    layout, _ = two_layers(tmp_path / "layout", make_tar(members, fmt=tarfile.PAX_FORMAT))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_ocifs("mount", f"{layout.root}:latest", str(mountpoint))
    try:
        assert result.returncode == 0, result.stderr
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1 and "xattr 'foo.bar' left out" in lines[0], result.stderr
        assert os.listxattr(mountpoint / "odd") == ["user.kept"]
        assert os.listxattr(mountpoint / "libarchive") == []
        rdev = os.lstat(mountpoint / "dev/largest").st_rdev
        assert (os.major(rdev), os.minor(rdev)) == (4095, (1 << 20) - 1)
    finally:
        unmount(mountpoint)


@pytest.mark.fuse
def test_t6_acls_with_no_entries_are_not_listed_and_every_listed_name_reads(
    tmp_path: Path,
) -> None:
    """T6 A7: an ACL xattr with no entries (an empty value, a version header alone) is what
    setxattr takes as "remove the ACL", so an engine's file has none; it is left out with one
    warning line each (the fuzzer found it listed while getxattr gave ENODATA). Access ACLs
    are as an engine's setxattr-then-chmod leaves them on a real file. Read with getfattr,
    and listxattr and getxattr agree on every name of the tree."""
    members = [
        d("dir", pax={**xattr("system.posix_acl_default", b""), **xattr("user.d", b"1")}),
        f("dir/file", b"x", pax={**xattr("system.posix_acl_access", b"\x02\0\0\0")}),
        f("good", b"y", mode=0o750, pax={**xattr("system.posix_acl_access", ACL_NAMED)}),
        f("minimal", b"z", mode=0o640, pax={**xattr("system.posix_acl_access", ACL_GOOD)}),
    ]
    layout, _ = two_layers(tmp_path / "layout", make_tar(members, fmt=tarfile.PAX_FORMAT))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_ocifs("mount", f"{layout.root}:latest", str(mountpoint))
    try:
        assert result.returncode == 0, result.stderr
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 2, result.stderr
        assert "'dir/'" in lines[0] and "system.posix_acl_default' left out" in lines[0]
        assert "'dir/file'" in lines[1] and "system.posix_acl_access' left out" in lines[1]
        assert all("no entries" in line for line in lines)
        dumped = subprocess.run(
            ["getfattr", "-R", "-d", "-m", "-", "-e", "hex", "."],
            cwd=mountpoint,
            capture_output=True,
            text=True,
        )
        assert dumped.returncode == 0 and dumped.stderr == "", dumped.stderr
        names = [line.split("=")[0] for line in dumped.stdout.split("\n") if "=" in line]
        assert sorted(names) == ["system.posix_acl_access", "user.d"], dumped.stdout
        # As an engine leaves them (setxattr, then chmod to the tar's mode), on local disk:
        # the named ACL's mask:: and other:: from the mode, the minimal one folded away.
        for name, acl, mode in (("good", ACL_NAMED, 0o750), ("minimal", ACL_GOOD, 0o640)):
            engine = tmp_path / name
            engine.write_bytes(b"")
            os.setxattr(engine, "system.posix_acl_access", acl)
            os.chmod(engine, mode)
            assert os.listxattr(mountpoint / name) == os.listxattr(engine), name
            assert os.stat(mountpoint / name).st_mode == os.stat(engine).st_mode, name
        assert os.getxattr(mountpoint / "good", "system.posix_acl_access") == os.getxattr(
            tmp_path / "good", "system.posix_acl_access"
        )
        for path in [mountpoint, *mountpoint.rglob("*")]:
            for name in os.listxattr(path, follow_symlinks=False):
                os.getxattr(path, name, follow_symlinks=False)  # raises if they disagree
    finally:
        unmount(mountpoint)


def test_b2_a_blob_linked_to_a_host_fifo_is_refused_and_never_opened(tmp_path: Path) -> None:
    """B2 R10: a layer blob that is a symlink to a FIFO outside the layout: ``ocifs index``
    refuses it in one line naming the blob, and strace shows that no system call but
    readlink named the FIFO or its directory (ocifs used to stat it through the link; an
    open would block, and the timeout would fail the test)."""
    layout, top = two_layers(tmp_path / "layout", GOOD_TAR)
    fifo = tmp_path / "host" / "fifo"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    layout.path(top["digest"]).unlink()
    layout.path(top["digest"]).symlink_to(fifo)
    trace = tmp_path / "trace.txt"
    command = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=%file", "-o", str(trace)]
    result = subprocess.run(
        [*command, *OCIFS, "index", "--no-cache", f"{layout.root}:latest"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert top["digest"] in lines[0] and f"is a symlink to '{fifo}', out of" in lines[0]
    calls = trace.read_text().splitlines()
    assert any("readlink" in call and str(fifo) in call for call in calls)  # strace saw it
    named = [call for call in calls if str(fifo.parent) in call and "readlink" not in call]
    assert named == []  # neither the FIFO nor its directory: no open, no stat


# --- the command line -------------------------------------------------------------------------


def good_layout(root: Path) -> Layout:
    layout = Layout(root)
    layout.image([layout.layer(GOOD_TAR)])
    return layout


def test_mountpoint_is_a_file(tmp_path: Path) -> None:
    """A mountpoint that is a regular file."""
    layout = good_layout(tmp_path / "layout")
    target = tmp_path / "file"
    target.write_text("x")
    result = run_ocifs("mount", f"{layout.root}:latest", str(target))
    assert result.returncode != 0
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and str(target) in lines[0], result.stderr
    assert not is_mounted(target)


def test_invalid_platform_syntax(tmp_path: Path) -> None:
    """R5: --platform that is not os/arch[/variant]."""
    layout = good_layout(tmp_path / "layout")
    mount_fails(tmp_path, f"{layout.root}:latest", "bogus", options=("--platform", "bogus"))


def test_unknown_fuse_option(tmp_path: Path) -> None:
    """An -o option FUSE does not know: one line naming it (libfuse's own message must not be
    printed as a second line)."""
    layout = good_layout(tmp_path / "layout")
    mount_fails(tmp_path, f"{layout.root}:latest", "bogus_opt", options=("-o", "bogus_opt"))


def test_umount_not_mounted(tmp_path: Path) -> None:
    """`ocifs umount` of a directory that is not mounted: one line naming it."""
    result = run_ocifs("umount", str(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and str(tmp_path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.fuse
def test_dev_fuse_not_usable_by_user() -> None:
    """An ordinary user who cannot open /dev/fuse (mode 0600 on some machines) gets one line,
    not libfuse's message and ocifs's. The test sets /dev/fuse to 0600 for the case."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    with dev_fuse_mode(0o600):
        probe = subprocess.run([*NOBODY, "sh", "-c", "exec 3<>/dev/fuse"], capture_output=True)
        assert probe.returncode != 0
        mount_without_dev_fuse()


def mount_without_dev_fuse() -> None:
    work = Path(tempfile.mkdtemp(prefix="ocifs-badinput-", dir="/tmp"))
    try:
        work.chmod(0o755)
        layout = good_layout(work / "layout")
        mountpoint = work / "mnt"
        mountpoint.mkdir()
        for path in [work, *work.rglob("*")]:
            os.chown(path, 65534, 65534)
        result = subprocess.run(
            [*NOBODY, *OCIFS, "mount", f"{layout.root}:latest", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ["PATH"], "HOME": str(work)},
        )
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
        assert "/dev/fuse" in lines[0]
        assert not is_mounted(mountpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)
