"""What ``ocifs inspect`` shows, gathered as plain data: the images a layout or an archive
holds, and for the chosen one its manifest, config, history and layers.

``inspect_arg`` takes ``LAYOUT[:REF|@DIGEST]`` as every command does (``imagearg``: any
input ocifs mounts), lists what the source holds (``Catalog``: the entries of ``index.json``
with the indexes below them and their platforms, the images of a docker-archive's
``manifest.json``), resolves the image, and takes each layer's index from the index cache
or builds it (``image.index_layers``, as ``ocifs index`` does, and stores it; then the
merged tree too, so a later mount is quick). A cached image is inspected without opening
its layer blobs: the cache files are trusted by the blob's digest, size and compression,
without the sample of the blob's head and tail a mount checks (nothing is served from the
blob here), and without ``--layers`` only their headers are read.

The config's ``history`` is matched to the layers the way Docker matches it: the steps not
marked ``empty_layer`` made the layers, in order from the lowest. When their number is not
the number of layers the match is still made in order, the layers or steps left over get
none, and a note says so. With ``accounting`` the layers' entries are counted as
``accounting`` says. What formats all of it for the terminal or as JSON is ``inspectview``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dockerarchive, sources
from .accounting import TOP_HIDDEN, Accounting, account_layers
from .errors import LayoutError, OcifsError
from .gzseek import DEFAULT_SPACING
from .image import LoadReport, ProgressFactory, index_layers, merge
from .imagearg import OCI_LAYOUT, open_source, resolve_source, split_image_arg
from .indexcache import IndexCache
from .layerindex import LayerIndex
from .layout import (
    MAX_INDEX_DEPTH,
    REFERENCE_TYPE,
    LayerRef,
    Platform,
    ResolvedImage,
    check_content,
    parse_json,
    platform_text_of,
)
from .mediatypes import CONTAINERD_IMAGE_NAME, INDEX_TYPES, REF_NAME
from .sources import MAX_DOCUMENT_SIZE, ArchiveProgress, ArchiveSource, BlobSource
from .tarscan import TarEntry

logger = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
MAX_LISTED_IMAGES = 1000  # catalog entries read from one list (the rest are counted)

INDEX_LIST = "index.json"
DOCKER_LIST = dockerarchive.MANIFEST


@dataclass
class CatalogEntry:
    """One image (or index) a source lists. ``digest``: of the manifest or index for an OCI
    layout, of the config (the image ID) for a docker-archive's manifest.json."""

    kind: str  # "manifest", "index", "attestation" or "image" (a manifest.json entry)
    digest: str | None
    names: tuple[str, ...] = ()  # ref names, or RepoTags
    media_type: str | None = None
    platform: str | None = None
    chosen: bool = False  # the image shown (or, for an index, the one below it)
    children: list[CatalogEntry] = field(default_factory=list)  # an index's manifests
    error: str | None = None  # why this entry could not be read (it is still listed)


@dataclass
class Catalog:
    """What the source holds, list by list: ``index.json`` and/or ``manifest.json``."""

    path: Path
    source: str  # "directory", or "archive" (with its compression: "archive (gzip)")
    format: str  # "oci-layout", "docker-archive", or "docker-archive+oci-layout"
    lists: dict[str, list[CatalogEntry]] = field(default_factory=dict)
    left_out: int = 0  # entries past MAX_LISTED_IMAGES, counted, not listed

    def choices(self) -> int:
        """How many images a user could choose among in the longest list (attestations are
        not images; a Docker 25+ archive lists its images twice, once in each list)."""
        most = 0
        for entries in self.lists.values():
            count = 0
            stack = list(entries)
            while stack:
                entry = stack.pop()
                if entry.children:
                    stack.extend(entry.children)
                elif entry.kind != "attestation":
                    count += 1
            most = max(most, count, len(entries))
        return most


