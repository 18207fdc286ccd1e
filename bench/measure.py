"""The measurements of one image: which probes run for each tool, on which mount, how cold.

For a FUSE tool: a first mount with its cache or index emptied (find and lstat walk on it),
then, for every big file, a fresh later mount for its sequential reads and another for its
random reads. For umoci: unpack, then the same walks and reads on the unpacked tree (of the
gzip image, for an image derived from it: umoci 0.4.7 reads no zstd, and the tree is the same).
The floor of the first mount: the format's floor command (``gzip -dc``, ``zstd -dc``,
SHA-256 by hashlib; see ``formats``) on every blob. Before every cold step the page cache
of the files it reads is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import Image
from .probes import Mounter, du_bytes, probe, time_find
from .steps import MOUNT_TIMEOUT, STEP_TIMEOUT, BenchError, Cell, checked, last_line, step
from .tools import Contenders

logger = logging.getLogger(__name__)

SEQ_KINDS = ("seq_cold_mb_s", "seq_warm_mb_s")
RANDOM_KINDS = ("random_median_ms", "random_p99_ms")


class CacheDropper:
    """Empties the page cache of the files a cold step will read.

    Blobs, indexes and caches get posix_fadvise(DONTNEED) (the programs themselves stay warm,
    as they would when run again); a file on the unpacked tree is dropped with
    /proc/sys/vm/drop_caches when this is allowed, else with fadvise too.
    """

    def __init__(self) -> None:
        self.global_method = ""  # "drop_caches" or "fadvise", once tried

    def drop_everything(self, paths: list[Path]) -> None:
        if self.global_method in ("", "drop_caches"):
            try:
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                self.global_method = "drop_caches"
                return
            except OSError:
                self.global_method = "fadvise"
        self.drop(paths)

    def drop(self, paths: list[Path]) -> None:
        for path in paths:
            files = (
                [path]
                if not path.is_dir()
                else [
                    Path(directory) / name
                    for directory, _, names in os.walk(path)
                    for name in names
                ]
            )
            for file in files:
                with contextlib.suppress(OSError):
                    fd = os.open(file, os.O_RDONLY)
                    try:
                        os.fsync(fd)  # dirty pages would stay
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)


DROPPER = CacheDropper()


@dataclass
class FuseTool:
    name: str
    first_argv: list[str]
    later_argv: list[str]
    state: Path | None  # cache dir / index folder: emptied before the first mount
    cached: bool = True


def children_cpu_seconds() -> float:
    """User + system CPU time of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value at least ``fraction`` of them reach."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def file_keys(files: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[str]:
    """The result keys of per-file measurements: ``kind:path``."""
    return [f"{kind}:{file['path']}" for file in files for kind in kinds]


def measure_walks(top: Path, out: dict[str, Cell], what: str) -> None:
    with step(out, ["find_s", "find_entries"], f"{what}: find"):
        seconds, entries = time_find(top)
        out.update(find_s=seconds, find_entries=entries)
        logger.info(f"  {what}: find | wc -l: {entries:,} entries in {seconds:.2f} s")
    with step(out, ["find_again_s"], f"{what}: find again"):
        seconds, entries = time_find(top)
        if entries != out["find_entries"]:
            raise BenchError(f"find again saw {entries:,} entries, not {out['find_entries']:,}")
        out.update(find_again_s=seconds)
        logger.info(f"  {what}: find again on the same mount: {seconds:.2f} s")
    with step(out, ["stat_s", "stat_entries"], f"{what}: stat walk"):
        walked = probe({"kind": "walk", "top": str(top)})
        out.update(stat_s=walked["seconds"], stat_entries=walked["entries"])
        logger.info(
            f"  {what}: lstat of {walked['entries']:,} entries in {walked['seconds']:.2f} s"
        )


def measure_seq(
    top: Path,
    files: list[dict[str, Any]],
    out: dict[str, Cell],
    what: str,
    before: Callable[[Path], None] | None = None,
) -> None:
    for file in files:
        path = top / file["path"]
        with step(out, file_keys([file], SEQ_KINDS), f"{what}: read {file['path']}"):
            if before is not None:
                before(path)
            answer = probe({"kind": "seq", "path": str(path)})
            if answer["cold_bytes"] != file["size"]:
                raise BenchError(f"read {answer['cold_bytes']} bytes of {file['size']}")
            cold = file["size"] / answer["cold_seconds"] / 1e6
            warm = file["size"] / answer["warm_seconds"] / 1e6
            out[f"seq_cold_mb_s:{file['path']}"] = cold
            out[f"seq_warm_mb_s:{file['path']}"] = warm
            logger.info(f"  {what}: {file['path']}: {cold:.0f} MB/s cold, {warm:.0f} MB/s again")


