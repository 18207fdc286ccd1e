"""Run the benchmark's steps: commands with a timeout, progress lines, failures as table cells."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STEP_TIMEOUT = 1200.0
MOUNT_TIMEOUT = 1800.0

Cell = float | int | bool | str | list[float] | None  # a number, "failed: ...", a note, ...

STARTED = time.monotonic()


class ElapsedFormatter(logging.Formatter):
    """A progress line as ``[  12.3s] message``: seconds since the run started."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.monotonic() - STARTED:6.1f}s] {record.getMessage()}"


def show_progress() -> None:
    """Progress of every ``bench`` module goes to stderr, the table alone to stdout."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ElapsedFormatter())
    top = logging.getLogger("bench")
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    top.propagate = False


class BenchError(Exception):
    """A step failed; the message is one line for the table."""


def one_line(error: BaseException | str) -> str:
    """The first non-blank line of an error, or how long the command ran before it timed out."""
    if isinstance(error, subprocess.TimeoutExpired):
        return f"{Path(str(error.cmd[0])).name} timed out after {error.timeout:.0f} s"
    text = str(error) if isinstance(error, str) else (str(error) or type(error).__name__)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


def last_line(text: str) -> str:
    """The last non-blank line of a command's output: usually the error it died of."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@contextlib.contextmanager
def step(store: dict[str, Cell], keys: list[str], what: str) -> Iterator[None]:
    """Run a block; if it fails, each of ``keys`` it did not set gets "failed: <why>"."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        message = f"failed: {one_line(error)}"
        logger.info(f"{what}: {message}")
        for key in keys:
            store.setdefault(key, message)


def run(
    argv: list[str], timeout: float = STEP_TIMEOUT, **kwargs: Any
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command to its end, output captured: wall seconds and the result."""
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    return time.monotonic() - started, result


def checked(
    argv: list[str], what: str, timeout: float = STEP_TIMEOUT
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``run``, and a BenchError with the last line of its output if the command failed."""
    seconds, result = run(argv, timeout)
    if result.returncode != 0:
        raise BenchError(
            f"{what} exited {result.returncode}: {last_line(result.stderr or result.stdout)}"
        )
    return seconds, result