@dataclass(frozen=True)
class HistoryStep:
    """One entry of the config's ``history``; ``layer`` is the position of the layer it made."""

    created: str | None
    created_by: str | None
    comment: str | None
    author: str | None
    empty_layer: bool
    layer: int | None


@dataclass(frozen=True)
class LayerRow:
    position: int
    digest: str  # a docker-archive's compressed layer is known by its diff_id only
    diff_id: str
    media_type: str
    compressed_size: int  # the blob's size
    uncompressed_size: int  # its tar stream's
    entries: int  # tar members, whiteouts included
    created_by: str | None  # of the history step that made it, None when none matches
    history: int | None  # that step's place in the config's history


@dataclass(frozen=True)
class ImageInfo:
    manifest_digest: str | None  # None for a docker-archive's image (it has no manifest)
    manifest_media_type: str
    config_digest: str
    created: str | None
    os: str | None
    architecture: str | None
    variant: str | None
    platform: str | None
    entrypoint: list[str] | None
    cmd: list[str] | None
    env: list[str]
    working_dir: str | None
    user: str | None
    labels: dict[str, str]
    history: list[HistoryStep]
    layers: list[LayerRow]


@dataclass
class Inspection:
    catalog: Catalog
    image: ImageInfo | None  # None when the source holds several images and none was named
    accounting: Accounting | None = None
    notes: list[str] = field(default_factory=list)
    indexed: int = 0  # layers indexed from their blobs by this run
    from_cache: int = 0  # layers whose index came from the cache


# --- the catalog ----------------------------------------------------------------------------


def read_catalog(source: BlobSource) -> Catalog:
    """Every image the source lists. Unreadable entries are listed with their error; a
    missing or unreadable list is left out (resolution then says what is wrong)."""
    has_layout = sources.find(source, OCI_LAYOUT, OCI_LAYOUT) is not None
    has_manifest = sources.find(source, DOCKER_LIST, DOCKER_LIST) is not None
    if has_layout and has_manifest:
        format_name = "docker-archive+oci-layout"
    else:
        format_name = "oci-layout" if has_layout or not has_manifest else "docker-archive"
    kind = "directory"
    if isinstance(source, ArchiveSource):
        compression = source.archive.table.compression
        kind = "archive" if compression == "none" else f"archive ({compression})"
    catalog = Catalog(source.path, kind, format_name)
    if has_layout:
        _try(lambda: _index_catalog(source, catalog), catalog, INDEX_LIST)
    if has_manifest:
        _try(lambda: _docker_catalog(source, catalog), catalog, DOCKER_LIST)
    return catalog


def _try(read: Callable[[], None], catalog: Catalog, name: str) -> None:
    try:
        read()
    except OcifsError as error:
        logger.info("%s: %s", name, error)
        catalog.lists.setdefault(name, [])


def _index_catalog(source: BlobSource, catalog: Catalog) -> None:
    where = f"{source.path}/{INDEX_LIST}"
    data = sources.read_document(source, INDEX_LIST, where)
    if data is None:
        raise LayoutError(f"{where} is missing")
    index = parse_json(data, where)
    catalog.lists[INDEX_LIST] = _descriptors(source, index.get("manifests"), catalog, 0)


def _descriptors(
    source: BlobSource, raw: object, catalog: Catalog, depth: int
) -> list[CatalogEntry]:
    if not isinstance(raw, list):
        return [CatalogEntry("index", None, error="manifests is not a list")]
    catalog.left_out += max(0, len(raw) - MAX_LISTED_IMAGES)
    return [_descriptor(source, item, catalog, depth) for item in raw[:MAX_LISTED_IMAGES]]


