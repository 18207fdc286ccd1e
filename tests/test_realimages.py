"""Real images, real tools: every form of one image, mounted by ocifs, against the engine's view.

The images are built once per session by :mod:`realimages` (buildah from scratch, one layer per
step, overlay driver so that buildah writes opaque markers; see there for how, and why the
tools run in a private mount namespace). ``main`` has four layers; ``future`` adds a fifth
with times in the year 2300. What buildah writes into each layer (read back with ``tar -tv``
and tarfile from the exports) and the checklist lines of ``oci-conformance.md`` each covers:

* layer 1: every entry kind and attribute. M1; A1 (``/etc/conf``, ``../../../keep.txt``,
  dangling, looping links); A2; A3 (fifo, char 1:3, block 7:0); A4 (1234:5678 and 100000 in
  ustar fields, 3000000:2097152 as PAX ``uid``/``gid`` records); A5 (04755, 02711, 07777,
  0000, a 02775 and a 01777 directory); A7 (``SCHILY.xattr.user.*`` with binary values, on
  files and a directory, and ``security.capability``); A8 (PAX ``path`` for a 205-byte name
  and for the non-UTF-8 name ``caf\\xe9``, spaces); A11; H1 and H2 (``hl/two`` and
  ``hl/three`` are link entries to ``hl/one``, with the xattr repeated in their headers;
  ``big/random.bin`` links to ``big/random-link``); 3 MiB and 4 MiB files of random bytes
  and zeros, so reads cross blocks and gzip seek points. Times are whole seconds: buildah's
  tar writer drops the nanoseconds set on ``keep.txt`` and ``abs`` (A6 is not exercised).
* layer 2: W1 (``.wh.gone.txt``, ``.wh.gone-link``, and ``.wh.gone-dir`` for a directory and
  its subtree); M4 (``flip``: a directory replaced by a file, no whiteouts under it;
  ``fileflip``: a file replaced by a directory, which the overlay driver marks opaque, so
  ``fileflip/.wh..wh..opq`` precedes its child); M2 (``etc/conf`` new content and mode,
  ``meta.txt`` new owner, mode and xattr); M3 (``etc/`` and ``xdir/`` re-emitted with new
  xattrs, their lower children kept); H5 (``hl/two`` replaced: ``hl/one`` and ``hl/three``
  keep the old inode, nlink 2); H1 across layers (``orig-link``: buildah re-emits ``orig``,
  copied up, then the link); ``big/mixed.bin`` rewritten whole for a 4 KiB change.
* layer 3: W4 and W5 (``flip/``, ``flip/.wh..wh..opq``, ``flip/new``: back to a directory
  with none of the layer-1 children; ``opq/.wh..wh..opq``: a directory removed and made
  again, with a new mode and a subdirectory of the same name as a hidden one); H5
  (``hl/.wh.three``, ``.wh.orig`` while ``orig-link`` lives on, nlink 1); M2 (``x.bin``
  re-emitted without ``user.bin``); W5 (``gone.txt`` back with new content).
* layer 4: W1 (``etc`` emptied: one whiteout per child, never an opaque marker, as overlay
  records it); metadata-only changes (``with space/`` mode, ``keep.txt`` mtime, ``owned``
  uid); M4 (``xdir`` directory -> symlink, ``deep/a`` directory -> file with its subtree).
* layer 5 (``future`` only): T3 (``future/y2300`` and the symlink ``future/link`` dated
  2300-01-01, as a PAX ``mtime`` record).

No layer has an entry for the root directory, and none writes M6/M7/M8/M9/W2/W3/H3/H4 cases
(buildah always writes parents first and each path once).

The oracle is ``podman image mount`` in a vfs store: containers/storage extracting each layer
over a copy of the one below. It differs from the image in two places, for reasons outside
the image, and the comparison is exact on everything else:

* the root directory: no layer names it, so its mode and mtime are the store's (the vfs
  driver makes every layer directory 0555, with the time of the copy) and ocifs's are its
  own (M8). Checked: the layers have no root entry, and only ``.``'s mode and mtime are
  left out.
* times containers/storage cannot set (T3): its ``Chtimes`` replaces a time past
  2262-04-11 (or before 1970) with the epoch, and a symlink's time goes through an
  overflowing ``UnixNano`` (``future/link`` comes out as 1901-12-13, ext4's minimum; umoci
  0.4.7 does the same to both). For such entries the reference is the layer header's time,
  clamped as T3 says: to the largest (or smallest) signed 64-bit count of nanoseconds.

Each export (:meth:`realimages.Work.forms`) is checked to be the same image by the tools
alone too (``test_export_is_the_same_image``: loaded into a fresh vfs store by ``podman load``
or ``skopeo copy``, same image ID, same tree), so a failure of the ocifs comparison is
ocifs's, not the fixture's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
import realimages
from mounting import is_mounted, mounted, run_ocifs
from realimages import IMAGES, Work
from treecompare import Snapshot, diff, snapshot

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

# T3: the range of a signed 64-bit count of nanoseconds, what ocifs clamps times to.
NS_MAX = (1 << 63) - 1

FORM_IMAGES = realimages.form_images()


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Work]:
    """The images and every export, built once; all removed at the end of the session."""
    for tool in ("buildah", "podman", "skopeo", "umoci", "unshare", "setcap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup")
    work = Work.create(tmp_path_factory.mktemp("realimages"))
    try:
        realimages.build(work)
        yield work
    finally:
        realimages.cleanup(work)


def engine_view(work: Work, store: realimages.Store, name: str) -> Snapshot:
    """``podman image mount`` of ``name`` in ``store``, snapshotted (vfs: a plain directory)."""
    path = work.tools.podman(store, "image", "mount", name)
    try:
        return snapshot(path)
    finally:
        work.tools.podman(store, "image", "unmount", name)


@pytest.fixture(scope="session")
def engine(real: Work) -> dict[str, Snapshot]:
    """The reference store's view of each image, by image ("main", "future")."""
    return {image: engine_view(real, real.ref_store, name) for image, name in IMAGES.items()}


