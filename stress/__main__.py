"""The stress run's command line (``python -m stress``, which ``scripts/stress`` runs): the
options, the image and its reference, the mount, the load with the RSS sampled, the report and
the exit status; see the package's docstring."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probes import Mounter
from bench.steps import BenchError
from ocifs.cli import parse_size

from . import smallimage
from .load import Tally, run_load
from .memory import KIB, Sampler, map_by_kind, summary_mib
from .reference import ReferenceError, regular_files, unpack

logger = logging.getLogger("stress")

BENCH_DEBIAN = Path("/tmp/ocifs-bench/debian/layout")
MIB = 1 << 20
IDLE_SECONDS = 3.0  # sampled after mounting, before the load starts
AFTER_SECONDS = 3.0  # sampled after the load, before unmounting
INDEX_TIMEOUT = 1800.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stress", description=(__doc__ or "").split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument(
        "image",
        nargs="?",
        metavar="IMAGE",
        help=f"LAYOUT:REF (default {BENCH_DEBIAN}:debian if there, else a small image)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (60)")
    parser.add_argument("--threads", type=int, default=16, help="reader threads (16)")
    parser.add_argument(
        "--read-cache", type=parse_size, default=64 * MIB, help="the mount's --read-cache (64M)"
    )
    parser.add_argument(
        "--rss-margin",
        type=parse_size,
        default=64 * MIB,
        help="fail if the peak RSS exceeds the read cache plus this (64M)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the readers' choices (1)")
    parser.add_argument(
        "--keep-page-cache",
        action="store_true",
        help="leave the kernel's page cache of files read (fewer reads reach the daemon)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="cache, mount point, logs (default: a temporary directory)"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="DIR",
        help="unpack the reference here and keep it for the next run (default: in WORKDIR)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers here")
    parser.add_argument(
        "--ocifs", metavar="CMD", help="ocifs command (default: this Python's -m ocifs)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1:
        parser.error("--seconds and --threads must be positive")
    return args


def choose_image(args: argparse.Namespace, workdir: Path) -> str:
    if args.image:
        return str(args.image)
    if (BENCH_DEBIAN / "index.json").exists():
        return f"{BENCH_DEBIAN}:debian"
    logger.info("stress: building the small image")
    return smallimage.build(workdir / "small")


def index(ocifs: list[str], image: str, cache: Path) -> float:
    """``ocifs index`` into the run's cache, so that the mount loads from it; seconds taken."""
    started = time.monotonic()
    argv = [*ocifs, "index", "--cache-dir", str(cache), image]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=INDEX_TIMEOUT)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        raise BenchError(f"{shlex.join(argv)}: {lines[-1]}")
    return time.monotonic() - started


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / KIB:.1f} MiB"


def report(
    args: argparse.Namespace,
    image: str,
    tally: Tally,
    seconds: float,
    rss: dict[str, Any],
    memory_map: dict[str, tuple[int, int]],
) -> tuple[str, bool]:
    """The text of the report, and whether the run passed."""
    bound = (args.read_cache + args.rss_margin) / MIB
    peak = rss["peak_mib"]
    within = peak is not None and peak <= bound
    lines = [
        f"stress: {image}: {args.threads} reader threads and a find loop for {seconds:.0f} s,"
        f" --read-cache {args.read_cache / MIB:.0f} MiB",
        f"  reads {tally.reads:,}, {tally.bytes / (1 << 30):.2f} GiB"
        f" ({tally.bytes / 1e6 / seconds:.0f} MB/s); mismatches {tally.mismatches},"
        f" read errors {tally.errors}; find loops {tally.find_loops}"
        f" (failed {tally.find_errors})",
        f"  daemon RSS: idle {rss['idle_mib']:.1f} MiB, under load median"
        f" {rss['median_mib']:.1f} MiB, peak {peak:.1f} MiB (VmHWM {rss['hwm_mib']:.1f}),"
        f" after {rss['after_mib']:.1f} MiB; threads up to {rss['threads_max']}",
        f"  bound: read cache {args.read_cache / MIB:.0f} MiB + {args.rss_margin / MIB:.0f} MiB"
        f" = {bound:.0f} MiB: {'within' if within else 'EXCEEDED'}",
        "  daemon memory map at the end of the load (resident): "
        + ", ".join(f"{kind} {mib(kib)} ({count})" for kind, (count, kib) in memory_map.items()),
    ]
    lines.extend(f"  {failure}" for failure in tally.failures)
    passed = within and not (tally.mismatches or tally.errors or tally.find_errors)
    return "\n".join(lines), passed


