"""``ocifs inspect``: what a layout or an archive holds, the chosen image's fields and layers,
the per-layer accounting (``--layers``), the JSON shape, and the command's output.

Every image is built here with known contents, so each expected number is worked out from
what the test wrote: tar sizes, member counts, file sizes; one is built by buildah from a
Containerfile (``inspectbuild``), for history as a real tool writes it (``empty_layer``
steps) and a config and manifest that skopeo reads too. The accounting is tested on the
layers' entries alone (no mount, no blobs), then through the command.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import inspectbuild
import pytest
import realimages
from archives import Image as ArchiveImage
from archives import docker25_archive, docker_archive, tar_tree
from mounting import OCIFS, run_ocifs
from realimages import Work
from tarbuild import Member, d, f, link, make_tar, opaque, sym, wh

from ocifs import inspectview
from ocifs.accounting import account_layers
from ocifs.cli import main
from ocifs.errors import LayoutError, MergeError
from ocifs.indexcache import IndexCache
from ocifs.inspect import inspect_arg, match_history
from ocifs.layout import Platform
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest
from ocifs.tarscan import TarEntry, scan_tar
from ocifs.tree import MergedTree, TreeBuilder

PLATFORM = host_platform()


def entries(members: list[Member]) -> list[TarEntry]:
    return list(scan_tar(io.BytesIO(make_tar(members))))


# --- accounting, on entries alone -----------------------------------------------------------


def test_counts_and_bytes_of_each_layer() -> None:
    """Added, modified, deleted, bytes added and hidden, worked out per layer (W1, M2, H5)."""
    layers = [
        [
            d("etc"),
            f("etc/a", b"a" * 1000),
            f("etc/b", b"b" * 200),
            d("tmp"),
            f("tmp/big", b"x" * 5000),
            f("tmp/h", b"h" * 300),
            link("etc/hl", "tmp/h"),
        ],
        # etc/a rewritten (1000 bytes hidden), tmp/big deleted (5000 hidden), tmp/h deleted
        # but its data still shown as etc/hl (H5): hidden nothing. A directory entry over the
        # directory etc is no change; new is new.
        [d("etc"), f("etc/a", b"A" * 10), wh("tmp/big"), wh("tmp/h"), f("new", b"n" * 7)],
    ]
    result = account_layers([entries(layer) for layer in layers])
    first, second = result.layers
    assert (first.added, first.modified, first.deleted) == (7, 0, 0)
    assert first.bytes_added == 1000 + 200 + 5000 + 300  # the hardlink adds no data
    assert first.bytes_hidden == 1000 + 5000
    assert (second.added, second.modified, second.deleted) == (1, 1, 2)
    assert (second.bytes_added, second.bytes_hidden) == (17, 0)
    assert result.total_bytes == 6500 + 17
    assert result.wasted_bytes == 6000
    assert result.hidden_files == 2
    assert [(h.path, h.layer, h.size, h.hidden_by) for h in result.largest_hidden] == [
        (b"/tmp/big", 0, 5000, 1),
        (b"/etc/a", 0, 1000, 1),
    ]
    # dive's score: per path the smallest size over the sum of sizes, deletions counting 0.
    smallest = 10 + 200 + 0 + 0 + 0 + 7  # etc/a, etc/b, tmp/big, tmp/h, etc/hl, new
    stored = (1000 + 10) + 200 + 5000 + 300 + 0 + 7
    assert result.efficiency == pytest.approx(smallest / stored)


def test_an_opaque_directory_counts_what_it_deletes() -> None:
    """W4: the marker deletes every lower entry below the directory (nested ones too); those
    the same layer writes again are modified, not deleted."""
    lower = [
        d("app"),
        f("app/keep", b"k" * 40),
        f("app/gone", b"g" * 60),
        d("app/sub"),
        f("app/sub/x", b"x" * 100),
        sym("app/link", "keep"),
    ]
    upper = [opaque("app"), f("app/keep", b"K" * 4)]
    result = account_layers([entries(lower), entries(upper)])
    layer = result.layers[1]
    # gone, sub, sub/x, link deleted; keep modified
    assert (layer.added, layer.modified, layer.deleted) == (0, 1, 4)
    assert result.layers[0].bytes_hidden == 40 + 60 + 100
    assert result.hidden_files == 3


def test_a_directory_replaced_by_a_file_deletes_its_subtree() -> None:
    """M2: a file over a directory replaces it: the path is modified, what was below it is
    deleted, and its files' data is hidden."""
    lower = [d("data"), f("data/one", b"1" * 11), d("data/deep"), f("data/deep/two", b"2" * 22)]
    upper = [f("data", b"now a file")]
    result = account_layers([entries(lower), entries(upper)])
    layer = result.layers[1]
    assert (layer.added, layer.modified, layer.deleted) == (0, 1, 3)
    assert result.layers[0].bytes_hidden == 33
    assert result.layers[1].bytes_hidden == 0


