"""Progress of long work (builds, tuning, profiling) on stderr, readable both ways: on a terminal one
line rewritten in place; in a log (stderr is a file or a pipe) a line when the work starts, at most
one line every `every_s` seconds while it runs, and one when it ends. Standard library only, so the
runtime-only tools (a profile kit's profile.py) report the same way the compiler does.

    with Progress(len(jobs), "building 21 segments", unit="build") as progress:
        for job in jobs:
            ...
            progress.update(note=job.name)
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "human_seconds"]


def human_seconds(seconds: float) -> str:
    """A duration with a unit that suits it: 3.2 us, 12.5 ms, 1.25 s, 340 s."""
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


class Progress:
    """`total` steps of work (it may grow: `grow`), labelled `label`; nothing is printed when not
    `enabled`. `done` steps may already be finished (a resumed run)."""

    def __init__(self, total: int, label: str, unit: str = "step", enabled: bool = True, done: int = 0,
                 stream=None, every_s: float = 10.0):
        self.total, self.label, self.unit, self.enabled = total, label, unit, enabled
        self.done = self._start_done = done
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.started = time.monotonic()
        self._printed_at = -float("inf")
        self._note = ""
        self._closed = False
        if enabled and not self.tty:
            self._line(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def grow(self, steps: int) -> None:
        """More work than first known (tuning adds the next round's tasks)."""
        self.total += steps
        self._line()

    def update(self, steps: int = 1, note: str = "") -> None:
        self.done += steps
        self._note = note
        self._line()

    def message(self, text: str) -> None:
        """A line of its own (e.g. a warning), without losing the progress line on a terminal."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._printed_at = -float("inf")
        self._line()

    def close(self, summary: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._line(force=True)
        if self.tty:
            self.stream.write("\n")
        if summary:
            self.stream.write(summary + "\n")
        self.stream.flush()

    def _line(self, force: bool = False) -> None:
        if not self.enabled or (self._closed and not force):
            return
        now = time.monotonic()
        if not self.tty and not force and now - self._printed_at < self.every_s:
            return
        self._printed_at = now
        elapsed = now - self.started
        text = f"{self.label}: {self.done}/{self.total} {self.unit}s"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {elapsed:.0f} s"
        new = self.done - self._start_done
        if 0 < new and self.done < self.total:
            text += f", about {elapsed / new * (self.total - self.done):.0f} s left"
        if self._note:
            text += f"  {self._note}"
        if self.tty:
            self.stream.write("\r\033[K" + text[:max(20, _columns() - 1)])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((120, 20)).columns
