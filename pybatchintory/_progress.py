"""A progress bar on stderr for the sync face, sized by the backlog known up front, with
the batches left and an ETA (docs/observability.md, forecast)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ._reports import Backlog, Forecast

# -- a progress bar for the sync face ---------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr, sized by the backlog known before the run.

    It counts weight (items when the source has no weight); retried batches were not
    in the backlog, so the figure may pass the total, and the bar then stays full.
    Batches left and the ETA start from the job's forecast (its recent pace) and, once
    batches come back, follow this run's own pace: its mean batch and its rate so far.
    """

    def __init__(
        self,
        job: str,
        backlog: Backlog,
        stream: TextIO | None = None,
        width: int = 30,
        *,
        forecast: Forecast | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.by_weight = backlog.weight is not None
        self.total = float(backlog.weight if backlog.weight is not None else backlog.items)
        self.done = 0.0
        self.batches = 0
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.forecast = forecast
        self._clock = clock  # a test's own clock, for ETAs that do not depend on timing
        self._started = self._clock()
        self.draw()

    def advance(self, weight: float, items: int) -> None:
        """Count one more batch handed back by the caller."""
        self.done += weight if self.by_weight else items
        self.batches += 1
        self.draw()

    def left(self) -> tuple[int | None, float | None]:
        """Batches left and seconds left (None: not known yet)."""
        remaining = max(self.total - self.done, 0.0)
        if remaining == 0:
            return 0, 0.0
        elapsed = self._clock() - self._started
        if self.batches and self.done > 0 and elapsed > 0:
            return math.ceil(remaining / (self.done / self.batches)), remaining / (
                self.done / elapsed
            )
        f = self.forecast
        if f is None:
            return None, None
        rate = f.weight_per_second if self.by_weight else f.items_per_second
        return f.batches, (remaining / rate if rate else None)

    def draw(self) -> None:
        share = 1.0 if self.total <= 0 else min(self.done / self.total, 1.0)
        filled = int(share * self.width)
        unit = "weight" if self.by_weight else "items"
        batches, seconds = self.left()
        tail = ""
        if batches == 0:
            pass  # done: nothing left to say
        elif batches is not None:
            tail += f", ~{batches} left"
        if seconds is not None and batches != 0:
            tail += f", ETA {duration(seconds)}"
        self.stream.write(
            f"\r{self.job} [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} "
            f"{self.done:g}/{self.total:g} {unit}, {self.batches} batches{tail}"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        self.stream.write("\n")
        self.stream.flush()


def duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 20m``, ``2d 04h``."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
