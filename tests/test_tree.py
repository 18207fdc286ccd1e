"""The merge, without a mount: layers built with tarfile, scanned, replayed into the tree.

Each test names the conformance lines (M, W, H, A, P) it pins.
"""

from __future__ import annotations

import array
import dataclasses
import io
import stat
from collections.abc import Callable
from typing import Any

import pytest
from tarbuild import Member, d, f, link, make_tar, opaque, sym, wh

from ocifs.errors import MergeError, show
from ocifs.tarscan import scan_tar
from ocifs.tree import (
    CHILD_COLUMNS,
    INODE_COLUMNS,
    Inode,
    MergedTree,
    TreeBuilder,
    make_rdev,
    split_path,
)


def merge(*layers: list[Member]) -> MergedTree:
    builder = TreeBuilder()
    for index, members in enumerate(layers):
        builder.apply_layer(index, scan_tar(io.BytesIO(make_tar(members))))
    return builder.freeze()


def paths(tree: MergedTree) -> set[str]:
    return {path.decode("utf-8", "surrogateescape") for path, _ in tree.walk()}


def node(tree: MergedTree, path: str) -> Inode:
    found = tree.find(path.encode())
    assert found is not None, f"{path} missing"
    return found


def test_m1_layers_apply_in_order_m2_replacement_takes_everything() -> None:
    tree = merge(
        [f("a", b"one", mode=0o600, uid=1, gid=2, pax={"SCHILY.xattr.user.x": "1"})],
        [f("a", b"two", mode=0o644, uid=3, gid=4)],
    )
    a = node(tree, "a")
    assert (a.size, a.mode & 0o7777, a.uid, a.gid, a.xattrs) == (3, 0o644, 3, 4, None)


def test_m3_directory_over_directory_keeps_children_takes_upper_attributes() -> None:
    tree = merge(
        [d("etc", mode=0o755), f("etc/passwd", b"root")],
        [d("etc", mode=0o700, uid=5, pax={"SCHILY.xattr.user.dir": "up"})],
    )
    etc = node(tree, "etc")
    assert paths(tree) == {"etc", "etc/passwd"}
    assert (etc.mode & 0o7777, etc.uid, etc.xattrs) == (0o700, 5, {b"user.dir": b"up"})


def test_m4_type_changes_remove_the_old_object() -> None:
    tree = merge(
        [d("x"), f("x/deep/file"), f("y", b"file")],
        [f("x", b"now a file"), d("y"), f("y/new")],
    )
    assert paths(tree) == {"x", "y", "y/new"}
    assert stat.S_ISREG(node(tree, "x").mode)
    assert stat.S_ISDIR(node(tree, "y").mode)


def test_m5_same_layer_twice_is_applied_twice() -> None:
    layer = [f("keep"), wh("gone")]
    tree = merge([f("gone")], layer, [f("gone")], layer)
    assert paths(tree) == {"keep"}


def test_m6_directory_after_its_children_sets_attributes_keeps_children() -> None:
    tree = merge([f("a/b/c", b"x"), d("a/b", mode=0o711, uid=7), d("a", mode=0o750)])
    assert paths(tree) == {"a", "a/b", "a/b/c"}
    assert node(tree, "a/b").mode & 0o7777 == 0o711
    assert node(tree, "a/b").uid == 7
    assert node(tree, "a").mode & 0o7777 == 0o750


def test_m7_last_entry_of_a_path_in_one_layer_wins() -> None:
    tree = merge([f("p", b"first"), d("q"), f("q/child"), f("p", b"second!"), f("q", b"file")])
    assert node(tree, "p").size == len(b"second!")
    assert paths(tree) == {"p", "q"}


def test_m8_implied_parents_are_0755_root_owned() -> None:
    tree = merge([f("a/b/c", uid=9, gid=9)])
    for path in ("a", "a/b"):
        n = node(tree, path)
        assert (n.mode, n.uid, n.gid) == (stat.S_IFDIR | 0o755, 0, 0)


