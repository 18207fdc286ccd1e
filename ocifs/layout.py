"""Resolve ``LAYOUT[:REF|@DIGEST]`` in an OCI image layout to a manifest, its config and layers.

The layout (R1) has ``oci-layout`` (``imageLayoutVersion`` "1.0.0"), ``index.json`` and
content-addressed ``blobs/<alg>/<hex>``; it is read through a ``sources.BlobSource``, so the
same resolution serves a directory, an oci-archive and the OCI layout inside a Docker 25+
``docker save`` archive (X1, X2). ``resolve`` picks a top-level descriptor of ``index.json`` by
name (``refs``: the ref name, or containerd's image name), by digest or because it is the
only one (R2, R3),
follows OCI indexes and Docker manifest lists (nested up to ``MAX_INDEX_DEPTH``) to the
manifest for the requested platform (R5), checks the manifest (R4), the config (R6) and the
layer descriptors (R7), and returns a ``ResolvedImage``.

Every JSON document (index.json, indexes, manifests, config) is size-capped before it is read
(``MAX_DOCUMENT_SIZE``) and, when it is a blob, checked against its descriptor's size and digest
(R9). Every digest is checked against its grammar before it is turned into a path (R8), so no
descriptor can make us open anything outside ``LAYOUT/blobs``. Layer blobs are only looked up
here (presence and size, R10); their content digests are verified later, while indexing.

Anything wrong with the input is raised as ``LayoutError`` with one line naming the layout,
the digest, the ref or the layer at fault; no other exception type escapes for bad input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import refs, sources
from .blobs import Blob
from .errors import SHOW_MAX, LayoutError, show
from .mediatypes import (
    CONFIG_TYPES,
    CONTAINERD_IMAGE_NAME,
    DOCKER_SCHEMA1,
    ENCRYPTED_SUFFIX,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    REF_NAME,
    Compression,
)
from .sources import MAX_DOCUMENT_SIZE, BlobSource, open_directory

logger = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 8  # nested indexes below index.json (R5)
MAX_LISTED = 20  # refs / platforms named in one error message

REFERENCE_TYPE = "vnd.docker.reference.type"

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")

# os.uname().machine -> (OCI architecture, variant) (R5).
HOST_ARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}

# The variant an entry without one stands for (as containerd normalizes it).
DEFAULT_VARIANT: dict[str, str] = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class LayerRef:
    """A layer of the resolved image, checked for media type and presence, not yet indexed."""

    position: int  # in manifest.layers, 0 = lowest
    digest: str  # "sha256:<hex>" (or sha512), grammar-checked
    size: int  # descriptor size; the blob's size on disk was checked against it
    media_type: str
    compression: Compression  # a supported one: resolve refuses the others
    diff_id: str  # from config.rootfs.diff_ids[index], grammar-checked
    blob: Blob  # where its bytes are (a layout's blob file, an archive's member, ...)
    # False when nothing names the blob's own digest (a compressed layer of a docker-archive,
    # whose ``digest`` is then its diff_id): indexing checks the diff_id alone.
    digest_known: bool = True
    # The descriptor's annotations (zstd:chunked's TOC position and checksum live there).
    annotations: dict[str, str] = field(default_factory=dict, hash=False)

    def describe(self) -> str:
        """How error messages name the layer: 'layer 2 (sha256:abcd...)'."""
        return f"layer {self.position} ({self.digest})"


@dataclass(frozen=True)
class ResolvedImage:
    layout: Path  # the layout directory or the archive file
    manifest_digest: str | None  # None for a docker-archive image, which has no manifest
    config_digest: str
    config: dict[str, Any]
    platform: str | None  # "os/arch[/variant]" of the chosen manifest when known
    layers: tuple[LayerRef, ...]
    manifest_media_type: str = OCI_MANIFEST  # as given by the manifest or its descriptor

    def describe(self) -> str:
        """How log lines name the image: its manifest, or its config when it has none."""
        if self.manifest_digest is None:
            return f"image {self.config_digest} (a docker-archive's manifest.json)"
        return f"manifest {self.manifest_digest}"


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse 'os/arch[/variant]'; raises LayoutError on anything else."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts) or any(p != p.strip() for p in parts):
            raise LayoutError(f"invalid platform {show(text)}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine in OCI terms (linux/amd64, linux/arm64/v8, ...)."""
        machine = os.uname().machine
        architecture, variant = HOST_ARCH.get(machine, (machine, None))
        return cls("linux", architecture, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- small helpers --------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise LayoutError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def listing(items: Iterable[str]) -> str:
    """'a, b, c' for an error message, capped at MAX_LISTED names, kept on one line; a name
    that is not printable, or too long, is quoted and shortened (``show``)."""
    unique = list(
        dict.fromkeys(i if i.isprintable() and len(i) <= 2 * SHOW_MAX else show(i) for i in items)
    )
    shown = ", ".join(unique[:MAX_LISTED])
    if len(unique) > MAX_LISTED:
        shown += f", ... ({len(unique) - MAX_LISTED} more)"
    return shown


def check_digest(value: object, what: str) -> str:
    """Return ``value`` if it is 'sha256:<64 hex>' or 'sha512:<128 hex>' (R8)."""
    if not isinstance(value, str):
        _fail(f"{what}: digest must be a string, got {type(value).__name__}")
    if not DIGEST_RE.fullmatch(value):
        _fail(
            f"{what}: invalid digest {show(value)} (expected sha256:<64 hex> or sha512:<128 hex>)"
        )
    return value


@dataclass(frozen=True)
class _Descriptor:
    media_type: str | None
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME)

    def names(self) -> list[str]:
        """What a REF may match: the ref name, and the image name containerd (and Docker
        25+'s ``docker save``) writes next to a ref name that is only a tag."""
        keys = (REF_NAME, CONTAINERD_IMAGE_NAME)
        return [self.annotations[k] for k in keys if k in self.annotations]

    def shown_name(self) -> str | None:
        """The name error messages list: the full image name where there is one."""
        return self.annotations.get(CONTAINERD_IMAGE_NAME) or self.ref_name

    def platform_text(self) -> str | None:
        return platform_text_of(self.platform)

    def is_attestation(self) -> bool:
        if self.annotations.get(REFERENCE_TYPE) == "attestation-manifest":
            return True
        p = self.platform
        return p is not None and p.get("os") == "unknown" and p.get("architecture") == "unknown"

    def urls_text(self) -> str:
        return f" (urls: {listing(self.urls)})" if self.urls else ""


