"""The command line: ``ocifs mount``, ``ocifs umount`` and ``ocifs index``.

``mount`` resolves and indexes the image in the foreground, or takes its index from the cache
(so every problem is reported as one line with a non-zero exit, before anything is attached),
mounts it, and then, unless ``-f`` was
given, leaves a daemon behind that serves the mount and returns. The daemon unmounts cleanly on
SIGINT or SIGTERM, and ends by itself when the mount is taken away with ``ocifs umount``.
``index`` builds the cached indexes of an image without mounting it, so a later mount is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyfuse3
import trio

from . import __version__
from .blockcache import BLOCK_CACHE_BYTES
from .errors import OcifsError
from .fuse_ops import ImageOperations
from .image import Image, LoadReport, load_image
from .indexcache import IndexCache, default_cache_dir
from .layout import Platform, resolve, split_image_arg
from .mountinfo import unescape_mount_path
from .progress import TerminalProgress

logger = logging.getLogger("ocifs")

FSTYPE = "fuse.ocifs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocifs", description="Mount an OCI image layout read-only with FUSE."
    )
    parser.add_argument("--version", action="version", version=f"ocifs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount an image",
        description="Mount the image LAYOUT[:REF|@DIGEST] read-only at MOUNTPOINT.",
    )
    mount.add_argument("image", metavar="LAYOUT[:REF|@DIGEST]")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    add_image_options(mount)
    mount.add_argument(
        "--read-cache",
        type=parse_size,
        default=BLOCK_CACHE_BYTES,
        metavar="SIZE",
        help="memory for decompressed data shared by all open files, such as 64M or 1G"
        f" (default {BLOCK_CACHE_BYTES >> 20}M)",
    )
    mount.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, logging to stderr"
    )
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="FUSE mount options, such as allow_other",
    )
    mount.add_argument("--debug", action="store_true", help="log every request")

    umount = commands.add_parser("umount", help="unmount an ocifs mount")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)

    index = commands.add_parser(
        "index",
        help="build an image's cached indexes without mounting it",
        description="Index every layer of LAYOUT[:REF|@DIGEST] into the cache, so that a"
        " later mount reads no layer blob.",
    )
    index.add_argument("image", metavar="LAYOUT[:REF|@DIGEST]")
    add_image_options(index)
    index.add_argument("--debug", action="store_true", help="log what is done")
    return parser


def add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="platform to choose from an image index (default: this machine's)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check layer digests and diff_ids (for layouts you trust)",
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"where layer indexes are kept (default {display_cache_dir()})",
    )
    cache.add_argument("--no-cache", action="store_true", help="keep the indexes in memory only")


def display_cache_dir() -> str:
    return str(default_cache_dir()).replace(os.path.expanduser("~"), "~", 1)


def parse_size(text: str) -> int:
    """A byte count such as 4096, 64K, 64M or 1G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in units else ""
    try:
        value = int(number[: len(number) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s" if debug else "ocifs: %(message)s",
    )
    try:
        if args.command == "mount":
            return mount(args)
        if args.command == "index":
            return index(args)
        return umount(args.mountpoint)
    except OcifsError as error:
        print(f"ocifs: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ocifs: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, unless debugging
        if debug:
            raise
        print(f"ocifs: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def open_image(args: argparse.Namespace, report: LoadReport) -> Image:
    """Resolve the image argument and load the image, through the cache unless told not to."""
    layout, ref, digest = split_image_arg(args.image)
    platform = Platform.parse(args.platform) if args.platform else None
    resolved = resolve(layout, ref, digest, platform)
    logger.info("resolved %s to manifest %s", args.image, resolved.manifest_digest)
    cache = None if args.no_cache else IndexCache(args.cache_dir or default_cache_dir())
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        return load_image(
            resolved,
            verify=not args.no_verify,
            progress=progress,
            cache=cache,
            block_cache_bytes=getattr(args, "read_cache", BLOCK_CACHE_BYTES),
            report=report,
        )
    finally:
        if progress is not None:
            progress.finish()


def index(args: argparse.Namespace) -> int:
    report = LoadReport()
    image = open_image(args, report)
    image.close()
    where = "memory only" if args.no_cache else str(args.cache_dir or default_cache_dir())
    print(
        f"ocifs: {args.image}: {len(image.resolved.layers)} layer(s),"
        f" {len(report.indexed)} indexed, {len(report.from_cache)} from the cache;"
        f" {len(image.tree):,} inodes; cache: {where}"
    )
    return 0


def mount(args: argparse.Namespace) -> int:
    mountpoint: Path = args.mountpoint
    if not mountpoint.is_dir():
        raise OcifsError(f"mountpoint {mountpoint} is not a directory")
    options = mount_options(args.image, args.options)  # a bad option fails before indexing
    target = os.path.realpath(mountpoint)
    image = open_image(args, LoadReport())

    release_free_memory()
    with libfuse_messages() as messages:
        try:
            operations = ImageOperations(image, lambda: widen_readahead(target))
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

    if not args.foreground:
        daemonize()
    serve(image)
    return 0


READAHEAD_KIB = 1024


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


def release_free_memory() -> None:
    """Give back to the system what indexing freed: the daemon lives long, the peak did not.

    glibc keeps freed heap memory for reuse; malloc_trim returns it. Elsewhere: nothing to do.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


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


def mount_options(image: str, extra: list[str]) -> set[str]:
    """ro and default_permissions always; fsname names the image when it can be an option."""
    fsname = image if not any(c in image for c in ", \t\n\\") else "ocifs"
    options = {"ro", "default_permissions", f"fsname={fsname}", "subtype=ocifs"}
    for group in extra:
        options.update(option for option in group.split(",") if option)
    options.discard("rw")
    for option in options:
        if option.split("=", 1)[0] in UNSUPPORTED_OPTIONS:
            # libfuse accepts it at mount time, then ends the session at the kernel's INIT:
            # the daemon would be gone and the mount point dead.
            raise OcifsError(f"-o {option} is not supported by ocifs")
    return options


UNSUPPORTED_OPTIONS = {"max_read"}


def daemonize() -> None:
    """Go on in a child that has left the terminal; the parent returns once it has.

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
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.write(notify, b"1")
    os.close(notify)


def serve(image: Image) -> None:
    """Run the FUSE loop until unmounted or signalled; always unmount and close."""
    try:
        trio.run(serve_until_stopped)
    except BaseException:
        logger.exception("the FUSE loop failed")
        raise
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            logger.debug("close after unmount", exc_info=True)
        image.close()


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


def umount(mountpoint: Path) -> int:
    target = os.path.realpath(mountpoint)
    fstypes = [
        fields[2]
        for fields in (line.split() for line in Path("/proc/self/mounts").read_text().splitlines())
        if unescape_mount_path(fields[1]) == target
    ]
    if not fstypes:
        raise OcifsError(f"{mountpoint} is not mounted")
    if fstypes[-1] != FSTYPE:
        raise OcifsError(f"{mountpoint} is not an ocifs mount (it is {fstypes[-1]})")
    result = subprocess.run(["fusermount3", "-u", target], capture_output=True, text=True)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1:] or ["fusermount3 failed"]
        raise OcifsError(f"cannot unmount {mountpoint}: {message[0]}")
    return 0
