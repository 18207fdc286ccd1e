"""Archives made by the real tools, mounted, and compared entry by entry with the layout (X1-X3).

One OCI layout holds two images that share a base layer, built with ``ocibuild`` from layers
with what merges are made of: deletions, a directory replaced by a file and back, a file
replaced by a directory, an opaque directory, hardlinks (one broken by a later layer),
symlinks, xattrs (``user.*`` and a binary ``security.capability``), gzip and plain layers.
The tools then write every archive form from it:

* ``skopeo copy oci:LAYOUT:v1 docker-archive:F:localhost/app:v1`` and ``oci-archive:F:v1``;
* ``podman save`` (``--format docker-archive`` and ``oci-archive``, and ``-m`` with both images)
  from a private vfs store (``--root``/``--runroot`` in a temporary directory) that skopeo
  copied the layout into;
* ``gzip`` of a docker-archive, and a Docker 25+ archive written by ``archives``.

Each archive is mounted with the real ``ocifs`` command and snapshotted (``treecompare``); the
snapshot must equal that of the layout's own mount, with zero differences.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from archives import Image, docker25_archive
from mounting import is_mounted, mounted, run_ocifs
from tarbuild import Member, d, f, link, make_tar, opaque, sym, wh
from treecompare import Snapshot, diff, snapshot

from ocifs.ocibuild import LayoutWriter, host_platform

pytestmark = pytest.mark.fuse

# vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (bit 13)
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def xattrs(**pairs: str) -> dict[str, str]:
    return {f"SCHILY.xattr.{key}": value for key, value in pairs.items()}


def base() -> list[Member]:
    return [
        d("etc"),
        f("etc/os-release", b"ID=ocifs\n"),
        f("etc/deleted", b"deleted later\n"),
        d("swap"),
        f("swap/child", b"gone with the directory\n"),
        f("flip", b"a file, then a directory\n"),
        d("opq"),
        f("opq/lower", b"hidden by the opaque marker\n"),
        d("opq/lowerdir"),
        f("opq/lowerdir/x", b"x"),
        d("hl"),
        f("hl/orig", b"three names\n"),
        link("hl/second", "hl/orig"),
        link("hl/third", "hl/orig"),
        d("bin"),
        f("bin/ping", b"\x7fELF not really\n", mode=0o4755),
        sym("bin/sh", "busybox"),
        sym("abs", "/etc/os-release"),
        f(
            "xattrs",
            b"attributes\n",
            pax={
                **xattrs(**{"user.comment": "hello", "user.empty": ""}),
                "SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1"),
            },
        ),
    ]


def middle() -> list[Member]:
    return [
        wh("etc/deleted"),
        wh("swap"),
        f("swap", b"a directory replaced by a file\n"),
        wh("flip"),
        d("flip"),
        f("flip/inner", b"now a directory\n"),
        opaque("opq"),
        f("opq/upper", b"after the opaque marker\n"),
        f("hl/third", b"replaced: its own inode now\n"),
        link("hl/fourth", "hl/orig"),
    ]


def top() -> list[Member]:
    return [
        wh("swap"),
        d("swap", mode=0o750),
        f("swap/back", b"a directory again\n"),
        d("srv"),
        f("srv/data", bytes(range(256)) * 4096),  # 1 MiB: several gzip blocks
    ]


def other() -> list[Member]:
    return [d("other"), f("other/only-here", b"the second image\n"), wh("bin/sh")]


def tool(*args: str | Path) -> None:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args[0]} failed: {result.stderr}"


class Archives:
    """The layout, and every archive the tools write from it (made when first asked for)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = root / "layout"
        writer = LayoutWriter(self.layout)
        layers = [
            writer.add_layer(make_tar(base()), "gzip"),
            writer.add_layer(make_tar(middle()), "none"),
            writer.add_layer(make_tar(top()), "gzip"),
        ]
        self.tars = [make_tar(base()), make_tar(middle()), make_tar(top())]
        writer.add_image(layers, ref="v1", platform=host_platform())
        other_layers = [layers[0], writer.add_layer(make_tar(other()), "gzip")]
        self.other_tars = [self.tars[0], make_tar(other())]
        writer.add_image(other_layers, ref="other", platform=host_platform())
        writer.save()
        self.storage = f"[vfs@{root / 'storage'}+{root / 'run'}]"
        self.stored = False

    def skopeo(self, destination: str) -> None:
        tool("skopeo", "copy", "-q", destination.split("|")[0], destination.split("|")[1])

    def podman(self, *args: str | Path) -> None:
        tool(
            "podman",
            "--storage-driver",
            "vfs",
            "--root",
            self.root / "storage",
            "--runroot",
            self.root / "run",
            *args,
        )

    def store(self) -> None:
        """Both images in the private podman store, as localhost/app:v1 and localhost/other:v2."""
        if not self.stored:
            for ref, name in (("v1", "localhost/app:v1"), ("other", "localhost/other:v2")):
                tool(
                    "skopeo",
                    "copy",
                    "-q",
                    f"oci:{self.layout}:{ref}",
                    f"containers-storage:{self.storage}{name}",
                )
            self.stored = True


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archives]:
    archives = Archives(tmp_path_factory.mktemp("archives"))
    yield archives
    if archives.stored:  # vfs layers are owned by root: remove through podman, then the rest
        subprocess.run(
            [
                "podman",
                "--storage-driver",
                "vfs",
                "--root",
                str(archives.root / "storage"),
                "--runroot",
                str(archives.root / "run"),
                "system",
                "reset",
                "-f",
            ],
            capture_output=True,
        )
    shutil.rmtree(archives.root, ignore_errors=True)