def platform_text_of(platform: dict[str, Any] | None) -> str | None:
    """'os/arch[/variant]' of a descriptor's platform or a config, None when not given."""
    if platform is None:
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    variant = platform.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    if isinstance(variant, str) and variant:
        return f"{os_name}/{arch}/{variant}"
    return f"{os_name}/{arch}"


def _parse_descriptor(raw: object, where: str) -> _Descriptor:
    """Check one descriptor's shape and digest grammar (B1, R8)."""
    if not isinstance(raw, dict):
        _fail(f"{where}: descriptor must be an object, got {type(raw).__name__}")
    media_type = raw.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        _fail(f"{where}: mediaType must be a string, got {type(media_type).__name__}")
    if "digest" not in raw:
        _fail(f"{where}: descriptor has no digest")
    digest = check_digest(raw["digest"], where)
    size = raw.get("size")
    if not _is_int(size):
        _fail(f"{where}: size of {digest} must be an integer, got {type(size).__name__}")
    assert isinstance(size, int)
    if size < 0:
        _fail(f"{where}: size of {digest} is negative ({size})")
    platform = raw.get("platform")
    if platform is not None:
        if not isinstance(platform, dict):
            _fail(f"{where}: platform of {digest} must be an object")
        for key in ("os", "architecture", "variant"):
            if key in platform and not isinstance(platform[key], str):
                _fail(f"{where}: platform.{key} of {digest} must be a string")
        if not isinstance(platform.get("os"), str) or not isinstance(
            platform.get("architecture"), str
        ):
            _fail(f"{where}: platform of {digest} needs os and architecture")
    annotations = raw.get("annotations", {})
    if annotations is None:
        annotations = {}
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        _fail(f"{where}: annotations of {digest} must be an object of strings")
    urls = raw.get("urls", [])
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        _fail(f"{where}: urls of {digest} must be a list of strings")
    return _Descriptor(media_type, digest, size, platform, dict(annotations), tuple(urls))


