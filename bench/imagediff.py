"""Measure ``ocifs diff`` of two large images that share their base layers, against
``diff -rq`` over two ocifs mounts and over two trees unpacked by umoci.

    python -m bench.imagediff [--workdir DIR] [--image large|debian] [--ocifs CMD] [--json FILE]

Image A is the benchmark's image (``images``: large by default, built once and reused); image
B is A plus one small gzip upper layer made from A's own files (read through ocifs): of every
STRIDE-th regular file of the largest layer with at least MIN_SIZE bytes, in turn, one byte
flipped (same size), a byte appended (another size), a whiteout (removed), a new mode (same
bytes: only ``ocifs diff`` sees it), and ADDED new files. B's layout links A's blobs.

The steps, each cold (page cache of the blobs, indexes and trees dropped first, as
``measure`` does):

* ``ocifs index`` of A, then of B (which finds A's layers in the cache), timed apart;
* ``ocifs diff --cache-dir C A B``, cold and again warm: its lines are checked against
  what the upper layer changed;
* ``diff -rq --no-dereference`` of two ocifs mounts of A and B (indexes cached);
* ``umoci unpack`` of A and of B (timed apart), and ``diff -rq --no-dereference`` of the
  two rootfs trees. The paths both ``diff -r`` runs name are checked to agree with ``ocifs
  diff``'s (those whose type, content or target changed, or that only one side has).

Prints one table; the load average before and after says how busy the machine was.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from ocifs.image import load_image
from ocifs.imagearg import resolve_arg
from ocifs.indexcache import IndexCache
from ocifs.mediatypes import OCI_LAYER_GZIP
from ocifs.ocibuild import LayoutWriter, host_platform

from .images import build_image, image_specs
from .measure import DROPPER
from .probes import Mounter
from .steps import MOUNT_TIMEOUT, BenchError, checked, run, show_progress
from .tools import ocifs_command

logger = logging.getLogger("bench.imagediff")

STRIDE = 97  # every STRIDE-th file of the largest layer is changed
MIN_SIZE = 4096
ADDED = 50
ADDED_SIZE = 64 << 10
KINDS = ("content", "size", "removed", "mode")
DIFF_R_TIMEOUT = 3600.0


def upper_layer(arg: str, cache: Path) -> tuple[bytes, dict[str, str]]:
    """B's upper layer (a tar), made from A's files, and the line ``ocifs diff`` must print
    for each path it changes, by path."""
    image = load_image(resolve_arg(arg, cache=IndexCache(cache)), cache=IndexCache(cache))
    try:
        tree = image.tree
        sizes = [0] * len(image.resolved.layers)
        for _, node in tree.walk():
            if stat.S_ISREG(node.mode) and node.layer >= 0:
                sizes[node.layer] += node.size
        largest = sizes.index(max(sizes))
        files = sorted(
            (path, node)
            for path, node in tree.walk()
            if stat.S_ISREG(node.mode)
            and node.layer == largest
            and node.size >= MIN_SIZE
            and node.nlink == 1
        )
        buffer = io.BytesIO()
        expected: dict[str, str] = {}
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for number, (path, node) in enumerate(files[::STRIDE]):
                name = os.fsdecode(path)
                kind = KINDS[number % len(KINDS)]
                info = tarfile.TarInfo(name)
                info.mode, info.uid, info.gid = stat.S_IMODE(node.mode), node.uid, node.gid
                info.mtime = node.mtime_ns // 10**9
                data = bytes(image.read(node, 0, node.size))
                if kind == "removed":
                    head, _, tail = name.rpartition("/")
                    info = tarfile.TarInfo(f"{head}/.wh.{tail}" if head else f".wh.{tail}")
                    data = b""
                    expected[name] = f"D\t{name}"
                elif kind == "content":
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                    expected[name] = f"M\t{name}\t(content)"
                elif kind == "size":
                    data += b"\n"
                    expected[name] = f"M\t{name}\t(size,content)"
                else:
                    info.mode ^= 0o040
                    expected[name] = f"M\t{name}\t(mode)"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            directory = tarfile.TarInfo("bench-diff-added")
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
            expected["bench-diff-added"] = "A\tbench-diff-added"
            for number in range(ADDED):
                info = tarfile.TarInfo(f"bench-diff-added/{number:03d}")
                info.size = ADDED_SIZE
                tar.addfile(info, io.BytesIO(os.urandom(ADDED_SIZE)))
                expected[info.name] = f"A\t{info.name}"
        return buffer.getvalue(), expected
    finally:
        image.close()


def derive(a_layout: Path, ref: str, workdir: Path, cache: Path) -> tuple[Path, dict[str, str]]:
    """Image B's layout (A's layers, linked, plus the upper one); the lines expected."""
    tar, expected = upper_layer(f"{a_layout}:{ref}", cache)
    layout = workdir / "b-layout"
    if layout.exists():
        shutil.rmtree(layout)
    writer = LayoutWriter(layout)
    index = json.loads((a_layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    )
    manifest = json.loads(writer_blob(a_layout, entry["digest"]).read_text())
    config = json.loads(writer_blob(a_layout, manifest["config"]["digest"]).read_text())
    layers = []
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        os.link(writer_blob(a_layout, descriptor["digest"]), writer.blob_path(descriptor["digest"]))
        layers.append((descriptor, diff_id))
    layers.append(writer.add_layer(tar))
    assert layers[-1][0]["mediaType"] == OCI_LAYER_GZIP
    writer.add_image(layers, ref="b", platform=host_platform())
    writer.save()
    logger.info(f"B: {layout}: A's {len(layers) - 1} layers and {len(tar) / 1e6:.1f} MB upper")
    return layout, expected


def writer_blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def timed(argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run a command; its seconds and stdout; BenchError unless it exits as ``ok`` says."""
    logger.info(f"  $ {shlex.join(argv)}")
    seconds, result = run(argv, timeout=DIFF_R_TIMEOUT)
    if result.returncode not in ok:
        raise BenchError(f"{what} exited {result.returncode}: {result.stderr.strip()[-300:]}")
    logger.info(f"  {what}: {seconds:.2f} s")
    return seconds, result.stdout


