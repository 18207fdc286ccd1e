"""The fuzzer (``fuzz/``, ``scripts/fuzz``): its parts without a mount, every seed mounted
clean, a saved case replayed, and a one-minute run that must end with every case clean.

The one-minute run is the suite's fuzz: a fixed seed (``OCIFS_FUZZ_SEED`` to choose another),
so a failure is reproduced by running it again, and every failing case is kept with
``case.json`` for ``scripts/fuzz --replay``. It asserts that every case was a clean refusal
or a correct mount: zero tracebacks, hangs, stale mounts and host paths touched, and none of
the findings already known either (B3, B4, P4, T4-T6, V1).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fuzz import hostpaths, tarbytes
from fuzz import mutations as mu
from fuzz.build import Planned, build, reference_decode
from fuzz.classify import CLEAN, classify
from fuzz.runner import Case, CaseSpec, Observation, Settings, plan_case, remove_case_dir
from fuzz.seeds import make_tar, seeds
from fuzz.walker import Walk

REPO = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("OCIFS_FUZZ_SEED", "11"))
OCIFS = [sys.executable, "-m", "ocifs"]


def plain_tar(*names: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            data = name.encode() * 100
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- tar bytes ----------------------------------------------------------------------------


def test_headers_follow_sizes() -> None:
    tar = plain_tar("a", "bb", "ccc")
    found = tarbytes.headers(tar)
    assert [h.name for h in found] == [b"a", b"bb", b"ccc"]
    assert [h.size for h in found] == [100, 200, 300]
    assert tarbytes.body_end(tar) == found[-1].end == 3 * 1024


def test_field_edits_keep_the_checksum_right() -> None:
    tar = plain_tar("a", "bb")
    edited = tarbytes.set_field(tar, 0, "uid", tarbytes.octal(4242, 8))
    with tarfile.open(fileobj=io.BytesIO(edited)) as archive:
        assert [m.uid for m in archive.getmembers()] == [4242, 0]
    broken = tarbytes.set_field(tar, 0, "uid", tarbytes.octal(4242, 8), fix=False)
    with pytest.raises(tarfile.ReadError), tarfile.open(fileobj=io.BytesIO(broken)) as archive:
        archive.getmembers()


def test_pax_records_count_their_own_length() -> None:
    for value in (b"", b"x" * 5, b"y" * 94, b"z" * 995):
        record = tarbytes.pax_record(b"path", value)
        length = int(record.split(b" ", 1)[0])
        assert length == len(record) and record.endswith(value + b"\n")


# --- building cases ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(seeds()))
def test_clean_builds_describe_their_blobs(tmp_path: Path, name: str) -> None:
    built = build(seeds()[name], [], True, tmp_path)
    assert built.trees and not built.stale and built.streams
    if built.store.is_dir() and (built.store / "blobs").is_dir():
        for blob in (built.store / "blobs" / "sha256").iterdir():
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_damage_reaches_the_parsers_with_digests_recomputed(tmp_path: Path) -> None:
    """A flipped gzip byte: with recompute the blob is named by its new digest (not stale);
    without, by the old one (stale), and the stream the reference decoder gave is kept."""
    seed = seeds()["gzip2"]
    plan = [Planned("gzip", "variant", (0, 1), 7)]
    fresh = build(seed, plan, True, tmp_path / "fresh")
    assert not fresh.stale and fresh.trees, "a valid variant leaves the stream as it was"
    plan = [Planned("tar", "number", (0, 1), 3)]
    old = build(seed, plan, False, tmp_path / "old")
    assert old.stale == {0} and not old.trees


def test_reference_decoder_is_strict() -> None:
    blob = gzip.compress(b"hello", mtime=0)
    assert reference_decode(blob + gzip.compress(b" world", mtime=0), "gzip") == b"hello world"
    assert reference_decode(blob + b"\0", "gzip") is None
    assert reference_decode(blob[:-1], "gzip") is None
    assert reference_decode(mu.zstd(b"abc"), "zstd") == b"abc"
    assert reference_decode(mu.zstd(b"abc") + b"x", "zstd") is None


def test_cases_are_drawn_from_their_seed() -> None:
    first = [plan_case(n, True).to_json() for n in range(50)]
    assert first == [plan_case(n, True).to_json() for n in range(50)]
    assert len({json.dumps(case) for case in first}) == 50
    stages = {p["stage"] for case in first for p in case["plan"]}
    assert {"tar", "json"} <= stages


def test_every_mutation_runs_on_its_stage(tmp_path: Path) -> None:
    """Each table entry applies to a seed without raising, many seeds over."""
    stream = make_tar(seeds()["gzip2"].images[0].layers[1].members)
    for name, mutator in mu.TAR.items():
        for number in range(20):
            out, note = mutator.apply(random.Random(number), stream)
            assert isinstance(out, bytes) and note, name
    blob = mu.zstd(stream)
    for name, mutator in mu.ZSTD.items():
        for number in range(10):
            assert mutator.apply(random.Random(number), blob)[1], name
    doc = {"schemaVersion": 2, "layers": [{"digest": "sha256:" + "0" * 64, "size": 1}]}
    for name, json_mutator in mu.JSON.items():
        for number in range(20):
            assert json_mutator.apply(random.Random(number), json.loads(json.dumps(doc)))[1], name


# --- classification ------------------------------------------------------------------------


def outcome_of(tmp_path: Path, **seen: object) -> str:
    spec = CaseSpec(1, "gzip2", [], True, False, False, False)
    built = build(seeds()["gzip2"], [], True, tmp_path)
    observation = Observation(["ocifs", "mount"])
    for key, value in seen.items():
        setattr(observation, key, value)
    return classify(spec, built, observation).primary


def test_classes_from_what_was_seen(tmp_path: Path) -> None:
    one = "ocifs: error: layer 0 (sha256:ab): bad header checksum field at offset 0"
    assert outcome_of(tmp_path / "a", exit_code=1, stderr=one) == "refused"
    assert (
        outcome_of(tmp_path / "b", exit_code=1, stderr="ocifs: error: " + "n" * 5000)
        == "long-message"
    )
    usage = "usage: ocifs mount [-h]\nocifs mount: error: argument --read-cache: not a size: '-1'"
    assert outcome_of(tmp_path / "c", exit_code=2, stderr=usage) == "size-option-message"
    internal = "ocifs: internal error: KeyError: 'x'"
    assert outcome_of(tmp_path / "d", exit_code=1, stderr=internal) == "traceback"
    assert outcome_of(tmp_path / "e", exit_code=-11, stderr="") == "crash"
    assert (
        outcome_of(tmp_path / "f", exit_code=1, stderr="Traceback (most recent call last):\n  x")
        == "traceback"
    )
    log = (
        "2025-01-01 00:00:00,000 ocifs[1] ERROR ocifs.fuse_ops: listxattr failed\n"
        "Traceback (most recent call last):\nValueError: embedded null byte"
    )
    walk = {"entries": {}, "problems": [{"kind": "errno", "path": "x", "detail": "listxattr: EIO"}]}
    assert (
        outcome_of(tmp_path / "g", mounted=True, exit_code=0, log=log, walk=walk)
        == "xattr-kernel-rejects"
    )
    critical = "2025-01-01 00:00:00,000 ocifs[1] CRITICAL ocifs.daemon: internal error"
    assert (
        outcome_of(tmp_path / "h", mounted=True, exit_code=0, log=critical, walk=walk)
        == "traceback"
    )
    assert (
        outcome_of(
            tmp_path / "i", hang="mount", hang_detail="1:wait_for_partner:257", cache_note="x: fifo"
        )
        == "cache-not-regular"
    )
    assert outcome_of(tmp_path / "j", hang="walk", hang_detail="1:fuse_wait:0") == "hang"
    assert outcome_of(tmp_path / "k", exit_code=1, stderr=one, stale=["still mounted"]) == "stale"
    assert (
        outcome_of(tmp_path / "l", exit_code=1, stderr=one, canary_changed=["/tmp/x"])
        == "host-path"
    )
    # A symlinked blob followed out of the layout, then refused on its digest (as ocifs did
    # before it refused such links unopened): a host path, not a clean refusal.
    followed = [hostpaths.Touch("openat", str(mu.CANARY_SECRET), "store")]
    assert outcome_of(tmp_path / "m", exit_code=1, stderr=one, touches=followed) == "host-path"


def test_what_no_verify_and_live_damage_may_serve(tmp_path: Path) -> None:
    """Bytes that are not the image's: a failure, unless --no-verify was asked for a store
    changed after its digests; under a live mount's damage, the known finding (V1)."""
    built = build(seeds()["docker-archive"], [], True, tmp_path)
    built.trees = []  # the walk below found one file only: judge the bytes alone
    walk = {
        "entries": {},
        "problems": [{"kind": "wrong-bytes", "path": "f", "detail": "in no layer stream"}],
    }
    observation = Observation(["ocifs", "mount", "--no-verify"], exit_code=0, mounted=True)
    observation.walk = walk
    cases = [
        ([Planned("archive-tar", "flip", (), 1)], True, "no-verify-unchecked"),
        ([Planned("archive-tar", "flip", (), 1)], False, "wrong-bytes"),
        ([Planned("live", "damage", (), 1)], False, "live-damage-served"),
        ([], True, "wrong-bytes"),
    ]
    for plan, no_verify, want in cases:
        observation.command = ["ocifs", "mount", *(["--no-verify"] if no_verify else [])]
        spec = CaseSpec(1, "docker-archive", plan, True, no_verify, False, False)
        assert classify(spec, built, observation).primary == want, (plan, no_verify)


