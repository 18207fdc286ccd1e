"""Files of a directory by a path that may not lead out of it: how a layout directory's
documents and blobs are looked up and opened.

Nothing in an image may make ocifs touch a host path, and a layout directory is part of the
image: a blob ``blobs/sha256/<hex>`` (or ``blobs``, ``blobs/sha256``, ``index.json``,
``oci-layout``, a ``docker save``'s ``<id>/layer.tar``) can be a symlink, and one pointing out
of the directory would be opened, hashed and only then refused on its digest; a FIFO there
would block the open. So a path is walked here one component at a time from the directory,
with ``lstat`` and ``readlink`` on descriptors (``dir_fd``), never through a symlink the kernel
follows:

* A symlink whose target stays inside the directory is followed (by this walk, up to
  ``MAX_LINKS``): ``docker save`` writes ``<id>/layer.tar`` as ``../<id2>/layer.tar`` where
  two images share a layer, and Docker 25+ as ``../blobs/sha256/<hex>``; such links are
  harmless. umoci's layout engine (``oci/cas/dir``) opens ``filepath.Join(root, blobPath)``
  and so follows every symlink, inside or out; ocifs keeps the inside ones only.
* A symlink whose target leaves the directory (an absolute target elsewhere, or ``..`` above
  it) is ``LeadsOut``, raised before anything outside is looked at, not even with ``lstat``.
* What the walk finds is a path with no symlink in it, which ``open_beneath`` opens by an
  ``openat`` chain with ``O_NOFOLLOW`` on every component (and ``O_NONBLOCK`` on the last,
  so a FIFO put there later never blocks): a component swapped for a symlink between the
  walk and an open (TOCTOU) fails that open with ELOOP or ENOTDIR instead of leading out.

The directory itself is taken as the user named it: a symlink in its own path is the user's.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_LINKS = 40  # symlinks followed for one path, as the kernel's MAXSYMLINKS

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LeadsOut(OSError):
    """A path of the directory that a symlink leads out of it."""

    def __init__(self, link: str, target: str) -> None:
        super().__init__(errno.EXDEV, f"{link} is a symlink to {target}, out of the directory")
        self.link = link  # the symlink, relative to the directory
        self.target = target  # its target text, as it is


@dataclass(frozen=True)
class Found:
    """A file of the directory: its path from it with no symlink in it, and its lstat."""

    relative: str
    stat: os.stat_result


def find_beneath(root: Path, relative: str) -> Found | None:
    """The file at ``relative`` (a clean relative path, no ``..``) of the directory ``root``,
    symlinks inside it followed; None if there is nothing there (or a component on the way is
    no directory). LeadsOut if a symlink leads out, OSError(ELOOP) after MAX_LINKS links."""
    tops = {os.path.realpath(root), str(Path(root).absolute())}  # as an absolute link names it
    pending = _components(relative)[::-1]  # a stack: the next component last
    done: list[str] = []
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    links = 0
    link = target = ""  # the last symlink followed, for LeadsOut
    try:
        while pending:
            part = pending.pop()
            if part == "..":  # only from a link's target: member names hold none
                if not done:  # a link to the top, then '..' the target check did not see
                    raise LeadsOut(link, target)
                done.pop()
                os.close(fds.pop())
                continue
            try:
                st = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise OSError(
                        errno.ELOOP, f"too many levels of symbolic links (over {MAX_LINKS})"
                    )
                target = os.readlink(part, dir_fd=fds[-1])
                link = "/".join([*done, part])
                rest = _inside(tops, done, target)
                if rest is None:
                    raise LeadsOut(link, target)
                if os.path.isabs(target):  # an absolute target inside: walk it from the top
                    while done:
                        done.pop()
                        os.close(fds.pop())
                pending.extend(rest[::-1])
                continue
            if not pending:
                return Found("/".join([*done, part]), st)
            if not stat.S_ISDIR(st.st_mode):
                return None  # as NotADirectoryError
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            done.append(part)
        return Found("/".join(done), os.fstat(fds[-1]))  # a link led to a directory
    finally:
        for fd in fds:
            os.close(fd)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _inside(tops: set[str], done: list[str], target: str) -> list[str] | None:
    """The components a symlink in ``done`` (a directory of the root, by its components)
    whose text is ``target`` adds to the walk, or None if it leads out of the root; worked
    out on the text alone, as every directory in ``done`` is a real one (no symlink). An
    absolute target must start with one of ``tops``, the root's paths."""
    if os.path.isabs(target):
        top = next((t for t in tops if target == t or target.startswith(t.rstrip("/") + "/")), None)
        if top is None:
            return None
        start: list[str] = []
        parts = _components(target[len(top) :])
    else:
        start, parts = list(done), _components(target)
    depth = len(start)
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return None
    return parts


def open_beneath(root: Path, relative: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor on ``relative`` of ``root``, a path ``find_beneath`` returned, opened with
    ``O_NOFOLLOW`` on every component and ``O_NONBLOCK`` on the last: any symlink on the way
    fails the open (ELOOP, ENOTDIR) rather than lead elsewhere."""
    *directories, last = _components(relative)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in directories:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(
            last, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=fd
        )
    finally:
        os.close(fd)
