"""Mount one image of several gzip and plain-tar layers and check it with real tools.

Everything is observed through the kernel on the real mount (``ls``, ``stat``, ``readlink``,
``getfattr``, ``sha256sum``, ``find``, Python ``os`` calls) and compared with values fixed here.
Conformance ids: M3 M4 M8, W1 W2 W4 W5 W6, H1 H4 H5, A1-A9 A11, plus read-only (EROFS),
unmounting, foreground signals, ``--debug``, EIO on a damaged blob and a non-root mount.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mounting import OCIFS, dev_fuse_mode, is_mounted, mounted, run_ocifs, unmount
from tarbuild import Member, d, f, link, make_tar, opaque, sym, wh

from ocifs.ocibuild import LayoutWriter, host_platform

pytestmark = pytest.mark.fuse  # these tests mount: see conftest

MIB = 1 << 20
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
HL_DATA = b"hardlinked content, shared by three names\n"
HL3_DATA = b"survives the whiteout of its first name\n"
LONG_TARGET = "t/" * 150 + "end"  # 303 bytes: needs a PAX linkpath
NON_UTF8 = b"caf\xe9"
UNICODE_NAME = "naïve ü"
# vfs_cap_data revision 2, effective, permitted = CAP_NET_BIND_SERVICE (bit 10)
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
NS_MTIME = "1700000000.123456789"


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


BIG = blob(1, 10 * MIB + 12345)


def surrogate(raw: bytes) -> str:
    """A str that tarfile writes back as exactly ``raw`` (hdrcharset=BINARY in PAX)."""
    return raw.decode("utf-8", "surrogateescape")


def layer0() -> list[Member]:
    return [
        d("etc"),
        f("etc/passwd", PASSWD),
        d("gone"),
        f("gone/file.txt", b"gone"),
        f("gone/keep.txt", b"keep\n"),
        d("links"),
        f("links/target.txt", b"target content\n"),
        sym("links/to_target", "target.txt"),
        d("tree"),
        f("tree/a.txt", b"a"),
        d("tree/sub"),
        f("tree/sub/deep.txt", b"deep"),
        d("same"),
        f("same/x", b"L0 x"),
        f("same/y", b"L0 y"),
        d("opq"),
        f("opq/old1", b"old1"),
        d("opq/olddir"),
        f("opq/olddir/x", b"x"),
        d("readd"),
        f("readd/thing", b"v1"),
        d("readd/dir"),
        f("readd/dir/old", b"old"),
        d("hl"),
        f("hl/orig", HL_DATA),
        link("hl/link1", "hl/orig"),
        link("hl/link2", "hl/orig"),
        d("hl3"),
        f("hl3/a", HL3_DATA),
        link("hl3/b", "hl3/a"),
        d("typechg"),
        f("typechg/was_file", b"x"),
        d("typechg/was_dir"),
        f("typechg/was_dir/child", b"child"),
        d("typechg/was_dir/subdir"),
        d("attrs", mode=0o755, uid=0, gid=0, mtime=1_500_000_000),
        f("attrs/lowerchild", b"lower"),
        d("data"),
        f("data/big.bin", BIG),
    ]


def layer1() -> list[Member]:
    return [
        wh("gone/file.txt"),
        wh("links/to_target"),
        wh("tree"),
        # W2: a whiteout and a file of the same name in one layer, in both orders
        wh("same/x"),
        f("same/x", b"L1 x"),
        f("same/y", b"L1 y"),
        wh("same/y"),
        wh("readd/thing"),
        wh("readd/dir"),
        wh("hl3/a"),
        d("typechg/was_file", mode=0o750),
        f("typechg/was_file/inner", b"inner"),
        f("typechg/was_dir", b"now a file"),
        d("attrs", mode=0o700, uid=1000, gid=1001, mtime=1_600_000_000),
        f("attrs/upperchild", b"upper"),
        d("sym"),
        sym("sym/abs", "/etc/passwd"),
        sym("sym/dangling", "no/such/target"),
        sym("sym/up", "../../etc"),
        sym("sym/loop1", "loop2"),
        sym("sym/loop2", "loop1"),
        sym("sym/long", LONG_TARGET),
        d("dev"),
        Member("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        Member("dev/sda", "block", mode=0o660, gid=6, devmajor=8, devminor=0),
        Member("dev/fifo", "fifo", mode=0o644),
        d("ids"),
        f("ids/big", b"big ids", uid=3_000_000, gid=4_000_000),
        f("ids/owned", b"owned", uid=1234, gid=5678),
        d("modes"),
        f("modes/setuid", b"#!/bin/true\n", mode=0o4755),
        f("modes/setgid", b"", mode=0o2750),
        d("modes/sticky", mode=0o1777),
        d("times"),
        f("times/ns", b"ns", pax={"mtime": NS_MTIME}),
        f("times/whole", b"whole", mtime=1_234_567_890),
        d("xattrs"),
        f(
            "xattrs/f",
            b"with xattrs",
            pax={
                "SCHILY.xattr.user.comment": "hello",
                "SCHILY.xattr.user.empty": "",
                "SCHILY.xattr.security.capability": surrogate(CAPABILITY),
            },
        ),
        d("names"),
        f("names/" + surrogate(NON_UTF8), b"latin-1 name"),
        f("names/" + UNICODE_NAME, b"unicode name"),
        d("nl"),
        d("nl/a"),
        d("nl/b"),
        d("nl/c"),
        f("nl/f1"),
        f("nl/f2"),
    ]


def layer2() -> list[Member]:
    return [
        f("opq/before", b"before"),
        opaque("opq"),
        f("opq/after", b"after"),
        d("opq/newdir"),
        f("opq/newdir/y", b"y"),
        f("readd/thing", b"v3"),
        d("readd/dir"),
        f("readd/dir/new", b"new"),
        f("hl/link2", b"replaced"),
        f("imp/b/c", b"implicit"),  # no entries for imp/ and imp/b/ (M8)
    ]


def make_sparse_source(path: Path) -> bytes:
    """A 12 MiB file with three data regions and holes in between; returns its content."""
    size = 12 * MIB + 5
    with path.open("wb") as out:
        out.truncate(size)
        out.seek(0)
        out.write(b"BEGIN")
        out.seek(4 * MIB)
        out.write(b"middle-data " * 5000)
        out.seek(size - 7)
        out.write(b"THE END")
    return path.read_bytes()


def gnu_sparse_tar(workdir: Path, name: str, *fmt: str) -> tuple[bytes, bytes]:
    """A tar made by GNU tar --sparse holding ``sparse/NAME``; returns (tar, file content)."""
    src = workdir / "sparse-src"
    (src / "sparse").mkdir(parents=True, exist_ok=True)
    content = make_sparse_source(src / "sparse" / name)
    out = workdir / f"{name}.tar"
    subprocess.run(
        [
            "tar",
            *fmt,
            "--sparse",
            "--hole-detection=raw",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
            "-C",
            str(src),
            "-cf",
            str(out),
            f"sparse/{name}",
        ],
        check=True,
    )
    with tarfile.open(out) as tar:
        assert tar.getmember(f"sparse/{name}").issparse(), "GNU tar did not write a sparse entry"
    return out.read_bytes(), content


class SampleImage:
    def __init__(self, root: Path) -> None:
        self.layout = root / "layout"
        writer = LayoutWriter(self.layout)
        gnu_tar, self.sparse_content = gnu_sparse_tar(root, "holey_gnu", "--format=gnu")
        pax_tar, _ = gnu_sparse_tar(root, "holey_pax", "--format=posix", "--sparse-version=1.0")
        layers = [
            writer.add_layer(make_tar(layer0()), "gzip"),
            writer.add_layer(make_tar(layer1()), "none"),
            writer.add_layer(make_tar(layer2()), "gzip"),
            writer.add_layer(gnu_tar, "gzip"),
            writer.add_layer(pax_tar, "none"),
        ]
        writer.add_image(layers, ref="latest", platform=host_platform())
        writer.save()
        self.ref = f"{self.layout}:latest"


def words(text: str) -> set[str]:
    return set(text.split())


EXPECTED_PATHS = words(
    """
    etc etc/passwd gone gone/keep.txt links links/target.txt same same/x same/y
    opq opq/before opq/after opq/newdir opq/newdir/y
    readd readd/thing readd/dir readd/dir/new hl hl/orig hl/link1 hl/link2 hl3 hl3/b
    typechg typechg/was_file typechg/was_file/inner typechg/was_dir
    attrs attrs/lowerchild attrs/upperchild data data/big.bin
    sym sym/abs sym/dangling sym/up sym/loop1 sym/loop2 sym/long
    dev dev/null dev/sda dev/fifo ids ids/big ids/owned
    modes modes/setuid modes/setgid modes/sticky times times/ns times/whole
    xattrs xattrs/f names nl nl/a nl/b nl/c nl/f1 nl/f2 imp imp/b imp/b/c
    sparse sparse/holey_gnu sparse/holey_pax
    """
)
EXPECTED_BYTES = {p.encode() for p in EXPECTED_PATHS} | {
    b"names/" + NON_UTF8,
    b"names/" + UNICODE_NAME.encode(),
}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> SampleImage:
    return SampleImage(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def mnt(image: SampleImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted(image.ref, tmp_path_factory.mktemp("mnt") / "m") as mountpoint:
        yield mountpoint


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, f"{cmd} failed: {result.stderr}"
    return result.stdout


def stat_c(fmt: str, path: Path) -> str:
    return sh("stat", "-c", fmt, path).strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- structure: whiteouts, opaque dirs, type changes ----------------------------------------


def test_find_lists_exactly_the_merged_tree(mnt: Path) -> None:
    """W1 W4 W5 W6 M4 M8: `find MNT` lists every expected entry and nothing else."""
    out = subprocess.run(["find", str(mnt), "-print0"], capture_output=True, check=True).stdout
    prefix = bytes(mnt) + b"/"
    found = {p[len(prefix) :] for p in out.split(b"\0") if p.startswith(prefix)}
    assert found == EXPECTED_BYTES
    count = subprocess.run(f"find '{mnt}' | wc -l", shell=True, capture_output=True, text=True)
    assert int(count.stdout) == len(EXPECTED_BYTES) + 1


def test_w1_whiteouts_remove_file_symlink_and_subtree(mnt: Path) -> None:
    """W1: a whited-out file, symlink (only the link, not its target) and dir subtree are gone."""
    assert sh("ls", "-A", mnt / "gone").split() == ["keep.txt"]
    assert not os.path.lexists(mnt / "gone/file.txt")
    assert sh("ls", "-A", mnt / "links").split() == ["target.txt"]
    assert (mnt / "links/target.txt").read_bytes() == b"target content\n"
    assert not os.path.lexists(mnt / "tree")
    assert not os.path.lexists(mnt / "tree/sub/deep.txt")


def test_w2_whiteout_and_file_in_the_same_layer(mnt: Path) -> None:
    """W2: a whiteout hides only lower layers; the same layer's file stays, in either order."""
    assert sh("cat", mnt / "same/x") == "L1 x"
    assert sh("cat", mnt / "same/y") == "L1 y"
    assert sorted(os.listdir(mnt / "same")) == ["x", "y"]


