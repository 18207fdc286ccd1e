"""The commands compared (ocifs, ratarmount, umoci), their versions and the machine they ran on.

Also the versions of the commands that made the derived images or are their floors (skopeo,
zstd, openssl).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .steps import BenchError, checked, one_line, run

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Contenders:
    """What runs against what: a problem is the cell a tool's row shows instead of numbers."""

    ocifs: list[str]
    ocifs_cached: bool  # ocifs mount has --cache-dir
    ocifs_problem: str
    ratarmount: Path | None
    ratarmount_problem: str  # "skipped" or "failed: ..." when ratarmount is None
    skip_umoci: bool
    keep_unpacked: bool = False  # keep umoci's tree for later runs, and take one kept before


def ocifs_command(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    venv = REPO / ".venv" / "bin" / "ocifs"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("ocifs")
    return [found] if found else [sys.executable, "-m", "ocifs"]


def ocifs_has_cache_dir(ocifs: list[str]) -> bool:
    _, result = checked([*ocifs, "mount", "--help"], "ocifs mount --help", timeout=60)
    return "--cache-dir" in result.stdout


def ensure_ratarmount(workdir: Path) -> Path:
    """WORKDIR/venv-ratarmount/bin/ratarmount, installed from PyPI on first use."""
    venv = workdir / "venv-ratarmount"
    command = venv / "bin" / "ratarmount"
    if command.exists():
        return command
    logger.info(f"installing ratarmount from PyPI into {venv} ...")
    if venv.exists():
        shutil.rmtree(venv)
    checked([sys.executable, "-m", "venv", str(venv)], "python3 -m venv")
    checked(
        [str(venv / "bin" / "pip"), "install", "-q", "ratarmount"],
        "pip install ratarmount",
        timeout=1800,
    )
    if not command.exists():
        raise BenchError("pip installed no ratarmount command")
    return command


def find_contenders(
    ocifs_cmd: str | None, workdir: Path, skip_ratarmount: bool, skip_umoci: bool
) -> Contenders:
    ocifs = ocifs_command(ocifs_cmd)
    ocifs_cached = False
    ocifs_problem = ""
    try:
        ocifs_cached = ocifs_has_cache_dir(ocifs)
    except (BenchError, OSError, subprocess.SubprocessError) as error:
        ocifs_problem = f"failed: {one_line(error)}"
    if not ocifs_cached and not ocifs_problem:
        logger.info("ocifs mount has no --cache-dir: mounting without it, later mounts not cached")
    ratarmount: Path | None = None
    ratarmount_problem = "skipped" if skip_ratarmount else ""
    if not skip_ratarmount:
        try:
            ratarmount = ensure_ratarmount(workdir)
        except (BenchError, OSError, subprocess.SubprocessError) as error:
            ratarmount_problem = f"failed: {one_line(error)}"
    return Contenders(
        ocifs, ocifs_cached, ocifs_problem, ratarmount, ratarmount_problem, skip_umoci
    )


def first_line_of(argv: list[str]) -> str:
    try:
        _, result = run(argv, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({one_line(error)})"
    text = result.stdout.strip() or result.stderr.strip()
    return text.splitlines()[0].strip() if text else "unknown"


def ratarmount_version(command: Path) -> str:
    """ratarmount's own version and those of the libraries that decide its speed."""
    try:
        _, result = run([str(command), "--version"], timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({one_line(error)})"
    lines = result.stdout.splitlines()
    found = [
        line.strip()
        for line in lines
        if re.match(
            r"(ratarmount|ratarmountcore|rapidgzip|indexed_gzip|indexed_zstd) ", line.strip()
        )
    ]
    return ", ".join(found) if found else (lines[0] if lines else "unknown")


def ocifs_version(ocifs: list[str]) -> str:
    """``ocifs --version`` and the repository's commit, marked when ocifs/ has changes."""
    commit = first_line_of(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    _, status = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "ocifs"], timeout=60)
    dirty = ", with uncommitted changes in ocifs/" if status.stdout.strip() else ""
    return f"{first_line_of([*ocifs, '--version'])} (git {commit}{dirty})"


def versions(contenders: Contenders) -> dict[str, str]:
    """One line per program, in the order of the header's "versions:" line."""
    ratarmount = contenders.ratarmount
    return {
        "ocifs": ocifs_version(contenders.ocifs)
        + ("" if contenders.ocifs_cached else " [no --cache-dir]"),
        "ratarmount": ratarmount_version(ratarmount)
        if ratarmount
        else f"ratarmount {contenders.ratarmount_problem}",
        "umoci": "umoci skipped"
        if contenders.skip_umoci
        else first_line_of(["umoci", "--version"]),
        "gzip": first_line_of(["gzip", "--version"]),
        "zstd": first_line_of(["zstd", "--version"]).strip("* "),
        "skopeo": first_line_of(["skopeo", "--version"]),
        "openssl": first_line_of(["openssl", "version"]),
        "tar": first_line_of(["tar", "--version"]),
        "python": f"Python {platform.python_version()}",
    }


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} cores, {model}{memory}, Linux {platform.release()}, "
        f"load average at the start {os.getloadavg()[0]:.2f}"
    )
