"""A progress bar on stderr for the sync face, sized by the backlog known up front."""

from __future__ import annotations

import sys
from typing import TextIO

from ._reports import Backlog

# -- a progress bar for the sync face ---------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr, sized by the backlog known before the run.

    It counts weight (items when the source has no weight); retried batches were not
    in the backlog, so the figure may pass the total, and the bar then stays full.
    """

    def __init__(
        self, job: str, backlog: Backlog, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.job = job
        self.by_weight = backlog.weight is not None
        self.total = float(backlog.weight if backlog.weight is not None else backlog.items)
        self.done = 0.0
        self.batches = 0
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.draw()

    def advance(self, weight: float, items: int) -> None:
        """Count one more batch handed back by the caller."""
        self.done += weight if self.by_weight else items
        self.batches += 1
        self.draw()

    def draw(self) -> None:
        share = 1.0 if self.total <= 0 else min(self.done / self.total, 1.0)
        filled = int(share * self.width)
        unit = "weight" if self.by_weight else "items"
        self.stream.write(
            f"\r{self.job} [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} "
            f"{self.done:g}/{self.total:g} {unit}, {self.batches} batches"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        self.stream.write("\n")
        self.stream.flush()
