"""Measure the sums ocifs could check its blocks with: speed, the GIL, the cost per block read.

    python -m bench.blockcheck [--workdir DIR] [--source PATH ...] [--megabytes N] [--json FILE]

(The README's "Block checks" quotes a run of it.) Every block a read inflates (or, for an
uncompressed layer, reads from the blob) is summed and compared with the sum the indexing
pass took (``ocifs.blockcheck``); this chooses the sum. The candidates: ocifs's own
``block_sum`` (xxh3_64 fed in 64 KiB pieces, holding the GIL), zlib's CRC32 and Adler-32,
hashlib's MD5, SHA-1, SHA-256 and BLAKE2b, the xxHash family (PyPI ``xxhash``: xxh3_64 in
one call, xxh3_128, xxh64, xxh32) and CRC32C (PyPI ``crc32c`` and ``google-crc32c``;
``pip install -e '.[block-sums]'``; one not installed is reported as such).

It builds, once, into WORKDIR (/tmp/ocifs-blockcheck): ``layer.tar``, the regular files,
directories and symlinks below SOURCE (default ``usr/share``), in walk order, up to N MB
(default 256); ``layer.tar.gz`` (``gzip -6 -n``) and ``layer.tar.zst`` (``zstd -3``, one
frame). Then, with the blobs in the page cache:

* each sum on 256 KiB blocks (``CACHE_BLOCK``): hot (the same block again, in the CPU's
  caches, as a block is right after it was inflated) and cold (the tar's first 256 blocks in
  turn, 64 MiB), best of five; and two threads summing at once against one, best of five
  taken in turns (2.0x: the sum lets go of the GIL);
* what making a block costs, the way the readers make it: a gzip cursor and a zstd cursor
  (``ocifs.gzseek``, ``ocifs.zstdseek``) reading the stream's first 64 MiB block by block, a
  pread of the tar's unit (32 KiB, ``CHECK_BLOCK``); and each sum's hot time (on a block of
  that size) as a share of making the block and summing it;
* the indexing pass (``index_layer``, verified) of each layer, best of three, and the time
  its block hasher took in it: the first mount's cost of the sums.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from ocifs import layerindex
from ocifs.blobs import FileBlob
from ocifs.blockcache import CACHE_BLOCK
from ocifs.blockcheck import CHECK_BLOCK, BlockHasher, BlockSums, block_sum
from ocifs.gzseek import GzipCursor, SeekPoints
from ocifs.layout import LayerRef
from ocifs.mediatypes import OCI_LAYER_TYPE, Compression
from ocifs.prefetch import Cursor
from ocifs.zstdseek import ZstdCursor

REPEATS = 5
INDEX_REPEATS = 3
HOT_ROUNDS = 200  # sums of one block per hot measurement
COLD_BLOCKS = 256  # 64 MiB of distinct blocks
MADE_BYTES = 64 << 20  # how much of each stream the block makers read
TAR_BLOCK = CHECK_BLOCK[Compression.NONE]  # what a tar layer's reads check

Sum = Callable[[bytes], object]


def candidates() -> tuple[list[tuple[str, Sum]], list[str]]:
    """The sums that can be had here, by name, and the names of those that cannot."""
    found: list[tuple[str, Sum]] = [
        ("ocifs: xxh3_64, 64 KiB pieces", block_sum),
        (f"xxh3_64 (xxhash {xxhash.VERSION})", xxhash.xxh3_64_intdigest),
        (f"xxh3_128 (xxhash {xxhash.VERSION})", xxhash.xxh3_128_intdigest),
        (f"xxh64 (xxhash {xxhash.VERSION})", xxhash.xxh64_intdigest),
        (f"xxh32 (xxhash {xxhash.VERSION})", xxhash.xxh32_intdigest),
        (f"crc32 (zlib {zlib.ZLIB_RUNTIME_VERSION})", zlib.crc32),
        (f"adler32 (zlib {zlib.ZLIB_RUNTIME_VERSION})", zlib.adler32),
        ("md5 (hashlib)", lambda data: hashlib.md5(data).digest()),
        ("sha1 (hashlib)", lambda data: hashlib.sha1(data).digest()),
        ("sha256 (hashlib)", lambda data: hashlib.sha256(data).digest()),
        ("blake2b (hashlib)", lambda data: hashlib.blake2b(data).digest()),
    ]
    missing = []
    for module_name, function, label in (
        ("crc32c", "crc32c", "crc32c (crc32c {})"),
        ("google_crc32c", "value", "crc32c (google-crc32c {})"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        version = getattr(module, "__version__", "")
        if not version:
            from importlib.metadata import version as installed

            version = installed(module_name.replace("_", "-"))
        found.append((label.format(version), getattr(module, function)))
    return found, missing


def build_tar(path: Path, sources: list[str], limit: int) -> None:
    """The files below ``sources`` as a tar of at most about ``limit`` bytes."""
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for source in sources:
            for top, dirs, names in os.walk(Path("/") / source):
                dirs.sort()
                for name in [".", *sorted(names)]:
                    full = Path(top) / name if name != "." else Path(top)
                    try:
                        info = out.gettarinfo(full, str(full.relative_to("/")))
                    except OSError:
                        continue
                    if info.isreg():
                        if total + info.size > limit:
                            return
                        try:
                            with full.open("rb") as data:
                                out.addfile(info, data)
                        except OSError:
                            continue
                        total += info.size
                    elif info.isdir() or info.issym():
                        out.addfile(info)


def build(workdir: Path, sources: list[str], limit: int) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    tar = workdir / "layer.tar"
    stamp = workdir / "build.json"
    wanted = {"sources": sources, "limit": limit}
    if not tar.exists() or not stamp.exists() or json.loads(stamp.read_text()) != wanted:
        build_tar(tar, sources, limit)
        for old in (workdir / "layer.tar.gz", workdir / "layer.tar.zst"):
            old.unlink(missing_ok=True)
        stamp.write_text(json.dumps(wanted))
    gz = workdir / "layer.tar.gz"
    if not gz.exists():
        with gz.open("wb") as out:
            subprocess.run(["gzip", "-6", "-n", "-c", str(tar)], stdout=out, check=True)
    zst = workdir / "layer.tar.zst"
    if not zst.exists():
        subprocess.run(["zstd", "-3", "-q", "-f", "-o", str(zst), str(tar)], check=True)
    return {"none": tar, "gzip": gz, "zstd": zst}


def file_digest(path: Path) -> str:
    with path.open("rb") as source:
        return "sha256:" + hashlib.file_digest(source, "sha256").hexdigest()


def layer_ref(path: Path, compression: str, diff_id: str) -> LayerRef:
    stored = Compression(compression)
    size = path.stat().st_size
    return LayerRef(
        0,
        file_digest(path),
        size,
        OCI_LAYER_TYPE[stored],
        stored,
        diff_id,
        FileBlob(path, size),
    )


def best(function: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def hot_seconds(summed: Sum, block: bytes) -> float:
    """One sum of a block in the CPU's caches."""
    summed(block)

    def rounds() -> None:
        for _ in range(HOT_ROUNDS):
            summed(block)

    return best(rounds) / HOT_ROUNDS


