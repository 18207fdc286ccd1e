"""The daemon's parts without a mount: log file names and places, where the log goes once the
daemon is in the background, the mount options, and what an internal error leaves behind."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from impostors import KINDS, no_hang, put_in_place

from ocifs import daemon, daemonlog
from ocifs.errors import OcifsError
from ocifs.layout import ResolvedImage

HASHED = re.compile(r"(.*)-[0-9a-f]{12}\.log")


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("/mnt/img", "mnt-img.log"),
        ("/mnt", "mnt.log"),
        ("/srv/images/debian_12.1", "srv-images-debian_12.1.log"),
    ],
)
def test_a_plain_mount_point_names_its_log_as_it_is(target: str, name: str) -> None:
    assert daemonlog.log_file_name(target) == name


@pytest.mark.parametrize(
    ("target", "readable"),
    [
        ("/", "root"),
        ("/mnt/a-b", "mnt-a-b"),  # '-' in a component: not to be taken for /mnt/a/b
        ("/mnt/my img", "mnt-my_img"),
        ("/mnt/na\u00efve", "mnt-na_ve"),
        ("/mnt/caf\udce9", "mnt-caf_"),  # a name that is not UTF-8, as os.fsdecode gives it
        ("/.hidden/x", "hidden-x"),  # not a hidden file
        ("/mnt/new\nline", "mnt-new_line"),
    ],
)
def test_other_mount_points_get_a_safe_name_and_a_hash(target: str, readable: str) -> None:
    name = daemonlog.log_file_name(target)
    match = HASHED.fullmatch(name)
    assert match is not None, name
    assert match.group(1) == readable
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert not name.startswith(".")


def test_names_of_different_mount_points_differ() -> None:
    targets = ["/mnt/a-b", "/mnt/a/b", "/mnt/a_b", "/mnt/a b", "/mnt/a?b", "/", "/root"]
    names = {daemonlog.log_file_name(target) for target in targets}
    assert len(names) == len(targets)


def test_a_long_mount_point_keeps_its_end_and_fits() -> None:
    deep = "/" + "/".join(f"level{i}" for i in range(60)) + "/mnt"
    name = daemonlog.log_file_name(deep)
    match = HASHED.fullmatch(name)
    assert match is not None, name
    assert len(match.group(1)) <= daemonlog.LOG_NAME_MAX
    assert match.group(1).endswith("level58-level59-mnt")
    assert daemonlog.log_file_name("/x" + deep) != name  # differs only where the name was cut


def test_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert daemonlog.default_state_dir() == tmp_path / "ocifs"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for ignored in ("", "relative/dir"):
        monkeypatch.setenv("XDG_STATE_HOME", ignored)
        assert daemonlog.default_state_dir() == tmp_path / "home/.local/state/ocifs"


def test_default_log_is_in_the_state_dir(private_log_dir: Path) -> None:
    opened = daemonlog.open_log(None, "/mnt/img", foreground=False)
    assert opened is not None
    path, fd = opened
    os.close(fd)
    assert path == private_log_dir / "mnt-img.log"
    assert (path.stat().st_mode & 0o777, private_log_dir.stat().st_mode & 0o777) == (0o600, 0o700)


def test_default_log_falls_back_to_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_index_cache: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))  # cannot be created
    opened = daemonlog.open_log(None, "/mnt/img", foreground=False)
    assert opened is not None
    os.close(opened.fd)
    assert opened.path == private_index_cache / "mnt-img.log"


def test_no_writable_log_dir_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="ocifs"):
        assert daemonlog.open_log(None, "/mnt/img", foreground=False) is None
    assert "the daemon will log nowhere" in caplog.text
    assert str(blocker / "state/ocifs/mnt-img.log") in caplog.text


def test_log_file_option_and_foreground(tmp_path: Path, private_log_dir: Path) -> None:
    chosen = tmp_path / "chosen.log"
    opened = daemonlog.open_log(chosen, "/mnt/img", foreground=True)  # -f --log-file: the file
    assert opened is not None and opened.path == chosen
    os.close(opened.fd)
    assert daemonlog.open_log(None, "/mnt/img", foreground=True) is None  # -f: the terminal
    with pytest.raises(OcifsError, match=r"cannot open log file .*: No such file or directory"):
        daemonlog.open_log(tmp_path / "missing/dir/x.log", "/mnt/img", foreground=False)
    assert not private_log_dir.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_an_impostor_in_the_default_logs_place_is_passed_over(
    kind: str, private_log_dir: Path, private_index_cache: Path
) -> None:
    """A FIFO where the default log goes made the open wait forever for a reader; it, a
    symlink, a directory and another user's file are passed over for the cache dir's log."""
    if kind == "other-uid" and os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    private_log_dir.mkdir(parents=True)
    put_in_place(private_log_dir / "mnt-img.log", kind)
    with no_hang("open_log"):
        opened = daemonlog.open_log(None, "/mnt/img", foreground=False)
    assert opened is not None
    os.close(opened.fd)
    assert opened.path == private_index_cache / "mnt-img.log"
    assert opened.path.is_file() and not opened.path.is_symlink()


def test_a_log_file_option_naming_a_fifo_or_a_device(tmp_path: Path) -> None:
    """--log-file may name what the user wants, /dev/null or a FIFO someone reads, but a FIFO
    no one reads is one line, at once, not a hang."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with no_hang("open_log"), pytest.raises(OcifsError) as info:
        daemonlog.open_log(fifo, "/mnt/img", foreground=False)
    assert str(info.value) == f"cannot open log file {fifo}: a FIFO that no one reads"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        opened = daemonlog.open_log(fifo, "/mnt/img", foreground=False)
        assert opened is not None and os.get_blocking(opened.fd)
        os.write(opened.fd, b"line\n")
        os.close(opened.fd)
        assert os.read(reader, 100) == b"line\n"
    finally:
        os.close(reader)
    opened = daemonlog.open_log(Path("/dev/null"), "/mnt/img", foreground=False)
    assert opened is not None
    os.close(opened.fd)


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ocifs\[\d+\] (\w+) ([\w.]+): (.*)")


