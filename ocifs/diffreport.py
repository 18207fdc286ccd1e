"""How ``ocifs diff`` shows what ``imagediff`` found: lines like ``git diff --name-status``,
or one JSON document.

Text: one line a path, sorted by path (as bytes; the root, ``.``, first), ``STATUS<TAB>PATH``
with ``A`` for added, ``D`` for removed and ``M`` for changed, and for ``M`` a third field
saying which attributes changed: ``M<TAB>usr/bin/x<TAB>(content,mode)``. A path is quoted
the way git quotes one (``"..."`` with C escapes, a byte that is not UTF-8 as ``\\ooo``) when
it holds a control character, a double quote, a backslash or bytes that are not UTF-8;
otherwise it is written as it is (git's ``core.quotePath=false``).

JSON (``--json``): ``{"a", "b", "equal", "counts", "contents", "changes"}``; each change has
``status``, ``path``, ``changed`` (for ``M``) and the entry as each image has it (``a`` and/or
``b``: type, mode, uid, gid, and where they apply size, target, device, xattrs with their
values in hex, links, mtime_ns). Names are UTF-8; a byte that is not is carried as Python's
surrogateescape does (``\\udcXX`` in the JSON text).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .imagediff import CHANGED, Change, ImageDiff, type_name
from .tree import Inode

C_ESCAPES = {
    0x07: "\\a",
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0B: "\\v",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}


def quote_path(path: bytes) -> str:
    """A path for a line of text output: as it is, or quoted as git quotes it."""
    if not path:
        return "."
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not any(ord(char) < 0x20 or char in '"\\\x7f' for char in text):
        return text
    out = ['"']
    for char in path.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\{code - 0xDC00:03o}")
        elif code in C_ESCAPES:
            out.append(C_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def text_lines(diff: ImageDiff) -> list[str]:
    """The ``--name-status``-like lines, without their newlines."""
    lines = []
    for change in diff.changes:
        line = f"{change.status}\t{quote_path(change.path)}"
        if change.status == CHANGED:
            line += f"\t({','.join(change.changed)})"
        lines.append(line)
    return lines


def name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape") if raw else "."


def entry_document(node: Inode, links: dict[int, tuple[bytes, ...]]) -> dict[str, Any]:
    """One entry as the JSON shows it."""
    kind = stat.S_IFMT(node.mode)
    document: dict[str, Any] = {
        "type": type_name(node.mode),
        "mode": f"{stat.S_IMODE(node.mode):04o}",
        "uid": node.uid,
        "gid": node.gid,
    }
    if kind in (stat.S_IFREG, stat.S_IFLNK):
        document["size"] = node.size
    if kind == stat.S_IFLNK:
        document["target"] = name(node.target)
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        document["device"] = {"major": os.major(node.rdev), "minor": os.minor(node.rdev)}
    if node.xattrs:
        document["xattrs"] = {name(key): value.hex() for key, value in sorted(node.xattrs.items())}
    if node.ino in links:
        document["links"] = [name(path) for path in links[node.ino]]
    document["mtime_ns"] = node.mtime_ns
    return document


def change_document(change: Change, diff: ImageDiff) -> dict[str, Any]:
    document: dict[str, Any] = {"status": change.status, "path": name(change.path)}
    if change.status == CHANGED:
        document["changed"] = list(change.changed)
    if change.a is not None:
        document["a"] = entry_document(change.a, diff.links_a)
    if change.b is not None:
        document["b"] = entry_document(change.b, diff.links_b)
    return document


def json_document(diff: ImageDiff, a: str, b: str) -> dict[str, Any]:
    """The ``--json`` document; ``a`` and ``b`` are the images as the user named them."""
    stats = diff.stats
    return {
        "a": a,
        "b": b,
        "equal": diff.equal,
        "counts": diff.counts(),
        "contents": {
            "equal_by_place": stats.same_place,
            "compared": stats.compared,
            "differed": stats.differed,
            "bytes_read": stats.bytes_read,
        },
        "changes": [change_document(change, diff) for change in diff.changes],
    }


def json_text(diff: ImageDiff, a: str, b: str) -> str:
    return json.dumps(json_document(diff, a, b), indent=1)
