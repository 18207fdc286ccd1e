"""Show indexing progress on a terminal: one line per file being read, redrawn in place.

What is read is a layer being indexed, or a gzipped archive read for its member table. Each
line gives what it is, bytes done of its size, its rate and the time it has left; a first
line sums them up. Nothing is written until the first redraw (a layer read from the
cache shows nothing), and ``finish`` erases what was drawn, so only errors stay on screen.
The callbacks run in the indexing threads; a lock keeps the redraws whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from .layout import LayerRef

REDRAW_SECONDS = 0.2


class Line:
    """One file being read: a layer, or an archive."""

    def __init__(self, order: int, label: str, size: int) -> None:
        self.order = order  # where its line goes: archives first, then layers by position
        self.label = label
        self.size = size
        self.done = 0
        self.started = time.monotonic()

    def render(self, now: float) -> str:
        total = max(self.size, 1)
        rate = self.done / max(now - self.started, 1e-6)
        if self.done >= self.size:
            state = "done"
        else:
            state = (
                f"{rate / 1e6:,.1f} MB/s, {(total - self.done) / rate if rate else 0:,.0f} s left"
            )
        return (
            f"  {self.label}: {self.done / 1e6:,.0f}"
            f" of {total / 1e6:,.0f} MB ({100 * self.done / total:.0f}%), {state}"
        )


class TerminalProgress:
    """Called once per layer that is indexed; returns that layer's progress callback.
    ``archive`` does the same for an archive read for its members."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[Line] = []
        self.lock = threading.Lock()
        self.shown = 0.0
        self.drawn_lines = 0
        self.started = time.monotonic()

    def __call__(self, layer: LayerRef) -> Callable[[int], None]:
        digest = layer.digest.split(":", 1)[-1][:12]
        return self._add(Line(layer.position, f"layer {layer.position + 1} {digest}", layer.size))

    def archive(self, name: str, size: int) -> Callable[[int], None]:
        return self._add(Line(-1, f"archive {name}", size))

    def _add(self, line: Line) -> Callable[[int], None]:
        with self.lock:
            self.lines.append(line)
            self.lines.sort(key=lambda each: each.order)

        def advance(count: int) -> None:
            with self.lock:
                line.done += count
                now = time.monotonic()
                if now - self.shown >= REDRAW_SECONDS:
                    self.shown = now
                    self.draw(now)

        return advance

    def draw(self, now: float) -> None:
        done = sum(line.done for line in self.lines)
        total = sum(line.size for line in self.lines) or 1
        rate = done / max(now - self.started, 1e-6)
        left = (total - done) / rate if rate > 0 else 0.0
        layers = sum(line.order >= 0 for line in self.lines)
        what = f"indexing {layers} layer(s)" if layers else "reading the archive"
        text = [
            f"ocifs: {what}: {done / 1e6:,.0f} of"
            f" {total / 1e6:,.0f} MB, {rate / 1e6:,.1f} MB/s, {left:,.0f} s left"
        ]
        text += [line.render(now) for line in self.lines]
        # Back to the first line drawn last time, then rewrite every line, clearing its rest.
        up = f"\033[{self.drawn_lines - 1}A" if self.drawn_lines > 1 else ""
        self.out.write(up + "\r" + "\n".join(f"{row}\033[K" for row in text))
        self.out.flush()
        self.drawn_lines = len(text)

    def finish(self) -> None:
        """Erase what was drawn, and start over (the archive is read before its layers)."""
        with self.lock:
            self.lines.clear()
            self.started = time.monotonic()
            self.shown = 0.0
            if self.drawn_lines:
                up = f"\033[{self.drawn_lines - 1}A" if self.drawn_lines > 1 else ""
                self.out.write(up + "\r\033[J")
                self.out.flush()
                self.drawn_lines = 0
