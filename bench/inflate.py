"""Measure the inflates ocifs could index and read gzip layers with, in ocifs's own pipeline.

    python -m bench.inflate BLOB.gz [BLOB.gz ...]

(The README's "Why this inflate" quotes a run of it.) For the first BLOB, in memory, best of
``--runs``, MB/s of uncompressed output and CPU seconds:

* raw, front to back in 1 MiB reads: zlib (Python's), ``isal`` (python-isal's isal_zlib),
  ``zlib_ng``, ``rapidgzip`` (one and two threads), ``indexed_gzip``, ``gzip -dc``; a
  library that is not installed is reported as such;
* the indexing pass ocifs runs (``GzipIndexer``: strict checks, seek points every 1 MiB with
  their windows), with zlib and with ISA-L (``IsalGzipIndexer``), and with no points at all;
* reads from seek points: 64 random 64 KiB reads through zlib's ``GzipCursor`` from the
  ISA-L points (they must match zlib's points' bytes);
* two threads indexing two copies at once against one after the other (2.0x: the GIL is let
  go); and the peak RSS of the whole run.
* strictness (B3) of each library on a small member: truncated, bad CRC32, bad ISIZE,
  garbage after it, two members (valid). tests/test_gzseek.py holds ocifs's own inflaters
  to every refusal.
"""

from __future__ import annotations

import argparse
import importlib
import io
import random
import resource
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocifs import isal
from ocifs.blobs import FileBlob
from ocifs.gzseek import GzipCursor, GzipIndexer, SeekPoints

READ = 1 << 20


def best(runs: int, work: Callable[[], int]) -> tuple[float, float, int]:
    """(wall, cpu, bytes) of the fastest of ``runs`` runs."""
    result = (float("inf"), 0.0, 0)
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        size = work()
        result = min(result, (time.perf_counter() - wall, time.process_time() - cpu, size))
    return result


def stream(decompressor: Any, blob: bytes) -> int:
    total = 0
    for start in range(0, len(blob), READ):
        total += len(decompressor.decompress(blob[start : start + READ]))
    return total


def raw_candidates(blob: bytes, path: Path) -> dict[str, Callable[[], int] | str]:
    found: dict[str, Callable[[], int] | str] = {
        "zlib (Python)": lambda: stream(zlib.decompressobj(31), blob)
    }
    modules: dict[str, Any] = {}
    for name in ("isal.isal_zlib", "zlib_ng.zlib_ng", "rapidgzip", "indexed_gzip"):
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            found[name] = "not installed"
    if "isal.isal_zlib" in modules:
        lib = modules["isal.isal_zlib"]
        found["isal (python-isal)"] = lambda: stream(lib.decompressobj(31), blob)
    if "zlib_ng.zlib_ng" in modules:
        ng = modules["zlib_ng.zlib_ng"]
        found["zlib-ng (python-zlib-ng)"] = lambda: stream(ng.decompressobj(31), blob)
    if "rapidgzip" in modules:
        rg = modules["rapidgzip"]
        for threads in (1, 2):

            def rapid(threads: int = threads) -> int:
                with rg.open(io.BytesIO(blob), parallelization=threads) as f:
                    return sum(len(c) for c in iter(lambda: f.read(READ), b""))

            found[f"rapidgzip, {threads} thread(s)"] = rapid
    if "indexed_gzip" in modules:
        ig = modules["indexed_gzip"]

        def indexed() -> int:
            with ig.IndexedGzipFile(str(path), spacing=READ, buffer_size=4 * READ) as f:
                return sum(len(c) for c in iter(lambda: f.read(READ), b""))

        found["indexed_gzip"] = indexed

    def gzip_dc() -> int:  # its CPU time is not this process's: see the wall time
        done = subprocess.run(["gzip", "-dc", str(path)], stdout=subprocess.PIPE, check=True)
        return len(done.stdout)

    found["gzip -dc"] = gzip_dc
    return found


