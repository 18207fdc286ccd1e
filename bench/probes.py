"""The things timed: a mount, ``find``, ``du``, and the walk and reads of a mounted tree.

A mount is timed until it shows up in /proc/self/mounts, with the daemon's peak RSS, RSS and
CPU time read from /proc just then (the peak and the CPU time those of its indexing child
too). The walk and the reads run in a child process of their own (``python -m bench.probes
SPEC``), so that a hung mount cannot hang the benchmark.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ocifs.mountinfo import unescape_mount_path

from .steps import MOUNT_TIMEOUT, STEP_TIMEOUT, BenchError, checked, last_line, run

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
RANDOM_READS = 300
RANDOM_SIZE = 4096
RANDOM_SEED = 20240611
POLL = 0.01


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process in KiB, those of the two it has."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                values[name] = int(rest.split()[0])
    return values


def descendants_hwm_kib(pid: int) -> int:
    """The largest VmHWM among the live descendants of a process (0 if none): a first mount
    indexes in a child process (ocifs.apart), whose peak is the indexing pass's. Sampled as
    the mount is polled, so a child's growth in its last poll interval can be missed."""
    peak = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    for child in map(int, children):
        peak = max(peak, proc_status_kib(child).get("VmHWM", 0), descendants_hwm_kib(child))
    return peak


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (all its threads, and the children it has
    waited for: a first mount's indexing child)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def mb_from_kib(kib: int | None) -> float | None:
    return None if kib is None else kib * 1024 / 1e6


def stop_process(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Wait for a daemon to end after its unmount; terminate it, then kill it, if it does not."""
    for action in (None, process.terminate, process.kill):
        if action is not None:
            with contextlib.suppress(ProcessLookupError):
                action()
        try:
            process.wait(timeout=grace if action is None else 10.0)
            return
        except subprocess.TimeoutExpired:
            continue


class Mounter:
    """One FUSE daemon at a time at one mount point, run in the foreground as our child."""

    def __init__(self, mountpoint: Path, logs: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.target = os.path.realpath(mountpoint)
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None

    def mounted(self) -> bool:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 1 and unescape_mount_path(fields[1]) == self.target:
                    return True
        return False

    def mount(self, argv: list[str], label: str) -> dict[str, float | None]:
        """Start the daemon; wall time until mounted, its VmHWM and VmRSS (MB) just then."""
        self.unmount()
        if self.mounted():
            raise BenchError(f"{self.target} is still mounted (busy?)")
        log_path = self.logs / f"{label}.log"
        logger.info(f"  $ {shlex.join(argv)}")
        with log_path.open("wb") as log_file:
            started = time.monotonic()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process = process
        children_hwm = 0
        try:
            while True:
                if self.mounted():
                    seconds = time.monotonic() - started
                    status = proc_status_kib(process.pid)
                    hwm = max(status.get("VmHWM", 0), children_hwm) or None
                    return {
                        "seconds": seconds,
                        "cpu_s": proc_cpu_seconds(process.pid),
                        "hwm_mb": mb_from_kib(hwm),
                        "rss_mb": mb_from_kib(status.get("VmRSS")),
                        "pid": process.pid,
                    }
                if process.poll() is not None:
                    raise BenchError(
                        f"{last_line(log_path.read_text(errors='replace'))} "
                        f"(exit {process.returncode} before mounting)"
                    )
                if time.monotonic() - started > MOUNT_TIMEOUT:
                    raise BenchError(f"not mounted after {MOUNT_TIMEOUT:.0f} s")
                children_hwm = max(children_hwm, descendants_hwm_kib(process.pid))
                time.sleep(POLL)
        except BaseException:
            self.unmount()
            raise

    def rss_mb(self) -> float | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return mb_from_kib(proc_status_kib(self.process.pid).get("VmRSS"))

    def unmount(self) -> None:
        for lazy in (False, False, False, False, True):
            if not self.mounted():
                break
            argv = ["fusermount3", "-u", *(["-z"] if lazy else []), self.target]
            if subprocess.run(argv, capture_output=True).returncode != 0:
                time.sleep(0.5)
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)


def du_bytes(path: Path) -> int:
    _, result = checked(["du", "-sb", str(path)], "du")
    return int(result.stdout.split()[0])


def time_find(top: Path) -> tuple[float, int]:
    """``find TOP | wc -l``: seconds and entries below TOP."""
    seconds, result = checked(
        ["bash", "-c", 'set -o pipefail; find "$1" | wc -l', "bash", str(top)], "find"
    )
    return seconds, int(result.stdout.strip()) - 1


def random_offsets(path: str, size: int) -> list[int]:
    """Seeded 4 KiB-aligned offsets in a file: the same for every tool that reads it."""
    rng = random.Random(f"{RANDOM_SEED}:{path}")
    blocks = max(1, size // RANDOM_SIZE)
    return [rng.randrange(blocks) * RANDOM_SIZE for _ in range(RANDOM_READS)]


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a measurement in a child of this process (a hung mount cannot hang the benchmark).

    The child finds the bench package the way this process did: from the same working
    directory or PYTHONPATH.
    """
    argv = [sys.executable, "-m", "bench.probes", json.dumps(spec)]
    try:
        _, result = run(argv)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"{spec['kind']} timed out after {STEP_TIMEOUT:.0f} s") from error
    if result.returncode != 0:
        raise BenchError(last_line(result.stderr or result.stdout))
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def walk(top: str) -> dict[str, Any]:
    """lstat every entry below top."""
    started = time.perf_counter()
    count = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as scan:
            for entry in scan:
                count += 1
                if stat.S_ISDIR(os.lstat(entry.path).st_mode):
                    stack.append(entry.path)
    return {"seconds": time.perf_counter() - started, "entries": count}


def read_sequentially(path: str) -> dict[str, Any]:
    """Read the whole file twice, 1 MiB at a time: seconds and bytes of each pass."""
    buffer = bytearray(READ_CHUNK)
    answer: dict[str, Any] = {}
    for label in ("cold", "warm"):
        started = time.perf_counter()
        total = 0
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                total += count
        answer[f"{label}_seconds"] = time.perf_counter() - started
        answer[f"{label}_bytes"] = total
    return answer


def read_randomly(path: str, offsets: list[int]) -> dict[str, Any]:
    """4 KiB preads at the given offsets: ms of each, and a digest of what they read."""
    digest = hashlib.sha256()
    times: list[float] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for offset in offsets:
            started = time.perf_counter()
            data = os.pread(fd, RANDOM_SIZE, offset)
            times.append((time.perf_counter() - started) * 1000)
            digest.update(data)
    finally:
        os.close(fd)
    return {"ms": times, "sha256": digest.hexdigest()}


def probe_main(spec: dict[str, Any]) -> dict[str, Any]:
    """The child's side of ``probe``: run the measurement ``spec["kind"]`` names."""
    kind = spec["kind"]
    if kind == "walk":
        return walk(spec["top"])
    if kind == "seq":
        return read_sequentially(spec["path"])
    if kind == "random":
        return read_randomly(spec["path"], spec["offsets"])
    raise ValueError(f"unknown probe {kind!r}")


if __name__ == "__main__":
    print(json.dumps(probe_main(json.loads(sys.argv[1]))))