def _descriptor(source: BlobSource, raw: object, catalog: Catalog, depth: int) -> CatalogEntry:
    if not isinstance(raw, dict):
        return CatalogEntry("manifest", None, error="a descriptor that is not an object")
    annotations = raw.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    names = tuple(
        dict.fromkeys(
            value
            for key in (CONTAINERD_IMAGE_NAME, REF_NAME)
            if isinstance(value := annotations.get(key), str)
        )
    )
    media_type = raw.get("mediaType") if isinstance(raw.get("mediaType"), str) else None
    platform = raw.get("platform")
    entry = CatalogEntry(
        "manifest",
        None,
        names,
        media_type,
        platform_text_of(platform) if isinstance(platform, dict) else None,
    )
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        entry.error = "no valid digest"
        return entry
    entry.digest = digest
    is_attestation = annotations.get(REFERENCE_TYPE) == "attestation-manifest" or (
        isinstance(platform, dict)
        and platform.get("os") == "unknown"
        and platform.get("architecture") == "unknown"
    )
    if is_attestation:
        entry.kind = "attestation"
        return entry
    if media_type is not None and media_type not in INDEX_TYPES:
        return entry
    # An index, or a descriptor that does not say: its document does ("manifests").
    try:
        document = _read_blob_document(source, digest, size)
    except OcifsError as error:
        entry.kind = "index" if media_type is not None else entry.kind
        entry.error = str(error)
        return entry
    if media_type is None and "manifests" not in document:
        return entry
    entry.kind = "index"
    if depth >= MAX_INDEX_DEPTH:
        entry.error = f"indexes nested more than {MAX_INDEX_DEPTH} deep"
        return entry
    entry.children = _descriptors(source, document.get("manifests"), catalog, depth + 1)
    return entry


def _read_blob_document(source: BlobSource, digest: str, size: object) -> dict[str, Any]:
    what = f"{source.path}: blob {digest}"
    found = sources.blob(source, digest, what)
    if found is None:
        raise LayoutError(f"{what} is missing")
    if found.size != size:
        raise LayoutError(f"{what} is {found.size} bytes, but its descriptor says {size}")
    data = sources.read_blob(found, MAX_DOCUMENT_SIZE, what)
    check_content(data, digest, what)
    document: dict[str, Any] = parse_json(data, what)
    return document


def _docker_catalog(source: BlobSource, catalog: Catalog) -> None:
    where = f"{source.path}/{DOCKER_LIST}"
    data = sources.read_document(source, DOCKER_LIST, where)
    if data is None:
        raise LayoutError(f"{where} is missing")
    document: list[Any] = parse_json(data, where, list)
    catalog.left_out += max(0, len(document) - MAX_LISTED_IMAGES)
    catalog.lists[DOCKER_LIST] = [
        _docker_entry(source, raw) for raw in document[:MAX_LISTED_IMAGES]
    ]


def _docker_entry(source: BlobSource, raw: object) -> CatalogEntry:
    entry = CatalogEntry("image", None)
    if not isinstance(raw, dict):
        entry.error = "an entry that is not an object"
        return entry
    tags = raw.get("RepoTags")
    if isinstance(tags, list):
        entry.names = tuple(tag for tag in tags if isinstance(tag, str))
    config = raw.get("Config")
    if not isinstance(config, str):
        entry.error = "names no Config"
        return entry
    match = dockerarchive.CONFIG_NAME_RE.fullmatch(config.removeprefix("./"))
    try:
        found = sources.find(source, config, config)
        if found is None:
            raise LayoutError(f"config {config} is missing")
        data = sources.read_blob(found, MAX_DOCUMENT_SIZE, config)
        entry.digest = f"sha256:{match.group(1)}" if match else None
        if entry.digest is None:  # a config not named by its digest
            entry.digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        document = parse_json(data, config)
        entry.platform = platform_text_of(document)
    except OcifsError as error:
        entry.error = str(error)
    return entry


