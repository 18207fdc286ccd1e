"""Snapshot a directory tree entry by entry, without following symlinks, and diff two snapshots.

Used by the oracle test: the tree that ``umoci unpack`` writes to disk and the tree that
ocifs serves for the same image are snapshotted with :func:`snapshot` and compared with
:func:`diff`. Paths are ``bytes`` (relative to the root, the root itself is ``b"."``) so names
that are not valid UTF-8 survive unchanged.

What is compared, per entry:

* file type, ``st_mode & 0o7777`` (permission bits plus setuid/setgid/sticky), uid, gid;
* size of regular files and symlinks, sha256 of regular file content, readlink text;
* major/minor of device nodes;
* every extended attribute (``os.listxattr``/``os.getxattr`` with ``follow_symlinks=False``),
  as a dict name -> bytes value;
* ``st_mtime_ns`` of every entry, directories included (umoci restores directory mtimes
  after extracting each layer, including the mtime of the root from the layer's ``.``
  entry, and it restores a parent's mtime after creating or whiting out a child); the root
  directory's mtime can be left out with ``ignore_root_mtime`` (see :func:`diff`);
* ``st_nlink`` of every entry (for a directory, ext4 under umoci reports 2 + number of
  subdirectories, which is what the conformance checklist asks of ocifs, A11), and the
  hardlink partition: the non-directory paths grouped by ``st_ino``, as a set of frozensets,
  so inode numbers themselves never matter.

What is deliberately not compared (and why):

* ``st_size`` of directories: it is a property of the on-disk format (4096 on ext4), not of
  the image.
* ``st_atime``/``st_ctime``: atime depends on access, ctime is set by the kernel at extraction
  time and cannot be restored; neither is stored in a layer.
* ``st_ino``/``st_dev``/``st_blocks``: storage details; inode identity is compared through
  the hardlink partition instead.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, fields

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Entry:
    """What one path looks like. Fields that do not apply to the file type are ``None``."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime_ns: int | None = None
    nlink: int | None = None


@dataclass
class Snapshot:
    entries: dict[bytes, Entry]
    hardlinks: frozenset[frozenset[bytes]]


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOSYS):
            return {}
        raise
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)}


def entry_of(path: bytes, st: os.stat_result) -> Entry:
    """Describe the entry at ``path`` (already ``lstat``-ed as ``st``)."""
    fmt = stat.S_IFMT(st.st_mode)
    kind = _KINDS.get(fmt, f"unknown({fmt:o})")
    return Entry(
        kind=kind,
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if fmt in (stat.S_IFREG, stat.S_IFLNK) else None,
        sha256=_sha256(path) if fmt == stat.S_IFREG else None,
        target=os.readlink(path) if fmt == stat.S_IFLNK else None,
        rdev=(
            (os.major(st.st_rdev), os.minor(st.st_rdev))
            if fmt in (stat.S_IFCHR, stat.S_IFBLK)
            else None
        ),
        xattrs=_xattrs(path),
        mtime_ns=st.st_mtime_ns,
        nlink=st.st_nlink,
    )


def snapshot(root: str | bytes | os.PathLike[str]) -> Snapshot:
    """Walk ``root`` without following symlinks and describe every entry, root included."""
    base = os.fsencode(root)
    entries: dict[bytes, Entry] = {}
    by_inode: dict[tuple[int, int], set[bytes]] = defaultdict(set)

    def visit(rel: bytes, full: bytes) -> None:
        st = os.lstat(full)
        entries[rel] = entry_of(full, st)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(full) as it:
                children = sorted(e.name for e in it)
            for name in children:
                visit(name if rel == b"." else rel + b"/" + name, full + b"/" + name)
        else:
            by_inode[(st.st_dev, st.st_ino)].add(rel)

    visit(b".", base)
    groups = frozenset(frozenset(g) for g in by_inode.values() if len(g) > 1)
    return Snapshot(entries, groups)


def _show(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return f"{value:#o}"
    return repr(value)


def diff(
    left: Snapshot,
    right: Snapshot,
    *,
    ignore_root_mtime: bool = False,
    ignore_root_fields: Collection[str] = (),
    names: tuple[str, str] = ("left", "right"),
) -> list[str]:
    """Readable differences between two snapshots, one line each; empty list = same tree.

    ``ignore_root_mtime``: leave out the root directory's mtime. Use it when no layer says
    anything about the root (an image without layers: umoci leaves the bundle's ``rootfs``
    at the epoch, while a filesystem has to make something up).
    ``ignore_root_fields``: leave out these :class:`Entry` fields of the root directory
    (``"mode"``, ``"mtime_ns"``...), for a reference whose root is its store's own (a vfs
    layer directory is 0555) when no layer names the root.
    """
    root_skip = set(ignore_root_fields) | ({"mtime_ns"} if ignore_root_mtime else set())
    unknown = root_skip - {fld.name for fld in fields(Entry)}
    assert not unknown, f"no such Entry fields: {sorted(unknown)}"
    out: list[str] = []
    lname, rname = names
    for path in sorted(left.entries.keys() | right.entries.keys()):
        shown = path.decode("utf-8", "backslashreplace")
        a = left.entries.get(path)
        b = right.entries.get(path)
        if a is None:
            out.append(f"{shown}: only in {rname} ({b.kind if b else '?'})")
            continue
        if b is None:
            out.append(f"{shown}: only in {lname} ({a.kind})")
            continue
        for fld in fields(Entry):
            if path == b"." and fld.name in root_skip:
                continue
            va, vb = getattr(a, fld.name), getattr(b, fld.name)
            if va == vb:
                continue
            if fld.name == "xattrs":
                for key in sorted(va.keys() | vb.keys()):
                    if va.get(key) != vb.get(key):
                        out.append(
                            f"{shown}: xattr {key}: {lname} {va.get(key)!r} vs "
                            f"{rname} {vb.get(key)!r}"
                        )
            else:
                shown_a, shown_b = _show(fld.name, va), _show(fld.name, vb)
                out.append(f"{shown}: {fld.name}: {lname} {shown_a} vs {rname} {shown_b}")

    def fmt_group(g: frozenset[bytes]) -> str:
        return "{" + ", ".join(sorted(p.decode("utf-8", "backslashreplace") for p in g)) + "}"

    for g in sorted(left.hardlinks - right.hardlinks, key=sorted):
        out.append(f"hardlink group {fmt_group(g)}: only in {lname}")
    for g in sorted(right.hardlinks - left.hardlinks, key=sorted):
        out.append(f"hardlink group {fmt_group(g)}: only in {rname}")
    return out
