"""Build a gzip blob's seek-point index in a child process, beside the indexing pass.

indexed_gzip builds its index in C while holding the GIL, so in a thread it would only take
turns with the pass that inflates, hashes and scans the same layer. In a child process it runs
on another core. The child writes indexed_gzip's exported index to its stdout; the parent
imports it. Run as ``python -m ocifs.gzindex BLOB SPACING``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import indexed_gzip

from .errors import CompressionError

logger = logging.getLogger(__name__)


class SeekPointBuilder:
    """The child process building one blob's index; ``result`` waits for it."""

    def __init__(self, blob: Path, spacing: int) -> None:
        self.blob = blob
        self.spacing = spacing
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(blob), str(spacing)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:  # say, an interpreter this user may run but not exec again
            logger.info("building the gzip index in this process: %s", error)

    def result(self) -> bytes:
        """The exported index; CompressionError if it could not be built."""
        if self.process is None:
            try:
                return build_exported_index(str(self.blob), self.spacing)
            except Exception as error:  # indexed_gzip raises ZranError, CrcError, OSError
                raise CompressionError(f"cannot index the gzip stream: {error}") from error
        exported, errors = self.process.communicate()
        if self.process.returncode != 0:
            lines = errors.decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit status {self.process.returncode}"
            raise CompressionError(f"cannot index the gzip stream: {reason}")
        return exported

    def cancel(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def build_exported_index(blob: str, spacing: int) -> bytes:
    """Build the full index of ``blob`` and return it in indexed_gzip's export format."""
    gzip_file = indexed_gzip._IndexedGzipFile(filename=blob, spacing=spacing, drop_handles=False)
    try:
        gzip_file.build_full_index()
        exported = io.BytesIO()
        gzip_file.export_index(fileobj=exported)
        return exported.getvalue()
    finally:
        gzip_file.close()


def main(argv: list[str]) -> int:
    blob, spacing = argv
    try:
        exported = build_exported_index(blob, int(spacing))
    except Exception as error:  # indexed_gzip raises ZranError, CrcError, OSError
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(exported)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
