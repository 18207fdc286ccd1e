"""Images in archives resolved and loaded without a mount: every form, REF rules, bad input.

Archives are written by ``archives`` the way each tool writes them: classic ``docker save``
(``<id>/layer.tar``, shared layers as symlinks), podman's and skopeo's docker-archive
(``<hex>.tar``), Docker 25+ (an OCI layout plus ``manifest.json``), oci-archive (a layout
tarred), each plain or gzipped. They are resolved through ``imagearg.resolve_arg``, as
the command line does, and loaded with ``load_image``, which indexes and merges them.
Ids: X1 X2 X3, R2 R3 R9 R10, B1 B2 B3.
"""

from __future__ import annotations

import gzip
import json
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from archives import Entry, Image, docker25_archive, docker_archive, tar_tree, write_tar
from tarbuild import d, f, make_tar, wh

from ocifs.errors import LayerError, LayoutError
from ocifs.image import LoadReport, load_image
from ocifs.imagearg import resolve_arg, split_image_arg
from ocifs.indexcache import IndexCache
from ocifs.layout import Platform, ResolvedImage
from ocifs.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, Compression
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest, zstd_bytes

BASE = make_tar([d("etc"), f("etc/os-release", b"ID=test\n"), f("etc/gone", b"x")])
APP = make_tar([wh("etc/gone"), d("app"), f("app/run", b"#!/bin/sh\necho a\n", mode=0o755)])
OTHER = make_tar([d("srv"), f("srv/b", b"b\n")])


def files(resolved: ResolvedImage, cache: IndexCache | None = None) -> dict[str, bytes]:
    """The merged tree's regular files and their contents, through load_image."""
    image = load_image(resolved, cache=cache)
    try:
        return {
            path.decode(): image.read(node, 0, node.size)
            for path, node in image.tree.walk()
            if stat.S_ISREG(node.mode)
        }
    finally:
        image.close()


EXPECTED = {"etc/os-release": b"ID=test\n", "app/run": b"#!/bin/sh\necho a\n"}


def classic(tmp_path: Path, name: str = "img.tar", **kw: Any) -> Path:
    images = kw.pop("images", None) or [Image([BASE, APP], ["localhost/app:v1"])]
    return docker_archive(tmp_path / name, images, **kw)


def two_images(tmp_path: Path, **kw: Any) -> Path:
    """Two images sharing their base layer, as one `docker save a b` writes them."""
    images = [
        Image([BASE, APP], ["localhost/app:v1", "localhost/app:latest"]),
        Image([BASE, OTHER], ["quay.io/org/other:2"]),
    ]
    return docker_archive(tmp_path / "two.tar", images, **kw)


def one_line(arg: str, **kw: Any) -> str:
    with pytest.raises(LayoutError) as caught:
        resolve_arg(arg, **kw)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- every form resolves and loads ---------------------------------------------------------


@pytest.mark.parametrize("layer_names", ["docker", "hex"])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_x1_classic_docker_archive(tmp_path: Path, layer_names: str, gzipped: bool) -> None:
    """X1: docker save (<id>/layer.tar) and podman/skopeo (<hex>.tar), plain or gzipped."""
    path = classic(tmp_path, layer_names=layer_names, gzipped=gzipped)
    resolved = resolve_arg(str(path))
    assert resolved.manifest_digest is None
    assert resolved.layout == path
    assert [layer.digest for layer in resolved.layers] == [
        sha256_digest(BASE),
        sha256_digest(APP),
    ]
    assert all(layer.compression is Compression.NONE for layer in resolved.layers)
    assert all(layer.media_type == OCI_LAYER_TAR for layer in resolved.layers)
    assert files(resolved) == EXPECTED
    assert resolved.describe().startswith("image sha256:")


def test_x1_compressed_layers_are_checked_by_their_diff_id(tmp_path: Path) -> None:
    """X1: a gzipped layer member is known by its diff_id (its own digest is named nowhere),
    and indexing checks that diff_id."""
    path = classic(tmp_path, images=[Image([BASE, APP], ["app:v1"], gzip_layers={1})])
    resolved = resolve_arg(str(path))
    top = resolved.layers[1]
    assert top.compression is Compression.GZIP and top.media_type == OCI_LAYER_GZIP
    assert top.digest == top.diff_id == sha256_digest(APP) and not top.digest_known
    assert resolved.layers[0].digest_known
    assert files(resolved) == EXPECTED


