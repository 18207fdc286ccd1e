"""The index cache through the real command line: ``ocifs index``, later mounts, --no-cache,
--cache-dir, --read-cache, and a damaged cache file met by a real mount."""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from impostors import KINDS, put_in_place
from mounting import OCIFS, is_mounted, mounted, run_ocifs, unmount
from tarbuild import d, f, make_tar

from ocifs.ocibuild import LayoutWriter, host_platform

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

BIG = 24 << 20


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(7).randbytes(BIG)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, payload: bytes) -> Path:
    """Two images sharing a base layer: v1 = base + up1, v2 = base + up2."""
    root = tmp_path_factory.mktemp("cache") / "layout"
    writer = LayoutWriter(root)
    base = writer.add_layer(make_tar([d("data"), f("data/big", payload), f("data/gone", b"x")]))
    up1 = writer.add_layer(make_tar([f("data/.wh.gone"), f("data/one", b"one\n")]))
    up2 = writer.add_layer(make_tar([f("data/two", b"two\n")]), compression="none")
    writer.add_image([base, up1], ref="v1", platform=host_platform())
    writer.add_image([base, up2], ref="v2", platform=host_platform())
    writer.save()
    return root


def cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


def test_index_then_mount_reads_no_layer_blob(layout: Path, tmp_path: Path, payload: bytes) -> None:
    """``ocifs index`` builds the cache; a later mount takes everything from it. The proof:
    the foreground daemon's read() total stays far below the size of the layer blobs."""
    cache = tmp_path / "cache"
    first = run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v1")
    assert first.returncode == 0, first.stderr
    assert "2 layer(s), 2 indexed, 0 from the cache" in first.stdout
    again = run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v1")
    assert "0 indexed, 2 from the cache" in again.stdout
    assert len([n for n in cache_files(cache) if n.startswith("layers/")]) == 2
    assert len([n for n in cache_files(cache) if n.startswith("trees/")]) == 1

    cold = mounted_read_bytes(layout, tmp_path / "cold", "--cache-dir", str(tmp_path / "empty"))
    warm = mounted_read_bytes(layout, tmp_path / "warm", "--cache-dir", str(cache))
    assert cold > BIG  # the first mount read the blobs
    assert warm < cold - BIG // 2, (cold, warm)
    with mounted(f"{layout}:v1", tmp_path / "mnt", "--cache-dir", str(cache)) as mnt:
        assert sorted(os.listdir(mnt / "data")) == ["big", "one"]  # W1 from a cached tree
        assert hashlib.sha256((mnt / "data/big").read_bytes()).digest() == (
            hashlib.sha256(payload).digest()
        )


