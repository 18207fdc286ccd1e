"""Mount an image with the real ``ocifs`` command in a subprocess, and always unmount it."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

OCIFS = [sys.executable, "-m", "ocifs"]


def run_ocifs(
    *args: str, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``ocifs ARGS`` and capture its output as text."""
    return subprocess.run(
        [*OCIFS, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def unmount(mountpoint: Path) -> None:
    """Unmount if still mounted, waiting a little for the daemon to let go."""
    for _ in range(50):
        if not is_mounted(mountpoint):
            return
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        time.sleep(0.1)
    raise AssertionError(f"{mountpoint} is still mounted")


@contextlib.contextmanager
def mounted(image: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    """``ocifs mount OPTIONS IMAGE MOUNTPOINT`` (background daemon); unmounts on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = run_ocifs("mount", *options, image, str(mountpoint))
    try:
        assert result.returncode == 0, f"ocifs mount failed: {result.stderr}"
        assert is_mounted(mountpoint), "ocifs mount returned 0 but nothing is mounted"
        yield mountpoint
    finally:
        unmount(mountpoint)


@contextlib.contextmanager
def dev_fuse_mode(mode: int) -> Iterator[None]:
    """Give /dev/fuse these permission bits for one test, then put the old ones back.

    Debian's udev rule makes it 0666, so that ordinary users can mount through fusermount3;
    some containers leave it 0600. Tests of either case set the case they test.
    """
    old = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", old)
