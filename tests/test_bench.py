"""The benchmark's pure parts, without a mount: options, numbers, ratios, targets, the table,
the probes run on a local directory, and what goes into the images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import parse_args
from bench.formats import FORMATS, format_of
from bench.images import (
    IMAGES,
    DerivedSpec,
    Image,
    ImageSpec,
    LayerSpec,
    Source,
    build_image,
    collect_members,
    derive_image,
    derived_key,
    layout_layers,
    log_lines,
    prepare_image,
)
from bench.measure import (
    SEQ_ROUNDS,
    FuseTool,
    file_keys,
    first_mount_floor,
    keep_round,
    measure_image,
    median_of_rounds,
    percentile,
    run_fuse_tool,
    run_unpacked,
)
from bench.probes import (
    RANDOM_READS,
    RANDOM_SIZE,
    Mounter,
    probe,
    probe_main,
    random_offsets,
)
from bench.report import (
    COLUMNS,
    Row,
    Table,
    build_notes,
    consistency_notes,
    header_lines,
    image_heading,
    legend_lines,
    number,
    numeric,
    ratio,
    render_text,
    rows_for,
    verdict,
)
from bench.steps import BenchError, Cell, ElapsedFormatter, last_line, one_line, step
from bench.tools import Contenders
from bench.zstdframes import describe, describe_file, walk_frames

REPO = Path(__file__).resolve().parent.parent
SHA = "a" * 64


def image(files: list[tuple[str, int]]) -> Image:
    info = {
        "ref": "debian",
        "layout": "/x/layout",
        "layers": [{"digest": "sha256:" + "1" * 64}, {"digest": "sha256:" + "2" * 64}],
        "big_files": [{"path": path, "size": size} for path, size in files],
        "entries": 1234,
        "blob_bytes": 189_145_335,
        "tar_bytes": 413_665_280,
    }
    return prepare_image("debian", info)


def contenders(cached: bool = True, ratarmount: bool = True, umoci: bool = True) -> Contenders:
    return Contenders(
        ocifs=["ocifs"],
        ocifs_cached=cached,
        ocifs_problem="",
        ratarmount=Path("/venv/bin/ratarmount") if ratarmount else None,
        ratarmount_problem="" if ratarmount else "skipped",
        skip_umoci=not umoci,
    )


# ---------------------------------------------------------------- options


def test_options_and_their_defaults() -> None:
    args = parse_args([])
    assert args.workdir == Path("/tmp/ocifs-bench")
    assert args.json is None
    assert args.only is None
    assert args.ocifs is None
    assert (args.rebuild, args.skip_ratarmount, args.skip_umoci) == (False, False, False)
    args = parse_args(["--only", "debian", "--json", "out.json", "--skip-umoci", "--ocifs", "x y"])
    assert (args.only, args.json, args.skip_umoci, args.ocifs) == (
        ["debian"],
        Path("out.json"),
        True,
        "x y",
    )


def test_only_takes_an_image_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "alpine"])
    assert "invalid choice: 'alpine'" in capsys.readouterr().err


def test_only_takes_the_derived_images_and_repeats() -> None:
    args = parse_args(["--only", "large-zstd", "--only", "large-chunked", "--only", "large-docker"])
    assert args.only == ["large-zstd", "large-chunked", "large-docker"]
    assert IMAGES == (
        "debian",
        "debian-zstd",
        "debian-chunked",
        "debian-docker",
        "large",
        "large-zstd",
        "large-chunked",
        "large-docker",
    )


def test_usage_names_the_bench() -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "bench"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bench [-h] [--workdir WORKDIR]")
    assert "Benchmark ocifs against ratarmount, umoci unpack and gzip -dc" in result.stdout


# ---------------------------------------------------------------- numbers and ratios


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3512, "3,512"),
        (0.0, "0"),
        (1234.5, "1,234"),  # round half to even
        (461.4, "461"),
        (68.04, "68.0"),
        (2.744, "2.74"),
        (0.2701, "0.270"),
        (-12.34, "-12.3"),
    ],
)
def test_number_keeps_about_three_digits(value: float, text: str) -> None:
    assert number(value) == text


def test_numeric_takes_numbers_only() -> None:
    assert numeric(3) == 3.0
    assert numeric(0.5) == 0.5
    assert numeric(True) is None
    assert numeric("failed: boom") is None
    assert numeric(None) is None
    assert numeric([1.0, 2.0]) is None


def test_ratio_is_ocifs_over_the_other() -> None:
    assert ratio(1.0, 4.0) == "0.25x"
    assert ratio(9.0, 3.0) == "3.00x"
    assert ratio(None, 3.0) == "-"
    assert ratio(1.0, None) == "-"
    assert ratio(1.0, 0.0) == "-"  # no division by a zero floor


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.0) == 1.0


# ---------------------------------------------------------------- targets and rows


def test_verdict_of_a_target() -> None:
    row = Row("debian", "find [s]", "find_s", target="< 2 s", check=lambda o, r, f: o < 2)
    assert verdict(row, 0.5, None, None) == ("< 2 s: met", True)
    assert verdict(row, 2.5, None, None) == ("< 2 s: NOT met", False)
    assert verdict(row, None, 1.0, 1.0) == ("< 2 s: not measured", None)
    assert verdict(Row("debian", "x", "x"), 1.0, 1.0, 1.0) == ("", None)
    assert verdict(Row("debian", "x", "x", target="t"), 1.0, None, None) == ("t: n/a", None)


def test_first_mount_target_needs_both_comparisons() -> None:
    first = rows_for(image([]), ocifs_cached=True)[0]
    assert first.key == "first_mount_s"
    assert first.target == "<= 0.4x gzip -dc and < ratarmount"  # issue 9's target
    assert verdict(first, 0.8, None, 2.0)[0].endswith(": n/a (no comparison)")
    assert verdict(first, 0.8, 3.0, 2.0)[1] is True
    assert verdict(first, 0.9, 3.0, 2.0)[1] is False  # over 0.4x gzip -dc
    assert verdict(first, 0.8, 0.5, 2.0)[1] is False  # slower than ratarmount


def test_issue_9_targets_against_ratarmount() -> None:
    """find at most 0.8x ratarmount's time, cold reads at least 1.3x its throughput."""
    rows = {row.key: row for row in rows_for(image([("srv/big", 64 << 20)]), True)}
    find, cold = rows["find_s"], rows["seq_cold_mb_s:srv/big"]
    assert verdict(find, 4.0, 5.0, 1.0) == ("<= 0.8x ratarmount: met", True)
    assert verdict(find, 4.1, 5.0, 1.0)[1] is False
    assert verdict(find, 1.0, None, 1.0)[1] is None
    assert verdict(cold, 130.0, 100.0, 300.0) == (">= 1.3x ratarmount: met", True)
    assert verdict(cold, 129.0, 100.0, 300.0)[1] is False
    median = rows["random_median_ms:srv/big"]
    assert (verdict(median, 0.9, None, None)[1], verdict(median, 1.0, None, None)[1]) == (
        True,
        False,
    )
    assert verdict(rows["rss_after_mount_mb"], 99.0, None, None)[1] is True
    assert verdict(rows["rss_after_mount_mb"], 100.0, None, None)[1] is False


