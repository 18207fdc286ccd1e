"""Resolve an image of a docker-archive (``docker save``, ``podman save``, ``skopeo copy ...
docker-archive:``) from its ``manifest.json`` to a config and layers (X1).

``manifest.json`` lists the archive's images, each as ``{"Config": "<hex>.json", "RepoTags":
[...], "Layers": ["<id>/layer.tar" | "<hex>.tar", ...]}``; the names are paths inside the
source (``sources``), read in place, and a layer member may be a symlink to another one (as
Docker and skopeo write a layer two images share). A REF selects by ``RepoTags`` (``refs``:
as written, normalized, or a short name), ``@sha256:...`` by the image ID (the config's
digest); with one image no REF is needed. The image has no manifest: ``ResolvedImage``'s
``manifest_digest`` is None.

The archive names no media type and no digest for a layer. Its compression comes from its
first bytes (``mediatypes.sniff_compression``), and the layer is served as the OCI layer type
of that compression (zstd is refused where ocifs refuses it, R7). An uncompressed layer's
blob is its tar stream, so its digest is its diff_id and indexing verifies both at once. A
compressed layer's own digest is named nowhere: it is known by its diff_id, which indexing
verifies (``LayerRef.digest_known`` False), and the index cache keys it by that diff_id; the
cache's blob sample and compression tell it from an uncompressed blob of the same diff_id.

The config is checked against the digest its name carries (``<hex>.json``, ``blobs/sha256/
<hex>``: every writer names it so), and its ``diff_ids`` must match the layers in number.
Anything wrong is one ``LayoutError`` line naming the archive, the image and the member.

A Docker 25+ archive holds an OCI layout next to its ``manifest.json``; ``resolve_docker25``
resolves it through the layout (R1-R10, as ``layout`` does), and through ``manifest.json``,
which is what ``docker load`` reads, only where the layout cannot name the image: Docker
25.0.0 wrote OCI manifests without their layers (moby#47065), 25.0.0 to 25.0.2 left untagged
images out of ``index.json`` (moby#47210), and later versions drop images saved by digest
from it (moby#51389). Layers and config are verified the same way either way.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from . import layout, refs, sources
from .blobs import Blob
from .errors import LayoutError, show
from .layout import (
    LayerRef,
    Platform,
    ResolvedImage,
    check_compression,
    check_config,
    check_content,
    check_digest,
    listing,
    parse_json,
    platform_text_of,
)
from .mediatypes import (
    DOCKER_MANIFEST,
    MAGIC_BYTES,
    OCI_LAYER_TYPE,
    Compression,
    sniff_compression,
)
from .sources import MAX_DOCUMENT_SIZE, BlobSource

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MAX_IMAGES = 10_000  # entries of one manifest.json
# A config named by its digest: '<hex>.json' (Docker, podman), 'blobs/sha256/<hex>' (Docker 25+).
CONFIG_NAME_RE = re.compile(r"(?:.*/)?([0-9a-f]{64})(?:\.json)?")


def _fail(message: str) -> NoReturn:
    raise LayoutError(message)


@dataclass(frozen=True)
class _Entry:
    """One image of manifest.json, its shape checked."""

    number: int
    config: str
    tags: tuple[str, ...]
    layers: tuple[str, ...]

    def named_digest(self) -> str | None:
        """The config's digest as its member name gives it, if it does."""
        match = CONFIG_NAME_RE.fullmatch(self.config.removeprefix("./"))
        return f"sha256:{match.group(1)}" if match else None

    def shown(self) -> str:
        """How error messages list the image: its tags, or its ID."""
        if self.tags:
            return ", ".join(show(tag) for tag in self.tags)
        digest = self.named_digest()
        return f"@{digest}" if digest else f"image {self.number} (no RepoTags)"


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(f"{what} must be a list of strings")
    return tuple(value)


def _parse_manifest(data: bytes, where: str) -> list[_Entry]:
    document: list[Any] = parse_json(data, where, list)
    if not document:
        _fail(f"{where} lists no images")
    if len(document) > MAX_IMAGES:
        _fail(f"{where} lists {len(document)} images, over the limit of {MAX_IMAGES}")
    entries = []
    for number, raw in enumerate(document):
        what = f"{where} image {number}"
        if not isinstance(raw, dict):
            _fail(f"{what} must be an object, got {type(raw).__name__}")
        config = raw.get("Config")
        if not isinstance(config, str) or not config:
            _fail(f"{what} names no Config")
        tags = raw.get("RepoTags")
        layers = _strings(raw.get("Layers"), f"{what}: Layers")
        entries.append(
            _Entry(
                number, config, () if tags is None else _strings(tags, f"{what}: RepoTags"), layers
            )
        )
    return entries


