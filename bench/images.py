"""Build the benchmark's images from what is on this machine, once, and reuse them after.

An image goes to WORKDIR/<name>/layout, with WORKDIR/<name>/build.json saying what was built;
it is reused while build.json matches what would be built. Layers are made with
``tar | gzip -6 -n`` (both layers of an image at once) and written into an OCI layout with
``ocifs.ocibuild.LayoutWriter``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ocifs.mediatypes import OCI_LAYER_GZIP
from ocifs.ocibuild import LayoutWriter, file_sha256, host_platform

from .probes import READ_CHUNK, random_offsets
from .steps import BenchError, last_line

logger = logging.getLogger(__name__)

BUILD_FORMAT = 1
MIB = 1 << 20
IMAGES = ("debian", "large")


@dataclass
class Source:
    path: str  # relative to the layer's root, e.g. "usr/share"
    max_file_size: int | None = None  # leave out bigger regular files
    max_depth: int | None = None  # levels below ``path`` to take (None: all)


@dataclass
class LayerSpec:
    root: str
    sources: list[Source]


@dataclass
class ImageSpec:
    name: str
    layers: list[LayerSpec]
    big_files: list[str] = field(default_factory=list)  # empty: the largest regular file
    generated: dict[str, int] = field(default_factory=dict)  # debian's upper layer files


@dataclass
class Image:
    """A built image as the measurements see it."""

    name: str
    info: dict[str, Any]  # build.json
    layout: Path
    blobs: list[Path]
    files: list[dict[str, Any]]  # path (rootfs-relative), size, offsets

    @property
    def arg(self) -> str:
        return f"{self.layout}:{self.info['ref']}"


def python_root() -> Path:
    """$PYENV_ROOT or ~/.pyenv; else the running Python's prefix, else Debian's python3.X."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    if pyenv.is_dir():
        return pyenv
    prefix = Path(sys.base_prefix)
    if prefix != Path("/usr") and (prefix / "bin").is_dir():
        return prefix
    debian = Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")
    return debian if debian.is_dir() else Path(sysconfig.get_paths()["stdlib"])


def image_specs(workdir: Path) -> dict[str, ImageSpec]:
    """large: /usr/share and the Python root; debian: a small userland and two 64 MiB files."""
    pyroot = str(python_root().resolve()).lstrip("/")
    multiarch = f"usr/lib/{platform.machine()}-linux-gnu"
    large = ImageSpec(
        "large", [LayerSpec("/", [Source("usr/share")]), LayerSpec("/", [Source(pyroot)])]
    )
    base = LayerSpec(
        "/",
        [
            *(Source(name, max_depth=0) for name in ("bin", "sbin", "lib", "lib64")),
            Source("etc"),
            Source("usr/bin", max_file_size=4 * MIB),
            Source("usr/sbin", max_file_size=4 * MIB),
            Source("usr/lib64"),
            Source(multiarch, max_file_size=4 * MIB, max_depth=1),
        ],
    )
    upper = LayerSpec(str(workdir / "debian" / "upper"), [Source("srv")])
    debian = ImageSpec(
        "debian",
        [base, upper],
        big_files=["srv/bench/random.bin", "srv/bench/app.log"],
        generated={"random_bytes": 64 * MIB, "text_bytes": 64 * MIB, "text_seed": 7},
    )
    return {"large": large, "debian": debian}


def collect_members(root: Path, sources: list[Source]) -> tuple[list[str], tuple[int, str]]:
    """The archive members (parents first; no sockets, fifos or devices) and the largest file."""
    members: list[str] = []
    seen: set[str] = set()
    largest = (-1, "")

    def add(rel: str, st: os.stat_result) -> None:
        nonlocal largest
        if rel not in seen:
            seen.add(rel)
            members.append(rel)
            if stat.S_ISREG(st.st_mode) and st.st_size > largest[0]:
                largest = (st.st_size, rel)

    for source in sources:
        try:
            top = os.lstat(root / source.path)
        except FileNotFoundError:
            continue  # not on this machine
        parts = source.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            add(parent, os.lstat(root / parent))
        add(source.path, top)
        if not stat.S_ISDIR(top.st_mode):
            continue
        stack = [(source.path, 0)]
        while stack:
            rel, depth = stack.pop()
            if source.max_depth is not None and depth >= source.max_depth:
                continue
            with os.scandir(root / rel) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
            for entry in entries:
                child = f"{rel}/{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    add(child, st)
                    stack.append((child, depth + 1))
                elif stat.S_ISREG(st.st_mode):
                    if source.max_file_size is None or st.st_size <= source.max_file_size:
                        add(child, st)
                elif stat.S_ISLNK(st.st_mode):
                    add(child, st)
    return members, largest


