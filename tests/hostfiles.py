"""Making files on the host side of an image build: what the oracle and real-image tests write
into a root before umoci or buildah turn it into a layer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def under(root: Path, rel: bytes) -> bytes:
    """``root/rel`` as bytes, for names that are not UTF-8."""
    return os.fsencode(root) + b"/" + rel


def write(path: Path | bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as out:
        out.write(data)
    os.chmod(path, mode)


def make_dir(path: Path | bytes, mode: int = 0o755) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def set_caps(path: Path, caps: str) -> None:
    result = subprocess.run(["setcap", caps, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"setcap {caps} {path} failed: {result.stderr}"