def test_w4_opaque_dir_keeps_same_layer_children(mnt: Path) -> None:
    """W4: an opaque dir hides lower children; children before and after the marker stay."""
    assert sorted(sh("ls", "-A", mnt / "opq").split()) == ["after", "before", "newdir"]
    assert (mnt / "opq/before").read_bytes() == b"before"
    assert (mnt / "opq/after").read_bytes() == b"after"
    assert os.listdir(mnt / "opq/newdir") == ["y"]
    assert not os.path.lexists(mnt / "opq/old1")
    assert not os.path.lexists(mnt / "opq/olddir")


def test_w5_removed_and_readded(mnt: Path) -> None:
    """W5: a path whited out and added again has only the new content and children."""
    assert sh("cat", mnt / "readd/thing") == "v3"
    assert os.listdir(mnt / "readd/dir") == ["new"]
    assert not os.path.lexists(mnt / "readd/dir/old")


def test_w6_whiteout_names_never_visible(mnt: Path) -> None:
    """W6: no .wh.* name is listed anywhere, and stat of one fails with ENOENT."""
    for directory in ["", "gone", "links", "same", "opq", "readd", "hl3"]:
        names = sh("ls", "-a", mnt / directory).split()
        assert not [n for n in names if n.startswith(".wh.")], (directory, names)
    assert sh("find", mnt, "-name", ".wh.*") == ""
    for ghost in ["gone/.wh.file.txt", "opq/.wh..wh..opq", ".wh.tree", "same/.wh.x"]:
        result = subprocess.run(["stat", str(mnt / ghost)], capture_output=True, text=True)
        assert result.returncode != 0
        assert "No such file or directory" in result.stderr
        with pytest.raises(FileNotFoundError):
            os.lstat(mnt / ghost)