def test_rows_per_image_and_per_big_file() -> None:
    rows = rows_for(image([("srv/bench/random.bin", 64 << 20), ("srv/app.log", 1 << 20)]), True)
    assert len(rows) == 11 + 2 * 4
    keys = [row.key for row in rows]
    assert keys[11:15] == [
        "seq_cold_mb_s:srv/bench/random.bin",
        "seq_warm_mb_s:srv/bench/random.bin",
        "random_median_ms:srv/bench/random.bin",
        "random_p99_ms:srv/bench/random.bin",
    ]
    assert rows[11].label == "random.bin (64 MiB) cold read [MB/s]"
    assert rows[15].label == "app.log (1 MiB) cold read [MB/s]"
    assert rows[11].higher_is_better and not rows[13].higher_is_better
    again = rows[keys.index("find_again_s")]
    assert again.floor == "unpacked"
    assert verdict(again, 3.0, None, 1.5) == ("<= 2x unpacked: met", True)
    assert verdict(again, 3.1, None, 1.5) == ("<= 2x unpacked: NOT met", False)


def test_later_mount_not_judged_without_a_cache() -> None:
    cached = {row.key: row for row in rows_for(image([]), ocifs_cached=True)}["later_mount_s"]
    uncached = {row.key: row for row in rows_for(image([]), ocifs_cached=False)}["later_mount_s"]
    assert cached.label == "later mount (same cache) [s]"
    assert verdict(cached, 0.29, None, None) == ("< 0.3 s: met", True)
    assert verdict(cached, 0.3, None, None) == ("< 0.3 s: NOT met", False)
    assert uncached.label == "later mount [s] (ocifs NOT cached: no --cache-dir)"
    assert verdict(uncached, 0.3, None, None) == ("< 0.3 s: n/a", None)


# ---------------------------------------------------------------- the table


def test_table_row_cells_ratios_and_target() -> None:
    table = Table()
    row = Row(
        "debian",
        "find [s]",
        "find_s",
        floor="unpacked",
        target="< 2 s",
        check=lambda o, r, f: o < 2,
    )
    results: dict[str, dict[str, Cell]] = {
        "ocifs": {"find_s": 0.5},
        "ratarmount": {"find_s": 0.25},
        "unpacked": {"find_s": 0.1},
    }
    table.add(row, results)
    assert table.lines == [
        ["find [s]", "0.500", "0.250", "0.100", "0.100", "2.00x", "5.00x", "< 2 s: met"]
    ]
    assert table.targets == [
        {"image": "debian", "measure": "find [s]", "target": "< 2 s", "ocifs": 0.5, "met": True}
    ]


def test_table_floor_of_the_first_mount_is_gzip() -> None:
    table = Table()
    row = Row("debian", "first", "first_mount_s", floor="gzip")
    table.add(
        row,
        {
            "ocifs": {"first_mount_s": 3.0},
            "gzip": {"first_mount_s": 2.0},
            "unpacked": {"first_mount_s": 6.0},
        },
    )
    assert table.lines[0][3:7] == ["6.00", "2.00", "-", "1.50x"]


