"""Real images for the engine oracle test: built by buildah, exported by skopeo and podman.

:func:`build` makes, in a work directory of its own, everything ``tests/test_realimages.py``
mounts and compares. Only the two ``docker save`` archives are synthesized (there is no
Docker engine here: :func:`docker25_archive`, :func:`docker24_archive`); everything else is
written by the tool a user would run:

1. **Build** (``buildah`` 1.28, overlay storage driver, a private store): ``buildah from
   scratch``, then one layer per step of :data:`STEPS` (image ``main``) and of
   :data:`FUTURE_STEPS` (image ``future``, one layer more). A step changes the working
   container's root through ``buildah mount`` from the host side (no base image, so no
   ``buildah run``), then ``buildah commit --rm`` writes the layer and the next step starts
   from the committed image. The overlay driver rather than vfs because buildah on vfs
   diffs two directory copies and never writes an opaque marker: a directory removed and
   made again comes out as one whiteout per old child. On overlay the kernel marks such a
   directory opaque and buildah writes ``D/.wh..wh..opq``, as it does on any host with its
   default driver. It needs the kernel's overlayfs (there as root in this container; the
   build fails with buildah's message where it is missing).
2. **Reference store** (vfs, private): ``skopeo copy containers-storage:...
   containers-storage:...`` copies both images there (same layers, same image IDs).
   ``podman image mount`` in it is the engine's own view: containers/storage's extraction
   of each layer over a copy of the one below, in plain directories.
3. **Exports** (:meth:`Work.forms`), all from the reference store: ``skopeo copy`` to
   ``oci:`` with gzip (both images), zstd, zstd:chunked and uncompressed layers (both
   images), to ``docker-archive:`` and to ``oci-archive:``; ``podman save --format
   docker-archive`` and ``--format oci-archive``; ``podman save -m`` of both images into one
   docker-archive; that ``podman save`` archive gzipped; the two synthesized ``docker save``
   forms.

What the archives are (``tar -tv``): skopeo's and podman's docker-archives are the same
thing (containers/image writes both), the classic ``docker save`` layout with one
difference: the layers are top-level ``<diff_id>.tar`` members named by ``manifest.json``,
with ``<v1 id>/layer.tar`` symlinks to them, next to ``<v1 id>/json``, ``VERSION``,
``<config>.json`` and ``repositories``; Docker up to 24 writes ``<v1 id>/layer.tar`` as the
file and names it. skopeo's and podman's oci-archives are a tarred OCI layout (``blobs/``,
``index.json``, ``oci-layout``) with gzip layers; podman names the image
``localhost/ocifs-real:main`` in ``org.opencontainers.image.ref.name``, skopeo ``main``.
skopeo 1.9.3's zstd:chunked layers have the plain ``tar+zstd`` media type, a zstd frame per
file and two skippable frames, and the older ``io.containers.zstd-chunked.manifest-checksum``
and ``...manifest-position`` annotations.

Every tool runs with ``--root``/``--runroot`` (and ``--tmpdir`` for podman) of its own, with
``CONTAINERS_STORAGE_CONF`` naming a file of its own, and in a private mount namespace
(``unshare --mount``) where ``/var/lib/containers`` is an empty tmpfs and ``/var/tmp`` is the
work directory's ``tmp``: as root, containers/image writes a blob-info cache to
``/var/lib/containers/cache`` and unpacks archives into ``/var/tmp``, and no flag moves
either. So the tests neither read nor write the machine's container storage, and
:func:`cleanup` removes everything. The build runs as one process in one namespace, since
``buildah mount`` on overlay is a mount that must outlive a single command.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hostfiles import make_dir, set_caps, under, write

log = logging.getLogger(__name__)

REPO = "localhost/ocifs-real"
MAIN = f"{REPO}:main"
FUTURE = f"{REPO}:future"

# Fixed mtimes (seconds and nanoseconds): buildah's layers keep whole seconds.
T1 = 1_600_000_000_123_456_789
T2 = 1_650_000_000_987_654_321
# 2300-01-01T00:00:00Z: past what a signed 64-bit count of nanoseconds holds (2262-04-11).
Y2300 = 10_413_792_000

BIG_RANDOM = 3 << 20
MIXED_HALF = 2 << 20


class ToolError(AssertionError):
    """A tool the fixture runs failed; the message holds its command line and stderr."""


# --- the private namespace and stores -----------------------------------------------------


# Run inside ``unshare --mount``: hide /var/lib/containers (or, where it does not exist yet,
# /var/lib, so that nothing creates it) behind a tmpfs, and put $TMPDIR over /var/tmp
# (containers/image unpacks archives into /var/tmp whatever TMPDIR says), then run the command.
_ISOLATE = """
set -e
if [ -d /var/lib/containers ]; then mount -t tmpfs ocifs-test /var/lib/containers
else mount -t tmpfs ocifs-test /var/lib; fi
mount --bind "$TMPDIR" /var/tmp
export OCIFS_TEST_ISOLATED=1
exec "$@"
"""


@dataclass(frozen=True)
class Store:
    """A private containers/storage store: its root, runroot and driver."""

    root: Path
    runroot: Path
    driver: str

    def flags(self) -> list[str]:
        return [
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
        ]

    def ref(self, name: str) -> str:
        """The skopeo name of image ``name`` in this store."""
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]{name}"


@dataclass(frozen=True)
class Tools:
    """Runs buildah, podman and skopeo confined to the work directory ``work``.

    ``runs`` holds the runroots: podman refuses one longer than 50 characters, so they live
    in a short directory of their own rather than under pytest's temporary directory.
    """

    work: Path
    runs: Path

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONTAINERS_", "BUILDAH_", "XDG_RUNTIME"))
        }
        tmp = self.work / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        conf = self.work / "storage.conf"
        if not conf.exists():
            # So that no machine-wide storage.conf (additional image stores, mount options)
            # applies. Every command names its own root and runroot; podman insists on
            # defaults being set all the same.
            conf.write_text(
                f'[storage]\ndriver = "vfs"\ngraphroot = "{self.work}/storage"\n'
                f'runroot = "{self.runs}/default"\n'
            )
        env.update(
            CONTAINERS_STORAGE_CONF=str(conf),
            BUILDAH_ISOLATION="chroot",
            TMPDIR=str(tmp),
            HOME=str(self.work / "home"),
        )
        return env

    def run(self, *cmd: str | Path) -> str:
        """Run ``cmd`` in the private namespace; its stdout, stripped. Fails with stderr."""
        args = [*map(str, cmd)]
        if os.environ.get("OCIFS_TEST_ISOLATED") != "1":
            args = ["unshare", "--mount", "sh", "-c", _ISOLATE, "sh", *args]
        result = subprocess.run(args, capture_output=True, env=self.env(), text=True)
        if result.returncode != 0:
            raise ToolError(
                f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr}"
            )
        return result.stdout.strip()

    def podman(self, store: Store, *args: str | Path) -> str:
        tmpdir = store.runroot / "libpod"
        return self.run(
            "podman",
            *store.flags(),
            "--tmpdir",
            tmpdir,
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        )

    def skopeo(self, *args: str | Path) -> str:
        return self.run("skopeo", "--insecure-policy", *args)


# --- the layers: one step each, applied to the working container's root ------------------

Step = Callable[[Path], None]


def layer_1(r: Path) -> None:
    """Every kind of entry, hardlinks, xattrs, odd modes and owners, large files."""
    make_dir(r / "etc")
    write(r / "etc/conf", b"v1\n")
    write(r / "etc/other", b"other\n")
    write(r / "keep.txt", b"kept from layer 1\n")
    write(r / "meta.txt", b"metadata changes later\n")
    write(r / "gone.txt", b"deleted in layer 2\n")
    os.symlink("keep.txt", r / "gone-link")
    make_dir(r / "gone-dir/sub")
    write(r / "gone-dir/sub/file", b"deleted with its directory in layer 2\n")
    # flip: a directory, a file in layer 2, a directory again in layer 3.
    make_dir(r / "flip/sub")
    write(r / "flip/old1", b"old child 1\n")
    write(r / "flip/sub/old2", b"old child 2\n")
    write(r / "fileflip", b"a file in layer 1, a directory in layer 2\n")
    # opq: removed and made again in layer 3 (the opaque marker).
    make_dir(r / "opq/sub")
    write(r / "opq/old1", b"hidden by the opaque marker\n")
    write(r / "opq/sub/old2", b"hidden too\n")
    # Hardlinks in one layer: three names, odd owner, an xattr.
    make_dir(r / "hl")
    write(r / "hl/one", b"three names, one inode\n", 0o640)
    os.chown(r / "hl/one", 1234, 5678)
    os.setxattr(r / "hl/one", "user.hl", b"linked\x00attr")
    os.link(r / "hl/one", r / "hl/two")
    os.link(r / "hl/one", r / "hl/three")
    write(r / "orig", b"linked to in layer 2, deleted in layer 3\n", 0o600)
    # Symlinks.
    os.symlink("/etc/conf", r / "abs")
    os.symlink("does/not/exist", r / "dangling")
    os.symlink("loop", r / "loop")
    make_dir(r / "deep/a/b")
    os.symlink("../../../keep.txt", r / "deep/a/b/up")
    os.symlink("keep.txt", r / "owned-link")
    os.chown(r / "owned-link", 4321, 8765, follow_symlinks=False)
    # Special files.
    os.mkfifo(r / "fifo", 0o640)
    make_dir(r / "dev")
    os.mknod(r / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(r / "dev/loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    # Modes.
    write(r / "suid", b"#!/bin/sh\n", 0o4755)
    write(r / "sgid", b"#!/bin/sh\n", 0o2711)
    write(r / "all-bits", b"#!/bin/sh\n", 0o7777)
    write(r / "no-perms", b"secret\n", 0o000)
    make_dir(r / "sgid-dir", 0o2775)
    make_dir(r / "sticky", 0o1777)
    write(r / "sticky/tmpfile", b"in a sticky directory\n", 0o666)
    # Owners (chown before setcap: chown clears security.capability).
    write(r / "owned", b"1234:5678\n")
    os.chown(r / "owned", 1234, 5678)
    write(r / "bigowner", b"100000:100000\n")
    os.chown(r / "bigowner", 100000, 100000)
    write(r / "hugeowner", b"past the 7 octal digits of ustar\n")
    os.chown(r / "hugeowner", 3_000_000, 2_097_152)
    make_dir(r / "owned-dir", 0o750)
    os.chown(r / "owned-dir", 99, 98)
    # xattrs: binary values, on a file and on a directory; a file capability.
    write(r / "x.bin", b"has xattrs\n")
    os.setxattr(r / "x.bin", "user.bin", bytes(range(1, 256)))
    os.setxattr(r / "x.bin", "user.text", b"plain")
    make_dir(r / "xdir")
    os.setxattr(r / "xdir", "user.dirattr", b"\xff\xfe dir")
    write(r / "xdir/child", b"child of xdir\n")
    make_dir(r / "bin")
    write(r / "bin/ping", b"\x7fELF not really\n", 0o755)
    set_caps(r / "bin/ping", "cap_net_raw+ep")
    # Names: spaces, bytes that are not UTF-8, longer than ustar's 100.
    make_dir(r / "with space")
    write(r / "with space/name with spaces.txt", b"spaces\n")
    write(under(r, b"caf\xe9"), b"latin-1 name\n")
    write(r / ("long-" + "n" * 200), b"a 205-byte name\n")
    # Large files: reads cross blocks and gzip seek points.
    make_dir(r / "big")
    rnd = random.Random(20240501)
    write(r / "big/random.bin", rnd.randbytes(BIG_RANDOM))
    write(r / "big/mixed.bin", rnd.randbytes(MIXED_HALF) + bytes(MIXED_HALF))
    os.link(r / "big/random.bin", r / "big/random-link")
    # mtimes with nanoseconds; directories last, after their children are made.
    os.utime(r / "keep.txt", ns=(T1, T1))
    os.utime(r / "abs", ns=(T2, T2), follow_symlinks=False)
    os.utime(r / "etc", ns=(T1, T1))


def layer_2(r: Path) -> None:
    """Deletions, type changes, changed content and metadata, a link to a lower file."""
    os.unlink(r / "gone.txt")
    os.unlink(r / "gone-link")
    shutil.rmtree(r / "gone-dir")
    shutil.rmtree(r / "flip")
    write(r / "flip", b"flip is a file now\n")
    os.unlink(r / "fileflip")
    make_dir(r / "fileflip")
    write(r / "fileflip/child", b"fileflip is a directory now\n")
    write(r / "etc/conf", b"v2, longer than v1\n", 0o600)
    write(r / "etc/new", b"added in layer 2\n")
    os.setxattr(r / "etc", "user.layer", b"2")
    os.chmod(r / "meta.txt", 0o640)
    os.chown(r / "meta.txt", 42, 43)
    os.setxattr(r / "meta.txt", "user.added", b"in layer 2")
    os.link(r / "orig", r / "orig-link")
    os.unlink(r / "hl/two")
    write(r / "hl/two", b"replaced in layer 2: the other names keep the old inode\n")
    os.setxattr(r / "xdir", "user.dirattr", b"changed in layer 2")
    with open(r / "big/mixed.bin", "r+b") as out:
        out.seek(MIXED_HALF - 2048)
        out.write(b"\xa5" * 4096)


def layer_3(r: Path) -> None:
    """flip back to a directory, opq removed and made again (opaque), names removed."""
    os.unlink(r / "flip")
    make_dir(r / "flip")
    write(r / "flip/new", b"only this, no old children\n")
    shutil.rmtree(r / "opq")
    make_dir(r / "opq", 0o700)
    write(r / "opq/fresh", b"the only child of opq\n")
    make_dir(r / "opq/sub")
    write(r / "opq/sub/again", b"sub made again, without old2\n")
    os.unlink(r / "hl/three")
    os.unlink(r / "orig")
    os.removexattr(r / "x.bin", "user.bin")
    write(r / "gone.txt", b"back in layer 3, new content\n")


def layer_4(r: Path) -> None:
    """Metadata only changes, a directory emptied, a directory replaced by a symlink."""
    os.chmod(r / "with space", 0o700)
    os.utime(r / "keep.txt", ns=(T2, T2))
    os.chown(r / "owned", 0, 5678)
    for child in os.listdir(r / "etc"):
        os.unlink(r / "etc" / child)
    shutil.rmtree(r / "xdir")
    os.symlink("/nonexistent/xdir", r / "xdir")
    shutil.rmtree(r / "deep/a")
    write(r / "deep/a", b"deep tree cut short\n")


def layer_future(r: Path) -> None:
    """A file and a symlink dated 2300-01-01 (T3), on top of the main image."""
    make_dir(r / "future")
    write(r / "future/y2300", b"from the future\n")
    os.symlink("y2300", r / "future/link")
    os.utime(r / "future/y2300", (Y2300, Y2300))
    os.utime(r / "future/link", (Y2300, Y2300), follow_symlinks=False)


# The main image, and the image "future" that adds one layer to it.
STEPS: list[Step] = [layer_1, layer_2, layer_3, layer_4]
FUTURE_STEPS: list[Step] = [layer_future]


# --- building, the reference store, the exports -------------------------------------------


@dataclass(frozen=True)
class Form:
    """One export of the images: the file or directory, and the ocifs source of each image."""

    name: str
    path: Path
    sources: dict[str, str]  # image ("main", "future") -> what ``ocifs mount`` is given


@dataclass(frozen=True)
class Work:
    """Where :func:`build` puts everything: one directory, removed by :func:`cleanup`."""

    root: Path
    runs: Path  # the runroots (see Tools)

    @classmethod
    def create(cls, root: Path) -> Work:
        """A work directory at ``root``, with a new short directory for the runroots."""
        return cls(root, Path(tempfile.mkdtemp(prefix="ocifs-ri-", dir="/tmp")))

    @property
    def tools(self) -> Tools:
        return Tools(self.root, self.runs)

    @property
    def build_store(self) -> Store:
        return Store(self.root / "build/storage", self.runs / "build", "overlay")

    @property
    def ref_store(self) -> Store:
        return Store(self.root / "ref/storage", self.runs / "ref", "vfs")

    def store(self, name: str) -> Store:
        """Another private vfs store, to load an export into and compare."""
        short = hashlib.sha256(name.encode()).hexdigest()[:12]
        return Store(self.root / "stores" / name, self.runs / short, "vfs")

    def out(self, name: str) -> Path:
        return self.root / "forms" / name

    def forms(self) -> dict[str, Form]:
        """Every export, by name (the test ids)."""

        def layout(name: str, *images: str) -> Form:
            p = self.out(name)
            return Form(name, p, {image: f"{p}:{image}" for image in images})

        def archive(name: str, ref: str | None = None) -> Form:
            p = self.out(name)
            return Form(name, p, {"main": f"{p}:{ref}" if ref else str(p)})

        multi = self.out("podman-multi.tar")
        return {
            f.name: f
            for f in [
                layout("oci-gzip", "main", "future"),
                layout("oci-zstd", "main"),
                layout("oci-zstd-chunked", "main"),
                layout("oci-tar", "main", "future"),
                # A REF (by RepoTags, by ref name) where the archive holds one image anyway,
                # so that both ways of naming it are tried; the others are mounted without.
                archive("skopeo-docker-archive.tar", MAIN),
                archive("skopeo-oci-archive.tar", "main"),
                archive("podman-docker-archive.tar"),
                archive("podman-oci-archive.tar"),
                archive("podman-docker-archive.tar.gz"),
                archive("docker25-save.tar"),
                archive("docker24-save.tar"),
                Form(
                    "podman-multi.tar",
                    multi,
                    {"main": f"{multi}:{MAIN}", "future": f"{multi}:{FUTURE}"},
                ),
            ]
        }


IMAGES = {"main": MAIN, "future": FUTURE}


def form_images() -> list[tuple[str, str]]:
    """Every (export, image) pair, for test parametrization (no work directory needed)."""
    forms = Work(Path("."), Path(".")).forms().values()
    return [(form.name, image) for form in forms for image in form.sources]


def buildah(work: Work, *args: str | Path) -> str:
    return work.tools.run("buildah", *work.build_store.flags(), *args)


def _build_images(work: Work) -> None:
    """buildah from scratch, a commit per step: MAIN, then FUTURE on top of it."""
    base = "scratch"
    n = 0
    for steps, name in ((STEPS, MAIN), (FUTURE_STEPS, FUTURE)):
        for i, step in enumerate(steps):
            n += 1
            container = buildah(work, "from", "--pull-never", base)
            step(Path(buildah(work, "mount", container)))
            base = name if i == len(steps) - 1 else f"{REPO}:layer-{n}"
            buildah(work, "commit", "--quiet", "--rm", container, base)
            log.info("layer %d committed as %s", n, base)


def _copy(work: Work, src: str, dest: str, *options: str) -> None:
    work.tools.skopeo("copy", "--quiet", *options, src, dest)


def _export(work: Work) -> None:
    """Every form of :meth:`Work.forms`, made by the tools (except docker25, synthesized)."""
    ref = work.ref_store
    work.out("").mkdir(parents=True, exist_ok=True)
    for image in IMAGES.values():
        _copy(work, work.build_store.ref(image), ref.ref(image))
    for tag, image in IMAGES.items():
        _copy(work, ref.ref(image), f"oci:{work.out('oci-gzip')}:{tag}")
    _copy(work, ref.ref(MAIN), f"oci:{work.out('oci-zstd')}:main", "--dest-compress-format", "zstd")
    _copy(
        work,
        ref.ref(MAIN),
        f"oci:{work.out('oci-zstd-chunked')}:main",
        "--dest-compress-format",
        "zstd:chunked",
    )
    for tag, image in IMAGES.items():
        _copy(
            work,
            ref.ref(image),
            f"oci:{work.out('oci-tar')}:{tag}",
            "--dest-oci-accept-uncompressed-layers",
        )
    _copy(work, ref.ref(MAIN), f"docker-archive:{work.out('skopeo-docker-archive.tar')}:{MAIN}")
    _copy(work, ref.ref(MAIN), f"oci-archive:{work.out('skopeo-oci-archive.tar')}:main")
    podman = work.tools.podman
    podman(
        ref,
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "-o",
        work.out("podman-docker-archive.tar"),
        MAIN,
    )
    podman(
        ref,
        "save",
        "--quiet",
        "--format",
        "oci-archive",
        "-o",
        work.out("podman-oci-archive.tar"),
        MAIN,
    )
    podman(
        ref,
        "save",
        "--quiet",
        "-m",
        "--format",
        "docker-archive",
        "-o",
        work.out("podman-multi.tar"),
        MAIN,
        FUTURE,
    )
    # As a user would: podman save ... | gzip > img.tar.gz (gzip's default level, 6).
    with open(work.out("podman-docker-archive.tar.gz"), "wb") as gz:
        subprocess.run(
            ["gzip", "-c", str(work.out("podman-docker-archive.tar"))], stdout=gz, check=True
        )
    docker25_archive(work.out("oci-tar"), "main", MAIN, work.out("docker25-save.tar"))
    docker24_archive(work.out("podman-docker-archive.tar"), work.out("docker24-save.tar"))


def docker25_archive(layout: Path, tag: str, name: str, dest: Path) -> None:
    """Write what Docker 25+ ``docker save NAME`` writes, from an OCI layout of that image.

    Synthesized: there is no Docker engine here. The form follows moby's
    ``image/tarexport/save.go`` (v25 onwards): an OCI layout (``oci-layout``, ``index.json``
    whose descriptor carries ``io.containerd.image.name`` and the tag as
    ``org.opencontainers.image.ref.name``, ``blobs/sha256/...``) holding the uncompressed
    layers under their diff_ids, plus the classic ``manifest.json`` (``Config``,
    ``RepoTags``, ``Layers`` as paths into ``blobs/``, ``LayerSources``) and ``repositories``.
    ``layout`` must have uncompressed layers (``skopeo copy
    --dest-oci-accept-uncompressed-layers``), so the blobs are byte for byte the image's.
    """
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_bytes())
    digests = [desc["digest"], manifest["config"]["digest"]] + [
        layer["digest"] for layer in manifest["layers"]
    ]
    assert all(layer["mediaType"].endswith(".tar") for layer in manifest["layers"]), manifest

    def blob_path(digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    repo, _, tagname = name.rpartition(":")
    docker_index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": desc["mediaType"],
                "digest": desc["digest"],
                "size": desc["size"],
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tagname,
                },
            }
        ],
    }
    manifest_json = [
        {
            "Config": blob_path(manifest["config"]["digest"]),
            "RepoTags": [name],
            "Layers": [blob_path(layer["digest"]) for layer in manifest["layers"]],
            "LayerSources": {
                layer["digest"]: {k: layer[k] for k in ("mediaType", "size", "digest")}
                for layer in manifest["layers"]
            },
        }
    ]
    top = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    files: list[tuple[str, bytes | Path]] = [
        (blob_path(d), blobs / d.removeprefix("sha256:")) for d in sorted(set(digests))
    ]
    files += [
        ("index.json", json.dumps(docker_index, separators=(",", ":")).encode()),
        ("manifest.json", json.dumps(manifest_json, separators=(",", ":")).encode() + b"\n"),
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        ("repositories", json.dumps({repo: {tagname: top}}).encode() + b"\n"),
    ]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            out.addfile(info)
        for member, content in files:
            info = tarfile.TarInfo(member)
            info.mode, info.mtime = 0o644, 0
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with open(content, "rb") as src:
                    out.addfile(info, src)
            else:
                info.size = len(content)
                out.addfile(info, io.BytesIO(content))


def docker24_archive(podman_archive: Path, dest: Path) -> None:
    """Write what Docker up to 24 ``docker save`` writes, from a ``podman save`` archive.

    Synthesized, like :func:`docker25_archive`. podman (containers/image) writes the classic
    form with one difference: the layers are top-level ``<diff_id>.tar`` members that
    ``manifest.json`` names, and each ``<v1 id>/layer.tar`` is a symlink to one of them.
    Docker before 25 writes ``<v1 id>/layer.tar`` as the file itself and names it in
    ``manifest.json``. The same bytes, rearranged: the symlinks become the files.
    """
    with tarfile.open(podman_archive) as src:
        members = src.getmembers()
        renamed: dict[str, str] = {}  # "<diff_id>.tar" -> "<v1 id>/layer.tar"
        for m in members:
            if m.issym() and m.name.endswith("/layer.tar"):
                renamed[os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))] = (
                    m.name
                )
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            dirs: set[str] = set()
            for m in members:
                parent = os.path.dirname(m.name)
                if parent and parent not in dirs and m.name not in renamed:
                    dirs.add(parent)  # docker's tar of its save directory has the <v1 id>/ entries
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, m.mtime
                    out.addfile(info)
                if m.name in renamed:
                    continue  # written under its <v1 id>/layer.tar name
                if m.issym() and m.name.endswith("/layer.tar"):
                    target = src.getmember(next(k for k, v in renamed.items() if v == m.name))
                    info = tarfile.TarInfo(m.name)
                    info.size, info.mode, info.mtime = target.size, 0o644, target.mtime
                    out.addfile(info, src.extractfile(target))
                elif m.name == "manifest.json":
                    data = src.extractfile(m)
                    assert data is not None
                    items = json.loads(data.read())
                    for item in items:
                        item["Layers"] = [renamed[layer] for layer in item["Layers"]]
                    body = json.dumps(items, separators=(",", ":")).encode()
                    info = tarfile.TarInfo(m.name)
                    info.size, info.mode, info.mtime = len(body), 0o644, m.mtime
                    out.addfile(info, io.BytesIO(body))
                else:
                    out.addfile(m, src.extractfile(m) if m.isfile() else None)


def build(work: Work) -> None:
    """Build the images and every export into ``work`` (in the private namespace)."""
    if os.environ.get("OCIFS_TEST_ISOLATED") != "1":
        work.tools.run(sys.executable, __file__, work.root, work.runs)
        return
    start = time.monotonic()
    _build_images(work)
    built = time.monotonic()
    _export(work)
    log.info("built in %.1f s, exported in %.1f s", built - start, time.monotonic() - built)


def cleanup(work: Work) -> None:
    """Remove every store and export (vfs layer directories are plain directories)."""
    shutil.rmtree(work.root, ignore_errors=True)
    shutil.rmtree(work.runs, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # WORK RUNS: what build() runs in the namespace. WORK alone: a build to look at by hand
    # (remove WORK and the runroots directory it prints afterwards).
    root = Path(sys.argv[1])
    work = Work(root, Path(sys.argv[2])) if len(sys.argv) > 2 else Work.create(root)
    build(work)
    if len(sys.argv) == 2:
        print(f"built into {work.root}; runroots in {work.runs}")
