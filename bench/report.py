"""The report: one table of every tool's results with the ratios and targets, as text and JSON.

Ratios are ocifs / ratarmount and ocifs / floor, where the floor is the image format's floor
command for the first mount (``gzip -dc``, ``zstd -dc``, sha256 by hashlib) and the same
step on the unpacked tree otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import Check, format_of
from .images import MIB, Image
from .measure import SEQ_ROUNDS
from .steps import Cell
from .tools import Contenders

TOOLS = ("ocifs", "ratarmount", "unpacked")
COLUMNS = [
    "measure",
    "ocifs",
    "ratarmount",
    "umoci/unpacked",
    "floor",
    "ocifs/ratarm.",
    "ocifs/floor",
    "target",
]
# Longer failure messages and reasons go to a numbered footnote, the cell showing only
# "failed [1]" or "n/a [2]": a tool that cannot read an image fails every row alike.
FOOTNOTE_AFTER = 24
FOOTNOTED = ("failed: ", "n/a: ")


def number(value: float) -> str:
    """About three significant digits; integers in full with thousands separators."""
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def numeric(cell: Cell) -> float | None:
    """A cell's number, None for a note, a failure or a yes/no."""
    return float(cell) if isinstance(cell, int | float) and not isinstance(cell, bool) else None


def ratio(ocifs: float | None, other: float | None) -> str:
    """ocifs / other as "1.23x"; "-" when either is missing or other is 0."""
    return f"{ocifs / other:.2f}x" if ocifs is not None and other else "-"


@dataclass
class Row:
    image: str
    label: str
    key: str
    scale: float = 1.0  # cells show value * scale
    floor: str = ""  # the results key of the floor column: "gzip", "zstd", "unpacked"...
    target: str = ""
    check: Check | None = None
    higher_is_better: bool = False


def verdict(
    row: Row, ocifs: float | None, rat: float | None, floor: float | None
) -> tuple[str, bool | None]:
    """The target column's text, and whether the target was met (None: not judged)."""
    if not row.target:
        return "", None
    if row.check is None:
        return f"{row.target}: n/a", None
    if ocifs is None:
        return f"{row.target}: not measured", None
    met = row.check(ocifs, rat, floor)
    if met is None:
        return f"{row.target}: n/a (no comparison)", None
    return f"{row.target}: {'met' if met else 'NOT met'}", met


def rows_for(image: Image, ocifs_cached: bool) -> list[Row]:
    name = image.name
    format = image.format
    later = (
        "later mount (same cache) [s]"
        if ocifs_cached
        else "later mount [s] (ocifs NOT cached: no --cache-dir)"
    )
    rows = [
        Row(
            name,
            f"first mount [s] (umoci: unpack; floor: {format.floor_label})",
            "first_mount_s",
            floor=format.floor,
            target=format.first_target,
            check=format.first_check,
        ),
        Row(name, "first mount CPU user+sys [s]", "first_mount_cpu_s", floor=format.floor),
        Row(
            name,
            "peak RSS while indexing [MB]",
            "peak_rss_mb",
            target="< 400 MB",
            check=lambda o, r, f: o < 400,
        ),
        Row(
            name,
            "daemon RSS after mount [MB]",
            "rss_after_mount_mb",
            target="< 100 MB",
            check=lambda o, r, f: o < 100,
        ),
        Row(name, "daemon RSS after find + stat [MB]", "rss_after_walk_mb"),
        Row(
            name,
            later,
            "later_mount_s",
            target="< 0.3 s",
            check=(lambda o, r, f: o < 0.3) if ocifs_cached else None,
        ),
        Row(name, "disk besides blobs [MB] (cache/index/unpacked)", "disk_bytes", scale=1e-6),
        Row(name, "entries seen by find", "find_entries", floor="unpacked"),
        Row(
            name,
            "find MNT | wc -l [s]",
            "find_s",
            floor="unpacked",
            target="<= 0.8x ratarmount",
            check=lambda o, r, f: None if r is None else o <= 0.8 * r,
        ),
        Row(
            name,
            "find again, same mount [s]",
            "find_again_s",
            floor="unpacked",
            target="<= 2x unpacked",
            check=lambda o, r, f: f is not None and o <= 2 * f,
        ),
        Row(name, "lstat of every entry [s]", "stat_s", floor="unpacked"),
    ]
    for file in image.files:
        short = f"{Path(file['path']).name} ({file['size'] / MIB:.0f} MiB)"
        path = file["path"]
        rows += [
            Row(
                name,
                f"{short} cold read [MB/s]",
                f"seq_cold_mb_s:{path}",
                floor="unpacked",
                target=">= 1.3x ratarmount",
                check=lambda o, r, f: None if r is None else o >= 1.3 * r,
                higher_is_better=True,
            ),
            Row(
                name,
                f"{short} 2nd read [MB/s]",
                f"seq_warm_mb_s:{path}",
                floor="unpacked",
                higher_is_better=True,
            ),
            Row(
                name,
                f"{short} random 4K median [ms]",
                f"random_median_ms:{path}",
                floor="unpacked",
                target="< 1 ms" if format.random_judged else "",
                check=lambda o, r, f: o < 1,
            ),
            Row(name, f"{short} random 4K p99 [ms]", f"random_p99_ms:{path}", floor="unpacked"),
        ]
    return rows


