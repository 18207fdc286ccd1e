"""The image as of layer N (``--upto``), one layer on its own (``--layer``), and ``-o provenance``.

``--upto N`` is checked against ``umoci unpack`` of the tag umoci made with N + 1 layers
(the oracle's "tree" image, four layers of churn: M1-M4, W1, W5, H1, H5, A1-A11), entry by
entry with treecompare. ``--layer N`` is checked against what the README documents: whiteouts
as 0/0 character devices (W1), an opaque marker as ``trusted.overlay.opaque`` and
``user.overlay.opaque`` = ``y`` (W4), a whiteout beside the layer's own entry of that name
left out (W2), AUFS metadata hidden (W6), hardlinks as hardlinks (H1), a link to a lower
layer's file as that file (H3), implied parents 0755 root:root (M8). Provenance xattrs are
there with ``-o provenance`` only. Neither view reads a blob that the cache has indexed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from layers import blob_layer, image_of
from mounting import mounted, run_ocifs
from tarbuild import Member, d, f, link, make_tar, opaque, sym, wh
from test_oracle import IMAGES, tag, umoci, unpack
from treecompare import diff, snapshot

import ocifs.image
from ocifs.cli import ocifs_options
from ocifs.errors import LayerError, OcifsError
from ocifs.image import LoadReport, load_image
from ocifs.indexcache import IndexCache
from ocifs.layerindex import index_layer
from ocifs.ocibuild import LayoutWriter, host_platform
from ocifs.tarscan import TarEntry, scan_tar
from ocifs.tree import MergedTree, TreeBuilder
from ocifs.views import View, choose_layer, empty_tree, layer_tree

LAYER = b"user.ocifs.layer"
TRUSTED_LAYER = b"trusted.ocifs.layer"
OPAQUE = {b"trusted.overlay.opaque": b"y", b"user.overlay.opaque": b"y"}


def entries(members: list[Member]) -> list[TarEntry]:
    return list(scan_tar(io.BytesIO(make_tar(members))))


def merge(*layers: list[Member]) -> MergedTree:
    builder = TreeBuilder()
    for position, members in enumerate(layers):
        builder.apply_layer(position, entries(members))
    return builder.freeze()


# --- the tree's layer column, which provenance shows (no mount) ------------------------------


def test_every_inode_records_the_layer_that_made_it() -> None:
    """M3: a directory over a directory takes the upper layer (its attributes come from
    there); M8: an implied parent takes the layer that implied it, the root the first layer;
    M10: a root entry sets the root's; H2: a hardlink keeps its target's layer."""
    tree = merge(
        [d("etc"), f("etc/passwd", b"x"), sym("etc/link", "passwd"), f("implied/a/file")],
        [d("etc", mode=0o700), link("etc/again", "etc/passwd"), Member("dev/null", "char")],
        [d(".", mode=0o755), f("implied/a/other")],
    )
    layer = {path.decode(): node.layer for path, node in tree.walk()}
    assert layer == {
        "etc": 1,  # set again by layer 1's entry
        "etc/passwd": 0,
        "etc/again": 0,  # the hardlink's inode is etc/passwd's
        "etc/link": 0,
        "implied": 0,
        "implied/a": 0,  # layer 2 needs it too, but it exists: still layer 0's
        "implied/a/file": 0,
        "implied/a/other": 2,
        "dev": 1,
        "dev/null": 1,
    }
    assert tree.root.layer == 2  # layer 2's "./" entry
    assert merge([f("x")]).root.layer == 0  # implied by the first layer
    assert empty_tree().root.layer == -1  # no layer at all


# --- choosing a layer -------------------------------------------------------------------------


def test_choose_layer_positions_negatives_and_digest_prefixes(tmp_path: Path) -> None:
    """Positions from 0 at the bottom, -1 the top, a digest prefix; one line for anything else."""
    refs = [blob_layer(tmp_path, make_tar([f(f"f{n}")]), "none", n) for n in range(3)]
    layers = image_of([*refs, refs[1]]).layers  # M5: the same blob at positions 1 and 3
    absent = next(
        prefix
        for prefix in (f"sha256:{digit}" for digit in "0123456789abcdef")
        if not any(ref.digest.startswith(prefix) for ref in refs)
    )
    assert [choose_layer("--upto", spec, layers) for spec in ("0", "2", "-1", "-4")] == [0, 2, 3, 0]
    assert choose_layer("--upto", refs[2].digest[:12], layers) == 2
    assert choose_layer("--upto", refs[0].digest, layers) == 0
    problems = {
        "4": "--upto 4: the image has 4 layers: 0 to 3 from the bottom, -1 to -4 from the top",
        "-5": "--upto -5: the image has 4 layers",
        "sha256:": "expected a layer position",
        "top": "expected a layer position",
        absent: "no layer of the image has such a digest",
        refs[1].digest[:16]: "layers 1, 3 all match",
    }
    for spec, message in problems.items():
        with pytest.raises(OcifsError) as raised:
            choose_layer("--upto", spec, layers)
        assert message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(OcifsError, match="the image has no layers"):
        choose_layer("--layer", "0", ())


def test_ocifs_options_never_reach_libfuse() -> None:
    """``-o provenance`` is ocifs's: taken out of each -o group, the rest left in order."""
    assert ocifs_options(["ro,provenance", "allow_other", "provenance"]) == (
        ["ro", "allow_other", ""],
        {"provenance"},
    )
    assert ocifs_options(["allow_other"]) == (["allow_other"], set())


