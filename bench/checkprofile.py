"""Profile the daemon through a cold read of one file: what share of its time the block checks take.

    python -m bench.checkprofile IMAGE FILE [--cache-dir DIR] [--ocifs CMD] [--rate N]
                                 [--reads SIZE] [--random N] [--repeat N] [--out FILE]
                                 [--json FILE]

(The README's "Block checks" quotes runs of it.) It mounts IMAGE (``LAYOUT:REF`` or an
archive) in the foreground with ``--cache-dir DIR`` (indexing it there the first time, not
timed), drops the page cache of the image's files and of the cache dir (fadvise DONTNEED),
attaches ``py-spy record`` (``pip install py-spy``; ``--rate`` samples a second, of every
thread that is not idle) to the daemon, reads FILE cold, front to back in ``--reads`` bytes
(default 1 MiB; or, with ``--random N``, N reads of 4 KiB at seeded offsets), stops py-spy
and unmounts; ``--repeat`` times (default 3), each on a mount of its own. Then it counts
the samples of all the runs: all of them, those inside
``ocifs/blockcheck.py`` (the sum and its comparison, in the readers' and the prefetch jobs'
threads alike) and, for context, those inside the decoders (``gzseek``, ``zstdseek``) and
the blob reads. The checks' share is their samples over all of the daemon's samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .tools import REPO

PARTS = {  # what a sample is counted as, by the first of these files its stack holds
    "checks": "ocifs/blockcheck.py",
    "gzip inflate": "ocifs/gzseek.py",
    "zstd decode": "ocifs/zstdseek.py",
    "blob reads": "ocifs/blobs.py",
}


def wait_mounted(mountpoint: Path, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    target = os.path.realpath(mountpoint)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/self/mounts") as mounts:
            if any(line.split()[1] == target for line in mounts):
                return
        if daemon.poll() is not None:
            raise SystemExit(f"ocifs mount exited {daemon.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"{mountpoint} not mounted after {timeout:.0f} s")


def drop_page_cache(paths: list[Path]) -> None:
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def read_file(path: Path, size: int, random_reads: int) -> tuple[int, float]:
    """Bytes read and seconds taken."""
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        total = 0
        if random_reads:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            length = os.fstat(fd).st_size
            rng = random.Random(1)
            for _ in range(random_reads):
                total += len(os.pread(fd, 4096, rng.randrange(0, length // 4096) * 4096))
        else:
            while chunk := os.read(fd, size):
                total += len(chunk)
        return total, time.perf_counter() - started
    finally:
        os.close(fd)


def count(raw: Path) -> tuple[int, Counter[str]]:
    """All samples of py-spy's raw output, and the samples of each part."""
    total = 0
    parts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples = int(number)
        total += samples
        for part, file in PARTS.items():
            if file in stack:
                parts[part] += samples
                break
    return total, parts


def profile_once(args: argparse.Namespace, out: Path) -> tuple[int, float]:
    """Mount, drop the page cache, read the file under py-spy, unmount: bytes, seconds."""
    mountpoint = args.out.parent / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    image_path = Path(args.image.split(":", 1)[0] if ":" in args.image else args.image)
    mount = [args.ocifs, "mount", "-f", "--cache-dir", str(args.cache_dir), args.image]
    daemon = subprocess.Popen([*mount, str(mountpoint)])
    spy = None
    try:
        wait_mounted(mountpoint, daemon, timeout=1800)
        drop_page_cache([image_path, args.cache_dir])
        record = ["record", "--pid", str(daemon.pid), "--rate", str(args.rate)]
        spy = subprocess.Popen(
            [args.py_spy, *record, "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        read, seconds = read_file(mountpoint / args.file, args.reads, args.random)
        time.sleep(0.2)  # the last samples of the daemon's work
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        return read, seconds
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkprofile", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("image", help="LAYOUT:REF or an archive")
    parser.add_argument("file", help="the file to read, relative to the image's root")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/ocifs-checkprofile/cache"))
    parser.add_argument("--ocifs", default=str(REPO / ".venv" / "bin" / "ocifs"))
    parser.add_argument("--py-spy", default=str(Path(sys.executable).parent / "py-spy"))
    parser.add_argument("--rate", type=int, default=1000, help="samples a second (default 1000)")
    parser.add_argument("--reads", type=int, default=1 << 20, help="read size (default 1 MiB)")
    parser.add_argument("--random", type=int, default=0, help="N random 4 KiB reads instead")
    parser.add_argument("--repeat", type=int, default=3, help="mounts and reads (default 3)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ocifs-checkprofile/profile.txt"))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    total, parts = 0, Counter[str]()
    runs = []
    for number in range(args.repeat):
        out = args.out.with_name(f"{args.out.stem}-{number}{args.out.suffix}")
        read, seconds = profile_once(args, out)
        samples, found = count(out)
        total += samples
        parts.update(found)
        runs.append({"bytes": read, "seconds": seconds, "samples": samples, "parts": found})
        print(
            f"{args.file}: {read / 1e6:.0f} MB in {seconds:.2f} s "
            f"({read / seconds / 1e6:.0f} MB/s), cold; {samples} samples, checks "
            f"{100 * found['checks'] / max(samples, 1):.1f}%"
        )
    how = f"{args.random} random 4 KiB reads" if args.random else f"{args.reads}-byte reads"
    print(f"{args.repeat} cold reads ({how}), {total} samples of the daemon at {args.rate}/s:")
    for part in PARTS:
        print(f"  {part:<14}{parts[part]:>7} samples  {100 * parts[part] / max(total, 1):5.1f}%")
    if args.json:
        document = {"runs": runs, "samples": total, "parts": dict(parts)}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