def test_m4_type_changes(mnt: Path) -> None:
    """M4: a dir over a file and a file over a dir replace the lower entry entirely."""
    assert stat_c("%F %a", mnt / "typechg/was_file") == "directory 750"
    assert os.listdir(mnt / "typechg/was_file") == ["inner"]
    assert stat_c("%F", mnt / "typechg/was_dir") == "regular file"
    assert sh("cat", mnt / "typechg/was_dir") == "now a file"
    with pytest.raises(NotADirectoryError):
        os.lstat(mnt / "typechg/was_dir/child")


def test_m3_dir_attributes_from_upper_layer(mnt: Path) -> None:
    """M3: a dir redeclared in an upper layer takes its attributes and keeps lower children."""
    assert stat_c("%a %u %g %Y", mnt / "attrs") == "700 1000 1001 1600000000"
    assert sorted(os.listdir(mnt / "attrs")) == ["lowerchild", "upperchild"]
    assert (mnt / "attrs/lowerchild").read_bytes() == b"lower"


def test_m8_implicit_parents(mnt: Path) -> None:
    """M8: parents never given in any layer are dirs 0755 owned by 0:0."""
    assert stat_c("%F %a %u %g", mnt / "imp") == "directory 755 0 0"
    assert stat_c("%F %a %u %g", mnt / "imp/b") == "directory 755 0 0"
    assert stat_c("%F %a %u %g", mnt / "sparse") == "directory 755 0 0"
    assert (mnt / "imp/b/c").read_bytes() == b"implicit"


# --- hardlinks -------------------------------------------------------------------------------


def test_h1_hardlinks_share_an_inode(mnt: Path) -> None:
    """H1: names of one hardlinked file have the same inode; %h counts the names left."""
    assert stat_c("%i", mnt / "hl/orig") == stat_c("%i", mnt / "hl/link1")
    assert os.stat(mnt / "hl/orig").st_ino == os.stat(mnt / "hl/link1").st_ino
    assert stat_c("%h", mnt / "hl/orig") == "2"
    assert stat_c("%h", mnt / "hl/link1") == "2"
    assert sh("cat", mnt / "hl/link1") == HL_DATA.decode()


def test_h5_replaced_name_leaves_the_group(mnt: Path) -> None:
    """H4 H5: one name replaced in a later layer: own inode, nlink drops, others keep content."""
    assert stat_c("%i", mnt / "hl/link2") != stat_c("%i", mnt / "hl/orig")
    assert stat_c("%h", mnt / "hl/link2") == "1"
    assert sh("cat", mnt / "hl/link2") == "replaced"
    assert (mnt / "hl/orig").read_bytes() == HL_DATA


def test_h5_whiteout_of_first_name(mnt: Path) -> None:
    """H4: whiting out the name a hardlink points at leaves the other name with the content."""
    assert os.listdir(mnt / "hl3") == ["b"]
    assert stat_c("%h %s", mnt / "hl3/b") == f"1 {len(HL3_DATA)}"
    assert (mnt / "hl3/b").read_bytes() == HL3_DATA


# --- attributes ------------------------------------------------------------------------------


def test_a1_a2_symlinks_byte_exact(mnt: Path) -> None:
    """A1 A2: readlink gives the stored target byte for byte; %s is the target's length."""
    targets = {
        "abs": "/etc/passwd",
        "dangling": "no/such/target",
        "up": "../../etc",
        "loop1": "loop2",
        "loop2": "loop1",
        "long": LONG_TARGET,
    }
    for name, target in targets.items():
        path = mnt / "sym" / name
        assert sh("readlink", path) == target + "\n"
        assert os.readlink(bytes(path)) == target.encode()
        assert stat_c("%F %s", path) == f"symbolic link {len(target)}"
    # the loop is a loop, not something ocifs resolved
    with pytest.raises(OSError) as info:
        (mnt / "sym/loop1").read_bytes()
    assert info.value.errno == errno.ELOOP


