"""``ocifs diff``: two images built here to differ in every way an entry can, with the
answer known by construction; its exit statuses and JSON; that the base layer two images
share is never read; and that ``diff -r`` of two mounts names the same paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from archives import tar_tree
from mounting import mounted, run_ocifs
from tarbuild import Member, d, f, link, make_tar, sym, wh

from ocifs.diffreport import json_document, quote_path, text_lines
from ocifs.image import Image, load_image
from ocifs.imagearg import resolve_arg
from ocifs.imagediff import diff_images
from ocifs.ocibuild import LayoutWriter, host_platform
from ocifs.tree import Inode

XATTR = "SCHILY.xattr.user.note"

# The base layer both images have, then each one's upper layer.
BASE = [
    d("etc"),
    f("etc/same", b"shared\n"),
    f("etc/size", b"short"),
    f("etc/content", b"AAAA"),
    f("etc/mode", b"m"),
    f("etc/owner", b"o"),
    sym("etc/link", "same"),
    f("etc/xattr", b"x", pax={XATTR: "one"}),
    f("etc/hard", b"h"),
    d("gone"),
    f("gone/one", b"1"),
    d("gone/sub"),
    f("gone/sub/two", b"2"),
    f("typed", b"a file"),
    d("dir2file"),
    f("dir2file/inner", b"i"),
    Member("dev", "char", devmajor=1, devminor=3),
    Member("fifo", "fifo"),
]
UPPER_A = [
    f("copy", b"equal bytes", mtime=1_600_000_000),
    f("upper", b"1111"),
]
UPPER_B = [
    d(".", mode=0o750),  # the root's own mode
    f("copy", b"equal bytes", mtime=1_600_000_001),  # same bytes, another layer, another mtime
    f("upper", b"2222"),  # the same size, in both upper layers
    f("etc/size", b"longer"),
    f("etc/content", b"AAAB"),  # the same size: the base layer's copy is read
    f("etc/mode", b"m", mode=0o755),
    f("etc/owner", b"o", uid=1000),
    sym("etc/link", "size"),
    f("etc/xattr", b"x", pax={XATTR: "two"}),
    link("etc/hard2", "etc/hard"),
    wh("gone"),
    f("added", b"new"),
    d("typed"),
    f("typed/child", b"c"),
    f("dir2file", b"now a file"),
    Member("dev", "char", devmajor=1, devminor=5),
]
EXPECTED = """\
M\t.\t(mode)
A\tadded
M\tdev\t(device)
M\tdir2file\t(type)
D\tdir2file/inner
M\tetc/content\t(content)
M\tetc/hard\t(links)
A\tetc/hard2
M\tetc/link\t(target)
M\tetc/mode\t(mode)
M\tetc/owner\t(owner)
M\tetc/size\t(size,content)
M\tetc/xattr\t(xattrs)
D\tgone
D\tgone/one
D\tgone/sub
D\tgone/sub/two
M\ttyped\t(type)
A\ttyped/child
M\tupper\t(content)
"""


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagediff") / "layout"
    writer = LayoutWriter(root)
    base = writer.add_layer(make_tar(BASE))
    upper_a = writer.add_layer(make_tar(UPPER_A))
    upper_b = writer.add_layer(make_tar(UPPER_B), compression="zstd")
    writer.add_image([base, upper_a], ref="a", platform=host_platform())
    writer.add_image([base, upper_b], ref="b", platform=host_platform())
    writer.save()
    return root


def load(arg: str) -> Image:
    return load_image(resolve_arg(arg))


def test_every_kind_of_difference_once_each_path_sorted(layout: Path) -> None:
    """M2, M4, W1, H1, A2, A3, A4, A7: each way an entry can differ says what differs."""
    result = run_ocifs("diff", f"{layout}:a", f"{layout}:b")
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == EXPECTED


def test_mtime_only_with_the_option(layout: Path) -> None:
    """``copy`` has the same bytes in both (from different layers, so compared and found
    equal) and another mtime: reported with --mtime only. So is the root's: implied in A
    (mtime 0), an entry of B's upper layer. Every other entry has the same mtime."""
    result = run_ocifs("diff", "--mtime", f"{layout}:a", f"{layout}:b")
    assert result.returncode == 1
    expected = EXPECTED.replace("M\t.\t(mode)\n", "M\t.\t(mode,mtime)\n").replace(
        "A\tadded\n", "A\tadded\nM\tcopy\t(mtime)\n"
    )
    assert result.stdout == expected


