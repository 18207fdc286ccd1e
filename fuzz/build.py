"""Build one case: a seed's images written in the seed's form, with the case's mutations
applied at their stages, and what a mount of it may and must show.

A layer is its tar stream (``tar`` mutations), compressed (``gzip``/``zstd`` mutations), and
described by the digest and size of the final blob and the diff_id of what the blob
decompresses to, as a reference decoder reads it (Python's zlib, the ``zstd`` tool): so the
damage passes the digest checks and reaches ocifs' parsers. Documents are built bottom up
(config, manifest, index, index.json) through ``json`` mutations, each descriptor computed from
the bytes written. With ``recompute`` off every descriptor is the one the clean build had, and
a blob whose bytes changed is named by a digest it no longer has (``stale``): a verifying
mount of that image must refuse it.

The forms (``FORMS``): an OCI layout directory (one image), an index.json naming a nested index
of two platforms, a gzipped oci-archive, a classic docker-archive (``docker save``: ``<id>.json``,
``<v1 id>/layer.tar``, a shared layer as a symlink member), and that archive unpacked in a
directory. The store's files pass through the ``files`` mutations, and an archive's own tar
(and gzip stream) through the ``archive-tar`` and ``archive-gz`` ones, before they are written.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ocifs.mediatypes import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME,
)
from ocifs.ocibuild import host_platform

from . import mutations as mu
from .seeds import Seed, SeedImage, SeedLayer, expected_tree, make_tar

FORMS = ("layout", "index2", "oci-archive-gz", "docker-archive", "docker-dir")
ARCHIVE_FORMS = ("oci-archive-gz", "docker-archive")
DOCKER_FORMS = ("docker-archive", "docker-dir")
MEDIA_TYPES = {
    "none": OCI_LAYER_TAR,
    "gzip": OCI_LAYER_GZIP,
    "zstd": OCI_LAYER_ZSTD,
    "zstd-frames": OCI_LAYER_ZSTD,
}
ARCHIVE_MTIME = 1_700_000_000

T = TypeVar("T")


@dataclass(frozen=True)
class Planned:
    """One mutation of a case: its stage, its name in the stage's table, what it targets
    (a layer as [image, layer], a document as [kind, image]) and its own seed."""

    stage: str
    name: str
    target: tuple[Any, ...]
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "target": list(self.target),
            "seed": self.seed,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Planned:
        return Planned(data["stage"], data["name"], tuple(data["target"]), int(data["seed"]))


@dataclass
class Built:
    """A case on disk, and what a mount of it may show."""

    store: Path  # the layout directory or the archive file
    mount_arg: str  # LAYOUT[:REF] as given to ocifs
    streams: list[bytes]  # every layer's stream as the reference decoder reads it
    trees: list[dict[str, dict[str, Any]]]  # the images' trees, when no stream was changed
    stale: set[int]  # images with a blob named by a digest it no longer has (recompute off)
    notes: list[str] = field(default_factory=list)  # what each mutation did


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return mu.zstd(data)
    if compression == "zstd-frames":
        return mu.zstd_frames(data)
    return data


def reference_decode(blob: bytes, compression: str) -> bytes | None:
    """What the blob decompresses to, strictly (every gzip member's CRC and size, nothing
    after the last one); None if the reference decoder refuses it."""
    if compression == "none":
        return blob
    if compression.startswith("zstd"):
        return mu.unzstd(blob)
    out = bytearray()
    rest = blob
    try:
        while True:
            decoder = zlib.decompressobj(31)
            out += decoder.decompress(rest)
            if not decoder.eof:
                return None
            rest = decoder.unused_data
            if not rest:
                return bytes(out)
    except zlib.error:
        return None


def sniffed(blob: bytes) -> str:
    """The compression a docker-archive layer's first bytes say (as ocifs sniffs it)."""
    if blob.startswith(b"\x1f\x8b"):
        return "gzip"
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