def test_a3_devices_and_fifo(mnt: Path) -> None:
    """A3: char and block devices keep major/minor; a fifo is a fifo."""
    assert stat_c("%F %t %T %a", mnt / "dev/null") == "character special file 1 3 666"
    assert stat_c("%F %t %T %a %g", mnt / "dev/sda") == "block special file 8 0 660 6"
    assert stat_c("%F %a", mnt / "dev/fifo") == "fifo 644"


def test_a4_large_ids(mnt: Path) -> None:
    """A4: uid/gid too large for the ustar header come from PAX."""
    assert stat_c("%u %g", mnt / "ids/big") == "3000000 4000000"
    assert stat_c("%u %g", mnt / "ids/owned") == "1234 5678"


def test_a5_special_mode_bits(mnt: Path) -> None:
    """A5: setuid, setgid and sticky bits are kept."""
    assert stat_c("%a", mnt / "modes/setuid") == "4755"
    assert stat_c("%a", mnt / "modes/setgid") == "2750"
    assert stat_c("%a %F", mnt / "modes/sticky") == "1777 directory"


def test_a6_mtime_nanoseconds(mnt: Path) -> None:
    """A6: a PAX mtime keeps its nanoseconds."""
    env = {**os.environ, "TZ": "UTC0"}
    assert sh("stat", "-c", "%y", mnt / "times/ns", env=env).strip() == (
        "2023-11-14 22:13:20.123456789 +0000"
    )
    assert os.stat(mnt / "times/ns").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.stat(mnt / "times/whole").st_mtime_ns == 1_234_567_890 * 10**9


def test_a7_xattrs(mnt: Path) -> None:
    """A7: xattrs from SCHILY.xattr, including binary security.capability and an empty value."""
    out = sh("getfattr", "-d", "-m", "-", "-e", "hex", mnt / "xattrs/f")
    values = dict(
        line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#")
    )
    assert values == {
        "security.capability": "0x" + CAPABILITY.hex(),
        "user.comment": "0x" + b"hello".hex(),
        "user.empty": "0x",
    }
    path = bytes(mnt / "xattrs/f")
    assert os.getxattr(path, "security.capability", follow_symlinks=False) == CAPABILITY
    assert os.getxattr(path, "user.empty", follow_symlinks=False) == b""
    assert sorted(os.listxattr(path, follow_symlinks=False)) == [
        "security.capability",
        "user.comment",
        "user.empty",
    ]
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.missing")
    assert info.value.errno == errno.ENODATA
    assert os.listxattr(mnt / "etc/passwd") == []


def test_a8_non_utf8_names(mnt: Path) -> None:
    """A8: names are bytes; a Latin-1 name comes back unchanged."""
    names = sorted(os.listdir(bytes(mnt / "names")))
    assert names == sorted([NON_UTF8, UNICODE_NAME.encode()])
    with open(bytes(mnt / "names") + b"/" + NON_UTF8, "rb") as latin:
        assert latin.read() == b"latin-1 name"
    assert (mnt / "names" / UNICODE_NAME).read_bytes() == b"unicode name"


def test_a9_sparse_files(mnt: Path, image: SampleImage) -> None:
    """A9: GNU tar sparse files (old GNU and PAX 1.0) have their size and zeros in holes."""
    content = image.sparse_content
    for name in ["holey_gnu", "holey_pax"]:
        path = mnt / "sparse" / name
        assert stat_c("%s", path) == str(len(content))
        assert sh("sha256sum", path).split()[0] == sha256(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 2 * MIB) == bytes(4096)
            assert os.pread(fd, 16, 0) == b"BEGIN" + bytes(11)
            assert os.pread(fd, 100, len(content) - 10) == content[-10:]
            assert os.pread(fd, 20, 4 * MIB) == b"middle-data middle-d"
        finally:
            os.close(fd)


def test_a11_directory_link_counts(mnt: Path) -> None:
    """A11: every directory's nlink is 2 + its subdirectories."""
    assert stat_c("%h", mnt / "nl") == "5"
    for dirpath, dirnames, _ in os.walk(bytes(mnt)):
        assert os.lstat(dirpath).st_nlink == 2 + len(dirnames), dirpath


# --- contents --------------------------------------------------------------------------------


def test_content_hashes(mnt: Path) -> None:
    """File contents from gzip and plain layers, checked with sha256sum and cat."""
    expected = {
        "etc/passwd": PASSWD,
        "gone/keep.txt": b"keep\n",
        "hl/orig": HL_DATA,
        "xattrs/f": b"with xattrs",
        "ids/big": b"big ids",
        "data/big.bin": BIG,
        "modes/setgid": b"",
    }
    out = sh("sha256sum", *(mnt / name for name in expected))
    got = {line.split(None, 1)[1]: line.split(None, 1)[0] for line in out.splitlines()}
    for name, data in expected.items():
        assert got[str(mnt / name)] == sha256(data), name
        assert stat_c("%s", mnt / name) == str(len(data))
    assert sh("cat", mnt / "etc/passwd") == PASSWD.decode()