def test_m9_non_directory_parent_becomes_directory() -> None:
    tree = merge([f("x", b"file"), sym("s", "x")], [f("x/y"), f("s/z")])
    assert paths(tree) == {"x", "x/y", "s", "s/z"}
    assert stat.S_ISDIR(node(tree, "x").mode)
    assert stat.S_ISDIR(node(tree, "s").mode)


def test_m10_root_entry_sets_root_attributes_and_must_be_a_directory() -> None:
    tree = merge([d(".", mode=0o700, uid=3), f("./a")])
    assert (tree.root.mode & 0o7777, tree.root.uid) == (0o700, 3)
    with pytest.raises(MergeError, match="root entry"):
        merge([f("./", b"")])


def test_w1_whiteout_removes_any_kind_never_a_symlink_target() -> None:
    tree = merge(
        [
            f("dir/file"),
            f("target", b"t"),
            sym("dir/link", "../target"),
            Member("dir/fifo", "fifo"),
            Member("dir/dev", "char", devmajor=1, devminor=3),
            d("dir/sub"),
            f("dir/sub/deep/x"),
        ],
        [wh("dir/file"), wh("dir/link"), wh("dir/fifo"), wh("dir/dev"), wh("dir/sub")],
    )
    assert paths(tree) == {"dir", "target"}


def test_w2_whiteout_and_file_in_the_same_layer_keep_the_file() -> None:
    tree = merge(
        [f("a", b"old"), f("b", b"old")], [wh("a"), f("a", b"new!"), f("b", b"new!"), wh("b")]
    )
    assert node(tree, "a").size == 4
    assert node(tree, "b").size == 4


