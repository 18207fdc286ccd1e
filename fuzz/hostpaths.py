"""Did a case make ocifs touch a host path? Two checks, and what each can and cannot see.

Canaries: files that hold ``CANARY_TOKEN``, put where mutations aim (``/tmp/ocifs-fuzz-canary/
secret``, next to the layout in the case directory, and in the run directory). After every
case they must be as they were (content, size, mtime, inode, nothing added to the canary
directory), and the walker checks that no byte the mount serves holds the token. That catches
any host file *served or changed*, for every case, but not one merely opened or stat'ed.

strace: a share of the foreground mounts (and every one whose mutations aim out of the tree)
runs under ``strace -f -y -e trace=%file``, the daemon included. Every path a file syscall
names (resolved against its directory descriptor as ``-y`` prints it, or the working
directory; a descriptor's own path counts where it was opened) and every path a returned
descriptor is open on (the kernel's name for what was opened, after symlinks) must be inside
the case (the store, the cache, the log, the mount point, HOME, TMPDIR and the XDG
directories, all pointed into the case), be what Python and libfuse touch anyway (the
interpreter, its libraries, ``/proc``, ``/sys``, ``/dev/fuse``, ``/etc/ld.so.cache``..., and
every path ``ocifs --version`` names under strace: the ``baseline``), or be the case
directory or one above it (realpath). Anything naming the canary is flagged wherever it is.
A path reached through a symlink of the store (a symlinked blob) is told apart in the
report, and is a host path all the same: the layout directory is part of the image. One
reached through a symlink in the index cache is the known finding of cache files that are not
regular files. Limits: only the ocifs processes are
traced, not the kernel's side of the FUSE requests; the working directory is followed by
``chdir`` lines, not per process; background mounts are not traced (strace would outlive the
command); a name passed through a syscall outside ``%file`` (ocifs makes none) is missed; and
the system's trees (``/usr``, ``/proc``, ``/sys``...) are allowed as a whole, so an image
that made ocifs read, say, ``/proc/self/environ`` would be caught by neither check: the
canaries stand for host files in general, and the mutations aim at them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .mutations import CANARY_DIR, CANARY_NAME, CANARY_SECRET, CANARY_TOKEN

# Syscall -> the positions of its path arguments (0 is the first argument).
PATH_ARGS = {
    "open": [0],
    "openat": [1],
    "openat2": [1],
    "creat": [0],
    "stat": [0],
    "lstat": [0],
    "newfstatat": [1],
    "fstatat64": [1],
    "statx": [1],
    "access": [0],
    "faccessat": [1],
    "faccessat2": [1],
    "readlink": [0],
    "readlinkat": [1],
    "execve": [0],
    "execveat": [1],
    "mkdir": [0],
    "mkdirat": [1],
    "rename": [0, 1],
    "renameat": [1, 3],
    "renameat2": [1, 3],
    "unlink": [0],
    "unlinkat": [1],
    "rmdir": [0],
    "chdir": [0],
    "mount": [1],
    "umount2": [0],
    "symlink": [1],
    "symlinkat": [2],
    "link": [0, 1],
    "linkat": [1, 3],
    "chmod": [0],
    "fchmodat": [1],
    "chown": [0],
    "lchown": [0],
    "fchownat": [1],
    "truncate": [0],
    "utimensat": [1],
    "getxattr": [0],
    "lgetxattr": [0],
    "setxattr": [0],
    "lsetxattr": [0],
    "listxattr": [0],
    "llistxattr": [0],
    "removexattr": [0],
    "statfs": [0],
    "mknod": [0],
    "mknodat": [1],
    "inotify_add_watch": [1],
    "chroot": [0],
}
SYSTEM_FILES = {
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/localtime",
    "/etc/locale.alias",
    "/etc/ssl/openssl.cnf",
    "/etc/fuse.conf",
    "/etc/mtab",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/dev/fuse",
    "/dev/null",
    "/dev/urandom",
    "/dev/tty",
    "/",
}
SYSTEM_TREES = ["/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/proc/", "/sys/", "/etc/ssl/"]
UNNAMED_TMP = re.compile(r".*/#\d+ \(deleted\)")  # an O_TMPFILE file: judged by its directory
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?: resumed>|\()(.*)$")


def python_trees() -> list[str]:
    """Where the interpreter, its libraries and the ocifs checkout are."""
    import ocifs

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(ocifs.__file__).parent)}
    roots |= {str(Path(p).resolve()) for p in sys.path if p}
    roots |= {os.path.realpath(r) for r in roots}
    return sorted(r.rstrip("/") + "/" for r in roots if r not in ("", "/"))


@dataclass(frozen=True)
class Touch:
    """A path a traced syscall named or opened that no rule allows."""

    syscall: str
    path: str
    via: str  # "store" or "cache": reached through a symlink there; "" otherwise

    def describe(self) -> str:
        how = f" (through a symlink of the {self.via})" if self.via else ""
        return f"{self.syscall}: {self.path}{how}"


def split_args(text: str) -> list[str]:
    """The top-level arguments of a strace call, strings still quoted."""
    args, depth, current, quoted, escaped = [], 0, [], False, False
    for char in text:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            if depth == 0:
                args.append("".join(current).strip())
                return args
            depth -= 1
        elif char == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    args.append("".join(current).strip())
    return args


def unquote(arg: str) -> str | None:
    """A strace string argument as a path (its C escapes undone); None if it is not one."""
    match = re.match(r'^(?:(\d+|AT_FDCWD)(?:<([^>]*)>)?, )?"(.*)"(\.\.\.)?$', arg)
    if match is None:
        match = re.match(r'^"(.*)"(\.\.\.)?$', arg)
        if match is None:
            return None
        body = match.group(1)
    else:
        body = match.group(3)
    raw = re.sub(
        r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)",
        lambda m: _unescape(m.group(1)),
        body,
    )
    return raw


def _unescape(code: str) -> str:
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "v": "\v", "f": "\f"}
    if code in simple:
        return simple[code]
    if code[0] == "x":
        return chr(int(code[1:], 16))
    if code.isdigit():
        return chr(int(code, 8))
    return code


STRACE = ["strace", "-f", "-y", "-qq", "-s", "4096", "-e", "trace=%file", "-e", "signal=none"]


def baseline(ocifs: list[str], cwd: Path) -> frozenset[str]:
    """Every path ``ocifs --version`` names: what the interpreter and the imports touch
    (getpath's probes, the stdlib, site-packages), whatever the image is."""
    out = cwd / "baseline-strace.txt"
    subprocess.run([*STRACE, "-o", str(out), *ocifs, "--version"], capture_output=True, check=True)
    seen: set[str] = set()
    for line in out.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match is not None and f"<... {match.group(2)} resumed>" not in line:
            seen.update(asked_paths(match.group(2), match.group(3), str(cwd)))
    out.unlink()
    return frozenset(path for path in seen if CANARY_NAME not in path)


class Policy:
    """What one case may touch: its own files, the system's, and the ``baseline``."""

    def __init__(
        self,
        case_dir: Path,
        store: Path,
        cache: Path,
        allowed: list[Path],
        baseline: frozenset[str],
    ) -> None:
        self.case_dir = str(case_dir.resolve())
        self.store = str(store.resolve())
        self.cache = str(cache.resolve())
        self.allowed = [str(p.resolve()) for p in allowed]
        self.trees = python_trees()
        self.baseline = baseline

    def allows(self, path: str) -> bool:
        if CANARY_NAME in path:
            return False
        if path in SYSTEM_FILES or path in self.baseline:
            return True
        if self.case_dir == path or self.case_dir.startswith(path.rstrip("/") + "/"):
            return True  # the case directory, or one above it (realpath of the mount point)
        if path.startswith(self.store + ":"):
            return True  # LAYOUT:REF tried as a path first (a path may hold ':')
        inside = [self.store, *self.allowed, *self.trees, *SYSTEM_TREES]
        return any(
            path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/") for root in inside
        )

    def via(self, path: str) -> str:
        """ "store" or "cache" if ``path`` is in one of them: a symlink there led out."""
        for name, root in (("store", self.store), ("cache", self.cache)):
            if path == root or path.startswith(root + "/"):
                return name
        return ""


def asked_paths(syscall: str, rest: str, cwd: str) -> list[str]:
    """The paths a syscall's arguments name, made absolute."""
    args = split_args(rest)
    out = []
    for position in PATH_ARGS.get(syscall, []):
        path = unquote(args[position]) if position < len(args) else None
        if not path:  # None, or "" for the descriptor itself: its open was judged
            continue
        base = cwd
        dirfd = re.match(r"^\d+<([^>]*)>$", args[position - 1]) if position > 0 else None
        if dirfd is not None:
            base = dirfd.group(1)
        resolved = os.path.normpath(os.path.join(base, path))
        if resolved.startswith("/"):  # not a pipe, a socket, an anonymous inode
            out.append(resolved)
    return out


def check_trace(trace: str, policy: Policy, cwd: str) -> list[Touch]:
    """Every path in the strace output ``trace`` that ``policy`` does not allow; ``cwd`` is
    the traced command's working directory."""
    touches: dict[tuple[str, str], Touch] = {}
    pending: dict[str, list[str]] = {}  # pid -> what its unfinished call asked for
    for line in trace.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        pid, syscall, rest = match.groups()
        if f"<... {syscall} resumed>" in line:
            asked = pending.pop(pid, [])
        else:
            asked = asked_paths(syscall, rest, cwd)
            if line.rstrip().endswith("<unfinished ...>"):
                pending[pid] = asked
            for path in asked:
                if not policy.allows(path):
                    touches.setdefault((syscall, path), Touch(syscall, path, ""))
            if syscall == "chdir" and asked and " = 0" in line:
                cwd = asked[0]
        result = re.search(r"\) = \d+<([^>]*)>", line)
        if result is None or not result.group(1).startswith("/"):
            continue
        opened = result.group(1)
        named = opened.rsplit("/#", 1)[0] if UNNAMED_TMP.fullmatch(opened) else opened
        if policy.allows(named.removesuffix(" (deleted)")):
            continue
        via = policy.via(asked[0]) if asked else ""
        touches.setdefault((syscall, opened), Touch(syscall, opened, via))
    return list(touches.values())


# --- canaries ---------------------------------------------------------------------------------


def place_canary(path: Path) -> None:
    """A canary file at ``path`` (left as it is if one is there: runs share /tmp's)."""
    if path.is_file() and path.read_bytes() == CANARY_TOKEN:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(CANARY_TOKEN)
    os.replace(temporary, path)


def canary_state(paths: list[Path]) -> dict[str, tuple[int, int, int, bytes]]:
    """What each canary is now (size, mtime, inode, content), and what the canary directory
    holds besides its own files."""
    state = {}
    for path in paths:
        try:
            st = path.lstat()
            state[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino, path.read_bytes())
        except OSError:
            state[str(path)] = (-1, -1, -1, b"")
    names = sorted(p.name for p in CANARY_DIR.iterdir() if not p.name.startswith("."))
    state[str(CANARY_DIR)] = (len(names), 0, 0, "\n".join(names).encode())
    return state


def canary_paths(run_dir: Path, case_dir: Path) -> list[Path]:
    return [CANARY_SECRET, run_dir / CANARY_NAME, case_dir / CANARY_NAME]
