"""Write image archives the way ``docker save``, ``podman save`` and ``skopeo`` write them.

The archives the unit tests read are made here, from tar layers held in memory, so that
every form (and every defect) is one call away:

* ``docker_archive``: the classic ``docker save`` form: ``<id>.json`` configs, ``<v1 id>/layer.tar``
  layers (a layer a second image shares is a symlink to the first one's, as Docker writes it),
  ``<v1 id>/VERSION`` and ``json``, ``manifest.json`` and ``repositories``; podman's and
  skopeo's ``<hex>.tar`` layer names with ``layer_names="hex"``;
* ``docker25_archive``: Docker 25+: an OCI layout (uncompressed layers, ``index.json``
  annotated with ``io.containerd.image.name`` and a ref name that is only the tag) plus a
  ``manifest.json`` whose paths are ``blobs/sha256/<hex>``;
* ``tar_tree``: a directory (an OCI layout: an oci-archive) as a tar, plain or gzipped.

Every writer takes the outer tar's format (PAX, GNU, ustar), whether it ends with the
end-of-archive blocks, and whether it is gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocifs.mediatypes import CONTAINERD_IMAGE_NAME, OCI_LAYER_TAR, REF_NAME
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest

MTIME = 1_700_000_000


def hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """One image to write: its layers (uncompressed tars, lowest first) and its tags."""

    layers: list[bytes]
    tags: list[str] = field(default_factory=list)
    gzip_layers: set[int] = field(default_factory=set)  # positions stored gzipped (classic)
    platform: tuple[str, str] = field(default_factory=host_platform)

    def diff_ids(self) -> list[str]:
        return [sha256_digest(layer) for layer in self.layers]

    def config(self) -> bytes:
        os_name, arch = self.platform
        document = {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "config": {},
        }
        return json.dumps(document, indent=1).encode()


@dataclass
class Entry:
    """One member of the outer tar: a file, a directory or a symlink."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""


