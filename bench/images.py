"""Build the benchmark's images from what is on this machine, once, and reuse them after.

An image goes to WORKDIR/<name>/layout (a tarball: WORKDIR/<name>/image.tar), with
WORKDIR/<name>/build.json saying what was built; it is reused while build.json matches what
would be built. The gzip images' layers are made with ``tar | gzip -6 -n`` (both layers of an
image at once) and written into an OCI layout with ``ocifs.ocibuild.LayoutWriter``; the other
formats are derived from a gzip image with ``skopeo copy`` (see ``formats``), and checked to
be what their format says (frames, annotations, the same diff_ids).
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
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ocifs.mediatypes import OCI_LAYER_GZIP
from ocifs.ocibuild import LayoutWriter, file_sha256, host_platform, sha256_digest

from .formats import BASE_FORMAT, FORMATS, Format, format_of
from .probes import READ_CHUNK, random_offsets
from .steps import BenchError, checked, last_line
from .zstdframes import describe_file

logger = logging.getLogger(__name__)

BUILD_FORMAT = 1
DERIVE_FORMAT = 2  # bump when derive_image's output changes
MIB = 1 << 20
BASES = ("debian", "large")
# Every image: each gzip image, then what is derived from it ("large-zstd", ...).
IMAGES = tuple(base + format.suffix for base in BASES for format in FORMATS.values())
ARCHIVE_REPOSITORY = "ocifs-bench"  # docker-archive tags are ocifs-bench/<base>:latest


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
class DerivedSpec:
    """An image made from a gzip image by ``skopeo copy``: same tree, another format."""

    name: str
    base: str
    format: str


@dataclass
class Image:
    """A built image as the measurements see it."""

    name: str
    info: dict[str, Any]  # build.json
    layout: Path  # the layout directory, or the tarball
    blobs: list[Path]  # the files a mount reads: the layer blobs, or the tarball
    files: list[dict[str, Any]]  # path (rootfs-relative), size, offsets
    base: Image | None = None  # the gzip image it was derived from

    @property
    def format(self) -> Format:
        return format_of(self.info)

    @property
    def arg(self) -> str:
        # The tarball holds one image: no REF needed.
        return str(self.layout) if self.format.archive else f"{self.layout}:{self.info['ref']}"


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
        "format": BASE_FORMAT.name,
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


def derived_specs() -> dict[str, DerivedSpec]:
    """Every image derived from a gzip one, by name: large-zstd, large-chunked, large-docker..."""
    return {
        base + format.suffix: DerivedSpec(base + format.suffix, base, format.name)
        for base in BASES
        for format in FORMATS.values()
        if format.skopeo is not None
    }


def skopeo_argv(spec: DerivedSpec, base_info: dict[str, Any], target: Path) -> list[str]:
    """``skopeo copy`` from the gzip image's layout to the derived layout or tarball."""
    format = FORMATS[spec.format]
    assert format.skopeo is not None
    source = f"oci:{base_info['layout']}:{base_info['ref']}"
    if format.archive:
        destination = f"docker-archive:{target}:{ARCHIVE_REPOSITORY}/{spec.base}:latest"
    else:
        destination = f"oci:{target}:{spec.name}"
    # --insecure-policy: a local copy between our own files; the machine's policy.json
    # (which may reject everything) is not the point here.
    return ["skopeo", "copy", "--quiet", "--insecure-policy", *format.skopeo, source, destination]


