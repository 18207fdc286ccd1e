"""``ocifs inspect`` on the screen and for scripts: an ``inspect.Inspection`` as a readable
table, or as JSON of a fixed, documented shape (README, "Looking inside an image").

The JSON (``to_json``) carries every number exactly (bytes, counts) and every name in
full; text from the image that is not UTF-8 (an entry path) is given with its odd bytes
as ``\\xNN``. The table (``render``) rounds sizes to kB/MB/GB (powers of 1000), shortens
digests to 12 hex digits, escapes control characters in whatever the image says, and on a
terminal cuts a long ``created_by`` to fit the width.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import OcifsError
from .indexcache import IndexCache, default_cache_dir
from .layout import Platform
from .progress import TerminalProgress

if TYPE_CHECKING:  # every command builds the parser, which needs only add_arguments
    from .accounting import Accounting
    from .inspect import CatalogEntry, ImageInfo, Inspection

logger = logging.getLogger(__name__)

JSON_VERSION = 1  # "ocifs_inspect" in the JSON: raised when a field changes meaning or goes


# --- JSON -----------------------------------------------------------------------------------


def path_text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def catalog_json(entry: CatalogEntry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "digest": entry.digest,
        "names": list(entry.names),
        "media_type": entry.media_type,
        "platform": entry.platform,
        "chosen": entry.chosen,
        "error": entry.error,
        "manifests": [catalog_json(child) for child in entry.children],
    }


def image_json(image: ImageInfo) -> dict[str, Any]:
    return {
        "manifest_digest": image.manifest_digest,
        "manifest_media_type": image.manifest_media_type,
        "config_digest": image.config_digest,
        "created": image.created,
        "os": image.os,
        "architecture": image.architecture,
        "variant": image.variant,
        "platform": image.platform,
        "entrypoint": image.entrypoint,
        "cmd": image.cmd,
        "env": image.env,
        "working_dir": image.working_dir,
        "user": image.user,
        "labels": image.labels,
        "history": [
            {
                "created": step.created,
                "created_by": step.created_by,
                "comment": step.comment,
                "author": step.author,
                "empty_layer": step.empty_layer,
                "layer": step.layer,
            }
            for step in image.history
        ],
        "layers": [
            {
                "position": row.position,
                "digest": row.digest,
                "diff_id": row.diff_id,
                "media_type": row.media_type,
                "compressed_size": row.compressed_size,
                "uncompressed_size": row.uncompressed_size,
                "entries": row.entries,
                "created_by": row.created_by,
                "history": row.history,
            }
            for row in image.layers
        ],
    }


def accounting_json(accounting: Accounting) -> dict[str, Any]:
    return {
        "efficiency": accounting.efficiency,
        "total_bytes": accounting.total_bytes,
        "wasted_bytes": accounting.wasted_bytes,
        "hidden_files": accounting.hidden_files,
        "layers": [
            {
                "position": layer.position,
                "added": layer.added,
                "modified": layer.modified,
                "deleted": layer.deleted,
                "bytes_added": layer.bytes_added,
                "bytes_hidden": layer.bytes_hidden,
            }
            for layer in accounting.layers
        ],
        "largest_hidden": [
            {
                "path": path_text(hidden.path),
                "layer": hidden.layer,
                "size": hidden.size,
                "hidden_by": hidden.hidden_by,
            }
            for hidden in accounting.largest_hidden
        ],
    }


def to_json(inspection: Inspection) -> dict[str, Any]:
    catalog = inspection.catalog
    return {
        "ocifs_inspect": JSON_VERSION,
        "source": {"path": str(catalog.path), "kind": catalog.source, "format": catalog.format},
        "catalog": {
            name: [catalog_json(entry) for entry in entries]
            for name, entries in catalog.lists.items()
        },
        "catalog_left_out": catalog.left_out,
        "image": None if inspection.image is None else image_json(inspection.image),
        "accounting": (
            None if inspection.accounting is None else accounting_json(inspection.accounting)
        ),
        "notes": inspection.notes,
        "layers_indexed": inspection.indexed,
        "layers_from_cache": inspection.from_cache,
    }


# --- the table ------------------------------------------------------------------------------


def clean(text: str) -> str:
    """Text from the image, safe on a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def one_line(text: str) -> str:
    """A shell command (``created_by``) on one line: runs of whitespace made one space."""
    return clean(" ".join(text.split()))


