"""Write OCI image layouts from tar layers held in memory or on disk.

Used by the example-image script, the tests and the benchmark to build the images they mount.
It writes what a registry client would: content-addressed blobs, a config with diff_ids, a
manifest, and index.json entries named by ``org.opencontainers.image.ref.name``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .layout import Platform
from .mediatypes import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME,
)

Descriptor = dict[str, Any]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """gzip with a fixed header (mtime 0), so the same tar always gives the same blob."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def gzip_file(src: Path, dst: Path, level: int = 6) -> None:
    """Stream-compress a large tar file without holding it in memory."""
    with (
        src.open("rb") as fin,
        dst.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as fout,
    ):
        while chunk := fin.read(1 << 20):
            fout.write(chunk)


def zstd_bytes(data: bytes, *options: str) -> bytes:
    """What the ``zstd`` tool writes for ``data`` (level 3 unless ``options`` say otherwise):
    one frame, with a content checksum."""
    return subprocess.run(
        ["zstd", "-q", "-c", *options], input=data, capture_output=True, check=True
    ).stdout


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class LayoutWriter:
    """Builds one OCI image layout directory; call ``save()`` to write index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests: list[Descriptor] = []
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def blob_path(self, digest: str) -> Path:
        algorithm, hexdigest = digest.split(":", 1)
        return self.root / "blobs" / algorithm / hexdigest

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        self.blob_path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_json(self, document: dict[str, Any], media_type: str) -> Descriptor:
        return self.add_blob(json.dumps(document, indent=1).encode(), media_type)

    def add_layer(self, tar: bytes, compression: str = "gzip") -> tuple[Descriptor, str]:
        """Store one layer; returns its descriptor and its diff_id."""
        diff_id = sha256_digest(tar)
        if compression == "gzip":
            return self.add_blob(gzip_bytes(tar), OCI_LAYER_GZIP), diff_id
        if compression == "none":
            return self.add_blob(tar, OCI_LAYER_TAR), diff_id
        if compression == "zstd":
            return self.add_blob(zstd_bytes(tar), OCI_LAYER_ZSTD), diff_id
        raise ValueError(f"unknown compression {compression!r}")

    def add_layer_file(self, tar_path: Path, compression: str = "gzip") -> tuple[Descriptor, str]:
        """Store a layer from a tar file on disk (for images too big to hold in memory)."""
        diff_id = file_sha256(tar_path)
        if compression == "none":
            shutil.copyfile(tar_path, self.blob_path(diff_id))
            return {
                "mediaType": OCI_LAYER_TAR,
                "digest": diff_id,
                "size": tar_path.stat().st_size,
            }, diff_id
        staging = self.root / "blobs" / "staging.tar.gz"
        gzip_file(tar_path, staging)
        digest = file_sha256(staging)
        size = staging.stat().st_size
        os.replace(staging, self.blob_path(digest))
        return {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}, diff_id

    def add_image(
        self,
        layers: list[tuple[Descriptor, str]],
        ref: str | None = None,
        platform: tuple[str, str] | tuple[str, str, str] = ("linux", "amd64"),
        config_extra: dict[str, Any] | None = None,
        in_index: bool = True,
    ) -> Descriptor:
        """Write config and manifest for ``layers`` (lowest first); list it in index.json."""
        config = image_config(layers, platform)
        config.update(config_extra or {})
        manifest = image_manifest(self.add_json(config, OCI_CONFIG), layers)
        descriptor = self.add_json(manifest, OCI_MANIFEST)
        descriptor["platform"] = platform_dict(platform)
        if in_index:
            self.add_to_index(descriptor, ref)
        return descriptor

    def add_to_index(self, descriptor: Descriptor, ref: str | None = None) -> None:
        entry = dict(descriptor)
        if ref is not None:
            entry["annotations"] = {REF_NAME: ref}
        self.manifests.append(entry)

    def save(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.manifests}
        (self.root / "index.json").write_text(json.dumps(index, indent=1))


def image_config(layers: list[tuple[Descriptor, str]], platform: tuple[str, ...]) -> dict[str, Any]:
    """An image config whose rootfs lists the layers' diff_ids."""
    config: dict[str, Any] = {
        "architecture": platform[1],
        "os": platform[0],
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "config": {},
    }
    if len(platform) == 3:
        config["variant"] = platform[2]
    return config


def image_manifest(config: Descriptor, layers: list[tuple[Descriptor, str]]) -> dict[str, Any]:
    """An OCI image manifest for a stored config and layers."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [descriptor for descriptor, _ in layers],
    }


def platform_dict(platform: tuple[str, ...]) -> dict[str, str]:
    result = {"os": platform[0], "architecture": platform[1]}
    if len(platform) == 3:
        result["variant"] = platform[2]
    return result


def host_platform() -> tuple[str, str]:
    """The host's os and architecture, for images that ocifs should pick by default."""
    host = Platform.host()
    return (host.os, host.architecture)