def test_x1_compressed_layer_with_the_wrong_diff_id(tmp_path: Path) -> None:
    """X1, B2: the config's diff_id catches a compressed member that holds another tar."""

    def swap(manifest: list[dict[str, Any]]) -> None:
        manifest[0]["Layers"][1] = manifest[0]["Layers"][0]

    images = [Image([BASE, gzip_tar := make_tar([f("a", b"a")])], gzip_layers={0, 1})]
    assert gzip_tar
    path = classic(tmp_path, images=images, edit_manifest=swap)
    with pytest.raises(LayerError, match=r"layer 1 \(sha256:.*diff_id mismatch"):
        files(resolve_arg(str(path)))


def test_x1_uncompressed_layer_that_fails_its_diff_id(tmp_path: Path) -> None:
    """X1, B2: an uncompressed member whose bytes are not the config's diff_id: found while
    indexing (its digest is that diff_id)."""
    path = classic(tmp_path, layer_names="hex")
    raw = path.read_bytes().replace(b"ID=test", b"ID=evil")
    path.write_bytes(raw)
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:.*mismatch"):
        files(resolve_arg(str(path)))


def test_x1_docker25_archive_resolves_as_its_oci_layout(tmp_path: Path) -> None:
    """X1: Docker 25+ writes an OCI layout and manifest.json; the layout applies (R1-R10),
    and a REF is the tag, the image name, or a short form of it."""
    images = [Image([BASE, APP], ["app:v1"]), Image([BASE, OTHER], ["other:latest"])]
    path = docker25_archive(tmp_path / "d25.tar", images, tmp_path / "stage")
    for ref in ("app:v1", "docker.io/library/app:v1", "v1"):
        resolved = resolve_arg(f"{path}:{ref}", Platform.host())
        assert resolved.manifest_digest is not None
        assert files(resolved) == EXPECTED
    other = resolve_arg(f"{path}:other", Platform.host())
    assert other.layers[1].digest == sha256_digest(OTHER)
    message = one_line(str(path), platform=Platform.host())
    assert "holds 2 images; choose one" in message
    assert "'docker.io/library/app:v1'" in message and "'docker.io/library/other:latest'" in message


@pytest.mark.parametrize("bug", ["no-layers", "null-index"])
def test_x1_docker25_archive_as_docker_got_it_wrong(
    tmp_path: Path, bug: str, caplog: pytest.LogCaptureFixture
) -> None:
    """X1: where Docker 25.0's writer left the OCI layout unable to name the image (OCI
    manifests without layers; index.json without manifests), manifest.json is what `docker
    load` reads, and what ocifs reads then, with a warning."""
    images = [Image([BASE, APP], ["app:v1"])]
    path = docker25_archive(tmp_path / "d25.tar", images, tmp_path / "stage", bug=bug)
    for arg in (str(path), f"{path}:app:v1"):
        resolved = resolve_arg(arg, Platform.host())
        assert resolved.manifest_digest is None  # from manifest.json
        assert files(resolved) == EXPECTED
    assert "using manifest.json instead, as docker load does" in caplog.text


