"""The load: reader threads checking every byte against the reference, and a ``find`` loop.

Each reader thread repeats, until the deadline: pick a file (by count or by size, in turn),
open it on the mount and in the reference, and do one of

* a sequential stretch: up to 8 MiB from the start or from a random offset, 128 KiB at a time
  (what ``cat`` or ``cp`` do; it sets off ocifs's prefetch);
* a few random ranges of 1 byte to 256 KiB;
* a few 4 KiB pages at random.

Every read is compared with the reference's bytes at the same offset. Afterwards the file's
pages are dropped from the kernel's page cache (POSIX_FADV_DONTNEED), unless the run keeps
them: the kernel would otherwise answer the next reads of the file itself.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .reference import File, Files

logger = logging.getLogger(__name__)

SEQUENTIAL_STRETCH = 8 << 20
SEQUENTIAL_READ = 128 << 10
RANDOM_MAX = 256 << 10
PAGE = 4096
HANG_GRACE = 60.0  # seconds a thread may take to finish its last read after the deadline
KEPT_FAILURES = 20  # failures described in the report; all are counted


@dataclass
class Tally:
    """What the readers did, added up under ``lock``."""

    reads: int = 0
    bytes: int = 0
    mismatches: int = 0
    errors: int = 0
    find_loops: int = 0
    find_errors: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reads: int, count: int) -> None:
        with self.lock:
            self.reads += reads
            self.bytes += count

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            if kind == "mismatch":
                self.mismatches += 1
            elif kind == "find":
                self.find_errors += 1
            else:
                self.errors += 1
            if len(self.failures) < KEPT_FAILURES:
                self.failures.append(f"{kind}: {what}")
        logger.error("%s: %s", kind, what)


def first_difference(got: bytes, expected: bytes) -> int:
    for index, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return index
    return min(len(got), len(expected))


class Reader:
    """One reader thread's work on one file: the ranges read, each checked."""

    def __init__(
        self, mountpoint: Path, files: Files, tally: Tally, deadline: float, keep_pages: bool
    ) -> None:
        self.mountpoint = mountpoint
        self.files = files
        self.tally = tally
        self.deadline = deadline
        self.keep_pages = keep_pages

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        turn = 0
        while time.monotonic() < self.deadline:
            turn += 1
            file = self.files.pick(rng, by_size=turn % 2 == 0)
            try:
                self.one_file(rng, file)
            except OSError as error:
                self.tally.fail("error", f"{file.path}: {error}")

    def one_file(self, rng: random.Random, file: File) -> None:
        ranges = self.ranges(rng, file.size)
        mounted = os.open(self.mountpoint / file.path, os.O_RDONLY)
        try:
            reference = os.open(self.files.rootfs / file.path, os.O_RDONLY)
            try:
                reads = count = 0
                for offset, length in ranges:
                    if time.monotonic() >= self.deadline:
                        break
                    got = os.pread(mounted, length, offset)
                    expected = os.pread(reference, length, offset)
                    reads += 1
                    count += len(got)
                    if got != expected:
                        at = offset + first_difference(got, expected)
                        self.tally.fail(
                            "mismatch",
                            f"{file.path}: read of {length} at {offset}: got {len(got)} bytes,"
                            f" expected {len(expected)}, first difference at {at}",
                        )
                self.tally.add(reads, count)
            finally:
                os.close(reference)
        finally:
            if not self.keep_pages:
                os.posix_fadvise(mounted, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(mounted)

    @staticmethod
    def ranges(rng: random.Random, size: int) -> list[tuple[int, int]]:
        kind = rng.random()
        if kind < 0.4:
            start = 0 if rng.random() < 0.5 else rng.randrange(size)
            end = min(size, start + SEQUENTIAL_STRETCH)
            return [
                (offset, min(SEQUENTIAL_READ, end - offset))
                for offset in range(start, end, SEQUENTIAL_READ)
            ]
        if kind < 0.7:
            result = []
            for _ in range(rng.randrange(1, 9)):
                offset = rng.randrange(size)
                result.append((offset, rng.randrange(1, RANDOM_MAX + 1)))
            return result
        pages = max(1, size // PAGE)
        return [(rng.randrange(pages) * PAGE, PAGE) for _ in range(rng.randrange(1, 17))]


def find_loop(mountpoint: Path, tally: Tally, deadline: float) -> None:
    """``find MOUNTPOINT`` again and again until the deadline."""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["find", str(mountpoint)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
            tally.fail("find", lines[-1])
        else:
            with tally.lock:
                tally.find_loops += 1


def run_load(
    mountpoint: Path,
    files: Files,
    threads: int,
    seconds: float,
    seed: int,
    keep_pages: bool = False,
) -> Tally:
    """Run the readers and the ``find`` loop for ``seconds``; what they did."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    reader = Reader(mountpoint, files, tally, deadline, keep_pages)
    workers = [
        threading.Thread(
            target=reader.run, args=(seed * 1000 + number,), name=f"reader-{number}", daemon=True
        )
        for number in range(threads)
    ]
    workers.append(
        threading.Thread(target=find_loop, args=(mountpoint, tally, deadline), daemon=True)
    )
    for worker in workers:
        worker.start()
    for worker in workers:
        # A read the daemon never answers must not hang the run: it is reported instead.
        worker.join(max(0.0, deadline - time.monotonic()) + HANG_GRACE)
        if worker.is_alive():
            tally.fail("error", f"{worker.name} still waiting {HANG_GRACE:.0f} s after the end")
    return tally
