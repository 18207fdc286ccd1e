"""Measure what a random 4 KiB read of a zstd layer costs through an ocifs mount.

    python -m bench.zstdreads [--workdir DIR] [--size BYTES] [--json FILE]

(The README's zstd section quotes a run of it.) One file of SIZE bytes (default 200 MB: the
start of ``tar -C / -cf - usr/share``, so real, mixed data) in a one-layer image, stored
three ways: one frame (``zstd -3``, what the tool and most encoders write), frames of 4 MiB
and of 1 MiB (each piece ``zstd -3`` on its own, as pzstd or a seekable writer makes them).
For each: mount it (``ocifs mount -f``, the index built first, timed apart), then on a fresh
mount 300 random 4 KiB preads at seeded 4 KiB-aligned offsets under POSIX_FADV_RANDOM (the
benchmark's ``read_randomly``), in a child process; median, p90 and max in ms, and the
wall time of them all. Then the same file read front to back, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from ocifs.mediatypes import OCI_LAYER_ZSTD
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest

from .probes import Mounter, probe, random_offsets

SIZE = 200_000_000
LEVEL = "-3"
FORMS = {"one frame": 0, "4 MiB frames": 4 << 20, "1 MiB frames": 1 << 20}


def source_data(workdir: Path, size: int) -> bytes:
    tar = workdir / "usr-share.tar"
    if not tar.exists():
        with tar.open("wb") as out:
            subprocess.run(["tar", "-C", "/", "-cf", "-", "usr/share"], stdout=out, check=False)
    with tar.open("rb") as source:
        data = source.read(size)
    if len(data) < size:
        raise SystemExit(f"{tar} has only {len(data)} bytes, fewer than {size}")
    return data


def zstd(data: bytes) -> bytes:
    return subprocess.run(
        ["zstd", LEVEL, "-q", "-c"], input=data, capture_output=True, check=True
    ).stdout


def build(workdir: Path, size: int) -> dict[str, Path]:
    """A layout per form, holding one layer with the file ``data``."""
    layouts = {form: workdir / form.replace(" ", "-") for form in FORMS}
    if all((layout / "index.json").exists() for layout in layouts.values()):
        return layouts
    data = source_data(workdir, size)
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("data")
        info.size = len(data)
        archive.addfile(info, BytesIO(data))
    tar = buffer.getvalue()
    for form, piece in FORMS.items():
        pieces = [tar] if not piece else [tar[i : i + piece] for i in range(0, len(tar), piece)]
        blob = b"".join(zstd(part) for part in pieces)
        writer = LayoutWriter(layouts[form])
        descriptor = writer.add_blob(blob, OCI_LAYER_ZSTD)
        writer.add_image([(descriptor, sha256_digest(tar))], "latest", host_platform())
        writer.save()
    return layouts


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(len(ordered) * 0.9)],
        "max_ms": ordered[-1],
        "total_s": sum(ordered) / 1000,
    }


def measure(layout: Path, workdir: Path, mounter: Mounter) -> dict[str, Any]:
    cache = workdir / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    argv = [sys.executable, "-m", "ocifs", "mount", "-f", "--cache-dir", str(cache)]
    argv += [f"{layout}:latest", str(mounter.mountpoint)]
    target = str(mounter.mountpoint / "data")
    first = mounter.mount(argv, "index")
    mounter.unmount()
    result: dict[str, Any] = {"first_mount_s": first["seconds"]}
    mounter.mount(argv, "random")
    try:
        size = os.stat(target).st_size
        answer = probe({"kind": "random", "path": target, "offsets": random_offsets("data", size)})
        result.update(summary(answer["ms"]))
        result["blob_mb"] = sum(p.stat().st_size for p in (layout / "blobs").rglob("*")) / 1e6
    finally:
        mounter.unmount()
    mounter.mount(argv, "sequential")
    try:
        started = time.perf_counter()
        with open(target, "rb", buffering=0) as file:
            while file.read(1 << 20):
                pass
        result["sequential_s"] = time.perf_counter() - started
    finally:
        mounter.unmount()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.zstdreads", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ocifs-zstd-reads"))
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=FORMS, help="measure one form only")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    layouts = build(args.workdir, args.size)
    mounter = Mounter(args.workdir / "mnt", args.workdir / "logs")
    results = {}
    try:
        for form, layout in layouts.items():
            if args.only and form != args.only:
                continue
            print(f"measuring {form}", file=sys.stderr)
            results[form] = measure(layout, args.workdir, mounter)
    finally:
        mounter.unmount()
    print(f"random 4 KiB reads of a {args.size / 1e6:.0f} MB file, one zstd layer, fresh mount:")
    print("form            blob MB  first mount s  median ms  p90 ms  max ms  300 reads s  seq s")
    for form, row in results.items():
        print(
            f"{form:<14}{row['blob_mb']:>9.0f}{row['first_mount_s']:>15.2f}"
            f"{row['median_ms']:>11.2f}{row['p90_ms']:>8.2f}{row['max_ms']:>8.1f}"
            f"{row['total_s']:>13.2f}{row['sequential_s']:>7.2f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