def parse_json(data: bytes, what: str, kind: type = dict) -> Any:
    """A JSON document that must be a ``kind`` (an object unless told); LayoutError if not."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        _fail(f"{what} is not UTF-8 JSON: {e.reason} at byte {e.start}")
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        _fail(f"{what} is not valid JSON: {str(e).splitlines()[0] if str(e) else type(e)}")
    if not isinstance(document, kind):
        expected = "a JSON object" if kind is dict else f"a JSON {kind.__name__}"
        _fail(f"{what} must be {expected}, got {type(document).__name__}")
    return document


def _read_file_json(source: BlobSource, name: str) -> dict[str, Any]:
    """Read a plain (non-blob) JSON file of the layout, capped at MAX_DOCUMENT_SIZE (B1)."""
    what = f"{source.path}/{name}"
    data = sources.read_document(source, name, what)
    if data is None:
        _fail(f"{what} is missing")
    document: dict[str, Any] = parse_json(data, what)
    return document


def _stat_blob(source: BlobSource, desc: _Descriptor, what: str) -> Blob:
    """Check that the blob exists as a regular file of the descriptor's size (B2, R10)."""
    found = sources.blob(source, desc.digest, f"{what}: blob {desc.digest}")
    if found is None:
        _fail(f"{what}: blob {desc.digest} is missing from {source.path}/blobs{desc.urls_text()}")
    if found.size != desc.size:
        _fail(
            f"{what}: blob {desc.digest} is {found.size} bytes, but its descriptor says {desc.size}"
        )
    return found


def check_content(data: bytes, digest: str, what: str) -> None:
    """The bytes of a document must hash to its digest (R9)."""
    algorithm, expected = digest.split(":", 1)
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        _fail(f"{what}: blob {digest} has digest {algorithm}:{actual} (content changed?)")


def _read_blob_json(source: BlobSource, desc: _Descriptor, what: str) -> dict[str, Any]:
    """Read a JSON blob, checking cap, size and digest before parsing (B1, B2, R9)."""
    if desc.size > MAX_DOCUMENT_SIZE:
        _fail(
            f"{what}: {desc.digest} is {desc.size} bytes, "
            f"over the {MAX_DOCUMENT_SIZE}-byte limit for JSON documents"
        )
    found = _stat_blob(source, desc, what)
    data = sources.read_blob(found, MAX_DOCUMENT_SIZE, f"{what}: blob {desc.digest}")
    check_content(data, desc.digest, what)
    document: dict[str, Any] = parse_json(data, f"{what} {desc.digest}")
    return document


def _parse_descriptor_list(raw: object, key: str, where: str) -> list[_Descriptor]:
    if not isinstance(raw, list):
        _fail(f"{where}: {key} must be a list, got {type(raw).__name__}")
    return [_parse_descriptor(item, f"{where} {key}[{i}]") for i, item in enumerate(raw)]


# --- the layout and its index.json (R1, R2, R3) ---------------------------------------------


def _open_layout(source: BlobSource) -> list[_Descriptor]:
    """Check oci-layout and return the descriptors of index.json (R1, B1)."""
    layout = source.path
    if sources.find(source, "oci-layout", f"{layout}/oci-layout") is None:
        _fail(f"{layout} is not an OCI image layout: oci-layout is missing")
    oci_layout = _read_file_json(source, "oci-layout")
    version = oci_layout.get("imageLayoutVersion")
    if version != OCI_LAYOUT_VERSION:
        _fail(
            f"{layout}/oci-layout: unsupported imageLayoutVersion {show(version)} "
            f"(expected {OCI_LAYOUT_VERSION!r})"
        )
    where = f"{layout}/index.json"
    index = _read_file_json(source, "index.json")
    _check_schema_version(index, where)
    media_type = index.get("mediaType")
    if media_type is not None and (
        not isinstance(media_type, str) or media_type not in INDEX_TYPES
    ):
        _fail(f"{where}: mediaType {show(media_type)} is not an image index")
    return _parse_descriptor_list(index.get("manifests"), "manifests", where)


def _check_schema_version(document: dict[str, Any], what: str) -> None:
    version = document.get("schemaVersion")
    if version == 1 and _is_int(version):
        _fail(f"{what}: Docker schema 1 manifests are unsupported (schemaVersion 1)")
    if not _is_int(version) or version != 2:
        _fail(f"{what}: schemaVersion must be 2, got {show(version)}")


def _refs_text(descriptors: Sequence[_Descriptor]) -> str:
    names = [name for d in descriptors if (name := d.shown_name()) is not None]
    return f"available refs: {listing(show(r) for r in names)}" if names else "no refs are named"


