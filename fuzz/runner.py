"""Run one case: build it, mount it with the real ``ocifs`` command, walk and read what
mounted, unmount it, and collect everything ``classify`` needs to know.

Each case has a directory of its own: the store, a private ``--cache-dir``, the daemon's
``--log-file``, the mount point, the layer streams the walker checks against, and HOME and the
XDG directories pointed there. The mount runs in the foreground (``-f``: the test of the
command is its exit or the mount showing up in /proc/self/mounts, polled), or for a share of
the cases as users run it, in the background (the daemon is then found by its command line,
which names this case's mount point). Every wait has a timeout, and a timeout is a hang: the
kernel's wait channel and stack of the stuck process are kept, then it is killed. After the
walk, ``fusermount3 -u``; the daemon must then exit, and the mount point must be gone from
the mount table, or the mount is stale (and is then taken away lazily, the daemon killed).
Only processes this module started, or the daemon they forked, are ever killed, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocifs.mountinfo import unescape_mount_path

from . import hostpaths
from . import mutations as mu
from .build import Built, Planned, build
from .seeds import seeds

REPO = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 20.0
STRACE_TIMEOUT = 40.0
WALK_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 20.0
POLL = 0.02
FIFO_GRACE = 3.0  # seconds in open() of a fifo before a mount is taken as hung


@dataclass(frozen=True)
class Settings:
    ocifs: list[str]  # the command
    strace: bool  # strace is there to be used
    baseline: frozenset[str] = frozenset()  # what ocifs touches whatever the image (hostpaths)


@dataclass
class CaseSpec:
    """Everything that makes a case; ``plan_case`` draws it from the case's seed."""

    seed: int
    image: str
    plan: list[Planned]
    recompute: bool
    no_verify: bool
    background: bool
    strace: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "image": self.image,
            "plan": [p.to_json() for p in self.plan],
            "recompute": self.recompute,
            "no_verify": self.no_verify,
            "background": self.background,
            "strace": self.strace,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> CaseSpec:
        return CaseSpec(
            int(data["seed"]),
            data["image"],
            [Planned.from_json(p) for p in data["plan"]],
            bool(data["recompute"]),
            bool(data["no_verify"]),
            bool(data["background"]),
            bool(data["strace"]),
        )


# Stage -> weight, for the stages every seed has; gzip, zstd and the archive's own stages are
# added where the seed has such layers or is an archive.
STAGE_WEIGHTS = {"tar": 36, "json": 20, "files": 7, "cache": 6, "live": 5, "options": 5}
# Mutations that aim out of the tree or the layout: such cases always run under strace.
ESCAPING = {
    ("tar", "insert"),
    ("tar", "linkname"),
    ("tar", "name"),
    ("json", "path"),
    ("files", "symlink"),
}
STRACE_SHARE = 0.5
MOUNTED_SHARE = 0.75  # of the mutations aimed at one image: at the one mounted


def plan_case(case_seed: int, strace_available: bool) -> CaseSpec:
    """The case drawn from ``case_seed``: the same seed always gives the same case."""
    rng = random.Random(case_seed)
    all_seeds = seeds()
    name = rng.choice(sorted(all_seeds))
    seed = all_seeds[name]
    layers = [
        (i, j, layer) for i, image in enumerate(seed.images) for j, layer in enumerate(image.layers)
    ]
    weights = dict(STAGE_WEIGHTS)
    if any(layer.compression == "gzip" for _, _, layer in layers):
        weights["gzip"] = 12
    if any(layer.compression.startswith("zstd") for _, _, layer in layers):
        weights["zstd"] = 12
    if seed.form in ("oci-archive-gz", "docker-archive"):
        weights["archive-tar"] = 8
    if seed.form == "oci-archive-gz":
        weights["archive-gz"] = 4
    count = rng.choices([0, 1, 2, 3], weights=[3, 70, 20, 7])[0]
    plan = []
    for _ in range(count):
        stage = rng.choices(list(weights), weights=list(weights.values()))[0]
        target: tuple[Any, ...] = ()
        # Mostly the image that is mounted (the first), sometimes another one of the store.
        image = 0 if rng.random() < MOUNTED_SHARE else rng.randrange(len(seed.images))
        if stage in ("tar", "gzip", "zstd"):
            fitting = [
                (i, j)
                for i, j, layer in layers
                if stage == "tar" or layer.compression.startswith(stage)
            ]
            target = rng.choice([t for t in fitting if t[0] == image] or fitting)
        elif stage == "json":
            docs = documents(seed.form, len(seed.images))
            target = rng.choice([d for d in docs if d[1] == image] or docs)
        table: dict[str, Any] = mu.TABLES[stage]
        plan.append(Planned(stage, mu.pick(rng, table), target, rng.randrange(1 << 32)))
    escaping = any((p.stage, p.name) in ESCAPING for p in plan)
    return CaseSpec(
        seed=case_seed,
        image=name,
        plan=plan,
        recompute=rng.random() < 0.85,
        no_verify=rng.random() < 0.1,
        background=rng.random() < 0.25,
        strace=strace_available and (escaping or rng.random() < STRACE_SHARE),
    )