def test_x1_docker25_archive_broken_both_ways_gives_the_layout_error(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    images = [Image([BASE, APP], ["app:v1"])]
    docker25_archive(tmp_path / "unused.tar", images, stage, bug="no-layers")
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest[0]["Layers"][1] = "blobs/sha256/" + "0" * 64
    (stage / "manifest.json").write_text(json.dumps(manifest))
    path = tar_tree(stage, tmp_path / "d25.tar")
    assert "0 layers but the config lists 2 rootfs.diff_ids" in one_line(f"{path}:app:v1")


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_x2_oci_archive(tmp_path: Path, gzipped: bool) -> None:
    """X2: an oci-archive resolves exactly as its layout does: ref names, digests, an index
    with platforms."""
    writer = LayoutWriter(tmp_path / "layout")
    layers = [writer.add_layer(BASE), writer.add_layer(APP, "none")]
    amd = writer.add_image(layers, platform=("linux", "amd64"), in_index=False)
    arm = writer.add_image(layers[:1], platform=("linux", "arm64"), in_index=False)
    index = writer.add_json(
        {"schemaVersion": 2, "manifests": [amd, arm]}, "application/vnd.oci.image.index.v1+json"
    )
    writer.add_to_index(index, "localhost/app:v1")
    writer.save()
    path = tar_tree(tmp_path / "layout", tmp_path / "oa.tar", gzipped=gzipped)
    amd64 = Platform("linux", "amd64")
    for arg in (
        f"{path}:localhost/app:v1",
        f"{path}:app:v1",
        str(path),
        f"{path}@{index['digest']}",
    ):
        resolved = resolve_arg(arg, amd64)
        assert resolved.manifest_digest == amd["digest"], arg
        assert files(resolved) == EXPECTED
    arm64 = resolve_arg(f"{path}@{arm['digest']}", Platform("linux", "arm64"))
    assert len(arm64.layers) == 1
    assert "no manifest for platform linux/s390x" in one_line(
        str(path), platform=Platform("linux", "s390x")
    )


def test_x1_unpacked_docker_save_directory(tmp_path: Path) -> None:
    """A docker save unpacked into a directory resolves through the same manifest.json."""
    path = classic(tmp_path)
    root = tmp_path / "unpacked"
    root.mkdir()
    with tarfile.open(path) as tar:
        tar.extractall(root, filter="tar")
    assert files(resolve_arg(str(root))) == EXPECTED


def test_x1_shared_layers_are_indexed_once(tmp_path: Path) -> None:
    """X1: the base two images of one archive share (a symlink member) is indexed with the
    first and taken from the cache by the second: the cache keys by digest."""
    path = two_images(tmp_path)
    cache = IndexCache(tmp_path / "cache")
    first, second = LoadReport(), LoadReport()
    app = resolve_arg(f"{path}:app:v1", cache=cache)
    load_image(app, cache=cache, report=first).close()
    other = resolve_arg(f"{path}:quay.io/org/other:2", cache=cache)
    load_image(other, cache=cache, report=second).close()
    assert [layer.position for layer in first.indexed] == [0, 1]
    assert [layer.position for layer in second.from_cache] == [0]
    assert [layer.position for layer in second.indexed] == [1]
    assert app.layers[0].digest == other.layers[0].digest


def test_x1_layout_and_archive_share_the_index_cache(tmp_path: Path) -> None:
    """The cache keys layers by digest whatever the source: an uncompressed layer indexed
    from an OCI layout serves the same layer in a docker-archive."""
    writer = LayoutWriter(tmp_path / "layout")
    writer.add_image(
        [writer.add_layer(BASE, "none"), writer.add_layer(APP, "none")],
        ref="v1",
        platform=host_platform(),
    )
    writer.save()
    cache = IndexCache(tmp_path / "cache")
    load_image(resolve_arg(f"{tmp_path / 'layout'}:v1"), cache=cache).close()
    report = LoadReport()
    load_image(resolve_arg(str(classic(tmp_path)), cache=cache), cache=cache, report=report)
    assert report.tree_from_cache and len(report.from_cache) == 2 and not report.indexed


# --- REF selection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, layer",
    [
        ("localhost/app:v1", APP),
        ("localhost/app", APP),  # :latest is also a tag of it
        ("app:v1", APP),
        ("app", APP),
        ("quay.io/org/other:2", OTHER),
        ("other:2", OTHER),
        ("org/other:2", OTHER),
    ],
)
def test_x1_ref_selects_by_repo_tags(tmp_path: Path, ref: str, layer: bytes) -> None:
    resolved = resolve_arg(f"{two_images(tmp_path)}:{ref}")
    assert resolved.layers[1].digest == sha256_digest(layer)


