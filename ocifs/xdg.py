"""The XDG base directories ocifs keeps its files under (the index cache, the daemons' logs)."""

from __future__ import annotations

import os
from pathlib import Path


def ocifs_dir(variable: str, default: str) -> Path:
    """``$VARIABLE/ocifs``, or ``~/DEFAULT/ocifs`` when it is unset or relative (the XDG spec
    says to ignore a relative value)."""
    base = os.environ.get(variable) or ""
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), default)
    return Path(base) / "ocifs"