# --- one layer on its own, without a mount ----------------------------------------------------

LOWER = [
    d("etc", mode=0o750, uid=3),
    f("etc/passwd", b"root:x:0:0\n"),
    f("etc/hosts", b"127.0.0.1\n"),
    d("app"),
    f("app/old", b"old\n"),
    f("shared", b"linked from above\n", mode=0o640, uid=7, pax={"SCHILY.xattr.user.x": "1"}),
    f("file-then-dir", b"a file below\n"),
]
UPPER = [
    wh("etc/passwd"),  # W1: a char device 0/0 named etc/passwd
    f("etc/hosts", b"10.0.0.1\n", mode=0o600),
    opaque("app"),  # W4: the marker before the directory entry, as umoci writes it
    d("app", mode=0o700, pax={"SCHILY.xattr.user.mine": "kept"}),
    f("app/new", b"new\n"),
    opaque("implied/opq"),  # W4 without a directory entry: an implied directory with it
    f("same", b"the layer's own\n"),
    wh("same"),  # W2: the file is shown, not the whiteout
    f("file-then-dir/inner", b"now a directory\n"),
    f("blocker", b"a file of this layer\n"),
    wh("blocker/under"),  # under a file of this layer: hides nothing more, not shown
    f("hl/one", b"two names\n", uid=5),
    link("hl/two", "hl/one"),  # H1
    link("up-link", "shared"),  # H3: a file of the lower layer
    link("up-link2", "shared"),
    f(".wh..wh.plnk/123.456", b"aufs"),  # W6: AUFS metadata
    f("deep/a/b/c", b"implied parents\n"),  # M8
]


def single(position: int, *layers: list[Member]) -> tuple[MergedTree, bool]:
    def lower() -> MergedTree:
        return merge(*layers[:position]) if position else empty_tree()

    return layer_tree(position, entries(layers[position]), lower)