def strictness() -> None:
    """Which damage each library reports (B3)."""
    rng = random.Random(3)
    pieces = [b"hello ", b"world "]
    data = b"".join(rng.choice([*pieces, rng.randbytes(50)]) for _ in range(20000))
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    good = compressor.compress(data) + compressor.flush()
    cases = {
        "truncated": (good[: len(good) // 2], None),
        "bad CRC32": (good[:-8] + bytes([good[-8] ^ 1]) + good[-7:], None),
        "bad ISIZE": (good[:-4] + struct.pack("<I", len(data) + 1), None),
        "garbage after": (good + b"garbage!", None),
        "two members": (good + good, data + data),
    }

    def ocifs_pass(cls: type[GzipIndexer]) -> Callable[[bytes], bytes]:
        def run(blob: bytes) -> bytes:
            indexer = cls(io.BytesIO(blob))
            out = indexer.read(1 << 30)
            indexer.finish()
            return out

        return run

    def module(name: str, call: Callable[[Any, bytes], bytes]) -> Callable[[bytes], bytes]:
        def run(blob: bytes) -> bytes:
            return call(importlib.import_module(name), blob)

        return run

    def rapid(lib: Any, blob: bytes) -> bytes:
        with lib.open(io.BytesIO(blob), parallelization=1) as f:
            return bytes(f.read())

    def indexed(lib: Any, blob: bytes) -> bytes:
        with tempfile.NamedTemporaryFile(suffix=".gz") as file:
            file.write(blob)
            file.flush()
            with lib.IndexedGzipFile(file.name) as f:
                return bytes(f.read())

    libraries: dict[str, Callable[[bytes], bytes]] = {
        "python-isal igzip": module("isal.igzip", lambda m, b: m.decompress(b)),
        "zlib-ng gzip_ng": module("zlib_ng.gzip_ng", lambda m, b: m.decompress(b)),
        "rapidgzip": module("rapidgzip", rapid),
        "indexed_gzip": module("indexed_gzip", indexed),
        "ocifs, zlib": ocifs_pass(GzipIndexer),
    }
    if isal.available():
        from ocifs.isalseek import IsalGzipIndexer

        libraries["ocifs, ISA-L"] = ocifs_pass(IsalGzipIndexer)
    print("  strictness (B3):")
    for name, run in libraries.items():
        verdicts = []
        for case, (blob, valid) in cases.items():
            try:
                out = run(blob)
            except ImportError:
                verdicts = ["not installed"]
                break
            except Exception:
                verdicts.append(f"{case}: {'REFUSED' if valid else 'refused'}")
                continue
            wrong = out != (valid or data)
            verdicts.append(f"{case}: {'accepted' if valid else 'ACCEPTED'}{' (wrong)' * wrong}")
        print(f"    {name:18} {'; '.join(verdicts)}")


def index(cls: type[GzipIndexer], blob: bytes, spacing: int) -> SeekPoints:
    indexer = cls(io.BytesIO(blob), spacing)
    indexer.drain()
    return indexer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.inflate", description=__doc__.split("\n")[0])
    parser.add_argument("blobs", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    path: Path = args.blobs[0]
    blob = path.read_bytes()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{path}: {len(blob):,} bytes; load {load}")
    rows: list[tuple[str, str]] = []

    def report(name: str, work: Callable[[], int]) -> float:
        wall, cpu, size = best(args.runs, work)
        rows.append((name, f"{size / wall / 1e6:6.0f} MB/s   cpu {cpu:5.2f} s"))
        print(f"  {name:42} {rows[-1][1]}", flush=True)
        return wall

    for name, work in raw_candidates(blob, path).items():
        if isinstance(work, str):
            print(f"  {name:42} {work}")
        else:
            report(f"raw: {name}", work)
    indexers: dict[str, type[GzipIndexer]] = {"zlib": GzipIndexer}
    if isal.available():
        from ocifs.isalseek import IsalGzipIndexer

        indexers["isal"] = IsalGzipIndexer
    points: dict[str, SeekPoints] = {}
    for name, cls in indexers.items():
        for spacing, what in ((1 << 20, "points every 1 MiB"), (1 << 50, "no points")):

            def run(cls: type[GzipIndexer] = cls, spacing: int = spacing) -> int:
                return index(cls, blob, spacing).size

            report(f"indexing pass, {name}, {what}", run)
        points[name] = index(cls, blob, 1 << 20)
        print(f"    {name}: {len(points[name])} seek points")
    handle = FileBlob(path, len(blob)).open()
    rng = random.Random(1)
    chosen = next(reversed(points.values()))
    offsets = [rng.randrange(chosen.size - 65536) for _ in range(64)]

    cursors: dict[str, type[GzipCursor]] = {"zlib": GzipCursor}
    if isal.available():
        from ocifs.isalseek import IsalGzipCursor

        cursors["isal"] = IsalGzipCursor

    def reads(points: SeekPoints, cls: type[GzipCursor]) -> list[bytes]:
        out = []
        for offset in offsets:
            at = points.find(offset)
            cursor = cls(handle, points, at)
            cursor.skip(offset - points.uncompressed[at])
            out.append(cursor.read(65536))
            cursor.close()
        return out

    expected = reads(points["zlib"], GzipCursor)
    for name, found in points.items():
        for reader, kind in cursors.items():

            def read_all(found: SeekPoints = found, kind: type[GzipCursor] = kind) -> int:
                return len(reads(found, kind))

            wall, cpu, _ = best(args.runs, read_all)
            print(
                f"  64 random 64 KiB reads, {name}'s points, {reader}'s cursor: "
                f"{wall / 64 * 1e3:.2f} ms each, cpu {cpu / 64 * 1e3:.2f} ms"
            )
            assert reads(found, kind) == expected, "the points serve other bytes"
    print("  every points and cursor pair reads the same bytes")
    for name, cls in indexers.items():

        def both(cls: type[GzipIndexer] = cls) -> int:
            threads = [threading.Thread(target=index, args=(cls, blob, 1 << 20)) for _ in "ab"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return 0

        def single(cls: type[GzipIndexer] = cls) -> int:
            return index(cls, blob, 1 << 20).size

        one, _, _ = best(args.runs, single)
        two, _, _ = best(args.runs, both)
        print(f"  two layers at once with {name}: {2 * one / two:.2f}x one after the other")
    strictness()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"  peak RSS of this run: {peak} MB (the blob in memory: {len(blob) >> 20} MB)")
    handle.close()


if __name__ == "__main__":
    main()