def derived_key(spec: DerivedSpec, base_info: dict[str, Any], skopeo: str) -> dict[str, Any]:
    """What build.json must hold for a derived image to be reused: the same gzip image,
    command and skopeo."""
    target = Path("TARGET")
    return {
        "format": BUILD_FORMAT,
        "derive_format": DERIVE_FORMAT,
        **asdict(spec),
        "base_manifest": base_info["manifest"],
        "argv": skopeo_argv(spec, base_info, target),
        "skopeo": skopeo,
    }


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def layout_layers(layout: Path, ref: str) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The manifest digest, layer descriptors and diff_ids of ``ref`` in a layout skopeo wrote."""
    index = load_json(layout / "index.json")
    named = [
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    if len(named) != 1:
        raise BenchError(f"{layout}: {len(named)} manifests named {ref}")
    blobs = layout / "blobs" / "sha256"
    digest = named[0]["digest"]
    manifest = load_json(blobs / digest.split(":", 1)[1])
    config = load_json(blobs / manifest["config"]["digest"].split(":", 1)[1])
    layers = [
        {
            "digest": layer["digest"],
            "blob_bytes": layer["size"],
            "media_type": layer["mediaType"],
            "annotations": layer.get("annotations", {}),
            "zstd": describe_file(blobs / layer["digest"].split(":", 1)[1]),
        }
        for layer in manifest["layers"]
    ]
    return digest, layers, list(config["rootfs"]["diff_ids"])


def archive_layers(archive: Path) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The config digest, layer members (offset, size) and diff_ids of a docker-archive
    tarball holding one image."""
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}

        def read(name: str) -> Any:
            member = tar.extractfile(members[name])
            if member is None:
                raise BenchError(f"{archive}: {name} is not a file")
            return json.loads(member.read())

        manifest = read("manifest.json")
        if len(manifest) != 1:
            raise BenchError(f"{archive}: {len(manifest)} images, not one")
        config = read(manifest[0]["Config"])
        layers = [
            {
                "member": name,
                "offset": members[name].offset_data,
                "blob_bytes": members[name].size,
                "repo_tags": manifest[0].get("RepoTags", []),
            }
            for name in manifest[0]["Layers"]
        ]
    return "sha256:" + Path(manifest[0]["Config"]).stem, layers, list(config["rootfs"]["diff_ids"])