def test_table_cells_of_every_kind() -> None:
    table = Table()
    assert table.cell(None, 1.0) == "-"
    assert table.cell(True, 1.0) == "yes"
    assert table.cell(False, 1.0) == "no"
    assert table.cell(7_120_000, 1e-6) == "7.12"
    assert table.cell([1.0, 2.0, 3.0], 1.0) == "3 values"
    assert table.cell("skipped", 1.0) == "skipped"
    assert table.cell("failed: short", 1.0) == "failed: short"
    assert table.footnotes == []


def test_long_failures_become_footnotes_once() -> None:
    table = Table()
    long = "failed: " + "x" * 80
    other = "failed: " + "y" * 80
    reason = "n/a: " + "z" * 80
    assert table.cell(long, 1.0) == "failed [1]"
    assert table.cell(other, 1.0) == "failed [2]"
    assert table.cell(long, 1.0) == "failed [1]"
    assert table.cell(reason, 1.0) == "n/a [3]"
    assert table.cell("failed: a short one", 1.0) == "failed: a short one"
    assert table.footnotes == [long, other, reason]


def test_render_aligns_the_columns() -> None:
    table = Table()
    table.lines.append("== debian: heading")
    table.add(Row("debian", "a longer label", "k"), {"ocifs": {"k": 1234}, "ratarmount": {"k": 2}})
    table.add(Row("debian", "short", "k"), {"ocifs": {"k": 5}})
    lines = table.render().splitlines()
    assert lines[0].split() == COLUMNS
    assert set(lines[1]) == {"-"}
    assert lines[2] == "== debian: heading"
    assert lines[3].startswith("a longer label  ")
    assert lines[4].startswith("short           ")
    # numbers right-aligned: the ocifs column ends at the same place on every row
    end = lines[0].index("ocifs") + len("ocifs")
    assert lines[3][:end].endswith("1,234") and lines[4][:end].endswith("    5")
    assert len(lines[1]) == len(lines[0])  # the rule is as wide as the header
    assert all(line == line.rstrip() for line in lines)


def test_render_text_puts_footnotes_and_notes_after_the_legend() -> None:
    table = Table()
    table.cell("failed: " + "z" * 80, 1.0)
    text = render_text(["head"], table, ["legend"], ["a note"], 12.3)
    lines = text.splitlines()
    assert lines[0] == "head"
    assert lines[1] == ""
    assert lines[-4:-1] == ["legend", "[1] failed: " + "z" * 80, "note: a note"]
    assert lines[-1].startswith("whole run: 12 s (load average at the end: ")


# ---------------------------------------------------------------- notes, header, legend


def test_consistency_notes() -> None:
    files = [("srv/bench/random.bin", 1 << 20)]
    results: dict[str, dict[str, dict[str, Cell]]] = {
        "debian": {
            "ocifs": {"find_entries": 10, "random_sha256:srv/bench/random.bin": SHA},
            "ratarmount": {
                "find_entries": 11,
                "random_sha256:srv/bench/random.bin": "b" * 64,
                "state_reused": False,
            },
            "unpacked": {"find_entries": "failed: x", "random_sha256:srv/bench/random.bin": SHA},
        }
    }
    notes = consistency_notes({"debian": image(files)}, results)
    assert len(notes) == 3
    assert notes[0].startswith("debian: find saw different entry counts: {'ocifs': 10,")
    assert notes[1].startswith("debian: the random 4 KiB reads of srv/bench/random.bin differ")
    assert notes[2] == "debian: ratarmount's later mount rewrote its index"


def test_no_notes_when_the_tools_agree() -> None:
    key = "random_sha256:srv/bench/random.bin"
    results: dict[str, dict[str, dict[str, Cell]]] = {
        "debian": {
            "ocifs": {"find_entries": 10, key: SHA},
            "ratarmount": {"find_entries": 10, key: "failed: boom", "state_reused": True},
            "unpacked": {"find_entries": 10, key: SHA},
        }
    }
    assert consistency_notes({"debian": image([("srv/bench/random.bin", 4096)])}, results) == []


def test_header_says_how_caches_were_dropped() -> None:
    infos = {"debian": image([]).info}
    lines = header_lines("2 cores", {"ocifs": "ocifs 0.1.0", "gzip": "gzip 1.12"}, infos, "")
    assert lines[1] == "versions: ocifs 0.1.0; gzip 1.12"
    assert lines[2] == (
        "image debian: 1,234 entries, 189,145,335 bytes compressed, "
        "413,665,280 bytes uncompressed (2 gzip layers)"
    )
    assert lines[3].endswith("before every mount.")
    dropped = header_lines("2 cores", {}, infos, "drop_caches")
    assert dropped[3].endswith("; unpacked files dropped with drop_caches before each read.")


def test_legend_follows_what_ran() -> None:
    assert len(legend_lines(contenders())) == 4
    assert legend_lines(contenders())[1].endswith("use the first mount's --cache-dir.")
    assert legend_lines(contenders(cached=False))[1].endswith("its later mounts index again.")
    assert len(legend_lines(contenders(ratarmount=False, umoci=False))) == 2