@pytest.fixture(scope="module")
def mount_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Snapshot]:
    mounts = tmp_path_factory.mktemp("mnt")
    count = iter(range(1000))

    def take(image: str) -> Snapshot:
        with mounted(image, mounts / str(next(count))) as mountpoint:
            return snapshot(mountpoint)

    return take


@pytest.fixture(scope="module")
def reference(made: Archives, mount_snapshot: Callable[[str], Snapshot]) -> dict[str, Snapshot]:
    """The layout's own mounts: what every archive must show."""
    return {ref: mount_snapshot(f"{made.layout}:{ref}") for ref in ("v1", "other")}


def same(expected: Snapshot, got: Snapshot) -> None:
    assert len(expected.entries) > 20
    assert diff(expected, got, names=("layout", "archive")) == []


def test_reference_has_what_the_merge_is_made_of(reference: dict[str, Snapshot]) -> None:
    """The comparison means something: the layout's tree holds each case."""
    tree = reference["v1"].entries
    assert b"etc/deleted" not in tree and b"swap/child" not in tree
    assert tree[b"swap"].kind == "dir" and b"swap/back" in tree
    assert tree[b"flip"].kind == "dir" and b"flip/inner" in tree
    assert b"opq/lower" not in tree and b"opq/upper" in tree
    assert tree[b"hl/orig"].nlink == 3 and tree[b"hl/third"].nlink == 1
    assert tree[b"xattrs"].xattrs["security.capability"] == CAPABILITY
    assert tree[b"bin/ping"].mode == 0o4755
    assert b"other/only-here" in reference["other"].entries


def test_x1_skopeo_docker_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X1: skopeo's docker-archive, by each form of its REF and with none."""
    archive = made.root / "skopeo-docker.tar"
    made.skopeo(f"oci:{made.layout}:v1|docker-archive:{archive}:localhost/app:v1")
    for image in (str(archive), f"{archive}:localhost/app:v1", f"{archive}:app:v1"):
        same(reference["v1"], mount_snapshot(image))