def test_w3_whiteout_of_missing_path_creates_nothing() -> None:
    tree = merge([f("a")], [wh("no/such/path"), wh("nothing")])
    assert paths(tree) == {"a"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_w4_opaque_hides_lower_children_keeps_same_layer_ones(marker_first: bool) -> None:
    upper = [f("d/new1"), opaque("d"), f("d/new2")]
    if marker_first:
        upper = [opaque("d"), f("d/new1"), f("d/new2")]
    tree = merge([d("d", mode=0o700), f("d/old"), d("d/olddir"), f("d/olddir/x")], upper)
    assert paths(tree) == {"d", "d/new1", "d/new2"}
    assert node(tree, "d").mode & 0o7777 == 0o700  # D stays, with its own attributes


def test_w4_root_opaque_hides_the_whole_lower_tree() -> None:
    tree = merge([f("a"), d("b"), f("b/c")], [opaque(""), f("z")])
    assert paths(tree) == {"z"}


def test_w5_removed_and_added_again_comes_back_without_old_children() -> None:
    tree = merge([d("d"), f("d/old")], [wh("d")], [d("d"), f("d/new")])
    assert paths(tree) == {"d", "d/new"}


def test_w6_whiteout_and_aufs_markers_are_never_visible() -> None:
    tree = merge(
        [f("a"), d("d")],
        [wh("a"), opaque("d"), f(".wh..wh.plnk/123.456"), f("d/.wh..wh.aufs"), f(".wh..wh.orph")],
    )
    assert paths(tree) == {"d"}
    assert tree.find(b".wh.a") is None


@pytest.mark.parametrize("name", [".wh.", "d/.wh..", "d/.wh...", ".wh.x/y"])
def test_w7_malformed_whiteouts_are_errors(name: str) -> None:
    with pytest.raises(MergeError, match="whiteout"):
        merge([f(name)])


def test_h1_hardlink_is_one_inode_with_nlink_of_visible_names() -> None:
    tree = merge([f("a", b"data", mode=0o4755, uid=5), link("b", "a"), link("c/d", "a")])
    a, b, dd = node(tree, "a"), node(tree, "b"), node(tree, "c/d")
    assert a.ino == b.ino == dd.ino
    assert a.nlink == 3
    assert a.ino == b.ino


def test_h2_hardlink_header_metadata_is_ignored() -> None:
    tree = merge([f("a", b"x", mode=0o600, uid=1), link("b", "a", mode=0o777, uid=99)])
    b = node(tree, "b")
    assert (b.mode & 0o7777, b.uid) == (0o600, 1)


def test_h3_target_from_lower_layer_and_errors_for_missing_or_directory() -> None:
    tree = merge([f("lower", b"x")], [link("upper", "lower")])
    assert node(tree, "upper").ino == node(tree, "lower").ino
    assert node(tree, "lower").nlink == 2
    with pytest.raises(MergeError, match="does not exist"):
        merge([link("b", "missing")])
    with pytest.raises(MergeError, match="directory"):
        merge([d("dir"), link("b", "dir")])


def test_h3_hardlink_target_is_never_followed_through_a_symlink() -> None:
    """P4: link targets resolve inside the tree by name only."""
    with pytest.raises(MergeError, match="does not exist"):
        merge([d("real"), f("real/f"), sym("alias", "real"), link("b", "alias/f")])


def test_h4_chains_resolve_to_one_inode() -> None:
    tree = merge([f("a", b"x"), link("b", "a"), link("c", "b")])
    assert node(tree, "a").ino == node(tree, "c").ino
    assert node(tree, "a").nlink == 3


def test_h5_replacing_or_whiting_out_one_name_breaks_only_that_name() -> None:
    tree = merge(
        [f("a", b"old"), link("b", "a"), link("c", "a")],
        [f("b", b"replaced"), wh("c")],
    )
    a, b = node(tree, "a"), node(tree, "b")
    assert a.ino != b.ino
    assert (a.nlink, a.size, b.nlink, b.size) == (1, 3, 1, 8)


def test_h5_removing_a_directory_drops_the_names_inside_it() -> None:
    tree = merge([f("keep", b"x"), d("dir"), link("dir/other", "keep")], [wh("dir")])
    assert node(tree, "keep").nlink == 1


def test_a1_a2_symlinks_kept_as_written() -> None:
    targets = ["/etc/passwd", "../../x", "dangling", "loop"]
    links = [sym(f"l{i}", t, mode=0o644) for i, t in enumerate(targets)]
    tree = merge([*links, sym("loop", "loop")])
    for i, target in enumerate(targets):
        n = node(tree, f"l{i}")
        assert n.mode == stat.S_IFLNK | 0o777  # the header's 0644 means nothing on Linux
        assert (n.target, n.size) == (target.encode(), len(target.encode()))


def test_a3_devices_and_fifos() -> None:
    tree = merge(
        [
            Member("null", "char", devmajor=1, devminor=3),
            Member("sda", "block", devmajor=8, devminor=300),
            Member("pipe", "fifo"),
        ]
    )
    assert stat.S_ISCHR(node(tree, "null").mode)
    assert node(tree, "null").rdev == make_rdev(1, 3)
    assert node(tree, "sda").rdev == make_rdev(8, 300)
    assert stat.S_ISFIFO(node(tree, "pipe").mode)


def test_a4_a5_a6_owner_mode_and_nanosecond_mtime() -> None:
    tree = merge(
        [
            f("big", uid=3_000_000_000, gid=2**32 - 2, mode=0o7755),
            f("ns", pax={"mtime": "1700000000.123456789"}),
        ]
    )
    big = node(tree, "big")
    assert (big.uid, big.gid, big.mode) == (3_000_000_000, 2**32 - 2, stat.S_IFREG | 0o7755)
    assert node(tree, "ns").mtime_ns == 1_700_000_000_123_456_789


def test_a11_directory_nlink_counts_subdirectories() -> None:
    tree = merge([d("top"), d("top/a"), d("top/b"), f("top/file")])
    assert node(tree, "top").nlink == 4
    assert tree.root.nlink == 3


def test_inode_numbers_are_unique_and_root_is_one() -> None:
    tree = merge([f("a"), link("b", "a"), d("c"), f("c/d")])
    assert tree.root.ino == 1
    inos = {path: n.ino for path, n in tree.walk()}
    assert inos[b"a"] == inos[b"b"]
    assert len(set(inos.values())) == 3
    assert all(tree.inode(ino).ino == ino for ino in inos.values())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"./a/b/", (b"a", b"b")),
        (b"/abs//x", (b"abs", b"x")),
        (b"a/./b/../c", (b"a", b"c")),
        (b"./", ()),
    ],
)
def test_p1_names_are_normalised(raw: bytes, expected: tuple[bytes, ...]) -> None:
    assert split_path(raw) == expected