def test_a_layer_taken_out_of_both_lists_is_an_image_too(tmp_path: Path) -> None:
    plan = [
        Planned("json", "delete", ("config", 0), 1),
        Planned("json", "delete", ("docker-manifest", 0), 2),
    ]
    built = build(seeds()["docker-dir"], plan, True, tmp_path)
    assert len(built.trees) == 3  # the image, and each of its two layers alone


# --- host paths -----------------------------------------------------------------------------


def traced(tmp_path: Path, *command: str) -> str:
    out = tmp_path / "trace.txt"
    subprocess.run(
        [*hostpaths.STRACE, "-o", str(out), *command], check=True, capture_output=True, cwd=tmp_path
    )
    return out.read_text()


def test_strace_sees_a_host_path_and_the_way_it_was_reached(tmp_path: Path) -> None:
    hostpaths.place_canary(mu.CANARY_SECRET)
    store = tmp_path / "layout"
    store.mkdir()
    (store / "own").write_text("own")
    (store / "link").symlink_to(mu.CANARY_SECRET)
    policy = hostpaths.Policy(tmp_path, store, tmp_path / "cache", [], frozenset())
    script = f"open({str(store / 'own')!r}).read(); open({str(store / 'link')!r}).read()"
    touches = hostpaths.check_trace(
        traced(tmp_path, sys.executable, "-S", "-c", script), policy, str(tmp_path)
    )
    assert [(t.path, t.via) for t in touches if t.syscall == "openat"] == [
        (str(mu.CANARY_SECRET), "store")
    ]
    direct = f"open({str(mu.CANARY_SECRET)!r}).read(); open('/etc/hostname').read()"
    touches = hostpaths.check_trace(
        traced(tmp_path, sys.executable, "-S", "-c", direct), policy, str(tmp_path)
    )
    paths = {t.path for t in touches if not t.via}
    assert {str(mu.CANARY_SECRET), "/etc/hostname"} <= paths