# ---------------------------------------------------------------- the probes, locally


def test_random_offsets_are_seeded_aligned_and_inside() -> None:
    offsets = random_offsets("srv/bench/app.log", 64 << 20)
    assert len(offsets) == RANDOM_READS
    assert offsets == random_offsets("srv/bench/app.log", 64 << 20)
    assert offsets != random_offsets("srv/bench/random.bin", 64 << 20)
    assert all(offset % RANDOM_SIZE == 0 and 0 <= offset < 64 << 20 for offset in offsets)
    assert set(random_offsets("tiny", 100)) == {0}


def test_prepare_image_finds_blobs_and_offsets() -> None:
    prepared = image([("srv/bench/app.log", 1 << 20)])
    assert prepared.arg == "/x/layout:debian"
    assert prepared.blobs == [
        Path("/x/layout/blobs/sha256/" + "1" * 64),
        Path("/x/layout/blobs/sha256/" + "2" * 64),
    ]
    assert prepared.files[0]["offsets"] == random_offsets("srv/bench/app.log", 1 << 20)
    assert file_keys(prepared.files, ("a", "b")) == ["a:srv/bench/app.log", "b:srv/bench/app.log"]


def test_probes_on_a_local_tree(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    data = os.urandom(3 * RANDOM_SIZE + 100)
    (tmp_path / "d" / "file").write_bytes(data)
    (tmp_path / "link").symlink_to("d")  # lstat: not followed
    walked = probe_main({"kind": "walk", "top": str(tmp_path)})
    assert walked["entries"] == 4
    read = probe_main({"kind": "seq", "path": str(tmp_path / "d" / "file")})
    assert read["cold_bytes"] == read["warm_bytes"] == len(data)
    offsets = [RANDOM_SIZE, 0, 3 * RANDOM_SIZE]
    randomly = probe_main(
        {"kind": "random", "path": str(tmp_path / "d" / "file"), "offsets": offsets}
    )
    expected = hashlib.sha256(b"".join(data[o : o + RANDOM_SIZE] for o in offsets)).hexdigest()
    assert randomly["sha256"] == expected
    assert len(randomly["ms"]) == 3
    with pytest.raises(ValueError, match="unknown probe"):
        probe_main({"kind": "nope"})


def test_probe_runs_in_a_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # where python -m bench finds the package
    (tmp_path / "a").write_text("a")
    assert probe({"kind": "walk", "top": str(tmp_path)})["entries"] == 1
    with pytest.raises(BenchError, match="FileNotFoundError"):
        probe({"kind": "walk", "top": str(tmp_path / "missing")})


# ---------------------------------------------------------------- steps


def test_failed_step_fills_the_keys_it_did_not_set() -> None:
    out: dict[str, Cell] = {}
    with step(out, ["a", "b"], "x"):
        out["a"] = 1.0
        raise BenchError("boom\nmore")
    assert out == {"a": 1.0, "b": "failed: boom"}
    with pytest.raises(KeyboardInterrupt), step(out, ["c"], "x"):
        raise KeyboardInterrupt
    assert "c" not in out


def test_one_line_and_last_line() -> None:
    timeout = subprocess.TimeoutExpired(["/usr/bin/umoci", "unpack"], 1200.0)
    assert one_line(timeout) == "umoci timed out after 1200 s"
    assert one_line(ValueError()) == "ValueError"
    assert one_line("\n  first\nsecond") == "first"
    assert last_line("a\nb\n\n") == "b"
    assert last_line("") == "(no output)"


def test_progress_lines_show_seconds_since_the_start() -> None:
    record = logging.LogRecord("bench.x", logging.INFO, __file__, 1, "built %s", ("debian",), None)
    text = ElapsedFormatter().format(record)
    assert text.startswith("[") and text.endswith("s] built debian")
    assert len(text.split("]")[0]) == len("[123456s")


# ---------------------------------------------------------------- what goes into the images


def test_collect_members(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin" / "deep").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "small").write_bytes(b"x" * 10)
    (tmp_path / "usr" / "bin" / "big").write_bytes(b"x" * 1000)
    (tmp_path / "usr" / "bin" / "deep" / "inner").write_bytes(b"x")
    (tmp_path / "usr" / "bin" / "sh").symlink_to("small")
    os.mkfifo(tmp_path / "usr" / "bin" / "fifo")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "conf").write_bytes(b"x" * 500)
    sources = [
        Source("usr/bin", max_file_size=100, max_depth=1),
        Source("etc"),
        Source("not/here"),
    ]
    members, largest = collect_members(tmp_path, sources)
    assert members == [
        "usr",
        "usr/bin",
        "usr/bin/deep",
        "usr/bin/sh",
        "usr/bin/small",
        "etc",
        "etc/conf",
    ]
    assert largest == (500, "etc/conf")


def test_log_lines_are_deterministic_and_exact() -> None:
    text = log_lines(10_000, 7)
    assert len(text) == 10_000
    assert text == log_lines(10_000, 7)
    assert text != log_lines(10_000, 8)
    assert text.startswith(b"2024-03-01T00:00:00.")
    assert b" status=" in text


# ---------------------------------------------------------------- zstd frames


def zstd_lv_frames(path: Path) -> tuple[int, int]:
    """The zstd CLI's own count of a file's frames and skippable frames: the oracle."""
    result = subprocess.run(["zstd", "-lv", str(path)], capture_output=True, text=True, check=True)
    counts = {
        line.split(":")[0].strip("# "): int(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.startswith("# ")
    }
    return counts["Zstandard Frames"], counts.get("Skippable Frames", 0)


def zstd_of(tmp_path: Path, name: str, data: bytes, *options: str) -> bytes:
    source = tmp_path / name
    source.write_bytes(data)
    subprocess.run(["zstd", "-q", "-f", *options, str(source)], check=True)
    return (tmp_path / f"{name}.zst").read_bytes()


def test_zstd_frames_of_one_frame(tmp_path: Path) -> None:
    data = log_lines(1 << 20, 3)  # several 128 KiB blocks
    path = tmp_path / "one.zst"
    path.write_bytes(zstd_of(tmp_path, "one", data, "-3"))
    described = describe_file(path)
    assert described == {
        "frames": 1,
        "skippable_frames": 0,
        "checksummed_frames": 1,  # the CLI writes XXH64 by default
        "max_window": 1 << 20,  # single segment: the window is the content
        "largest_frame_bytes": path.stat().st_size,
        "content_sizes_known": True,  # from a file, the CLI knows the size
    }
    assert (described["frames"], described["skippable_frames"]) == zstd_lv_frames(path)


def test_zstd_frames_of_frames_and_skippable_ones(tmp_path: Path) -> None:
    """A stream like zstd:chunked's: frames, then skippable frames with data and a footer."""
    first = zstd_of(tmp_path, "a", b"a" * 100_000, "--no-check")
    second = subprocess.run(
        ["zstd", "-q", "-c", "-"], input=os.urandom(5000), capture_output=True, check=True
    ).stdout  # from a pipe: no content size, a window descriptor
    toc = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"toc"
    footer = (0x184D2A5F).to_bytes(4, "little") + (0).to_bytes(4, "little")
    path = tmp_path / "chunked.zst"
    path.write_bytes(first + second + toc + footer)
    with path.open("rb") as file:
        frames = walk_frames(file, path.stat().st_size)
    assert [(frame.offset, frame.size, frame.skippable) for frame in frames] == [
        (0, len(first), False),
        (len(first), len(second), False),
        (len(first) + len(second), 11, True),
        (len(first) + len(second) + 11, 8, True),
    ]
    assert [frame.checksum for frame in frames[:2]] == [False, True]
    assert frames[0].content_size == 100_000 and frames[1].content_size is None
    assert frames[1].window >= 5000
    described = describe(frames)
    assert (described["frames"], described["skippable_frames"]) == zstd_lv_frames(path) == (2, 2)
    assert described["content_sizes_known"] is False


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-3], "truncated|runs past the end"),
        (lambda data: data + b"junkjunk", "no zstd frame at offset"),
        (lambda data: data[:4], "truncated in a frame header"),
    ],
)
def test_zstd_frames_of_a_damaged_file(tmp_path: Path, damage: Any, message: str) -> None:
    path = tmp_path / "bad.zst"
    path.write_bytes(damage(zstd_of(tmp_path, "x", log_lines(300_000, 1))))
    with pytest.raises(BenchError, match=message):
        describe_file(path)