def test_layer_tree_shows_whiteouts_and_opaque_markers_as_overlayfs_does() -> None:
    """W1, W2, W4, W6, H1, H3, M8 in the single-layer view (see the module docstring)."""
    tree, used_lower = single(1, LOWER, UPPER)
    assert used_lower  # up-link needed the lower tree
    got = {path.decode(): node for path, node in tree.walk()}
    assert set(got) == {
        "etc", "etc/passwd", "etc/hosts", "app", "app/new", "implied", "implied/opq", "same",
        "file-then-dir", "file-then-dir/inner", "blocker", "hl", "hl/one", "hl/two",
        "up-link", "up-link2", "deep", "deep/a", "deep/a/b", "deep/a/b/c",
    }  # fmt: skip
    whiteout = got["etc/passwd"]
    assert (whiteout.mode, whiteout.rdev, whiteout.size, whiteout.xattrs) == (
        stat.S_IFCHR,
        0,
        0,
        None,
    )
    for implied in ("etc", "implied", "implied/opq", "deep", "deep/a", "hl"):
        node = got[implied]
        assert (node.mode, node.uid, node.gid, node.mtime_ns) == (stat.S_IFDIR | 0o755, 0, 0, 0)
    assert got["app"].mode == stat.S_IFDIR | 0o700
    assert got["app"].xattrs == {b"user.mine": b"kept", **OPAQUE}
    assert got["implied/opq"].xattrs == OPAQUE
    assert got["etc"].xattrs is None
    assert stat.S_ISREG(got["same"].mode) and stat.S_ISREG(got["blocker"].mode)
    assert got["hl/one"].ino == got["hl/two"].ino and got["hl/one"].nlink == 2
    up = got["up-link"]
    assert up.ino == got["up-link2"].ino and up.nlink == 2
    assert (up.mode, up.uid, up.layer, up.xattrs) == (stat.S_IFREG | 0o640, 7, 0, {b"user.x": b"1"})
    assert got["app/new"].layer == got["etc/passwd"].layer == got["etc"].layer == 1
    assert tree.root.layer == 1


def test_layer_tree_needs_no_lower_layer_without_links_into_it() -> None:
    """The lower layers are merged only for a hardlink that points into them (H3)."""

    def lower() -> MergedTree:
        raise AssertionError("the lower layers were merged")

    tree, used_lower = layer_tree(3, entries([wh("a"), f("b"), link("c", "b")]), lower)
    assert not used_lower and {node.layer for _, node in tree.walk()} == {3}


def test_layer_tree_refuses_what_the_merge_refuses() -> None:
    """H3: a link to a path this layer whited out, to nothing, to a directory; W7."""
    cases = [
        ([wh("shared"), link("l", "shared")], "which does not exist"),
        ([opaque("."), link("l", "shared")], "which does not exist"),
        ([link("l", "nothing")], "which does not exist"),
        ([link("l", "app")], "points to directory"),
        ([f("x/.wh.")], "invalid whiteout name"),
    ]
    for upper, message in cases:
        with pytest.raises(OcifsError, match=message):
            single(1, LOWER, upper)


# --- loading a view: the cache, and no blob read twice ---------------------------------------


def counting_index_layer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every layer position that ``load_image`` indexes from its blob, in order."""
    calls: list[int] = []

    def counted(layer, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(layer.position)
        return index_layer(layer, *args, **kwargs)

    monkeypatch.setattr(ocifs.image, "index_layer", counted)
    return calls


def test_views_reuse_the_cached_indexes_and_never_collide_with_the_image_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh ``--upto 1`` indexes layers 0 and 1 only; once the image is indexed, no view
    reads a blob again; the ``--upto`` tree is cached under its own layers' key and the
    image's own cached tree is still the image's."""
    calls = counting_index_layer(monkeypatch)
    tars = [LOWER, UPPER, [f("top", b"top\n"), wh("shared")]]
    resolved = image_of([blob_layer(tmp_path, make_tar(m), "gzip", n) for n, m in enumerate(tars)])
    cache = IndexCache(tmp_path / "cache")

    def load(view: View) -> tuple[set[bytes], LoadReport]:
        report = LoadReport()
        image = load_image(resolved, cache=cache, report=report, view=view)
        image.close()
        return {path for path, _ in image.tree.walk()}, report

    upto1, report = load(View("upto", 1))
    assert calls == [0, 1] and report.indexed == list(resolved.layers[:2])
    assert b"top" not in upto1 and b"shared" in upto1 and b"app/old" not in upto1
    whole, report = load(View())
    assert calls == [0, 1, 2] and b"top" in whole and b"shared" not in whole
    assert not report.tree_from_cache  # the --upto tree was not taken for the image's
    layers = resolved.layers
    assert cache.tree_path(layers[:2]) != cache.tree_path(layers)
    assert cache.tree_path(layers[:2]).exists() and cache.tree_path(layers).exists()
    for view in (View("upto", 0), View("upto", 1), View(), View("layer", 1), View("layer", 2)):
        _, report = load(view)
        assert report.indexed == [], f"{view} indexed a blob again"
        if view.kind != "layer":
            assert report.tree_from_cache or view.position == 0  # --upto 0: merged now
    assert calls == [0, 1, 2]
    assert load(View("upto", 1))[0] == upto1 and load(View())[0] == whole
    image = load_image(resolved, cache=cache, view=View("layer", 2))
    try:  # no link into lower layers: the view holds layer 2 alone, as number 0
        assert image.layers == (layers[2],) and len(image.readers) == 1
        top = image.tree.find(b"top")
        assert top is not None and image.read(top, 0, 100) == b"top\n"
    finally:
        image.close()
    image = load_image(resolved, cache=cache, view=View("layer", 1))
    try:  # up-link reads its data from layer 0
        assert image.layers == layers[:2]
        shared = image.tree.find(b"up-link")
        assert shared is not None and image.read(shared, 0, 100) == b"linked from above\n"
    finally:
        image.close()