@pytest.mark.parametrize("raw", [b"../x", b"a/../../x", b"a/\0b", b"a/" + b"n" * 256])
def test_p2_p3_escapes_nul_and_long_components_are_errors(raw: bytes) -> None:
    with pytest.raises(MergeError):
        split_path(raw)


def test_lookup_and_children_of_a_large_directory() -> None:
    """The frozen tree finds every name by binary search and lists them in byte order."""
    names = sorted({bytes([65 + i % 26]) * (1 + i % 7) + str(i).encode() for i in range(2000)})
    tree = merge([f("big/" + name.decode()) for name in reversed(names)] + [sym("big/zz", "t")])
    big = tree.lookup(tree.root.ino, b"big")
    assert big is not None
    listed = [name for name, _ in tree.children(big)]
    assert listed == [*names, b"zz"]
    inos = dict(tree.children(big))
    assert len(set(inos.values())) == len(names) + 1
    for name in names:
        assert tree.lookup(big, name) == inos[name]
    assert tree.lookup(big, b"missing") is None
    assert tree.lookup(big, b"..") == tree.root.ino
    assert [name for name, _ in tree.children(big, start=1995)] == [*names[1995:], b"zz"]
    assert tree.inode(tree.lookup(big, b"zz") or 0).target == b"t"


def test_a4_owner_beyond_32_bits_is_an_error() -> None:
    with pytest.raises(MergeError, match="does not fit in 32 bits"):
        merge([f("x", uid=2**32)])


def encodable_tree() -> MergedTree:
    """A tree with every extra the encoding carries: hardlinks, xattrs, a sparse map, a
    symlink text, devices, and a file of a second layer."""
    lower = list(
        scan_tar(
            io.BytesIO(
                make_tar(
                    [
                        d("etc", pax={"SCHILY.xattr.user.dir": "yes"}),
                        f("etc/passwd", b"root", pax={"SCHILY.xattr.user.x": "\x00\xff"}),
                        link("etc/passwd-link", "etc/passwd"),
                        sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
                        Member("dev/null", "char", devmajor=1, devminor=3),
                        f("var/holes", b"0123456789"),
                    ]
                )
            )
        )
    )
    holes = next(n for n, entry in enumerate(lower) if entry.path == b"var/holes")
    lower[holes] = dataclasses.replace(lower[holes], size=1 << 20, sparse=((0, 5), (4096, 5)))
    builder = TreeBuilder()
    builder.apply_layer(0, lower)
    builder.apply_layer(1, scan_tar(io.BytesIO(make_tar([wh("etc/localtime"), f("new", b"n")]))))
    return builder.freeze()