# ---------------------------------------------------------------- formats


def layer(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "media_type": "application/vnd.oci.image.layer.v1.tar+zstd",
        "annotations": {},
        "zstd": {"frames": 1, "skippable_frames": 0},
        "blob_bytes": 10,
        "tar_bytes": 10,
    }
    return record | fields


def test_formats_table() -> None:
    assert list(FORMATS) == ["gzip", "zstd", "zstd:chunked", "docker-archive"]
    assert len({format.suffix for format in FORMATS.values()}) == len(FORMATS)
    assert [format.floor_label for format in FORMATS.values()] == [
        "gzip -dc",
        "zstd -dc",
        "zstd -dc",
        "sha256 (hashlib)",
    ]
    assert format_of({}) is FORMATS["gzip"]  # a build.json from before the formats
    assert [name for name, format in FORMATS.items() if format.skopeo is None] == ["gzip"]
    assert [name for name, format in FORMATS.items() if format.archive] == ["docker-archive"]
    assert FORMATS["docker-archive"].ratarmount.startswith("n/a: ")
    assert not FORMATS["zstd"].random_judged and FORMATS["zstd:chunked"].random_judged


def test_layer_checks_of_the_formats() -> None:
    one, chunked = (FORMATS[name].check_layer for name in ("zstd", "zstd:chunked"))
    assert one is not None and chunked is not None
    assert one(layer()) == ""
    assert one(layer(zstd={"frames": 3, "skippable_frames": 2})).endswith("not one frame")
    assert one(layer(media_type="application/vnd.oci.image.layer.v1.tar+gzip")).startswith(
        "media type"
    )
    toc = {
        prefix + suffix: "x"
        for prefix in ("io.containers.zstd-chunked.",)
        for suffix in ("manifest-checksum", "manifest-position")
    }
    newer = {key.replace("io.", "io.github.", 1): value for key, value in toc.items()}
    framed = {"frames": 40, "skippable_frames": 2}
    assert chunked(layer(annotations=toc, zstd=framed)) == ""
    assert chunked(layer(annotations=newer, zstd=framed)) == ""
    assert chunked(layer(zstd=framed)).startswith("no zstd-chunked")
    assert chunked(layer(annotations=toc)).endswith("not chunked")