class Builder:
    """Builds the store's files of one case; ``clean`` is the descriptors of the clean build
    (used as they are when ``recompute`` is off)."""

    def __init__(
        self,
        seed: Seed,
        plan: list[Planned],
        recompute: bool,
        clean: dict[tuple[Any, ...], Any] | None,
    ) -> None:
        self.seed = seed
        self.plan = plan
        self.recompute = recompute
        self.clean = clean
        self.descriptors: dict[tuple[Any, ...], Any] = {}
        self.streams: list[bytes] = []
        self.changed_stream = False
        self.stale: set[int] = set()
        self.notes: list[str] = []
        self.docker = seed.form in DOCKER_FORMS

    # --- mutations and descriptors

    def mutate(
        self, stage: str, target: tuple[Any, ...], value: T, table: dict[str, mu.Mutator[T]]
    ) -> T:
        for planned in self.plan:
            if planned.stage == stage and planned.target == target:
                where = f"{stage} {list(target)} {planned.name}"
                if stage == "json" and isinstance(value, bytes):  # a raw mutation came first
                    self.notes.append(f"{where}: not applied to a document written raw")
                    continue
                value, note = table[planned.name].apply(random.Random(planned.seed), value)
                self.notes.append(f"{where}: {note}")
        return value

    def described(
        self, key: tuple[Any, ...], made: Any, changed: Callable[[Any, Any], bool]
    ) -> Any:
        """``made`` (a descriptor...), or the clean build's one when not recomputing; a
        change the old one cannot name makes the case stale."""
        self.descriptors[key] = made
        if self.recompute or self.clean is None or key not in self.clean:
            return made
        old = self.clean[key]
        if changed(old, made):  # keys name their image second; an index stales them all
            self.stale |= {key[1]} if key[0] != "subindex" else set(range(len(self.seed.images)))
        return old

    def document(self, kind: str, image: int, doc: dict[str, Any] | list[Any]) -> bytes:
        mutated = self.mutate("json", (kind, image), copy.deepcopy(doc), mu.JSON)
        if isinstance(mutated, bytes):
            return mutated
        return json.dumps(mutated, indent=1).encode()

    # --- layers

    def layer(self, image: int, number: int, layer: SeedLayer) -> tuple[bytes, dict[str, Any], str]:
        """The blob, its descriptor and its diff_id."""
        tar = make_tar(layer.members, layer.tar_format)
        mutated = self.mutate("tar", (image, number), tar, mu.TAR)
        blob = compress(mutated, layer.compression)
        family = "gzip" if layer.compression == "gzip" else "zstd"
        if layer.compression != "none":
            blob = self.mutate(
                family, (image, number), blob, mu.GZIP if family == "gzip" else mu.ZSTD
            )
        stream = reference_decode(blob, layer.compression)
        if stream is None:
            stream = mutated  # what a decoder that accepted it must have checked the diff_id of
        self.streams.append(stream)
        self.changed_stream |= stream != tar
        descriptor = {
            "mediaType": MEDIA_TYPES[layer.compression],
            "digest": sha256(blob),
            "size": len(blob),
        }
        if self.docker:
            # No digest names the blob: the diff_id checks the stream (and names a plain blob).
            made = (descriptor, sha256(stream))
            descriptor, diff_id = self.described(
                ("layer", image, number), made, lambda a, b: a[1] != b[1]
            )
        else:
            made = (descriptor, sha256(stream))
            descriptor, diff_id = self.described(
                ("layer", image, number), made, lambda a, b: a[0]["digest"] != b[0]["digest"]
            )
        return blob, descriptor, diff_id

    def config(
        self, image: int, spec: SeedImage, diff_ids: list[str]
    ) -> tuple[bytes, dict[str, Any]]:
        os_name, arch = self.platform(spec)
        doc = {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Env": ["PATH=/usr/bin"]},
        }
        data = self.document("config", image, doc)
        made = {"mediaType": OCI_CONFIG, "digest": sha256(data), "size": len(data)}
        return data, self.described(
            ("config", image), made, lambda a, b: a["digest"] != b["digest"]
        )

    def platform(self, spec: SeedImage) -> tuple[str, str]:
        return host_platform() if spec.platform == ("linux", "amd64") else spec.platform

    # --- the stores

    def oci_files(self) -> mu.Files:
        files: mu.Files = {"oci-layout": mu.Node("file", self.oci_layout())}
        manifests = []
        for i, spec in enumerate(self.seed.images):
            layers = [self.layer(i, j, layer) for j, layer in enumerate(spec.layers)]
            # Each blob is stored where its descriptor says: stale ones under their old digest.
            for blob, descriptor, _ in layers:
                files[blob_path(descriptor["digest"])] = mu.Node("file", blob)
            config, config_descriptor = self.config(i, spec, [diff_id for _, _, diff_id in layers])
            files[blob_path(config_descriptor["digest"])] = mu.Node("file", config)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_descriptor,
                "layers": [descriptor for _, descriptor, _ in layers],
            }
            data = self.document("manifest", i, manifest)
            made = {"mediaType": OCI_MANIFEST, "digest": sha256(data), "size": len(data)}
            descriptor = self.described(
                ("manifest", i), made, lambda a, b: a["digest"] != b["digest"]
            )
            files[blob_path(descriptor["digest"])] = mu.Node("file", data)
            os_name, arch = self.platform(spec)
            manifests.append(dict(descriptor, platform={"os": os_name, "architecture": arch}))
        if self.seed.form == "index2":
            sub = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
            data = self.document("subindex", 0, sub)
            made = {"mediaType": OCI_INDEX, "digest": sha256(data), "size": len(data)}
            top = [self.described(("subindex", 0), made, lambda a, b: a["digest"] != b["digest"])]
            files[blob_path(top[0]["digest"])] = mu.Node("file", data)
        else:
            top = manifests[:1]
        listed = [dict(d, annotations={REF_NAME: "latest"}) for d in top]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
        files["index.json"] = mu.Node("file", self.document("index", 0, index))
        return files

    def oci_layout(self) -> bytes:
        return self.document("oci-layout", 0, {"imageLayoutVersion": "1.0.0"})

    def docker_files(self) -> mu.Files:
        files: mu.Files = {}
        manifest = []
        written: dict[str, str] = {}
        for i, spec in enumerate(self.seed.images):
            layers = [self.layer(i, j, layer) for j, layer in enumerate(spec.layers)]
            config, config_descriptor = self.config(i, spec, [diff_id for _, _, diff_id in layers])
            config_name = config_descriptor["digest"].split(":", 1)[1] + ".json"
            files[config_name] = mu.Node("file", config)
            names, parent = [], ""
            for blob, _, diff_id in layers:
                v1 = hashlib.sha256(f"{config_name}\n{parent}\n{diff_id}".encode()).hexdigest()
                parent = v1
                name = f"{v1}/layer.tar"
                files[v1] = mu.Node("dir")
                if diff_id in written:  # a layer two images share: a symlink, as Docker writes
                    files[name] = mu.Node("symlink", target=f"../{written[diff_id]}")
                else:
                    files[name] = mu.Node("file", blob)
                    written[diff_id] = name
                files[f"{v1}/VERSION"] = mu.Node("file", b"1.0")
                names.append(name)
            manifest.append({"Config": config_name, "RepoTags": [spec.ref], "Layers": names})
        files["manifest.json"] = mu.Node("file", self.document("docker-manifest", 0, manifest))
        return files

    def files(self) -> mu.Files:
        files = self.docker_files() if self.docker else self.oci_files()
        return self.mutate("files", (), files, mu.FILES)


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def write_directory(root: Path, files: mu.Files) -> None:
    root.mkdir(parents=True)
    for name, node in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if node.kind == "file":
            path.write_bytes(node.data)
        elif node.kind == "symlink":
            path.symlink_to(node.target)
        elif node.kind == "dir":
            path.mkdir(exist_ok=True)
        elif node.kind == "fifo":
            os.mkfifo(path)