def test_encoded_tree_decodes_to_the_same_tree() -> None:
    tree = encodable_tree()
    meta, sections = tree.encode()
    again = MergedTree.decode(meta, sections)
    assert [(p, tuple(i)) for p, i in again.walk()] == [(p, tuple(i)) for p, i in tree.walk()]
    for attribute, typecode in (*INODE_COLUMNS, *CHILD_COLUMNS):
        assert getattr(again, attribute) == getattr(tree, attribute), attribute
        assert getattr(again, attribute).typecode == typecode, attribute
    assert (again.names, again.targets) == (tree.names, tree.targets)
    assert again.xattrs == tree.xattrs and len(again.xattrs) == 2
    assert again.sparse == tree.sparse == {node(tree, "var/holes").ino: ((0, 5), (4096, 5))}
    assert again.file_bytes == tree.file_bytes
    assert node(again, "etc/passwd-link").nlink == 2
    assert node(again, "new").layer == 1


def test_the_column_tables_make_the_arrays_and_the_sections() -> None:
    """One table says each column's typecode: the tree's arrays and its sections follow it."""
    tree = encodable_tree()
    meta, sections = tree.encode()
    assert meta == {
        "inodes": len(tree) + 1,
        "children": len(tree.child_ino),
        "file_bytes": tree.file_bytes,
    }
    columns = [f"tree.{attribute}" for attribute, _ in (*INODE_COLUMNS, *CHILD_COLUMNS)]
    assert list(sections) == [*columns, "tree.names", "tree.targets", "tree.extras"]
    for attribute, typecode in INODE_COLUMNS:
        values = getattr(tree, attribute)
        assert values.typecode == typecode and len(values) == len(tree) + 1, attribute
    for attribute, typecode in CHILD_COLUMNS:
        assert getattr(tree, attribute).typecode == typecode, attribute
    assert len(tree.child_name) == len(tree.child_ino) + 1
    assert tree.layer[0] == -1 and tree.mode[0] == 0  # the placeholder of inode 0


def damaged(edit: Callable[[dict[str, Any], dict[str, bytes]], None]) -> MergedTree:
    meta, sections = encodable_tree().encode()
    edit(meta, sections)
    return MergedTree.decode(meta, sections)


def set_column(sections: dict[str, bytes], attribute: str, index: int, value: int) -> None:
    typecode = dict((*INODE_COLUMNS, *CHILD_COLUMNS))[attribute]
    values = array.array(typecode, sections[f"tree.{attribute}"])
    values[index] = value
    sections[f"tree.{attribute}"] = values.tobytes()


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda m, s: s.update({"tree.uid": s["tree.uid"][:-4]}), ValueError, "column tree.uid"),
        (lambda m, s: m.update({"children": m["children"] + 1}), ValueError, "tree.child_ino"),
        (lambda m, s: set_column(s, "child_ino", 0, 0), ValueError, "child table"),
        (lambda m, s: set_column(s, "child_ino", 0, 10**6), ValueError, "child table"),
        (lambda m, s: s.update({"tree.names": s["tree.names"] + b"x"}), ValueError, "child table"),
        (lambda m, s: set_column(s, "child_count", 1, 10**6), ValueError, "directory run"),
        (lambda m, s: s.pop("tree.targets"), KeyError, "tree.targets"),
        (lambda m, s: s.update({"tree.extras": b"{"}), ValueError, "Expecting"),
        (lambda m, s: m.pop("file_bytes"), KeyError, "file_bytes"),
    ],
    ids=[
        "short-column",
        "children-miscounted",
        "child-is-inode-0",
        "child-past-the-last-inode",
        "names-longer-than-the-table",
        "directory-run-past-the-table",
        "section-missing",
        "extras-not-json",
        "meta-missing",
    ],
)
def test_damaged_sections_do_not_decode(
    edit: Callable[[dict[str, Any], dict[str, bytes]], None],
    error: type[Exception],
    message: str,
) -> None:
    """Damage that the container's hashes cannot see (a wrong but well-formed file) still
    cannot give a tree whose lookups run out of bounds."""
    with pytest.raises(error, match=message):
        damaged(edit)