def test_a_bad_layer_names_itself_in_the_layer_view(tmp_path: Path) -> None:
    bad = [f("ok"), link("l", "missing")]
    resolved = image_of(
        [blob_layer(tmp_path, make_tar(m), "none", n) for n, m in enumerate([LOWER, bad])]
    )
    with pytest.raises(LayerError, match=r"layer 1 \(sha256:.*points to 'missing'"):
        load_image(resolved, view=View("layer", 1))


# --- mounted: --upto against umoci unpack -----------------------------------------------------

TREE_STEPS = IMAGES["tree"]


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle's "tree" image built by umoci, one tag per layer count: tree-0 ... tree-4."""
    work = tmp_path_factory.mktemp("views-umoci")
    lay = work / "layout"
    umoci("init", "--layout", lay)
    umoci("new", "--image", f"{lay}:{tag('tree', 0)}")
    bundle = work / "bundle"
    umoci("unpack", "--image", f"{lay}:{tag('tree', 0)}", bundle)
    for n, step in enumerate(TREE_STEPS, start=1):
        step(bundle / "rootfs")
        umoci("repack", "--refresh-bundle", "--image", f"{lay}:{tag('tree', n)}", bundle)
    return lay


def layer_digests(lay: Path, ref: str) -> list[str]:
    result = subprocess.run(
        ["umoci", "stat", "--json", "--image", f"{lay}:{ref}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    import json

    history = json.loads(result.stdout)["history"]
    return [step["layer"]["digest"] for step in history if step.get("layer")]


@pytest.mark.fuse
@pytest.mark.parametrize("spec", ["0", "1", "2", "-2", "-1", "digest of layer 1"])
def test_upto_equals_umoci_unpack_of_the_image_with_fewer_layers(
    umoci_layout: Path, tmp_path: Path, spec: str
) -> None:
    """``--upto N`` of tree-4 is, entry by entry, ``umoci unpack`` of tree-(N+1): the image
    umoci built with layers 0..N only (M1-M4, W1, W5, H1, H5, A1-A11 as the oracle test)."""
    full = tag("tree", len(TREE_STEPS))
    if spec.startswith("digest"):
        digest = layer_digests(umoci_layout, full)[1]
        assert layer_digests(umoci_layout, tag("tree", 2))[1] == digest  # the same blob
        spec, position = digest[:19], 1
    else:
        position = int(spec) % len(TREE_STEPS)
    reference = snapshot(unpack(umoci_layout, tag("tree", position + 1), tmp_path / "ref"))
    with mounted(f"{umoci_layout}:{full}", tmp_path / "mnt", "--upto", spec) as mnt:
        ours = snapshot(mnt)
    assert diff(reference, ours, names=("umoci", "ocifs")) == []
    if position < len(TREE_STEPS) - 1:  # and it is not the whole image
        whole = snapshot(unpack(umoci_layout, full, tmp_path / "whole"))
        assert diff(whole, ours) != []


@pytest.mark.fuse
def test_view_options_give_one_line_errors(umoci_layout: Path, tmp_path: Path) -> None:
    """Out of range, no such digest, both options: one line, non-zero, nothing mounted."""
    (tmp_path / "mnt").mkdir()
    image = f"{umoci_layout}:{tag('tree', 2)}"
    for options, message in [
        (["--upto", "2"], "--upto 2: the image has 2 layers: 0 to 1 from the bottom"),
        (["--layer", "-3"], "--layer -3: the image has 2 layers"),
        (["--layer", "sha256:0000000000"], "no layer of the image has such a digest"),
        (["--upto", "x"], "expected a layer position"),
    ]:
        result = run_ocifs("mount", *options, image, str(tmp_path / "mnt"))
        assert (
            result.returncode == 1
            and result.stderr
            == f"ocifs: error: {options[0]} " + (result.stderr.split(f"{options[0]} ", 1)[1])
        )
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    result = run_ocifs("mount", "--upto", "0", "--layer", "0", image, str(tmp_path / "mnt"))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert not os.path.ismount(tmp_path / "mnt")


# --- mounted: --layer and -o provenance --------------------------------------------------------

TOP = [f("top", b"top\n"), sym("top-link", "top"), wh("shared"), d("etc", mode=0o711)]


@pytest.fixture(scope="module")
def views_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """LOWER, UPPER and TOP as one image "views", gzip, uncompressed and gzip."""
    root = tmp_path_factory.mktemp("views") / "layout"
    writer = LayoutWriter(root)
    layers = [
        writer.add_layer(make_tar(LOWER), "gzip"),
        writer.add_layer(make_tar(UPPER), "none"),
        writer.add_layer(make_tar(TOP), "gzip"),
    ]
    writer.add_image(layers, ref="views", platform=host_platform())
    writer.save()
    return root, [descriptor["digest"] for descriptor, _ in layers]


def sh(*cmd: str | Path, user: str | None = None) -> str:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    result = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd}: {result.stderr}"
    return result.stdout


def listing(mnt: Path, directory: str) -> list[str]:
    """``ls -la`` of a directory: mode, links, owner, size or device, name (no dates)."""
    lines = sh("ls", "-la", "--time-style=+", mnt / directory).splitlines()[1:]
    return [" ".join(line.split()) for line in lines]


@pytest.mark.fuse
def test_layer_mount_shows_whiteouts_opaque_dirs_and_links(
    views_layout: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """``--layer 1``: W1 whiteouts as 0/0 character devices, W4 opaque directories with the
    overlay xattrs, W2, W6, H1 (one inode), H3 (a link to layer 0's file), M8, as ls -la,
    stat and getfattr show them; the xattrs of the image are there, nothing else."""
    lay, _ = views_layout
    with mounted(f"{lay}:views", tmp_path / "mnt", "--layer", "1") as mnt:
        found = sorted(sh("find", mnt, "-printf", "%P\n").split())
        expected = """
            app app/new blocker deep deep/a deep/a/b deep/a/b/c etc etc/hosts etc/passwd
            file-then-dir file-then-dir/inner hl hl/one hl/two implied implied/opq same
            up-link up-link2
        """
        assert found == sorted(expected.split())
        assert listing(mnt, "etc") == [
            "drwxr-xr-x 2 root root 0 .",
            "drwxr-xr-x 8 root root 0 ..",  # 2 + six directories (A11)
            "-rw------- 1 root root 9 hosts",
            "c--------- 1 root root 0, 0 passwd",
        ]
        assert sh("stat", "-c", "%F %t:%T %a %u:%g", mnt / "etc/passwd").strip() == (
            "character special file 0:0 0 0:0"
        )
        assert sh("getfattr", "-d", "-m", "-", "--absolute-names", mnt / "app") == (
            f"# file: {mnt}/app\n"
            'trusted.overlay.opaque="y"\nuser.mine="kept"\nuser.overlay.opaque="y"\n\n'
        )
        assert sh("getfattr", "-d", "-m", "-", mnt / "etc", mnt / "etc/passwd") == ""
        assert os.getxattr(mnt / "implied/opq", "user.overlay.opaque") == b"y"
        one, two, up, up2 = (os.stat(mnt / p) for p in ("hl/one", "hl/two", "up-link", "up-link2"))
        assert one.st_ino == two.st_ino and one.st_nlink == 2
        assert up.st_ino == up2.st_ino and up.st_nlink == 2 and up.st_uid == 7
        assert (mnt / "up-link").read_bytes() == b"linked from above\n"
        assert os.getxattr(mnt / "up-link", "user.x") == b"1"
        assert stat.filemode(os.stat(mnt / "deep/a").st_mode) == "drwxr-xr-x"
        assert os.listxattr(mnt / "hl/one") == []  # no provenance without the option
        with pytest.raises(OSError) as raised:
            os.getxattr(mnt / "hl/one", LAYER.decode())
        assert raised.value.errno == errno.ENODATA


@pytest.mark.fuse
def test_provenance_xattrs_only_with_the_option(
    views_layout: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """``-o provenance``: user.ocifs.layer = "POSITION DIGEST" on files, directories (the
    layer that last set their attributes, M3; an implied one's, M8), hardlinks (the inode's,
    H1, H2); trusted.ocifs.layer on every inode for root, symlinks included (the kernel
    answers ENODATA for user.* there); read-only; without the option, only the image's own."""
    lay, digests = views_layout
    value = {n: f'"{n} {digest}"' for n, digest in enumerate(digests)}
    image = f"{lay}:views"
    with mounted(image, tmp_path / "plain") as mnt:
        # Every xattr of every entry: the image's own, and nothing else.
        assert sh("getfattr", "-R", "-h", "-d", "-m", "-", "--absolute-names", mnt) == (
            f'# file: {mnt}/app\nuser.mine="kept"\n\n'
            f'# file: {mnt}/up-link\nuser.x="1"\n\n'
            f'# file: {mnt}/up-link2\nuser.x="1"\n\n'
        )
        plain = {
            path: os.listxattr(path, follow_symlinks=False)
            for path in (mnt, mnt / "app", mnt / "app/new", mnt / "top", mnt / "top-link")
        }
        assert plain == {
            mnt: [],
            mnt / "app": ["user.mine"],
            mnt / "app/new": [],
            mnt / "top": [],
            mnt / "top-link": [],
        }
        with pytest.raises(OSError) as raised:
            os.getxattr(mnt / "top", LAYER.decode())
        assert raised.value.errno == errno.ENODATA
    with mounted(image, tmp_path / "prov", "-o", "ro,provenance") as mnt:
        options = [
            line.split()[3]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(mnt)
        ]
        assert options and "provenance" not in options[0]  # never handed to libfuse
        shown = sh(
            "getfattr", "-d", "-m", "^user\\.ocifs", "--absolute-names",
            mnt, mnt / "etc", mnt / "app", mnt / "app/new", mnt / "hl/one", mnt / "hl/two",
            mnt / "deep/a", mnt / "etc/hosts", mnt / "top",
        )  # fmt: skip
        expected = {
            "": 0,  # implied by layer 0, no "./" entry above it
            "/etc": 2,  # layer 2's entry set its attributes again (M3)
            "/app": 1,
            "/app/new": 1,
            "/hl/one": 1,
            "/hl/two": 1,
            "/deep/a": 1,  # implied by layer 1
            "/etc/hosts": 1,
            "/top": 2,
        }
        assert shown == "".join(
            f"# file: {mnt}{path}\nuser.ocifs.layer={value[n]}\n\n" for path, n in expected.items()
        )
        assert os.getxattr(mnt / "app", "user.mine") == b"kept"  # the image's own stay
        # A symlink: the kernel refuses user.* before asking ocifs; trusted.* reaches it.
        link_attrs = sh("getfattr", "-h", "-d", "-m", "-", "--absolute-names", mnt / "top-link")
        assert link_attrs == f"# file: {mnt}/top-link\ntrusted.ocifs.layer={value[2]}\n\n"
        with pytest.raises(OSError) as raised:
            os.getxattr(mnt / "top-link", LAYER.decode(), follow_symlinks=False)
        assert raised.value.errno == errno.ENODATA
        with pytest.raises(OSError) as raised:
            os.setxattr(mnt / "top", LAYER.decode(), b"0 sha256:forged")
        assert raised.value.errno == errno.EROFS
    # Not root: user.ocifs.layer, no trusted.* listed (pytest's tmp_path is root's alone).
    public = Path(tempfile.mkdtemp(prefix="ocifs-views-"))
    public.chmod(0o755)
    try:
        with mounted(image, public / "mnt", "-o", "provenance,allow_other") as mnt:
            as_nobody = sh(
                "getfattr", "-d", "-m", "-", "--absolute-names", mnt / "top", user="65534"
            )
            assert as_nobody == f"# file: {mnt}/top\nuser.ocifs.layer={value[2]}\n\n"
    finally:
        shutil.rmtree(public)


@pytest.mark.fuse
def test_provenance_in_the_views(views_layout: tuple[Path, list[str]], tmp_path: Path) -> None:
    """In ``--layer`` and ``--upto`` views the positions are the image's, never the view's."""
    lay, digests = views_layout
    with mounted(f"{lay}:views", tmp_path / "one", "--layer", "2", "-o", "provenance") as mnt:
        assert os.getxattr(mnt / "top", LAYER.decode()) == f"2 {digests[2]}".encode()
        assert os.getxattr(mnt, LAYER.decode()) == f"2 {digests[2]}".encode()
        assert stat.S_ISCHR(os.lstat(mnt / "shared").st_mode)
    with mounted(f"{lay}:views", tmp_path / "l1", "--layer", "1", "-o", "provenance") as mnt:
        assert os.getxattr(mnt / "up-link", LAYER.decode()) == f"0 {digests[0]}".encode()
        assert os.getxattr(mnt / "app/new", LAYER.decode()) == f"1 {digests[1]}".encode()
    with mounted(f"{lay}:views", tmp_path / "upto", "--upto", "1", "-o", "provenance") as mnt:
        assert os.getxattr(mnt / "shared", LAYER.decode()) == f"0 {digests[0]}".encode()
        assert os.getxattr(mnt / "etc", LAYER.decode()) == f"0 {digests[0]}".encode()
        assert not (mnt / "top").exists()


@pytest.mark.fuse
def test_layer_mounts_stack_with_overlayfs_into_the_image(
    views_layout: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Why whiteouts take overlayfs' form: the three layer mounts, stacked as overlayfs
    lower layers, are the mounted image (W1, W2, W4, H1, H3), but for what the README lists:
    link counts of merged directories (overlayfs' own), user.overlay.opaque, which overlayfs
    shows (it hides trusted.overlay.* only), and the implied parents of an opaque marker
    for a directory no lower layer has (the merge creates none, W3)."""
    lay, _ = views_layout
    image = f"{lay}:views"
    stack = tmp_path / "stack"
    stack.mkdir()
    with contextlib.ExitStack() as mounts:
        whole = mounts.enter_context(mounted(image, tmp_path / "image"))
        layers = [
            mounts.enter_context(mounted(image, tmp_path / f"layer{n}", "--layer", str(n)))
            for n in range(3)
        ]
        lower = ":".join(str(layer) for layer in reversed(layers))
        sh("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", stack)
        try:
            differences = diff(snapshot(whole), snapshot(stack), names=("image", "stack"))
        finally:
            sh("umount", stack)
    assert differences == [
        ".: nlink: image 7 vs stack 1",
        "app: xattr user.overlay.opaque: image None vs stack b'y'",
        "etc: nlink: image 2 vs stack 1",
        "implied: only in stack (dir)",
        "implied/opq: only in stack (dir)",
    ]