def measure_random(
    top: Path,
    files: list[dict[str, Any]],
    out: dict[str, Cell],
    what: str,
    before: Callable[[Path], None] | None = None,
) -> None:
    for file in files:
        path = top / file["path"]
        keys = [*file_keys([file], RANDOM_KINDS), f"random_sha256:{file['path']}"]
        with step(out, keys, f"{what}: random reads in {file['path']}"):
            if before is not None:
                before(path)
            answer = probe({"kind": "random", "path": str(path), "offsets": file["offsets"]})
            median = statistics.median(answer["ms"])
            p99 = percentile(answer["ms"], 0.99)
            out[f"random_median_ms:{file['path']}"] = median
            out[f"random_p99_ms:{file['path']}"] = p99
            out[f"random_sha256:{file['path']}"] = answer["sha256"]
            out[f"random_raw_ms:{file['path']}"] = [round(ms, 4) for ms in answer["ms"]]
            logger.info(
                f"  {what}: {file['path']}: random 4 KiB median {median:.2f} ms, p99 {p99:.2f} ms"
            )


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def state_files(path: Path | None) -> dict[str, float]:
    """The files of a cache dir or index folder and their mtimes: did a later mount rewrite it?"""
    if path is None or not path.is_dir():
        return {}
    return {str(file): file.stat().st_mtime for file in path.rglob("*") if file.is_file()}


def run_fuse_tool(tool: FuseTool, image: Image, mounter: Mounter) -> dict[str, Cell]:
    out: dict[str, Cell] = {}
    what = f"{image.name}/{tool.name}"
    mnt = mounter.mountpoint
    state = [tool.state] if tool.state is not None else []

    logger.info(f"{what}: first mount")
    first_keys = [
        "first_mount_s",
        "first_mount_cpu_s",
        "peak_rss_mb",
        "rss_after_mount_mb",
        "find_s",
        "find_entries",
        "find_again_s",
        "stat_s",
        "stat_entries",
        "rss_after_walk_mb",
    ]
    with step(out, first_keys, f"{what}: first mount"):
        if tool.state is not None:
            reset_dir(tool.state)
        DROPPER.drop(image.blobs)
        try:
            mounted = mounter.mount(tool.first_argv, f"{image.name}-{tool.name}-first")
            out.update(
                first_mount_s=mounted["seconds"],
                first_mount_cpu_s=mounted["cpu_s"],
                peak_rss_mb=mounted["hwm_mb"],
                rss_after_mount_mb=mounted["rss_mb"],
            )
            logger.info(
                f"  {what}: mounted in {mounted['seconds']:.2f} s, peak RSS "
                f"{mounted['hwm_mb'] or 0:.0f} MB, RSS {mounted['rss_mb'] or 0:.0f} MB"
            )
            measure_walks(mnt, out, what)
            out["rss_after_walk_mb"] = mounter.rss_mb()
        finally:
            mounter.unmount()
    if isinstance(out["first_mount_s"], str):  # it never mounted: its cache dir says nothing
        out["disk_bytes"] = out["first_mount_s"]
    else:
        with step(out, ["disk_bytes"], f"{what}: disk"):
            out["disk_bytes"] = du_bytes(tool.state) if tool.state is not None else "no cache"

    # Every read measurement on a fresh mount of its own: no tool profits from what it
    # decompressed (or prefetched) for the one before.
    before_later = state_files(tool.state)
    later_mounts: list[float] = []
    out["later_mounts_s"] = later_mounts
    for number, file in enumerate(image.files):
        for kind, kinds, round_number in [
            *(("seq", SEQ_KINDS, r) for r in range(SEQ_ROUNDS)),
            ("random", RANDOM_KINDS, 0),
        ]:
            keys = file_keys([file], kinds)
            first_later = number == 0 and kind == "seq" and round_number == 0
            if first_later:
                keys = ["later_mount_s", "later_peak_rss_mb", *keys]
            logger.info(
                f"{what}: {'later' if first_later else 'fresh'} mount, {kind} reads of "
                f"{file['path']}"
            )
            with step(out, keys, f"{what}: mount for {kind} reads"):
                DROPPER.drop(image.blobs + state)
                try:
                    mounted = mounter.mount(
                        tool.later_argv, f"{image.name}-{tool.name}-{kind}-{number}"
                    )
                    later_mounts.append(mounted["seconds"] or 0.0)
                    if first_later:
                        out.update(
                            later_mount_s=mounted["seconds"], later_peak_rss_mb=mounted["hwm_mb"]
                        )
                        logger.info(
                            f"  {what}: mounted again in {mounted['seconds']:.2f} s"
                            + ("" if tool.cached else " (not cached)")
                        )
                        if tool.state is not None:
                            out["state_reused"] = before_later == state_files(tool.state) != {}
                    if kind == "seq":
                        measure_seq(mnt, [file], out, what)
                    else:
                        measure_random(mnt, [file], out, what)
                finally:
                    mounter.unmount()
            if kind == "seq":
                keep_round(out, file_keys([file], SEQ_KINDS))
        for key in file_keys([file], SEQ_KINDS):
            out[key] = median_of_rounds(out, key)
    return out


