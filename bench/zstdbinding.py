"""Measure the zstd bindings ocifs could decode layers with: speed, the GIL, frame ends.

    python -m bench.zstdbinding [--workdir DIR] [--source PATH ...] [--json FILE]

(The README's "Why this zstd binding" quotes a run of it.) The candidates: ctypes over
Debian's libzstd (``ocifs.zstdseek.Decoder``, what ocifs uses), ``zstandard`` and ``pyzstd``
(``pip install -e '.[zstd-bindings]'`` brings the versions measured; a binding that is not
installed is reported as such). It builds, once, into WORKDIR (/tmp/ocifs-zstd-bindings):

* ``layer.tar``: ``tar -C / -cf - SOURCE...`` (default ``usr/share``);
* ``single.zst``: ``zstd -3`` of it, one frame (what ``zstd`` and most encoders write);
* ``multi.zst``: 4 MiB pieces, each ``zstd -3`` on its own, one frame each (``pzstd``-like);
* ``small.zst``: the first 32 MiB in 16 KiB pieces (zstd:chunked-like: a frame per file).

Then, for each binding, with the blobs in memory: the time to decode each one whole in 1 MiB
reads (best of three); the time for two threads decoding ``single.zst`` at once against one,
taken in turns, best of five (2.0x means both cores work: the GIL is let go); and whether it
can tell where each frame ends in the input with bounded output (checked against the known
ends of ``multi.zst`` and ``small.zst``), and how fast it does so. ``zstd -dc single.zst``
is timed as the floor.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocifs.zstdseek import ZSTD_VERSION, Decoder

IN_SIZE = 1 << 20  # input handed to a decoder at once
OUT_SIZE = 1 << 20  # output asked for at once
MULTI_PIECE = 4 << 20
SMALL_PIECE = 16 << 10
SMALL_PREFIX = 32 << 20
LEVEL = "-3"
REPEATS = 3
THREAD_ROUNDS = 5

# Decode a whole blob; the number of bytes it decodes to.
DecodeAll = Callable[[bytes], int]
# The blob offsets where its frames end, with bounded output; None if the API cannot say.
FrameEnds = Callable[[bytes], list[int]]


class Binding:
    """One candidate: how it decodes a blob whole and how it finds frame ends."""

    def __init__(
        self, name: str, version: str, decode_all: DecodeAll, frame_ends: FrameEnds | None
    ) -> None:
        self.name = name
        self.version = version
        self.decode_all = decode_all
        self.frame_ends = frame_ends


def ctypes_binding() -> Binding:
    """ocifs.zstdseek's Decoder: libzstd returns 0 where a frame ends, input pos just past it."""

    def run(blob: bytes, ends: list[int] | None) -> int:
        decoder = Decoder()
        out = ctypes.create_string_buffer(OUT_SIZE)
        address = ctypes.addressof(out)
        total = offset = 0
        try:
            while offset < len(blob):
                chunk = blob[offset : offset + IN_SIZE]
                offset += len(chunk)
                decoder.set_input(chunk)
                while True:
                    made, ret = decoder.decode(address, OUT_SIZE)
                    total += len(ctypes.string_at(address, made))
                    if ret == 0 and ends is not None:
                        ends.append(offset - decoder.pending_input())
                    if not decoder.pending_input() and made < OUT_SIZE:
                        break
        finally:
            decoder.end()
        return total

    def frame_ends(blob: bytes) -> list[int]:
        ends: list[int] = []
        run(blob, ends)
        return ends

    return Binding("ctypes", f"(libzstd {ZSTD_VERSION})", lambda blob: run(blob, None), frame_ends)


def zstandard_binding(module: Any) -> Binding:
    """zstandard: stream_reader bounds its output but hides where a frame ended in the input;
    decompressobj says (eof, unused_data), but returns all a piece of input decodes to, at
    once (an RLE block of 4 bytes is 128 KiB: no bound), so it is fed 128 KiB at a time."""

    def decode_all(blob: bytes) -> int:
        reader = module.ZstdDecompressor().stream_reader(
            blob, read_size=IN_SIZE, read_across_frames=True
        )
        total = 0
        while data := reader.read(OUT_SIZE):
            total += len(data)
        return total

    def frame_ends(blob: bytes) -> list[int]:
        ends: list[int] = []
        context = module.ZstdDecompressor()
        decoder = context.decompressobj()
        offset = 0
        while offset < len(blob):
            chunk = blob[offset : offset + (128 << 10)]
            offset += len(chunk)
            decoder.decompress(chunk)
            while decoder.eof:
                rest = decoder.unused_data
                ends.append(offset - len(rest))
                decoder = context.decompressobj()
                if not rest:
                    break
                decoder.decompress(rest)
        return ends

    return Binding(
        "zstandard",
        f"{module.__version__} (libzstd {'.'.join(map(str, module.ZSTD_VERSION))})",
        decode_all,
        frame_ends,
    )


