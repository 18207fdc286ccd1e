"""Classify a case's outcome: one primary class, and every class its observations show.

The classes, most severe first (``SEVERITY``):

* ``fuzzer-error``: the fuzzer itself failed on the case (its bug, kept like any other).
* ``host-path``: a host path outside the case was named or opened by ocifs (strace), a
  canary changed, or a canary's bytes came out of the mount. One reached through a symlink of
  the store (a symlinked blob, ``blobs`` or ``index.json`` leading out of the layout) counts
  here too: the layout directory is part of the image, and ocifs refuses such a link before it
  looks at anything outside (``ocifs.beneath``); that it used to open and hash the target
  first, then refuse it on its digest, is what this class caught.
* ``wrong-bytes``: a read gave bytes that are in no layer stream, a pread disagreed with the
  full read, a read was short, or a symlink's length is not its st_size.
* ``wrong-tree``: no layer stream was changed, yet the mount is none of the seed's trees.
* ``unverified-mount``: a verifying mount succeeded though a blob is named by a digest it no
  longer has.
* ``crash``: a process died of a signal, or Python's fault handler wrote a fatal error.
* ``stale``: the mount stayed after ``fusermount3 -u``, the daemon did not exit, or the
  daemon was gone while the mount remained (ENOTCONN).
* ``hang``: ``ocifs index``, ``ocifs mount``, the walk or the unmount did not finish in time.
* ``traceback``: a Python traceback (on stderr or in the daemon's log) or an "internal error"
  line that no known finding below explains.
* ``read-eio``: a read failed with EIO on a mount whose every layer was indexed and verified.
* ``walk-error``: any other error the walk met (lstat, readdir, open, readlink).
* ``messy-refusal``: ``ocifs mount`` failed without one clean ``ocifs: error:`` line.

Then the findings already known (issue 11; their fixes are under way), each told by its own
signature so that it is counted apart from the unknown ones (``KNOWN``), and last the clean
outcomes: ``no-verify-unchecked`` (a
``--no-verify`` mount of a store changed after its digests were taken, by an archive, file or
live mutation or with digests left stale, served bytes that are not the image's: what the option
says it does not check), ``refused`` (non-zero exit, one
line, no traceback; an argparse usage block for a bad option counts too) and ``mounted`` (the
walk found nothing wrong, the daemon exited 0, the mount went away).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .build import Built
from .mutations import SERVED_MEANS
from .runner import CaseSpec, Observation

MESSAGE_MAX = 1000  # characters: a longer error line quotes too much
SEVERITY = [
    "fuzzer-error",  # the fuzzer's own bug, not ocifs's: the case could not be run
    "host-path",
    "wrong-bytes",
    "wrong-tree",
    "unverified-mount",
    "crash",
    "stale",
    "hang",
    "traceback",
    "read-eio",
    "walk-error",
    "messy-refusal",
]
KNOWN = {
    "cache-not-regular": "a fifo or symlink in place of an index-cache file is opened as it is:"
    " a fifo blocks open(), a symlink is followed",
    "device-number-range": "device numbers Linux cannot carry are accepted, then fail (EIO)",
    "xattr-kernel-rejects": "xattrs the kernel rejects are served and fail later",
    "path-over-path-max": "a path longer than PATH_MAX (4,096 bytes) is accepted",
    "long-message": f"an error line over {MESSAGE_MAX} characters (names quoted in full)",
    "size-option-message": "a bad --read-cache value's line does not say what a size looks like",
    "live-damage-served": "a blob overwritten under a live mount: reads give wrong bytes, no EIO",
}
CLEAN = ["no-verify-unchecked", "refused", "mounted"]
ORDER = [*SEVERITY, *KNOWN, *CLEAN]
XATTR_ERRORS = re.compile(
    r"^(listxattr|getxattr .*): (EIO|ERANGE|E2BIG|EINVAL|ENODATA|EOPNOTSUPP|ENOTSUP)$"
)
TRACEBACK = re.compile(r"Traceback \(most recent call last\):")


@dataclass
class Outcome:
    primary: str
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> reasons

    def to_json(self) -> dict[str, Any]:
        return {"primary": self.primary, "classes": self.classes}


def log_records(log: str) -> list[str]:
    """The log's records: each starts at a line with the timestamp, tracebacks included."""
    records: list[str] = []
    for line in log.splitlines():
        if re.match(r"^\d{4}-\d\d-\d\d ", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def explain_traceback(record: str) -> str | None:
    """The known finding a logged traceback belongs to, if any."""
    handler = re.search(r"ocifs\.fuse_ops: (\w+) failed", record)
    name = handler.group(1) if handler else ""
    if name in ("listxattr", "getxattr"):
        return "xattr-kernel-rejects"
    if name in ("getattr", "lookup", "readdir") and re.search(r"rdev|Overflow", record):
        return "device-number-range"
    return None


class Classifier:
    def __init__(self, spec: CaseSpec, built: Built, observation: Observation) -> None:
        self.spec = spec
        self.built = built
        self.obs = observation
        self.classes: dict[str, list[str]] = {}
        self.live = any(p.stage == "live" for p in spec.plan)  # a blob damaged under the mount
        # --no-verify, and the store changed after its digests were taken: nothing checks it.
        after = {"archive-tar", "archive-gz", "files", "live"} & {p.stage for p in spec.plan}
        self.unchecked = "--no-verify" in observation.command and bool(after or built.stale)

    def add(self, name: str, reason: str) -> None:
        if self.unchecked and name in ("wrong-bytes", "wrong-tree", "live-damage-served"):
            name = "no-verify-unchecked"
        self.classes.setdefault(name, []).append(reason[:500])

    def outcome(self) -> Outcome:
        self.host_paths()
        if self.obs.hang:
            self.hang()
        for reason in self.obs.stale:
            self.add("stale", reason)
        self.tracebacks()
        if self.obs.mounted:
            self.mount()
        elif not self.obs.hang:
            self.refusal()
        for name in ORDER:
            if name in self.classes:
                return Outcome(name, self.classes)
        raise AssertionError("no class")  # refusal() or mount() always adds one

    def host_paths(self) -> None:
        for touch in self.obs.touches:
            name = "cache-not-regular" if touch.via == "cache" else "host-path"
            self.add(name, touch.describe())
        for path in self.obs.canary_changed:
            self.add("host-path", f"canary {path} changed")

    def hang(self) -> None:
        detail = self.obs.hang_detail
        where = f"{self.obs.hang}: {detail} {self.obs.walk_tail}".strip()
        cache_fifo = "wait_for_partner" in detail or "fifo_open" in detail
        if self.obs.hang == "mount" and cache_fifo and "fifo" in self.obs.cache_note:
            self.add("cache-not-regular", where)
        else:
            self.add("hang", where)

    def tracebacks(self) -> None:
        stderr = self.obs.stderr
        signalled = (self.obs.exit_code or 0) < 0 and not self.obs.killed
        if "Fatal Python error" in stderr + self.obs.log or signalled:
            self.add("crash", f"exit {self.obs.exit_code}: {last_lines(stderr + self.obs.log)}")
        if TRACEBACK.search(stderr) or "ocifs: internal error:" in stderr:
            self.add("traceback", f"stderr: {last_lines(stderr)}")
        for record in log_records(self.obs.log):
            if TRACEBACK.search(record) or " CRITICAL " in record:
                known = explain_traceback(record)
                self.add(known or "traceback", f"log: {last_lines(record)}")

    def refusal(self) -> None:
        lines = [line for line in self.obs.stderr.splitlines() if line.strip()]
        code = self.obs.exit_code
        if code == 0:
            self.add("messy-refusal", f"exit 0 and nothing mounted: {last_lines(self.obs.stderr)}")
            return
        if (
            lines
            and lines[0].startswith("usage: ")
            and lines[-1].startswith("ocifs mount: error: ")
        ):
            line = lines[-1]
            if "--read-cache" in line and not re.search(r"\d+[KMG]\b", line):
                self.add("size-option-message", line)
            else:
                self.add("refused", line)
            return
        errors = [line for line in lines if line.startswith("ocifs: error: ")]
        if not lines or len(errors) != 1 or not lines[-1].startswith("ocifs: error: "):
            self.add(
                "messy-refusal", f"exit {code}, {len(lines)} lines: {last_lines(self.obs.stderr)}"
            )
            return
        others = [line for line in lines[:-1] if not line.startswith("ocifs: ")]
        if others:
            self.add("messy-refusal", f"exit {code}, other lines: {others[0][:200]}")
            return
        if len(lines[-1]) > MESSAGE_MAX:
            self.add(
                "long-message",
                f"{len(lines[-1])} characters: {lines[-1][:150]}...{lines[-1][-100:]}",
            )
            return
        self.add("refused", lines[-1])

    def mount(self) -> None:
        obs = self.obs
        verifying = "--no-verify" not in obs.command
        # The image mounted: the host's, unless --platform chose the other one of index2.
        image = 1 if self.spec.image == "index2" and "linux/riscv64" in obs.command else 0
        if image in self.built.stale and verifying:
            self.add(
                "unverified-mount",
                f"a blob of image {image} no longer has the digest that names it",
            )
        if obs.exit_code not in (0, None):
            self.add(
                "traceback" if obs.exit_code == 1 else "crash", f"the daemon exited {obs.exit_code}"
            )
        for record in log_records(obs.log):
            if " ERROR ocifs.fuse_ops: EIO: read of " in record and not self.live:
                self.add("read-eio", record.split(": ", 1)[-1])
        walk = obs.walk
        if walk is not None:
            self.walk_problems(walk)
            for path, entry in walk["entries"].items():
                name = path.rsplit("/", 1)[-1]
                if name in SERVED_MEANS:
                    self.add(SERVED_MEANS[name], f"{path!r} is served: {entry}")
            if self.built.trees and not self.classes.keys() - {
                "mounted",
                "live-damage-served",
                "no-verify-unchecked",
            }:
                failed = {
                    p["path"] for p in walk["problems"] if p["detail"].startswith(("read", "pread"))
                }
                self.compare_tree(walk["entries"], failed)
        if not self.classes:
            self.add("mounted", f"{len((walk or {}).get('entries', {}))} entries")

    def walk_problems(self, walk: dict[str, Any]) -> None:
        for problem in walk["problems"]:
            kind, path, detail = problem["kind"], problem["path"], problem["detail"]
            where = f"{path[-200:]!r}: {detail}"
            if kind == "leak":
                self.add("host-path", where)
            elif kind in ("wrong-bytes", "short-read", "inconsistent"):
                self.add("live-damage-served" if self.live else "wrong-bytes", where)
            elif kind == "long-path":
                self.add("path-over-path-max", where)
            elif kind == "errno" and "ENOTCONN" in detail:
                self.add("stale", f"the daemon was gone: {where}")
            elif kind == "errno" and XATTR_ERRORS.match(detail):
                self.add("xattr-kernel-rejects", where)
            elif kind == "errno" and detail.startswith(("read", "pread")) and "EIO" in detail:
                if not self.live:  # EIO is what a read of damaged bytes must give (V1)
                    self.add("read-eio", where)
            elif (
                kind == "errno"
                and detail.startswith("lstat")
                and "device-number-range" in self.classes
            ):
                self.add("device-number-range", where)
            elif kind != "deep":
                self.add("walk-error", where)

    def compare_tree(self, entries: dict[str, dict[str, Any]], failed_reads: set[str]) -> None:
        best: list[str] | None = None
        for tree in self.built.trees:
            differences = tree_differences(tree, entries)
            if self.live:  # damaged files may fail to read (EIO), and that is right
                differences = [d for d in differences if d.split("\x00")[0] not in failed_reads]
            if not differences:
                return
            if best is None or len(differences) < len(best):
                best = differences
        contents = all(d.split("\x00")[1].startswith("sha256") for d in best or [])
        name = "live-damage-served" if self.live and contents else "wrong-tree"
        self.add(name, "; ".join(d.replace("\x00", " ") for d in (best or [])[:5]))


def tree_differences(
    expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]
) -> list[str]:
    """What differs, each as PATH NUL WHAT (the path first, so it can be picked out)."""
    out = []
    for path in sorted(expected.keys() | got.keys()):
        want, have = expected.get(path), got.get(path)
        if want is None:
            out.append(f"{path}\x00not expected")
        elif have is None:
            out.append(f"{path}\x00missing")
        else:
            for key in sorted(want.keys() | have.keys()):
                if key == "mtime" and path == "":
                    continue
                if want.get(key) != have.get(key):
                    out.append(f"{path}\x00{key}: want {want.get(key)!r}, got {have.get(key)!r}")
    return out


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:])[:400]


def classify(spec: CaseSpec, built: Built, observation: Observation) -> Outcome:
    return Classifier(spec, built, observation).outcome()