def test_big_file_random_reads(mnt: Path) -> None:
    """A 10 MB file in a gzip layer read at random offsets with pread, backwards and past EOF."""
    rng = random.Random(7)
    fd = os.open(mnt / "data/big.bin", os.O_RDONLY)
    try:
        for _ in range(300):
            offset = rng.randrange(len(BIG))
            size = rng.choice([1, 100, 4096, 70_000, 300_000])
            assert os.pread(fd, size, offset) == BIG[offset : offset + size], (offset, size)
        assert os.pread(fd, 100, len(BIG) - 50) == BIG[-50:]
        assert os.pread(fd, 100, len(BIG) + 10) == b""
    finally:
        os.close(fd)


def test_concurrent_reads_while_listing(image: SampleImage, tmp_path: Path) -> None:
    """Eight threads read one gzip layer at random places, on a fresh mount so that the reads
    reach the daemon, while another thread lists the tree: every read returns the right bytes
    (the layer's cursors are shared under a lock, its blocks through one cache)."""

    def reader(mnt: Path, seed: int) -> int:
        rng = random.Random(seed)
        fd = os.open(mnt / "data/big.bin", os.O_RDONLY)
        try:
            for _ in range(60):
                offset = rng.randrange(len(BIG))
                size = rng.choice([4096, 65_536, 1 << 20])
                assert os.pread(fd, size, offset) == BIG[offset : offset + size]
        finally:
            os.close(fd)
        return seed

    def lister(mnt: Path) -> int:
        return sum(len(files) + len(dirs) for _, dirs, files in os.walk(mnt))

    with mounted(image.ref, tmp_path / "m") as mnt, ThreadPoolExecutor(max_workers=9) as pool:
        reads = [pool.submit(reader, mnt, seed) for seed in range(8)]
        listing = pool.submit(lister, mnt)
        assert sorted(future.result() for future in reads) == list(range(8))
        assert listing.result() > 0


# --- read-only -------------------------------------------------------------------------------


def expect_erofs(call: object, *args: object, **kw: object) -> None:
    with pytest.raises(OSError) as info:
        call(*args, **kw)  # type: ignore[operator]
    assert info.value.errno == errno.EROFS, (call, args, info.value)