@dataclass
class Table:
    """The lines of the table (a row's cells, or an image's heading) and what they judged."""

    header: list[str] = field(default_factory=lambda: list(COLUMNS))
    lines: list[list[str] | str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, value: Cell, scale: float) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int | float):
            return number(value * scale if scale != 1.0 else value)
        if isinstance(value, list):
            return f"{len(value)} values"
        if value.startswith(FOOTNOTED) and len(value) > FOOTNOTE_AFTER:
            if value not in self.footnotes:
                self.footnotes.append(value)
            return f"{value.split(':', 1)[0]} [{self.footnotes.index(value) + 1}]"
        return value

    def add(self, row: Row, results: dict[str, dict[str, Cell]]) -> None:
        def value(tool: str) -> Cell:
            return results.get(tool, {}).get(row.key)

        ocifs, rat, unpacked = value("ocifs"), value("ratarmount"), value("unpacked")
        floor = value(row.floor) if row.floor else None
        o, r, f = numeric(ocifs), numeric(rat), numeric(floor)
        text, met = verdict(row, o, r, f)
        if met is not None:
            self.targets.append(
                {
                    "image": row.image,
                    "measure": row.label,
                    "target": row.target,
                    "ocifs": o,
                    "met": met,
                }
            )
        self.lines.append(
            [
                row.label,
                self.cell(ocifs, row.scale),
                self.cell(rat, row.scale),
                self.cell(unpacked, row.scale),
                self.cell(floor, row.scale),
                ratio(o, r),
                ratio(o, f),
                text,
            ]
        )

    def render(self) -> str:
        """Columns padded to their widest cell: the label left, the numbers right-aligned."""
        rows = [line for line in self.lines if isinstance(line, list)]
        widths = [
            max(len(str(line[i])) for line in [self.header, *rows]) for i in range(len(self.header))
        ]
        total = sum(widths) + 2 * (len(widths) - 1)

        def fmt(line: list[str]) -> str:
            cells = [line[0].ljust(widths[0])]
            cells += [line[i].rjust(widths[i]) for i in range(1, len(line) - 1)]
            cells.append(line[-1])
            return "  ".join(cells).rstrip()

        out = [fmt(self.header), "-" * total]
        for line in self.lines:
            out.append(line if isinstance(line, str) else fmt(line))
        return "\n".join(out)


def image_heading(name: str, info: dict[str, Any]) -> str:
    format = format_of(info)
    return (
        f"== {name}: {len(info['layers'])} {format.layers}, "
        f"{info['entries']:,} entries, {info['blob_bytes'] / 1e6:,.0f} MB "
        f"{format.stored}, {info['tar_bytes'] / 1e6:,.0f} MB uncompressed"
    )


def build_table(
    images: dict[str, Image], results: dict[str, dict[str, dict[str, Cell]]], ocifs_cached: bool
) -> Table:
    table = Table()
    for name, image in images.items():
        table.lines.append(image_heading(name, image.info))
        for row in rows_for(image, ocifs_cached):
            table.add(row, results[name])
    return table


def consistency_notes(
    images: dict[str, Image], results: dict[str, dict[str, dict[str, Cell]]]
) -> list[str]:
    """Where the tools disagree on what they served, or ratarmount rebuilt its index."""
    notes: list[str] = []
    for name, image in images.items():
        per_tool = results[name]
        entries = {tool: per_tool.get(tool, {}).get("find_entries") for tool in TOOLS}
        seen = {value for value in entries.values() if isinstance(value, int)}
        if len(seen) > 1:
            notes.append(f"{name}: find saw different entry counts: {entries}")
        for file in image.files:
            key = f"random_sha256:{file['path']}"
            digests = {tool: per_tool.get(tool, {}).get(key) for tool in TOOLS}
            if len({d for d in digests.values() if isinstance(d, str) and len(d) == 64}) > 1:
                notes.append(
                    f"{name}: the random 4 KiB reads of {file['path']} differ between "
                    f"tools: {digests}"
                )
        reused = per_tool.get("ratarmount", {}).get("state_reused")
        if reused is False:
            notes.append(f"{name}: ratarmount's later mount rewrote its index")
    return notes


def build_notes(infos: dict[str, dict[str, Any]]) -> list[str]:
    """What the bench had to change in an image a tool wrote, so that it could be measured."""
    notes: list[str] = []
    for name, info in infos.items():
        corrected = info.get("diff_ids_corrected", [])
        if corrected:
            dropped = sum(layer["dropped_bytes"] for layer in corrected)
            notes.append(
                f"{name}: {format_of(info).diff_id_excuse}; so the image measured has its "
                f"config rewritten with the streams' digests ({len(corrected)} of "
                f"{len(info['layers'])} layers, {dropped:,} bytes of padding dropped)"
            )
    return notes


