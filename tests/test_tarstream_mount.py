"""Tar streams as the engines read them, through a real mount (checklist lines T1, T3).

Two images made by the tools that make such layers, not by hand:

* ``umoci insert`` (Debian's umoci 0.4.7) never closes its tar writer, so its layers end
  right after the last member's data: no padding, no end-of-archive blocks (T1). Go's
  archive/tar reads them to the end without complaint, so ``umoci unpack`` and the engines
  apply them. The test checks that each layer's stream really ends so, then compares the
  mounted image entry by entry with ``umoci unpack`` of the same image: zero differences.
* ``buildah`` (vfs storage, as root) commits a container whose files were touched to 2300
  and to 1960: the layer holds PAX mtimes past what 64-bit nanoseconds carry and before
  1970. ocifs clamps the first to 2262-04-11T23:47:16.854775807Z and keeps the second
  negative (T3); ``stat`` on the mount shows both, from a fresh index and from the cache.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted
from tarbuild import f, make_tar
from treecompare import diff, snapshot

from ocifs.ocibuild import LayoutWriter, host_platform

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

MAX_NS = 2**63 - 1  # the largest mtime st_mtime_ns carries: 2262-04-11T23:47:16.854775807Z
MIN_NS = -(2**63)  # 1677-09-21T00:12:43.145224192Z
YEAR_2300 = 10_413_792_000
YEAR_1960 = -302_486_400


def tool(name: str, *args: str | Path) -> str:
    """Run a real tool (installed by scripts/setup); its stdout, or the test fails saying why."""
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: scripts/setup installs it")
    result = subprocess.run([name, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, f"{name} {' '.join(map(str, args))} failed:\n{result.stderr}"
    return result.stdout


def layer_streams(layout: Path, ref: str) -> list[bytes]:
    """The uncompressed tar stream of every layer of ``layout:ref``, lowest first."""
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(descriptor["digest"]))
    streams = []
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        streams.append(gzip.decompress(data) if layer["mediaType"].endswith("+gzip") else data)
    return streams


def member_ends(stream: bytes) -> tuple[list[tuple[bytes, int]], int | None]:
    """Walk the headers of a Go-written layer (ustar with PAX 'x' headers), without ocifs: the
    (name, offset where its data ends) of each member, and the offset of the first zero block
    (None if there is none). CPython's tarfile cannot check these streams: it refuses them
    ("unexpected end of data") where the padding is missing."""
    ends: list[tuple[bytes, int]] = []
    pos = 0
    pax_size: int | None = None
    while pos + 512 <= len(stream):
        block = stream[pos : pos + 512]
        if block == bytes(512):
            return ends, pos
        size = int(block[124:136].strip(b"\x00 ") or b"0", 8)
        typeflag = block[156:157]
        data = pos + 512
        if typeflag == b"x":
            for record in stream[data : data + size].split(b"\n"):
                key, _, value = record.partition(b" ")[2].partition(b"=")
                if key == b"size":
                    pax_size = int(value)
        else:
            if pax_size is not None:
                size, pax_size = pax_size, None
            if typeflag not in (b"0", b"\x00"):
                size = 0  # links, directories, devices: no data
            ends.append((block[:100].split(b"\x00")[0], data + size))
        pos = data + -(-size // 512) * 512
    assert pos >= len(stream), f"a partial header at {pos}"
    return ends, None


def assert_ends_without_end_blocks(stream: bytes) -> None:
    """The stream ends right after its last member's data (or header, for a member without
    data): no padding, no zero blocks."""
    ends, zero_block = member_ends(stream)
    assert zero_block is None, f"a zero block at offset {zero_block}"
    name, end = ends[-1]
    assert end == len(stream), f"{name!r}: ends at {end}, the stream at {len(stream)}"


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base-1: a layer from ``umoci repack``; ins-1..ins-4: ``umoci insert`` layers on top."""
    work = tmp_path_factory.mktemp("umoci-insert")
    lay = work / "layout"
    tool("umoci", "init", "--layout", lay)
    tool("umoci", "new", "--image", f"{lay}:base-0")
    bundle = work / "bundle"
    tool("umoci", "unpack", "--image", f"{lay}:base-0", bundle)
    root = bundle / "rootfs"
    for directory in ("etc", "opt/app/old", "usr/bin"):
        (root / directory).mkdir(parents=True)
    _write(root / "etc/hostname", b"base\n")
    _write(root / "opt/app/old/config", b"replaced by the opaque insert\n")
    _write(root / "opt/app/keep", b"kept by a plain insert, hidden by the opaque one\n")
    _write(root / "usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    tool("umoci", "repack", "--image", f"{lay}:base-1", bundle)

    # ins-1: a directory tree whose last member (in walk order) is a file of an odd size.
    src = work / "src1"
    (src / "lib").mkdir(parents=True)
    _write(src / "lib/a.so", os.urandom(5000), 0o755)
    os.symlink("lib/a.so", src / "link")
    _write(src / "zz-last.txt", b"the last member: 700 bytes ".ljust(700, b"."))
    os.utime(src / "zz-last.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    tool("umoci", "insert", "--image", f"{lay}:base-1", "--tag", "ins-1", src, "/opt/app/new")
    # ins-2: one file, so the layer is one header and 13 bytes of data.
    motd = work / "motd"
    _write(motd, b"hello, world\n")
    tool("umoci", "insert", "--image", f"{lay}:ins-1", "--tag", "ins-2", motd, "/etc/motd")
    # ins-3: an opaque insert (W4): /opt/app holds only what this layer puts there.
    src2 = work / "src2"
    src2.mkdir()
    _write(src2 / "only", b"the only file of /opt/app now\n")
    tool(
        "umoci", "insert", "--image", f"{lay}:ins-2", "--tag", "ins-3", "--opaque", src2, "/opt/app"
    )
    # ins-4: a whiteout alone (W1): the layer is one header, no data at all.
    tool(
        "umoci",
        "insert",
        "--image",
        f"{lay}:ins-3",
        "--tag",
        "ins-4",
        "--whiteout",
        "/usr/bin/tool",
    )
    return lay


INSERTED = ["ins-1", "ins-2", "ins-3", "ins-4"]


def test_t1_umoci_insert_layers_end_without_end_blocks(umoci_layout: Path) -> None:
    """T1: every layer ``umoci insert`` 0.4.7 wrote ends right after its last member; the
    layer ``umoci repack`` wrote (it closes its writer) ends with zero blocks."""
    streams = layer_streams(umoci_layout, "ins-4")
    assert len(streams) == 5
    base, *inserted = streams
    assert member_ends(base)[1] is not None
    for stream in inserted:
        assert_ends_without_end_blocks(stream)
    assert len(inserted[0]) % 512 == 700 % 512  # stops 700 bytes into the last member
    assert inserted[1].endswith(b"hello, world\n") and len(inserted[1]) % 512 == 13


@pytest.mark.parametrize("ref", INSERTED)
def test_t1_umoci_insert_image_matches_umoci_unpack(
    umoci_layout: Path, tmp_path: Path, ref: str
) -> None:
    """T1, W1, W4, M3: the image with ``umoci insert`` layers mounts, and every entry equals
    what ``umoci unpack`` extracts from the same image (type, mode, owner, size, content,
    link text, xattrs, mtime, nlink, hardlinks): zero differences."""
    tool("umoci", "unpack", "--image", f"{umoci_layout}:{ref}", tmp_path / "bundle")
    reference = snapshot(tmp_path / "bundle" / "rootfs")
    with mounted(f"{umoci_layout}:{ref}", tmp_path / "mnt") as mnt:
        ours = snapshot(mnt)
        if ref == "ins-1":
            last = (mnt / "opt/app/new/zz-last.txt").read_bytes()
            assert last.startswith(b"the last member") and len(last) == 700
    assert diff(reference, ours, names=("umoci", "ocifs")) == []
    names = set(ours.entries)
    if ref == "ins-3":  # the opaque insert hid the lower /opt/app
        assert {b"opt/app/only"} == {n for n in names if n.startswith(b"opt/app/")}
    if ref == "ins-4":
        assert b"usr/bin/tool" not in names and b"usr/bin" in names


# -- mtimes past 2262 and before 1970 (T3) ---------------------------------------------------


@pytest.fixture(scope="module")
def buildah_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An image committed by buildah (vfs storage of its own) from a container whose files were
    touched to 2300 and to 1960, pushed to an OCI layout."""
    work = tmp_path_factory.mktemp("buildah-mtime")
    storage = ["--root", str(work / "root"), "--runroot", str(work / "run")]
    buildah = [*storage, "--storage-driver", "vfs"]
    container = tool("buildah", *buildah, "from", "scratch").strip()
    try:
        rootfs = Path(tool("buildah", *buildah, "mount", container).strip())
        (rootfs / "data").mkdir()
        for name, when in (("future", YEAR_2300), ("past", YEAR_1960)):
            _write(rootfs / "data" / name, f"{name}\n".encode())
            os.utime(rootfs / "data" / name, (when, when))
        tool("buildah", *buildah, "umount", container)
        tool("buildah", *buildah, "commit", "--format", "oci", container, "ocifs-t3")
        tool("buildah", *buildah, "push", "ocifs-t3", f"oci:{work / 'layout'}:latest")
    finally:
        subprocess.run(["buildah", *buildah, "rm", container], capture_output=True)
        subprocess.run(["buildah", *buildah, "rmi", "--all", "--force"], capture_output=True)
    yield work / "layout"


def stat_text(path: Path) -> str:
    """What the real ``stat`` prints for the mtime, in UTC."""
    result = subprocess.run(
        ["stat", "-c", "%y|%Y", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        check=True,
    )
    return result.stdout.strip()


def test_t3_buildah_layer_holds_the_out_of_range_mtimes(buildah_layout: Path) -> None:
    """The layer buildah wrote carries the times as they were: PAX mtime records for 2300
    (past int64 nanoseconds) and 1960 (negative)."""
    (stream,) = layer_streams(buildah_layout, "latest")
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members["data/future"].pax_headers.get("mtime") == str(YEAR_2300)
    assert members["data/past"].pax_headers.get("mtime") == str(YEAR_1960)


def test_t3_year_2300_mtime_is_clamped_on_a_real_mount(
    buildah_layout: Path, tmp_path: Path, private_index_cache: Path
) -> None:
    """T3: the 2300 mtime shows as the last instant st_mtime_ns carries, the 1960 one stays
    negative, through ``stat`` and lstat on the mount; the same after a second mount that
    takes the merged tree from the index cache."""
    expected = {
        "future": ("2262-04-11 23:47:16.854775807 +0000|9223372036", MAX_NS),
        "past": ("1960-06-01 00:00:00.000000000 +0000|-302486400", YEAR_1960 * 10**9),
    }
    for attempt in ("indexed", "cached"):
        with mounted(f"{buildah_layout}:latest", tmp_path / f"mnt-{attempt}") as mnt:
            for name, (text, ns) in expected.items():
                assert stat_text(mnt / "data" / name) == text, (attempt, name)
                assert os.lstat(mnt / "data" / name).st_mtime_ns == ns, (attempt, name)
        if attempt == "indexed":
            assert list((private_index_cache / "trees").iterdir()), "no merged tree cached"


def test_t3_extreme_mtimes_on_a_real_mount(tmp_path: Path) -> None:
    """T3: mtimes far past both ends (base-256 from a GNU-format header, a 30-digit PAX
    record) come to the nearest instant st_mtime_ns carries, 1677 and 2262, in ``stat``."""
    members = [
        f("ancient", b"a", mtime=-(2**40)),  # base-256, negative: 2**40 s before 1970
        f("far", b"f", mtime=2**40),  # base-256, positive
    ]
    pax_layer = make_tar([f("pax-far", b"p", pax={"mtime": "9" * 30})])
    layout = LayoutWriter(tmp_path / "layout")
    layers = [
        layout.add_layer(make_tar(members, fmt=tarfile.GNU_FORMAT)),
        layout.add_layer(pax_layer, "none"),
    ]
    layout.add_image(layers, ref="t3", platform=host_platform())
    layout.save()
    with mounted(f"{tmp_path / 'layout'}:t3", tmp_path / "mnt") as mnt:
        assert stat_text(mnt / "ancient") == "1677-09-21 00:12:43.145224192 +0000|-9223372037"
        assert os.lstat(mnt / "ancient").st_mtime_ns == MIN_NS
        for name in ("far", "pax-far"):
            assert stat_text(mnt / name) == "2262-04-11 23:47:16.854775807 +0000|9223372036"
            assert os.lstat(mnt / name).st_mtime_ns == MAX_NS