def pyzstd_binding(module: Any) -> Binding:
    """pyzstd: ZstdDecompressor stops at a frame's end (eof) with a bound on its output
    (max_length); what follows comes back as unused_data, a copy of the rest of the input
    given, and the next frame needs a new decompressor."""

    def run(blob: bytes, ends: list[int] | None) -> int:
        view = memoryview(blob)
        total = offset = 0
        decoder = module.ZstdDecompressor()
        while offset < len(blob):
            chunk = view[offset : offset + IN_SIZE]
            offset += len(chunk)
            total += len(decoder.decompress(chunk, OUT_SIZE))
            while True:
                if decoder.eof:
                    rest = decoder.unused_data
                    if ends is not None:
                        ends.append(offset - len(rest))
                    decoder = module.ZstdDecompressor()
                    if not rest:
                        break
                    total += len(decoder.decompress(rest, OUT_SIZE))
                elif not decoder.needs_input:
                    total += len(decoder.decompress(b"", OUT_SIZE))
                else:
                    break
        return total

    def frame_ends(blob: bytes) -> list[int]:
        ends: list[int] = []
        run(blob, ends)
        return ends

    return Binding(
        "pyzstd",
        f"{module.__version__} (libzstd {module.zstd_version})",
        lambda blob: run(blob, None),
        frame_ends,
    )


def candidates() -> tuple[list[Binding], list[str]]:
    """The bindings that are installed, and the names of those that are not."""
    found = [ctypes_binding()]
    missing = []
    for name, make in (("zstandard", zstandard_binding), ("pyzstd", pyzstd_binding)):
        try:
            found.append(make(importlib.import_module(name)))
        except ImportError:
            missing.append(name)
    return found, missing


def compress_pieces(data: bytes, piece: int) -> tuple[bytes, list[int]]:
    """``zstd -3`` of each piece on its own, concatenated; and where each frame ends."""
    frames = []
    ends = []
    end = 0
    for start in range(0, len(data), piece):
        frame = subprocess.run(
            ["zstd", LEVEL, "-q", "-c"], input=data[start : start + piece], capture_output=True
        ).stdout
        frames.append(frame)
        end += len(frame)
        ends.append(end)
    return b"".join(frames), ends


def build(workdir: Path, sources: list[str]) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    tar = workdir / "layer.tar"
    if not tar.exists():
        with tar.open("wb") as out:
            subprocess.run(["tar", "-C", "/", "-cf", "-", *sources], stdout=out, check=False)
    single = workdir / "single.zst"
    if not single.exists():
        subprocess.run(["zstd", LEVEL, "-q", "-f", "-o", str(single), str(tar)], check=True)
    data = tar.read_bytes()
    for name, piece, size in (
        ("multi", MULTI_PIECE, len(data)),
        ("small", SMALL_PIECE, SMALL_PREFIX),
    ):
        blob, ends = workdir / f"{name}.zst", workdir / f"{name}.ends.json"
        if not blob.exists() or not ends.exists():
            compressed, frame_ends = compress_pieces(data[:size], piece)
            blob.write_bytes(compressed)
            ends.write_text(json.dumps(frame_ends))
    return {
        "tar": tar,
        "single": single,
        "multi": workdir / "multi.zst",
        "small": workdir / "small.zst",
    }