def mark_chosen(catalog: Catalog, image: ResolvedImage) -> None:
    """Mark the entries that are the resolved image (and the indexes leading to it)."""

    def visit(entry: CatalogEntry) -> bool:
        below = [visit(child) for child in entry.children]
        if entry.kind == "image":
            entry.chosen = entry.digest == image.config_digest
        else:
            entry.chosen = any(below) or (
                image.manifest_digest is not None and entry.digest == image.manifest_digest
            )
        return entry.chosen

    for entries in catalog.lists.values():
        for entry in entries:
            visit(entry)


# --- the image ------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _string_list(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def match_history(config: dict[str, Any], layers: int) -> tuple[list[HistoryStep], list[str]]:
    """The config's history steps, each with the layer it made (steps marked
    ``empty_layer`` make none), matched in order from the lowest layer; notes on what
    did not match."""
    raw = config.get("history")
    if raw is None:
        return [], (["the config has no history: no layer has a created_by"] if layers else [])
    if not isinstance(raw, list):
        return [], ["the config's history is not a list: no layer has a created_by"]
    steps = []
    position = 0
    for item in raw:
        step = item if isinstance(item, dict) else {}
        empty = step.get("empty_layer") is True
        layer = None
        if not empty:
            layer = position if position < layers else None
            position += 1
        steps.append(
            HistoryStep(
                _text(step.get("created")),
                _text(step.get("created_by")),
                _text(step.get("comment")),
                _text(step.get("author")),
                empty,
                layer,
            )
        )
    notes = []
    if position != layers:
        left = (
            f"the {layers - position} top layer(s) have no step"
            if position < layers
            else f"{position - layers} step(s) have no layer"
        )
        notes.append(
            f"the config's history has {position} step(s) that made a layer, for {layers}"
            f" layer(s): matched in order from the lowest; {left}"
        )
    return steps, notes


def image_info(resolved: ResolvedImage, facts: Sequence[LayerFacts]) -> tuple[ImageInfo, list[str]]:
    """The image's fields from its config and what its layers' indexes say."""
    config = resolved.config
    settings = config.get("config")
    settings = settings if isinstance(settings, dict) else {}
    labels = settings.get("Labels")
    history, notes = match_history(config, len(resolved.layers))
    made_by = {step.layer: (number, step) for number, step in enumerate(history)}
    rows = []
    for layer, fact in zip(resolved.layers, facts, strict=True):
        number, step = made_by.get(layer.position, (None, None))
        rows.append(_layer_row(layer, fact, step, number))
    info = ImageInfo(
        manifest_digest=resolved.manifest_digest,
        manifest_media_type=resolved.manifest_media_type,
        config_digest=resolved.config_digest,
        created=_text(config.get("created")),
        os=_text(config.get("os")),
        architecture=_text(config.get("architecture")),
        variant=_text(config.get("variant")),
        platform=resolved.platform,
        entrypoint=_string_list(settings.get("Entrypoint")),
        cmd=_string_list(settings.get("Cmd")),
        env=_string_list(settings.get("Env")) or [],
        working_dir=_text(settings.get("WorkingDir")),
        user=_text(settings.get("User")),
        labels=(
            {k: v for k, v in labels.items() if isinstance(v, str)}
            if isinstance(labels, dict)
            else {}
        ),
        history=history,
        layers=rows,
    )
    return info, notes


def _layer_row(
    layer: LayerRef, fact: LayerFacts, step: HistoryStep | None, number: int | None
) -> LayerRow:
    return LayerRow(
        position=layer.position,
        digest=layer.digest,
        diff_id=layer.diff_id,
        media_type=layer.media_type,
        compressed_size=layer.size,
        uncompressed_size=fact.uncompressed_size,
        entries=fact.entry_count,
        created_by=step.created_by if step is not None else None,
        history=number,
    )


# --- all of it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFacts:
    """What inspect needs of a layer's index: sizes, and the entries when it counts them."""

    uncompressed_size: int
    entry_count: int
    entries: list[TarEntry] | None  # None when taken from the cache without them


