"""Shared test setup: tests never use the user's index cache, nor each other's.

ocifs keeps layer indexes under ``$XDG_CACHE_HOME/ocifs``. A test that damages a blob must
not find the index another test built for the same digest, and no test may write to the
user's real cache. So the session points XDG_CACHE_HOME (inherited by the ocifs
subprocesses) at a directory of its own, for module-scoped fixtures, and each test at an
empty one of its own. Tests of the cache itself pass ``--cache-dir`` explicitly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SESSION_CACHE_HOME = tempfile.mkdtemp(prefix="ocifs-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["XDG_CACHE_HOME"] = SESSION_CACHE_HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_CACHE_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_index_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    cache_home = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home / "ocifs"
