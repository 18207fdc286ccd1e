"""Something else where ocifs keeps a file of its own (an index-cache file, the daemon's log):
a FIFO, a symlink, a directory, or a good file that another user owns."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

KINDS = ("fifo", "symlink", "directory", "other-uid")
NOBODY = 65534


def put_in_place(path: Path, kind: str) -> None:
    """Replace the file at ``path`` (if there is one) by an impostor of ``kind``. The symlink
    points at a copy of the file, and the other user's file is the file itself: only what
    they are makes them wrong."""
    good = path.read_bytes() if path.is_file() else b""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        copy = path.with_name(path.name + ".elsewhere")
        copy.write_bytes(good)
        path.symlink_to(copy)
    elif kind == "directory":
        path.mkdir()
    elif kind == "other-uid":
        path.write_bytes(good)
        os.chown(path, NOBODY, NOBODY)
    else:
        raise ValueError(kind)


class Hung(Exception):
    """Still waiting when the alarm rang (no OSError: the code under test would take it)."""


@contextlib.contextmanager
def no_hang(what: str, seconds: int = 10) -> Iterator[None]:
    """Fail with Hung if the block takes more than ``seconds`` (a FIFO's open(2) would wait
    forever): SIGALRM interrupts the system call, and the handler's exception ends it."""

    def ring(signum: int, frame: object) -> None:
        raise Hung(f"{what} still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