def test_x1_digest_selects_by_image_id(tmp_path: Path) -> None:
    """@sha256: names an image of a docker-archive by its ID, the config's digest."""
    path = two_images(tmp_path)
    other_id = resolve_arg(f"{path}:other:2").config_digest
    assert resolve_arg(f"{path}@{other_id}").layers[1].digest == sha256_digest(OTHER)
    message = one_line(f"{path}@sha256:{'0' * 64}")
    assert f"no image with ID sha256:{'0' * 64}" in message


def test_r3_several_images_and_no_ref_lists_them(tmp_path: Path) -> None:
    path = two_images(tmp_path)
    assert one_line(str(path)) == (
        f"{path}/manifest.json holds 2 images; choose one with ARCHIVE:REF (images: "
        "'localhost/app:v1', 'localhost/app:latest', 'quay.io/org/other:2')"
    )


def test_r3_unknown_ref_lists_the_images(tmp_path: Path) -> None:
    path = two_images(tmp_path)
    message = one_line(f"{path}:nope:1")
    assert message.startswith(f"{path}/manifest.json: no image with ref 'nope:1'; images: ")
    assert "'quay.io/org/other:2'" in message


def test_r3_ambiguous_short_name(tmp_path: Path) -> None:
    images = [Image([BASE, APP], ["localhost/x:1"]), Image([BASE, OTHER], ["quay.io/y/x:1"])]
    path = docker_archive(tmp_path / "amb.tar", images)
    assert "ref 'x:1' is ambiguous" in one_line(f"{path}:x:1")
    assert resolve_arg(f"{path}:quay.io/y/x:1").layers[1].digest == sha256_digest(OTHER)


def test_x1_untagged_image_needs_no_ref(tmp_path: Path) -> None:
    """One image, no RepoTags (docker save IMAGE_ID): no REF needed; two: listed by ID."""
    path = classic(tmp_path, images=[Image([BASE, APP])])
    assert files(resolve_arg(str(path))) == EXPECTED
    path = docker_archive(tmp_path / "b.tar", [Image([BASE]), Image([APP])])
    assert "(images: @sha256:" in one_line(str(path))


def test_x1_one_image_listed_twice_is_one_image(tmp_path: Path) -> None:
    def twice(manifest: list[dict[str, Any]]) -> None:
        manifest.append(dict(manifest[0], RepoTags=["again:1"]))

    path = classic(tmp_path, edit_manifest=twice)
    assert files(resolve_arg(str(path))) == EXPECTED


# --- the path and the REF --------------------------------------------------------------------


def test_r2_split_archive_and_ref_with_colons(tmp_path: Path) -> None:
    path = classic(tmp_path)
    assert split_image_arg(f"{path}:localhost/app:v1") == (path, "localhost/app:v1", None)
    assert split_image_arg(f"{path}:localhost:5000/app:v1") == (path, "localhost:5000/app:v1", None)
    assert split_image_arg(str(path)) == (path, None, None)
    digest = "sha256:" + "a" * 64
    assert split_image_arg(f"{path}@{digest}") == (path, None, digest)


def test_r2_split_file_name_with_colons(tmp_path: Path) -> None:
    """A file whose name holds ':' is the whole arg, or the longest part naming a file."""
    path = classic(tmp_path, name="app:v1.tar")
    assert split_image_arg(str(path)) == (path, None, None)
    assert split_image_arg(f"{path}:app:v1") == (path, "app:v1", None)
    assert files(resolve_arg(f"{path}:app:v1")) == EXPECTED


def test_r2_split_prefers_the_longest_existing_path(tmp_path: Path) -> None:
    """`x` is a file and `x:y` a directory: `x:y:z` is the directory and ref z."""
    (tmp_path / "x").write_text("")
    (tmp_path / "x:y").mkdir()
    assert split_image_arg(f"{tmp_path}/x:y:z") == (tmp_path / "x:y", "z", None)
    assert split_image_arg(f"{tmp_path}/x:q:z") == (tmp_path / "x", "q:z", None)
    assert split_image_arg(f"{tmp_path}/x:y") == (tmp_path / "x:y", None, None)


