"""What the user names as ``LAYOUT[:REF|@DIGEST]``: a layout directory or an image archive,
split from its REF, opened as a source, and resolved by the resolver of what it holds.

Two tables say what varies. ``SOURCES``: what the path is, a directory (``DirectorySource``)
or a file (``ArchiveSource``, its member table from the index cache when it has it). And
``FORMATS``: what the source holds, known by the files that mark it: ``oci-layout`` and
``manifest.json`` are a Docker 25+ ``docker save``, resolved through its layout (or its
``manifest.json`` where Docker left the layout wrong: ``dockerarchive.resolve_docker25``);
``oci-layout`` alone is an OCI layout (a directory, an oci-archive), resolved by ``layout``;
``manifest.json`` alone is a classic docker-archive (``docker save``, ``podman save``,
``skopeo copy ... docker-archive:``, or one unpacked), resolved by ``dockerarchive``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import dockerarchive, layout, sources
from .errors import LayoutError
from .indexcache import IndexCache
from .layout import Platform, ResolvedImage
from .sources import ArchiveProgress, BlobSource, open_archive, open_directory

logger = logging.getLogger(__name__)

DIGEST_MARKERS = ("@sha256:", "@sha512:")


def _names_a_store(path: str) -> bool:
    candidate = Path(path)
    try:
        return candidate.is_dir() or candidate.is_file()
    except OSError:
        return False


def split_image_arg(arg: str) -> tuple[Path, str | None, str | None]:
    """Split 'LAYOUT[:REF|@DIGEST]' into (path, ref or None, digest or None).

    ``@sha256:``/``@sha512:`` marks a digest (grammar-checked later, by the resolver).
    Otherwise the path is the whole arg if that is an existing directory or file, else the
    longest part before a ':' that is one, and the REF is what follows that ':'. So a path
    and a REF may both hold ':' (``img.tar:localhost/app:v1``, ``./a:b:v1`` for a layout
    ``a:b``). With no such part the whole arg is the path (and opening it says what is wrong).
    """
    at = max(arg.rfind(marker) for marker in DIGEST_MARKERS)
    if at >= 0:
        return Path(arg[:at]), None, arg[at + 1 :]
    if _names_a_store(arg):
        return Path(arg), None, None
    colon = arg.rfind(":")
    while colon > 0:
        if _names_a_store(arg[:colon]):
            return Path(arg[:colon]), arg[colon + 1 :], None
        colon = arg.rfind(":", 0, colon)
    return Path(arg), None, None


@dataclass(frozen=True)
class SourceKind:
    """One kind of path an image can be given as."""

    name: str
    applies: Callable[[Path], bool]
    open: Callable[[Path, IndexCache | None, ArchiveProgress | None], BlobSource]


def _open_directory(
    path: Path, cache: IndexCache | None, progress: ArchiveProgress | None
) -> BlobSource:
    return open_directory(path)


SOURCES: tuple[SourceKind, ...] = (
    SourceKind("directory", Path.is_dir, _open_directory),
    SourceKind("archive", Path.is_file, open_archive),
)

Resolver = Callable[[BlobSource, str | None, str | None, Platform | None], ResolvedImage]

OCI_LAYOUT = "oci-layout"

# What a source holds, by the files that mark it; the first row whose markers are all there
# applies.
FORMATS: tuple[tuple[tuple[str, ...], Resolver], ...] = (
    ((OCI_LAYOUT, dockerarchive.MANIFEST), dockerarchive.resolve_docker25),
    ((OCI_LAYOUT,), layout.resolve),
    ((dockerarchive.MANIFEST,), dockerarchive.resolve),
)


def open_source(
    path: Path, cache: IndexCache | None, progress: ArchiveProgress | None = None
) -> BlobSource:
    """The source at ``path``; LayoutError if it is neither a directory nor a file."""
    for kind in SOURCES:
        try:
            applies = kind.applies(path)
        except OSError:
            applies = False
        if applies:
            logger.debug("%s: a %s", path, kind.name)
            return kind.open(path, cache, progress)
    return open_directory(path)  # which says what the path is instead


def resolve_source(
    source: BlobSource,
    ref: str | None = None,
    digest: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve the image in ``source`` with the resolver of the format it holds."""
    present = {
        marker
        for markers, _ in FORMATS
        for marker in markers
        if sources.find(source, marker, f"{source.path}/{marker}") is not None
    }
    for markers, resolver in FORMATS:
        if present.issuperset(markers):
            return resolver(source, ref, digest, platform)
    raise LayoutError(
        f"{source.path} is not an OCI image layout or a docker-archive:"
        f" it has no {OCI_LAYOUT} and no {dockerarchive.MANIFEST}"
    )


def resolve_arg(
    arg: str,
    platform: Platform | None = None,
    cache: IndexCache | None = None,
    progress: ArchiveProgress | None = None,
) -> ResolvedImage:
    """Resolve ``LAYOUT[:REF|@DIGEST]``: split, open (an archive's member table through
    ``cache``, ``progress`` shown while a gzipped one is read), resolve. LayoutError with one
    line on any problem."""
    path, ref, digest = split_image_arg(arg)
    return resolve_source(open_source(path, cache, progress), ref, digest, platform)