def cold_seconds(summed: Sum, blocks: list[bytes]) -> float:
    def all_blocks() -> None:
        for block in blocks:
            summed(block)

    return best(all_blocks) / len(blocks)


def two_threads(summed: Sum, blocks: list[bytes]) -> float:
    """Work done per wall time by two threads summing at once, against one (2.0: both
    cores busy, the GIL let go)."""

    def work() -> None:
        for block in blocks:
            summed(block)

    def both() -> None:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    one, two = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        one.append(time.perf_counter() - started)
        started = time.perf_counter()
        both()
        two.append(time.perf_counter() - started)
    return 2 * min(one) / min(two)


def block_makers(
    refs: dict[str, LayerRef], points: dict[str, SeekPoints]
) -> dict[str, Callable[[], int]]:
    """Make the first MADE_BYTES of each stream block by block, as the readers do; each
    returns the number of blocks made."""

    def cursor_maker(name: str, open_cursor: Callable[..., Cursor]) -> Callable[[], int]:
        def make() -> int:
            handle = refs[name].blob.open()
            cursor = open_cursor(handle, points[name], 0)
            try:
                made = 0
                while made * CACHE_BLOCK < MADE_BYTES and cursor.read(CACHE_BLOCK):
                    made += 1
                return made
            finally:
                cursor.close()
                handle.close()

        return make

    def tar_maker() -> int:
        handle = refs["none"].blob.open()
        try:
            made = 0
            while made * TAR_BLOCK < MADE_BYTES and handle.pread(TAR_BLOCK, made * TAR_BLOCK):
                made += 1
            return made
        finally:
            handle.close()

    return {
        "gzip": cursor_maker("gzip", GzipCursor),
        "zstd": cursor_maker("zstd", ZstdCursor),
        "none": tar_maker,
    }


class TimedHasher(BlockHasher):
    """The BlockHasher, counting the time spent in it (in the indexing pass's thread)."""

    seconds = 0.0

    def update(self, chunk: bytes) -> None:
        started = time.perf_counter()
        super().update(chunk)
        TimedHasher.seconds += time.perf_counter() - started

    def finish(self) -> BlockSums:
        started = time.perf_counter()
        sums = super().finish()
        TimedHasher.seconds += time.perf_counter() - started
        return sums