def header_lines(
    machine_line: str, versions: dict[str, str], infos: dict[str, dict[str, Any]], drop_method: str
) -> list[str]:
    """When, where, with what, on which images, and how the caches were dropped."""
    return [
        f"ocifs benchmark, {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine_line}",
        "versions: " + "; ".join(versions.values()),
        *(
            f"image {name}: {info['entries']:,} entries, {info['blob_bytes']:,} bytes "
            f"{format_of(info).stored}, {info['tar_bytes']:,} bytes uncompressed "
            f"({len(info['layers'])} {format_of(info).layers}"
            + (f", from {info['base']} by skopeo copy)" if "base" in info else ")")
            for name, info in infos.items()
        ),
        "cold steps: page cache of the blobs and indexes dropped with fadvise(DONTNEED) before "
        "every mount"
        + (
            f"; unpacked files dropped with {drop_method} before each read." if drop_method else "."
        ),
        "MB = 10^6 bytes; ratios are ocifs / other (times, MB: < 1 is better for ocifs; "
        "MB/s: > 1 is).",
    ]


def legend_lines(contenders: Contenders, images: dict[str, Image] | None = None) -> list[str]:
    formats = {image.format.name: image.format for image in (images or {}).values()}
    floors = (
        ", ".join(f"{format.floor_label} for {format.name}" for format in formats.values())
        or "gzip -dc"
    )
    legend = [
        f"floor: {floors}, of every blob one after the other, for the first mount; otherwise "
        "the same step on the umoci-unpacked tree on local disk.",
        "find and lstat run on the fresh first mount; each file's sequential and random reads "
        "on a fresh later mount of their own (the FUSE tools' sequential reads: the median of "
        f"{SEQ_ROUNDS} such mounts in turn); "
        + (
            "ocifs later mounts use the first mount's --cache-dir."
            if contenders.ocifs_cached
            else "ocifs has no --cache-dir yet: its later mounts index again."
        ),
    ]
    if any(image.base is not None for image in (images or {}).values()):
        legend.append(
            "images named BASE-zstd, BASE-chunked, BASE-docker: BASE copied by skopeo to single-"
            "frame zstd, zstd:chunked and a docker-archive tarball (mounted in place); their "
            "umoci/unpacked column is BASE's (umoci 0.4.7 reads no zstd; the tree is the same)."
        )
        if "docker-archive" in formats:
            legend.append(
                "sha256 (hashlib): the docker-archive's layers are plain tar, and a verified mount "
                "must hash every byte of them once (1 MiB reads, OpenSSL's SHA-256 as in ocifs)."
            )
    if not contenders.skip_umoci:
        legend.append(
            "find and lstat on the unpacked tree ran right after umoci unpack, with "
            "the dentry cache warm."
        )
        if contenders.keep_unpacked:
            legend.append(
                "--keep-unpacked: a tree kept by an earlier run for the same blobs was measured; "
                "its umoci unpack time, CPU and disk are that run's (the log says when)."
            )
    if contenders.ratarmount is not None:
        legend.append("ratarmount runs with its defaults: -f --index-folders DIR BLOB... MNT.")
    return legend


def render_text(
    header: list[str], table: Table, legend: list[str], notes: list[str], elapsed: float
) -> str:
    """The whole report as printed: header, table, legend, footnotes, notes, run time."""
    return "\n".join(
        [
            *header,
            "",
            table.render(),
            "",
            *legend,
            *(f"[{i}] {note}" for i, note in enumerate(table.footnotes, 1)),
            *(f"note: {note}" for note in notes),
            f"whole run: {elapsed:.0f} s (load average at the end: {os.getloadavg()[0]:.2f})",
        ]
    )


@dataclass
class Report:
    """The report of one run: the text as printed, and what --json writes."""

    header: list[str]
    machine: str
    versions: dict[str, str]
    infos: dict[str, dict[str, Any]]
    results: dict[str, dict[str, dict[str, Cell]]]
    table: Table
    notes: list[str]
    elapsed: float
    text: str

    def document(self) -> dict[str, Any]:
        """Every raw number, the table's cells and the text."""
        return {
            "header": self.header,
            "machine": self.machine,
            "versions": self.versions,
            "images": self.infos,
            "results": self.results,
            "targets": self.table.targets,
            "table": {"columns": self.table.header, "rows": self.table.lines},
            "footnotes": self.table.footnotes,
            "notes": self.notes,
            "elapsed_seconds": round(self.elapsed, 1),
            "text": self.text,
        }


def compose(
    machine_line: str,
    versions: dict[str, str],
    infos: dict[str, dict[str, Any]],
    images: dict[str, Image],
    results: dict[str, dict[str, dict[str, Cell]]],
    contenders: Contenders,
    drop_method: str,
    elapsed: float,
    problems: dict[str, str] | None = None,
) -> Report:
    table = build_table(images, results, contenders.ocifs_cached)
    notes = [f"{name}: {problem}" for name, problem in (problems or {}).items()]
    notes += build_notes(infos) + consistency_notes(images, results)
    header = header_lines(machine_line, versions, infos, drop_method)
    text = render_text(header, table, legend_lines(contenders, images), notes, elapsed)
    return Report(header, machine_line, versions, infos, results, table, notes, elapsed, text)