# A cold read is one short figure that swings by a third between runs on these machines (two
# cores shared with other work): each is taken on SEQ_ROUNDS fresh mounts of its own, in
# turn, and the median kept (every round's figure is in --json, as KEY + "_rounds").
SEQ_ROUNDS = 3


def keep_round(out: dict[str, Cell], keys: list[str]) -> None:
    """Add this round's sequential figures to their lists of rounds; a failed round's cell
    (a string) is kept apart and stands for them all."""
    for key in keys:
        value = out.get(key)
        rounds = out.setdefault(f"{key}_rounds", [])
        assert isinstance(rounds, list)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rounds.append(float(value))
        else:
            out.setdefault(f"{key}_failed", value)


def median_of_rounds(out: dict[str, Cell], key: str) -> Cell:
    """The median of a figure's rounds, or the failure of one of them."""
    if f"{key}_failed" in out:
        return out[f"{key}_failed"]
    rounds = out.get(f"{key}_rounds")
    if not isinstance(rounds, list) or not rounds:
        return out.get(key)
    return statistics.median(rounds)


# Beside a tree kept by --keep-unpacked: which blobs it was unpacked from, and how long it took.
KEPT_RECORD = "bench-unpacked.json"


def kept_unpack(bundle: Path, image: Image) -> dict[str, Any] | None:
    """The record of a tree an earlier run kept for the same blobs, or None."""
    try:
        record: dict[str, Any] = json.loads((bundle / KEPT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if record.get("blobs") != [blob.name for blob in image.blobs]:
        return None
    return record


def unpack(image: Image, bundle: Path, out: dict[str, Cell], what: str) -> None:
    if bundle.exists():
        shutil.rmtree(bundle)
    DROPPER.drop(image.blobs)
    argv = ["umoci", "unpack", "--image", image.arg, str(bundle)]
    logger.info(f"  $ {shlex.join(argv)}")
    cpu = children_cpu_seconds()
    seconds, _ = checked(argv, "umoci unpack", timeout=MOUNT_TIMEOUT)
    out["first_mount_cpu_s"] = children_cpu_seconds() - cpu
    disk = du_bytes(bundle)
    out.update(first_mount_s=seconds, disk_bytes=disk)
    logger.info(f"  {what}: unpacked in {seconds:.1f} s, {disk / 1e6:.0f} MB")


def run_unpacked(image: Image, workdir: Path, keep: bool = False) -> dict[str, Cell]:
    """umoci unpack, then the walks and reads on the tree; ``keep``: a tree kept by an earlier
    run for the same blobs is measured instead (with that run's unpack figures), and this
    run's tree is kept."""
    out: dict[str, Cell] = {}
    what = f"{image.name}/umoci"
    bundle = workdir / f"unpacked-{image.name}"
    keys = [
        "first_mount_s",
        "first_mount_cpu_s",
        "disk_bytes",
        "find_s",
        "find_entries",
        "find_again_s",
        "stat_s",
        "stat_entries",
        *file_keys(image.files, SEQ_KINDS + RANDOM_KINDS),
    ]
    kept = kept_unpack(bundle, image) if keep else None
    try:
        with step(out, keys, what):
            rootfs = bundle / "rootfs"
            if kept is None:
                logger.info(f"{what}: umoci unpack")
                unpack(image, bundle, out, what)
                if keep:
                    record: dict[str, Any] = {key: out[key] for key in keys[:3]}
                    record.update(blobs=[blob.name for blob in image.blobs], when=time.ctime())
                    (bundle / KEPT_RECORD).write_text(json.dumps(record))
            else:
                out.update({key: kept[key] for key in keys[:3]})
                logger.info(
                    f"{what}: the tree kept by the run of {kept['when']} (unpacked in "
                    f"{kept['first_mount_s']:.1f} s then); a find first, as after an unpack"
                )
                time_find(rootfs)  # the dentry cache as umoci unpack leaves it: warm
            measure_walks(rootfs, out, what)

            def cold(path: Path) -> None:
                DROPPER.drop_everything([path])

            measure_seq(rootfs, image.files, out, what, before=cold)
            measure_random(rootfs, image.files, out, what, before=cold)
    finally:
        if bundle.exists() and not keep:
            logger.info(f"{what}: removing {bundle}")
            shutil.rmtree(bundle, ignore_errors=True)
    return out


def first_mount_floor(image: Image) -> dict[str, Cell]:
    """The format's floor command (``gzip -dc``, ``zstd -dc``...) on every blob, cold, summed."""
    out: dict[str, Cell] = {}
    label = image.format.floor_label
    with step(out, ["first_mount_s", "first_mount_cpu_s"], f"{image.name}/{label}"):
        total = 0.0
        cpu = children_cpu_seconds()
        for blob in image.blobs:
            DROPPER.drop([blob])
            started = time.monotonic()
            result = subprocess.run(
                [*image.format.floor_argv, str(blob)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            total += time.monotonic() - started
            if result.returncode != 0:
                raise BenchError(f"{label} exited {result.returncode}: {last_line(result.stderr)}")
        out.update(first_mount_s=total, first_mount_cpu_s=children_cpu_seconds() - cpu)
        logger.info(f"{image.name}: {label} of {len(image.blobs)} blobs: {total:.2f} s")
    return out


def measure_image(
    image: Image,
    contenders: Contenders,
    workdir: Path,
    mounter: Mounter,
    unpacked: dict[str, dict[str, Cell]],
) -> dict[str, dict[str, Cell]]:
    """Every tool's results for one image: the floor, ocifs, ratarmount, unpacked.

    ``unpacked`` holds the umoci results of the gzip images measured so far, by name: an
    image derived from one of them shares them rather than unpacking the same tree again.
    """
    per_tool: dict[str, dict[str, Cell]] = {}
    info = image.info
    format = image.format
    logger.info(
        f"== {image.name}: {info['entries']:,} entries, {info['blob_bytes'] / 1e6:.0f} MB "
        f"{format.stored} ({format.layers})"
    )
    per_tool[format.floor] = first_mount_floor(image)

    if contenders.ocifs_problem:
        per_tool["ocifs"] = {"first_mount_s": contenders.ocifs_problem}
    else:
        cached = contenders.ocifs_cached
        cache = workdir / "ocifs-cache" / image.name
        cache_args = ["--cache-dir", str(cache)] if cached else []
        argv = [
            *contenders.ocifs,
            "mount",
            "-f",
            *cache_args,
            image.arg,
            str(mounter.mountpoint),
        ]
        tool = FuseTool("ocifs", argv, argv, cache if cached else None, cached=cached)
        per_tool["ocifs"] = run_fuse_tool(tool, image, mounter)

    if contenders.ratarmount is None:
        per_tool["ratarmount"] = {"first_mount_s": contenders.ratarmount_problem}
    elif format.ratarmount:
        per_tool["ratarmount"] = {"first_mount_s": format.ratarmount}
    else:
        index = workdir / "ratarmount-index" / image.name
        argv = [
            str(contenders.ratarmount),
            "-f",
            "--index-folders",
            str(index),
            *map(str, image.blobs),
            str(mounter.mountpoint),
        ]
        per_tool["ratarmount"] = run_fuse_tool(
            FuseTool("ratarmount", argv, argv, index), image, mounter
        )

    tree = image.base or image
    if contenders.skip_umoci:
        per_tool["unpacked"] = {"first_mount_s": "skipped"}
    elif tree.name in unpacked:
        logger.info(f"{image.name}/umoci: the unpacked tree of {tree.name}, measured above")
        per_tool["unpacked"] = unpacked[tree.name]
    else:
        per_tool["unpacked"] = unpacked[tree.name] = run_unpacked(
            tree, workdir, contenders.keep_unpacked
        )
    return per_tool
