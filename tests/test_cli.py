"""The command line around the mount: progress on a terminal only, umount, usage errors (sizes
among them), and the daemon's log (where it is, what an EIO writes in it)."""

from __future__ import annotations

import argparse
import gzip
import os
import pty
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from archives import tar_tree
from mounting import OCIFS, is_mounted, mounted, run_ocifs, unmount
from tarbuild import f, make_tar

from ocifs import daemonlog
from ocifs.cli import parse_size
from ocifs.mediatypes import OCI_LAYER_GZIP
from ocifs.ocibuild import LayoutWriter, host_platform, sha256_digest

pytestmark = pytest.mark.fuse  # these tests mount: see conftest


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "layout"
    writer = LayoutWriter(root)
    layer = writer.add_layer(make_tar([f("hello", b"hello\n")]))
    writer.add_image([layer], ref="v1", platform=host_platform())
    writer.save()
    return root


def test_progress_is_shown_on_a_terminal(layout: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = shlex.join([*OCIFS, "mount", f"{layout}:v1", str(mountpoint)])
    try:
        result = subprocess.run(
            ["script", "-qefc", command, "/dev/null"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout
        assert "indexing 1 layer(s)" in result.stdout
        assert (mountpoint / "hello").read_bytes() == b"hello\n"
    finally:
        unmount(mountpoint)


def test_progress_is_shown_while_a_gzipped_archive_is_read(layout: Path, tmp_path: Path) -> None:
    """A gzipped archive is inflated whole for its member table: that shows progress too."""
    archive = tar_tree(layout, tmp_path / "img.tar.gz", gzipped=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = shlex.join([*OCIFS, "mount", f"{archive}:v1", str(mountpoint)])
    try:
        result = subprocess.run(
            ["script", "-qefc", command, "/dev/null"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout
        assert "ocifs: reading the archive" in result.stdout
        assert "archive img.tar.gz:" in result.stdout
        assert "indexing 1 layer(s)" in result.stdout
        assert (mountpoint / "hello").read_bytes() == b"hello\n"
    finally:
        unmount(mountpoint)


def test_quiet_when_not_a_terminal(layout: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = run_ocifs("mount", f"{layout}:v1", str(mountpoint))
        assert result.returncode == 0
        assert (result.stdout, result.stderr) == ("", "")
    finally:
        unmount(mountpoint)


def test_umount_unmounts_and_the_daemon_exits(layout: Path, tmp_path: Path) -> None:
    with mounted(f"{layout}:v1", tmp_path / "mnt") as mnt:
        daemons = daemon_pids(mnt)
        assert len(daemons) == 1
        result = run_ocifs("umount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mnt)
        wait_gone(daemons[0])


def test_umount_refuses_what_is_not_an_ocifs_mount(tmp_path: Path) -> None:
    result = run_ocifs("umount", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"ocifs: error: {tmp_path} is not mounted"
    result = run_ocifs("umount", "/proc")
    assert result.returncode == 1
    assert "is not an ocifs mount (it is proc)" in result.stderr


def test_fsname_and_options_show_in_the_mount_table(layout: Path, tmp_path: Path) -> None:
    with mounted(f"{layout}:v1", tmp_path / "mnt") as mnt:
        line = next(
            line
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(mnt)
        )
        source, _, fstype, options = line.split()[:4]
        assert (source, fstype) == (f"{layout}:v1", "fuse.ocifs")
        assert "ro" in options.split(",")
        assert "default_permissions" in options.split(",")


def test_usage_errors_exit_2_without_traceback() -> None:
    result = subprocess.run([*OCIFS, "mount"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


SIZE_HINT = (
    "expected a number of bytes with an optional K, M or G suffix (powers of 1024), like 64M"
)


@pytest.mark.parametrize("value", ["-1", "lots", "1T", "", "1.5G", "6 4M", "+64M", "0x40"])
def test_a_bad_read_cache_size_says_what_a_size_looks_like(value: str, tmp_path: Path) -> None:
    """--read-cache, the one size option: argparse's usage block, then one line that says
    what was given and what a size looks like; nothing is resolved or mounted."""
    result = subprocess.run(
        [*OCIFS, "mount", "--read-cache", value, "nowhere:v1", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("usage: ocifs mount") and "Traceback" not in result.stderr
    assert lines[-1] == (
        f"ocifs mount: error: argument --read-cache: invalid size {value!r}: {SIZE_HINT}"
    )


def test_sizes_that_parse() -> None:
    """Plain bytes, K/M/G in powers of 1024, in any case, with B or iB after; a number too
    big for any machine is refused with the same kind of line."""
    assert parse_size("4096") == 4096
    assert parse_size("64M") == parse_size("64m") == parse_size("64MiB") == parse_size("64MB")
    assert parse_size(" 1g ") == 1 << 30 and parse_size("0") == 0 and parse_size("2k") == 2048
    assert parse_size("4294967296G") == 1 << 62
    with pytest.raises(argparse.ArgumentTypeError, match=r"invalid size '4294967297G': over 4"):
        parse_size("4294967297G")
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(5000 bytes\): over 4 EiB"):
        parse_size("9" * 5000)  # int() alone would fail on so many digits


def daemon_pids(mountpoint: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ocifs" in argv and b"mount" in argv and str(mountpoint).encode() in argv:
            pids.append(int(entry))
    return pids


def wait_gone(pid: int) -> None:
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        subprocess.run(["sleep", "0.05"])
    raise AssertionError(f"daemon {pid} still running after umount")


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize("allow_other", [False, True])
def test_o_allow_other_lets_other_users_in(layout: Path, allow_other: bool) -> None:
    """-o passes FUSE options through: without allow_other only the mounting user gets in."""
    workdir = Path(tempfile.mkdtemp(prefix="ocifs-allow-", dir="/tmp"))
    workdir.chmod(0o755)
    options = ["-o", "allow_other"] if allow_other else []
    try:
        with mounted(f"{layout}:v1", workdir / "mnt", *options) as mnt:
            read = subprocess.run(
                [*NOBODY, "cat", str(mnt / "hello")], capture_output=True, text=True, timeout=30
            )
            if allow_other:
                assert (read.returncode, read.stdout) == (0, "hello\n")
            else:
                assert read.returncode != 0
                assert "Permission denied" in read.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def many_entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose indexing takes a while (seconds, even with ISA-L on an idle machine,
    so that a SIGINT sent when the progress line appears lands while it runs): 12 layers of
    the same 40,000 small files, each gzipped with another header mtime, so 12 blobs with
    their own digests (each indexed) and one diff_id (built once)."""
    root = tmp_path_factory.mktemp("many") / "layout"
    writer = LayoutWriter(root)
    members = [f(f"d{i % 100}/file{i}", b"x" * (i % 700)) for i in range(40_000)]
    tar = make_tar(members)
    diff_id = sha256_digest(tar)
    layers = [
        (writer.add_blob(gzip.compress(tar, compresslevel=1, mtime=n), OCI_LAYER_GZIP), diff_id)
        for n in range(12)
    ]
    writer.add_image(layers, ref="many", platform=host_platform())
    writer.save()
    return root


def test_ctrl_c_while_indexing_exits_130_and_mounts_nothing(
    many_entries: Path, tmp_path: Path
) -> None:
    """SIGINT during indexing: one line, status 130, no traceback, nothing mounted."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    pid, terminal = pty.fork()
    if pid == 0:  # the child: ocifs on a terminal, so that it shows progress
        # As at a terminal: a runner started in the background (`cmd &` in a script) ignores
        # SIGINT, and Python keeps an ignored SIGINT ignored.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(OCIFS[0], [*OCIFS, "mount", f"{many_entries}:many", str(mountpoint)])
    output = b""
    try:
        while b"indexing" not in output:
            output += os.read(terminal, 4096)
        os.kill(pid, signal.SIGINT)
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child has gone and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
        unmount(mountpoint)
    text = output.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert "ocifs: interrupted" in text
    assert "Traceback" not in text
    assert not is_mounted(mountpoint)


def test_o_max_read_is_refused_before_anything_is_mounted(layout: Path, tmp_path: Path) -> None:
    """libfuse takes -o max_read at mount time and then ends the session at the kernel's
    INIT (pyfuse3 asks for another size), leaving a dead mount point: refuse it up front."""
    result = run_ocifs("mount", "-o", "ro,max_read=1048576", f"{layout}:v1", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == "ocifs: error: -o max_read=1048576 is not supported by ocifs\n"
    assert not is_mounted(tmp_path)


def test_readahead_is_widened_once_a_file_is_opened(layout: Path, tmp_path: Path) -> None:
    """The kernel sets a mount's readahead from the INIT reply (128 KiB); as root, ocifs
    raises it to 1 MiB when the first file is opened, for bigger, fewer sequential reads."""
    with mounted(f"{layout}:v1", tmp_path / "mnt") as mnt:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        device = next(f[2] for f in map(str.split, mountinfo) if f[4] == str(mnt))
        setting = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
        assert (mnt / "hello").read_bytes() == b"hello\n"
        assert setting.read_text().strip() == "1024"


# --- the daemon's log ------------------------------------------------------------------------


def words(seed: int, size: int) -> bytes:
    """Text that gzip shrinks, but not to nothing: damage in it is met where it is."""
    rng = random.Random(seed)
    vocabulary = [rng.randbytes(rng.randint(2, 8)).hex() for _ in range(2000)]
    text = " ".join(rng.choice(vocabulary) for _ in range(size // 8))
    return text.encode()[:size]


DAMAGED_PATH = "srv/data/damaged.txt"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """(image, cache dir, layer digest): an image indexed into the cache, then damaged in the
    middle of a file's compressed data (the cache checks only a sample of the blob: size,
    head and tail). A mount takes the index from the cache and meets the damage on reading."""
    root = tmp_path_factory.mktemp("damaged")
    writer = LayoutWriter(root / "layout")
    tar = make_tar([f("ok.txt", b"fine\n"), f(DAMAGED_PATH, words(1, 2 << 20))])
    descriptor, diff_id = writer.add_layer(tar, "gzip")
    writer.add_image([(descriptor, diff_id)], ref="v1", platform=host_platform())
    writer.save()
    image, cache = f"{root / 'layout'}:v1", root / "cache"
    indexed = run_ocifs("index", "--cache-dir", str(cache), image)
    assert indexed.returncode == 0, indexed.stderr
    blob = writer.blob_path(descriptor["digest"])
    size = blob.stat().st_size
    assert size > 400_000  # the damage stays clear of the sampled head and tail
    with blob.open("r+b") as raw:
        raw.seek(size * 4 // 10)
        raw.write(random.Random(2).randbytes(size * 4 // 10))
    return image, cache, descriptor["digest"]


def read_fails_with_eio(path: Path) -> None:
    result = subprocess.run(["cat", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Input/output error" in result.stderr


# 2024-05-01 12:00:00,123 ocifs[4242] ERROR ocifs.fuse_ops: EIO: read of '/srv/...' ...
EIO_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ocifs\[\d+\] ERROR ocifs.fuse_ops:"
    r" EIO: read of '/(?P<path>[^']*)' .* from (?P<layer>layer \d+ \([^)]*\)): (?P<why>.+)"
)


def eio_lines(log: Path) -> list[re.Match[str]]:
    return [m for m in map(EIO_LINE.fullmatch, log.read_text().splitlines()) if m is not None]


def test_eio_of_a_background_mount_is_in_the_default_log(
    damaged: tuple[str, Path, str], tmp_path: Path, private_log_dir: Path
) -> None:
    image, cache, digest = damaged
    with mounted(image, tmp_path / "mnt", "--cache-dir", str(cache)) as mnt:
        assert (mnt / "ok.txt").read_bytes() == b"fine\n"
        read_fails_with_eio(mnt / DAMAGED_PATH)
        log = private_log_dir / daemonlog.log_file_name(str(mnt))
        assert [log] == list(private_log_dir.iterdir())
        lines = eio_lines(log)
        assert lines, log.read_text()
        assert {(m["path"], m["layer"]) for m in lines} == {(DAMAGED_PATH, f"layer 0 ({digest})")}
        assert is_mounted(mnt)


def test_log_file_option_takes_the_log(
    damaged: tuple[str, Path, str], tmp_path: Path, private_log_dir: Path
) -> None:
    image, cache, _ = damaged
    log = tmp_path / "chosen.log"
    with mounted(image, tmp_path / "mnt", "--cache-dir", str(cache), "--log-file", str(log)) as mnt:
        read_fails_with_eio(mnt / DAMAGED_PATH)
        assert {line["path"] for line in eio_lines(log)} == {DAMAGED_PATH}
    assert not private_log_dir.exists()


def test_debug_says_where_the_log_is(layout: Path, tmp_path: Path, private_log_dir: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    chosen = tmp_path / "chosen.log"
    for options, log in (
        ([], private_log_dir / daemonlog.log_file_name(str(mnt))),
        (["--log-file", str(chosen)], chosen),
    ):
        try:
            result = run_ocifs("mount", "--debug", *options, f"{layout}:v1", str(mnt))
            assert result.returncode == 0, result.stderr
            assert f"the daemon logs to {log}\n" in result.stderr
            assert (mnt / "hello").read_bytes() == b"hello\n"
        finally:
            unmount(mnt)
        assert "read(" in log.read_text()  # --debug logs every request, in the file


@pytest.mark.parametrize("log_file", [False, True], ids=["stderr", "log-file"])
def test_foreground_logs_to_the_terminal_unless_given_a_log_file(
    damaged: tuple[str, Path, str], tmp_path: Path, private_log_dir: Path, log_file: bool
) -> None:
    image, cache, _ = damaged
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "chosen.log"
    options = ["--log-file", str(log)] if log_file else []
    process = subprocess.Popen(
        [*OCIFS, "mount", "-f", *options, "--cache-dir", str(cache), image, str(mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if is_mounted(mnt) or process.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert is_mounted(mnt)
        read_fails_with_eio(mnt / DAMAGED_PATH)
    finally:
        unmount(mnt)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    if log_file:
        assert stderr == ""
        assert {line["path"] for line in eio_lines(log)} == {DAMAGED_PATH}
    else:
        assert f"ocifs: EIO: read of '/{DAMAGED_PATH}'" in stderr
    assert not private_log_dir.exists()