# ---------------------------------------------------------------- derived images, for real


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """A tiny gzip image built by build_image, and every format skopeo derives from it."""
    workdir = tmp_path_factory.mktemp("bench")
    root = workdir / "root"
    (root / "etc" / "deep").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    (root / "etc" / "deep" / "big").write_bytes(log_lines(300_000, 5))
    (root / "srv").mkdir()
    (root / "srv" / "data").write_bytes(os.urandom(70_000))
    spec = ImageSpec(
        "tiny", [LayerSpec(str(root), [Source("etc")]), LayerSpec(str(root), [Source("srv")])]
    )
    base_info = build_image(spec, workdir, rebuild=False)
    images = {"tiny": prepare_image("tiny", base_info)}
    for format in FORMATS.values():
        if format.skopeo is not None:
            name = "tiny" + format.suffix
            derived_spec = DerivedSpec(name, "tiny", format.name)
            info = derive_image(derived_spec, base_info, workdir, rebuild=False)
            images[name] = prepare_image(name, info, images["tiny"])
    return images


def gzip_tar(blob: Path) -> bytes:
    return subprocess.run(["gzip", "-dc", str(blob)], capture_output=True, check=True).stdout


def test_derived_images_keep_the_tree_and_say_what_they_are(derived: dict[str, Image]) -> None:
    base = derived["tiny"]
    for name in ("tiny-zstd", "tiny-chunked", "tiny-docker"):
        info = derived[name].info
        assert derived[name].base is base
        assert info["entries"] == base.info["entries"]
        assert (
            info["big_files"]
            == base.info["big_files"]
            == [{"path": "etc/deep/big", "size": 300_000}]
        )
        assert info["blob_bytes"] == sum(path.stat().st_size for path in derived[name].blobs)
    for name in ("tiny-zstd", "tiny-docker"):  # the very same tar streams
        info = derived[name].info
        assert [layer["diff_id"] for layer in info["layers"]] == [
            layer["diff_id"] for layer in base.info["layers"]
        ]
        assert (info["tar_bytes"], info["diff_ids_corrected"]) == (base.info["tar_bytes"], [])
    zstd = derived["tiny-zstd"]
    assert zstd.arg == f"{zstd.layout}:tiny-zstd"
    assert [layer["zstd"]["frames"] for layer in zstd.info["layers"]] == [1, 1]
    for layer_info, blob in zip(zstd.info["layers"], zstd.blobs, strict=True):
        assert zstd_lv_frames(blob) == (1, 0)
        assert layer_info["zstd"]["checksummed_frames"] == 1
    chunked = derived["tiny-chunked"]
    for layer_info, blob in zip(chunked.info["layers"], chunked.blobs, strict=True):
        frames = layer_info["zstd"]
        assert (frames["frames"], frames["skippable_frames"]) == zstd_lv_frames(blob)
        assert frames["frames"] > 1 and frames["skippable_frames"] == 2
        assert any(key.endswith(".manifest-position") for key in layer_info["annotations"])


def test_chunked_image_gets_the_digests_of_the_streams_skopeo_wrote(
    derived: dict[str, Image],
) -> None:
    """skopeo 1.9.3 cuts GNU tar's zero padding off the zstd:chunked stream and keeps the old
    diff_id; the bench's image has a config with the streams' digests, the layers as written."""
    base, chunked = derived["tiny"], derived["tiny-chunked"]
    corrected = chunked.info["diff_ids_corrected"]
    assert corrected, "skopeo wrote the whole stream: is diff_id_excuse still true?"
    _, layers, diff_ids = layout_layers(chunked.layout, "tiny-chunked")
    assert [layer["digest"] for layer in layers] == [
        layer["digest"] for layer in chunked.info["layers"]
    ]
    assert diff_ids == [layer["diff_id"] for layer in chunked.info["layers"]]
    assert (
        chunked.info["manifest"]
        == json.loads((chunked.layout / "index.json").read_text())["manifests"][0]["digest"]
    )
    for index, (layer_info, blob) in enumerate(
        zip(chunked.info["layers"], chunked.blobs, strict=True)
    ):
        stream = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True, check=True).stdout
        original = gzip_tar(base.blobs[index])
        assert "sha256:" + hashlib.sha256(stream).hexdigest() == layer_info["diff_id"]
        dropped = original[len(stream) :]
        assert original.startswith(stream) and dropped == bytes(len(dropped))  # zeros only
        fixed = [entry for entry in corrected if entry["layer"] == index]
        assert fixed == (
            [
                {
                    "layer": index,
                    "config": base.info["layers"][index]["diff_id"],
                    "stream": layer_info["diff_id"],
                    "dropped_bytes": len(dropped),
                }
            ]
            if stream != original
            else []
        )
    note = build_notes({"tiny-chunked": chunked.info})
    assert len(note) == 1 and note[0].startswith("tiny-chunked: skopeo 1.9.3 writes")
    assert build_notes({"tiny-zstd": derived["tiny-zstd"].info}) == []