def layer_members(work: Work, image: str) -> list[list[tarfile.TarInfo]]:
    """The tar members of each layer of ``image``, from the uncompressed OCI layout."""
    layout = work.out("oci-tar")
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == image
    ]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_text())
    layers = []
    for layer in manifest["layers"]:
        path = blobs / layer["digest"].removeprefix("sha256:")
        with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tar:
            layers.append(tar.getmembers())
    return layers


def _header_mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exactly (tarfile's float loses digits)."""
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * 1_000_000_000
    return int(Decimal(text) * 1_000_000_000)


def expected_view(work: Work, image: str, engine_snap: Snapshot) -> Snapshot:
    """The engine's view with T3 applied where containers/storage cannot set the time.

    For every entry whose last header in the layers has a time outside [1970, 2262-04-11],
    the reference mtime is that header's, clamped to the signed 64-bit nanosecond range.
    """
    mtimes: dict[bytes, int] = {}
    for members in layer_members(work, image):
        for m in members:
            if not m.islnk():  # H2: a hardlink header's own time is not the inode's
                mtimes[os.fsencode(m.name.rstrip("/"))] = _header_mtime_ns(m)
    entries = dict(engine_snap.entries)
    for path, ns in mtimes.items():
        if path in entries and not 0 <= ns <= NS_MAX:
            entries[path] = replace(entries[path], mtime_ns=max(-NS_MAX, min(NS_MAX, ns)))
    return Snapshot(entries, engine_snap.hardlinks)


def test_layers_never_name_the_root(real: Work) -> None:
    """Why the root's mode and mtime are left out of the comparison: no layer sets them."""
    for image in IMAGES:
        for members in layer_members(real, image):
            names = {m.name.rstrip("/") for m in members}
            assert not names & {"", ".", "./"}, f"{image}: a layer has a root entry"


@pytest.mark.parametrize(("form", "image"), FORM_IMAGES, ids=[f"{f}:{i}" for f, i in FORM_IMAGES])
def test_ocifs_matches_podman(
    real: Work, engine: dict[str, Snapshot], tmp_path: Path, form: str, image: str
) -> None:
    """Every entry ocifs serves for this export equals ``podman image mount``'s (see top)."""
    source = real.forms()[form].sources[image]
    with mounted(source, tmp_path / "mnt") as mnt:
        ours = snapshot(mnt)
    reference = expected_view(real, image, engine[image])
    differences = diff(
        reference, ours, names=("podman", "ocifs"), ignore_root_fields=("mode", "mtime_ns")
    )
    assert differences == [], f"{form}:{image}: ocifs differs from podman:\n" + "\n".join(
        differences
    )


def test_ocifs_matches_umoci_unpack(real: Work, tmp_path: Path) -> None:
    """The gzip OCI layout of ``main`` against ``umoci unpack`` too: no difference at all.

    umoci leaves the bundle's rootfs at mode 0755 and the epoch, which is what ocifs shows
    for a root no layer names, so here even the root is compared.
    """
    layout = real.out("oci-gzip")
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:main", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    reference = snapshot(bundle / "rootfs")
    with mounted(f"{layout}:main", tmp_path / "mnt") as mnt:
        ours = snapshot(mnt)
    differences = diff(reference, ours, names=("umoci", "ocifs"))
    assert differences == [], "ocifs differs from umoci unpack:\n" + "\n".join(differences)


def test_archive_with_two_images_needs_a_ref(real: Work, tmp_path: Path) -> None:
    """``podman save -m`` of two images and no REF: one line naming both, nothing mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_ocifs("mount", str(real.out("podman-multi.tar")), str(mnt))
    assert result.returncode != 0 and not is_mounted(mnt)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert realimages.MAIN in lines[0] and realimages.FUTURE in lines[0], lines[0]


# --- the exports, checked by the tools alone -------------------------------------------------


def _load(work: Work, form: str, store: realimages.Store) -> None:
    """Put one export into ``store`` the way a user of the engine would."""
    path = work.out(form)
    if path.is_dir():  # an OCI layout
        for image, name in IMAGES.items():
            if image in work.forms()[form].sources:
                work.tools.skopeo("copy", "--quiet", f"oci:{path}:{image}", store.ref(name))
        return
    if form.endswith(".gz"):
        # podman load cannot read a gzipped archive (docker load can): unpack it first.
        plain = work.root / "tmp" / form.removesuffix(".gz")
        subprocess.run(f"gzip -dc {path} > {plain}", shell=True, check=True)
        path = plain
    work.tools.podman(store, "load", "--quiet", "-i", path)


def _image_id(work: Work, store: realimages.Store, name: str) -> str:
    return work.tools.podman(store, "image", "inspect", "--format", "{{.Id}}", name)


def _image_ids(work: Work, store: realimages.Store) -> set[str]:
    listed = work.tools.podman(store, "images", "--no-trunc", "--format", "{{.ID}}").split()
    return {i.removeprefix("sha256:") for i in listed}


@pytest.mark.parametrize("form", sorted({form for form, _ in FORM_IMAGES}))
def test_export_is_the_same_image(real: Work, engine: dict[str, Snapshot], form: str) -> None:
    """The export, loaded into a fresh vfs store, is the reference image: same ID, same tree.

    Only the root's mtime differs between two vfs stores (the time each copied the layer).
    """
    store = real.store(f"load-{form}")
    try:
        _load(real, form, store)
        sources = real.forms()[form].sources
        ids = {image: _image_id(real, real.ref_store, IMAGES[image]) for image in sources}
        # Found by ID: the names an oci-archive or a layout gets on loading differ by tool.
        assert _image_ids(real, store) == set(ids.values())
        for image, image_id in ids.items():
            loaded = engine_view(real, store, image_id)
            differences = diff(engine[image], loaded, names=("ref", form), ignore_root_mtime=True)
            assert differences == [], "\n".join(differences)
    finally:
        # A vfs store holds a full copy of the tree per layer: do not keep one per export.
        shutil.rmtree(store.root, ignore_errors=True)
        shutil.rmtree(store.runroot, ignore_errors=True)


def _zstd_frames(path: Path) -> tuple[int, int]:
    """(zstd frames, skippable frames) of a blob, as ``zstd -lv`` counts them."""
    out = subprocess.run(["zstd", "-lv", str(path)], capture_output=True, text=True, check=True)
    counts = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("# Zstandard Frames", "# Skippable Frames"):
            counts[key.strip()] = int(value)
    return counts.get("# Zstandard Frames", 0), counts.get("# Skippable Frames", 0)


def test_zstd_layouts_are_what_skopeo_writes(real: Work) -> None:
    """zstd: one frame per layer. zstd:chunked (skopeo 1.9.3): the same media type, a frame
    per file plus skippable frames (the TOC and the footer), found through the older
    ``io.containers.zstd-chunked.*`` annotations. Both decompress to the diff_ids."""
    for form in ("oci-zstd", "oci-zstd-chunked"):
        layout = real.out(form)
        index = json.loads((layout / "index.json").read_text())
        blobs = layout / "blobs/sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
        config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
            blob = blobs / layer["digest"][7:]
            frames, skippable = _zstd_frames(blob)
            annotations = layer.get("annotations", {})
            if form == "oci-zstd":
                assert (frames, skippable) == (1, 0) and not annotations
            else:
                assert frames > 1 and skippable == 2, (frames, skippable)
                assert set(annotations) == {
                    "io.containers.zstd-chunked.manifest-checksum",
                    "io.containers.zstd-chunked.manifest-position",
                }
            plain = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True, check=True)
            assert "sha256:" + hashlib.sha256(plain.stdout).hexdigest() == diff_id
