"""Benchmark ocifs against ratarmount, umoci unpack and gzip -dc: one run, one table.

The command line (``python -m bench``, which ``scripts/bench`` runs): the options, then build
the images, measure every tool on each, and print the report; see the package's docstring for
what is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .images import (
    IMAGES,
    Image,
    build_image,
    derive_image,
    derived_specs,
    image_specs,
    prepare_image,
)
from .measure import DROPPER, measure_image
from .probes import Mounter
from .report import compose
from .steps import STARTED, BenchError, Cell, one_line, show_progress
from .tools import find_contenders, machine, versions

logger = logging.getLogger("bench.main")


def parse_args(argv: list[str]) -> argparse.Namespace:
    # prog: the usage line says "bench", as it did when scripts/bench was the script itself.
    parser = argparse.ArgumentParser(prog="bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/ocifs-bench"),
        help="where images, indexes, venv and mount point live (default /tmp/ocifs-bench)",
    )
    parser.add_argument(
        "--json", metavar="FILE", type=Path, help="also write every raw number and the table here"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the images again")
    parser.add_argument(
        "--only",
        choices=IMAGES,
        action="append",
        metavar="IMAGE",
        help=f"measure this image only (again for more): {', '.join(IMAGES)}",
    )
    parser.add_argument("--skip-ratarmount", action="store_true", help="do not run ratarmount")
    parser.add_argument(
        "--skip-umoci",
        action="store_true",
        help="do not unpack with umoci (no floor for find, stat and reads)",
    )
    parser.add_argument(
        "--keep-unpacked",
        action="store_true",
        help="keep umoci's unpacked tree in WORKDIR for later runs, and measure on one kept "
        "by an earlier run instead of unpacking again (its unpack time is the earlier run's)",
    )
    parser.add_argument(
        "--ocifs", metavar="CMD", help="ocifs command (default: the repository's .venv/bin/ocifs)"
    )
    return parser.parse_args(argv)


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    show_progress()
    if os.geteuid() != 0:
        print("scripts/bench: warning: not root; FUSE mounts or umoci may fail", file=sys.stderr)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    names = [name for name in IMAGES if name in (args.only or IMAGES)]
    specs = image_specs(workdir)
    derived = derived_specs()
    bases = [name for name in specs if any(derived[n].base == name for n in names if n in derived)]
    infos = {
        name: build_image(specs[name], workdir, args.rebuild)
        for name in specs
        if name in names or name in bases
    }
    problems: dict[str, str] = {}
    for name in names:
        if name in derived:
            spec = derived[name]
            try:
                infos[name] = derive_image(spec, infos[spec.base], workdir, args.rebuild)
            except (BenchError, OSError, subprocess.SubprocessError) as error:
                problems[name] = f"not built: {one_line(error)}"
                logger.info(f"{name}: {problems[name]}")
    names = [name for name in names if name not in problems]
    contenders = find_contenders(args.ocifs, workdir, args.skip_ratarmount, args.skip_umoci)
    contenders.keep_unpacked = args.keep_unpacked
    versions_used = versions(contenders)
    machine_line = machine()

    mounter = Mounter(workdir / "mnt", workdir / "logs")
    results: dict[str, dict[str, dict[str, Cell]]] = {}
    images: dict[str, Image] = {}
    gzip_images = {name: prepare_image(name, infos[name]) for name in specs if name in infos}
    unpacked: dict[str, dict[str, Cell]] = {}
    try:
        mounter.unmount()  # a leftover of an interrupted run
        for name in names:
            base = derived[name].base if name in derived else None
            images[name] = prepare_image(name, infos[name], gzip_images.get(base or ""))
            results[name] = measure_image(images[name], contenders, workdir, mounter, unpacked)
    finally:
        mounter.unmount()

    elapsed = time.monotonic() - STARTED
    report = compose(
        machine_line,
        versions_used,
        {name: infos[name] for name in names},
        images,
        results,
        contenders,
        DROPPER.global_method,
        elapsed,
        problems,
    )
    print(report.text)
    if args.json:
        args.json.write_text(json.dumps(report.document(), indent=1, default=str) + "\n")
        logger.info(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("scripts/bench: interrupted", file=sys.stderr)
        sys.exit(130)
