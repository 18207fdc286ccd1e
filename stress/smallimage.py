"""The small image the stress run builds when no other is given: three layers, seeded contents.

A gzip base layer of many files (text that compresses, bytes that do not, a few empty ones,
sizes from a byte to a few MiB) and a big log file; a zstd layer (one frame, as ``zstd``
writes it) that replaces some of them, deletes others with whiteouts and adds a big file;
a gzip top layer that replaces a directory with an opaque one. About 100 MiB of files (42 at
``scale`` 0.4, the suite's), so that a 16 MiB read cache is read through many times. Built
with ``tarfile`` and ``ocifs.ocibuild``; the same seed gives the same layout, byte for byte.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from ocifs.ocibuild import LayoutWriter, host_platform

REF = "stress"
MTIME = 1_700_000_000
MIB = 1 << 20
TEXT_LINES = 4096
MIN_LINE = 43  # 8 hex digits, 8 words of 3 characters or more, a number, spaces, newline


def text(rng: random.Random, size: int) -> bytes:
    """Log-like lines: gzip and zstd make them several times smaller. Drawn from a few
    thousand lines made first (more than a deflate window holds, so gzip still has work):
    making every line anew took a minute for the image's 60 MiB."""
    words = ["GET", "POST", "/api/v1/items", "status=200", "ms=12", "host-03", "cache", "miss"]
    lines = [
        f"{rng.getrandbits(32):08x} {' '.join(rng.choices(words, k=8))} {rng.randrange(10**6)}\n"
        for _ in range(TEXT_LINES)
    ]
    out = "".join(rng.choices(lines, k=size // MIN_LINE + 1)).encode()
    return out[:size]


def noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


class TarWriter:
    """One layer's tar stream, in memory."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.TarFile(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()

    def directory(self, path: str) -> None:
        parts = path.split("/")
        for end in range(1, len(parts) + 1):
            name = "/".join(parts[:end])
            if name not in self.dirs:
                self.dirs.add(name)
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                self.tar.addfile(info)

    def file(self, path: str, data: bytes) -> None:
        if "/" in path:
            self.directory(path.rsplit("/", 1)[0])
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), 0o644, MTIME
        self.tar.addfile(info, io.BytesIO(data))

    def whiteout(self, path: str) -> None:
        head, _, name = path.rpartition("/")
        self.file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"")

    def finish(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def sizes(rng: random.Random, count: int) -> list[int]:
    """Mostly small files, some of a few hundred KiB, a few of MiBs; a few empty."""
    result = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.05:
            result.append(0)
        elif kind < 0.7:
            result.append(rng.randrange(1, 16 << 10))
        elif kind < 0.95:
            result.append(rng.randrange(16 << 10, 512 << 10))
        else:
            result.append(rng.randrange(512 << 10, 4 * MIB))
    return result


def build(layout: Path, seed: int = 11, scale: float = 1.0) -> str:
    """Write the image into the layout directory ``layout``; returns ``LAYOUT:REF``.
    ``scale`` shrinks (or grows) the number of files and the big files' sizes alike: the
    suite's short run builds a smaller one, quicker to make, unpack and index."""
    rng = random.Random(seed)
    count = max(60, round(400 * scale))
    base = TarWriter()
    names = []
    for number, size in enumerate(sizes(rng, count)):
        name = f"data/d{number % 12:02d}/f{number:03d}.{'txt' if number % 3 else 'bin'}"
        base.file(name, text(rng, size) if number % 3 else noise(rng, size))
        names.append(name)
    base.file("srv/app.log", text(rng, round(24 * MIB * scale)))
    base.file("srv/opaque/old.txt", text(rng, 5000))
    middle = TarWriter()
    for name in rng.sample(names, count // 10):
        middle.whiteout(name)
    for name in rng.sample(names, count // 10):
        middle.file(name, text(rng, rng.randrange(1, 256 << 10)))
    middle.file("srv/random.bin", noise(rng, round(16 * MIB * scale)))
    top = TarWriter()
    top.directory("srv/opaque")
    top.file("srv/opaque/.wh..wh..opq", b"")
    top.file("srv/opaque/new.txt", text(rng, 300 << 10))
    top.file("srv/top.bin", noise(rng, 3 * MIB))
    writer = LayoutWriter(layout)
    layers = [
        writer.add_layer(base.finish(), "gzip"),
        writer.add_layer(middle.finish(), "zstd"),
        writer.add_layer(top.finish(), "gzip"),
    ]
    writer.add_image(layers, ref=REF, platform=host_platform())
    writer.save()
    return f"{layout}:{REF}"