def test_r2_split_nothing_exists(tmp_path: Path) -> None:
    arg = f"{tmp_path}/none.tar:app:v1"
    assert split_image_arg(arg) == (Path(arg), None, None)
    assert one_line(arg) == f"{arg} is not an OCI image layout: it does not exist"


# --- bad archives: one line each -------------------------------------------------------------


def test_x3_layer_listed_but_missing(tmp_path: Path) -> None:
    def lose(manifest: list[dict[str, Any]]) -> None:
        manifest[0]["Layers"][1] = "nothere/layer.tar"

    path = classic(tmp_path, edit_manifest=lose)
    assert one_line(str(path)) == (
        f"{path}/manifest.json image 0: layer 1 ('nothere/layer.tar') is missing from the archive"
    )


def test_x3_layer_named_outside_the_archive(tmp_path: Path) -> None:
    """P4: a Layers path that climbs out, or is absolute, names nothing: ocifs never opens
    the host file it would name."""
    host = tmp_path / "host.tar"
    host.write_bytes(BASE)

    for number, name in enumerate(("host.tar", "../host.tar", str(host), "a/../../host.tar")):

        def escape(manifest: list[dict[str, Any]], name: str = name) -> None:
            manifest[0]["Layers"][0] = name

        path = classic(tmp_path, name=f"e{number}.tar", edit_manifest=escape)
        assert one_line(str(path)).endswith(f"layer 0 ({name!r}) is missing from the archive")


def test_x3_layer_symlink_to_the_host(tmp_path: Path) -> None:
    host = tmp_path / "host.tar"
    host.write_bytes(BASE)
    entries = [
        Entry("cfg.json", Image([BASE]).config()),
        Entry("layer.tar", kind="symlink", target=str(host)),
        Entry(
            "manifest.json", json.dumps([{"Config": "cfg.json", "Layers": ["layer.tar"]}]).encode()
        ),
    ]
    path = write_tar(tmp_path / "evil.tar", entries)
    assert "layer 0 ('layer.tar') is missing from the archive" in one_line(str(path))


def test_x3_config_missing(tmp_path: Path) -> None:
    def lose(manifest: list[dict[str, Any]]) -> None:
        manifest[0]["Config"] = "f" * 64 + ".json"

    path = classic(tmp_path, edit_manifest=lose)
    assert one_line(str(path)) == (
        f"{path}/manifest.json image 0: config '{'f' * 64}.json' is missing from the archive"
    )


def test_r9_config_that_fails_its_digest(tmp_path: Path) -> None:
    path = classic(tmp_path)
    raw = path.read_bytes().replace(b'"architecture"', b'"Architecture"', 1)
    path.write_bytes(raw)
    assert "has digest sha256:" in one_line(str(path))


@pytest.mark.parametrize(
    "manifest, message",
    [
        (b"[]", "manifest.json lists no images"),
        (b"{}", "manifest.json must be a JSON list, got dict"),
        (b"[1]", "manifest.json image 0 must be an object, got int"),
        (b'[{"Layers": []}]', "manifest.json image 0 names no Config"),
        (b'[{"Config": "c.json"}]', "manifest.json image 0: Layers must be a list of strings"),
        (b'[{"Config": "c.json", "Layers": [], "RepoTags": "a"}]', "RepoTags must be a list"),
        (b"[", "manifest.json is not valid JSON"),
        (b"\xff", "manifest.json is not UTF-8 JSON"),
    ],
)
def test_b1_bad_manifest_json(tmp_path: Path, manifest: bytes, message: str) -> None:
    path = write_tar(tmp_path / "bad.tar", [Entry("manifest.json", manifest)])
    assert message in one_line(str(path))


def test_r6_layer_count_differs_from_diff_ids(tmp_path: Path) -> None:
    def drop(manifest: list[dict[str, Any]]) -> None:
        manifest[0]["Layers"].pop()

    path = classic(tmp_path, edit_manifest=drop)
    assert "1 layers but the config lists 2 rootfs.diff_ids" in one_line(str(path))