def human(count: int) -> str:
    """A byte count for the table: 512 B, 4.1 kB, 12.3 MB, 1.2 GB (powers of 1000)."""
    if count < 1000:
        return f"{count} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count_in = count / 1000 ** ("kMGT".index(unit[0]) + 1)
        if count_in < 999.95 or unit == "TB":
            return f"{count_in:.1f} {unit}"
    raise AssertionError("unreachable")


def percent(ratio: float) -> str:
    """A share to one decimal, never rounded to 0% or 100% when it is not that."""
    shown = f"{100 * ratio:.1f}%"
    if shown == "0.0%" and ratio > 0:
        return "<0.1%"
    if shown == "100.0%" and ratio < 1:
        return ">99.9%"
    return shown


def short_digest(digest: str | None) -> str:
    if digest is None:
        return "-"
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}:{hexdigest[:12]}"


def short_media_type(media_type: str) -> str:
    """'tar+gzip' for the OCI layer types, 'docker tar.gzip' for Docker's."""
    for prefix, shown in (
        ("application/vnd.oci.image.layer.v1.", ""),
        ("application/vnd.oci.image.layer.nondistributable.v1.", "nondistributable "),
        ("application/vnd.docker.image.rootfs.diff.", "docker "),
        ("application/vnd.docker.image.rootfs.foreign.diff.", "docker foreign "),
    ):
        if media_type.startswith(prefix):
            return shown + media_type[len(prefix) :]
    return clean(media_type)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], width: int | None
) -> list[str]:
    """Columns padded to their widest cell (``right``: right-aligned), two spaces apart;
    with a ``width``, the last column is cut to fit it."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        cells[-1] = row[-1] if len(headers) - 1 not in right else cells[-1]
        line = "  " + "  ".join(cells)
        if width is not None and len(line) > width:
            line = line[: max(width - 1, 0)] + "…"
        lines.append(line.rstrip())
    return lines


def catalog_lines(entries: list[CatalogEntry], depth: int = 1) -> list[str]:
    lines = []
    for entry in entries:
        mark = "*" if entry.chosen else " "
        names = ", ".join(clean(name) for name in entry.names)
        label = names or entry.platform or "(no name)"
        parts = [f"{'  ' * depth}{mark} {label}", entry.kind, short_digest(entry.digest)]
        if entry.platform and names:
            parts.append(entry.platform)
        if entry.error:
            parts.append(f"({clean(entry.error)})")
        lines.append("  ".join(parts))
        lines.extend(catalog_lines(entry.children, depth + 1))
    return lines


def field_lines(name: str, values: Sequence[str]) -> list[str]:
    if not values:
        return []
    return [f"{name if i == 0 else '':<12}{value}" for i, value in enumerate(values)]


def render(inspection: Inspection, width: int | None = None) -> str:
    """The inspection as text; ``width`` cuts long lines to a terminal's width."""
    catalog = inspection.catalog
    lines = [f"{'Source':<12}{clean(str(catalog.path))} ({catalog.format}, {catalog.source})"]
    for name, entries in catalog.lists.items():
        lines.append(
            f"Images in {name} (* the one shown)" if inspection.image else f"Images in {name}"
        )
        lines.extend(catalog_lines(entries) or ["  (none)"])
    if catalog.left_out:
        lines.append(f"  ... and {catalog.left_out} more")
    image = inspection.image
    if image is not None:
        lines.extend(image_lines(image, width))
    if inspection.accounting is not None:
        lines.extend(accounting_lines(inspection.accounting, width))
    lines.extend(f"Note: {clean(note)}" for note in inspection.notes)
    return "\n".join(lines) + "\n"