def layer_facts(
    layers: Sequence[LayerRef],
    verify: bool,
    progress: ProgressFactory | None,
    cache: IndexCache | None,
    report: LoadReport,
    with_entries: bool,
) -> tuple[list[LayerFacts], list[LayerIndex] | None]:
    """Every layer's facts, taken from the cache without opening the blob (its digest, size
    and compression name it; nothing is served from it here); without ``with_entries``
    from the cache files' headers alone. Where the cache lacks a layer, every layer's index
    with its entries, the missing ones indexed from their blobs and stored, as ``ocifs
    index`` does; those indexes are returned too, to be merged."""
    if cache is not None and not with_entries:
        summaries = [cache.layer_summary(layer, verify) for layer in layers]
        if all(summary is not None for summary in summaries):
            report.from_cache.extend(layers)
            return [LayerFacts(*summary, None) for summary in summaries if summary], None
    found: dict[int, LayerIndex] = {}
    if cache is not None:
        for layer in layers:
            index = cache.load_layer(layer, verify, with_entries=True, sample=False)
            if index is not None:
                found[layer.position] = index
                report.from_cache.append(layer)
    missing = [layer for layer in layers if layer.position not in found]
    if missing:
        built = index_layers(missing, verify, progress, None, cache, DEFAULT_SPACING, report, None)
        found.update((layer.position, index) for layer, index in zip(missing, built, strict=True))
    indexes = [found[layer.position] for layer in layers]
    facts = []
    for index in indexes:
        assert index.entries is not None, "loaded or built with its entries"
        facts.append(LayerFacts(index.uncompressed_size, len(index.entries), index.entries))
    return facts, indexes


def inspect_arg(
    arg: str,
    platform: Platform | None = None,
    cache: IndexCache | None = None,
    verify: bool = True,
    progress: ProgressFactory | None = None,
    archive_progress: ArchiveProgress | None = None,
    accounting: bool = False,
    top: int = TOP_HIDDEN,
    opened: Callable[[], None] | None = None,
) -> Inspection:
    """Inspect ``LAYOUT[:REF|@DIGEST]``. Raises OcifsError (one line) on bad input; a source
    that holds several images (or platforms), none of them named and no platform asked
    for, where resolution cannot choose, is an Inspection without an image (the note says
    why).
    ``progress`` and ``archive_progress`` are shown while layers and an archive are read;
    ``opened`` is called once the source is open, before any layer is."""
    path, ref, digest = split_image_arg(arg)
    source = open_source(path, cache, archive_progress)
    if opened is not None:
        opened()  # the archive's progress line goes before the layers' come
    catalog = read_catalog(source)
    try:
        resolved = resolve_source(source, ref, digest, platform)
    except LayoutError as error:
        if ref is None and digest is None and platform is None and catalog.choices() > 1:
            return Inspection(catalog, None, notes=[str(error)])
        raise
    logger.info("resolved %s to %s", arg, resolved.describe())
    mark_chosen(catalog, resolved)
    report = LoadReport()
    layers = resolved.layers
    facts, indexes = layer_facts(layers, verify, progress, cache, report, accounting)
    info, notes = image_info(resolved, facts)
    inspection = Inspection(
        catalog, info, notes=notes, indexed=len(report.indexed), from_cache=len(report.from_cache)
    )
    if report.indexed and cache is not None and indexes is not None:
        # As after `ocifs index`: the merged tree too, so that a later mount merges nothing.
        try:
            cache.store_tree(layers, merge(layers, list(indexes)))
        except OcifsError as error:
            inspection.notes.append(
                f"the layers do not merge, so this image cannot be mounted: {error}"
            )
    if accounting:
        entries = []
        for fact in facts:
            assert fact.entries is not None, "loaded with the entries to count"
            entries.append(fact.entries)
        try:
            inspection.accounting = account_layers(entries, top)
        except OcifsError as error:
            inspection.notes.append(f"no layer accounting: {error}")
    return inspection