def test_a_file_in_the_way_of_a_path_becomes_a_directory() -> None:
    """M9: ``x`` a file below, ``x/y`` written above: x's data is hidden, y is added."""
    result = account_layers([entries([f("x", b"12345")]), entries([f("x/y", b"y")])])
    assert result.layers[1].added == 1
    assert result.layers[0].bytes_hidden == 5
    assert result.largest_hidden[0].hidden_by == 1


def test_whiteouts_touch_only_lower_layers_and_hardlinks_count_once() -> None:
    """W2: a file and its whiteout in one layer leave the file; H1/H5: a file with two names
    is hidden only when both go, and its bytes count once."""
    lower = [f("a", b"a" * 50), link("b", "a"), f("c", b"c" * 9)]
    same = [wh("d"), f("d", b"d" * 3)]
    one_name = [wh("a")]
    both = [wh("b")]
    result = account_layers([entries(x) for x in (lower, same, one_name, both)])
    assert result.layers[0].bytes_added == 59
    assert result.layers[1].added == 1  # d: its whiteout found nothing below
    assert result.layers[2].deleted == 1
    assert result.layers[0].bytes_hidden == 50  # once, not per name
    assert [(h.path, h.hidden_by) for h in result.largest_hidden] == [(b"/a", 3)]
    assert result.layers[2].bytes_hidden == result.layers[3].bytes_hidden == 0


def test_a_file_written_twice_in_one_layer_hides_the_first() -> None:
    result = account_layers([entries([f("x", b"1" * 70), f("x", b"2" * 30)])])
    layer = result.layers[0]
    assert (layer.added, layer.modified, layer.bytes_added, layer.bytes_hidden) == (1, 0, 100, 70)
    assert result.largest_hidden[0].hidden_by == 0


def test_top_limits_the_list_of_hidden_files() -> None:
    lower = [f(f"f{n}", b"x" * n) for n in range(1, 8)]
    upper = [wh(f"f{n}") for n in range(1, 8)]
    result = account_layers([entries(lower), entries(upper)], top=3)
    assert [h.size for h in result.largest_hidden] == [7, 6, 5]
    assert result.hidden_files == 7
    assert result.wasted_bytes == result.total_bytes == sum(range(1, 8))
    assert result.efficiency == 0.0


def test_an_image_without_file_data_is_fully_efficient() -> None:
    result = account_layers([entries([d("empty"), sym("l", "x")])])
    assert result.efficiency == 1.0
    assert result.total_bytes == result.wasted_bytes == 0


def test_an_entry_the_merge_refuses_is_an_error() -> None:
    """W7: accounting refuses what the merge refuses (the command then says so in a note)."""
    with pytest.raises(MergeError):
        account_layers([entries([f("dir/.wh.")])])


def random_layers(rng: random.Random) -> list[list[Member]]:
    """Layers of files, directories (always listed before what they hold), symlinks,
    hardlinks to files below or earlier, whiteouts, opaque markers, and files written
    over directories and over files, on a few names so that they collide."""
    names = ["a", "b", "c", "d"]
    layers: list[list[Member]] = []
    files: list[str] = []  # paths written as files so far: hardlink targets
    for _ in range(rng.randint(2, 5)):
        members: list[Member] = []
        for _ in range(rng.randint(1, 8)):
            depth = rng.randint(1, 3)
            parts = [rng.choice(names) for _ in range(depth)]
            for level in range(1, depth):
                members.append(d("/".join(parts[:level])))
            path = "/".join(parts)
            roll = rng.random()
            if roll < 0.45:
                members.append(f(path, b"x" * rng.randint(0, 900)))
                files.append(path)
            elif roll < 0.55:
                members.append(d(path))
            elif roll < 0.6:
                members.append(sym(path, "elsewhere"))
            elif roll < 0.7 and files:
                members.append(link(path, rng.choice(files)))
            elif roll < 0.9:
                members.append(wh(path))
            else:
                members.append(opaque(path))
        layers.append(members)
    return layers


def merged(layers: list[list[TarEntry]]) -> MergedTree:
    builder = TreeBuilder()
    for position, layer in enumerate(layers):
        builder.apply_layer(position, layer)
    return builder.freeze()