def documents(form: str, images: int) -> list[tuple[str, int]]:
    """The JSON documents a form has, as json mutation targets."""
    if form in ("docker-archive", "docker-dir"):
        return [("docker-manifest", 0), *(("config", i) for i in range(images))]
    docs = [("index", 0), ("oci-layout", 0)]
    docs += [(kind, i) for i in range(images) for kind in ("manifest", "config")]
    if form == "index2":
        docs.append(("subindex", 0))
    return docs


@dataclass
class Observation:
    """What happened when a case was mounted, walked and unmounted."""

    command: list[str]
    exit_code: int | None = None  # of ``ocifs mount`` (in the foreground: after unmount)
    stderr: str = ""
    log: str = ""
    mounted: bool = False
    mount_options: str = ""
    hang: str = ""  # where: index, mount, walk, unmount
    hang_detail: str = ""
    walk: dict[str, Any] | None = None
    walk_tail: str = ""
    stale: list[str] = field(default_factory=list)
    touches: list[hostpaths.Touch] = field(default_factory=list)
    canary_changed: list[str] = field(default_factory=list)
    cache_note: str = ""
    killed: bool = False  # the fuzzer killed what was left (after a hang, or a stale mount)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("touches", "walk")}
        data["touches"] = [t.describe() for t in self.touches]
        data["walk_problems"] = (self.walk or {}).get("problems", [])
        return data


def mounted_options(mountpoint: Path) -> str | None:
    """The options of the mount at ``mountpoint`` in the mount table; None if not mounted."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 3 and unescape_mount_path(fields[1]) == target:
                found = fields[3]
    return found


def stuck(pid: int) -> str:
    """Where a process and its threads wait in the kernel (wchan, and the stack as root)."""
    parts = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError):
            wchan = (task / "wchan").read_text().strip()
            syscall = (task / "syscall").read_text().split()[0]
            parts.append(f"{task.name}:{wchan}:{syscall}")
    with contextlib.suppress(OSError):
        stack = Path(f"/proc/{pid}/stack").read_text().split()
        parts.append("stack " + " ".join(s for s in stack if "+" in s)[:300])
    return " ".join(parts)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (through /proc's children lists)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def daemons_of(mountpoint: Path) -> list[int]:
    """Processes whose command line names this case's mount point: its ocifs daemon."""
    needle = os.fsencode(str(mountpoint))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(
    condition: Callable[[], bool], timeout: float, hung: Callable[[], bool] | None = None
) -> bool:
    """Whether ``condition`` came true within ``timeout``; ``hung`` (checked now and then
    after FIFO_GRACE) can tell sooner that it never will."""
    started = time.monotonic()
    checked = started
    while time.monotonic() - started < timeout:
        if condition():
            return True
        now = time.monotonic()
        if hung is not None and now - started > FIFO_GRACE and now - checked > 0.5:
            checked = now
            if hung():
                return bool(condition())
        time.sleep(POLL)
    return bool(condition())


def blocked_in_fifo(pids: list[int]) -> bool:
    """A process waiting in the kernel to open a fifo: nothing of a case will ever open
    its other end, so that is a hang already."""
    return any("wait_for_partner" in stuck(pid) or "fifo_open" in stuck(pid) for pid in pids)