def test_writes_fail_with_erofs(mnt: Path) -> None:
    """Every kind of write fails with EROFS and changes nothing."""
    passwd = mnt / "etc/passwd"
    expect_erofs(os.open, passwd, os.O_WRONLY)
    expect_erofs(os.open, passwd, os.O_RDWR)
    expect_erofs(os.open, passwd, os.O_WRONLY | os.O_TRUNC)
    expect_erofs(os.open, mnt / "etc/new", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_erofs(os.mkdir, mnt / "newdir")
    expect_erofs(os.unlink, passwd)
    expect_erofs(os.rmdir, mnt / "nl/a")
    expect_erofs(os.rename, passwd, mnt / "etc/passwd2")
    expect_erofs(os.symlink, "x", mnt / "etc/sym")
    expect_erofs(os.link, passwd, mnt / "etc/hard")
    expect_erofs(os.chmod, passwd, 0o600)
    expect_erofs(os.chown, passwd, 1, 1)
    expect_erofs(os.utime, passwd, (0, 0))
    expect_erofs(os.truncate, passwd, 0)
    expect_erofs(os.setxattr, passwd, "user.x", b"1")
    expect_erofs(os.removexattr, mnt / "xattrs/f", "user.comment")
    expect_erofs(os.mkfifo, mnt / "etc/fifo")
    for cmd in (
        ["touch", str(passwd)],
        ["touch", str(mnt / "etc/created")],
        ["mkdir", str(mnt / "etc/d")],
        ["rm", "-f", str(passwd)],
        ["sh", "-c", f"echo hi > '{passwd}'"],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode != 0, cmd
        assert "Read-only file system" in result.stderr, (cmd, result.stderr)
    assert passwd.read_bytes() == PASSWD
    assert not os.path.lexists(mnt / "etc/created")


# --- mounting and unmounting -----------------------------------------------------------------


def wait_mounted(mountpoint: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        assert proc.poll() is None, f"ocifs -f exited with {proc.returncode} before mounting"
        assert time.monotonic() < deadline, "foreground mount did not appear"
        time.sleep(0.05)


def test_umount_command(image: SampleImage, tmp_path: Path) -> None:
    """`ocifs umount MNT` unmounts a background mount."""
    mountpoint = tmp_path / "m"
    with mounted(image.ref, mountpoint):
        assert "etc" in os.listdir(mountpoint)
        result = run_ocifs("umount", str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mountpoint)
        assert os.listdir(mountpoint) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_foreground_mount_exits_on_signal(image: SampleImage, tmp_path: Path, sig: int) -> None:
    """`ocifs mount -f` stays in the foreground; SIGTERM/SIGINT unmount and exit 0."""
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    proc = subprocess.Popen(
        [*OCIFS, "mount", "-f", image.ref, str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_mounted(mountpoint, proc)
        assert (mountpoint / "etc/passwd").read_bytes() == PASSWD
        assert proc.poll() is None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert b"Traceback" not in err
        assert not is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount(mountpoint)


def test_debug_logs_to_stderr(image: SampleImage, tmp_path: Path) -> None:
    """`--debug -f` logs to stderr while the filesystem is used."""
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*OCIFS, "mount", "--debug", "-f", image.ref, str(mountpoint)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_mounted(mountpoint, proc)
        os.listdir(mountpoint / "etc")
        (mountpoint / "etc/passwd").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount(mountpoint)
    assert log.read_text(errors="replace").strip() != ""


# --- EIO on a damaged blob -------------------------------------------------------------------


def varied_text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(3000)
    ]
    parts: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(words, k=12)) + f" {rng.random()}\n"
        parts.append(line)
        length += len(line)
    return "".join(parts).encode()[:size]


def test_eio_on_damaged_region(tmp_path: Path) -> None:
    """Reading a file whose compressed data was damaged after mounting gives EIO; the rest of
    the mount keeps working."""
    small = b"small and early\n"
    first = varied_text(1, 8 * MIB)
    second = varied_text(2, 8 * MIB)
    layout = tmp_path / "layout"
    writer = LayoutWriter(layout)
    tar = make_tar([f("small.txt", small), f("first.txt", first), f("second.txt", second)])
    descriptor, diff_id = writer.add_layer(tar, "gzip")
    writer.add_image([(descriptor, diff_id)], ref="latest", platform=host_platform())
    writer.save()
    blob_path = writer.blob_path(descriptor["digest"])
    size = blob_path.stat().st_size
    with mounted(f"{layout}:latest", tmp_path / "m", "--no-verify") as mountpoint:
        assert (mountpoint / "first.txt").read_bytes() == first
        # damage the second file's compressed data, in place (the daemon has the blob open),
        # past what prefetching beyond first.txt's end may already have inflated (4 MiB)
        with blob_path.open("r+b") as raw:
            raw.seek(int(size * 0.85))
            raw.write(random.Random(3).randbytes(int(size * 0.1)))
        assert blob_path.stat().st_size == size
        result = subprocess.run(
            ["cat", str(mountpoint / "second.txt")], capture_output=True, timeout=60
        )
        assert result.returncode != 0
        assert b"Input/output error" in result.stderr
        with pytest.raises(OSError) as info, open(mountpoint / "second.txt", "rb") as damaged:
            damaged.read()
        assert info.value.errno == errno.EIO
        assert is_mounted(mountpoint)
        assert sorted(sh("ls", mountpoint).split()) == ["first.txt", "second.txt", "small.txt"]
        assert (mountpoint / "small.txt").read_bytes() == small
        assert hashlib.sha256((mountpoint / "first.txt").read_bytes()).digest() == (
            hashlib.sha256(first).digest()
        )
        assert stat_c("%s", mountpoint / "second.txt") == str(len(second))


# --- non-root --------------------------------------------------------------------------------

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def nobody_can_open_dev_fuse() -> bool:
    probe = subprocess.run(
        [*AS_NOBODY, "sh", "-c", "exec 3<>/dev/fuse"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_non_root_mount() -> None:
    """An ordinary user mounts; it sees the image's owners; root without allow_other gets
    EACCES; the user unmounts with fusermount3 -u."""
    with dev_fuse_mode(0o666):  # as Debian's udev rule sets it
        assert nobody_can_open_dev_fuse()
        mount_as_nobody()


def mount_as_nobody() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ocifs-nonroot-", dir="/tmp"))
    mountpoint = workdir / "mnt"
    try:
        workdir.chmod(0o755)
        layout = workdir / "layout"
        writer = LayoutWriter(layout)
        members = [
            f("owned", b"owned by 1234:5678\n", uid=1234, gid=5678, mode=0o644),
            d("rootdir", uid=0, gid=0, mode=0o755),
            f("rootdir/secret", b"root only\n", mode=0o600),
        ]
        layers = [writer.add_layer(make_tar(members), "gzip")]
        writer.add_image(layers, ref="latest", platform=host_platform())
        writer.save()
        mountpoint.mkdir()
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8"}
        result = subprocess.run(
            [*AS_NOBODY, *OCIFS, "mount", f"{layout}:latest", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert is_mounted(mountpoint)
        listing = subprocess.run(
            [*AS_NOBODY, "ls", "-ln", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert listing.returncode == 0, listing.stderr
        owned = [line.split() for line in listing.stdout.splitlines() if line.endswith(" owned")]
        assert len(owned) == 1
        assert owned[0][0] == "-rw-r--r--"
        assert owned[0][2:4] == ["1234", "5678"]
        cat = subprocess.run(
            [*AS_NOBODY, "cat", str(mountpoint / "owned")], capture_output=True, timeout=30
        )
        assert cat.stdout == b"owned by 1234:5678\n"
        # root is not the mounting user and allow_other was not given
        with pytest.raises(PermissionError) as info:
            os.listdir(mountpoint)
        assert info.value.errno == errno.EACCES
        unmounted = subprocess.run(
            [*AS_NOBODY, "fusermount3", "-u", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert unmounted.returncode == 0, unmounted.stderr
        assert not is_mounted(mountpoint)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_non_root_suid_dev_is_said_to_be_nosuid_nodev() -> None:
    """An ordinary user's -o suid,dev: fusermount3 mounts nosuid,nodev and says nothing;
    ocifs says so in one line on stderr, and the mount works."""
    workdir = Path(tempfile.mkdtemp(prefix="ocifs-nonroot-", dir="/tmp"))
    mountpoint = workdir / "mnt"
    try:
        workdir.chmod(0o755)
        writer = LayoutWriter(workdir / "layout")
        layers = [writer.add_layer(make_tar([f("su", b"#!/bin/sh\n", mode=0o4755)]), "gzip")]
        writer.add_image(layers, ref="latest", platform=host_platform())
        writer.save()
        mountpoint.mkdir()
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8"}
        image = f"{workdir}/layout:latest"
        with dev_fuse_mode(0o666):
            result = subprocess.run(
                [*AS_NOBODY, *OCIFS, "mount", "-o", "suid,dev", image, str(mountpoint)],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd="/",
            )
        assert result.returncode == 0, result.stderr
        assert result.stderr == (
            "ocifs: -o suid,dev: only root can mount with suid or dev; this mount is nosuid,nodev\n"
        )
        options = [
            line.split()[3].split(",")
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(mountpoint)
        ]
        assert len(options) == 1 and {"nosuid", "nodev"} <= set(options[0])
        shown = subprocess.run(
            [*AS_NOBODY, "stat", "-c", "%a", str(mountpoint / "su")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.stdout == "4755\n"  # the bit is served; the mount only does not honour it
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_python_is_usable_by_nobody() -> None:
    """Guard for the non-root test: the interpreter running ocifs is reachable by nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import ocifs, pyfuse3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr


# --- a second image: replacement, ordering inside a layer, chains, root attributes ----------


def more_layers() -> tuple[bytes, bytes, bytes]:
    h4 = {"mode": 0o640, "uid": 5, "gid": 6, "mtime": 1_111_111_111}
    x0 = make_tar(
        [
            d("m2"),
            f(
                "m2/file",
                b"old content",
                mode=0o600,
                uid=1,
                gid=1,
                mtime=1_000_000_000,
                pax={"SCHILY.xattr.user.old": "1"},
            ),
            d("h4"),
            f("h4/a", b"chain", pax={"SCHILY.xattr.user.h": "a"}, **h4),  # type: ignore[arg-type]
            link("h4/b", "h4/a"),
            link("h4/c", "h4/b"),  # a link to a link (H4)
            link("h4/d", "h4/a", mode=0o777, uid=99, gid=99, mtime=5),  # ignored metadata (H2)
            f("x9", b"was a file"),
            d("w6"),
            f("w6/real", b"real"),
        ]
    )
    x1 = make_tar(
        [
            f("m2/file", b"new", mode=0o644, uid=2, gid=3, mtime=1_200_000_000),
            f("m7/twice", b"first"),
            f("m7/twice", b"second!"),
            f("m6/child", b"c"),
            d("m6", mode=0o711, uid=7, gid=8, mtime=1_300_000_000),
            f("x9/y", b"y"),
            wh("nowhere/deep/ghost"),
            d(".wh..wh.plnk"),
            f(".wh..wh.plnk/1234.5678", b"aufs"),
            f("w6/.wh..wh.aufs"),
            d("w6/.wh..wh.orph"),
            d("./", mode=0o750, mtime=1_400_000_000),
            f("./p1/dot", b"dot"),
            f("/p1/abs", b"abs"),
            d("p1/trail/"),
        ]
    )
    buffer = io.BytesIO()
    # a PAX global header whose `path` must not rename anything (A10)
    global_headers = {"path": "renamed", "comment": "global"}
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_headers
    ) as tar:
        info = tarfile.TarInfo("a10/file")
        info.size = 3
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(b"a10"))
    return x0, x1, buffer.getvalue()


MORE_PATHS = words(
    """
    m2 m2/file h4 h4/a h4/b h4/c h4/d x9 x9/y w6 w6/real m7 m7/twice m6 m6/child
    p1 p1/dot p1/abs p1/trail a10 a10/file
    """
)


@pytest.fixture(scope="module")
def more(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("more")
    writer = LayoutWriter(root / "layout")
    x0, x1, x2 = more_layers()
    layers = [writer.add_layer(x0, "gzip"), writer.add_layer(x1, "none")]
    layers.append(writer.add_layer(x2, "gzip"))
    writer.add_image(layers, ref="more", platform=host_platform())
    writer.save()
    with mounted(f"{root / 'layout'}:more", root / "mnt") as mountpoint:
        yield mountpoint


def test_more_find_w3_w6_a10_p1(more: Path) -> None:
    """W3 W6 A10 P1: no parents from a whiteout of nothing, no AUFS leftovers, no entry or
    rename from a PAX global header, `./` and `/` prefixes normalised."""
    out = subprocess.run(["find", str(more), "-print0"], capture_output=True, check=True).stdout
    prefix = bytes(more) + b"/"
    found = {p[len(prefix) :].decode() for p in out.split(b"\0") if p.startswith(prefix)}
    assert found == MORE_PATHS
    assert (more / "a10/file").read_bytes() == b"a10"
    assert (more / "p1/dot").read_bytes() == b"dot"
    assert (more / "p1/abs").read_bytes() == b"abs"


def test_m2_replaced_file_takes_everything_from_upper(more: Path) -> None:
    """M2: content, mode, owner, mtime and xattrs all come from the replacing entry."""
    assert stat_c("%a %u %g %Y %s", more / "m2/file") == "644 2 3 1200000000 3"
    assert (more / "m2/file").read_bytes() == b"new"
    assert os.listxattr(more / "m2/file") == []


def test_m6_dir_entry_after_its_children(more: Path) -> None:
    """M6: a directory entry after its children sets the attributes and keeps the children."""
    assert stat_c("%F %a %u %g %Y", more / "m6") == "directory 711 7 8 1300000000"
    assert os.listdir(more / "m6") == ["child"]


def test_m7_last_entry_wins(more: Path) -> None:
    """M7: a path given twice in one layer: the last entry wins."""
    assert sh("cat", more / "m7/twice") == "second!"


def test_m9_file_parent_becomes_directory(more: Path) -> None:
    """M9: `x9/y` over a lower file `x9` makes `x9` a directory."""
    assert stat_c("%F", more / "x9") == "directory"
    assert os.listdir(more / "x9") == ["y"]


def test_m10_root_entry_sets_root_attributes(more: Path) -> None:
    """M10: a `./` entry sets the root directory's attributes."""
    assert stat_c("%F %a %u %g %Y", more) == "directory 750 0 0 1400000000"


def test_h4_h2_h1_link_chain_one_inode(more: Path) -> None:
    """H4: a link to a link resolves to one inode; H2: the link header's own metadata is
    ignored; H1: all names share mode, owner, mtime and xattrs; nlink = 4."""
    names = ["a", "b", "c", "d"]
    stats = {name: stat_c("%i %h %a %u %g %Y", more / "h4" / name) for name in names}
    assert len(set(stats.values())) == 1, stats
    assert stats["a"].split()[1:] == ["4", "640", "5", "6", "1111111111"]
    for name in names:
        assert (more / "h4" / name).read_bytes() == b"chain"
        assert os.getxattr(more / "h4" / name, "user.h") == b"a"


# --- directory listings: offsets, resumption, the kernel's readdir cache ----------------------

BIG_DIR_ENTRIES = 3000


def getdents(fd: int, size: int = 32768) -> list[tuple[bytes, int]]:
    """One getdents64 call on ``fd``: the (name, d_off) pairs it returned, in order."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(size)
    got = libc.syscall(217, fd, buffer, size)  # SYS_getdents64 on x86_64
    if got < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    raw = buffer.raw[:got]
    entries, position = [], 0
    while position < got:
        (d_off,) = struct.unpack_from("<q", raw, position + 8)
        (reclen,) = struct.unpack_from("<H", raw, position + 16)
        name = raw[position + 19 : position + reclen].split(b"\0", 1)[0]
        entries.append((name, d_off))
        position += reclen
    return entries


def list_from(directory: Path, offset: int, size: int = 32768) -> list[tuple[bytes, int]]:
    """Open ``directory``, seek to ``offset`` (a d_off it gave out) and read one buffer."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        return getdents(fd, size)
    finally:
        os.close(fd)


def list_all(directory: Path) -> list[tuple[bytes, int]]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries: list[tuple[bytes, int]] = []
        while chunk := getdents(fd, 4096):  # small buffers: many requests, each resumed
            entries.extend(chunk)
        return entries
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def big_mnt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory of BIG_DIR_ENTRIES files (and a few subdirectories) across two layers."""
    root = tmp_path_factory.mktemp("big")
    writer = LayoutWriter(root / "layout")
    lower = [d("big"), *(f(f"big/n{i:05d}", b"%d\n" % i) for i in range(BIG_DIR_ENTRIES))]
    upper = [d("big/sub"), f("big/sub/x", b"x"), link("big/sub/y", "big/n00007"), wh("big/n00003")]
    layers = [writer.add_layer(make_tar(lower), "gzip"), writer.add_layer(make_tar(upper), "none")]
    writer.add_image(layers, ref="latest", platform=host_platform())
    writer.save()
    with mounted(f"{root / 'layout'}:latest", root / "m") as mountpoint:
        yield mountpoint


def expected_big_names() -> list[bytes]:
    names = {b"n%05d" % i for i in range(BIG_DIR_ENTRIES)} - {b"n00003"} | {b"sub"}
    return [b".", b"..", *sorted(names)]


def test_readdir_of_a_big_directory_is_the_same_every_time(big_mnt: Path) -> None:
    """W1: the first listing (from the daemon) and later ones (from the kernel's readdir cache,
    where pyfuse3 allows it) give the same names at the same offsets, in small buffers too."""
    first = list_all(big_mnt / "big")
    assert [name for name, _ in first] == expected_big_names()
    offsets = [offset for _, offset in first]
    assert len(set(offsets)) == len(offsets)
    for _ in range(2):
        assert list_all(big_mnt / "big") == first
        assert list_from(big_mnt / "big", 0) == first[: len(list_from(big_mnt / "big", 0))]


def test_readdir_resumed_at_every_offset(big_mnt: Path) -> None:
    """A listing resumed at any offset it gave out goes on with the next entry, on a fresh
    open (from the daemon or the kernel's cache alike): what telldir/seekdir and NFS rely on."""
    listing = list_all(big_mnt / "big")
    starts = [0] + [offset for _, offset in listing]
    for index, start in enumerate(starts):
        resumed = list_from(big_mnt / "big", start, 1024)
        assert resumed == listing[index : index + len(resumed)]
        assert resumed or index == len(listing)


def test_ls_find_du_stat_agree_after_cached_listings(big_mnt: Path) -> None:
    """H1 W1: after several walks (entries counted as lookups by readdirplus, listings from
    the cache), every name still resolves: ls -la, find, du and stat agree with the tree."""
    for _ in range(3):
        found = sh("find", big_mnt).splitlines()
        assert len(found) == 1 + 1 + (BIG_DIR_ENTRIES - 1) + 1 + 2  # root, big, files, sub/x, sub/y
    ls_lines = sh("ls", "-la", big_mnt / "big").splitlines()[1:]  # after "total"
    assert sorted(line.split()[-1].encode() for line in ls_lines) == sorted(expected_big_names())
    assert stat_c("%h %i", big_mnt / "big/sub/y") == stat_c("%h %i", big_mnt / "big/n00007")
    assert stat_c("%h", big_mnt / "big/n00007").strip() == "2"
    apparent = int(sh("du", "-s", "-b", big_mnt / "big").split()[0])
    # every file once (the hardlink counted once), plus each directory's reported size
    files = sum(len(b"%d\n" % i) for i in range(BIG_DIR_ENTRIES) if i != 3) + 1
    directories = os.lstat(big_mnt / "big").st_size + os.lstat(big_mnt / "big/sub").st_size
    assert apparent == files + directories
