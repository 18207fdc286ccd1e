"""The daemon's log: on the terminal while the command runs (and with ``-f``), then in a file,
because a daemon's stderr is seen by no one.

The log file is ``--log-file`` or one per mount point under ``$XDG_STATE_HOME/ocifs`` (else
the cache directory). Kept apart from ``daemon`` so that the commands that never mount
(``index``, ``inspect``, ``diff``) log the same way without importing pyfuse3 and trio
(150 of the 240 ms that importing the command line took).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import hashlib
import logging
import os
import re
import stat
import sys
from pathlib import Path
from typing import NamedTuple

from .errors import OcifsError
from .indexcache import default_cache_dir
from .xdg import ocifs_dir

logger = logging.getLogger(__name__)

TERMINAL_FORMAT = "ocifs: %(message)s"
DEBUG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
# The file outlives many mounts of the same mount point: each line says when and which daemon.
FILE_FORMAT = "%(asctime)s ocifs[%(process)d] %(levelname)s %(name)s: %(message)s"
LOG_FILE_MODE = 0o600  # the log names files of the image, which may be private
LOG_NAME_MAX = 100  # characters of the mount point kept in a log file's name
EXACT_COMPONENT = re.compile(r"[A-Za-z0-9._]+")
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def log_to_terminal(debug: bool) -> None:
    """Log to stderr: warnings and errors as ``ocifs: ...`` lines, or everything with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format=DEBUG_FORMAT if debug else TERMINAL_FORMAT,
        force=True,
    )


def log_to_file(log_fd: int, debug: bool) -> None:
    """Send file descriptors 1 and 2, and with them the log, to the open file ``log_fd``
    (which is closed: 1 and 2 keep it open)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(
        stream=sys.stderr,  # now the log file
        level=logging.DEBUG if debug else logging.WARNING,
        format=FILE_FORMAT,
        force=True,
    )
    # A crash in C code (a segfault in libfuse, zlib through ctypes) leaves its traceback there.
    faulthandler.enable(sys.stderr)


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/ocifs``, ``~/.local/state/ocifs`` by default (as the XDG spec says)."""
    return ocifs_dir("XDG_STATE_HOME", os.path.join(".local", "state"))


def log_file_name(target: str) -> str:
    """The name of the default log file for a mount at ``target``, the mount point's real path.

    Its components joined with '-': ``/mnt/img`` gives ``mnt-img.log``. Where that is not a
    faithful copy of the path (a '-' or another character outside ``[A-Za-z0-9._]`` in a
    component, the root, a path longer than LOG_NAME_MAX), the name is made safe, shortened
    to its end (the telling part) and given a hash of the whole path, so that two mount points
    never share a log. Only the mount point chooses the name, nothing from the image.
    """
    components = [component for component in target.split("/") if component]
    readable = "-".join(UNSAFE_CHARACTERS.sub("_", component) for component in components)
    exact = (
        all(EXACT_COMPONENT.fullmatch(component) for component in components)
        and 0 < len(readable) <= LOG_NAME_MAX
        and not readable.startswith(".")  # a hidden file would be easy to miss
    )
    if exact:
        return f"{readable}.log"
    digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:12]
    shortened = readable[-LOG_NAME_MAX:].lstrip("-.") or "root"
    return f"{shortened}-{digest}.log"


class LogFile(NamedTuple):
    """The daemon's log file, opened before anything is mounted."""

    path: Path
    fd: int


def open_log_file(path: Path, own: bool = False) -> int:
    """The file descriptor of ``path`` opened for appending (created 0600 if missing). The
    open never waits: a FIFO no one reads is an error (ENXIO), not a hang. ``own``: the
    default log, which must be a regular file of this user's (not a symlink, not a FIFO or a
    directory put in its place); a ``--log-file`` may be anything that opens (/dev/null)."""
    if own:
        with contextlib.suppress(FileNotFoundError):
            found = os.lstat(path)
            if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                raise OSError(errno.EPERM, "not a regular file of this user's")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if own:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, LOG_FILE_MODE)
    except OSError as error:
        if error.errno == errno.ENXIO:  # the one way O_NONBLOCK makes an open fail
            raise OSError(errno.ENXIO, "a FIFO that no one reads") from None
        raise
    try:
        found = os.fstat(fd)
        if own and (not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid()):
            raise OSError(errno.EPERM, "not a regular file of this user's")
        os.set_blocking(fd, True)  # log lines wait for a slow reader rather than get lost
    except OSError:
        os.close(fd)
        raise
    return fd


def open_default_log(target: str) -> LogFile | None:
    """The default log file of the mount at ``target``, opened: in the state directory, else
    in the cache directory; None (with a warning) if neither can be written."""
    name = log_file_name(target)
    reasons = []
    for directory in (default_state_dir(), default_cache_dir()):
        path = directory / name
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return LogFile(path, open_log_file(path, own=True))
        except OSError as error:
            reasons.append(f"{path}: {error.strerror or error}")
            logger.info("the daemon cannot log to %s", reasons[-1])
    logger.warning("the daemon will log nowhere: cannot write %s", "; ".join(reasons))
    return None


def open_log(requested: Path | None, target: str, foreground: bool) -> LogFile | None:
    """The daemon's log file: ``--log-file`` if given (an error if it cannot be opened), none
    in the foreground (it logs to the terminal), else the default one for the mount point."""
    if requested is not None:
        try:
            return LogFile(requested, open_log_file(requested))
        except OSError as error:
            raise OcifsError(f"cannot open log file {requested}: {error.strerror}") from None
    if foreground:
        return None
    return open_default_log(target)
