"""Progress of a long run: a rich bar with a total and ETA on a terminal; elsewhere (a pipe, a log file)
one plain line every ~10 s, so a logged run shows it is alive and how far it got."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class CountProgress:
    """Counts finished items of a known total (`advance`); `console.is_terminal` decides the display."""

    def __init__(
        self, console: Console, label: str, total: int, noun: str = "units", every: float | None = None
    ):
        self.console, self.label, self.total, self.noun = console, label, total, noun
        self.every = PLAIN_EVERY_S if every is None else every
        self.done = self.failed = 0
        self.plain = not console.is_terminal
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(noun),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=self.plain,
            speed_estimate_period=600.0,  # units can take minutes each: estimate over a long window
        )
        self.task = self.bar.add_task(label, total=total, last="")
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="autointerp-progress")

    def advance(self, note: str = "", failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self.bar.update(self.task, advance=1, last=note)

    def line(self) -> str:
        """`labelling: 3/20 units (15%) · 1 failed · elapsed 0:01:02 · ETA 0:05:51`."""
        elapsed = time.monotonic() - self._t0
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.label}: {self.done}/{self.total} {self.noun} ({pct:.0f}%)"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"elapsed {_clock(elapsed)}")
        if 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed / self.done * (self.total - self.done))}")
        return " · ".join(parts)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.console.print(self.line(), markup=False, highlight=False)

    def __enter__(self) -> CountProgress:
        self._t0 = time.monotonic()
        self.bar.start()
        if self.plain:
            self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.stop()
        if self.plain:
            self.console.print(self.line(), markup=False, highlight=False)
