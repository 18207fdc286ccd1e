"""The fuzzer's command line (``python -m fuzz``, which ``scripts/fuzz`` runs): run cases until
the time is up, or replay one; print the classes counted.

    scripts/fuzz [--seconds N] [--seed N] [--out DIR] [--json FILE] [--keep-all] [--no-strace]
    scripts/fuzz --replay CASE_DIR

The exit status is 0 when every case ended clean (``classify.CLEAN``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from . import hostpaths
from . import mutations as mu
from .classify import CLEAN, KNOWN, ORDER, Outcome, classify
from .runner import REPO, Case, CaseSpec, Observation, Settings, plan_case, remove_case_dir

logger = logging.getLogger("fuzz")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fuzz", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="run cases for this long (default 60)"
    )
    parser.add_argument("--seed", type=int, help="the run's seed (default: a random one, printed)")
    parser.add_argument("--max-cases", type=int, help="stop after this many cases")
    parser.add_argument(
        "--out",
        type=Path,
        help="where failing cases are kept (default /tmp/ocifs-fuzz-SEED)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary here")
    parser.add_argument(
        "--keep-all", action="store_true", help="keep every case, not only the failing"
    )
    parser.add_argument("--no-strace", action="store_true", help="never run mounts under strace")
    parser.add_argument("--replay", type=Path, metavar="CASE", help="run a saved case again")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="cases run at once (default: 2, 1 on one CPU)",
    )
    parser.add_argument(
        "--ocifs", metavar="CMD", help="the ocifs command (default: this Python's -m ocifs)"
    )
    return parser.parse_args(argv)


def case_seed(run_seed: int, number: int) -> int:
    return random.Random(f"{run_seed}/{number}").getrandbits(63)


def commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return result.stdout.strip()


def copy_entry(source: str, target: str) -> None:
    """Copy a file of a case; a fifo (a mutation's) is made anew, never opened."""
    if stat.S_ISFIFO(os.lstat(source).st_mode):
        os.mkfifo(target)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def save_case(
    case: Case, spec: CaseSpec, outcome: Outcome, observation: Any, out: Path, number: int
) -> Path:
    """Keep a case's directory (without its mount point) with ``case.json``: the spec to
    replay it from, what the mutations did, the outcome and the observations."""
    kept = out / "cases" / f"{number:05d}-{outcome.primary}"
    if kept.exists():
        shutil.rmtree(kept)
    shutil.copytree(
        case.dir,
        kept,
        symlinks=True,
        ignore=shutil.ignore_patterns("mnt", "streams"),
        copy_function=copy_entry,
    )
    record = {
        "spec": spec.to_json(),
        "commit": commit(),
        "mount_arg": case.built.mount_arg if case.built else "",
        "notes": case.built.notes if case.built else [],
        "outcome": outcome.to_json(),
        "observation": observation.to_json(),
        "replay": f"scripts/fuzz --replay {kept}",
    }
    (kept / "case.json").write_text(json.dumps(record, indent=1, default=str))
    return kept


def run_one(
    spec: CaseSpec, run_dir: Path, number: int, settings: Settings
) -> tuple[Case, Outcome, Any]:
    case_dir = run_dir / "work" / f"case-{number:05d}"
    if case_dir.exists():
        remove_case_dir(case_dir)
    case = Case(spec, run_dir, case_dir, settings)
    try:
        built, observation = case.run()
    except Exception:  # the fuzzer's own bug: counted, kept, and the run goes on
        logger.exception("case %d: the fuzzer failed", number)
        trace = traceback.format_exc()[-2000:]
        return case, Outcome("fuzzer-error", {"fuzzer-error": [trace]}), Observation([])
    return case, classify(spec, built, observation), observation


def prepare(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    hostpaths.place_canary(mu.CANARY_SECRET)
    hostpaths.place_canary(run_dir / mu.CANARY_NAME)


def settings_for(args: argparse.Namespace, run_dir: Path) -> Settings:
    ocifs = args.ocifs.split() if args.ocifs else [sys.executable, "-m", "ocifs"]
    strace = not args.no_strace and shutil.which("strace") is not None
    baseline = hostpaths.baseline(ocifs, run_dir) if strace else frozenset()
    return Settings(ocifs, strace, baseline)


def replay(args: argparse.Namespace) -> int:
    path: Path = args.replay
    record = json.loads((path / "case.json" if path.is_dir() else path).read_text())
    spec = CaseSpec.from_json(record["spec"])
    run_dir = Path(f"/tmp/ocifs-fuzz-replay-{os.getpid()}")
    prepare(run_dir)
    try:
        case, outcome, observation = run_one(spec, run_dir, 0, settings_for(args, run_dir))
        print(f"case seed {spec.seed} ({spec.image}), mutations:")
        for note in case.built.notes if case.built else []:
            print(f"  {note}")
        print(f"outcome: {outcome.primary} (saved: {record['outcome']['primary']})")
        for name, reasons in outcome.classes.items():
            print(
                f"  {name}: {reasons[0]}"
                + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
            )
        print(f"stderr: {observation.stderr.strip()[-500:]}")
    finally:
        remove_case_dir(run_dir / "work" / "case-00000")
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if outcome.primary == record["outcome"]["primary"] else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fuzz: %(message)s", stream=sys.stderr)
    if args.replay is not None:
        return replay(args)
    if os.geteuid() != 0:
        logger.warning("not root: mounts may fail for want of /dev/fuse")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out: Path = (args.out or Path(f"/tmp/ocifs-fuzz-{seed}")).resolve()
    prepare(out)
    settings = settings_for(args, out)
    logger.info(
        "seed %d, %.0f s, cases kept in %s, strace %s",
        seed,
        args.seconds,
        out,
        "on" if settings.strace else "off",
    )
    counts: Counter[str] = Counter()
    every: Counter[str] = Counter()
    examples: dict[str, str] = {}
    started = time.monotonic()
    number = 0
    running: dict[Future[tuple[Case, Outcome, Any]], tuple[int, CaseSpec]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while True:
            while (
                len(running) < args.jobs
                and time.monotonic() - started < args.seconds
                and (args.max_cases is None or number < args.max_cases)
            ):
                spec = plan_case(case_seed(seed, number), settings.strace)
                running[pool.submit(run_one, spec, out, number, settings)] = (number, spec)
                number += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                case_number, spec = running.pop(future)
                case, outcome, observation = future.result()
                counts[outcome.primary] += 1
                every.update(outcome.classes.keys())
                if outcome.primary not in CLEAN or args.keep_all:
                    kept = save_case(case, spec, outcome, observation, out, case_number)
                    examples.setdefault(outcome.primary, str(kept))
                    first = outcome.classes[outcome.primary][0]
                    logger.info(
                        "case %d (%s): %s: %s",
                        case_number,
                        spec.image,
                        outcome.primary,
                        first[:200],
                    )
                remove_case_dir(case.dir)
    elapsed = time.monotonic() - started
    shutil.rmtree(out / "work", ignore_errors=True)
    summary = {
        "seed": seed,
        "seconds": round(elapsed, 1),
        "cases": number,
        "classes": {name: counts[name] for name in ORDER if counts[name]},
        "classes_seen": {name: every[name] for name in ORDER if every[name]},
        "examples": examples,
        "known": {name: KNOWN[name] for name in KNOWN if every[name]},
        "out": str(out),
        "commit": commit(),
    }
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if all(name in CLEAN for name in counts) else 1


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"fuzz: {summary['cases']} cases in {summary['seconds']} s"
        f" (seed {summary['seed']}, {summary['commit']})",
        f"{'class':<24} {'cases':>7} {'seen in':>8}",
    ]
    for name in ORDER:
        count = summary["classes"].get(name, 0)
        seen = summary["classes_seen"].get(name, 0)
        if count or seen or name in ("host-path", "hang", "stale", "traceback"):
            tag = " (known)" if name in KNOWN else ""
            lines.append(f"{name:<24} {count:>7} {seen:>8}{tag}")
    for name, path in summary["examples"].items():
        lines.append(f"  e.g. {name}: scripts/fuzz --replay {path}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
