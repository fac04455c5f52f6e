"""Progress lines for long work: done/total, rate and ETA, at most every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts work and hands a human-readable line to `emit` (a logger) now and then."""

    def __init__(
        self,
        label: str,
        total: int,
        emit: Callable[[str], None],
        *,
        unit: str = "images",
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.emit = emit
        self.unit = unit
        self.every_s = every_s
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_emit = self.started

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed_s
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        percent = 100.0 * self.done / self.total if self.total else 100.0
        remaining = self.total - self.done
        eta = format_duration(remaining / rate) if rate > 0 and remaining > 0 else "-"
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.1f}%), "
            f"{rate:.1f} {self.unit}/s, ETA {eta}"
        )

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now - self._last_emit >= self.every_s:
            self._last_emit = now
            self.emit(self.line())

    def finish(self) -> None:
        self.emit(f"{self.line()}, took {format_duration(self.elapsed_s)}")
