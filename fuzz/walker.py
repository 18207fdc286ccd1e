"""Walk a mount and read everything in it, in a process of its own (``python -m fuzz.walker
MOUNTPOINT STREAMS... > report.json``), so that a hang or a crash here is the fuzzer's to time
out and kill.

The walk goes by directory file descriptors (``openat``-style, one per level of the current
path), so paths longer than PATH_MAX are walked too, and they are reported. For every entry:
``lstat``; ``readlink`` of symlinks (its length must be st_size); ``listxattr`` and
``getxattr`` of every name listed; for regular files a full read up to ``READ_CAP`` (its length
must be st_size), then preads at random offsets compared with what the full read gave. Nothing
is ever opened but regular files and directories, always with O_NOFOLLOW.

Checks that need no expected tree: every byte of a file that is not sparse must occur, as one
run, in one of the layer streams given (the reference decoder's output of each layer: the only
bytes a mount may serve); no content, link target, name or xattr may hold the canary token
(the bytes of the host's canary files). Problems go into the report's "problems" as
``{"kind", "path", "detail"}``; the entries into "entries" (the fields of ``seeds.expected_tree``).
The report is JSON on stdout; progress ("at PATH") goes to stderr, so the last line says where
a walk that hung was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import stat
import sys
from typing import Any

from .mutations import CANARY_TOKEN

READ_CAP = 8 << 20  # bytes of one file read front to back
MAX_ENTRIES = 20_000
MAX_DEPTH = 5_000
PREADS = 6
PATH_MAX = 4096
KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


class Walk:
    def __init__(self, streams: list[bytes]) -> None:
        self.streams = streams
        self.entries: dict[str, dict[str, Any]] = {}
        self.problems: list[dict[str, str]] = []
        self.rng = random.Random(0)
        self.truncated = False

    def problem(self, kind: str, path: bytes, detail: str = "") -> None:
        self.problems.append({"kind": kind, "path": os.fsdecode(path), "detail": detail})

    def failed(self, op: str, path: bytes, error: OSError) -> None:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        self.problem("errno", path, f"{op}: {name}")

    def leak(self, what: str, path: bytes, data: bytes) -> None:
        if CANARY_TOKEN in data:
            self.problem("leak", path, f"the canary token in its {what}")

    def walk(self, root: str) -> None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.describe(b"", None, fd)
            self.directory(fd, b"", 0)
        finally:
            os.close(fd)

    def directory(self, fd: int, path: bytes, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.truncated = True
            self.problem("deep", path, f"deeper than {MAX_DEPTH} levels: not walked further")
            return
        try:
            names = sorted(os.listdir(fd))
        except OSError as error:
            self.failed("readdir", path, error)
            return
        for text in names:
            if len(self.entries) >= MAX_ENTRIES:
                self.truncated = True
                return
            name = os.fsencode(text)
            child = path + b"/" + name if path else name
            self.leak("name", child, name)
            mode = self.describe(child, name, fd)
            if mode is not None and stat.S_ISDIR(mode):
                try:
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as error:
                    self.failed("open dir", child, error)
                    continue
                try:
                    self.directory(sub, child, depth + 1)
                finally:
                    os.close(sub)

    def describe(self, path: bytes, name: bytes | None, dir_fd: int) -> int | None:
        """Record one entry (``name`` in ``dir_fd``; None: the directory itself)."""
        print(f"at {os.fsdecode(path)[-300:]}", file=sys.stderr, flush=True)
        if len(path) + 1 > PATH_MAX:
            self.problem("long-path", path[:200], f"{len(path)} bytes")
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if name else os.fstat(dir_fd)
        except OSError as error:
            self.failed("lstat", path, error)
            return None
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
        entry: dict[str, Any] = {
            "type": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": int(st.st_mtime),
        }
        key = os.fsdecode(path)
        self.entries[key] = entry
        # Through /proc/self/fd the xattr calls reach entries whose full path is too long.
        where = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}" if name else f"/proc/self/fd/{dir_fd}"
        self.xattrs(entry, path, where)
        if kind == "symlink" and name:
            self.link(entry, path, name, dir_fd, st)
        elif kind in ("char", "block"):
            entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        elif kind == "file" and name:
            self.file(entry, path, name, dir_fd, st)
        return st.st_mode

    def xattrs(self, entry: dict[str, Any], path: bytes, where: str) -> None:
        try:
            names = os.listxattr(where, follow_symlinks=False)
        except OSError as error:
            self.failed("listxattr", path, error)
            return
        values = {}
        for xname in names:
            self.leak("xattr name", path, os.fsencode(xname))
            try:
                value = os.getxattr(where, xname, follow_symlinks=False)
            except OSError as error:
                self.failed(f"getxattr {xname[:100]!r}", path, error)
                continue
            self.leak("xattr value", path, value)
            values[xname] = value.hex()
        if values:
            entry["xattrs"] = values

    def link(
        self, entry: dict[str, Any], path: bytes, name: bytes, dir_fd: int, st: os.stat_result
    ) -> None:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError as error:
            self.failed("readlink", path, error)
            return
        data = os.fsencode(target)
        self.leak("link target", path, data)
        entry["target"] = os.fsdecode(target)
        if len(data) != st.st_size:
            self.problem(
                "inconsistent", path, f"readlink gave {len(data)} bytes, st_size {st.st_size}"
            )

    def file(
        self, entry: dict[str, Any], path: bytes, name: bytes, dir_fd: int, st: os.stat_result
    ) -> None:
        entry["size"] = st.st_size
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as error:
            self.failed("open", path, error)
            return
        try:
            data = self.read(fd, path, min(st.st_size, READ_CAP))
            if data is None:
                return
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            self.leak("content", path, data)
            if len(data) != min(st.st_size, READ_CAP):
                self.problem("short-read", path, f"{len(data)} bytes of {st.st_size}")
            self.preads(fd, path, data, st.st_size)
            sparse = st.st_blocks * 512 < st.st_size
            if data and not sparse and not any(data in stream for stream in self.streams):
                self.problem("wrong-bytes", path, f"its {len(data)} bytes are in no layer stream")
        finally:
            os.close(fd)

    def read(self, fd: int, path: bytes, size: int) -> bytes | None:
        out = bytearray()
        try:
            while len(out) < size:
                piece = os.read(fd, min(1 << 20, size - len(out)))
                if not piece:
                    break
                out += piece
        except OSError as error:
            self.failed(f"read at {len(out)}", path, error)
            return None
        return bytes(out)

    def preads(self, fd: int, path: bytes, data: bytes, size: int) -> None:
        for _ in range(PREADS if size else 0):
            offset = self.rng.randrange(size)
            length = self.rng.choice([1, 100, 4096, 70_000, 300_000])
            try:
                got = os.pread(fd, length, offset)
            except OSError as error:
                self.failed(f"pread at {offset}", path, error)
                return
            if offset + len(got) <= len(data) and got != data[offset : offset + len(got)]:
                self.problem("wrong-bytes", path, f"pread at {offset} differs from the full read")
                return
            if len(got) != min(length, size - offset):
                self.problem("short-read", path, f"pread of {length} at {offset} gave {len(got)}")


def main(argv: list[str]) -> int:
    root, *stream_paths = argv
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, MAX_DEPTH + 100), hard))
    sys.setrecursionlimit(MAX_DEPTH * 3 + 1000)
    streams = []
    for stream_path in stream_paths:
        with open(stream_path, "rb") as stream:
            streams.append(stream.read())
    walk = Walk(streams)
    try:
        walk.walk(root)
    except OSError as error:
        walk.failed("walk", b"", error)
    report = {"entries": walk.entries, "problems": walk.problems, "truncated": walk.truncated}
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
