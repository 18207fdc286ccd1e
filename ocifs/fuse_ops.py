"""The pyfuse3 adapter: a protocol translation between the kernel and ``image.Image`` only.

Rules it keeps: only FUSEError leaves a handler (anything else would end the mount); inode
numbers are the tree's, fixed for the life of the mount; file reads, which may decompress, run
in a worker thread so a slow read never stalls ``ls``; everything is read-only, and since the
image never changes, the kernel may cache entries, attributes and pages for as long as it likes.

With ``provenance`` (``-o provenance``), every inode also has the read-only xattr
``user.ocifs.layer``: the position and digest of the layer of the entry that made it, such as
``2 sha256:3f2a...`` (a directory: the entry that last set its attributes, or the layer that
implied it). The kernel lets no one read a ``user.*`` xattr of a symlink, a device or a fifo
(fs/xattr.c answers ENODATA without asking the filesystem), so there it is not listed; the
same value is ``trusted.ocifs.layer`` on every inode, listed and readable for root only.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .errors import show
from .image import Image
from .layerread import DamagedLayer
from .tree import Inode

logger = logging.getLogger(__name__)

CACHE_TIMEOUT = 24 * 3600.0  # the image is immutable: cache names and attributes for a day
ST_BLKSIZE = 4096  # the I/O size stat and statfs report
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
PROVENANCE_XATTR = b"user.ocifs.layer"
TRUSTED_PROVENANCE_XATTR = b"trusted.ocifs.layer"

# Reads served at once, each in a thread: each holds up to a block it inflates or is handed
# (256 KiB) and its reply, about 0.6 MiB beside the read cache and the cursors. trio's own
# limit is 40 threads; under scripts/stress's 16 readers the daemon ran at most 20 threads,
# and the cap changed neither the reads done nor the peak RSS (README, "Memory under load"),
# while a burst (readahead of many files at once) now holds about 10 MiB, not 25.
READ_THREADS = 16

# Whether this pyfuse3 lets opendir return a FileInfo that asks the kernel to cache listings
# (FOPEN_CACHE_DIR). Released pyfuse3 (3.5.0) does not: opendir returns only a handle, so every
# `find` on a mount asks for every listing again. See the README's "find" section.
CACHE_READDIR = hasattr(pyfuse3.FileInfo(), "cache_readdir")

P = ParamSpec("P")
T = TypeVar("T")


def handler(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn any unexpected exception into EIO, logged, so that the mount stays up."""

    name = method.__name__

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s%r", name, args[1:])
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            logger.exception("%s failed", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class ImageOperations(pyfuse3.Operations):
    """Serves one ``Image`` read-only."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        image: Image,
        before_first_read: Callable[[], None] | None = None,
        provenance: bool = False,
    ) -> None:
        super().__init__()
        self.image = image
        self.tree = image.tree
        # The provenance xattr's value for each number the tree's ``layer`` column holds.
        self.provenance = (
            {
                number: f"{layer.position} {layer.digest}".encode()
                for number, layer in enumerate(image.layers)
            }
            if provenance
            else None
        )
        # Mount tuning that must wait until the kernel has taken the INIT reply (see daemon).
        self.before_first_read = before_first_read
        self.read_threads: trio.CapacityLimiter | None = None  # made in the serving loop

    def _read_limiter(self) -> trio.CapacityLimiter:
        if self.read_threads is None:
            self.read_threads = trio.CapacityLimiter(READ_THREADS)
        return self.read_threads

    def _inode(self, inode: int) -> Inode:
        try:
            return self.tree.inode(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        """A new EntryAttributes for ``ino``, a number the tree gave out."""
        entry = pyfuse3.EntryAttributes()
        entry.generation = 0
        entry.entry_timeout = CACHE_TIMEOUT
        entry.attr_timeout = CACHE_TIMEOUT
        entry.st_blksize = ST_BLKSIZE
        self.fill_attributes(entry, ino)
        return entry

    def fill_attributes(self, entry: pyfuse3.EntryAttributes, ino: int) -> None:
        """Set what differs from inode to inode, straight from the tree's columns (readdir
        reuses one EntryAttributes for a whole reply: readdir_reply copies it at once)."""
        tree = self.tree
        size = tree.size[ino]
        sparse = tree.sparse.get(ino)
        stored = size if sparse is None else sum(length for _, length in sparse)
        entry.st_ino = ino
        entry.st_mode = tree.mode[ino]
        entry.st_nlink = tree.nlink[ino]
        entry.st_uid = tree.uid[ino]
        entry.st_gid = tree.gid[ino]
        entry.st_rdev = tree.rdev[ino]
        entry.st_size = size
        entry.st_blocks = (stored + 511) // 512  # holes of sparse files take none, as du expects
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = tree.mtime_ns[ino]

    @handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        found = self.tree.lookup(parent_inode, name)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(found)

    @handler
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Inodes live as long as the mount, so there is nothing to let go of."""

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not 0 < inode <= len(self.tree):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(inode)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._inode(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target  # byte for byte, never followed (A1)

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> Any:
        """The directory's inode as its handle; where pyfuse3 lets opendir say so, also
        FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE: the kernel keeps each listing in the page cache
        and serves every later readdir of the directory from there, without a request.

        Any, not int: a pyfuse3 with ``FileInfo.cache_readdir`` takes a FileInfo here too,
        and pyfuse3's own stubs only know the int.
        """
        if not self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR if 0 < inode <= len(self.tree) else errno.ENOENT)
        if CACHE_READDIR:
            return pyfuse3.FileInfo(fh=inode, keep_cache=True, cache_readdir=True)  # type: ignore[call-arg]
        return inode

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 0 is ".", 1 is "..", 2 + i is the i-th child; next_id is the one after.
        # The hot loop of `find` and `ls -R`, with every entry's attributes (readdirplus):
        # one EntryAttributes serves the whole reply (readdir_reply copies it at once), and
        # the tree's columns are read in place, about a fifth faster than fill_attributes.
        tree = self.tree
        entry = self.attributes(fh)
        for next_id, (name, ino) in enumerate(
            [(b".", fh), (b"..", tree.parent_of(fh))][start_id:], start=start_id + 1
        ):
            self.fill_attributes(entry, ino)
            if not pyfuse3.readdir_reply(token, name, entry, next_id):
                return
        mode, nlink, uid, gid = tree.mode, tree.nlink, tree.uid, tree.gid
        rdev, size, mtime_ns, sparse = tree.rdev, tree.size, tree.mtime_ns, tree.sparse
        names, child_name, child_ino = tree.names, tree.child_name, tree.child_ino
        first = tree.first_child[fh]
        start = max(start_id - 2, 0)
        for index in range(first + start, first + tree.child_count[fh]):
            ino = child_ino[index]
            stored = size[ino]
            entry.st_ino = ino
            entry.st_mode = mode[ino]
            entry.st_nlink = nlink[ino]
            entry.st_uid = uid[ino]
            entry.st_gid = gid[ino]
            entry.st_rdev = rdev[ino]
            entry.st_size = stored
            if sparse and ino in sparse:  # as in fill_attributes: holes take no blocks
                stored = sum(length for _, length in sparse[ino])
            entry.st_blocks = (stored + 511) // 512
            entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = mtime_ns[ino]
            name = names[child_name[index] : child_name[index + 1]]
            if not pyfuse3.readdir_reply(token, name, entry, index - first + 3):
                return

    @handler
    async def releasedir(self, fh: int) -> None:
        pass

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
        if self.before_first_read is not None:
            hook, self.before_first_read = self.before_first_read, None
            await trio.to_thread.run_sync(hook)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # pyfuse3 replies from any contiguous buffer (fuse_read_async: PyObject_GetBuffer,
        # PyBUF_CONTIG_RO), though its stub says bytes: a tar layer's read is served as a
        # view of what the reader read, uncopied.
        node = self._inode(fh)
        try:
            return await trio.to_thread.run_sync(
                self.image.read, node, off, size, limiter=self._read_limiter()
            )
        except DamagedLayer as error:
            layer = self.image.layers[node.layer].describe()
            logger.error(
                "EIO: read of %s (inode %d) at offset %d, %d bytes, from %s: %s",
                show(self.tree.path_of(fh)),
                fh,
                off,
                size,
                layer,
                str(error).removeprefix(f"{layer}: "),  # the readers name the layer too
            )
            raise pyfuse3.FUSEError(errno.EIO) from None

    @handler
    async def release(self, fh: int) -> None:
        pass

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._inode(inode)
        if self.provenance is not None and name in (PROVENANCE_XATTR, TRUSTED_PROVENANCE_XATTR):
            value = self.provenance.get(node.layer)
            if value is not None:  # the kernel asks for trusted.* for privileged callers only
                return value
        xattrs = node.xattrs
        if xattrs is None or name not in xattrs:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return xattrs[name]

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = self._inode(inode)
        names = list(node.xattrs or ())
        if self.provenance is not None and node.layer in self.provenance:
            names = [n for n in names if n not in (PROVENANCE_XATTR, TRUSTED_PROVENANCE_XATTR)]
            if stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode):
                names.append(PROVENANCE_XATTR)  # the kernel hides user.* of other types
            if ctx.uid == 0:
                names.append(TRUSTED_PROVENANCE_XATTR)
        return names

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = ST_BLKSIZE
        data.f_blocks = (self.tree.file_bytes + ST_BLKSIZE - 1) // ST_BLKSIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.tree)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # Every way of changing the tree: the mount is read-only (the kernel says so first, with ro).

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only