def image_lines(image: ImageInfo, width: int | None) -> list[str]:
    lines = [""]
    if image.manifest_digest is not None:
        lines.append(
            f"{'Manifest':<12}{image.manifest_digest} ({clean(image.manifest_media_type)})"
        )
    lines.append(f"{'Config':<12}{image.config_digest}")
    lines += field_lines("Created", [clean(image.created)] if image.created else [])
    platform = "/".join(p for p in (image.os, image.architecture, image.variant) if p)
    lines += field_lines("Platform", [clean(platform or image.platform or "-")])
    for name, value in (("Entrypoint", image.entrypoint), ("Cmd", image.cmd)):
        if value is not None:
            lines += field_lines(name, [clean(json.dumps(value, ensure_ascii=False))])
    lines += field_lines("Workdir", [clean(image.working_dir)] if image.working_dir else [])
    lines += field_lines("User", [clean(image.user)] if image.user else [])
    lines += field_lines("Env", [clean(value) for value in image.env])
    lines += field_lines("Labels", [clean(f"{k}={v}") for k, v in sorted(image.labels.items())])
    rows = image.layers
    compressed = sum(row.compressed_size for row in rows)
    uncompressed = sum(row.uncompressed_size for row in rows)
    entries = sum(row.entries for row in rows)
    lines += [
        "",
        f"Layers ({len(rows)}: {human(compressed)} compressed, {human(uncompressed)}"
        f" uncompressed, {entries:,} entries)",
    ]
    lines += table(
        ("#", "digest", "type", "compressed", "uncompressed", "entries", "created by"),
        [
            (
                str(row.position),
                short_digest(row.digest),
                short_media_type(row.media_type),
                human(row.compressed_size),
                human(row.uncompressed_size),
                f"{row.entries:,}",
                one_line(row.created_by) if row.created_by is not None else "-",
            )
            for row in rows
        ],
        {0, 3, 4, 5},
        width,
    )
    return lines


def accounting_lines(accounting: Accounting, width: int | None) -> list[str]:
    total, wasted = accounting.total_bytes, accounting.wasted_bytes
    share = f", {percent(wasted / total)}" if total else ""
    lines = [
        "",
        f"Layer accounting (efficiency {percent(accounting.efficiency)};"
        f" {human(wasted)} of {human(total)} of file data hidden by later layers{share})",
    ]
    lines += table(
        ("#", "added", "modified", "deleted", "bytes added", "bytes hidden"),
        [
            (
                str(layer.position),
                f"{layer.added:,}",
                f"{layer.modified:,}",
                f"{layer.deleted:,}",
                human(layer.bytes_added),
                human(layer.bytes_hidden),
            )
            for layer in accounting.layers
        ],
        {0, 1, 2, 3, 4, 5},
        width,
    )
    if accounting.largest_hidden:
        lines += [
            "",
            f"Largest hidden files ({len(accounting.largest_hidden)} of"
            f" {accounting.hidden_files:,})",
        ]
        lines += table(
            ("size", "layer", "hidden by", "path"),
            [
                (human(h.size), str(h.layer), str(h.hidden_by), clean(path_text(h.path)))
                for h in accounting.largest_hidden
            ],
            {0, 1, 2},
            width,
        )
    return lines


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``inspect``'s own options (the image options are the other commands')."""
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="per-layer accounting: added, modified, deleted, bytes hidden by later layers",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="with --layers: the N largest hidden files (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    """``ocifs inspect``: gather (indexing what the cache lacks, with progress on a
    terminal), then print the table or the JSON."""
    from .inspect import inspect_arg

    if args.top < 0:
        raise OcifsError(f"--top must be at least 0, not {args.top}")
    platform = Platform.parse(args.platform) if args.platform else None
    cache = None if args.no_cache else IndexCache(args.cache_dir or default_cache_dir())
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        inspection = inspect_arg(
            args.image,
            platform,
            cache,
            verify=not args.no_verify,
            progress=progress,
            archive_progress=progress.archive if progress is not None else None,
            accounting=args.layers,
            top=args.top,
            opened=progress.finish if progress is not None else None,
        )
    finally:
        if progress is not None:
            progress.finish()
    if args.json:
        print(json.dumps(to_json(inspection), indent=2))
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        sys.stdout.write(render(inspection, width))
    return 0