def stream_digest(
    decompress: tuple[str, ...], blob: Path, layer: dict[str, Any]
) -> tuple[str, int]:
    """The sha256 and length of a derived layer's tar stream, as a mount reads it.

    ``decompress`` writes it to stdout; with none, it is the layer's byte range of the blob.
    """
    digest = hashlib.sha256()
    total = 0
    if not decompress:
        with blob.open("rb") as file:
            file.seek(layer["offset"])
            left = layer["blob_bytes"]
            while left and (chunk := file.read(min(READ_CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
                total += len(chunk)
        return "sha256:" + digest.hexdigest(), total
    with subprocess.Popen(
        [*decompress, str(blob)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        while chunk := process.stdout.read(READ_CHUNK):
            digest.update(chunk)
            total += len(chunk)
        error = process.stderr.read().decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"{' '.join(decompress)} exited {process.returncode}: {last_line(error)}")
    return "sha256:" + digest.hexdigest(), total


def write_blob(layout: Path, document: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(document, indent=1).encode()
    digest = sha256_digest(data)
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def rewrite_diff_ids(layout: Path, ref: str, diff_ids: list[str]) -> str:
    """Give the image ``ref`` a config with these diff_ids (a new config, manifest and index
    entry; the layers stay as written); the new manifest's digest."""
    index = load_json(layout / "index.json")
    entry = next(
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    )
    blobs = layout / "blobs" / "sha256"
    manifest = load_json(blobs / entry["digest"].split(":", 1)[1])
    config = load_json(blobs / manifest["config"]["digest"].split(":", 1)[1])
    config["rootfs"]["diff_ids"] = diff_ids
    manifest["config"] |= write_blob(layout, config)
    entry |= write_blob(layout, manifest)
    (layout / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return str(entry["digest"])


def files_complete(info: dict[str, Any]) -> bool:
    """Every file a derived image's mount reads is there, at its size."""
    files = info.get("blob_files", [])
    return bool(files) and all(
        Path(file["path"]).is_file() and Path(file["path"]).stat().st_size == file["bytes"]
        for file in files
    )


def derive_image(
    spec: DerivedSpec, base_info: dict[str, Any], workdir: Path, rebuild: bool
) -> dict[str, Any]:
    """Derive the image from its gzip image unless the one there matches; its build.json."""
    format = FORMATS[spec.format]
    image_dir = workdir / spec.name
    target = image_dir / ("image.tar" if format.archive else "layout")
    info_path = image_dir / "build.json"
    _, version = checked(["skopeo", "--version"], "skopeo --version", timeout=60)
    key = derived_key(spec, base_info, version.stdout.strip())
    if not rebuild and info_path.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            info: dict[str, Any] = load_json(info_path)
            if info.get("spec") == key and files_complete(info):
                logger.info(f"{spec.name}: reusing {target} (--rebuild to build it again)")
                return info
    argv = skopeo_argv(spec, base_info, target)
    logger.info(f"{spec.name}: deriving {target} from {spec.base}: $ {' '.join(argv)}")
    started = time.monotonic()
    image_dir.mkdir(parents=True, exist_ok=True)
    info_path.unlink(missing_ok=True)
    if target.is_dir():
        shutil.rmtree(target)
    target.unlink(missing_ok=True)
    checked(argv, "skopeo copy")
    if format.archive:
        digest, layers, diff_ids = archive_layers(target)
        blob_files = [target]
        layer_blobs = [target] * len(layers)  # each layer a byte range of the tarball
    else:
        digest, layers, diff_ids = layout_layers(target, spec.name)
        blob_files = layer_blobs = [
            target / "blobs" / "sha256" / layer["digest"].split(":", 1)[1] for layer in layers
        ]
    base_layers = base_info["layers"]
    if diff_ids != [layer["diff_id"] for layer in base_layers]:
        raise BenchError(f"{spec.name}: skopeo changed the diff_ids of {spec.base}")
    corrected: list[dict[str, Any]] = []
    for number, (layer, base, blob) in enumerate(
        zip(layers, base_layers, layer_blobs, strict=True)
    ):
        stream, tar_bytes = stream_digest(format.decompress, blob, layer)
        layer.update(
            diff_id=stream,
            entries=base["entries"],
            tar_bytes=tar_bytes,
            gzip_digest=base["digest"],
        )
        if stream != base["diff_id"]:
            mismatch = (
                f"layer {number}: its stream ({tar_bytes} bytes) is not the diff_id's "
                f"({base['tar_bytes']} bytes)"
            )
            if not format.diff_id_excuse or not 0 <= base["tar_bytes"] - tar_bytes < 10240:
                raise BenchError(f"{spec.name}: {mismatch}")
            corrected.append(
                {
                    "layer": number,
                    "config": base["diff_id"],
                    "stream": stream,
                    "dropped_bytes": base["tar_bytes"] - tar_bytes,
                }
            )
        problem = format.check_layer(layer) if format.check_layer else ""
        if problem:
            raise BenchError(f"{spec.name}: layer {number}: {problem}")
    if corrected:
        logger.info(
            f"{spec.name}: {format.diff_id_excuse}: writing its config with the streams' digests"
        )
        digest = rewrite_diff_ids(target, spec.name, [layer["diff_id"] for layer in layers])
    info = {
        "spec": key,
        "format": format.name,
        "base": spec.base,
        "ref": spec.name,
        "layout": str(target),
        # a tarball's image is named by its config (the Docker image id), a layout's by its manifest
        "config" if format.archive else "manifest": digest,
        "layers": layers,
        "blob_files": [{"path": str(path), "bytes": path.stat().st_size} for path in blob_files],
        "big_files": base_info["big_files"],
        "entries": base_info["entries"],
        "blob_bytes": sum(path.stat().st_size for path in blob_files),
        "tar_bytes": sum(layer["tar_bytes"] for layer in layers),
        "diff_ids_corrected": corrected,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    logger.info(
        f"{spec.name}: derived in {info['build_seconds']} s: {info['blob_bytes'] / 1e6:.0f} MB "
        f"{format.stored} ({format.layers})"
    )
    return info


def prepare_image(name: str, info: dict[str, Any], base: Image | None = None) -> Image:
    """The built image with its blob paths and, per big file, the offsets of its random reads."""
    layout = Path(info["layout"])
    if "blob_files" in info:
        blobs = [Path(file["path"]) for file in info["blob_files"]]
    else:  # a gzip image: its layers' blobs
        blobs = [
            layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
            for layer in info["layers"]
        ]
    files = [
        {**file, "offsets": random_offsets(file["path"], file["size"])}
        for file in info["big_files"]
    ]
    return Image(name, info, layout, blobs, files, base)