class Case:
    """One case's directory and its run."""

    def __init__(self, spec: CaseSpec, run_dir: Path, case_dir: Path, settings: Settings) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.dir = case_dir
        self.settings = settings
        self.cache = case_dir / "cache"
        self.log = case_dir / "daemon.log"
        self.mnt = case_dir / "mnt"
        self.env = dict(os.environ)
        # Everything ocifs may write besides the cache and the log: inside the case too.
        homes = {
            "HOME": "home",
            "XDG_CACHE_HOME": "xdg-cache",
            "XDG_STATE_HOME": "xdg-state",
            "TMPDIR": "tmp",
        }
        for name, sub in homes.items():
            self.env[name] = str(case_dir / sub)
        self.env["PYTHONPATH"] = str(REPO)
        self.built: Built | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def run(self) -> tuple[Built, Observation]:
        started = time.monotonic()
        self.dir.mkdir(parents=True)
        self.mnt.mkdir()
        (self.dir / "tmp").mkdir()
        hostpaths.place_canary(self.dir / mu.CANARY_NAME)
        canaries = hostpaths.canary_paths(self.run_dir, self.dir)
        before = hostpaths.canary_state(canaries)
        built = build(seeds()[self.spec.image], self.spec.plan, self.spec.recompute, self.dir)
        self.built = built
        stream_files = []
        (self.dir / "streams").mkdir()
        for number, stream in enumerate(built.streams):
            path = self.dir / "streams" / f"{number}.tar"
            path.write_bytes(stream)
            stream_files.append(str(path))
        command = self.command(built)
        observation = Observation(command)
        try:
            self.mount_and_walk(built, command, observation, stream_files)
        finally:
            self.clean_up(observation)
        observation.log = self.log.read_text(errors="replace") if self.log.is_file() else ""
        after = hostpaths.canary_state(canaries)
        observation.canary_changed = [p for p in before if before[p] != after.get(p)]
        observation.seconds = time.monotonic() - started
        return built, observation

    def command(self, built: Built) -> list[str]:
        args = ["--cache-dir", str(self.cache), "--log-file", str(self.log)]
        if self.spec.no_verify:
            args.append("--no-verify")
        for planned in self.spec.plan:
            if planned.stage == "options":
                args, note = mu.OPTIONS[planned.name].apply(random.Random(planned.seed), args)
                built.notes.append(f"options: {note}")
        if "--no-cache" in args:  # the two are exclusive: what a user would write is one
            index = args.index("--cache-dir")
            del args[index : index + 2]
        foreground = [] if self.spec.background else ["-f"]
        return [*self.settings.ocifs, "mount", *foreground, *args, built.mount_arg, str(self.mnt)]

    def fill_cache(self, built: Built, observation: Observation) -> None:
        """For a cache mutation: index into the cache first, then damage it."""
        command = [*self.settings.ocifs, "index", "--cache-dir", str(self.cache)]
        if self.spec.no_verify:
            command.append("--no-verify")
        try:
            subprocess.run(
                [*command, built.mount_arg],
                capture_output=True,
                timeout=MOUNT_TIMEOUT,
                env=self.env,
                cwd=self.dir,
            )
        except subprocess.TimeoutExpired:
            observation.hang = "index"
            return
        for planned in self.spec.plan:
            if planned.stage == "cache":
                _, note = mu.CACHE[planned.name].apply(random.Random(planned.seed), self.cache)
                observation.cache_note = note
                built.notes.append(f"cache: {note}")

    def mount_and_walk(
        self, built: Built, command: list[str], observation: Observation, streams: list[str]
    ) -> None:
        if any(p.stage == "cache" for p in self.spec.plan):
            self.fill_cache(built, observation)
            if observation.hang:
                return
        traced = self.spec.strace and not self.spec.background
        full = command
        if traced:
            full = [*hostpaths.STRACE, "-o", str(self.dir / "strace.txt"), *command]
        stderr = (self.dir / "stderr.txt").open("w+b")
        process = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=self.env,
            cwd=self.dir,
            start_new_session=True,
        )
        self.process = process
        timeout = STRACE_TIMEOUT if traced else MOUNT_TIMEOUT
        done = wait_for(
            lambda: process.poll() is not None or mounted_options(self.mnt) is not None,
            timeout,
            lambda: blocked_in_fifo([process.pid, *children(process.pid)]),
        )
        options = mounted_options(self.mnt)
        if not done:
            observation.hang = "mount"
            observation.hang_detail = " | ".join(
                stuck(pid) for pid in [process.pid, *children(process.pid)]
            )
        elif options is not None:
            observation.mounted = True
            observation.mount_options = options
            # In the background, the command returns once the daemon has left it.
            if self.spec.background and not wait_for(
                lambda: process.poll() is not None, MOUNT_TIMEOUT
            ):
                observation.hang = "mount"
                observation.hang_detail = "mounted, but ocifs mount did not return"
            else:
                if self.spec.background:
                    observation.exit_code = process.returncode
                for planned in self.spec.plan:
                    if planned.stage == "live":
                        live = mu.LIVE[planned.name]
                        _, note = live.apply(random.Random(planned.seed), built.store)
                        built.notes.append(f"live: {note}")
                self.walk(observation, streams)
        if self.spec.background and process.poll() is not None and observation.exit_code is None:
            observation.exit_code = process.returncode
        stderr.seek(0)
        observation.stderr = stderr.read().decode(errors="replace")
        stderr.close()
        if traced and not observation.hang:
            self.trace(built, observation)

    def walk(self, observation: Observation, streams: list[str]) -> None:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "fuzz.walker", str(self.mnt), *streams],
                capture_output=True,
                timeout=WALK_TIMEOUT,
                env=self.env,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired as timeout:
            observation.hang = "walk"
            tail = (timeout.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            observation.walk_tail = tail[0] if tail else ""
            daemons = daemons_of(self.mnt)
            observation.hang_detail = " | ".join(stuck(pid) for pid in daemons)
            return
        try:
            observation.walk = json.loads(result.stdout)
        except ValueError:
            observation.walk = {
                "entries": {},
                "problems": [
                    {
                        "kind": "walker",
                        "path": "",
                        "detail": result.stderr.decode(errors="replace")[-500:],
                    }
                ],
            }

    def clean_up(self, observation: Observation) -> None:
        """Unmount as a user would; what does not go away by itself is stale and forced."""
        process = self.process
        daemons = daemons_of(self.mnt)
        if mounted_options(self.mnt) is not None:
            result = subprocess.run(
                ["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True
            )
            if not wait_for(lambda: mounted_options(self.mnt) is None, UNMOUNT_TIMEOUT):
                observation.stale.append(
                    f"still mounted after fusermount3 -u ({result.stderr.strip()[:200]})"
                )
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if not observation.hang and not wait_for(
            lambda: not any(alive(p) for p in daemons), UNMOUNT_TIMEOUT
        ):
            observation.stale.append("the daemon still runs after the unmount")
            observation.hang_detail = " | ".join(stuck(pid) for pid in daemons if alive(pid))
        if process is not None:
            left = [pid for pid in [process.pid, *children(process.pid)] if alive(pid)]
            observation.killed |= bool(left)
            kill(left)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=UNMOUNT_TIMEOUT)
            if not self.spec.background and observation.exit_code is None:
                observation.exit_code = process.returncode
        left = [pid for pid in daemons_of(self.mnt) if alive(pid)]
        observation.killed |= bool(left)
        kill(left)
        if mounted_options(self.mnt) is not None:
            observation.stale.append("still mounted once the daemon was gone")
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def trace(self, built: Built, observation: Observation) -> None:
        path = self.dir / "strace.txt"
        if not path.is_file():
            return
        allowed = [
            self.cache,
            self.log,
            self.mnt,
            self.dir / "stderr.txt",
            *(self.dir / sub for sub in ("home", "xdg-cache", "xdg-state", "tmp")),
        ]
        policy = hostpaths.Policy(
            self.dir, built.store, self.cache, allowed, self.settings.baseline
        )
        observation.touches = hostpaths.check_trace(
            path.read_text(errors="replace"), policy, str(self.dir)
        )


def remove_case_dir(case_dir: Path) -> None:
    """A finished case's directory, gone (never while anything is mounted in it)."""
    if mounted_options(case_dir / "mnt") is None:
        shutil.rmtree(case_dir, ignore_errors=True)