def archive_bytes(files: mu.Files) -> bytes:
    """The files as a PAX tar, parents before children."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for name in [*dirs, *(n for n in files if n not in dirs)]:
            node = files.get(name, mu.Node("dir"))
            info = tarfile.TarInfo(name)
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o755 if node.kind == "dir" else 0o644
            if node.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif node.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, node.target
            elif node.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.size = len(node.data)
                tar.addfile(info, io.BytesIO(node.data))
                continue
            tar.addfile(info)
    return buffer.getvalue()


def build_store(builder: Builder, out: Path) -> tuple[Path, str]:
    """Write the case's store under ``out``; returns it and the mount argument."""
    files = builder.files()
    form = builder.seed.form
    ref = builder.seed.images[0].ref
    if form in ARCHIVE_FORMS:
        data = builder.mutate("archive-tar", (), archive_bytes(files), mu.TAR)
        name = "image.tar"
        if form == "oci-archive-gz":
            data = builder.mutate("archive-gz", (), gzip.compress(data, 6, mtime=0), mu.GZIP)
            name = "image.tar.gz"
        store = out / name
        store.write_bytes(data)
    else:
        store = out / "layout"
        write_directory(store, files)
    return store, f"{store}:{ref}"


_clean_builds: dict[str, dict[tuple[Any, ...], Any]] = {}


def clean_descriptors(seed: Seed) -> dict[tuple[Any, ...], Any]:
    """The descriptors of the seed built without mutations (computed once per seed)."""
    if seed.name not in _clean_builds:
        builder = Builder(seed, [], True, None)
        builder.files()
        _clean_builds[seed.name] = builder.descriptors
    return _clean_builds[seed.name]


def build(seed: Seed, plan: list[Planned], recompute: bool, out: Path) -> Built:
    clean = None if recompute else clean_descriptors(seed)
    builder = Builder(seed, plan, recompute, clean)
    store, arg = build_store(builder, out)
    trees = [] if builder.changed_stream else [expected_tree(image) for image in seed.images]
    documents = {p.target[0] for p in plan if p.stage == "json"}
    if trees and "config" in documents and documents & {"manifest", "docker-manifest"}:
        # Two edits may take a layer out of both lists alike: an image of fewer layers.
        trees += [
            expected_tree(SeedImage([image.layers[i] for i in chosen], image.ref, image.platform))
            for image in seed.images
            for size in range(1, len(image.layers))
            for chosen in itertools.combinations(range(len(image.layers)), size)
        ]
    return Built(store, arg, builder.streams, trees, builder.stale, builder.notes)