def test_equal_images_exit_0_with_nothing_read(layout: Path, tmp_path: Path) -> None:
    """An image against itself, and against an oci-archive of its layout: equal, exit 0, no
    output; every regular file equal by its place in the same layer streams."""
    archive = tar_tree(layout, tmp_path / "image.tar")
    for other in (f"{layout}:a", f"{archive}:a"):
        result = run_ocifs("diff", f"{layout}:a", other)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run_ocifs("diff", "--json", f"{layout}:a", f"{archive}:a")
    document = json.loads(result.stdout)
    assert document["equal"] is True and document["changes"] == []
    assert document["counts"] == {"added": 0, "removed": 0, "changed": 0}
    assert document["contents"] == {
        "equal_by_place": sum(1 for member in BASE + UPPER_A if member.kind == "file"),
        "compared": 0,
        "differed": 0,
        "bytes_read": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{layout}:a", "{layout}:nope"], "no image with ref 'nope'"),
        (["{layout}/missing", "{layout}:a"], "missing"),
    ],
)
def test_trouble_exits_2_with_one_line(layout: Path, args: list[str], message: str) -> None:
    result = run_ocifs("diff", *(arg.format(layout=layout) for arg in args))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("ocifs: error: ") and message in result.stderr


def test_usage_error_exits_2(layout: Path) -> None:
    result = run_ocifs("diff", f"{layout}:a")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_a_damaged_layer_exits_2(layout: Path, tmp_path: Path) -> None:
    """A blob damaged after indexing: the comparison that must read it fails, one line."""
    copy = tmp_path / "layout"
    subprocess.run(["cp", "-a", str(layout), str(copy)], check=True)
    cache = tmp_path / "cache"
    assert run_ocifs("index", "--cache-dir", str(cache), f"{copy}:b").returncode == 0
    upper_b = json.loads((copy / "index.json").read_text())["manifests"][1]["digest"]
    manifest = json.loads((copy / "blobs/sha256" / upper_b[7:]).read_text())
    blob = copy / "blobs/sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = run_ocifs("diff", "--cache-dir", str(cache), f"{copy}:a", f"{copy}:b")
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ocifs: error: ")


def test_json_shape(layout: Path) -> None:
    result = run_ocifs("diff", "--json", f"{layout}:a", f"{layout}:b")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert set(document) == {"a", "b", "equal", "counts", "contents", "changes"}
    assert (document["a"], document["b"], document["equal"]) == (
        f"{layout}:a",
        f"{layout}:b",
        False,
    )
    assert document["counts"] == {"added": 3, "removed": 5, "changed": 12}
    # Read: the same-size files from different layers: upper and copy (each image's upper
    # layer), and etc/content, etc/mode, etc/owner, etc/xattr (rewritten by B's upper).
    assert document["contents"]["compared"] == 6
    assert document["contents"]["differed"] == 2  # upper, etc/content
    assert document["contents"]["bytes_read"] == 2 * (4 + 4 + len(b"equal bytes") + 3)
    changes = {change["path"]: change for change in document["changes"]}
    assert [change["path"] for change in document["changes"]] == [
        line.split("\t")[1] for line in EXPECTED.splitlines()
    ]
    assert changes["etc/mode"]["changed"] == ["mode"]
    assert changes["etc/mode"]["a"]["mode"] == "0644"
    assert changes["etc/mode"]["b"]["mode"] == "0755"
    assert changes["etc/owner"]["b"]["uid"] == 1000
    assert changes["etc/link"]["a"]["target"] == "same"
    assert changes["etc/link"]["b"]["target"] == "size"
    assert changes["dev"]["a"]["device"] == {"major": 1, "minor": 3}
    assert changes["dev"]["b"]["device"] == {"major": 1, "minor": 5}
    assert changes["etc/xattr"]["a"]["xattrs"] == {"user.note": b"one".hex()}
    assert changes["etc/xattr"]["b"]["xattrs"] == {"user.note": b"two".hex()}
    assert "links" not in changes["etc/hard"]["a"]
    assert changes["etc/hard"]["b"]["links"] == ["etc/hard", "etc/hard2"]
    assert changes["etc/hard2"] == {
        "status": "A",
        "path": "etc/hard2",
        "b": {
            "type": "file",
            "mode": "0644",
            "uid": 0,
            "gid": 0,
            "size": 1,
            "links": ["etc/hard", "etc/hard2"],
            "mtime_ns": 1_700_000_000 * 10**9,
        },
    }
    assert changes["typed"]["a"]["type"] == "file" and changes["typed"]["b"]["type"] == "dir"
    assert "b" not in changes["gone/sub"] and changes["gone/sub"]["a"]["type"] == "dir"
    assert "size" not in changes["gone/sub"]["a"]  # a directory's size is not compared


