"""Measure what the gzip seek points' windows could be compressed with: time, size, the GIL.

    python -m bench.windows [--megabytes N] [--json FILE] STREAM

(The README's "Why this inflate" quotes a run of it.) The indexing pass of a gzip layer keeps
the 32 KiB window before every seek point (one per MiB of the stream), compressed, in the
layer's index and its cache file; it compresses one window per MiB it inflates, in a thread
of its own, on the core the hashes and the tar scan share. STREAM is an uncompressed layer
(``gzip -dc BLOB > layer.tar``; ``--megabytes``, default 400, of its start are read): its
windows are the 32 KiB before each MiB, as the pass takes them. Each candidate compresses
every window and decompresses it back (checked), best of three; the mean bytes per window;
and two threads compressing at once against one (about 1.0x: it lets go of the GIL). zlib
reads what the zlib-format candidates make, so the index's format does not depend on the
compressor. The candidates not installed (``pip install -e '.[inflate-bench,zstd-bindings]'``)
are reported as such.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

WINDOW = 32 << 10
SPACING = 1 << 20

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def candidates() -> dict[str, Codec | str]:
    """Each candidate's compress and decompress, or why it is not here."""
    found: dict[str, Codec | str] = {
        "zlib level 1": (lambda w: zlib.compress(w, 1), zlib.decompress),
    }
    try:
        from isal import isal_zlib
    except ImportError as error:
        found["isal"] = f"not installed ({error})"
    else:
        for level in (0, 1, 2):
            found[f"isal level {level}"] = (
                functools.partial(isal_zlib.compress, level=level),
                zlib.decompress,
            )
    try:
        from zlib_ng import zlib_ng
    except ImportError as error:
        found["zlib-ng"] = f"not installed ({error})"
    else:
        found["zlib-ng level 1"] = (lambda w: zlib_ng.compress(w, 1), zlib.decompress)
    try:
        # Through importlib: an optional extra, typed or not where it is installed.
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError as error:
        found["zstd"] = f"not installed ({error})"
    else:

        def zstd_codec(level: int) -> Codec:
            # A compressor per call: one is not for two threads at once.
            def compress(window: bytes) -> bytes:
                packed: bytes = zstandard.ZstdCompressor(level=level).compress(window)
                return packed

            def decompress(data: bytes) -> bytes:
                window: bytes = zstandard.ZstdDecompressor().decompress(data)
                return window

            return compress, decompress

        for level in (1, -1):
            found[f"zstd level {level}"] = zstd_codec(level)
    return found


def measure(windows: list[bytes], codec: Codec) -> dict[str, Any]:
    compress, decompress = codec
    best_in = best_out = float("inf")
    packed: list[bytes] = []
    for _ in range(3):
        start = time.perf_counter()
        packed = [compress(window) for window in windows]
        best_in = min(best_in, time.perf_counter() - start)
        start = time.perf_counter()
        back = [decompress(data) for data in packed]
        best_out = min(best_out, time.perf_counter() - start)
        if back != windows:
            raise SystemExit("a candidate did not give its windows back")

    def work() -> None:
        for window in windows:
            compress(window)

    threads = [threading.Thread(target=work) for _ in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = time.perf_counter() - start
    return {
        "compress_us": best_in / len(windows) * 1e6,
        "decompress_us": best_out / len(windows) * 1e6,
        "bytes": sum(map(len, packed)) / len(windows),
        "two_threads": two / best_in,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stream", help="an uncompressed layer (tar)")
    parser.add_argument("--megabytes", type=int, default=400)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    with open(args.stream, "rb") as handle:
        data = handle.read(args.megabytes << 20)
    windows = [data[end - WINDOW : end] for end in range(SPACING, len(data) + 1, SPACING)]
    if not windows:
        raise SystemExit(f"{args.stream}: shorter than one MiB")
    print(f"{len(windows)} windows of {WINDOW} bytes, one per MiB of {args.stream}")
    print(f"{'':20s} {'compress us':>12s} {'decompress us':>14s} {'bytes':>8s} {'2 threads':>10s}")
    results: dict[str, Any] = {}
    for name, codec in candidates().items():
        if isinstance(codec, str):
            print(f"{name:20s} {codec}")
            results[name] = codec
            continue
        row = results[name] = measure(windows, codec)
        print(
            f"{name:20s} {row['compress_us']:12.1f} {row['decompress_us']:14.1f} "
            f"{row['bytes']:8.0f} {row['two_threads']:9.2f}x"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