def best_of(function: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def threads_speedup(decode_all: DecodeAll, blob: bytes) -> tuple[float, float]:
    """Best wall times of one thread decoding the blob and of two threads each decoding it at
    once, taken in turns (so a burst of other work on the machine hits both alike)."""

    def both() -> None:
        threads = [threading.Thread(target=decode_all, args=(blob,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    one, two = [], []
    for _ in range(THREAD_ROUNDS):
        started = time.perf_counter()
        decode_all(blob)
        one.append(time.perf_counter() - started)
        started = time.perf_counter()
        both()
        two.append(time.perf_counter() - started)
    return min(one), min(two)


def measure(
    binding: Binding, blobs: dict[str, bytes], truth: dict[str, list[int]]
) -> dict[str, Any]:
    sizes = {name: binding.decode_all(blob) for name, blob in blobs.items()}
    result: dict[str, Any] = {"binding": binding.name, "version": binding.version}
    for name, blob in blobs.items():
        seconds = best_of(lambda blob=blob: binding.decode_all(blob))  # type: ignore[misc]
        result[f"{name}_seconds"] = seconds
        result[f"{name}_mb_s"] = sizes[name] / seconds / 1e6
    one, two = threads_speedup(binding.decode_all, blobs["single"])
    result["one_thread_seconds"], result["two_threads_seconds"] = one, two
    result["parallel_speedup"] = 2 * one / two
    if binding.frame_ends is not None:
        frame_ends = binding.frame_ends
        for name in ("multi", "small"):
            ends = frame_ends(blobs[name])
            result[f"{name}_ends_correct"] = ends == truth[name]
            seconds = best_of(lambda name=name: frame_ends(blobs[name]))  # type: ignore[misc]
            result[f"{name}_ends_mb_s"] = sizes[name] / seconds / 1e6
    result["sizes"] = sizes
    return result


def floor_seconds(path: Path) -> float:
    def decode() -> None:
        with open("/dev/null", "wb") as sink:
            subprocess.run(["zstd", "-dc", "-q", str(path)], stdout=sink, check=True)

    return best_of(decode)


def table(results: list[dict[str, Any]], floor: float, sizes: dict[str, int]) -> str:
    header = (
        "binding                         single MB/s  multi MB/s  small MB/s"
        "  2 threads  frame ends (multi, small)"
    )
    lines = [header]
    for row in results:
        ends = "n/a"
        if "multi_ends_correct" in row:
            ok = row["multi_ends_correct"] and row["small_ends_correct"]
            ends = (
                f"{'exact' if ok else 'WRONG'}: {row['multi_ends_mb_s']:.0f}, "
                f"{row['small_ends_mb_s']:.0f} MB/s"
            )
        name = f"{row['binding']} {row['version']}"
        lines.append(
            f"{name:<32}{row['single_mb_s']:>11.0f}{row['multi_mb_s']:>12.0f}"
            f"{row['small_mb_s']:>12.0f}{row['parallel_speedup']:>10.2f}x  {ends}"
        )
    lines.append(
        f"{'zstd -dc (floor)':<32}{sizes['single'] / floor / 1e6:>11.0f}"
        f"   ({sizes['single'] / 1e6:.0f} MB decoded; 2 threads: 2.00x = GIL let go)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.zstdbinding", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ocifs-zstd-bindings"))
    parser.add_argument("--source", action="append", help="a path below / to tar (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    sources = args.source or ["usr/share"]
    load = os.getloadavg()[0]
    if load > 0.5:  # the thread test needs both cores idle
        print(f"warning: load average {load:.2f}: other work skews the numbers", file=sys.stderr)
    print(f"building blobs in {args.workdir} from {shlex.join(sources)}", file=sys.stderr)
    paths = build(args.workdir, sources)
    blobs = {name: paths[name].read_bytes() for name in ("single", "multi", "small")}
    truth = {
        name: json.loads((args.workdir / f"{name}.ends.json").read_text())
        for name in ("multi", "small")
    }
    bindings, missing = candidates()
    results = []
    for binding in bindings:
        print(f"measuring {binding.name}", file=sys.stderr)
        results.append(measure(binding, blobs, truth))
    floor = floor_seconds(paths["single"])
    sizes = results[0]["sizes"]
    print(
        f"single.zst {len(blobs['single']) / 1e6:.0f} MB, one frame; multi.zst "
        f"{len(truth['multi'])} frames; small.zst {len(truth['small'])} frames of 16 KiB"
    )
    print(table(results, floor, sizes))
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    for name in missing:
        print(f"{name}: not installed (pip install -e '.[zstd-bindings]')")
    if args.json:
        document = {"results": results, "floor_seconds": floor, "missing": missing}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
