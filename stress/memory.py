"""The daemon's memory, seen from outside: RSS sampled from /proc, and its map by kind.

``Sampler`` reads VmRSS, VmHWM and the thread count of /proc/PID/status every second in a
thread of its own. ``map_by_kind`` sums the resident set of /proc/PID/smaps by what a mapping
is: glibc's malloc arenas of other threads (read-write mappings that start on a 64 MiB
boundary: glibc reserves each such heap 64 MiB aligned), the main heap, thread stacks (8 MiB),
other anonymous memory (big allocations mmapped on their own, libraries' buffers), and files
(code, libraries). That tells freed-but-kept heap from stacks and from live big buffers.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each thread arena's heap is aligned so
STACK_KIB = (8188, 8192)  # an 8 MiB thread stack, less its guard page or with it
KIB = 1024


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process, those it has (none once it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS", "Threads"):
                values[name] = int(rest.split()[0])
    return values


@dataclass
class Sample:
    seconds: float  # since the sampler started
    rss_kib: int
    threads: int


@dataclass
class Sampler:
    """Samples a process every ``interval`` seconds until stopped."""

    pid: int
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None

    def sample(self) -> Sample | None:
        values = status(self.pid)
        if "VmRSS" not in values:
            return None
        sample = Sample(time.monotonic() - self.started, values["VmRSS"], values.get("Threads", 0))
        self.samples.append(sample)
        return sample

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()

    def hwm_kib(self) -> int | None:
        return status(self.pid).get("VmHWM")


def summary_mib(samples: Sequence[Sample]) -> dict[str, float]:
    """Median, maximum and minimum RSS (MiB) and the most threads of some samples."""
    if not samples:
        return {}
    rss = [sample.rss_kib / KIB for sample in samples]
    return {
        "median": statistics.median(rss),
        "max": max(rss),
        "min": min(rss),
        "threads_max": max(sample.threads for sample in samples),
    }


def kind_of(start: int, end: int, perms: str, path: str) -> str:
    if path == "[heap]":
        return "main heap"
    if path == "[stack]":
        return "main stack"
    if path.startswith("["):
        return "kernel ([vdso] etc.)"
    if path:
        return "files (code, libraries)"
    if not perms.startswith("rw"):
        return "reserved (no access)"
    if start % ARENA_ALIGN == 0 and end - start <= ARENA_ALIGN:
        return "malloc arenas of threads"
    if (end - start) // KIB in STACK_KIB:
        return "thread stacks"
    return "other anonymous"


def map_by_kind(pid: int) -> dict[str, tuple[int, int]]:
    """Per kind of mapping: (mappings, resident KiB), the largest first; empty if gone."""
    totals: dict[str, list[int]] = {}
    kind = ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        first = line.split(None, 5)
        if first and "-" in first[0] and not first[0].endswith(":"):
            low, high = (int(part, 16) for part in first[0].split("-"))
            kind = kind_of(low, high, first[1], first[5] if len(first) > 5 else "")
            totals.setdefault(kind, [0, 0])[0] += 1
        elif first and first[0] == "Rss:":
            totals[kind][1] += int(first[1])
    ordered = sorted(totals.items(), key=lambda item: -item[1][1])
    return {name: (count, rss) for name, (count, rss) in ordered}
