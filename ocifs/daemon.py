"""The mount's daemon: attach a loaded image to the mount point, and serve it until unmounted.

Its one job is the life of a mount once the image is loaded: the FUSE mount options, libfuse's
messages turned into one-line errors, giving back the memory indexing used, the wider kernel
readahead, leaving the terminal (fork and setsid), the trio serve loop, SIGINT and SIGTERM, and
the clean unmount at the end. Where all that is logged is ``daemonlog``'s job; once the daemon
is in the background, file descriptors 1 and 2 point at its log file.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import trio

from .daemonlog import log_to_file
from .errors import OcifsError
from .fuse_ops import ImageOperations
from .image import Image
from .mountinfo import unescape_mount_path

logger = logging.getLogger(__name__)

READAHEAD_KIB = 1024
# glibc's mallopt. A fixed mmap threshold also stops glibc from raising it each time a mapped
# buffer is freed; raised, 256 KiB blocks and 1 MiB inputs come from the heaps of the threads'
# arenas instead (up to 8 per core), where what is freed stays: 90 of 190 MiB under load.
# Fewer arenas then keep less of what small objects leave free (8 MiB less, of 116, with 2).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 128 << 10  # glibc's default, fixed
TRIM_THRESHOLD = 1 << 20
ARENA_MAX = 2  # the GIL serializes most allocations anyway
# libfuse accepts these at mount time, then ends the session at the kernel's INIT: the daemon
# would be gone and the mount point dead.
UNSUPPORTED_OPTIONS = {"max_read"}
# What only root's mounts can have: for anyone else fusermount3 mounts nosuid,nodev whatever
# -o says, and says nothing.
ROOT_ONLY_OPTIONS = ("suid", "dev")


# --- mounting --------------------------------------------------------------------------------


def mount_options(image: str, extra: list[str]) -> set[str]:
    """ro and default_permissions always; fsname names the image when it can be an option.
    Asked for suid or dev by an ordinary user, says in one line that the mount will not be."""
    fsname = image if not any(c in image for c in ", \t\n\\") else "ocifs"
    options = {"ro", "default_permissions", f"fsname={fsname}", "subtype=ocifs"}
    for group in extra:
        options.update(option for option in group.split(",") if option)
    options.discard("rw")
    for option in options:
        if option.split("=", 1)[0] in UNSUPPORTED_OPTIONS:
            raise OcifsError(f"-o {option} is not supported by ocifs")
    asked = [option for option in ROOT_ONLY_OPTIONS if option in options]
    if asked and os.geteuid() != 0:
        logger.warning(
            "-o %s: only root can mount with %s; this mount is nosuid,nodev",
            ",".join(asked),
            " or ".join(asked),
        )
    return options


def attach(image: Image, mountpoint: Path, options: set[str], provenance: bool = False) -> None:
    """Mount ``image`` at ``mountpoint``, ready to be served; an OcifsError saying why not.
    ``provenance``: every inode shows the layer it comes from as an xattr (see fuse_ops)."""
    target = os.path.realpath(mountpoint)
    release_free_memory()
    with libfuse_messages() as messages:
        try:
            operations = ImageOperations(image, lambda: widen_readahead(target), provenance)
            pyfuse3.init(operations, str(mountpoint), options)
        except Exception as error:  # libfuse reports failures as RuntimeError or OSError
            failure: Exception | None = error
        else:
            failure = None
    if failure is not None:
        image.close()
        # libfuse says why on stderr and pyfuse3 only that it failed: one line with the why.
        reason = messages[-1].removeprefix("fuse: ") if messages else str(failure)
        raise OcifsError(f"cannot mount at {mountpoint}: {reason}") from failure
    for message in messages:
        logger.warning("%s", message)


def release_free_memory() -> None:
    """Give back to the system what indexing freed: the daemon lives long, the peak did not.

    glibc keeps freed heap memory for reuse; malloc_trim returns it. Elsewhere: nothing to do.
    Then big buffers (blocks, compressed input, reply data: 128 KiB and more) get mappings of
    their own from now on, so that freeing one gives it back at once, and the threads that
    serve the mount share two arenas (see MMAP_THRESHOLD).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)  # for arenas made from now on


@contextlib.contextmanager
def libfuse_messages() -> Iterator[list[str]]:
    """Collect what libfuse writes straight to file descriptor 2 while the block runs."""
    messages: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())


def widen_readahead(target: str) -> None:
    """Let the kernel read ahead 1 MiB on this mount instead of its default 128 KiB.

    The image never changes and a gzip layer is inflated a span at a time, so bigger and
    fewer read requests keep the inflating threads busy: about +25% for a cold sequential
    read. Only root may write the mount's readahead setting; others keep the default. The
    kernel sets it from the INIT reply, so this runs when the first file is opened.
    """
    # The device number comes from mountinfo, for the mount point resolved before mounting:
    # a stat (or realpath) of it now would wait for this very process, not serving yet.
    device = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if unescape_mount_path(fields[4]) == target:
                device = fields[2]  # major:minor; the last match is the newest mount
    if device is None:
        logger.info("kernel readahead left as it is: %s not in mountinfo", target)
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{READAHEAD_KIB}\n")
    except OSError as error:
        logger.info("kernel readahead left as it is: %s", error.strerror or error)


# --- serving ---------------------------------------------------------------------------------


def daemonize(log_fd: int | None, debug: bool) -> None:
    """Go on in a child that has left the terminal, logging to ``log_fd`` (or nowhere, if
    None); the parent exits once the child has left.

    The parent waits for the child's setsid: a terminal that closes as soon as ``ocifs mount``
    returns (``script``, ssh) would otherwise hang up the daemon along with itself.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ready, notify = os.pipe()
    if os.fork() != 0:
        os.close(notify)
        os.read(ready, 1)
        os._exit(0)
    os.close(ready)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if log_fd is None:
        log_fd = devnull
    else:
        os.close(devnull)
    log_to_file(log_fd, debug)
    os.write(notify, b"1")
    os.close(notify)


def serve(image: Image, mountpoint: Path) -> int:
    """Run the FUSE loop until unmounted or signalled; always unmount and close.

    Returns the exit status: 0, or 1 after an internal error, which is logged at CRITICAL
    with its traceback before the mount goes (a handler's bug only fails its request: see
    fuse_ops; this is what escapes the loop itself).
    """
    logger.info("serving %s at %s", image.resolved.describe(), mountpoint)
    status = 0
    try:
        trio.run(serve_until_stopped)
    except Exception:
        logger.critical(
            "internal error: the daemon stops and %s is unmounted", mountpoint, exc_info=True
        )
        status = 1
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            logger.debug("close after unmount", exc_info=True)
        image.close()
    logger.info("%s unmounted", mountpoint)
    return status


async def serve_until_stopped() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            logger.info("got %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