def test_b5_long_names_in_merge_errors_are_quoted_short() -> None:
    """B5 H3 P3: a merge error quotes the names it is about by their ends and their length,
    never whole (a 4000-byte hardlink target, a 300-byte component): errors.show."""
    target = "t/" * 1999 + "x"  # 3999 bytes: within PATH_MAX, so the merge is what refuses it
    with pytest.raises(MergeError) as info:
        merge([link("l", target)])
    message = str(info.value)
    assert message.startswith("hardlink 'l' points to 't/t/t/") and "(3999 bytes)" in message
    assert message.endswith("t/t/x' (3999 bytes), which does not exist") and len(message) < 200
    with pytest.raises(MergeError) as info:
        merge([f("d/" + "c" * 300)])
    assert "(302 bytes) has a component longer than 255 bytes" in str(info.value)


@pytest.mark.parametrize(
    "value,shown",
    [
        (b"etc/passwd", "'etc/passwd'"),
        (b"bad\xff\nname", "'bad\\\\xff\\nname'"),  # one line, undecodable bytes escaped
        ("a" * 120, repr("a" * 120)),  # up to 120 characters: whole
        (b"a" * 60 + b"z" * 61, "'" + "a" * 50 + "…" + "z" * 50 + "' (121 bytes)"),
        ("é" * 200, "'" + "é" * 50 + "…" + "é" * 50 + "' (400 bytes)"),  # bytes, not characters
        (["x"] * 100, "['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x',… 'x', 'x', "),  # JSON
        (None, "None"),
    ],
)
def test_show_keeps_a_name_on_one_short_line(value: object, shown: str) -> None:
    """How every message quotes a name or value from the image (errors.show)."""
    assert show(value).startswith(shown), show(value)
    assert "\n" not in show(value) and len(show(value)) < 140


def test_m4_m9_a_directory_replaced_in_its_own_layer_is_not_reused_as_a_parent() -> None:
    """The builder remembers the last parent it walked to; a directory that leaves the tree
    (replaced by a file, M4) must not be taken for the parent of the entries after it, which
    get a new implied directory instead (M9)."""
    tree = merge(
        [d("a"), d("a/b"), f("a/b/c", b"old"), f("a/b", b"file"), f("a/b/d", b"new")],
    )
    assert paths(tree) == {"a", "a/b", "a/b/d"}
    assert stat.S_ISDIR(node(tree, "a/b").mode)
    assert node(tree, "a/b/d").size == 3


def test_m2_a_lower_directory_replaced_above_takes_later_entries_into_the_new_one() -> None:
    tree = merge(
        [d("x"), d("x/y"), f("x/y/old", b"1")],
        [f("x/y/first", b"2"), sym("x/y", "elsewhere"), f("x/y/again", b"3")],
    )
    assert paths(tree) == {"x", "x/y", "x/y/again"}


@pytest.mark.parametrize(
    "raw",
    [b"usr/lib/x", b"usr/lib/", b"./usr//lib/./x/", b"/abs/x", b"a/b/../c", b"a" * 255 + b"/b"],
)
def test_p1_split_path_gives_clean_components_by_either_path(raw: bytes) -> None:
    """The quick split of clean names and the careful one agree."""
    careful = [c for c in raw.split(b"/") if c not in (b"", b".")]
    resolved: list[bytes] = []
    for component in careful:
        if component == b"..":
            resolved.pop()
        else:
            resolved.append(component)
    assert split_path(raw) == tuple(resolved)


def test_p1_split_path_refuses_a_long_component_on_the_quick_path_too() -> None:
    with pytest.raises(MergeError, match="longer than 255"):
        split_path(b"usr/" + b"n" * 256)


def test_w5_a_directory_whited_out_above_is_not_the_parent_of_what_that_layer_adds() -> None:
    """The last parent walked to in one layer is forgotten before the next layer's entries:
    its whiteouts may have removed it (W5: what comes back, comes back without its old
    children)."""
    tree = merge([d("p"), f("p/q", b"1")], [wh("p"), f("p/r", b"2")])
    assert paths(tree) == {"p", "p/r"}
