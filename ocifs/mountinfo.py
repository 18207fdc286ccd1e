"""Read the kernel's mount tables (``/proc/self/mounts`` and ``/proc/self/mountinfo``)."""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape_mount_path(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in a mount path as octal escapes."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