@pytest.mark.parametrize("seed", range(150))
def test_accounting_agrees_with_the_merge(seed: int) -> None:
    """On random layers, against the real merged tree (``tree.TreeBuilder``): the data
    shown is the data not hidden, and each layer changes the number of paths shown by
    what it added less what it deleted."""
    rng = random.Random(seed)
    layers: list[list[TarEntry]] = []
    for members in random_layers(rng):
        layer = entries(members)
        try:
            merged([*layers, layer])
        except MergeError:  # a hardlink to a name a whiteout took, say: not an image
            continue
        layers.append(layer)
    result = account_layers(layers)
    tree = merged(layers)
    shown = {
        (node.layer, node.offset): node.size for _, node in tree.walk() if stat.S_ISREG(node.mode)
    }
    assert result.total_bytes - result.wasted_bytes == sum(shown.values())
    hidden = {
        (position, entry.data_offset)
        for position, layer in enumerate(layers)
        for entry in layer
        if entry.kind == "file" and not entry.path.split(b"/")[-1].startswith(b".wh.")
    } - set(shown)
    assert result.hidden_files == len(hidden)
    counts = [0] + [sum(1 for _ in merged(layers[: n + 1]).walk()) for n in range(len(layers))]
    for position, account in enumerate(result.layers):
        assert counts[position + 1] - counts[position] == account.added - account.deleted


# --- history --------------------------------------------------------------------------------


def test_empty_layer_steps_make_no_layer() -> None:
    config = {
        "history": [
            {"created_by": "ADD base", "created": "2024-01-01T00:00:00Z"},
            {"created_by": "ENV A=1", "empty_layer": True},
            {"created_by": "CMD sh", "empty_layer": True},
            {"created_by": "RUN make"},
            {"created_by": "LABEL x=y", "empty_layer": True},
        ]
    }
    steps, notes = match_history(config, 2)
    assert [step.layer for step in steps] == [0, None, None, 1, None]
    assert [step.empty_layer for step in steps] == [False, True, True, False, True]
    assert steps[0].created == "2024-01-01T00:00:00Z"
    assert notes == []


def test_mismatched_history_matches_in_order_and_says_so() -> None:
    steps = [{"created_by": "one"}, {"created_by": "two", "empty_layer": False}]
    fewer, notes = match_history({"history": steps}, 3)
    assert [step.layer for step in fewer] == [0, 1]
    assert "2 step(s) that made a layer, for 3 layer(s)" in notes[0]
    assert "the 1 top layer(s) have no step" in notes[0]
    more, notes = match_history({"history": [*steps, {"created_by": "three"}]}, 1)
    assert [step.layer for step in more] == [0, None, None]
    assert "2 step(s) have no layer" in notes[0]
    assert match_history({}, 2)[1] == ["the config has no history: no layer has a created_by"]
    assert match_history({"history": "junk"}, 1)[0] == []
    odd, notes = match_history({"history": ["junk", {"created_by": 5}]}, 2)
    assert [(s.layer, s.created_by) for s in odd] == [(0, None), (1, None)]
    assert notes == []


# --- images built for the command -----------------------------------------------------------

LAYER_MEMBERS = [
    [
        d("etc"),
        f("etc/os-release", b"ID=test\n"),
        d("tmp"),
        f("tmp/cache.bin", os.urandom(300_000)),
    ],
    [wh("tmp/cache.bin"), f("etc/os-release", b"ID=test2\n"), d("app"), f("app/run", b"#!")],
]
HISTORY = [
    {"created": "2024-05-01T10:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:1 in /"},
    {"created": "2024-05-01T10:00:01Z", "created_by": "ENV LANG=C", "empty_layer": True},
    {
        "created": "2024-05-01T10:00:02Z",
        "created_by": "RUN rm /tmp/cache.bin \\\n\t&& build",
        "comment": "buildkit",
    },
    {"created": "2024-05-01T10:00:03Z", "created_by": 'CMD ["/app/run"]', "empty_layer": True},
]
SETTINGS = {
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["/app/run"],
    "Env": ["PATH=/usr/bin:/bin", "LANG=C"],
    "WorkingDir": "/app",
    "User": "1000:1000",
    "Labels": {"org.example": "yes"},
}
CREATED = "2024-05-01T10:00:03Z"


def build_layout(root: Path) -> dict[str, Any]:
    """v1: two layers (gzip, then plain) with history; v0: the first layer alone; multi: an
    index of two platforms and an attestation. Returns what was written."""
    writer = LayoutWriter(root)
    tars = [make_tar(members) for members in LAYER_MEMBERS]
    layers = [writer.add_layer(tars[0], "gzip"), writer.add_layer(tars[1], "none")]
    extra = {"created": CREATED, "history": HISTORY, "config": SETTINGS}
    v1 = writer.add_image(layers, ref="v1", platform=PLATFORM, config_extra=extra)
    v0 = writer.add_image(layers[:1], ref="v0", platform=PLATFORM)
    arm = writer.add_image(layers[:1], platform=("linux", "arm", "v7"), in_index=False)
    attestation = writer.add_json(
        {"schemaVersion": 2}, "application/vnd.oci.image.manifest.v1+json"
    )
    attestation["platform"] = {"os": "unknown", "architecture": "unknown"}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [v1, arm, attestation],
    }
    multi = writer.add_json(index, "application/vnd.oci.image.index.v1+json")
    writer.add_to_index(multi, "multi")
    writer.save()
    return {"tars": tars, "layers": layers, "v1": v1, "v0": v0, "arm": arm, "multi": multi}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("inspect") / "layout"
    return root, build_layout(root)