def test_docker_archive_layers_are_byte_ranges_of_the_tarball(derived: dict[str, Image]) -> None:
    docker = derived["tiny-docker"]
    assert docker.arg == str(docker.layout) and docker.blobs == [docker.layout]
    with tarfile.open(docker.layout) as tar:
        for layer_info in docker.info["layers"]:
            member = tar.getmember(layer_info["member"])
            assert (member.offset_data, member.size) == (
                layer_info["offset"],
                layer_info["tar_bytes"],
            )
            data = tar.extractfile(member)
            assert data is not None
            assert "sha256:" + hashlib.sha256(data.read()).hexdigest() == layer_info["diff_id"]


def test_derived_image_is_reused_until_its_base_changes(
    derived: dict[str, Image], caplog: pytest.LogCaptureFixture
) -> None:
    base = derived["tiny"].info
    workdir = Path(base["layout"]).parent.parent
    spec = DerivedSpec("tiny-zstd", "tiny", "zstd")
    with caplog.at_level(logging.INFO, logger="bench.images"):
        again = derive_image(spec, base, workdir, rebuild=False)
    assert again == derived["tiny-zstd"].info
    assert "tiny-zstd: reusing" in caplog.text
    assert derived_key(spec, base, "skopeo 1") != derived_key(
        spec, base | {"manifest": "sha256:" + "0" * 64}, "skopeo 1"
    )
    assert derived_key(spec, base, "skopeo 1") != derived_key(spec, base, "skopeo 2")


def test_first_mount_floor_of_each_format(derived: dict[str, Image]) -> None:
    for image in derived.values():
        floor = first_mount_floor(image)
        assert isinstance(floor["first_mount_s"], float), floor
        assert isinstance(floor["first_mount_cpu_s"], float)
    broken = derived["tiny-zstd"]
    damaged = Image(broken.name, broken.info, broken.layout, [REPO / "README.md"], broken.files)
    assert str(first_mount_floor(damaged)["first_mount_s"]).startswith("failed: zstd -dc exited 1")


def test_keep_unpacked_reuses_the_tree_of_the_same_blobs_only(
    derived: dict[str, Image], tmp_path: Path
) -> None:
    """--keep-unpacked: the first run unpacks with umoci and keeps the tree; the next measures
    that tree with the first run's unpack figures; other blobs unpack again."""
    tiny = derived["tiny"]
    first = run_unpacked(tiny, tmp_path, keep=True)
    bundle = tmp_path / "unpacked-tiny"
    assert (bundle / "rootfs" / "etc" / "motd").read_text() == "hello\n"
    assert isinstance(first["first_mount_s"], float) and first["find_entries"] == 6
    marker = bundle / "rootfs" / "marker"
    marker.write_text("kept")  # an unpack again would remove it
    again = run_unpacked(tiny, tmp_path, keep=True)
    assert marker.exists()
    assert (again["first_mount_s"], again["disk_bytes"]) == (
        first["first_mount_s"],
        first["disk_bytes"],
    )
    assert again["find_entries"] == 7  # the marker: the very tree kept was walked
    other = Image("tiny", tiny.info, tiny.layout, tiny.blobs[:1], tiny.files)
    assert "first_mount_s" in run_unpacked(other, tmp_path, keep=True)
    assert not marker.exists()
    run_unpacked(tiny, tmp_path)
    assert not bundle.exists()  # without --keep-unpacked the tree goes, as before


def test_a_cold_read_is_the_median_of_its_rounds() -> None:
    """Each round's figure is kept (for --json) and the median is the table's; one failed
    round's cell stands for the figure, as a single failed read did."""
    key, other = "seq_cold_mb_s:f", "random_median_ms:f"
    out: dict[str, Cell] = {}
    for value in (500.0, 300.0, 400.0):
        out[key], out[other] = value, 0.5
        keep_round(out, [key])
    assert out[f"{key}_rounds"] == [500.0, 300.0, 400.0] and f"{other}_rounds" not in out
    assert median_of_rounds(out, key) == 400.0
    assert median_of_rounds(out, other) == 0.5  # not read in rounds: as it was
    failed: dict[str, Cell] = {}
    for value in (500.0, "failed: read 3 bytes of 9", 400.0):
        failed[key] = value
        keep_round(failed, [key])
    assert median_of_rounds(failed, key) == "failed: read 3 bytes of 9"
    assert SEQ_ROUNDS >= 3  # a median of fewer says no more than one read