def test_walker_finds_foreign_bytes_leaks_and_long_paths(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "good").write_bytes(b"bytes of the stream")
    (root / "d" / "foreign").write_bytes(b"bytes from nowhere")
    (root / "leak").write_bytes(b"x" + mu.CANARY_TOKEN)
    fd = os.open(root, os.O_RDONLY)
    for _ in range(17):  # 17 levels of 250-byte names: a path over PATH_MAX, made by fds
        os.mkdir("n" * 250, dir_fd=fd)
        inner = os.open("n" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    walk = Walk([b"...bytes of the stream..." + b"x" + mu.CANARY_TOKEN])
    walk.walk(str(root))
    kinds = {(p["kind"], p["path"].split("/")[-1][:10]) for p in walk.problems}
    assert ("wrong-bytes", "foreign") in kinds and ("leak", "leak") in kinds
    assert ("wrong-bytes", "good") not in kinds
    assert any(kind == "long-path" for kind, _ in kinds)
    assert walk.entries["d/good"]["sha256"] == hashlib.sha256(b"bytes of the stream").hexdigest()


# --- with FUSE ------------------------------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.parametrize("name", sorted(seeds()))
def test_every_seed_mounts_clean(tmp_path: Path, name: str) -> None:
    """No mutation: each seed mounts and shows exactly its tree (foreground and background)."""
    settings = Settings(OCIFS, False)
    hostpaths.place_canary(mu.CANARY_SECRET)
    for background in (False, True):
        spec = CaseSpec(1, name, [], True, False, background, False)
        case = Case(spec, tmp_path, tmp_path / f"case-{background}", settings)
        built, observation = case.run()
        outcome = classify(spec, built, observation)
        assert outcome.primary == "mounted", outcome.classes
        remove_case_dir(case.dir)


@pytest.mark.fuse
def test_symlinked_blobs_leading_out_are_clean_refusals_with_nothing_touched(
    tmp_path: Path,
) -> None:
    """The fuzzer's symlinked blobs of a layout and of an unpacked docker save, run under
    strace: one leading out of the store (to the canary) is a clean refusal naming the link
    with no host path named or opened; the others refuse or mount, nothing touched. (ocifs
    used to open and hash the canary through a docker save's ``layer.tar``, whose size no
    descriptor gives, then refuse it on its digest: strace saw that open as ``host-path``.)"""
    settings = Settings(OCIFS, True, hostpaths.baseline(OCIFS, tmp_path))
    hostpaths.place_canary(mu.CANARY_SECRET)
    escaping = []
    for image, seed in [("gzip2", 0), ("gzip2", 1), *(("docker-dir", n) for n in range(4))]:
        plan = [Planned("files", "symlink", (), seed)]
        spec = CaseSpec(seed, image, plan, True, False, False, True)
        case = Case(spec, tmp_path, tmp_path / f"case-{image}-{seed}", settings)
        built, observation = case.run()
        outcome = classify(spec, built, observation)
        note = built.notes[0]
        assert observation.touches == [], (note, observation.touches)
        assert outcome.primary in ("refused", "mounted"), (note, outcome.classes)
        if mu.CANARY_NAME in note.rsplit(" -> ", 1)[1]:
            escaping.append(image)
            assert outcome.primary == "refused", (note, outcome.classes)
            assert "is a symlink to" in observation.stderr and ", out of " in observation.stderr
        remove_case_dir(case.dir)
    assert "gzip2" in escaping and "docker-dir" in escaping, escaping


def fuzz(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuzz", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.mark.fuse
def test_a_kept_case_replays(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = fuzz(
        "--seconds",
        "30",
        "--max-cases",
        "3",
        "--seed",
        str(SEED),
        "--keep-all",
        "--out",
        str(tmp_path / "out"),
        "--json",
        str(summary),
        timeout=300,
    )
    assert json.loads(summary.read_text())["cases"] == 3, result.stderr
    kept = sorted((tmp_path / "out" / "cases").iterdir())
    assert len(kept) == 3
    record = json.loads((kept[0] / "case.json").read_text())
    replayed = fuzz("--replay", str(kept[0]), timeout=300)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"outcome: {record['outcome']['primary']}" in replayed.stdout


@pytest.mark.fuse
def test_one_minute_of_fuzzing_ends_clean(tmp_path: Path) -> None:
    """scripts/fuzz --seconds 60: every case a clean refusal or a correct mount."""
    summary_file = tmp_path / "summary.json"
    out = tmp_path / "out"
    result = fuzz(
        "--seconds",
        "60",
        "--seed",
        str(SEED),
        "--out",
        str(out),
        "--json",
        str(summary_file),
        timeout=600,
    )
    summary = json.loads(summary_file.read_text())
    print(result.stdout)
    assert summary["cases"] >= 30, f"only {summary['cases']} cases in a minute"
    failing = {name: count for name, count in summary["classes"].items() if name not in CLEAN}
    examples = {name: summary["examples"][name] for name in failing}
    assert not failing, f"seed {SEED}: {failing}; kept: {examples}\n{result.stdout}"
    assert result.returncode == 0
