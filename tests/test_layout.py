"""Resolving an OCI image layout to a manifest, config and layers (R1-R10, B1, B2).

Layouts are written with ``ocifs.ocibuild.LayoutWriter``; malformed cases are written or
patched by hand. Every test passes an explicit platform unless it tests the host default.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocifs import layout as L
from ocifs import mediatypes
from ocifs.errors import LayoutError, show
from ocifs.imagearg import split_image_arg
from ocifs.layout import Platform, resolve
from ocifs.mediatypes import (
    LAYER_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Compression,
)
from ocifs.ocibuild import (
    LayoutWriter,
    image_config,
    image_manifest,
    platform_dict,
    sha256_digest,
)

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

Edit = Callable[[dict[str, Any]], None] | None


def tar(name: str = "hello", data: bytes = b"hi\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def image(
    w: LayoutWriter,
    *,
    nlayers: int = 1,
    platform: tuple[str, ...] = ("linux", "amd64"),
    config_edit: Edit = None,
    manifest_edit: Edit = None,
    config_type: str = OCI_CONFIG,
    manifest_type: str | None = OCI_MANIFEST,
    descriptor_type: str | None = OCI_MANIFEST,
    layer_type: str | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Write one image (config, manifest, layers) and return its manifest descriptor.

    The edit hooks patch the config / manifest documents before they are hashed, so the
    blobs stay content-addressed and only the tested defect is present.
    """
    layers = [w.add_layer(tar(f"f{i}{tag}", f"{i}{tag}".encode())) for i in range(nlayers)]
    if layer_type is not None:
        for descriptor, _ in layers:
            descriptor["mediaType"] = layer_type
    config = image_config(layers, platform)
    if config_edit:
        config_edit(config)
    manifest = image_manifest(w.add_json(config, config_type), layers)
    manifest["mediaType"] = manifest_type
    if manifest_type is None:
        del manifest["mediaType"]
    if manifest_edit:
        manifest_edit(manifest)
    descriptor = w.add_json(manifest, descriptor_type or OCI_MANIFEST)
    if descriptor_type is None:
        del descriptor["mediaType"]
    descriptor["platform"] = platform_dict(platform)
    return descriptor


def index(
    w: LayoutWriter, entries: list[dict[str, Any]], media_type: str | None = OCI_INDEX
) -> dict[str, Any]:
    document: dict[str, Any] = {"schemaVersion": 2, "manifests": entries}
    if media_type is not None:
        document["mediaType"] = media_type
    return w.add_json(document, media_type or OCI_INDEX)


def simple(
    root: Path, ref: str | None = "latest", **kw: Any
) -> tuple[LayoutWriter, dict[str, Any]]:
    w = LayoutWriter(root)
    descriptor = image(w, **kw)
    w.add_to_index(descriptor, ref)
    w.save()
    return w, descriptor