def write_tar(
    out: Path,
    entries: list[Entry],
    *,
    fmt: int = tarfile.PAX_FORMAT,
    end_blocks: bool = True,
    gzipped: bool = False,
) -> Path:
    """The outer tar, in order; without end blocks it ends right after the last member's
    padding (what a Go writer that is never closed leaves)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = MTIME
            info.mode = 0o644
            if entry.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
        last_end = tar.offset
    data = buffer.getvalue()
    if not end_blocks:
        data = data[:last_end]
    out.write_bytes(gzip.compress(data, 6, mtime=0) if gzipped else data)
    return out


def docker_archive_entries(
    images: list[Image],
    *,
    layer_names: str = "docker",
    edit_manifest: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[Entry]:
    """The members of a classic docker-archive (``layer_names``: "docker" for
    ``<v1 id>/layer.tar``, "hex" for podman's and skopeo's ``<diff_id hex>.tar``)."""
    entries: list[Entry] = []
    written: dict[str, str] = {}  # diff_id -> member holding it
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        config = image.config()
        config_name = f"{hexdigest(config)}.json"
        entries.append(Entry(config_name, config))
        parent = ""
        names = []
        for position, layer in enumerate(image.layers):
            diff_id = sha256_digest(layer)
            stored = gzip.compress(layer, 6, mtime=0) if position in image.gzip_layers else layer
            # Each image's v1 ids are its own, so a layer it shares is a symlink (as Docker
            # writes a layer saved under a second v1 id).
            v1_id = hexdigest(f"{config_name}\n{parent}\n{diff_id}".encode())
            parent = v1_id
            if layer_names == "hex":
                name = f"{diff_id.split(':')[1]}.tar"
                if name not in written.values():
                    entries.append(Entry(name, stored))
                written[diff_id] = name
            else:
                name = f"{v1_id}/layer.tar"
                entries.append(Entry(f"{v1_id}/", kind="dir"))
                if diff_id in written:
                    entries.append(Entry(name, kind="symlink", target=f"../{written[diff_id]}"))
                else:
                    entries.append(Entry(name, stored))
                    written[diff_id] = name
                entries.append(Entry(f"{v1_id}/VERSION", b"1.0"))
                entries.append(Entry(f"{v1_id}/json", json.dumps({"id": v1_id}).encode()))
            names.append(name)
        manifest.append({"Config": config_name, "RepoTags": image.tags or None, "Layers": names})
        for tag in image.tags:
            repository, _, version = tag.rpartition(":")
            repositories.setdefault(repository, {})[version] = parent
    if edit_manifest is not None:
        edit_manifest(manifest)
    entries.append(Entry("manifest.json", json.dumps(manifest).encode()))
    entries.append(Entry("repositories", json.dumps(repositories).encode()))
    return entries


def docker_archive(out: Path, images: list[Image], **kw: Any) -> Path:
    """A classic docker-archive; ``kw`` goes to the entries (layer_names, edit_manifest) and
    to ``write_tar`` (fmt, end_blocks, gzipped)."""
    names = {key: kw.pop(key) for key in ("layer_names", "edit_manifest") if key in kw}
    return write_tar(out, docker_archive_entries(images, **names), **kw)


def docker25_layout(root: Path, images: list[Image], bug: str = "") -> list[dict[str, Any]]:
    """The OCI layout of a Docker 25+ archive at ``root``; returns its manifest.json.

    ``bug`` writes it as Docker versions got it wrong: "no-layers", OCI manifests without
    their layers (25.0.0, moby#47065); "null-index", ``"manifests": null`` in index.json
    (25.0.0-25.0.2 saving an untagged image, moby#47210)."""
    writer = LayoutWriter(root)
    manifest_json: list[dict[str, Any]] = []
    for image in images:
        layers = [writer.add_layer(layer, "none") for layer in image.layers]
        descriptor = writer.add_image(layers, platform=image.platform, in_index=False)
        manifest = json.loads(writer.blob_path(descriptor["digest"]).read_bytes())
        if bug == "no-layers":
            descriptor = writer.add_json(dict(manifest, layers=[]), manifest["mediaType"])
        for tag in image.tags:
            entry = dict(descriptor)
            entry["annotations"] = {
                CONTAINERD_IMAGE_NAME: f"docker.io/library/{tag}" if "/" not in tag else tag,
                REF_NAME: tag.rpartition(":")[2],
            }
            writer.manifests.append(entry)
        manifest_json.append(
            {
                "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":")[1],
                "RepoTags": image.tags,
                "Layers": ["blobs/sha256/" + d["digest"].split(":")[1] for d, _ in layers],
            }
        )
        assert all(d["mediaType"] == OCI_LAYER_TAR for d, _ in layers)
    writer.save()
    if bug == "null-index":
        index = json.loads((root / "index.json").read_text())
        (root / "index.json").write_text(json.dumps(dict(index, manifests=None)))
    (root / "manifest.json").write_text(json.dumps(manifest_json))
    (root / "repositories").write_text("{}")
    return manifest_json


def tree_entries(root: Path) -> list[Entry]:
    """A directory's files, directories and symlinks as outer tar members, sorted."""
    entries = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries.append(Entry(name, kind="symlink", target=str(path.readlink())))
        elif path.is_dir():
            entries.append(Entry(f"{name}/", kind="dir"))
        else:
            entries.append(Entry(name, path.read_bytes()))
    return entries


def tar_tree(root: Path, out: Path, **kw: Any) -> Path:
    """A directory (an OCI layout: an oci-archive) as a tar; ``kw`` goes to ``write_tar``."""
    return write_tar(out, tree_entries(root), **kw)


def docker25_archive(
    out: Path, images: list[Image], staging: Path, bug: str = "", **kw: Any
) -> Path:
    """A Docker 25+ ``docker save`` archive, its layout staged in ``staging``."""
    docker25_layout(staging, images, bug)
    return tar_tree(staging, out, **kw)
