"""Run real programs from a mounted image with chroot (M1, A1, A5: an image that works).

The lower layer is a minimal Debian userland copied from this machine: /bin/sh (dash), ls, cat,
the shared libraries ``ldd`` names, the dynamic loader and /etc/os-release, with the merged-usr
symlinks (/bin -> usr/bin, /lib -> usr/lib, /lib64 -> usr/lib64) exactly as on the host. The
upper layer adds Debian's /usr/bin/python3.11, its libraries and its standard library (without
site-packages, dist-packages, test and __pycache__). Both layers are gzip. The kernel
resolves the image's symlinks (merged-usr, /bin/sh -> dash, /etc/os-release ->
../usr/lib/os-release, library sonames) and execs its binaries (A1, A5) from both layers (M1).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted

from ocifs.ocibuild import LayoutWriter, host_platform

PYTHON = "/usr/bin/python3.11"
LOWER_PROGRAMS = ["/bin/sh", "/bin/ls", "/bin/cat"]
STDLIB = "/usr/lib/python3.11"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
SKIP_DIRS = {"site-packages", "dist-packages", "test", "__pycache__"}

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root"),
    pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd"),
    pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"needs Debian's {PYTHON}"),
]


def shared_libraries(program: str) -> list[str]:
    """The libraries and the loader ``ldd`` says ``program`` needs, as host paths."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            paths.append(match.group(1))
    assert paths, f"ldd found no libraries for {program}: is it dynamically linked?"
    return paths


def with_symlinks(path: str, out: set[str]) -> None:
    """Add ``path`` and every directory, symlink and symlink target on the way to it."""
    parts = Path(path).parts[1:]
    current = "/"
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        out.add(current)
        if os.path.islink(current):
            target = os.readlink(current)
            base = "/" if target.startswith("/") else os.path.dirname(current)
            resolved = os.path.normpath(os.path.join(base, target))
            with_symlinks(os.path.join(resolved, *parts[i + 1 :]), out)
            return


def tar_of(paths: set[str], trees: tuple[str, ...] = ()) -> bytes:
    """A tar of host ``paths`` (not recursive) then whole ``trees``, symlinks kept as links."""

    def skip_junk(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if os.path.basename(info.name) in SKIP_DIRS else info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths):
            tar.add(path, arcname=path.lstrip("/"), recursive=False)
        for tree in trees:
            tar.add(tree, arcname=tree.lstrip("/"), recursive=True, filter=skip_junk)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("chroot")
    lower: set[str] = set()
    for program in LOWER_PROGRAMS:
        with_symlinks(program, lower)
        for library in shared_libraries(program):
            with_symlinks(library, lower)
    with_symlinks("/etc/os-release", lower)
    upper: set[str] = set()
    with_symlinks(PYTHON, upper)
    for library in shared_libraries(PYTHON):
        with_symlinks(library, upper)
    upper -= lower  # what the lower layer already has (directories, libc, the loader)
    upper.discard(STDLIB)

    writer = LayoutWriter(base / "layout")
    layers = [
        writer.add_layer(tar_of(lower), "gzip"),
        writer.add_layer(tar_of(upper, (STDLIB,)), "gzip"),
    ]
    writer.add_image(layers, ref="debian-mini", platform=host_platform())
    writer.save()
    with mounted(f"{base / 'layout'}:debian-mini", base / "mnt") as mountpoint:
        yield mountpoint


def chroot(mountpoint: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROOT, str(mountpoint), *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C"},
    )


def test_a1_merged_usr_symlinks(rootfs: Path) -> None:
    """A1: the merged-usr symlinks of the host are in the image as symlinks."""
    for name in ["bin", "lib", "lib64"]:
        host = Path("/") / name
        if host.is_symlink():
            assert os.readlink(rootfs / name) == os.readlink(host)


def test_m1_chroot_shell_ls_and_cat_from_lower_layer(rootfs: Path) -> None:
    """M1 A5: dash, ls and cat from the lower layer run; os-release is the host's."""
    result = chroot(rootfs, "/bin/sh", "-c", "ls /; cat /etc/os-release")
    assert result.returncode == 0, result.stderr
    os_release = Path("/etc/os-release").read_text()
    listing, _, rest = result.stdout.partition(os_release.splitlines()[0])
    assert {"bin", "etc", "lib", "usr"} <= set(listing.split())
    assert os_release.splitlines()[0] + rest == os_release
    assert result.stdout.endswith(os_release)


def test_m1_chroot_python_from_upper_layer(rootfs: Path) -> None:
    """M1 A5: Debian's python3.11 from the upper layer starts and imports its stdlib."""
    result = chroot(rootfs, PYTHON, "-I", "-S", "-c", "import sys; print(sys.version)")
    assert result.returncode == 0, result.stderr
    host = subprocess.run(
        [PYTHON, "-I", "-S", "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == host.stdout
    assert result.stdout.startswith("3.11.")
    more = chroot(
        rootfs,
        PYTHON,
        "-I",
        "-S",
        "-c",
        "import hashlib, json, os; print(json.dumps(sorted(os.listdir('/'))));"
        " print(hashlib.sha256(b'ocifs').hexdigest())",
    )
    assert more.returncode == 0, more.stderr
    assert more.stdout.splitlines() == [
        json.dumps(sorted(os.listdir(rootfs))),
        hashlib.sha256(b"ocifs").hexdigest(),
    ]