class CountingReader:
    """A layer reader that notes every read: (offset, size)."""

    def __init__(self, inner: object, reads: list[tuple[int, int]]) -> None:
        self.inner = inner
        self.reads = reads

    def pread(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return self.inner.pread(offset, size)  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def counted(image: Image) -> list[list[tuple[int, int]]]:
    reads: list[list[tuple[int, int]]] = [[] for _ in image.readers]
    image.readers = [
        CountingReader(reader, log) for reader, log in zip(image.readers, reads, strict=True)
    ]  # type: ignore[misc]
    return reads


@pytest.fixture
def images(layout: Path) -> Iterator[tuple[Image, Image]]:
    a, b = load(f"{layout}:a"), load(f"{layout}:b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def data_range(node: Inode | None) -> tuple[int, int]:
    assert node is not None
    return node.offset, node.offset + node.size


def test_no_byte_of_the_shared_base_is_read_but_what_changed(images: tuple[Image, Image]) -> None:
    """The base layer both images share: of it, only the files B's upper layer rewrote with
    the same size are read (in A, against B's copies); every file both take from it is
    equal by place, and not one byte of those is read."""
    a, b = images
    assert a.resolved.layers[0].diff_id == b.resolved.layers[0].diff_id
    reads_a, reads_b = counted(a), counted(b)
    result = diff_images(a, b)
    assert "\n".join(text_lines(result)) + "\n" == EXPECTED
    rewritten = [b"etc/content", b"etc/mode", b"etc/owner", b"etc/xattr"]
    assert all(a.tree.find(path).layer == 0 for path in rewritten)  # type: ignore[union-attr]
    assert all(b.tree.find(path).layer == 1 for path in rewritten)  # type: ignore[union-attr]
    assert sorted((offset, offset + size) for offset, size in reads_a[0]) == sorted(
        data_range(a.tree.find(path)) for path in rewritten
    )
    assert reads_b[0] == []
    # What was read of the upper layers: each file compared, whole.
    upper_a = sorted(data_range(a.tree.find(path)) for path in (b"copy", b"upper"))
    assert sorted((offset, offset + size) for offset, size in reads_a[1]) == upper_a
    upper_b = sorted(data_range(b.tree.find(path)) for path in (b"copy", b"upper", *rewritten))
    assert sorted((offset, offset + size) for offset, size in reads_b[1]) == upper_b
    # The regular files both take from the base layer: equal by place, never read.
    shared = [b"etc/hard", b"etc/same"]
    for path in shared:
        node_a, node_b = a.tree.find(path), b.tree.find(path)
        assert node_a is not None and node_b is not None
        assert (node_a.layer, node_b.layer, node_a.offset) == (0, 0, node_b.offset)
    assert result.stats.same_place == len(shared)


def test_images_sharing_their_base_read_only_their_uppers(tmp_path: Path) -> None:
    """Two images of one big base layer and upper layers that add, resize and rewrite
    their own files: not one read of the base layer, from either image."""
    writer = LayoutWriter(tmp_path / "layout")
    base = writer.add_layer(
        make_tar([d("data"), *(f(f"data/{n}", os.urandom(5000)) for n in range(50))])
    )
    top_a = writer.add_layer(make_tar([f("data/3", b"resized"), f("mine", b"x" * 100)]))
    top_b = writer.add_layer(make_tar([f("mine", b"y" * 100), f("theirs", b"new")]))
    writer.add_image([base, top_a], ref="a", platform=host_platform())
    writer.add_image([base, top_b], ref="b", platform=host_platform())
    writer.save()
    a, b = load(f"{tmp_path}/layout:a"), load(f"{tmp_path}/layout:b")
    try:
        reads_a, reads_b = counted(a), counted(b)
        result = diff_images(a, b)
        assert text_lines(result) == [
            "M\tdata/3\t(size,content)",
            "M\tmine\t(content)",
            "A\ttheirs",
        ]
        assert (reads_a[0], reads_b[0]) == ([], [])
        assert reads_a[1] and reads_b[1]  # "mine" was compared by its bytes
        assert result.stats.same_place == 49
    finally:
        a.close()
        b.close()


def test_quote_path_like_git() -> None:
    assert quote_path(b"") == "."
    assert quote_path(b"usr/bin/x y") == "usr/bin/x y"
    assert quote_path("é/ü".encode()) == "é/ü"
    assert quote_path(b"a\tb\nc") == '"a\\tb\\nc"'
    assert quote_path(b'q"\\') == '"q\\"\\\\"'
    assert quote_path(b"bad\xff\x01") == '"bad\\377\\001"'


def test_json_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    one = writer.add_layer(make_tar([f("plain", b"1")]))
    two = writer.add_layer(make_tar([f("plain", b"1"), f("caf\udce9", b"2")]))
    writer.add_image([one], ref="a", platform=host_platform())
    writer.add_image([two], ref="b", platform=host_platform())
    writer.save()
    a, b = load(f"{tmp_path}/layout:a"), load(f"{tmp_path}/layout:b")
    try:
        result = diff_images(a, b)
        assert text_lines(result) == ['A\t"caf\\351"']
        text = json.dumps(json_document(result, "a", "b"))
        path = json.loads(text)["changes"][0]["path"]
        assert path.encode("utf-8", "surrogateescape") == b"caf\xe9"
    finally:
        a.close()
        b.close()


# diff -rq's lines (LC_ALL=C), each naming one path that differs, or the top of a tree
# only one side has.
DIFF_R_LINES = [
    (re.compile(r"^Only in (.+?): (.+)$"), "only"),
    (re.compile(r"^Files (.+) and (.+) differ$"), "pair"),
    (re.compile(r"^Symbolic links (.+) and (.+) differ$"), "pair"),
    (re.compile(r"^File (.+) is an? .+ while file (.+) is an? .+$"), "pair"),
]


def tree_below(top: Path) -> set[str]:
    return {str(path.relative_to(top)) for path in top.rglob("*")} if top.is_dir() else set()


def diff_r_paths(mnt_a: Path, mnt_b: Path) -> set[str]:
    """The paths ``diff -rq --no-dereference`` says differ, every path under a tree that
    only one side has (it names the top only) included."""
    result = subprocess.run(
        ["diff", "-rq", "--no-dereference", str(mnt_a), str(mnt_b)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert result.returncode == 1, result.stderr
    paths: set[str] = set()
    for line in result.stdout.splitlines():
        for pattern, kind in DIFF_R_LINES:
            match = pattern.match(line)
            if match is None:
                continue
            if kind == "only":
                top = Path(match[1]) / match[2]
                root = mnt_a if top.is_relative_to(mnt_a) else mnt_b
                rel = str(top.relative_to(root))
                paths |= {rel} | {f"{rel}/{p}" for p in tree_below(top)}
            else:
                rel = str(Path(match[1]).relative_to(mnt_a))
                paths |= {rel}
                for root in (mnt_a, mnt_b):  # a type change: what was under it
                    if not (root / rel).is_symlink():
                        paths |= {f"{rel}/{p}" for p in tree_below(root / rel)}
            break
        else:
            raise AssertionError(f"a diff -r line this test does not know: {line!r}")
    return paths


# What diff -r compares: the entries, their types, contents and link targets. Not modes,
# owners, xattrs, hardlinks or times. And two special files (fifos, devices) it cannot
# compare at all: diffutils 3.8 says "File X is a fifo while file Y is a fifo" of any pair.
DIFF_R_SEES = {"type", "content", "target"}


def special_in_both(mnt_a: Path, mnt_b: Path) -> set[str]:
    """The paths that are a fifo or a device in both mounts."""

    def special(path: Path) -> bool:
        return path.is_fifo() or path.is_char_device() or path.is_block_device()

    return {
        str(path.relative_to(mnt_a))
        for path in mnt_a.rglob("*")
        if special(path) and special(mnt_b / path.relative_to(mnt_a))
    }


@pytest.mark.fuse
def test_diff_r_of_two_mounts_names_the_same_paths(layout: Path, tmp_path: Path) -> None:
    with (
        mounted(f"{layout}:a", tmp_path / "a") as mnt_a,
        mounted(f"{layout}:b", tmp_path / "b") as mnt_b,
    ):
        found = diff_r_paths(mnt_a, mnt_b)
        special = special_in_both(mnt_a, mnt_b)
    assert special == {"dev", "fifo"}
    result = run_ocifs("diff", "--json", f"{layout}:a", f"{layout}:b")
    changes = json.loads(result.stdout)["changes"]
    ours = {
        change["path"]
        for change in changes
        if change["status"] != "M" or DIFF_R_SEES & set(change["changed"])
    }
    assert found == ours | special
    # And the rest are changes diff -r cannot see.
    assert {change["path"] for change in changes} - ours == {
        ".",
        "dev",
        "etc/hard",
        "etc/mode",
        "etc/owner",
        "etc/xattr",
    }