def indexing_seconds(ref: LayerRef) -> tuple[float, float]:
    """The best time of the verified indexing pass (of INDEX_REPEATS), and the time its
    block sums took in it. (Timing the pass with and without them drowns their cost in
    the noise of the machine: they are a few milliseconds of seconds.)"""
    names = vars(layerindex)  # where index_layer finds its BlockHasher
    runs = []
    try:
        names["BlockHasher"] = TimedHasher
        for _ in range(INDEX_REPEATS):
            TimedHasher.seconds = 0.0
            started = time.perf_counter()
            layerindex.index_layer(ref)
            runs.append((time.perf_counter() - started, TimedHasher.seconds))
    finally:
        names["BlockHasher"] = BlockHasher
    return min(runs)


def table(rows: list[dict[str, Any]], per_block: dict[str, float]) -> str:
    lines = [
        "sum of a 256 KiB block            hot GB/s  cold GB/s  2 threads  hot us"
        "  share of: gzip   zstd  tar read"
    ]
    for row in rows:
        shares = "".join(
            f"{100 * row[hot] / (per_block[name] + row[hot]):>7.1f}%"
            for name, hot in (("gzip", "hot_s"), ("zstd", "hot_s"), ("none", "hot_tar_s"))
        )
        lines.append(
            f"{row['name']:<34}{row['hot_gb_s']:>8.1f}{row['cold_gb_s']:>11.1f}"
            f"{row['two_threads']:>10.2f}x{row['hot_s'] * 1e6:>8.1f}        {shares}"
        )
    labels = (
        ("gzip", "gzip cursor"),
        ("zstd", "zstd cursor"),
        ("none", f"tar pread of {TAR_BLOCK >> 10} KiB (its share: of a sum of that)"),
    )
    made = ", ".join(f"{label} {per_block[name] * 1e6:.0f} us" for name, label in labels)
    lines.append(f"making a block (best of {REPEATS}): {made}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.blockcheck", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ocifs-blockcheck"))
    parser.add_argument("--source", action="append", help="a path below / to tar (repeatable)")
    parser.add_argument("--megabytes", type=int, default=256, help="the tar's size (default 256)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    sources = args.source or ["usr/share"]
    load = os.getloadavg()[0]
    if load > 0.5:  # the thread test needs both cores idle
        print(f"warning: load average {load:.2f}: other work skews the numbers", file=sys.stderr)
    print(f"building blobs in {args.workdir} from {shlex.join(sources)}", file=sys.stderr)
    paths = build(args.workdir, sources, args.megabytes * 1_000_000)
    tar = paths["none"].read_bytes()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    refs = {name: layer_ref(path, name, diff_id) for name, path in paths.items()}

    print("indexing passes", file=sys.stderr)
    indexing: dict[str, tuple[float, float]] = {}
    points: dict[str, SeekPoints] = {}
    for name, ref in refs.items():
        indexing[name] = indexing_seconds(ref)
        found = layerindex.index_layer(ref).points
        if found is not None:
            points[name] = found

    print("making blocks", file=sys.stderr)
    per_block = {}
    for name, make in block_makers(refs, points).items():
        made = make()
        per_block[name] = best(make) / made

    blocks = [tar[n * CACHE_BLOCK : (n + 1) * CACHE_BLOCK] for n in range(COLD_BLOCKS)]
    sums, missing = candidates()
    rows = []
    for name, summed in sums:
        print(f"measuring {name}", file=sys.stderr)
        hot = hot_seconds(summed, blocks[COLD_BLOCKS // 2])
        cold = cold_seconds(summed, blocks)
        rows.append(
            {
                "name": name,
                "hot_s": hot,
                "hot_tar_s": hot_seconds(summed, blocks[COLD_BLOCKS // 2][:TAR_BLOCK]),
                "hot_gb_s": CACHE_BLOCK / hot / 1e9,
                "cold_gb_s": CACHE_BLOCK / cold / 1e9,
                "two_threads": two_threads(summed, blocks),
            }
        )
    print(
        f"layer.tar {len(tar) / 1e6:.0f} MB of {shlex.join(sources)}; layer.tar.gz "
        f"{paths['gzip'].stat().st_size / 1e6:.0f} MB (gzip -6), layer.tar.zst "
        f"{paths['zstd'].stat().st_size / 1e6:.0f} MB (zstd -3, one frame)"
    )
    print(table(rows, per_block))
    passes = "; ".join(
        f"{name if name != 'none' else 'tar'} {total:.2f} s, of which the sums "
        f"{summing * 1e3:.0f} ms ({100 * summing / total:.1f}%)"
        for name, (total, summing) in indexing.items()
    )
    print(f"indexing pass, verified (best of {INDEX_REPEATS}): {passes}")
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    for name in missing:
        print(f"{name}: not installed (pip install -e '.[block-sums]')")
    if args.json:
        document = {
            "sums": rows,
            "block_seconds": per_block,
            "indexing_seconds": indexing,
            "missing": missing,
            "tar_bytes": len(tar),
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