def _select_top(
    source: BlobSource, entries: list[_Descriptor], ref: str | None, digest: str | None
) -> _Descriptor | list[_Descriptor]:
    """The index.json entry to follow, or all of them to choose among by platform (R2, R3)."""
    layout = source.path
    where = f"{layout}/index.json"
    if digest is not None:
        check_digest(digest, f"{layout}@{digest}")
        for entry in entries:
            if entry.digest == digest:
                return entry
        # Any manifest or index blob of the layout may be named by digest; its size is taken
        # from the blob (capped) and its content is still checked against the digest.
        found = sources.blob(source, digest, f"{layout}@{digest}")
        if found is None:
            _fail(f"{layout}: no manifest or index with digest {digest} in the layout")
        return _Descriptor(None, digest, found.size)
    if ref is not None:
        if not ref:
            _fail(f"{layout}: empty ref after ':' ({_refs_text(entries)})")
        matches = refs.match(ref, [(e.names(), e) for e in entries])
        if not matches:
            _fail(f"{where}: no image with ref {show(ref)}; {_refs_text(entries)}")
        digests = {m.digest for m in matches}
        if len(digests) > 1:
            _fail(f"{where}: ref {show(ref)} is ambiguous: it names {listing(sorted(digests))}")
        return matches[0]
    if not entries:
        _fail(f"{where} lists no images")
    if len({e.digest for e in entries}) == 1:
        return entries[0]
    if all(e.ref_name is None for e in entries):
        # No names at all: index.json itself is the image index to choose a platform from.
        return entries
    _fail(
        f"{where} holds {len(entries)} images; choose one with LAYOUT:REF ({_refs_text(entries)})"
    )


# --- indexes and platforms (R4, R5) ---------------------------------------------------------


def _kind(document: dict[str, Any], desc: _Descriptor, what: str) -> tuple[str, str]:
    """('manifest'|'index', media type) of a document, checked against its descriptor (R4)."""
    doc_type = document.get("mediaType")
    if doc_type is not None and not isinstance(doc_type, str):
        _fail(f"{what}: mediaType must be a string, got {type(doc_type).__name__}")
    if doc_type in DOCKER_SCHEMA1:
        _fail(f"{what}: Docker schema 1 manifests are unsupported ({doc_type})")
    _check_schema_version(document, what)
    if doc_type is not None and desc.media_type is not None and doc_type != desc.media_type:
        _fail(
            f"{what}: descriptor says mediaType {show(desc.media_type)},"
            f" the document says {show(doc_type)}"
        )
    media_type = doc_type or desc.media_type
    if media_type is None:
        has_manifests, has_layers = "manifests" in document, "layers" in document
        if has_manifests == has_layers:
            _fail(f"{what}: no mediaType, and it is neither a manifest nor an index")
        media_type = OCI_INDEX if has_manifests else OCI_MANIFEST
    if media_type in MANIFEST_TYPES:
        return "manifest", media_type
    if media_type in INDEX_TYPES:
        return "index", media_type
    _fail(f"{what}: unsupported mediaType {show(media_type)} (not an image manifest or index)")


def _variant_matches(want: Platform, entry_arch: str, entry_variant: str | None) -> bool:
    """No requested variant: any. Otherwise equal, an entry without one taking the default."""
    if want.variant is None:
        return True
    return (entry_variant or DEFAULT_VARIANT.get(entry_arch)) == want.variant


def _choose_platform(entries: Sequence[_Descriptor], want: Platform, where: str) -> _Descriptor:
    """The entry of an index for ``want`` (R5): attestations skipped, variants matched."""
    candidates = [e for e in entries if not e.is_attestation()]
    skipped = len(entries) - len(candidates)
    if skipped:
        logger.debug("%s: skipping %d attestation manifest(s)", where, skipped)
    if not candidates:
        _fail(f"{where}: no image manifests, only attestations")
    if len(candidates) == 1 and candidates[0].platform is None:
        return candidates[0]
    matches: list[_Descriptor] = []
    for entry in candidates:
        p = entry.platform
        if p is None:
            continue
        variant = p.get("variant") or None
        if (
            p["os"] == want.os
            and p["architecture"] == want.architecture
            and _variant_matches(want, p["architecture"], variant)
        ):
            matches.append(entry)
    if not matches:
        present = [e.platform_text() or "(no platform)" for e in candidates]
        _fail(f"{where}: no manifest for platform {want}; platforms present: {listing(present)}")
    if want.variant is None and len(matches) > 1:
        # Any variant matches; prefer the plain entry, then the architecture's default variant.
        def rank(entry: _Descriptor) -> int:
            variant = (entry.platform or {}).get("variant") or None
            if variant is None:
                return 0
            return 1 if variant == DEFAULT_VARIANT.get(want.architecture) else 2

        matches.sort(key=rank)
    return matches[0]