def manifest_of(root: Path, digest: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((root / "blobs/sha256" / digest[7:]).read_bytes())
    return document


def test_every_field_of_the_chosen_image(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, written = built
    inspection = inspect_arg(f"{root}:v1", cache=IndexCache(tmp_path / "cache"))
    image = inspection.image
    assert image is not None
    manifest = manifest_of(root, written["v1"]["digest"])
    assert image.manifest_digest == written["v1"]["digest"]
    assert image.manifest_media_type == "application/vnd.oci.image.manifest.v1+json"
    assert image.config_digest == manifest["config"]["digest"]
    assert image.created == CREATED
    assert (image.os, image.architecture, image.variant) == (*PLATFORM, None)
    assert image.entrypoint == SETTINGS["Entrypoint"]
    assert image.cmd == SETTINGS["Cmd"]
    assert image.env == SETTINGS["Env"]
    assert image.working_dir == SETTINGS["WorkingDir"]
    assert image.user == SETTINGS["User"]
    assert image.labels == SETTINGS["Labels"]
    assert [step.layer for step in image.history] == [0, None, 1, None]
    rows = image.layers
    assert [row.position for row in rows] == [0, 1]
    assert [row.digest for row in rows] == [desc["digest"] for desc, _ in written["layers"]]
    assert [row.diff_id for row in rows] == [sha256_digest(tar) for tar in written["tars"]]
    assert [row.media_type for row in rows] == [desc["mediaType"] for desc, _ in written["layers"]]
    assert [row.compressed_size for row in rows] == [desc["size"] for desc, _ in written["layers"]]
    assert [row.uncompressed_size for row in rows] == [len(tar) for tar in written["tars"]]
    assert [row.entries for row in rows] == [len(members) for members in LAYER_MEMBERS]
    assert [row.created_by for row in rows] == [HISTORY[0]["created_by"], HISTORY[2]["created_by"]]
    assert [row.history for row in rows] == [0, 2]
    assert inspection.notes == []
    assert (inspection.indexed, inspection.from_cache) == (2, 0)


def test_the_catalog_lists_every_image_and_marks_the_chosen(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """R5: an index's platforms are listed, attestations as such; the chosen manifest and the
    index leading to it are marked."""
    root, written = built
    inspection = inspect_arg(f"{root}:multi", cache=IndexCache(tmp_path / "cache"))
    assert inspection.image is not None
    assert inspection.image.manifest_digest == written["v1"]["digest"]
    catalog = inspection.catalog
    assert (catalog.format, catalog.source) == ("oci-layout", "directory")
    top = catalog.lists["index.json"]
    assert [(e.names, e.kind, e.chosen) for e in top] == [
        (("v1",), "manifest", True),
        (("v0",), "manifest", False),
        (("multi",), "index", True),
    ]
    children = top[2].children
    assert [(c.digest, c.kind, c.platform, c.chosen) for c in children] == [
        (written["v1"]["digest"], "manifest", "/".join(PLATFORM), True),
        (written["arm"]["digest"], "manifest", "linux/arm/v7", False),
        (children[2].digest, "attestation", "unknown/unknown", False),
    ]
    arm = inspect_arg(f"{root}:multi", Platform("linux", "arm", "v7"))
    assert arm.image is not None and arm.image.manifest_digest == written["arm"]["digest"]
    assert [c.chosen for c in arm.catalog.lists["index.json"][2].children] == [False, True, False]


def test_a_descriptor_without_media_type_is_known_by_its_document(tmp_path: Path) -> None:
    """An index.json entry that names no mediaType is an index if its document has
    manifests (as resolution decides, R4); an unreadable one is listed with why."""
    root = tmp_path / "layout"
    writer = LayoutWriter(root)
    layer = writer.add_layer(make_tar([f("a", b"a")]))
    image = writer.add_image([layer], platform=PLATFORM, in_index=False)
    index = writer.add_json(
        {"schemaVersion": 2, "manifests": [image]}, "application/vnd.oci.image.index.v1+json"
    )
    writer.add_to_index({k: v for k, v in index.items() if k != "mediaType"}, "untyped")
    writer.add_to_index(
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "e" * 64,
         "size": 10},
        "gone",
    )  # fmt: skip
    writer.save()
    inspection = inspect_arg(f"{root}:untyped")
    untyped, gone = inspection.catalog.lists["index.json"]
    assert (untyped.kind, untyped.chosen, [c.digest for c in untyped.children]) == (
        "index",
        True,
        [image["digest"]],
    )
    assert gone.kind == "index" and gone.error is not None and "is missing" in gone.error


def test_several_images_and_none_named_lists_them(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    inspection = inspect_arg(str(root))
    assert inspection.image is None
    assert "choose one with LAYOUT:REF" in inspection.notes[0]
    assert not any(e.chosen for e in inspection.catalog.lists["index.json"])


def test_a_named_platform_that_is_missing_is_an_error(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    with pytest.raises(LayoutError, match="no manifest for platform linux/s390x"):
        inspect_arg(f"{root}:multi", Platform("linux", "s390x"))


def test_one_image_with_a_bad_config_is_an_error_not_a_listing(tmp_path: Path) -> None:
    """A Docker 25+ archive lists its one image twice; that is no choice to make."""
    tars = [make_tar(members) for members in LAYER_MEMBERS]
    staging = tmp_path / "staging"
    archive = docker25_archive(tmp_path / "d25.tar", [ArchiveImage(tars, tags=["app:2"])], staging)
    assert inspect_arg(str(archive)).image is not None
    index = json.loads((staging / "index.json").read_text())
    manifest = manifest_of(staging, index["manifests"][0]["digest"])
    (staging / "blobs/sha256" / manifest["config"]["digest"][7:]).write_text("{}")
    damaged = tar_tree(staging, tmp_path / "damaged.tar")
    with pytest.raises(LayoutError, match="config: blob sha256:"):
        inspect_arg(str(damaged))


def test_accounting_of_the_built_image(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    inspection = inspect_arg(f"{root}:v1", accounting=True)
    accounting = inspection.accounting
    assert accounting is not None
    lower, upper = accounting.layers
    assert (lower.added, lower.modified, lower.deleted) == (4, 0, 0)
    assert (upper.added, upper.modified, upper.deleted) == (2, 1, 1)
    assert lower.bytes_added == len(b"ID=test\n") + 300_000
    assert lower.bytes_hidden == len(b"ID=test\n") + 300_000
    assert (upper.bytes_added, upper.bytes_hidden) == (len(b"ID=test2\n") + 2, 0)
    assert [(h.path, h.size) for h in accounting.largest_hidden] == [
        (b"/tmp/cache.bin", 300_000),
        (b"/etc/os-release", 8),
    ]


@pytest.mark.parametrize("layers", [False, True], ids=["table", "layers"])
def test_a_cached_image_is_inspected_without_opening_its_layer_blobs(
    built: tuple[Path, dict[str, Any]], tmp_path: Path, layers: bool
) -> None:
    """The first inspect indexes and caches (the merged tree too, as ``ocifs index`` does);
    the second opens no layer blob (strace), with or without the entries to count (without,
    it reads only the cache files' headers), and says where its indexes came from."""
    root, written = built
    cache = tmp_path / "cache"
    args = ["inspect", f"{root}:v1", "--json", "--cache-dir", str(cache)]
    args += ["--layers"] if layers else []
    first = run_ocifs(*args, check=True)
    assert json.loads(first.stdout)["layers_indexed"] == 2
    assert any((cache / "trees").iterdir())  # the merged tree: a mount merges nothing
    trace = tmp_path / "trace"
    second = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat,open", "-o", str(trace), *OCIFS, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    again = json.loads(second.stdout)
    assert (again["layers_indexed"], again["layers_from_cache"]) == (0, 2)
    assert again["image"] == json.loads(first.stdout)["image"]
    assert again["accounting"] == json.loads(first.stdout)["accounting"]
    assert (again["accounting"] is not None) == layers
    opened = trace.read_text()
    # Blobs are opened one component at a time from the layout (ocifs/beneath.py), so a
    # blob's open names its bare digest: the paths opened, as strace quotes them.
    paths = re.findall(r'open(?:at)?\((?:AT_FDCWD|\d+), "([^"]*)"', opened)
    blob_opens = {Path(path).name for path in paths if "cache" not in path}
    assert written["v1"]["digest"][7:] in blob_opens  # it sees the manifest's open
    for desc, _ in written["layers"]:
        assert desc["digest"][7:] not in blob_opens
        assert f"cache/layers/sha256/{desc['digest'][7:]}" in opened  # read from the cache


def test_a_cache_built_without_verification_is_not_taken(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """As for a mount: an index built with --no-verify serves only --no-verify."""
    root, _ = built
    cache = IndexCache(tmp_path / "cache")
    unverified = inspect_arg(f"{root}:v1", cache=cache, verify=False)
    assert unverified.indexed == 2
    assert inspect_arg(f"{root}:v1", cache=cache, verify=False).from_cache == 2
    verified = inspect_arg(f"{root}:v1", cache=cache)
    assert (verified.indexed, verified.from_cache) == (2, 0)
    assert verified.image == unverified.image


def test_an_uncached_image_is_indexed_with_no_cache_too(
    built: tuple[Path, dict[str, Any]],
) -> None:
    root, _ = built
    result = run_ocifs("inspect", f"{root}:v0", "--no-cache", "--json", check=True)
    shown = json.loads(result.stdout)
    assert (shown["layers_indexed"], shown["layers_from_cache"]) == (1, 0)


# --- the JSON shape -------------------------------------------------------------------------

TOP_KEYS = {
    "ocifs_inspect",
    "source",
    "catalog",
    "catalog_left_out",
    "image",
    "accounting",
    "notes",
    "layers_indexed",
    "layers_from_cache",
}
IMAGE_KEYS = {
    "manifest_digest",
    "manifest_media_type",
    "config_digest",
    "created",
    "os",
    "architecture",
    "variant",
    "platform",
    "entrypoint",
    "cmd",
    "env",
    "working_dir",
    "user",
    "labels",
    "history",
    "layers",
}
LAYER_KEYS = {
    "position",
    "digest",
    "diff_id",
    "media_type",
    "compressed_size",
    "uncompressed_size",
    "entries",
    "created_by",
    "history",
}
CATALOG_KEYS = {"kind", "digest", "names", "media_type", "platform", "chosen", "error", "manifests"}
HISTORY_KEYS = {"created", "created_by", "comment", "author", "empty_layer", "layer"}
ACCOUNTING_KEYS = {
    "efficiency",
    "total_bytes",
    "wasted_bytes",
    "hidden_files",
    "layers",
    "largest_hidden",
}


def test_the_json_shape(
    built: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented shape, key for key, through the command's main()."""
    root, written = built
    assert main(["inspect", f"{root}:v1", "--json", "--layers", "--top", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == TOP_KEYS
    assert shown["ocifs_inspect"] == inspectview.JSON_VERSION
    assert shown["source"] == {"path": str(root), "kind": "directory", "format": "oci-layout"}
    assert set(shown["catalog"]) == {"index.json"}
    for entry in shown["catalog"]["index.json"]:
        assert set(entry) == CATALOG_KEYS
        for child in entry["manifests"]:
            assert set(child) == CATALOG_KEYS
    image = shown["image"]
    assert set(image) == IMAGE_KEYS
    assert image["manifest_digest"] == written["v1"]["digest"]
    assert all(set(layer) == LAYER_KEYS for layer in image["layers"])
    assert all(set(step) == HISTORY_KEYS for step in image["history"])
    assert image["history"][2]["comment"] == "buildkit"
    accounting = shown["accounting"]
    assert set(accounting) == ACCOUNTING_KEYS
    assert set(accounting["layers"][0]) == {
        "position",
        "added",
        "modified",
        "deleted",
        "bytes_added",
        "bytes_hidden",
    }
    assert accounting["largest_hidden"] == [
        {"path": "/tmp/cache.bin", "layer": 0, "size": 300_000, "hidden_by": 1}
    ]
    assert shown["notes"] == []


def test_json_without_layers_has_no_accounting(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    shown = json.loads(run_ocifs("inspect", f"{root}:v0", "--json", check=True).stdout)
    assert shown["accounting"] is None
    assert shown["image"]["history"] == []
    assert shown["notes"] == ["the config has no history: no layer has a created_by"]
    assert shown["image"]["layers"][0]["created_by"] is None


# --- archives -------------------------------------------------------------------------------


class HistoryImage(ArchiveImage):
    """An archive image whose config has history and settings."""

    def config(self) -> bytes:
        document = json.loads(super().config())
        document.update({"created": CREATED, "history": HISTORY, "config": SETTINGS})
        return json.dumps(document).encode()


def test_a_docker_archive(tmp_path: Path) -> None:
    """X1: a classic docker-archive, a gzipped layer among its layers, two images."""
    tars = [make_tar(members) for members in LAYER_MEMBERS]
    images = [
        HistoryImage(tars, tags=["app:1"], gzip_layers={0}),
        ArchiveImage(tars[:1], tags=["base:1"]),
    ]
    archive = docker_archive(tmp_path / "img.tar", images)
    inspection = inspect_arg(f"{archive}:app:1", accounting=True)
    image = inspection.image
    assert image is not None
    assert image.manifest_digest is None
    assert image.config_digest == sha256_digest(images[0].config())
    assert image.cmd == SETTINGS["Cmd"] and image.created == CREATED
    rows = image.layers
    assert [row.diff_id for row in rows] == [sha256_digest(tar) for tar in tars]
    assert [row.uncompressed_size for row in rows] == [len(tar) for tar in tars]
    assert [row.entries for row in rows] == [len(members) for members in LAYER_MEMBERS]
    assert rows[0].media_type.endswith("tar+gzip") and rows[1].media_type.endswith(".tar")
    assert rows[0].compressed_size < rows[0].uncompressed_size
    assert rows[1].compressed_size == len(tars[1])
    assert [row.created_by for row in rows] == [HISTORY[0]["created_by"], HISTORY[2]["created_by"]]
    catalog = inspection.catalog
    assert (catalog.format, catalog.source) == ("docker-archive", "archive")
    assert [(e.names, e.chosen, e.platform) for e in catalog.lists["manifest.json"]] == [
        (("app:1",), True, "/".join(PLATFORM)),
        (("base:1",), False, "/".join(PLATFORM)),
    ]
    assert inspection.accounting is not None
    assert inspection.accounting.wasted_bytes == 300_000 + len(b"ID=test\n")


def test_a_gzipped_oci_archive_and_a_docker25_archive(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """X2: an oci-archive (gzipped) inspects as its layout does; a Docker 25+ archive lists
    both its index.json and its manifest.json."""
    root, written = built
    archive = tar_tree(root, tmp_path / "oci.tar.gz", gzipped=True)
    inspection = inspect_arg(f"{archive}:v1")
    assert inspection.catalog.source == "archive (gzip)"
    assert inspection.image is not None
    assert inspection.image.manifest_digest == written["v1"]["digest"]
    tars = [make_tar(members) for members in LAYER_MEMBERS]
    docker25 = docker25_archive(
        tmp_path / "d25.tar", [ArchiveImage(tars, tags=["app:2"])], tmp_path / "staging"
    )
    shown = inspect_arg(f"{docker25}:app:2")
    assert shown.catalog.format == "docker-archive+oci-layout"
    assert set(shown.catalog.lists) == {"index.json", "manifest.json"}
    assert [e.chosen for e in shown.catalog.lists["index.json"]] == [True]
    assert [e.chosen for e in shown.catalog.lists["manifest.json"]] == [True]


# --- the command ----------------------------------------------------------------------------


def test_the_table_through_the_command(built: tuple[Path, dict[str, Any]]) -> None:
    root, written = built
    result = run_ocifs("inspect", f"{root}:v1", "--layers", check=True)
    out = result.stdout
    assert result.stderr == ""
    lines = out.splitlines()
    assert lines[0] == f"Source      {root} (oci-layout, directory)"
    assert f"Manifest    {written['v1']['digest']}" in out
    assert 'Cmd         ["/app/run"]' in lines
    assert "Env         PATH=/usr/bin:/bin" in lines and "            LANG=C" in lines
    header = next(line for line in lines if line.lstrip().startswith("#  digest"))
    assert header.split() == [
        "#", "digest", "type", "compressed", "uncompressed", "entries", "created", "by"
    ]  # fmt: skip
    row = lines[lines.index(header) + 2].split()
    assert row[:3] == ["1", written["layers"][1][0]["digest"][:19], "tar"]
    # the history step's newline and tab are shown as one space, on one line
    assert lines[lines.index(header) + 2].endswith("RUN rm /tmp/cache.bin \\ && build")
    assert any(line.startswith("Layer accounting (efficiency ") for line in lines)
    assert any(line.endswith("  /tmp/cache.bin") for line in lines)


def test_progress_is_shown_on_a_terminal_while_indexing(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """As ``ocifs index`` and ``mount`` do; erased once done (only the table stays)."""
    root, _ = built
    command = shlex.join([*OCIFS, "inspect", f"{root}:v1", "--cache-dir", str(tmp_path / "c")])
    result = subprocess.run(
        ["script", "-qefc", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "72"},
    )
    assert result.returncode == 0, result.stdout
    # the layers index in parallel: the first redraw may come before the second has begun
    assert re.search(r"ocifs: indexing [12] layer\(s\): ", result.stdout)
    assert "Layers (2: " in result.stdout
    rows = [line.rstrip("\r") for line in result.stdout.splitlines() if " tar" in line]
    assert len(rows) == 2
    assert all(len(row) == 72 and row.endswith("…") for row in rows)  # cut to the width


def test_listing_without_a_ref_exits_zero(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    result = run_ocifs("inspect", str(root))
    assert result.returncode == 0
    assert "Images in index.json" in result.stdout
    assert "Note: " in result.stdout and "choose one with LAYOUT:REF" in result.stdout


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":nope", "no image with ref 'nope'"),
        ("/missing", "does not exist"),
    ],
)
def test_errors_are_one_line(built: tuple[Path, dict[str, Any]], suffix: str, message: str) -> None:
    root, _ = built
    result = run_ocifs("inspect", f"{root}{suffix}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("ocifs: error: ") and message in result.stderr


def test_a_damaged_layer_is_one_line(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "bad")
    layer = writer.add_layer(make_tar([f("a", b"a" * 100)]), "none")
    writer.add_image([layer], ref="v1", platform=PLATFORM)
    writer.save()
    blob = writer.blob_path(layer[0]["digest"])
    data = bytearray(blob.read_bytes())
    data[600] ^= 1
    blob.write_bytes(bytes(data))
    result = run_ocifs("inspect", f"{tmp_path / 'bad'}:v1")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "digest mismatch" in result.stderr


def test_a_bad_top_is_refused(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    result = run_ocifs("inspect", f"{root}:v1", "--layers", "--top", "-1")
    assert result.returncode == 1
    assert result.stderr.strip() == "ocifs: error: --top must be at least 0, not -1"


# --- an image a real tool built -------------------------------------------------------------


@pytest.fixture(scope="module")
def buildah_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Work, Path]]:
    for tool in ("buildah", "skopeo", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup")
    work = Work.create(tmp_path_factory.mktemp("buildah"))
    layout = work.root / "layout"
    try:
        inspectbuild.build(work, layout)
        yield work, layout
    finally:
        realimages.cleanup(work)


def test_what_buildah_built(buildah_layout: tuple[Work, Path]) -> None:
    """A Containerfile's ENV, LABEL, WORKDIR, USER, ENTRYPOINT and CMD make history steps
    marked empty_layer: each COPY's step is matched to its own layer, and the config and
    manifest are what skopeo reads."""
    work, layout = buildah_layout
    config = json.loads(work.tools.skopeo("inspect", "--config", f"oci:{layout}:v1"))
    manifest = json.loads(work.tools.skopeo("inspect", "--raw", f"oci:{layout}:v1"))
    inspection = inspect_arg(f"{layout}:v1", accounting=True)
    image = inspection.image
    assert image is not None
    assert inspection.notes == []
    assert sum(step.get("empty_layer", False) for step in config["history"]) == 6
    assert [row.created_by for row in image.layers] == [
        step["created_by"] for step in config["history"] if not step.get("empty_layer")
    ]
    made = [(row.created_by or "").rstrip().rsplit(" ", 1)[-1] for row in image.layers]
    assert made == ["/etc/motd", "/data/big", "/data/big"]
    assert [row.digest for row in image.layers] == [x["digest"] for x in manifest["layers"]]
    for row in image.layers:
        blob = (layout / "blobs" / "sha256" / row.digest[7:]).read_bytes()
        assert row.compressed_size == len(blob)
        assert row.uncompressed_size == len(gzip.decompress(blob))
    settings = config["config"]
    assert (image.entrypoint, image.cmd, image.env) == (
        settings["Entrypoint"],
        settings["Cmd"],
        settings["Env"],
    )
    assert (image.working_dir, image.user, image.labels) == (
        "/srv",
        "1000:1000",
        settings["Labels"],
    )
    assert image.created == config["created"]
    accounting = inspection.accounting
    assert accounting is not None
    assert [layer.bytes_hidden for layer in accounting.layers] == [0, inspectbuild.BIG, 0]
    assert accounting.layers[2].modified == 1
    assert accounting.wasted_bytes == inspectbuild.BIG
    assert [(h.path, h.layer, h.hidden_by) for h in accounting.largest_hidden] == [
        (b"/data/big", 1, 2)
    ]


def test_a_blob_changed_after_inspect_is_caught_by_the_next_index(tmp_path: Path) -> None:
    """inspect trusts the cache by digest, size and compression (it serves no data); what
    serves data still checks the blob's sample, so a blob changed in place (same size) is
    indexed again, and its digest is then found wrong."""
    writer = LayoutWriter(tmp_path / "layout")
    tar = make_tar([f("a", b"a" * 100)])
    layer = writer.add_layer(tar, "none")
    writer.add_image([layer], ref="v1", platform=PLATFORM)
    writer.save()
    cache = tmp_path / "cache"
    image = f"{tmp_path / 'layout'}:v1"
    assert run_ocifs("inspect", image, "--cache-dir", str(cache)).returncode == 0
    blob = writer.blob_path(layer[0]["digest"])
    blob.write_bytes(tar.replace(b"a" * 100, b"b" * 100))
    again = json.loads(run_ocifs("inspect", image, "--json", "--cache-dir", str(cache)).stdout)
    assert again["layers_from_cache"] == 1
    result = run_ocifs("index", image, "--cache-dir", str(cache))
    assert result.returncode == 1 and "digest mismatch" in result.stderr