def error(root: Path, **kw: Any) -> str:
    kw.setdefault("platform", AMD64)
    with pytest.raises(LayoutError) as info:
        resolve(root, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def write_index(root: Path, document: Any) -> None:
    (root / "index.json").write_text(json.dumps(document))


def load_index(root: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((root / "index.json").read_text())
    return result


def blob(root: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return root / "blobs" / algorithm / hexdigest


def attestation(w: LayoutWriter, subject: str) -> dict[str, Any]:
    """A BuildKit-style attestation manifest entry (unknown/unknown + reference annotations)."""
    statement = w.add_blob(
        b'{"_type": "https://in-toto.io/Statement/v0.1"}', "application/vnd.in-toto+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": w.add_json({}, OCI_CONFIG),
        "layers": [statement],
    }
    descriptor = w.add_json(manifest, OCI_MANIFEST)
    descriptor["platform"] = {"os": "unknown", "architecture": "unknown"}
    descriptor["annotations"] = {
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": subject,
    }
    return descriptor


# --- R1: the layout ---------------------------------------------------------------------


def test_r1_minimal_layout_resolves_to_manifest_config_and_layers(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, nlayers=2)
    result = resolve(tmp_path, "latest", platform=AMD64)
    manifest = json.loads(blob(tmp_path, descriptor["digest"]).read_bytes())
    config = json.loads(blob(tmp_path, manifest["config"]["digest"]).read_bytes())
    assert result.layout == tmp_path
    assert result.manifest_digest == descriptor["digest"]
    assert result.config_digest == manifest["config"]["digest"]
    assert result.config == config
    assert result.platform == "linux/amd64"
    assert result.manifest_media_type == OCI_MANIFEST
    assert len(result.layers) == 2
    for i, layer in enumerate(result.layers):
        assert layer.position == i
        assert layer.digest == manifest["layers"][i]["digest"]
        assert layer.size == manifest["layers"][i]["size"] == layer.blob.path.stat().st_size
        assert layer.media_type == OCI_LAYER_GZIP
        assert layer.compression == "gzip"
        assert layer.diff_id == config["rootfs"]["diff_ids"][i]
        assert layer.blob.path == blob(tmp_path, layer.digest)
    assert result.layers[1].describe() == f"layer 1 ({result.layers[1].digest})"


def test_r1_other_files_are_ignored(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    (tmp_path / "README").write_text("not part of the layout")
    (tmp_path / "index.json.bak").write_text("{broken")
    (tmp_path / "blobs" / "sha256" / "garbage").write_text("x")
    (tmp_path / "blobs" / "md5").mkdir()
    (tmp_path / "ingest").mkdir()
    assert resolve(tmp_path, "latest", platform=AMD64).manifest_digest == descriptor["digest"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"imageLayoutVersion": "1.1.0"}', "unsupported imageLayoutVersion '1.1.0'"),
        ('{"imageLayoutVersion": 1}', "unsupported imageLayoutVersion 1"),
        ("{}", "unsupported imageLayoutVersion None"),
        ('["1.0.0"]', "oci-layout must be a JSON object, got list"),
        ("{not json", "oci-layout is not valid JSON"),
    ],
)
def test_r1_b1_bad_oci_layout_file(tmp_path: Path, content: str, expected: str) -> None:
    simple(tmp_path)
    (tmp_path / "oci-layout").write_text(content)
    message = error(tmp_path)
    assert message.startswith(f"{tmp_path}/oci-layout")
    assert expected in message


def test_r1_b1_missing_oci_layout(tmp_path: Path) -> None:
    simple(tmp_path)
    (tmp_path / "oci-layout").unlink()
    assert error(tmp_path) == f"{tmp_path} is not an OCI image layout: oci-layout is missing"


def test_r1_b1_missing_index_json(tmp_path: Path) -> None:
    simple(tmp_path)
    (tmp_path / "index.json").unlink()
    assert error(tmp_path) == f"{tmp_path}/index.json is missing"


def test_layout_path_missing_is_not_a_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert error(missing) == f"{missing} is not an OCI image layout: it does not exist"


def test_layout_path_file_is_not_a_layout(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert error(file) == f"{file} is not an OCI image layout: it is not a directory"


# --- R2: LAYOUT:REF / LAYOUT@DIGEST ---------------------------------------------------------


def test_r2_split_without_ref(tmp_path: Path) -> None:
    assert split_image_arg(str(tmp_path)) == (tmp_path, None, None)


def test_r2_split_at_first_colon_after_existing_directory(tmp_path: Path) -> None:
    assert split_image_arg(f"{tmp_path}:latest") == (tmp_path, "latest", None)
    assert split_image_arg(f"{tmp_path}:docker.io/library/alpine:3.19") == (
        tmp_path,
        "docker.io/library/alpine:3.19",
        None,
    )


def test_r2_split_layout_path_containing_colon(tmp_path: Path) -> None:
    layout = tmp_path / "a:b"
    layout.mkdir()
    assert split_image_arg(f"{layout}:v1:x") == (layout, "v1:x", None)


def test_r2_split_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "layout").mkdir()
    monkeypatch.chdir(tmp_path)
    assert split_image_arg("./layout:latest") == (Path("layout"), "latest", None)
    assert split_image_arg("layout:latest") == (Path("layout"), "latest", None)


def test_r2_split_no_existing_directory_means_whole_arg_is_layout(tmp_path: Path) -> None:
    arg = f"{tmp_path}/missing:latest"
    assert split_image_arg(arg) == (Path(arg), None, None)


@pytest.mark.parametrize("algorithm, length", [("sha256", 64), ("sha512", 128)])
def test_r2_split_digest(tmp_path: Path, algorithm: str, length: int) -> None:
    digest = f"{algorithm}:{'a' * length}"
    assert split_image_arg(f"{tmp_path}@{digest}") == (tmp_path, None, digest)


def test_r2_ref_selects_among_named_images(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    first = image(w, tag="a")
    second = image(w, tag="b")
    w.add_to_index(first, "docker.io/library/alpine:3.19")
    w.add_to_index(second, "v2")
    w.save()
    layout, ref, _ = split_image_arg(f"{tmp_path}:docker.io/library/alpine:3.19")
    assert resolve(layout, ref, platform=AMD64).manifest_digest == first["digest"]
    assert resolve(tmp_path, "v2", platform=AMD64).manifest_digest == second["digest"]


def test_r2_no_ref_takes_the_single_descriptor(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, ref="whatever")
    assert resolve(tmp_path, platform=AMD64).manifest_digest == descriptor["digest"]


def test_r2_no_ref_single_unnamed_descriptor(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, ref=None)
    assert resolve(tmp_path, platform=AMD64).manifest_digest == descriptor["digest"]


def test_r2_r3_no_ref_with_several_images_lists_refs(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    w.add_to_index(image(w, tag="a"), "one")
    w.add_to_index(image(w, tag="b"), "two")
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}/index.json holds 2 images; choose one with LAYOUT:REF "
        "(available refs: 'one', 'two')"
    )


def test_r2_no_ref_same_digest_twice_is_not_ambiguous(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = image(w)
    w.add_to_index(descriptor, "one")
    w.add_to_index(descriptor, "two")
    w.save()
    assert resolve(tmp_path, platform=AMD64).manifest_digest == descriptor["digest"]


def test_r2_r5_unnamed_platform_entries_in_index_json_choose_by_platform(tmp_path: Path) -> None:
    """Decision: index.json with several unnamed entries is treated as the platform index."""
    w = LayoutWriter(tmp_path)
    amd = image(w, platform=("linux", "amd64"))
    arm = image(w, platform=("linux", "arm64", "v8"))
    w.add_to_index(amd)
    w.add_to_index(arm)
    w.save()
    assert resolve(tmp_path, platform=ARM64).manifest_digest == arm["digest"]
    assert resolve(tmp_path, platform=AMD64).manifest_digest == amd["digest"]


def test_r2_digest_selects_index_json_entry(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    first = image(w, tag="a")
    second = image(w, tag="b")
    w.add_to_index(first, "one")
    w.add_to_index(second, "two")
    w.save()
    layout, ref, digest = split_image_arg(f"{tmp_path}@{second['digest']}")
    result = resolve(layout, ref, digest, platform=AMD64)
    assert result.manifest_digest == second["digest"]


def test_r2_digest_selects_manifest_blob_not_in_index_json(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    amd = image(w, platform=("linux", "amd64"))
    arm = image(w, platform=("linux", "arm64", "v8"))
    w.add_to_index(index(w, [amd, arm]), "latest")
    w.save()
    # The arm64 manifest is only reachable through the index, yet its digest selects it,
    # whatever the requested platform.
    result = resolve(tmp_path, digest=arm["digest"], platform=AMD64)
    assert result.manifest_digest == arm["digest"]
    assert result.platform == "linux/arm64/v8"  # from the config: no index entry was used


def test_r2_digest_of_nested_index_blob_follows_it(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    amd = image(w, platform=("linux", "amd64"))
    inner = index(w, [amd])
    w.add_to_index(index(w, [inner]), "latest")
    w.save()
    result = resolve(tmp_path, digest=inner["digest"], platform=AMD64)
    assert result.manifest_digest == amd["digest"]


def test_r2_digest_not_in_layout(tmp_path: Path) -> None:
    simple(tmp_path)
    digest = "sha256:" + "0" * 64
    assert error(tmp_path, digest=digest) == (
        f"{tmp_path}: no manifest or index with digest {digest} in the layout"
    )


def test_r2_digest_of_a_layer_blob_is_not_a_manifest(tmp_path: Path) -> None:
    simple(tmp_path)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    message = error(tmp_path, digest=layer.digest)
    assert message.startswith(f"{tmp_path}: manifest {layer.digest} is not")


# --- R3: no match, ambiguous ------------------------------------------------------------


def test_r3_missing_ref_lists_available_refs(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    w.add_to_index(image(w, tag="a"), "1.0")
    w.add_to_index(image(w, tag="b"), "latest")
    w.save()
    assert error(tmp_path, ref="2.0") == (
        f"{tmp_path}/index.json: no image with ref '2.0'; available refs: '1.0', 'latest'"
    )


def test_r3_missing_ref_when_nothing_is_named(tmp_path: Path) -> None:
    simple(tmp_path, ref=None)
    assert error(tmp_path, ref="latest") == (
        f"{tmp_path}/index.json: no image with ref 'latest'; no refs are named"
    )


def test_r3_empty_ref(tmp_path: Path) -> None:
    simple(tmp_path)
    assert error(tmp_path, ref="") == (
        f"{tmp_path}: empty ref after ':' (available refs: 'latest')"
    )


def test_r3_ambiguous_ref(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    first = image(w, tag="a")
    second = image(w, tag="b")
    w.add_to_index(first, "latest")
    w.add_to_index(second, "latest")
    w.save()
    digests = ", ".join(sorted([first["digest"], second["digest"]]))
    assert error(tmp_path, ref="latest") == (
        f"{tmp_path}/index.json: ref 'latest' is ambiguous: it names {digests}"
    )


def test_r3_same_ref_same_digest_is_not_ambiguous(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = image(w)
    w.add_to_index(descriptor, "latest")
    w.add_to_index(descriptor, "latest")
    w.save()
    assert resolve(tmp_path, "latest", platform=AMD64).manifest_digest == descriptor["digest"]


def test_r3_empty_index_json(tmp_path: Path) -> None:
    LayoutWriter(tmp_path).save()
    assert error(tmp_path) == f"{tmp_path}/index.json lists no images"


# --- R4: manifest and index media types ------------------------------------------------------


def docker_image(w: LayoutWriter, platform: tuple[str, ...], tag: str = "") -> dict[str, Any]:
    return image(
        w,
        platform=platform,
        config_type=DOCKER_CONFIG,
        manifest_type=DOCKER_MANIFEST,
        descriptor_type=DOCKER_MANIFEST,
        layer_type=DOCKER_LAYER,
        tag=tag,
    )


def test_r4_docker_schema2_manifest(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = docker_image(w, ("linux", "amd64"))
    w.add_to_index(descriptor, "latest")
    w.save()
    result = resolve(tmp_path, "latest", platform=AMD64)
    assert result.manifest_digest == descriptor["digest"]
    assert result.manifest_media_type == DOCKER_MANIFEST
    assert result.layers[0].media_type == DOCKER_LAYER
    assert result.layers[0].compression == "gzip"


@pytest.mark.parametrize(
    "descriptor_type, document",
    [
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []},
        ),
        (
            "application/vnd.docker.distribution.manifest.v1+json",
            {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []},
        ),
        (None, {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}),
        (
            None,
            {
                "schemaVersion": 1,
                "mediaType": "application/vnd.docker.distribution.manifest.v1+json",
            },
        ),
    ],
)
def test_r4_docker_schema1_is_unsupported(
    tmp_path: Path, descriptor_type: str | None, document: dict[str, Any]
) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = w.add_json(document, descriptor_type or "x")
    if descriptor_type is None:
        del descriptor["mediaType"]
    w.add_to_index(descriptor, "latest")
    w.save()
    message = error(tmp_path)
    assert message.startswith(f"{tmp_path}: manifest {descriptor['digest']}: ")
    assert "Docker schema 1 manifests are unsupported" in message


def test_r4_manifest_without_media_type_uses_descriptor(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, manifest_type=None)
    result = resolve(tmp_path, platform=AMD64)
    assert result.manifest_digest == descriptor["digest"]
    assert result.manifest_media_type == OCI_MANIFEST


def test_r4_no_media_type_anywhere_decided_by_layers_and_manifests(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    manifest = image(w, manifest_type=None, descriptor_type=None)
    inner = index(w, [manifest], media_type=None)
    del inner["mediaType"]
    w.add_to_index(inner, "latest")
    w.save()
    result = resolve(tmp_path, platform=AMD64)
    assert result.manifest_digest == manifest["digest"]
    assert result.manifest_media_type == OCI_MANIFEST


def test_r4_no_media_type_and_neither_layers_nor_manifests(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = w.add_json({"schemaVersion": 2, "config": {}}, "x")
    del descriptor["mediaType"]
    w.add_to_index(descriptor, "latest")
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']}: no mediaType, "
        "and it is neither a manifest nor an index"
    )


def test_r4_descriptor_and_document_media_types_disagree(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, descriptor_type=DOCKER_MANIFEST)
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']}: descriptor says mediaType "
        f"{DOCKER_MANIFEST!r}, the document says {OCI_MANIFEST!r}"
    )


def test_r4_unknown_manifest_media_type(tmp_path: Path) -> None:
    kind = "application/vnd.cncf.helm.chart.v1+json"
    _, descriptor = simple(tmp_path, manifest_type=kind, descriptor_type=kind)
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']}: unsupported mediaType {kind!r} "
        "(not an image manifest or index)"
    )


# --- R5: indexes and platforms --------------------------------------------------------------


def docker_list(root: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A Docker manifest list: linux/amd64, linux/arm64/v8 and an unknown/unknown attestation."""
    w = LayoutWriter(root)
    amd = docker_image(w, ("linux", "amd64"), tag="amd")
    arm = docker_image(w, ("linux", "arm64", "v8"), tag="arm")
    att = attestation(w, amd["digest"])
    w.add_to_index(index(w, [amd, arm, att], media_type=DOCKER_LIST), "latest")
    w.save()
    return amd, arm, att


@pytest.mark.parametrize(
    "platform, expected",
    [("linux/amd64", 0), ("linux/arm64", 1), ("linux/arm64/v8", 1)],
)
def test_r5_docker_manifest_list_platform_selection(
    tmp_path: Path, platform: str, expected: int
) -> None:
    entries = docker_list(tmp_path)
    result = resolve(tmp_path, "latest", platform=Platform.parse(platform))
    assert result.manifest_digest == entries[expected]["digest"]
    assert result.platform == ["linux/amd64", "linux/arm64/v8"][expected]
    assert result.manifest_media_type == DOCKER_MANIFEST


def test_r5_no_matching_platform_lists_platforms_without_attestations(tmp_path: Path) -> None:
    docker_list(tmp_path)
    digest = load_index(tmp_path)["manifests"][0]["digest"]
    assert error(tmp_path, platform=Platform.parse("linux/riscv64")) == (
        f"{tmp_path}: index {digest}: no manifest for platform linux/riscv64; "
        "platforms present: linux/amd64, linux/arm64/v8"
    )


def test_r5_requested_variant_must_match(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    w.add_to_index(index(w, [image(w, platform=("linux", "arm", "v7"))]), "latest")
    w.save()
    message = error(tmp_path, platform=Platform.parse("linux/arm/v6"))
    assert message.endswith(
        "no manifest for platform linux/arm/v6; platforms present: linux/arm/v7"
    )
    result = resolve(tmp_path, platform=Platform.parse("linux/arm"))
    assert result.platform == "linux/arm/v7"


def test_r5_arm64_entry_without_variant_matches_v8(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    arm = image(w, platform=("linux", "arm64"))
    amd = image(w, platform=("linux", "amd64"))
    w.add_to_index(index(w, [amd, arm]), "latest")
    w.save()
    assert resolve(tmp_path, platform=ARM64).manifest_digest == arm["digest"]


def test_r5_without_requested_variant_prefer_entry_without_variant(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    v3 = image(w, platform=("linux", "amd64", "v3"), tag="v3")
    plain = image(w, platform=("linux", "amd64"), tag="plain")
    w.add_to_index(index(w, [v3, plain]), "latest")
    w.save()
    assert resolve(tmp_path, platform=AMD64).manifest_digest == plain["digest"]
    v3_platform = Platform("linux", "amd64", "v3")
    assert resolve(tmp_path, platform=v3_platform).manifest_digest == v3["digest"]


def test_r5_without_requested_variant_prefer_v8_for_arm64(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    v9 = image(w, platform=("linux", "arm64", "v9"), tag="v9")
    v8 = image(w, platform=("linux", "arm64", "v8"), tag="v8")
    w.add_to_index(index(w, [v9, v8]), "latest")
    w.save()
    assert resolve(tmp_path, platform=Platform("linux", "arm64")).manifest_digest == v8["digest"]


def test_r5_any_variant_matches_when_none_requested(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    v9 = image(w, platform=("linux", "arm64", "v9"))
    w.add_to_index(index(w, [v9]), "latest")
    w.save()
    result = resolve(tmp_path, platform=Platform("linux", "arm64"))
    assert result.manifest_digest == v9["digest"]
    assert result.platform == "linux/arm64/v9"


def test_r5_nested_index(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    amd = image(w, platform=("linux", "amd64"), tag="amd")
    arm = image(w, platform=("linux", "arm64", "v8"), tag="arm")
    inner = index(w, [amd, arm])
    inner["platform"] = {"os": "linux", "architecture": "arm64"}
    outer = index(w, [inner])
    w.add_to_index(outer, "latest")
    w.save()
    assert resolve(tmp_path, platform=ARM64).manifest_digest == arm["digest"]


def nested(root: Path, depth: int) -> dict[str, Any]:
    w = LayoutWriter(root)
    manifest = image(w)
    descriptor = manifest
    for _ in range(depth):
        descriptor = index(w, [descriptor])
    w.add_to_index(descriptor, "latest")
    w.save()
    return manifest


def test_r5_index_depth_cap_allows_eight(tmp_path: Path) -> None:
    manifest = nested(tmp_path, L.MAX_INDEX_DEPTH)
    assert resolve(tmp_path, platform=AMD64).manifest_digest == manifest["digest"]


def test_r5_index_depth_cap_refuses_nine(tmp_path: Path) -> None:
    nested(tmp_path, L.MAX_INDEX_DEPTH + 1)
    message = error(tmp_path)
    assert message.endswith(": indexes nested more than 8 deep")


def test_r5_attestation_by_annotation_only_is_skipped(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    amd = image(w, tag="real")
    fake = image(w, tag="att")
    fake["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    w.add_to_index(index(w, [fake, amd]), "latest")
    w.save()
    assert resolve(tmp_path, platform=AMD64).manifest_digest == amd["digest"]


def test_r5_only_attestations(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    inner = index(w, [attestation(w, "sha256:" + "1" * 64)])
    w.add_to_index(inner, "latest")
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: index {inner['digest']}: no image manifests, only attestations"
    )


def test_r5_entry_without_platform_accepted_when_only_candidate(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    manifest = image(w, platform=("linux", "s390x"))
    del manifest["platform"]
    att = attestation(w, manifest["digest"])
    w.add_to_index(index(w, [manifest, att]), "latest")
    w.save()
    result = resolve(tmp_path, platform=AMD64)
    assert result.manifest_digest == manifest["digest"]
    assert result.platform == "linux/s390x"  # from the config


def test_r5_entry_without_platform_among_others_is_not_chosen(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    bare = image(w, tag="bare")
    del bare["platform"]
    arm = image(w, platform=("linux", "arm64", "v8"), tag="arm")
    inner = index(w, [bare, arm])
    w.add_to_index(inner, "latest")
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: index {inner['digest']}: no manifest for platform linux/amd64; "
        "platforms present: (no platform), linux/arm64/v8"
    )


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("ppc64le", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_r5_host_platform(
    monkeypatch: pytest.MonkeyPatch, machine: str, expected: Platform
) -> None:
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, real.release, real.version, machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert Platform.host() == expected


def test_r5_host_platform_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, arm, _ = docker_list(tmp_path)
    monkeypatch.setattr(Platform, "host", classmethod(lambda cls: ARM64))
    assert resolve(tmp_path).manifest_digest == arm["digest"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ],
)
def test_r5_platform_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["linux", "", "linux/", "/amd64", "linux/arm/v7/x", "linux//v7"])
def test_r5_platform_parse_rejects(text: str) -> None:
    with pytest.raises(LayoutError) as info:
        Platform.parse(text)
    assert str(info.value) == f"invalid platform {text!r}: expected os/arch[/variant]"


# --- R6: config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_type", ["application/vnd.oci.empty.v1+json", "application/vnd.cncf.helm.config.v1+json"]
)
def test_r6_config_media_type_not_a_container_image(tmp_path: Path, config_type: str) -> None:
    _, descriptor = simple(tmp_path, config_type=config_type)
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']}: not a container image "
        f"(config mediaType {config_type!r})"
    )


def test_r6_docker_config_media_type_accepted(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, config_type=DOCKER_CONFIG)
    assert resolve(tmp_path, platform=AMD64).manifest_digest == descriptor["digest"]


def set_rootfs_type(config: dict[str, Any]) -> None:
    config["rootfs"]["type"] = "squashfs"


def drop_diff_id(config: dict[str, Any]) -> None:
    config["rootfs"]["diff_ids"].pop()


def drop_rootfs(config: dict[str, Any]) -> None:
    del config["rootfs"]


def diff_ids_not_list(config: dict[str, Any]) -> None:
    config["rootfs"]["diff_ids"] = "sha256:x"


def bad_diff_id(config: dict[str, Any]) -> None:
    config["rootfs"]["diff_ids"][1] = "sha256:" + "A" * 64


@pytest.mark.parametrize(
    "edit, expected",
    [
        (set_rootfs_type, "rootfs.type must be 'layers', got 'squashfs'"),
        (drop_rootfs, "rootfs must be an object"),
        (diff_ids_not_list, "rootfs.diff_ids must be a list"),
        (bad_diff_id, f"rootfs.diff_ids[1]: invalid digest 'sha256:{'A' * 64}'"),
    ],
)
def test_r6_r8_bad_rootfs(tmp_path: Path, edit: Edit, expected: str) -> None:
    simple(tmp_path, nlayers=2, config_edit=edit)
    result = error(tmp_path)
    assert result.startswith(f"{tmp_path}: config sha256:")
    assert expected in result


def test_r6_diff_ids_count_must_match_layers(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path, nlayers=2, config_edit=drop_diff_id)
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']}: 2 layers but the config lists "
        "1 rootfs.diff_ids"
    )


def test_r6_image_without_layers(tmp_path: Path) -> None:
    simple(tmp_path, nlayers=0)
    assert resolve(tmp_path, platform=AMD64).layers == ()


# --- R7: layer media types ------------------------------------------------------------------


SUPPORTED_LAYER_TYPES = sorted((t, c) for t, c in LAYER_TYPES.items() if c.supported)
ZSTD_LAYER_TYPES = sorted((t, c) for t, c in LAYER_TYPES.items() if c is Compression.ZSTD)


@pytest.mark.parametrize("media_type, compression", SUPPORTED_LAYER_TYPES)
def test_r7_layer_media_types(tmp_path: Path, media_type: str, compression: str) -> None:
    simple(tmp_path, layer_type=media_type)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    assert (layer.media_type, layer.compression) == (media_type, compression)


def test_r7_every_known_layer_type_is_supported() -> None:
    """R7: tar, tar+gzip and tar+zstd, nondistributable too (zstd among them since it is
    read)."""
    assert all(compression.supported for compression in LAYER_TYPES.values())
    assert len(ZSTD_LAYER_TYPES) == 2


@pytest.mark.parametrize("media_type, compression", ZSTD_LAYER_TYPES)
def test_r7_known_but_unsupported_layer_types_are_refused_when_resolving(
    tmp_path: Path, media_type: str, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R7: support is decided once, by the resolver: one line naming the layer and why. Every
    known compression is supported now, so zstd is taken out of the table for the test."""
    monkeypatch.setattr(mediatypes, "SUPPORTED", frozenset({Compression.NONE, Compression.GZIP}))
    simple(tmp_path, layer_type=media_type)
    with pytest.raises(LayoutError) as caught:
        resolve(tmp_path, platform=AMD64)
    message = str(caught.value)
    assert "layer 0 (sha256:" in message
    assert f"{compression} layers ({media_type}) are not supported" in message


@pytest.mark.parametrize(
    "media_type, expected",
    [
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "encrypted layers are unsupported "
            "(mediaType 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted')",
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "unsupported layer mediaType 'application/vnd.oci.image.layer.v1.tar+bzip2'",
        ),
        ("application/octet-stream", "unsupported layer mediaType 'application/octet-stream'"),
    ],
)
def test_r7_unsupported_layer_media_type(tmp_path: Path, media_type: str, expected: str) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = image(
        w, nlayers=2, manifest_edit=lambda m: m["layers"][1].update(mediaType=media_type)
    )
    w.add_to_index(descriptor)
    w.save()
    manifest = json.loads(blob(tmp_path, descriptor["digest"]).read_bytes())
    digest = manifest["layers"][1]["digest"]
    assert error(tmp_path) == f"{tmp_path}: layer 1 ({digest}): {expected}"


# --- R8: digest grammar ---------------------------------------------------------------------

BAD_DIGESTS = [
    "md5:" + "0" * 32,
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha512:" + "0" * 64,
    "sha256:../../../../etc/passwd",
    "sha256:" + "0" * 62 + "/x",
    "../sha256:" + "0" * 64,
    "sha256",
    "",
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_r8_bad_digest_in_index_json(tmp_path: Path, digest: str) -> None:
    simple(tmp_path)
    document = load_index(tmp_path)
    document["manifests"][0]["digest"] = digest
    write_index(tmp_path, document)
    assert error(tmp_path) == (
        f"{tmp_path}/index.json manifests[0]: invalid digest {digest!r} "
        "(expected sha256:<64 hex> or sha512:<128 hex>)"
    )


@pytest.mark.parametrize("digest", BAD_DIGESTS[:4])
def test_r8_bad_digest_of_layer_and_config(tmp_path: Path, digest: str) -> None:
    for key in ("layers", "config"):
        root = tmp_path / key

        def edit(m: dict[str, Any], key: str = key) -> None:
            target = m["layers"][0] if key == "layers" else m["config"]
            target["digest"] = digest

        _, descriptor = simple(root, manifest_edit=edit)
        where = "layers[0]" if key == "layers" else "config"
        assert error(root) == (
            f"{root}: manifest {descriptor['digest']} {where}: invalid digest {digest!r} "
            "(expected sha256:<64 hex> or sha512:<128 hex>)"
        )


@pytest.mark.parametrize(
    "digest", ["sha256:../../outside", "md5:" + "0" * 32, "sha256:" + "F" * 64]
)
def test_r8_bad_digest_argument(tmp_path: Path, digest: str) -> None:
    simple(tmp_path)
    assert error(tmp_path, digest=digest) == (
        f"{tmp_path}@{digest}: invalid digest {digest!r} "
        "(expected sha256:<64 hex> or sha512:<128 hex>)"
    )


def test_r8_sha512_digests_are_accepted(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    data = json.dumps(config).encode()
    config_digest = "sha512:" + hashlib.sha512(data).hexdigest()
    (tmp_path / "blobs" / "sha512").mkdir()
    blob(tmp_path, config_digest).write_bytes(data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(data)},
        "layers": [],
    }
    w.add_to_index(w.add_json(manifest, OCI_MANIFEST))
    w.save()
    assert resolve(tmp_path, platform=AMD64).config_digest == config_digest


def test_r8_digest_argument_sha512_selects_manifest(tmp_path: Path) -> None:
    simple(tmp_path)
    manifest_path = next(p for p in (tmp_path / "blobs" / "sha256").iterdir())
    data = manifest_path.read_bytes()
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert error(tmp_path, digest=digest) == (
        f"{tmp_path}: no manifest or index with digest {digest} in the layout"
    )


# --- R9: manifests, indexes and configs are size- and digest-checked ----------------------------


def test_r9_manifest_size_mismatch(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    document = load_index(tmp_path)
    document["manifests"][0]["size"] += 1
    write_index(tmp_path, document)
    size = descriptor["size"]
    assert error(tmp_path) == (
        f"{tmp_path}: manifest: blob {descriptor['digest']} is {size} bytes, "
        f"but its descriptor says {size + 1}"
    )


def test_r9_b2_manifest_digest_mismatch(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    path = blob(tmp_path, descriptor["digest"])
    data = path.read_bytes().replace(b'"layers"', b'"Layers"')
    path.write_bytes(data)
    actual = sha256_digest(data)
    assert error(tmp_path) == (
        f"{tmp_path}: manifest: blob {descriptor['digest']} has digest {actual} (content changed?)"
    )


def test_r9_b2_index_digest_mismatch(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    inner = index(w, [image(w)])
    w.add_to_index(inner, "latest")
    w.save()
    path = blob(tmp_path, inner["digest"])
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))
    assert f"blob {inner['digest']} has digest sha256:" in error(tmp_path)


def test_r9_b2_config_digest_mismatch(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    manifest = json.loads(blob(tmp_path, descriptor["digest"]).read_bytes())
    path = blob(tmp_path, manifest["config"]["digest"])
    data = path.read_bytes().replace(b"linux", b"LINUX")
    path.write_bytes(data)
    assert error(tmp_path) == (
        f"{tmp_path}: config: blob {manifest['config']['digest']} has digest "
        f"{sha256_digest(data)} (content changed?)"
    )


def test_r9_layer_content_is_not_hashed_here(tmp_path: Path) -> None:
    """Layers: only existence and size are checked; the digest is verified while indexing."""
    simple(tmp_path)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    layer.blob.path.write_bytes(b"\0" * layer.size)
    assert resolve(tmp_path, platform=AMD64).layers[0].digest == layer.digest


# --- R10, B2: missing blobs, size mismatch ----------------------------------------------------


def test_r10_missing_layer_blob_names_digest_and_urls(tmp_path: Path) -> None:
    urls = ["https://example.com/layer.tar.gz", "https://mirror.example/layer.tar.gz"]
    foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    def edit(manifest: dict[str, Any]) -> None:
        manifest["layers"][0].update(mediaType=foreign, urls=urls)

    simple(tmp_path, manifest_edit=edit)
    manifest_digest = load_index(tmp_path)["manifests"][0]["digest"]
    manifest = json.loads(blob(tmp_path, manifest_digest).read_bytes())
    digest = manifest["layers"][0]["digest"]
    blob(tmp_path, digest).unlink()
    assert error(tmp_path) == (
        f"{tmp_path}: layer 0 ({digest}): blob {digest} is missing from {tmp_path}/blobs "
        f"(urls: {urls[0]}, {urls[1]})"
    )


def test_r10_missing_layer_blob_without_urls(tmp_path: Path) -> None:
    simple(tmp_path)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    layer.blob.path.unlink()
    assert error(tmp_path) == (
        f"{tmp_path}: layer 0 ({layer.digest}): blob {layer.digest} is missing from "
        f"{tmp_path}/blobs"
    )


def test_r10_missing_manifest_blob(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    blob(tmp_path, descriptor["digest"]).unlink()
    assert error(tmp_path) == (
        f"{tmp_path}: manifest: blob {descriptor['digest']} is missing from {tmp_path}/blobs"
    )


def test_r10_missing_config_blob(tmp_path: Path) -> None:
    simple(tmp_path)
    config_digest = resolve(tmp_path, platform=AMD64).config_digest
    blob(tmp_path, config_digest).unlink()
    assert error(tmp_path) == (
        f"{tmp_path}: config: blob {config_digest} is missing from {tmp_path}/blobs"
    )


@pytest.mark.parametrize("delta", [-1, 1])
def test_b2_layer_size_mismatch(tmp_path: Path, delta: int) -> None:
    simple(tmp_path)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    data = layer.blob.path.read_bytes()
    layer.blob.path.write_bytes(data[:-1] if delta < 0 else data + b"\0")
    assert error(tmp_path) == (
        f"{tmp_path}: layer 0 ({layer.digest}): blob {layer.digest} is "
        f"{layer.size + delta} bytes, but its descriptor says {layer.size}"
    )


def test_b2_layer_blob_is_a_directory(tmp_path: Path) -> None:
    simple(tmp_path)
    layer = resolve(tmp_path, platform=AMD64).layers[0]
    layer.blob.path.unlink()
    layer.blob.path.mkdir()
    assert error(tmp_path) == (
        f"{tmp_path}: layer 0 ({layer.digest}): blob {layer.digest} is not a regular file"
    )


# --- B1: malformed documents ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{", "index.json is not valid JSON: Expecting property name enclosed in double quotes"),
        (b"", "index.json is not valid JSON: Expecting value"),
        (b"[]", "index.json must be a JSON object, got list"),
        (b'{"schemaVersion": 2, "manifests": [}', "index.json is not valid JSON"),
        (b"\xff\xfe{}", "index.json is not UTF-8 JSON: invalid start byte at byte 0"),
        (b"[" * 100_000 + b"]" * 100_000, "index.json"),
        (
            b'{"schemaVersion": 2, "manifests": {}}',
            "index.json: manifests must be a list, got dict",
        ),
        (b'{"schemaVersion": 2}', "index.json: manifests must be a list, got NoneType"),
        (b'{"schemaVersion": 3, "manifests": []}', "index.json: schemaVersion must be 2, got 3"),
        (
            b'{"schemaVersion": "2", "manifests": []}',
            "index.json: schemaVersion must be 2, got '2'",
        ),
        (
            b'{"schemaVersion": true, "manifests": []}',
            "index.json: schemaVersion must be 2, got True",
        ),
        (b'{"manifests": []}', "index.json: schemaVersion must be 2, got None"),
        (
            b'{"schemaVersion": 2, "mediaType": {}, "manifests": []}',
            "index.json: mediaType {} is not an image index",
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "application/json", "manifests": []}',
            "index.json: mediaType 'application/json' is not an image index",
        ),
    ],
)
def test_b1_malformed_index_json(tmp_path: Path, content: bytes, expected: str) -> None:
    simple(tmp_path)
    (tmp_path / "index.json").write_bytes(content)
    message = error(tmp_path)
    assert message.startswith(f"{tmp_path}/{expected}")


GOOD = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": 10}


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("x", "descriptor must be an object, got str"),
        ({**GOOD, "size": "10"}, f"size of {GOOD['digest']} must be an integer, got str"),
        ({**GOOD, "size": 1.5}, f"size of {GOOD['digest']} must be an integer, got float"),
        ({**GOOD, "size": True}, f"size of {GOOD['digest']} must be an integer, got bool"),
        ({**GOOD, "size": -1}, f"size of {GOOD['digest']} is negative (-1)"),
        ({k: v for k, v in GOOD.items() if k != "size"}, "must be an integer, got NoneType"),
        ({**GOOD, "digest": 5}, "digest must be a string, got int"),
        ({k: v for k, v in GOOD.items() if k != "digest"}, "descriptor has no digest"),
        ({**GOOD, "mediaType": 1}, "mediaType must be a string, got int"),
        ({**GOOD, "platform": "linux/amd64"}, "platform of sha256:"),
        ({**GOOD, "platform": {"os": "linux"}}, "needs os and architecture"),
        ({**GOOD, "platform": {"os": "linux", "architecture": 1}}, "platform.architecture"),
        ({**GOOD, "annotations": ["x"]}, "annotations of sha256:"),
        ({**GOOD, "annotations": {REF_NAME: 1}}, "annotations of sha256:"),
        ({**GOOD, "urls": "https://x"}, "urls of sha256:"),
    ],
)
def test_b1_wrong_types_in_descriptor(tmp_path: Path, entry: object, expected: str) -> None:
    simple(tmp_path)
    write_index(tmp_path, {"schemaVersion": 2, "manifests": [entry]})
    message = error(tmp_path)
    assert message.startswith(f"{tmp_path}/index.json manifests[0]: ")
    assert expected in message


def layers_not_list(m: dict[str, Any]) -> None:
    m["layers"] = {"0": m["layers"][0]}


def no_config(m: dict[str, Any]) -> None:
    del m["config"]


def config_not_object(m: dict[str, Any]) -> None:
    m["config"] = "sha256:" + "0" * 64


def layer_size_string(m: dict[str, Any]) -> None:
    m["layers"][0]["size"] = str(m["layers"][0]["size"])


def schema_version_3(m: dict[str, Any]) -> None:
    m["schemaVersion"] = 3


def media_type_number(m: dict[str, Any]) -> None:
    m["mediaType"] = 2


@pytest.mark.parametrize(
    "edit, expected",
    [
        (layers_not_list, "layers must be a list, got dict"),
        (no_config, "no config descriptor"),
        (config_not_object, "config: descriptor must be an object, got str"),
        (layer_size_string, "layers[0]: size of sha256:"),
        (schema_version_3, "schemaVersion must be 2, got 3"),
        (media_type_number, "mediaType must be a string, got int"),
    ],
)
def test_b1_wrong_types_in_manifest(tmp_path: Path, edit: Edit, expected: str) -> None:
    _, descriptor = simple(tmp_path, manifest_edit=edit, descriptor_type=None)
    message = error(tmp_path)
    assert message.startswith(f"{tmp_path}: manifest {descriptor['digest']}")
    assert expected in message


def test_b1_index_manifests_not_a_list(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    inner = w.add_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}, OCI_INDEX)
    w.add_to_index(inner)
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: index {inner['digest']}: manifests must be a list, got dict"
    )


def test_b1_manifest_not_json(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    descriptor = w.add_blob(b"\x1f\x8b not json", OCI_MANIFEST)
    w.add_to_index(descriptor)
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: manifest {descriptor['digest']} is not UTF-8 JSON: "
        "invalid start byte at byte 1"
    )


def test_b1_config_not_an_object(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    config = w.add_blob(b"[1, 2]", OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}
    w.add_to_index(w.add_json(manifest, OCI_MANIFEST))
    w.save()
    assert error(tmp_path) == (
        f"{tmp_path}: config {config['digest']} must be a JSON object, got list"
    )


def test_b1_index_json_over_4mib_is_refused_before_reading(tmp_path: Path) -> None:
    simple(tmp_path)
    with (tmp_path / "index.json").open("r+b") as f:
        f.truncate(L.MAX_DOCUMENT_SIZE + 1)
    assert error(tmp_path) == (
        f"{tmp_path}/index.json is {L.MAX_DOCUMENT_SIZE + 1} bytes, "
        f"over the {L.MAX_DOCUMENT_SIZE}-byte limit"
    )


def test_b1_manifest_descriptor_over_4mib_is_refused_before_reading(tmp_path: Path) -> None:
    _, descriptor = simple(tmp_path)
    document = load_index(tmp_path)
    document["manifests"][0]["size"] = L.MAX_DOCUMENT_SIZE + 1
    write_index(tmp_path, document)
    blob(tmp_path, descriptor["digest"]).unlink()  # never even looked at
    assert error(tmp_path) == (
        f"{tmp_path}: manifest: {descriptor['digest']} is {L.MAX_DOCUMENT_SIZE + 1} bytes, "
        f"over the {L.MAX_DOCUMENT_SIZE}-byte limit for JSON documents"
    )


def test_b1_config_over_4mib_is_refused(tmp_path: Path) -> None:
    def edit(m: dict[str, Any]) -> None:
        m["config"]["size"] = L.MAX_DOCUMENT_SIZE + 1

    simple(tmp_path, manifest_edit=edit)
    assert "over the 4194304-byte limit for JSON documents" in error(tmp_path)


def test_b1_document_exactly_4mib_is_accepted(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["padding"] = ""
        size = len(json.dumps(config, indent=1).encode())
        config["padding"] = "x" * (L.MAX_DOCUMENT_SIZE - size)

    simple(tmp_path, config_edit=edit)
    result = resolve(tmp_path, platform=AMD64)
    assert len(result.config["padding"]) > 4_000_000


# --- B1: no other exception type escapes -------------------------------------------------------

FUZZ_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", "sha256:" + "0" * 64, [], {}, [1], 2**70]


def fuzz_edit(rng: random.Random) -> Callable[[dict[str, Any]], None]:
    """Replace or delete one random node of a document (before it is hashed)."""

    def edit(document: dict[str, Any]) -> None:
        paths: list[list[Any]] = []

        def walk(node: Any, path: list[Any]) -> None:
            paths.append(path)
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(value, [*path, key])
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    walk(value, [*path, i])

        walk(document, [])
        path = rng.choice(paths[1:])
        parent: Any = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.25:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(FUZZ_VALUES))

    return edit


@pytest.mark.parametrize("seed", range(200))
def test_b1_random_damage_raises_only_layout_error(tmp_path: Path, seed: int) -> None:
    """Damaged config, manifest, index or index.json: a result or a one-line LayoutError."""
    rng = random.Random(seed)
    target = rng.choice(["config", "manifest", "index", "index.json"])
    edit = fuzz_edit(rng)
    w = LayoutWriter(tmp_path)
    amd = image(
        w,
        nlayers=2,
        config_edit=edit if target == "config" else None,
        manifest_edit=edit if target == "manifest" else None,
    )
    arm = docker_image(w, ("linux", "arm64", "v8"))
    entries = [amd, arm, attestation(w, amd["digest"])]
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    if target == "index":
        edit(document)
    w.add_to_index(w.add_json(document, OCI_INDEX), "latest")
    w.save()
    if target == "index.json":
        top = load_index(tmp_path)
        edit(top)
        write_index(tmp_path, top)
    try:
        resolve(tmp_path, rng.choice([None, "latest"]), platform=AMD64)
    except LayoutError as e:
        assert str(e) and "\n" not in str(e)


def test_b1_control_characters_in_documents_stay_on_one_line(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    odd = image(w, platform=("linux", "arm64\nx"))
    inner = index(w, [odd, image(w, platform=("linux", "s390x"), tag="s")])
    w.add_to_index(inner, "a\nb")
    w.save()
    assert error(tmp_path, ref="c") == (
        f"{tmp_path}/index.json: no image with ref 'c'; available refs: 'a\\nb'"
    )
    assert error(tmp_path, ref="a\nb") == (
        f"{tmp_path}: index {inner['digest']}: no manifest for platform linux/amd64; "
        "platforms present: 'linux/arm64\\nx', linux/s390x"
    )


# --- B2, R10: symlinks of the layout directory ----------------------------------------------


def layout_names(root: Path, descriptor: dict[str, Any]) -> dict[str, str]:
    """The names of the layout's files and directories the escape tests link out."""
    manifest = json.loads(blob(root, descriptor["digest"]).read_bytes())
    hexes = {
        "layer": manifest["layers"][0]["digest"],
        "config": manifest["config"]["digest"],
        "manifest": descriptor["digest"],
    }
    names = {what: f"blobs/sha256/{digest.split(':')[1]}" for what, digest in hexes.items()}
    names.update({name: name for name in ("index.json", "oci-layout", "blobs", "blobs/sha256")})
    return names


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute", "relative"])
@pytest.mark.parametrize(
    "what", ["layer", "config", "manifest", "index.json", "oci-layout", "blobs", "blobs/sha256"]
)
def test_b2_a_symlink_leading_out_of_the_layout_is_refused(
    tmp_path: Path, what: str, absolute: bool
) -> None:
    """B2 R10: a blob, a document or a blob directory that is a symlink out of the layout is
    refused, in one line naming it and the link, before anything outside is opened. The file
    or directory moved out holds the very bytes the layout had, so its digests still match:
    the symlink alone is refused (it used to be opened and hashed, touching a host path)."""
    root = tmp_path / "layout"
    _, descriptor = simple(root)
    name = layout_names(root, descriptor)[what]
    outside = tmp_path / "host" / name.replace("/", "-")
    outside.parent.mkdir()
    (root / name).rename(outside)
    target = str(outside) if absolute else os.path.relpath(outside, (root / name).parent)
    (root / name).symlink_to(target)
    message = error(root, ref="latest")
    assert f"is refused: {show(name)} is a symlink to {show(target)}, out of {root}" in message
    if what in ("layer", "config", "manifest"):
        assert name.rsplit("/", 1)[1] in message  # the blob's digest
    elif what.startswith("blobs"):
        assert descriptor["digest"] in message  # the first blob read through it


def test_b2_links_that_lead_out_by_way_of_the_top_are_refused(tmp_path: Path) -> None:
    """B2: '..' is taken from where a link led: a link to the layout's own top (by its
    absolute path) then '..' leads out, as do an absolute path with '..' in it and a relative
    one climbing above the top through the blob directories."""
    root = tmp_path / "layout"
    _, descriptor = simple(root)
    layer = layout_names(root, descriptor)["layer"]
    outside = tmp_path / "host" / "layer"
    outside.parent.mkdir()
    (root / layer).rename(outside)
    (root / "blobs/sha256/top").symlink_to(os.path.realpath(root))
    for target in (
        "top/../host/layer",
        f"{os.path.realpath(root)}/../host/layer",
        "../sha256/../../../host/layer",
    ):
        (root / layer).unlink(missing_ok=True)
        (root / layer).symlink_to(target)
        assert "out of" in error(root, ref="latest"), target


def test_b2_symlinks_that_stay_inside_the_layout_are_followed(tmp_path: Path) -> None:
    """B2: links inside the layout are harmless (``docker save`` writes them), so they are
    followed, whatever the way: a blob to a file beside it, a blob directory to another
    directory of the layout, index.json through '..', a blob by an absolute path inside, and
    oci-layout by the path the user names the layout by (itself a symlink)."""
    root = tmp_path / "layout"
    _, descriptor = simple(root)
    names = layout_names(root, descriptor)
    expected = resolve(root, "latest", platform=AMD64)
    (root / names["layer"]).rename(root / "blobs/sha256/moved")
    (root / names["layer"]).symlink_to("moved")
    config = os.path.realpath(root / names["config"])
    os.rename(config, root / "config")
    (root / names["config"]).symlink_to(os.path.join(os.path.realpath(root), "config"))
    (root / "meta").mkdir()
    (root / "index.json").rename(root / "meta/index.json")
    (root / "index.json").symlink_to("meta/../meta/index.json")
    (root / "blobs/sha256").rename(root / "store")
    (root / "blobs/sha256").symlink_to("../store")
    (tmp_path / "named").symlink_to(root)  # the layout as the user names it, by a link
    (root / "oci-layout").rename(root / "meta/oci-layout")
    (root / "oci-layout").symlink_to(tmp_path / "named/meta/oci-layout")
    found = resolve(tmp_path / "named", "latest", platform=AMD64)
    assert found.config == expected.config
    assert [layer.digest for layer in found.layers] == [layer.digest for layer in expected.layers]
    handle = found.layers[0].blob.open()
    try:
        data = handle.pread(found.layers[0].size, 0)
    finally:
        handle.close()
    assert sha256_digest(data) == found.layers[0].digest


def test_b2_a_symlink_loop_in_the_layout_is_one_line(tmp_path: Path) -> None:
    """B2: a blob that links to itself (ELOOP) is one line naming it."""
    root = tmp_path / "layout"
    _, descriptor = simple(root)
    layer = layout_names(root, descriptor)["layer"]
    (root / layer).unlink()
    (root / layer).symlink_to(layer.rsplit("/", 1)[1])
    message = error(root, ref="latest")
    assert layer.rsplit("/", 1)[1] in message and "symbolic links" in message


def test_r2_b2_a_digest_named_blob_leading_out_is_refused(tmp_path: Path) -> None:
    """R2 B2: LAYOUT@DIGEST of a manifest blob index.json does not list, that is a symlink
    out of the layout, is the same one line as for any other blob, not "no manifest with
    digest"."""
    root = tmp_path / "layout"
    _, descriptor = simple(root)
    write_index(root, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    name = layout_names(root, descriptor)["manifest"]
    outside = tmp_path / "manifest"
    (root / name).rename(outside)
    (root / name).symlink_to(outside)
    message = error(root, digest=descriptor["digest"])
    assert message == (
        f"{root}@{descriptor['digest']} is refused: {show(name)} is a symlink to"
        f" {show(str(outside))}, out of {root}"
    )