def zstd_member_archive(tmp_path: Path, name: str, member: bytes) -> Path:
    entries = [
        Entry("cfg.json", Image([BASE]).config()),
        Entry("z.tar", member),
        Entry("manifest.json", json.dumps([{"Config": "cfg.json", "Layers": ["z.tar"]}]).encode()),
    ]
    return write_tar(tmp_path / name, entries)


def test_x1_zstd_layer_member_is_read_and_checked_by_its_diff_id(tmp_path: Path) -> None:
    """X1 Z1: a zstd layer member (known from its magic) is served as tar+zstd, known by its
    diff_id, which indexing checks; a damaged one is one line naming the layer."""
    resolved = resolve_arg(str(zstd_member_archive(tmp_path, "z.tar", zstd_bytes(BASE))))
    (layer,) = resolved.layers
    assert layer.compression is Compression.ZSTD and layer.media_type == OCI_LAYER_ZSTD
    assert layer.digest == layer.diff_id == sha256_digest(BASE) and not layer.digest_known
    assert files(resolved) == {"etc/os-release": b"ID=test\n", "etc/gone": b"x"}
    damaged = zstd_member_archive(tmp_path, "bad.tar", b"\x28\xb5\x2f\xfd" + bytes(60))
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:.*zstd frame 1"):
        files(resolve_arg(str(damaged)))


def test_x3_archive_with_no_image(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "empty.tar", [Entry("README", b"hi")])
    assert one_line(str(path)) == (
        f"{path} is not an OCI image layout or a docker-archive:"
        " it has no oci-layout and no manifest.json"
    )


def test_x2_oci_archive_blob_missing(tmp_path: Path) -> None:
    """X2, R10: a blob the layout lists but the archive lacks."""
    writer = LayoutWriter(tmp_path / "layout")
    layer = writer.add_layer(BASE)
    writer.add_image([layer], ref="v1", platform=host_platform())
    writer.save()
    writer.blob_path(layer[0]["digest"]).unlink()
    path = tar_tree(tmp_path / "layout", tmp_path / "oa.tar")
    message = one_line(f"{path}:v1")
    assert f"blob {layer[0]['digest']} is missing from {path}/blobs" in message


def test_x2_oci_archive_blob_fails_its_digest(tmp_path: Path) -> None:
    """X2, B2: a layer blob whose bytes changed is found while indexing (LayerError)."""
    writer = LayoutWriter(tmp_path / "layout")
    tar = make_tar([f("a", b"A" * 1000)])
    layer = writer.add_layer(tar, "none")
    writer.add_image([layer], ref="v1", platform=host_platform())
    writer.save()
    blob = writer.blob_path(layer[0]["digest"])
    blob.write_bytes(blob.read_bytes().replace(b"A" * 1000, b"B" * 1000))
    path = tar_tree(tmp_path / "layout", tmp_path / "oa.tar", gzipped=True)
    resolved = resolve_arg(f"{path}:v1")
    with pytest.raises(LayerError, match=r"layer 0 \(sha256:.*layer digest mismatch"):
        files(resolved)


def test_x2_gzipped_archive_layers_are_gzip_in_gzip(tmp_path: Path) -> None:
    """A gzip layer inside a gzipped oci-archive: read through two levels of cursors."""
    writer = LayoutWriter(tmp_path / "layout")
    big = bytes(range(256)) * 20000  # 5 MB: several seek points in both streams
    tar = make_tar([f("big", big), f("small", b"s")])
    writer.add_image([writer.add_layer(tar, "gzip")], ref="v1", platform=host_platform())
    writer.save()
    path = tar_tree(tmp_path / "layout", tmp_path / "oa.tar.gz", gzipped=True)
    assert files(resolve_arg(f"{path}:v1")) == {"big": big, "small": b"s"}


def test_x3_outer_gzip_of_a_classic_archive_with_gzip_members(tmp_path: Path) -> None:
    raw = classic(tmp_path, images=[Image([BASE, APP], ["a:1"], gzip_layers={0})]).read_bytes()
    path = tmp_path / "img.tgz"
    path.write_bytes(gzip.compress(raw))
    assert files(resolve_arg(str(path))) == EXPECTED