ONLY = re.compile(r"^Only in (.+?): (.+)$")
PAIR = re.compile(r"^(?:Files|Symbolic links) (.+) and (.+) differ$")
TYPES = re.compile(r"^File (.+) is an? .+ while file (.+) is an? .+$")


def diff_r_tops(output: str, a: Path, b: Path) -> set[str]:
    """The paths ``diff -rq`` names (the top of a tree only one side has, as it does)."""
    paths = set()
    for line in output.splitlines():
        only = ONLY.match(line)
        if only is not None:
            top = Path(only[1]) / only[2]
            root = a if top.is_relative_to(a) else b
            paths.add(str(top.relative_to(root)))
            continue
        pair = PAIR.match(line) or TYPES.match(line)
        if pair is None:
            raise BenchError(f"a diff -r line not understood: {line[:200]}")
        paths.add(str(Path(pair[1]).relative_to(a)))
    return paths


def ocifs_tops(lines: list[str]) -> set[str]:
    """The paths of ``ocifs diff``'s lines that ``diff -r`` would name: what it can see
    (not modes), and of an added or removed tree its top only."""
    seen = {
        line.split("\t")[1]
        for line in lines
        if not line.startswith("M") or re.search(r"\((.*,)?(type|content|target)(,.*)?\)$", line)
    }
    return {path for path in seen if not any(path.startswith(f"{o}/") for o in seen)}


