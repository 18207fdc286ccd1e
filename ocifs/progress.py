"""Show indexing progress on a terminal: one line per layer being read, redrawn in place.

Each line gives the layer, bytes done of its blob's size, its rate and the time it has left;
a last line sums them up. Nothing is written until the first redraw (a layer read from the
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


class LayerLine:
    def __init__(self, layer: LayerRef) -> None:
        self.layer = layer
        self.done = 0
        self.started = time.monotonic()

    def render(self, now: float) -> str:
        total = max(self.layer.size, 1)
        rate = self.done / max(now - self.started, 1e-6)
        if self.done >= self.layer.size:
            state = "done"
        else:
            state = (
                f"{rate / 1e6:,.1f} MB/s, {(total - self.done) / rate if rate else 0:,.0f} s left"
            )
        digest = self.layer.digest.split(":", 1)[-1][:12]
        return (
            f"  layer {self.layer.position + 1} {digest}: {self.done / 1e6:,.0f}"
            f" of {total / 1e6:,.0f} MB ({100 * self.done / total:.0f}%), {state}"
        )


class TerminalProgress:
    """Called once per layer that is indexed; returns that layer's progress callback."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[LayerLine] = []
        self.lock = threading.Lock()
        self.shown = 0.0
        self.drawn_lines = 0
        self.started = time.monotonic()

    def __call__(self, layer: LayerRef) -> Callable[[int], None]:
        line = LayerLine(layer)
        with self.lock:
            self.lines.append(line)
            self.lines.sort(key=lambda each: each.layer.position)

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
        total = sum(line.layer.size for line in self.lines) or 1
        rate = done / max(now - self.started, 1e-6)
        left = (total - done) / rate if rate > 0 else 0.0
        text = [
            f"ocifs: indexing {len(self.lines)} layer(s): {done / 1e6:,.0f} of"
            f" {total / 1e6:,.0f} MB, {rate / 1e6:,.1f} MB/s, {left:,.0f} s left"
        ]
        text += [line.render(now) for line in self.lines]
        # Back to the first line drawn last time, then rewrite every line, clearing its rest.
        up = f"\033[{self.drawn_lines - 1}A" if self.drawn_lines > 1 else ""
        self.out.write(up + "\r" + "\n".join(f"{row}\033[K" for row in text))
        self.out.flush()
        self.drawn_lines = len(text)

    def finish(self) -> None:
        with self.lock:
            if self.drawn_lines:
                up = f"\033[{self.drawn_lines - 1}A" if self.drawn_lines > 1 else ""
                self.out.write(up + "\r\033[J")
                self.out.flush()
                self.drawn_lines = 0
