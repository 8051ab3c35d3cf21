"""Progress of a long run: a rich bar with a total and ETA on a terminal; elsewhere (a pipe, a log file)
one plain line every ~10 s, so a logged run shows it is alive and how far it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _Progress:
    """The shared part: the rich bar on a terminal, else a thread printing `line()` every `every` s once
    the run has started, and a last line at the end."""

    def __init__(
        self,
        console: Console,
        label: str,
        columns: list[ProgressColumn | str],
        every: float | None,
        clock: Callable[[], float],
    ):
        self.console, self.label, self.clock = console, label, clock
        self.every = PLAIN_EVERY_S if every is None else every
        self.plain = not console.is_terminal
        self.bar = Progress(*columns, console=console, disable=self.plain, speed_estimate_period=600.0)
        self._t0: float | None = None  # when the run started (the clock of elapsed time, ETA and rate)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="autointerp-progress")

    @property
    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else self.clock() - self._t0

    def line(self) -> str:  # pragma: no cover - each kind says its own
        raise NotImplementedError

    def _say(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            if self._t0 is not None:
                self._say()

    def _begin(self) -> None:
        self._t0 = self.clock()
        self.bar.start()
        if self.plain:
            self._thread.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.stop()
        if self.plain and self._t0 is not None:
            self._say()


class CountProgress(_Progress):
    """Counts finished items of a known total (`advance`); `console.is_terminal` decides the display."""

    def __init__(
        self,
        console: Console,
        label: str,
        total: int,
        noun: str = "units",
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        columns = [
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(noun),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        super().__init__(console, label, columns, every, clock)
        self.total, self.noun = total, noun
        self.done = self.failed = 0
        self.task = self.bar.add_task(label, total=total, last="")

    def advance(self, note: str = "", failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self.bar.update(self.task, advance=1, last=note)

    def line(self) -> str:
        """`labelling: 3/20 units (15%) · 1 failed · elapsed 0:01:02 · ETA 0:05:51`."""
        elapsed = self.elapsed
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.label}: {self.done}/{self.total} {self.noun} ({pct:.0f}%)"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"elapsed {_clock(elapsed)}")
        if 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed / self.done * (self.total - self.done))}")
        return " · ".join(parts)

    def __enter__(self) -> CountProgress:
        self._begin()
        return self


class RateProgress(_Progress):
    """An amount streamed out of a total (`update(done, total)`, e.g. tokens), with its rate. The clock,
    the bar and the plain lines start at the first `update`: whatever comes before (loading a model,
    reading a checkpoint) counts neither in the rate nor in the ETA, and a run that ends before its
    first update (bad input, nothing to do) prints nothing."""

    def __init__(
        self,
        console: Console,
        label: str,
        total: int,
        unit: str = "tokens",
        rate_unit: str = "tok/s",
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        columns = [
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} " + unit),
            TextColumn("{task.fields[rate]:,.0f} " + rate_unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        super().__init__(console, label, columns, every, clock)
        self.unit, self.rate_unit = unit, rate_unit
        self.total, self.done, self.start_done = total, 0, 0
        self.task = self.bar.add_task(label, total=total, rate=0.0, start=False)

    @property
    def rate(self) -> float:
        """Per second since the first update (what was already done then, e.g. a resumed part, left out)."""
        elapsed = self.elapsed
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def update(self, done: int, total: int | None = None) -> None:
        if self._t0 is None:
            self.start_done = done
            self._begin()
            self.bar.start_task(self.task)
        self.done = done
        self.total = self.total if total is None else total
        self.bar.update(self.task, completed=done, total=self.total, rate=self.rate)

    def line(self) -> str:
        """`recording: 12,800/60,000 tokens (21%) · 4,210 tok/s · elapsed 0:00:03 · ETA 0:00:11`."""
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)",
            f"{self.rate:,.0f} {self.rate_unit}",
            f"elapsed {_clock(self.elapsed)}",
        ]
        if self.rate > 0 and self.done < self.total:
            parts.append(f"ETA {_clock((self.total - self.done) / self.rate)}")
        return " · ".join(parts)

    def __enter__(self) -> RateProgress:
        return self


class PhaseProgress:
    """A run made of phases, each with its own count (bench: each method's units, then the given
    explanations): `start(label, total)` ends the previous phase's progress and returns the new one's
    `advance`."""

    def __init__(self, console: Console, every: float | None = None):
        self.console, self.every = console, every
        self.current: CountProgress | None = None

    def start(self, label: str, total: int, noun: str = "units") -> Callable[[], None]:
        self.close()
        self.current = CountProgress(self.console, label, total, noun, every=self.every).__enter__()
        return self.current.advance

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