def test_x3_gzipped_docker_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X3: `skopeo ... docker-archive: | gzip`, through gzip seek points of the outer file;
    the second mount takes the member table from the cache."""
    plain = made.root / "skopeo-docker-gz.tar"
    made.skopeo(f"oci:{made.layout}:v1|docker-archive:{plain}:localhost/app:v1")
    tool("gzip", "-f", plain)
    archive = made.root / "skopeo-docker-gz.tar.gz"
    cache = made.root / "gz-cache"
    indexed = run_ocifs("index", "--cache-dir", str(cache), f"{archive}:app:v1")
    assert indexed.returncode == 0, indexed.stderr
    assert len(list((cache / "archives").iterdir())) == 1
    same(reference["v1"], mount_snapshot(str(archive)))
    again = run_ocifs("index", "--debug", "--cache-dir", str(cache), f"{archive}:app:v1")
    assert again.returncode == 0, again.stderr
    assert "member table from the cache" in again.stderr
    assert "3 from the cache" in again.stdout


def test_x2_skopeo_oci_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X2: skopeo's oci-archive, whose ref name is the tag alone."""
    archive = made.root / "skopeo-oci.tar"
    made.skopeo(f"oci:{made.layout}:v1|oci-archive:{archive}:v1")
    same(reference["v1"], mount_snapshot(f"{archive}:v1"))
    same(reference["v1"], mount_snapshot(str(archive)))


def test_x1_podman_save_docker_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X1: `podman save` (docker-archive, its default) of an image in a vfs store."""
    made.store()
    archive = made.root / "podman-docker.tar"
    made.podman("save", "-q", "-o", archive, "localhost/app:v1")
    same(reference["v1"], mount_snapshot(f"{archive}:localhost/app:v1"))


def test_x2_podman_save_oci_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X2: `podman save --format oci-archive`, whose ref name is the image's whole name."""
    made.store()
    archive = made.root / "podman-oci.tar"
    made.podman("save", "-q", "--format", "oci-archive", "-o", archive, "localhost/app:v1")
    for image in (f"{archive}:localhost/app:v1", f"{archive}:app:v1", str(archive)):
        same(reference["v1"], mount_snapshot(image))


def test_x1_podman_save_two_images(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X1: `podman save -m` of two images sharing a layer: each mounted by its REF; no REF
    is one error line listing both."""
    made.store()
    archive = made.root / "podman-two.tar"
    made.podman("save", "-q", "-m", "-o", archive, "localhost/app:v1", "localhost/other:v2")
    same(reference["v1"], mount_snapshot(f"{archive}:app:v1"))
    same(reference["other"], mount_snapshot(f"{archive}:localhost/other:v2"))
    result = run_ocifs("index", str(archive))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "holds 2 images" in result.stderr
    assert "'localhost/app:v1'" in result.stderr and "'localhost/other:v2'" in result.stderr


def test_x1_docker25_archive(
    made: Archives, reference: dict[str, Snapshot], mount_snapshot: Callable[[str], Snapshot]
) -> None:
    """X1: a Docker 25+ archive (an OCI layout plus manifest.json), by its tag."""
    archive = docker25_archive(
        made.root / "docker25.tar.gz",
        [Image(made.tars, ["app:v1"]), Image(made.other_tars, ["other:v2"])],
        made.root / "docker25",
        gzipped=True,
    )
    same(reference["v1"], mount_snapshot(f"{archive}:app:v1"))
    same(reference["other"], mount_snapshot(f"{archive}:other:v2"))


def test_x3_bad_archive_mounts_nothing(made: Archives, tmp_path: Path) -> None:
    """X3: a truncated docker-archive made by skopeo: one line, exit 1, nothing mounted."""
    archive = made.root / "skopeo-cut.tar"
    made.skopeo(f"oci:{made.layout}:v1|docker-archive:{archive}:localhost/app:v1")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    result = run_ocifs("mount", str(archive), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "is not a valid tar archive: truncated in member data" in result.stderr
    assert not is_mounted(mountpoint)
