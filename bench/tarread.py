"""Time the checked read of an uncompressed tar layer, hot in the page cache.

    python -m bench.tarread [--workdir DIR] [--megabytes N] [--repeat N] [--json FILE]

(The README's "Block checks" quotes runs of it.) An uncompressed layer is read by offset
from its blob and, with the sums of the verified pass, checked by 32 KiB block
(``ocifs.layerread.TarLayerReader``). This times that reader alone, without FUSE, on a blob
of N MiB (default 256) of random bytes in WORKDIR (/tmp/ocifs-tarread), after one read has
put it in the page cache: a sequential read of a file that starts 512 bytes into a block
(as a tar member's data does), in the kernel's 128 KiB requests, and 20,000 random 4 KiB
reads at seeded page offsets, each with the sums and without (``blocks=None``, what a
``--no-verify`` index gives), best of ``--repeat`` (default 5) taken in turns, in the thread's
CPU time (user and system: the pread's copy counts), which a loaded machine disturbs
less than the clock. It measures
whichever ``ocifs`` is imported: run it under ``PYTHONPATH=`` of two checkouts to compare
them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import ocifs
from ocifs.blobs import FileBlob
from ocifs.blockcheck import CHECK_BLOCK, BlockHasher, BlockSums
from ocifs.layerread import TarLayerReader
from ocifs.layout import LayerRef
from ocifs.mediatypes import OCI_LAYER_TYPE, Compression

MIB = 1 << 20
REQUEST = 128 << 10  # what the kernel asks a FUSE file system for, reading ahead
RANDOM_READS = 20_000


def make_blob(workdir: Path, megabytes: int) -> Path:
    path = workdir / f"layer-{megabytes}.tar"
    if not path.exists() or path.stat().st_size != megabytes * MIB:
        workdir.mkdir(parents=True, exist_ok=True)
        rng = random.Random(0)
        with open(path, "wb") as out:
            for _ in range(megabytes):
                out.write(rng.randbytes(MIB))
    return path


def block_sums(path: Path) -> BlockSums:
    hasher = BlockHasher(CHECK_BLOCK[Compression.NONE])
    with open(path, "rb") as blob:
        while chunk := blob.read(4 * MIB):
            hasher.update(chunk)
    return hasher.finish()


def sequential(reader: TarLayerReader, size: int) -> float:
    """CPU seconds to read bytes [512, size) in REQUEST-sized reads."""
    started = time.thread_time()
    for offset in range(512, size - REQUEST, REQUEST):
        reader.pread(offset, REQUEST)
    return time.thread_time() - started


def random_reads(reader: TarLayerReader, size: int) -> float:
    """CPU seconds for RANDOM_READS reads of 4 KiB at page offsets of a file at 512."""
    rng = random.Random(1)
    offsets = [512 + rng.randrange(0, size // 4096 - 1) * 4096 for _ in range(RANDOM_READS)]
    started = time.thread_time()
    for offset in offsets:
        reader.pread(offset, 4096)
    return time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ocifs-tarread"))
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = make_blob(args.workdir, args.megabytes)
    size = path.stat().st_size
    sums = block_sums(path)  # also puts the blob in the page cache
    layer = LayerRef(
        0,
        "sha256:" + "0" * 64,
        size,
        OCI_LAYER_TYPE[Compression.NONE],
        Compression.NONE,
        "sha256:" + "0" * 64,
        FileBlob(path, size),
    )
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for checked in (True, False):
            reader = TarLayerReader(layer, sums if checked else None)
            try:
                for kind, run in (("sequential", sequential), ("random", random_reads)):
                    key = f"{kind} {'checked' if checked else 'unchecked'}"
                    best[key] = min(best.get(key, float("inf")), run(reader, size))
            finally:
                reader.close()
    mb = (size - 512) / 1e6
    print(f"ocifs from {os.path.dirname(ocifs.__file__)}")
    for kind in ("checked", "unchecked"):
        seq, rand = best[f"sequential {kind}"], best[f"random {kind}"]
        print(
            f"{kind:>9}: sequential {mb / seq:8.0f} MB/s ({seq / (mb * 1e6 / REQUEST) * 1e6:5.1f}"
            f" us a 128 KiB read), random 4 KiB {rand / RANDOM_READS * 1e6:5.2f} us a read"
        )
    extra_seq = best["sequential checked"] / best["sequential unchecked"] - 1
    extra_rand = best["random checked"] / best["random unchecked"] - 1
    print(f"the checks add {extra_seq:+.0%} sequential, {extra_rand:+.0%} random")
    if args.json:
        args.json.write_text(json.dumps(best, indent=2) + "\n")


if __name__ == "__main__":
    main()
