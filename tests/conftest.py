"""Shared test setup: tests never use the user's index cache or state dir, nor each other's.

ocifs keeps layer indexes under ``$XDG_CACHE_HOME/ocifs`` and the daemons' logs under
``$XDG_STATE_HOME/ocifs``. A test that damages a blob must not find the index another test
built for the same digest, a test that reads a log must find only its own daemon's lines, and
no test may write to the user's real directories. So the session points XDG_CACHE_HOME and
XDG_STATE_HOME (inherited by the ocifs subprocesses) at directories of its own, for
module-scoped fixtures, and each test at empty ones of its own. Tests of the cache itself pass
``--cache-dir`` explicitly.

Tests that mount a real FUSE filesystem carry the ``fuse`` marker. Where /dev/fuse is missing
they are skipped, so the pure core can be tested anywhere, unless OCIFS_REQUIRE_FUSE=1 (set by
.ci/run): then they run and fail, and CI can never pass with its FUSE tests skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SESSION_CACHE_HOME = tempfile.mkdtemp(prefix="ocifs-test-cache-")
SESSION_STATE_HOME = tempfile.mkdtemp(prefix="ocifs-test-state-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["XDG_CACHE_HOME"] = SESSION_CACHE_HOME
    os.environ["XDG_STATE_HOME"] = SESSION_STATE_HOME


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.path.exists("/dev/fuse") or os.environ.get("OCIFS_REQUIRE_FUSE") == "1":
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse (set OCIFS_REQUIRE_FUSE=1 to fail instead)")
    for item in items:
        if item.get_closest_marker("fuse") is not None:
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_CACHE_HOME, ignore_errors=True)
    shutil.rmtree(SESSION_STATE_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_index_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    cache_home = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home / "ocifs"


@pytest.fixture(autouse=True)
def private_log_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Where this test's daemons write their default log files."""
    state_home = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    return state_home / "ocifs"
