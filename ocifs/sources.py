"""Where an image's documents and blobs are: one small interface over a layout directory and
an archive, which resolution and the layer readers use.

A ``BlobSource`` hands out the files of an image by their path inside it, as ``Blob``s:
``index.json``, ``manifest.json``, ``blobs/sha256/<hex>``, ``<id>/layer.tar``. It has two
implementations: ``DirectorySource``, a directory (an OCI layout, or an unpacked ``docker
save``), and ``ArchiveSource``, the members of an archive file (``archive``) read in place.
Everything above works through ``find``, ``blob`` and ``read_document`` and never asks which one
it has: ``layout`` resolves an OCI layout over either (an oci-archive resolves exactly like a
directory), ``dockerarchive`` resolves a ``manifest.json`` over either. A registry is the next
source to come.

Names come from the image and are not trusted: one that is absolute or has a ``..`` component
never matches (``archive.member_name``), so nothing an image says can open a host path outside
the source. Nor can a directory's symlinks: ``DirectorySource`` follows one only while it stays
inside the directory (``beneath``) and refuses the file, before opening anything, when one
leads out.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .archive import Archive, identify, member_name, read_members
from .beneath import LeadsOut, find_beneath
from .blobs import Blob, FileBlob, NotAFile, Progress
from .errors import LayoutError, show

if TYPE_CHECKING:
    from .indexcache import IndexCache

logger = logging.getLogger(__name__)

MAX_DOCUMENT_SIZE = 4 * 1024 * 1024  # index.json, indexes, manifests, configs (B1)


class BlobSource(Protocol):
    """The files of one image store, by their path inside it."""

    @property
    def path(self) -> Path:
        """The directory or the archive file, as the user named it."""
        ...

    def file(self, name: str) -> Blob | None:
        """The file ``name`` (a path inside the source) as a Blob; None if there is none.
        NotAFile if it is there but is no regular file; OSError if it cannot be looked at."""
        ...


def blob_name(digest: str) -> str:
    """Where a layout keeps the blob ``digest`` (its grammar already checked)."""
    algorithm, hexdigest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hexdigest}"


def find(source: BlobSource, name: str, what: str) -> Blob | None:
    """The file ``name`` of ``source``; None if absent; LayoutError naming ``what`` if it is
    there but no regular file or unreadable."""
    try:
        return source.file(name)
    except NotAFile:
        raise LayoutError(f"{what} is not a regular file") from None
    except LeadsOut as error:
        raise LayoutError(
            f"{what} is refused: {show(error.link)} is a symlink to {show(error.target)},"
            f" out of {source.path}"
        ) from None
    except OSError as error:
        raise LayoutError(f"{what} cannot be read: {error.strerror or error}") from error


def blob(source: BlobSource, digest: str, what: str) -> Blob | None:
    """The blob ``digest`` of a layout (``blobs/<alg>/<hex>``); as ``find``."""
    return find(source, blob_name(digest), what)


def read_blob(found: Blob, limit: int, what: str) -> bytes:
    """All of a small blob, which must be at most ``limit`` bytes (B1)."""
    if found.size > limit:
        raise LayoutError(f"{what} is {found.size} bytes, over the {limit}-byte limit")
    try:
        handle = found.open()
        try:
            data = handle.pread(found.size, 0)
        finally:
            handle.close()
    except OSError as error:
        raise LayoutError(f"{what} cannot be read: {error.strerror or error}") from error
    if len(data) != found.size:
        raise LayoutError(f"{what} is {len(data)} bytes, though {found.size} were expected")
    return data


def read_document(source: BlobSource, name: str, what: str) -> bytes | None:
    """A small file of the source (``index.json``, ``manifest.json``...), capped at
    MAX_DOCUMENT_SIZE; None if there is none."""
    found = find(source, name, what)
    return None if found is None else read_blob(found, MAX_DOCUMENT_SIZE, what)


@dataclass(frozen=True)
class DirectorySource:
    """A directory: an OCI image layout, or a ``docker save`` tar unpacked."""

    path: Path

    def file(self, name: str) -> Blob | None:
        """As BlobSource.file; a symlink on the way is followed only while it stays inside
        the directory (``beneath``: LeadsOut, before anything outside is looked at, if it
        leads out), and the blob is opened without following any symlink."""
        relative = member_name(name)
        if relative is None:
            return None
        found = find_beneath(self.path, relative)
        if found is None:
            return None
        path = self.path / found.relative
        if not stat.S_ISREG(found.stat.st_mode):
            raise NotAFile(f"{path} is not a regular file")
        return FileBlob(path, found.stat.st_size, beneath=self.path)


@dataclass(frozen=True)
class ArchiveSource:
    """The members of an archive file, each a byte range of it (or of its decompressed
    stream), found through the member table read once."""

    archive: Archive

    @property
    def path(self) -> Path:
        return self.archive.path

    def file(self, name: str) -> Blob | None:
        return self.archive.blob(name)


def open_directory(path: Path) -> DirectorySource:
    """A directory source; LayoutError unless ``path`` is a directory."""
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        what = "does not exist" if not os.path.lexists(path) else "is not a directory"
        raise LayoutError(f"{path} is not an OCI image layout: it {what}")
    return DirectorySource(path)


# Given the name and size of an archive about to be read whole, its progress callback.
ArchiveProgress = Callable[[str, int], Progress]


def open_archive(
    path: Path, cache: IndexCache | None, progress: ArchiveProgress | None = None
) -> ArchiveSource:
    """An archive source: its member table from the cache if the cache has one read from the
    file as it is now, else read (once, here) and stored in the cache."""
    identity = identify(path)
    table = cache.load_archive(identity) if cache is not None else None
    if table is None:
        advance = progress(path.name, identity.size) if progress is not None else None
        table = read_members(path, advance)
        # A file that changed while it was read is not cached under what it was before.
        if cache is not None and identify(path) == identity:
            table = cache.store_archive(identity, table)
    else:
        logger.info("%s: member table from the cache (%d members)", path, len(table.members))
    return ArchiveSource(Archive(path, table))