def _select(
    source: BlobSource, entries: list[_Entry], ref: str | None, digest: str | None, where: str
) -> _Entry:
    """The image the REF or DIGEST names, or the only one."""
    path = source.path
    shown = f"images: {listing(entry.shown() for entry in entries)}"
    if digest is not None:
        check_digest(digest, f"{path}@{digest}")
        for entry in entries:
            if entry.named_digest() == digest or _config_digest(source, entry, where) == digest:
                return entry
        _fail(f"{where}: no image with ID {digest}; {shown}")
    if ref is not None:
        if not ref:
            _fail(f"{path}: empty ref after ':' ({shown})")
        matches = refs.match(ref, [(entry.tags, entry) for entry in entries])
        if not matches:
            _fail(f"{where}: no image with ref {show(ref)}; {shown}")
        if len({entry.config for entry in matches}) > 1:
            _fail(
                f"{where}: ref {show(ref)} is ambiguous:"
                f" it names {listing(e.shown() for e in matches)}"
            )
        return matches[0]
    if len({entry.config for entry in entries}) == 1:
        return entries[0]
    _fail(f"{where} holds {len(entries)} images; choose one with ARCHIVE:REF ({shown})")


def _config_digest(source: BlobSource, entry: _Entry, where: str) -> str:
    """The image ID: the config's digest, as its name gives it or hashed from its bytes."""
    return entry.named_digest() or _read_config(source, entry, where)[0]


def _read_config(source: BlobSource, entry: _Entry, where: str) -> tuple[str, dict[str, Any]]:
    what = f"{where} image {entry.number}: config {show(entry.config)}"
    found = sources.find(source, entry.config, what)
    if found is None:
        _fail(f"{what} is missing from the archive")
    data = sources.read_blob(found, MAX_DOCUMENT_SIZE, what)
    named = entry.named_digest()
    if named is not None:
        check_content(data, named, what)
    digest = named or f"sha256:{hashlib.sha256(data).hexdigest()}"
    config: dict[str, Any] = parse_json(data, what)
    check_config(config, what)
    return digest, config


def _layer(source: BlobSource, position: int, name: str, diff_id: str, what: str) -> LayerRef:
    where = f"{what}: layer {position} ({show(name)})"
    found = sources.find(source, name, where)
    if found is None:
        _fail(f"{where} is missing from the archive")
    compression = sniff_compression(_head(found, where))
    media_type = OCI_LAYER_TYPE[compression]
    check_compression(media_type, where)
    # An uncompressed blob is the tar stream: its digest is the diff_id (and is checked).
    known = compression is Compression.NONE
    return LayerRef(position, diff_id, found.size, media_type, compression, diff_id, found, known)


def _head(found: Blob, what: str) -> bytes:
    try:
        handle = found.open()
        try:
            return handle.pread(MAGIC_BYTES, 0)
        finally:
            handle.close()
    except OSError as error:
        _fail(f"{what} cannot be read: {error.strerror or error}")


def resolve(
    source: BlobSource,
    ref: str | None = None,
    digest: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve an image of the docker-archive in ``source``; LayoutError on any problem.

    ``platform`` chooses nothing: each image of a docker-archive is one platform's."""
    where = f"{source.path}/{MANIFEST}"
    data = sources.read_document(source, MANIFEST, where)
    if data is None:
        _fail(f"{source.path} is not a docker-archive: {MANIFEST} is missing")
    entries = _parse_manifest(data, where)
    entry = _select(source, entries, ref, digest, where)
    config_digest, config = _read_config(source, entry, where)
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    what = f"{where} image {entry.number}"
    if len(entry.layers) != len(diff_ids):
        _fail(
            f"{what}: {len(entry.layers)} layers but the config lists"
            f" {len(diff_ids)} rootfs.diff_ids"
        )
    layers = tuple(
        _layer(source, position, name, diff_ids[position], what)
        for position, name in enumerate(entry.layers)
    )
    platform_text = platform_text_of(config)
    if platform is not None and platform_text is not None and str(platform) != platform_text:
        logger.info(
            "%s is for %s, not %s: a docker-archive holds one", what, platform_text, platform
        )
    logger.debug("%s: image %s, %d layers", where, config_digest, len(layers))
    return ResolvedImage(
        layout=source.path,
        manifest_digest=None,
        config_digest=config_digest,
        config=config,
        platform=platform_text,
        layers=layers,
        manifest_media_type=DOCKER_MANIFEST,  # what `docker load` makes of the entry
    )


def resolve_docker25(
    source: BlobSource,
    ref: str | None = None,
    digest: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve an archive holding both an OCI layout and a manifest.json: through the layout,
    or through manifest.json where the layout cannot name the image (the layout's error if
    neither can)."""
    try:
        return layout.resolve(source, ref, digest, platform)
    except LayoutError as error:
        try:
            resolved = resolve(source, ref, digest, platform)
        except LayoutError:
            raise error from None
        logger.warning("%s; using %s instead, as docker load does", error, MANIFEST)
        return resolved