def build_layer(layer: LayerSpec, number: int, blobs: Path, scratch: Path) -> dict[str, Any]:
    """``tar | gzip -6 -n`` of the layer's members into a blob; diff_id hashed on the way."""
    started = time.monotonic()
    root = Path(layer.root)
    members, largest = collect_members(root, layer.sources)
    if not members:
        raise BenchError(f"nothing to put in layer {number} from {layer.root}")
    names = scratch / f"members-{number}"
    names.write_bytes(b"".join(os.fsencode(member) + b"\0" for member in members))
    staging = blobs / f"staging-{number}.tar.gz"
    tar_argv = [
        "tar",
        "--create",
        "--file=-",
        "--format=gnu",
        f"--directory={root}",
        "--no-recursion",
        "--null",
        "--verbatim-files-from",
        f"--files-from={names}",
    ]
    diff_id = hashlib.sha256()
    tar_bytes = 0
    with (
        staging.open("wb") as blob,
        (scratch / f"tar-{number}.err").open("w+") as tar_err,
        (scratch / f"gzip-{number}.err").open("w+") as gzip_err,
    ):
        gzip = subprocess.Popen(
            ["gzip", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=blob, stderr=gzip_err
        )
        tar = subprocess.Popen(tar_argv, stdout=subprocess.PIPE, stderr=tar_err)
        assert tar.stdout is not None and gzip.stdin is not None
        while chunk := tar.stdout.read(READ_CHUNK):
            diff_id.update(chunk)
            tar_bytes += len(chunk)
            gzip.stdin.write(chunk)
        gzip.stdin.close()
        tar_status, gzip_status = tar.wait(), gzip.wait()
        tar_err.seek(0)
        gzip_err.seek(0)
        # tar's 1 is "some files changed while being read": the layer is still consistent.
        if tar_status not in (0, 1):
            raise BenchError(f"tar exited {tar_status}: {last_line(tar_err.read())}")
        if gzip_status != 0:
            raise BenchError(f"gzip exited {gzip_status}: {last_line(gzip_err.read())}")
    digest = file_sha256(staging)
    os.replace(staging, blobs / digest.split(":", 1)[1])
    names.unlink()
    return {
        "root": layer.root,
        "sources": [source.path for source in layer.sources],
        "entries": len(members),
        "tar_bytes": tar_bytes,
        "blob_bytes": (blobs / digest.split(":", 1)[1]).stat().st_size,
        "digest": digest,
        "diff_id": "sha256:" + diff_id.hexdigest(),
        "largest_file": largest[1],
        "largest_size": largest[0],
        "seconds": round(time.monotonic() - started, 1),
    }


def log_lines(size: int, seed: int) -> bytes:
    """Deterministic web-server-like log lines: gzip makes them several times smaller."""
    rng = random.Random(seed)
    services = ["api", "auth", "billing", "cache", "search", "worker"]
    levels = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN", "ERROR"]
    paths = [
        "/api/v1/items",
        "/api/v1/users",
        "/api/v2/orders",
        "/healthz",
        "/login",
        "/static/app.js",
        "/search",
    ]
    methods = ["GET"] * 6 + ["POST", "PUT", "DELETE"]
    statuses = [200] * 20 + [201, 204, 301, 304, 400, 401, 403, 404, 500, 503]
    out: list[str] = []
    total = 0
    seconds = 0.0
    while total < size:
        seconds += rng.expovariate(40.0)
        day, rest = divmod(int(seconds), 86400)
        hour, rest = divmod(rest, 3600)
        minute, second = divmod(rest, 60)
        millis = int((seconds % 1) * 1000)
        line = (
            f"2024-03-{day % 28 + 1:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z "
            f"host-{rng.randrange(8):02d} {rng.choice(services)}[{rng.randrange(900, 990)}]: "
            f"{rng.choice(levels)} {rng.choice(methods)} {rng.choice(paths)}"
            f"/{rng.randrange(10000)} status={rng.choice(statuses)} "
            f"bytes={rng.randrange(20, 90000)} ms={rng.randrange(1, 400)} "
            f"req={rng.getrandbits(32):08x}\n"
        )
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def generate_upper(root: Path, generated: dict[str, int]) -> None:
    """debian's upper layer: a 64 MiB incompressible file and a 64 MiB compressible one."""
    if root.exists():
        shutil.rmtree(root)
    target = root / "srv" / "bench"
    target.mkdir(parents=True)
    with (target / "random.bin").open("wb") as out:
        left = generated["random_bytes"]
        while left > 0:
            chunk = os.urandom(min(left, 8 * MIB))
            out.write(chunk)
            left -= len(chunk)
    (target / "app.log").write_bytes(log_lines(generated["text_bytes"], generated["text_seed"]))


def spec_key(spec: ImageSpec) -> dict[str, Any]:
    """What build.json must hold for a built image to be reused."""
    return {"format": BUILD_FORMAT, **asdict(spec)}


def layout_complete(layout: Path, info: dict[str, Any]) -> bool:
    if not (layout / "index.json").exists():
        return False
    for layer in info.get("layers", []):
        blob = layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
        if not blob.exists() or blob.stat().st_size != layer["blob_bytes"]:
            return False
    return True


def build_image(spec: ImageSpec, workdir: Path, rebuild: bool) -> dict[str, Any]:
    """Build the image unless the one there matches; its build.json either way."""
    image_dir = workdir / spec.name
    layout = image_dir / "layout"
    info_path = image_dir / "build.json"
    if not rebuild and info_path.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            info: dict[str, Any] = json.loads(info_path.read_text())
            if info.get("spec") == spec_key(spec) and layout_complete(layout, info):
                logger.info(f"{spec.name}: reusing {layout} (--rebuild to build it again)")
                return info
    logger.info(f"{spec.name}: building {layout} ...")
    started = time.monotonic()
    if layout.exists():
        shutil.rmtree(layout)
    image_dir.mkdir(parents=True, exist_ok=True)
    info_path.unlink(missing_ok=True)
    if spec.generated:
        generate_upper(Path(spec.layers[-1].root), spec.generated)
    writer = LayoutWriter(layout)
    blobs = layout / "blobs" / "sha256"
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(build_layer, layer, number, blobs, image_dir)
            for number, layer in enumerate(spec.layers)
        ]
        layers = [future.result() for future in futures]
    manifest = writer.add_image(
        [
            (
                {
                    "mediaType": OCI_LAYER_GZIP,
                    "digest": layer["digest"],
                    "size": layer["blob_bytes"],
                },
                layer["diff_id"],
            )
            for layer in layers
        ],
        ref=spec.name,
        platform=host_platform(),
    )
    writer.save()
    if spec.big_files:
        upper = Path(spec.layers[-1].root)
        big = [{"path": path, "size": (upper / path).stat().st_size} for path in spec.big_files]
    else:
        top = max(layers, key=lambda layer: layer["largest_size"])
        big = [{"path": top["largest_file"], "size": top["largest_size"]}]
    if spec.generated:
        shutil.rmtree(spec.layers[-1].root)
    info = {
        "spec": spec_key(spec),
        "ref": spec.name,
        "layout": str(layout),
        "manifest": manifest["digest"],
        "layers": layers,
        "big_files": big,
        "entries": sum(layer["entries"] for layer in layers),
        "blob_bytes": sum(layer["blob_bytes"] for layer in layers),
        "tar_bytes": sum(layer["tar_bytes"] for layer in layers),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    logger.info(
        f"{spec.name}: built in {info['build_seconds']} s: {info['entries']:,} entries, "
        f"{info['blob_bytes'] / 1e6:.0f} MB gzip, {info['tar_bytes'] / 1e6:.0f} MB tar"
    )
    return info


def prepare_image(name: str, info: dict[str, Any]) -> Image:
    """The built image with its blob paths and, per big file, the offsets of its random reads."""
    layout = Path(info["layout"])
    blobs = [
        layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1] for layer in info["layers"]
    ]
    files = [
        {**file, "offsets": random_offsets(file["path"], file["size"])}
        for file in info["big_files"]
    ]
    return Image(name, info, layout, blobs, files)
