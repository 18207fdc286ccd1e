"""Cold reads of one file through two ocifs commands in turns: the block checks on and off.

    python -m bench.checkcost IMAGE FILE --on CMD --off CMD [--rounds N] [--random N]
                              [--sequential-only] [--cache-dir DIR] [--json FILE]

(The README's "Block checks" quotes runs of it.) ``--off`` is a checkout whose
``open_reader`` passes no sums (a local patch: ocifs has no switch that turns the checks
off). Each round mounts IMAGE with each command in turn (the order alternating from round to
round) with ``--cache-dir DIR``, indexed there beforehand, drops the page cache of the
image's files and of DIR, and reads FILE cold: front to back in 1 MiB reads, then, on a
fresh mount, ``--random`` reads of 4 KiB at seeded page offsets (default 300; none with
``--sequential-only``). It prints each run with the load average, then, for each command,
the median and range of the sequential MB/s and the median of the random reads' medians
and 90th percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .checkprofile import drop_page_cache, wait_mounted


def cold_read(args: argparse.Namespace, command: str, kind: str, seed: int) -> list[float]:
    """Mount with ``command``, drop the page cache, read: [MB/s] or [median ms, p90 ms]."""
    mountpoint = args.cache_dir.parent / "checkcost-mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    image_path = Path(args.image.split(":", 1)[0])
    mount = [command, "mount", "-f", "--cache-dir", str(args.cache_dir), args.image]
    daemon = subprocess.Popen([*mount, str(mountpoint)])
    try:
        wait_mounted(mountpoint, daemon, timeout=1800)
        drop_page_cache([image_path, args.cache_dir])
        fd = os.open(mountpoint / args.file, os.O_RDONLY)
        try:
            if kind == "sequential":
                started, total = time.perf_counter(), 0
                while chunk := os.read(fd, 1 << 20):
                    total += len(chunk)
                return [total / (time.perf_counter() - started) / 1e6]
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            pages = os.fstat(fd).st_size // 4096
            rng = random.Random(seed)
            took = []
            for _ in range(args.random):
                offset = rng.randrange(0, pages) * 4096
                started = time.perf_counter()
                os.pread(fd, 4096, offset)
                took.append(time.perf_counter() - started)
            return [statistics.median(took) * 1e3, statistics.quantiles(took, n=10)[8] * 1e3]
        finally:
            os.close(fd)
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkcost", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("image", help="LAYOUT:REF or an archive")
    parser.add_argument("file", help="the file to read, relative to the image's root")
    parser.add_argument("--on", required=True, help="ocifs command with the checks")
    parser.add_argument("--off", required=True, help="ocifs command without them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random", type=int, default=300, help="random 4 KiB reads a run")
    parser.add_argument("--sequential-only", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/ocifs-checkcost/cache"))
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    kinds = ["sequential"] if args.sequential_only else ["sequential", "random"]
    runs: list[dict[str, object]] = []
    results: dict[tuple[str, str], list[list[float]]] = {}
    for number in range(args.rounds):
        modes = ["on", "off"] if number % 2 == 0 else ["off", "on"]
        for mode in modes:
            for kind in kinds:
                value = cold_read(args, getattr(args, mode), kind, number)
                load = os.getloadavg()[0]
                results.setdefault((mode, kind), []).append(value)
                runs.append({"mode": mode, "kind": kind, "value": value, "load": load})
                print(f"round {number} {mode:>3} {kind:<10} {value} (load {load:.1f})", flush=True)
    for mode in ("on", "off"):
        speeds = [value[0] for value in results[(mode, "sequential")]]
        line = f"{mode:>3}: sequential {statistics.median(speeds):.0f} MB/s "
        line += f"({min(speeds):.0f}-{max(speeds):.0f})"
        if (mode, "random") in results:
            reads = results[(mode, "random")]
            median = statistics.median(value[0] for value in reads)
            p90 = statistics.median(value[1] for value in reads)
            line += f", random 4 KiB median {median:.2f} ms, p90 {p90:.2f} ms"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
