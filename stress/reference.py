"""The image's own bytes: ``umoci unpack`` of the image into a directory, and its regular files.

umoci is what the oracle tests trust for the merged tree (whiteouts, opaque directories,
hardlinks), so the stress run compares every read with the file umoci wrote. umoci 0.4.7
(Debian 12) reads no zstd layer: an image with one is first copied by ``skopeo copy
--dest-compress-format gzip`` into a twin whose zstd layers are gzip ones (the same tar
streams: the config and its diff_ids do not change), and the twin is unpacked. An unpacked
reference is kept with a stamp naming the image (its argument and the layout's index.json),
and reused while the stamp matches.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ocifs.mediatypes import REF_NAME

STAMP = "stress-reference.json"
UNPACK_TIMEOUT = 1800.0


class ReferenceError(Exception):
    """The reference could not be made; one line saying why."""


@dataclass(frozen=True)
class File:
    path: str  # relative to the root of the image
    size: int


class Files:
    """The regular files of the reference, to pick from: by count, or by size."""

    def __init__(self, rootfs: Path, files: list[File]) -> None:
        if not files:
            raise ReferenceError(f"{rootfs}: no regular file with data to read")
        self.rootfs = rootfs
        self.files = files
        self.total = sum(file.size for file in files)
        self.ends: list[int] = []
        end = 0
        for file in files:
            end += file.size
            self.ends.append(end)

    def pick(self, rng: random.Random, by_size: bool) -> File:
        if not by_size:
            return rng.choice(self.files)
        return self.files[bisect.bisect_right(self.ends, rng.randrange(self.total))]


def split_image(image: str) -> tuple[Path, str]:
    """``LAYOUT:REF`` into the layout and the ref (umoci needs the ref)."""
    layout, colon, ref = image.rpartition(":")
    if not colon or not layout or not ref or not Path(layout).is_dir():
        raise ReferenceError(f"{image}: not LAYOUT:REF with LAYOUT a layout directory")
    return Path(layout), ref


def stamp_of(image: str) -> dict[str, str]:
    layout, _ = split_image(image)
    index = (layout / "index.json").read_bytes()
    return {"image": image, "index_sha256": hashlib.sha256(index).hexdigest()}


def unpack(image: str, directory: Path) -> Path:
    """The rootfs of ``image`` unpacked by umoci into ``directory`` (reused if stamped)."""
    stamp = stamp_of(image)
    stamp_path = directory / STAMP
    rootfs = directory / "bundle" / "rootfs"
    try:
        if json.loads(stamp_path.read_text()) == stamp and rootfs.is_dir():
            return rootfs
    except (OSError, ValueError):
        pass
    stamp_path.unlink(missing_ok=True)
    for old in ("bundle", "gzip-twin"):
        shutil.rmtree(directory / old, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    unpacked = image
    if has_zstd_layer(image):
        _, ref = split_image(image)
        unpacked = f"{directory / 'gzip-twin'}:{ref}"
        recompress = ["--dest-compress", "--dest-compress-format", "gzip"]
        command(
            "skopeo copy", ["skopeo", "copy", "-q", *recompress, f"oci:{image}", f"oci:{unpacked}"]
        )
    argv = ["umoci", "unpack", "--image", unpacked, str(directory / "bundle")]
    if os.geteuid() != 0:
        argv.insert(2, "--rootless")
    command("umoci unpack", argv)
    shutil.rmtree(directory / "gzip-twin", ignore_errors=True)
    stamp_path.write_text(json.dumps(stamp) + "\n")
    return rootfs


def command(what: str, argv: list[str]) -> None:
    """Run a tool; ReferenceError with the last line it wrote if it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=UNPACK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ReferenceError(f"{what}: {error}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        raise ReferenceError(f"{what}: {lines[-1]}")


def has_zstd_layer(image: str) -> bool:
    """Whether the manifest the ref names in index.json lists a zstd layer (False where the
    ref names something else, such as an index: umoci is left to say what it makes of it)."""
    layout, ref = split_image(image)
    try:
        index = json.loads((layout / "index.json").read_text())
        for entry in index.get("manifests", []):
            if entry.get("annotations", {}).get(REF_NAME) == ref:
                algorithm, digest = entry["digest"].split(":", 1)
                manifest = json.loads((layout / "blobs" / algorithm / digest).read_text())
                layers = manifest.get("layers", [])
                return any("zstd" in layer.get("mediaType", "") for layer in layers)
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return False


def regular_files(rootfs: Path) -> Files:
    """Every regular file of the tree with at least one byte (symlinks are not followed)."""
    found = []
    for top, dirs, names in os.walk(rootfs):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                found.append(File(os.path.relpath(path, rootfs), st.st_size))
    return Files(rootfs, found)