def run(args: argparse.Namespace, workdir: Path) -> int:
    ocifs = shlex.split(args.ocifs) if args.ocifs else [sys.executable, "-m", "ocifs"]
    image = choose_image(args, workdir)
    reference = args.reference or workdir / "reference"
    logger.info("stress: unpacking %s with umoci into %s", image, reference)
    files = regular_files(unpack(image, reference))
    logger.info("stress: %d files, %.0f MB; indexing", len(files.files), files.total / 1e6)
    index_seconds = index(ocifs, image, workdir / "cache")
    mounter = Mounter(workdir / "mnt", workdir / "logs")
    argv = [
        *ocifs,
        "mount",
        "-f",
        "--cache-dir",
        str(workdir / "cache"),
        "--read-cache",
        str(args.read_cache),
        image,
        str(mounter.mountpoint),
    ]
    try:
        pid = int(mounter.mount(argv, "daemon")["pid"] or 0)
        sampler = Sampler(pid)
        time.sleep(IDLE_SECONDS)
        idle = sampler.sample()
        sampler.start()
        logger.info("stress: load for %.0f s", args.seconds)
        started = time.monotonic()
        tally = run_load(
            mounter.mountpoint, files, args.threads, args.seconds, args.seed, args.keep_page_cache
        )
        seconds = time.monotonic() - started
        loaded = list(sampler.samples)
        memory_map = map_by_kind(pid)
        hwm = sampler.hwm_kib()
        sampler.stop()
        time.sleep(AFTER_SECONDS)
        after = sampler.sample()
    finally:
        mounter.unmount()
    summary = summary_mib(loaded)
    peaks = [value for value in (summary.get("max"), None if hwm is None else hwm / KIB) if value]
    rss: dict[str, Any] = {
        "idle_mib": idle.rss_kib / KIB if idle else 0.0,
        "median_mib": summary.get("median", 0.0),
        "peak_mib": max(peaks) if peaks else None,
        "hwm_mib": (hwm or 0) / KIB,
        "after_mib": after.rss_kib / KIB if after else 0.0,
        "threads_max": summary.get("threads_max", 0),
        "samples": [(round(s.seconds, 1), s.rss_kib, s.threads) for s in loaded],
    }
    text, passed = report(args, image, tally, seconds, rss, memory_map)
    print(text)
    if args.json:
        document = {
            "image": image,
            "threads": args.threads,
            "seconds": seconds,
            "read_cache": args.read_cache,
            "rss_margin": args.rss_margin,
            "index_seconds": index_seconds,
            "files": len(files.files),
            "file_bytes": files.total,
            "reads": tally.reads,
            "bytes": tally.bytes,
            "mismatches": tally.mismatches,
            "errors": tally.errors,
            "find_loops": tally.find_loops,
            "find_errors": tally.find_errors,
            "failures": tally.failures,
            "rss": rss,
            "memory_map_kib": memory_map,
            "passed": passed,
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0 if passed else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        logger.warning("stress: not root; the mount or umoci may fail")
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ocifs-stress-")) if own else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir)
    except (BenchError, ReferenceError, OSError, subprocess.SubprocessError) as error:
        print(f"stress: {error}", file=sys.stderr)
        return 2
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("stress: interrupted", file=sys.stderr)
        sys.exit(130)