def test_a_mount_that_fails_leaves_one_line_cells(
    derived: dict[str, Image], tmp_path: Path
) -> None:
    """What an ocifs that cannot read a format yet does to the table: failed cells, no crash."""
    mounter = Mounter(tmp_path / "mnt", tmp_path / "logs")
    failing = ["sh", "-c", "echo 'ocifs: error: zstd layers are not supported' >&2; exit 1"]
    out = run_fuse_tool(
        FuseTool("ocifs", failing, failing, tmp_path / "cache"), derived["tiny-zstd"], mounter
    )
    expected = "failed: ocifs: error: zstd layers are not supported (exit 1 before mounting)"
    assert out["first_mount_s"] == out["find_s"] == out["later_mount_s"] == expected
    assert out["disk_bytes"] == expected  # not the size of a cache it never wrote
    assert out["seq_cold_mb_s:etc/deep/big"] == out["random_median_ms:etc/deep/big"] == expected
    assert not mounter.mounted()


def test_ratarmount_is_not_asked_to_mount_a_tarball(
    derived: dict[str, Image], tmp_path: Path
) -> None:
    results = measure_image(
        derived["tiny-docker"],
        Contenders(["ocifs"], True, "failed: not here", Path("/no/ratarmount"), "", True),
        tmp_path,
        Mounter(tmp_path / "mnt", tmp_path / "logs"),
        {},
    )
    assert results["ratarmount"] == {"first_mount_s": FORMATS["docker-archive"].ratarmount}
    assert results["ocifs"] == {"first_mount_s": "failed: not here"}
    assert results["unpacked"] == {"first_mount_s": "skipped"}
    assert isinstance(results["sha256"]["first_mount_s"], float)


def test_report_rows_of_the_derived_formats(derived: dict[str, Image]) -> None:
    def rows(name: str) -> dict[str, Row]:
        return {row.key: row for row in rows_for(derived[name], ocifs_cached=True)}

    zstd, chunked, docker = rows("tiny-zstd"), rows("tiny-chunked"), rows("tiny-docker")
    first = zstd["first_mount_s"]
    assert first.label == "first mount [s] (umoci: unpack; floor: zstd -dc)"
    assert (first.floor, first.target) == ("zstd", "<= 1.0x zstd -dc")
    assert verdict(first, 1.0, None, 2.0) == ("<= 1.0x zstd -dc: met", True)  # no ratarmount
    assert verdict(first, 2.5, 9.0, 2.0)[1] is False
    assert chunked["first_mount_s"].floor == "zstd"
    assert (docker["first_mount_s"].floor, docker["first_mount_s"].target) == ("sha256", "")
    median = "random_median_ms:etc/deep/big"
    assert (zstd[median].target, chunked[median].target, docker[median].target) == (
        "",
        "< 1 ms",
        "< 1 ms",
    )
    table = Table()
    table.add(first, {"ocifs": {"first_mount_s": 3.0}, "zstd": {"first_mount_s": 2.0}})
    assert table.lines[0][4:7] == ["2.00", "-", "1.50x"]
    assert table.cell(FORMATS["docker-archive"].ratarmount, 1.0) == "n/a [1]"
    assert image_heading("tiny-chunked", derived["tiny-chunked"].info).startswith(
        "== tiny-chunked: 2 zstd:chunked layers, "
    )
    header = header_lines("2 cores", {}, {"tiny-docker": derived["tiny-docker"].info}, "")
    assert header[2].endswith(
        "bytes uncompressed (2 tar layers in a docker-archive tarball, from tiny by skopeo copy)"
    )
    legend = legend_lines(contenders(), derived)
    assert legend[0].startswith(
        "floor: gzip -dc for gzip, zstd -dc for zstd, zstd -dc for zstd:chunked, sha256 "
        "(hashlib) for docker-archive, of every blob"
    )
    assert any(line.startswith("images named BASE-zstd") for line in legend)


def test_imagediff_paths_of_diff_r_and_of_ocifs_diff_agree() -> None:
    """bench.imagediff's check: diff -rq names the top of a tree only one side has, and
    not mode changes; ocifs diff's lines are reduced to the same."""
    from bench.imagediff import diff_r_tops, ocifs_tops

    a, b = Path("/m/a"), Path("/m/b")
    output = "\n".join(
        [
            "Only in /m/b: new",
            "Only in /m/a/etc: gone",
            "Files /m/a/etc/x and /m/b/etc/x differ",
            "Symbolic links /m/a/l and /m/b/l differ",
            "File /m/a/t is a directory while file /m/b/t is a regular file",
        ]
    )
    assert diff_r_tops(output, a, b) == {"new", "etc/gone", "etc/x", "l", "t"}
    lines = [
        "A\tnew",
        "A\tnew/1",
        "D\tetc/gone",
        "M\tetc/mode\t(mode)",
        "M\tetc/x\t(size,content)",
        "M\tl\t(target)",
        "M\tt\t(type)",
        "D\tt/inner",
    ]
    assert ocifs_tops(lines) == {"new", "etc/gone", "etc/x", "l", "t"}
    with pytest.raises(BenchError):
        diff_r_tops("something else", a, b)