def drop(paths: list[Path]) -> None:
    DROPPER.drop_everything(paths)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.imagediff", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ocifs-bench"))
    parser.add_argument("--image", choices=("large", "debian"), default="large")
    parser.add_argument("--ocifs", metavar="CMD", help="ocifs command (default as scripts/bench)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-umoci", action="store_true", help="no unpacked trees")
    args = parser.parse_args(argv)
    show_progress()
    workdir: Path = args.workdir.resolve()
    here = workdir / "imagediff"
    here.mkdir(parents=True, exist_ok=True)
    ocifs = ocifs_command(args.ocifs)
    load_before = os.getloadavg()
    info = build_image(image_specs(workdir)[args.image], workdir, rebuild=False)
    a_layout = Path(info["layout"])
    cache = here / "ocifs-cache"
    if cache.exists():
        shutil.rmtree(cache)
    a_arg = f"{a_layout}:{info['ref']}"
    out: dict[str, Any] = {"image": args.image, "entries": info["entries"]}
    out["tar_bytes"] = info["tar_bytes"]

    drop([*a_layout.rglob("blobs/*/*")])
    out["index_a_s"], _ = timed([*ocifs, "index", "--cache-dir", str(cache), a_arg], "index A")
    b_layout, expected = derive(a_layout, info["ref"], here, cache)
    b_arg = f"{b_layout}:b"
    out["index_b_s"], _ = timed([*ocifs, "index", "--cache-dir", str(cache), b_arg], "index B")
    blobs = [*a_layout.rglob("blobs/*/*"), *b_layout.rglob("blobs/*/*"), cache]

    images = ["--cache-dir", str(cache), a_arg, b_arg]
    diff_argv = [*ocifs, "diff", *images]
    drop(blobs)
    out["ocifs_diff_cold_s"], text = timed(diff_argv, "ocifs diff (cold)", ok=(1,))
    out["ocifs_diff_warm_s"], _ = timed(diff_argv, "ocifs diff (warm)", ok=(1,))
    lines = text.splitlines()
    if sorted(lines) != sorted(expected.values()):
        missing = set(expected.values()) - set(lines)
        extra = set(lines) - set(expected.values())
        raise BenchError(f"ocifs diff: {len(missing)} lines missing, {len(extra)} unexpected")
    out["ocifs_diff_lines"] = len(lines)
    _, document = timed([*ocifs, "diff", "--json", *images], "ocifs diff --json", ok=(1,))
    out["ocifs_diff_contents"] = json.loads(document)["contents"]
    tops = ocifs_tops(lines)
    diff_r = ["diff", "-rq", "--no-dereference"]
    os.environ["LC_ALL"] = "C"  # diff's messages in English, for diff_r_tops

    mounters = [Mounter(here / name, here / "logs") for name in ("mnt-a", "mnt-b")]
    try:
        drop(blobs)
        for mounter, arg, label in zip(mounters, (a_arg, b_arg), "ab", strict=True):
            mounted = mounter.mount(
                [*ocifs, "mount", "-f", "--cache-dir", str(cache), arg, str(mounter.mountpoint)],
                f"diff-{label}",
            )
            out[f"mount_{label}_s"] = mounted["seconds"]
        a_mnt, b_mnt = (Path(m.target) for m in mounters)
        out["diff_r_mounts_s"], found = timed(
            [*diff_r, str(a_mnt), str(b_mnt)], "diff -rq of two ocifs mounts", ok=(1,)
        )
        if diff_r_tops(found, a_mnt, b_mnt) != tops:
            raise BenchError("diff -r of the mounts and ocifs diff name different paths")
    finally:
        for mounter in mounters:
            mounter.unmount()

    if not args.skip_umoci:
        trees = [here / "unpacked-a", here / "unpacked-b"]
        try:
            for tree, layout, ref, label in zip(
                trees, (a_layout, b_layout), (info["ref"], "b"), "ab", strict=True
            ):
                if tree.exists():
                    shutil.rmtree(tree)
                drop(blobs)
                started = time.monotonic()
                checked(
                    ["umoci", "unpack", "--image", f"{layout}:{ref}", str(tree)],
                    f"umoci unpack {label}",
                    timeout=MOUNT_TIMEOUT,
                )
                out[f"umoci_unpack_{label}_s"] = time.monotonic() - started
                logger.info(f"  umoci unpack {label}: {out[f'umoci_unpack_{label}_s']:.1f} s")
            drop(trees)
            rootfs = [tree / "rootfs" for tree in trees]
            out["diff_r_unpacked_s"], found = timed(
                [*diff_r, *map(str, rootfs)], "diff -rq of two unpacked trees", ok=(1,)
            )
            if diff_r_tops(found, *rootfs) != tops:
                raise BenchError("diff -r of the unpacked trees and ocifs diff disagree")
        finally:
            for tree in trees:
                shutil.rmtree(tree, ignore_errors=True)
    out["cache_drop"] = DROPPER.global_method
    out["load_before"] = load_before
    out["load_after"] = os.getloadavg()
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def report(out: dict[str, Any]) -> str:
    contents = out["ocifs_diff_contents"]
    rows = [
        ("ocifs diff, indexes cached, cold", out["ocifs_diff_cold_s"]),
        ("ocifs diff, again (warm)", out["ocifs_diff_warm_s"]),
        ("diff -rq over two ocifs mounts", out["diff_r_mounts_s"]),
        ("diff -rq over two umoci trees", out.get("diff_r_unpacked_s")),
    ]
    lines = [
        f"ocifs diff of {out['image']} ({out['entries']:,} entries, "
        f"{out['tar_bytes'] / 1e9:.2f} GB of tar) and it plus an upper layer: "
        f"{out['ocifs_diff_lines']} lines; {contents['compared']} files compared by bytes, "
        f"{contents['bytes_read'] / 1e6:.1f} MB read, {contents['equal_by_place']:,} equal "
        "by place",
        f"{'step':<36}{'seconds':>9}{'x ocifs diff':>14}",
    ]
    base = out["ocifs_diff_cold_s"]
    for label, seconds in rows:
        if seconds is None:
            lines.append(f"{label:<36}{'skipped':>9}")
        else:
            lines.append(f"{label:<36}{seconds:>9.2f}{seconds / base:>13.1f}x")
    lines.append(
        f"setup: ocifs index A {out['index_a_s']:.1f} s, B {out['index_b_s']:.1f} s (its "
        "base from the cache); umoci unpack A "
        + (
            f"{out['umoci_unpack_a_s']:.1f} s, B {out['umoci_unpack_b_s']:.1f} s"
            if "umoci_unpack_a_s" in out
            else "skipped"
        )
    )
    before, after = out["load_before"], out["load_after"]
    lines.append(
        f"page cache dropped by {out['cache_drop'] or 'fadvise'}; load average before"
        f" {before[0]:.1f}, after {after[0]:.1f} ({os.cpu_count()} cores)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