def mounted_read_bytes(layout: Path, mountpoint: Path, *options: str) -> int:
    """Mount in the foreground; how many bytes the process had read once it was mounted."""
    mountpoint.mkdir()
    process = subprocess.Popen(
        [*OCIFS, "mount", "-f", *options, f"{layout}:v1", str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mountpoint):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "not mounted within 60 s"
            time.sleep(0.01)
        io = Path(f"/proc/{process.pid}/io").read_text()
        return int(next(line.split()[1] for line in io.splitlines() if line.startswith("rchar")))
    finally:
        unmount(mountpoint)
        process.wait(timeout=30)


def test_second_image_sharing_the_base_indexes_only_its_own_layer(
    layout: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v1").returncode == 0
    result = run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v2")
    assert "2 layer(s), 1 indexed, 1 from the cache" in result.stdout, result.stdout
    with mounted(f"{layout}:v2", tmp_path / "mnt", "--cache-dir", str(cache)) as mnt:
        assert sorted(os.listdir(mnt / "data")) == ["big", "gone", "two"]
        assert (mnt / "data/two").read_bytes() == b"two\n"


def test_default_cache_is_xdg_cache_home_and_no_cache_writes_nothing(
    layout: Path, tmp_path: Path, private_index_cache: Path
) -> None:
    with mounted(f"{layout}:v1", tmp_path / "mnt", "--no-cache") as mnt:
        assert (mnt / "data/one").read_bytes() == b"one\n"
    assert not private_index_cache.exists()
    with mounted(f"{layout}:v1", tmp_path / "mnt") as mnt:
        assert (mnt / "data/one").read_bytes() == b"one\n"
    assert len(cache_files(private_index_cache)) == 3  # two layers and their merged tree


def test_damaged_cache_file_is_rebuilt_by_the_next_mount(layout: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v1").returncode == 0
    for name in cache_files(cache):
        path = cache / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data[: len(data) - 7]))  # flipped and truncated
    with mounted(f"{layout}:v1", tmp_path / "mnt", "--cache-dir", str(cache)) as mnt:
        assert (mnt / "data/one").read_bytes() == b"one\n"
    result = run_ocifs("index", "--cache-dir", str(cache), f"{layout}:v1")
    assert "0 indexed, 2 from the cache" in result.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_an_impostor_in_place_of_any_cache_file_is_a_miss(
    layout: Path, tmp_path: Path, kind: str
) -> None:
    """A FIFO in place of an index-cache file made ``ocifs index`` and ``ocifs mount`` wait
    forever in open(2). With a FIFO, a symlink (to a good copy), a directory or another
    user's file in place of every file of the cache (layers/, trees/ and an archive's table
    in archives/), both finish, index every layer again, and the mount reads right."""
    if kind == "other-uid" and os.geteuid() != 0:
        pytest.skip("needs root to give the files away")
    archive = tmp_path / "image.tar"  # an oci-archive, so that archives/ has a file too
    subprocess.run(["tar", "-cf", str(archive), "-C", str(layout), "."], check=True)
    cache = tmp_path / "cache"
    assert run_ocifs("index", "--cache-dir", str(cache), f"{archive}:v1").returncode == 0
    names = cache_files(cache)
    assert [n.split("/")[0] for n in names] == ["archives", "layers", "layers", "trees"]

    def replace_all() -> None:
        for name in names:
            put_in_place(cache / name, kind)

    replace_all()
    result = run_ocifs("index", "--cache-dir", str(cache), f"{archive}:v1", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2 layer(s), 2 indexed, 0 from the cache" in result.stdout
    assert "Traceback" not in result.stderr
    replace_all()
    with mounted(f"{archive}:v1", tmp_path / "mnt", "--cache-dir", str(cache)) as mnt:
        assert (mnt / "data/one").read_bytes() == b"one\n"
    if kind != "directory":  # a directory in the way stays; the others were replaced
        for name in names:
            assert (cache / name).is_file() and not (cache / name).is_symlink()
            assert (cache / name).stat().st_uid == os.geteuid()


def test_read_cache_size_option(layout: Path, tmp_path: Path, payload: bytes) -> None:
    """A tiny read cache still reads right; a bad size is a usage error, one line."""
    with mounted(f"{layout}:v1", tmp_path / "mnt", "--read-cache", "256K") as mnt:
        assert (mnt / "data/big").read_bytes() == payload
    bad = run_ocifs("mount", "--read-cache", "lots", f"{layout}:v1", str(tmp_path))
    assert bad.returncode == 2
    assert "invalid size 'lots': expected a number of bytes" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cache_and_no_cache_are_exclusive(layout: Path, tmp_path: Path) -> None:
    result = run_ocifs("index", "--no-cache", "--cache-dir", str(tmp_path), f"{layout}:v1")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_index_shows_per_layer_progress_on_a_terminal(layout: Path, tmp_path: Path) -> None:
    command = shlex.join([*OCIFS, "index", "--cache-dir", str(tmp_path / "c"), f"{layout}:v1"])
    result = subprocess.run(
        ["script", "-qefc", command, "/dev/null"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
    assert "indexing" in result.stdout
    assert "layer 1 " in result.stdout and " MB" in result.stdout
    assert "2 indexed" in result.stdout
    quiet = run_ocifs("index", "--cache-dir", str(tmp_path / "d"), f"{layout}:v1")
    assert quiet.stderr == ""
    assert quiet.stdout.count("\n") == 1  # the summary line only


def test_index_of_a_bad_image_is_one_line(tmp_path: Path) -> None:
    result = run_ocifs("index", str(tmp_path / "nowhere") + ":v1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ocifs: error:")
    assert not is_mounted(tmp_path)