@pytest.mark.parametrize("debug", [False, True])
def test_once_logging_to_the_file_fds_1_and_2_go_there_too(tmp_path: Path, debug: bool) -> None:
    """Run in a child: log_to_file takes over the process's stdout and stderr."""
    log = tmp_path / "daemon.log"
    log.write_text("an earlier mount's line\n")
    script = f"""
        import logging, os
        from pathlib import Path
        from ocifs import daemonlog
        daemonlog.log_to_terminal({debug})
        daemonlog.log_to_file(daemonlog.open_log_file(Path({str(log)!r})), {debug})
        logger = logging.getLogger("ocifs.test")
        logger.warning("a warning")
        logger.info("some news")
        print("a stray print")
        os.write(2, b"what C code writes\\n")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier mount's line"
    matches = [LOG_LINE.fullmatch(line) for line in lines]
    logged = [match.groups() for match in matches if match is not None]
    assert ("WARNING", "ocifs.test", "a warning") in logged
    assert (("INFO", "ocifs.test", "some news") in logged) == debug
    assert "what C code writes" in lines
    assert "a stray print" in lines


def test_a_crash_in_c_code_leaves_its_traceback_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    script = f"""
        import ctypes
        from pathlib import Path
        from ocifs import daemonlog
        daemonlog.log_to_file(daemonlog.open_log_file(Path({str(log)!r})), False)
        ctypes.string_at(0)  # a segfault
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    assert result.returncode < 0 and result.stderr == ""
    text = log.read_text()
    assert "Fatal Python error: Segmentation fault" in text
    assert "ctypes" in text  # the Python stack at the crash


def test_mount_options() -> None:
    options = daemon.mount_options("./layout:v1", ["allow_other,rw", "suid"])
    assert options == {
        "ro",
        "default_permissions",
        "fsname=./layout:v1",
        "subtype=ocifs",
        "allow_other",
        "suid",
    }
    assert "fsname=ocifs" in daemon.mount_options("/a dir,with comma:v1", [])
    with pytest.raises(OcifsError, match="-o max_read=4096 is not supported"):
        daemon.mount_options("x", ["ro,max_read=4096"])


def test_suid_and_dev_of_an_ordinary_user_are_said_not_to_be(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """-o suid,dev as an ordinary user: fusermount3 mounts nosuid,nodev without a word, so
    ocifs says so, in one line; root gets them, and no line."""
    with caplog.at_level(logging.WARNING, logger="ocifs.daemon"):
        monkeypatch.setattr(daemon.os, "geteuid", lambda: 0)
        daemon.mount_options("x", ["suid,dev"])
        assert caplog.records == []
        monkeypatch.setattr(daemon.os, "geteuid", lambda: 1000)
        daemon.mount_options("x", ["allow_other"])
        assert caplog.records == []
        daemon.mount_options("x", ["suid", "dev,allow_other"])
        daemon.mount_options("x", ["dev"])
    assert [r.getMessage() for r in caplog.records] == [
        "-o suid,dev: only root can mount with suid or dev; this mount is nosuid,nodev",
        "-o dev: only root can mount with dev; this mount is nosuid,nodev",
    ]


class FakeImage:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.resolved = ResolvedImage(Path("/layout"), "sha256:" + "0" * 64, "", {}, None, ())

    def close(self) -> None:
        self.events.append("image closed")


class RecordEvents(logging.Handler):
    def __init__(self, events: list[str]) -> None:
        super().__init__(logging.CRITICAL)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(f"{record.levelname} {record.getMessage()}")


@pytest.mark.parametrize("fails", [False, True])
def test_an_internal_error_is_logged_critical_before_the_unmount(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    events: list[str] = []

    def run(async_function: Any) -> None:  # no FUSE session here: the loop only fails
        if fails:
            raise RuntimeError("a bug in the loop")

    def close(unmount: bool) -> None:
        events.append(f"unmount={unmount}")

    monkeypatch.setattr(daemon.trio, "run", run)
    monkeypatch.setattr(daemon.pyfuse3, "close", close)
    handler = RecordEvents(events)
    logging.getLogger("ocifs").addHandler(handler)
    try:
        with caplog.at_level(logging.CRITICAL, logger="ocifs"):
            status = daemon.serve(FakeImage(events), Path("/mnt/img"))  # type: ignore[arg-type]
    finally:
        logging.getLogger("ocifs").removeHandler(handler)
    if not fails:
        assert (status, events) == (0, ["unmount=True", "image closed"])
        return
    assert status == 1
    assert events == [
        "CRITICAL internal error: the daemon stops and /mnt/img is unmounted",
        "unmount=True",
        "image closed",
    ]
    [record] = caplog.records
    assert record.exc_info is not None and "a bug in the loop" in caplog.text
    assert "Traceback" in caplog.text
