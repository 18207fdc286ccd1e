"""The command line: parses ``ocifs mount``, ``ocifs umount``, ``ocifs index``, ``ocifs
inspect`` (``inspectview``) and ``ocifs diff`` and runs them.

``mount`` resolves and indexes the image in the foreground, or takes its index from the cache
(so every problem is reported as one line with a non-zero exit, before anything is attached),
then hands it to ``daemon``, which mounts it and, unless ``-f`` was given, leaves a daemon
behind that serves the mount (logging to a file) and returns. ``umount`` takes an ocifs mount
away, which ends its daemon. ``index`` builds the cached indexes of an image without mounting
it, so a later mount is quick. ``diff`` loads two images the way ``mount`` does and says
what differs between them (``imagediff``, ``diffreport``), exiting like diff(1): 0 if they
are equal, 1 if they differ, 2 on trouble.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, daemonlog, inspectview
from .apart import ChildFailed, run_apart
from .blockcache import BLOCK_CACHE_BYTES
from .errors import OcifsError, show
from .image import Image, LoadReport, load_image, tree_is_cached
from .imagearg import resolve_arg
from .indexcache import IndexCache, default_cache_dir
from .layout import Platform, ResolvedImage
from .mountinfo import unescape_mount_path
from .progress import TerminalProgress
from .views import WHOLE_IMAGE, View, choose_layer

logger = logging.getLogger(__name__)

FSTYPE = "fuse.ocifs"
OCIFS_OPTIONS = {"provenance"}  # -o options ocifs takes itself, never handed to libfuse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocifs",
        description="Mount an OCI image layout or an image archive read-only with FUSE.",
        epilog="LAYOUT is an OCI image layout directory or an image archive (docker save,"
        " podman save, oci-archive; plain or gzipped). REF: the image's ref name or tag.",
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
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground, logging to stderr (unless --log-file)",
    )
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options: FUSE's, such as allow_other, and ocifs's own: provenance"
        " (every entry shows the layer it comes from in the xattr user.ocifs.layer)",
    )
    view = mount.add_mutually_exclusive_group()
    view.add_argument(
        "--upto",
        metavar="N",
        help="mount the image as of layer N: layers 0 (the bottom one) to N merged; N may be"
        " negative (-1 is the top layer) or the start of a layer digest (sha256:3f2a)",
    )
    view.add_argument(
        "--layer",
        metavar="N",
        help="mount layer N on its own, as its tar holds it, whiteouts as overlayfs shows them"
        " (a 0/0 character device, an opaque directory's trusted.overlay.opaque=y)",
    )
    mount.add_argument(
        "--log-file",
        type=Path,
        metavar="PATH",
        help="where the daemon logs (default: a file named after the mount point in"
        f" {display_home(daemonlog.default_state_dir())}; with -f, stderr)",
    )
    mount.add_argument(
        "--debug", action="store_true", help="log every request, and say where the log is"
    )

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

    inspect = commands.add_parser(
        "inspect",
        help="show an image's refs, platforms, config and layers",
        description="Show what LAYOUT holds and, for the image LAYOUT[:REF|@DIGEST], its"
        " manifest, config and layers (indexing into the cache the layers it lacks).",
    )
    inspect.add_argument("image", metavar="LAYOUT[:REF|@DIGEST]")
    add_image_options(inspect)
    inspectview.add_arguments(inspect)
    inspect.add_argument("--debug", action="store_true", help="log what is done")

    diff = commands.add_parser(
        "diff",
        help="say what differs between two images",
        description="Compare the images A and B (each LAYOUT[:REF|@DIGEST]) entry by entry:"
        " one line per path added (A), removed (D) or changed (M, with what changed), like"
        " git diff --name-status. Contents are compared by their bytes, but files that come"
        " from the same place of the same layer are equal without reading them. Exit status:"
        " 0 if the images are equal, 1 if they differ, 2 on trouble.",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true", help="write one JSON document instead")
    diff.add_argument(
        "--mtime", action="store_true", help="compare modification times too (default: not)"
    )
    add_image_options(diff)
    diff.add_argument("--debug", action="store_true", help="log what is done")
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
        help=f"where layer indexes are kept (default {display_home(default_cache_dir())})",
    )
    cache.add_argument("--no-cache", action="store_true", help="keep the indexes in memory only")


def display_home(path: Path) -> str:
    """``path`` as help texts show it: the home directory as ``~``."""
    return str(path).replace(os.path.expanduser("~"), "~", 1)


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZE_MAX = 1 << 62  # more than any machine has; and int() of a long digit string is an error


def parse_size(text: str) -> int:
    """A byte count such as 4096, 64K, 64M or 1G (powers of 1024; KiB, MB and the like too);
    argparse shows the error under its usage lines."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    digits = number[: len(number) - len(unit)]
    if not digits.isdigit() or not digits.isascii():  # no sign, no fraction, no spaces inside
        raise argparse.ArgumentTypeError(
            f"invalid size {show(text)}: expected a number of bytes with an optional"
            " K, M or G suffix (powers of 1024), like 64M"
        )
    if len(digits.lstrip("0")) > 19 or int(digits) * SIZE_UNITS[unit] > SIZE_MAX:
        raise argparse.ArgumentTypeError(f"invalid size {show(text)}: over {SIZE_MAX >> 60} EiB")
    return int(digits) * SIZE_UNITS[unit]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemonlog.log_to_terminal(bool(getattr(args, "debug", False)))
    return reporting(args, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.command == "mount":
        return mount(args)
    if args.command == "index":
        return index(args)
    if args.command == "inspect":
        return inspectview.run(args)
    if args.command == "diff":
        return compare(args)
    return umount(args.mountpoint)


def reporting(args: argparse.Namespace, work: Callable[[], int]) -> int:
    """The exit status of ``work``, each failure said in one line (a traceback only for a
    bug, and only with --debug)."""
    debug = bool(getattr(args, "debug", False))
    failure = 2 if args.command == "diff" else 1  # diff(1)'s: 1 says "they differ"
    try:
        return work()
    except ChildFailed as failed:  # the indexing process has said why
        return failed.status
    except OcifsError as error:
        print(f"ocifs: error: {error}", file=sys.stderr)
        return failure
    except KeyboardInterrupt:
        print("ocifs: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, unless debugging
        if debug:
            raise
        print(f"ocifs: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return failure


def open_image(args: argparse.Namespace, report: LoadReport, apart: bool = False) -> Image:
    """Resolve the image argument and load the image, through the cache unless told not to
    (an archive's member table, the layers' indexes, the merged tree). ``apart``: what the
    cache lacks is indexed in a child process, and the image loaded from the cache (see
    ``apart``), so that this process never holds the indexing pass's memory."""
    platform = Platform.parse(args.platform) if args.platform else None
    cache = None if args.no_cache else IndexCache(args.cache_dir or default_cache_dir())
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        archive_progress = progress.archive if progress is not None else None
        resolved = resolve_arg(args.image, platform, cache, archive_progress)
        logger.info("resolved %s to %s", args.image, resolved.describe())
        if progress is not None:
            progress.finish()
        view = chosen_view(args, resolved)

        def load() -> Image:
            return load_image(
                resolved,
                verify=not args.no_verify,
                progress=progress,
                cache=cache,
                block_cache_bytes=getattr(args, "read_cache", BLOCK_CACHE_BYTES),
                report=report,
                view=view,
            )

        if apart and cache is not None and not tree_is_cached(resolved, view, cache):
            run_apart(lambda: reporting(args, lambda: index_only(load, progress)))
        return load()
    finally:
        if progress is not None:
            progress.finish()


def chosen_view(args: argparse.Namespace, resolved: ResolvedImage) -> View:
    """What ``--upto`` or ``--layer`` asks to see of ``resolved``; the whole image if neither."""
    upto, layer = getattr(args, "upto", None), getattr(args, "layer", None)
    if upto is not None:
        return View("upto", choose_layer("--upto", upto, resolved.layers))
    if layer is not None:
        return View("layer", choose_layer("--layer", layer, resolved.layers))
    return WHOLE_IMAGE


def ocifs_options(groups: list[str]) -> tuple[list[str], set[str]]:
    """Split ``-o`` groups into what goes to libfuse and ocifs's own options."""
    fuse: list[str] = []
    own: set[str] = set()
    for group in groups:
        options = [option for option in group.split(",") if option]
        own.update(option for option in options if option in OCIFS_OPTIONS)
        fuse.append(",".join(option for option in options if option not in OCIFS_OPTIONS))
    return fuse, own


def index_only(load: Callable[[], Image], progress: TerminalProgress | None) -> int:
    """The indexing child's work (``open_image``): load, which fills the cache, and close."""
    try:
        load().close()
    finally:
        if progress is not None:
            progress.finish()
    return 0


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


def compare(args: argparse.Namespace) -> int:
    """``ocifs diff A B``: load both (the second finds the layers they share in the cache),
    compare, print; 0 if equal, 1 if not."""
    from .diffreport import json_text, text_lines  # imported by this command alone
    from .imagediff import diff_images

    images: list[Image] = []
    try:
        for arg in (args.a, args.b):
            images.append(
                open_image(argparse.Namespace(**{**vars(args), "image": arg}), LoadReport())
            )
        result = diff_images(images[0], images[1], mtime=args.mtime)
    finally:
        for image in images:
            image.close()
    if args.json:
        text = json_text(result, args.a, args.b) + "\n"
    else:
        text = "".join(f"{line}\n" for line in text_lines(result))
    try:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    except BrokenPipeError:  # diff | head: what was wanted was read
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if result.equal else 1


def mount(args: argparse.Namespace) -> int:
    """Check what can be checked, load the image, mount it and serve it (see daemon)."""
    from . import daemon  # pyfuse3 and trio: only a mount needs them (150 ms to import)

    mountpoint: Path = args.mountpoint
    if not mountpoint.is_dir():
        raise OcifsError(f"mountpoint {mountpoint} is not a directory")
    fuse_options, own = ocifs_options(args.options)
    options = daemon.mount_options(args.image, fuse_options)  # a bad one fails before indexing
    log = daemonlog.open_log(args.log_file, os.path.realpath(mountpoint), args.foreground)
    if log is not None:
        logger.info("the daemon logs to %s", log.path)
    image = open_image(args, LoadReport(), apart=True)
    daemon.attach(image, mountpoint, options, provenance="provenance" in own)
    if not args.foreground:
        daemon.daemonize(None if log is None else log.fd, args.debug)
    elif log is not None:
        daemonlog.log_to_file(log.fd, args.debug)
    return daemon.serve(image, mountpoint)


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