def _follow(
    source: BlobSource, top: _Descriptor | list[_Descriptor], want: Platform
) -> tuple[_Descriptor, dict[str, Any], str, str | None]:
    """Follow indexes to a manifest: (descriptor, manifest, media type, platform text)."""
    layout = source.path
    index_json = f"{layout}/index.json"
    desc = _choose_platform(top, want, index_json) if isinstance(top, list) else top
    depth = 0
    while True:
        what = f"{layout}: manifest {desc.digest}"
        if desc.media_type in DOCKER_SCHEMA1:
            _fail(f"{what}: Docker schema 1 manifests are unsupported ({desc.media_type})")
        document = _read_blob_json(source, desc, f"{layout}: manifest")
        kind, media_type = _kind(document, desc, what)
        if kind == "manifest":
            return desc, document, media_type, desc.platform_text()
        what = f"{layout}: index {desc.digest}"
        if depth >= MAX_INDEX_DEPTH:
            _fail(f"{what}: indexes nested more than {MAX_INDEX_DEPTH} deep")
        depth += 1
        entries = _parse_descriptor_list(document.get("manifests"), "manifests", what)
        desc = _choose_platform(entries, want, what)
        logger.debug("%s: chose %s for %s", what, desc.digest, want)


# --- manifest, config and layers (R6, R7, R10) ----------------------------------------------


def _check_config(
    source: BlobSource, manifest: dict[str, Any], what: str
) -> tuple[str, dict[str, Any]]:
    if "config" not in manifest:
        _fail(f"{what}: no config descriptor")
    desc = _parse_descriptor(manifest["config"], f"{what} config")
    if desc.media_type not in CONFIG_TYPES:
        _fail(f"{what}: not a container image (config mediaType {show(desc.media_type)})")
    config = _read_blob_json(source, desc, f"{source.path}: config")
    check_config(config, f"{source.path}: config {desc.digest}")
    return desc.digest, config


def check_config(config: dict[str, Any], where: str) -> None:
    """An image config's rootfs must list diff_ids (R6, R8)."""
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict):
        _fail(f"{where}: rootfs must be an object")
    if rootfs.get("type") != "layers":
        _fail(f"{where}: rootfs.type must be 'layers', got {show(rootfs.get('type'))}")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        _fail(f"{where}: rootfs.diff_ids must be a list")
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"{where} rootfs.diff_ids[{i}]")


def check_compression(media_type: str, name: str) -> Compression:
    """The compression of a layer media type ocifs serves; LayoutError naming the layer if
    it serves no such layer (R7)."""
    if media_type.endswith(ENCRYPTED_SUFFIX):
        _fail(f"{name}: encrypted layers are unsupported (mediaType {show(media_type)})")
    compression = LAYER_TYPES.get(media_type)
    if compression is None:
        _fail(f"{name}: unsupported layer mediaType {show(media_type)}")
    if not compression.supported:  # the one place support is decided (R7)
        _fail(f"{name}: {compression} layers ({media_type}) are not supported")
    return compression


def _check_layers(
    source: BlobSource, manifest: dict[str, Any], diff_ids: list[str], what: str
) -> tuple[LayerRef, ...]:
    layout = source.path
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        _fail(f"{what}: layers must be a list, got {type(raw_layers).__name__}")
    if len(raw_layers) != len(diff_ids):
        _fail(
            f"{what}: {len(raw_layers)} layers but the config lists {len(diff_ids)} rootfs.diff_ids"
        )
    layers = []
    for i, raw in enumerate(raw_layers):
        desc = _parse_descriptor(raw, f"{what} layers[{i}]")
        name = f"{layout}: layer {i} ({desc.digest})"
        if desc.media_type is None:
            _fail(f"{name}: no mediaType")
        compression = check_compression(desc.media_type, name)
        blob = _stat_blob(source, desc, name)
        layers.append(
            LayerRef(
                i,
                desc.digest,
                desc.size,
                desc.media_type,
                compression,
                diff_ids[i],
                blob,
                annotations=desc.annotations,
            )
        )
    return tuple(layers)


def resolve(
    layout: Path | BlobSource,
    ref: str | None = None,
    digest: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve the image in a layout directory, or in any source holding an OCI layout;
    raises LayoutError with one clear line on any problem."""
    source = open_directory(layout) if isinstance(layout, (str, Path)) else layout
    layout = source.path
    want = platform if platform is not None else Platform.host()
    entries = _open_layout(source)
    top = _select_top(source, entries, ref, digest)
    desc, manifest, media_type, platform_text = _follow(source, top, want)
    what = f"{layout}: manifest {desc.digest}"
    config_digest, config = _check_config(source, manifest, what)
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    layers = _check_layers(source, manifest, diff_ids, what)
    if platform_text is None:
        platform_text = platform_text_of(config)
    logger.debug(
        "%s: resolved manifest %s (%s), %d layers", layout, desc.digest, platform_text, len(layers)
    )
    return ResolvedImage(
        layout=layout,
        manifest_digest=desc.digest,
        config_digest=config_digest,
        config=config,
        platform=platform_text,
        layers=layers,
        manifest_media_type=media_type,
    )
