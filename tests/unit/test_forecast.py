"""The forecast's arithmetic and the progress bar's ETA, on given histories and clocks."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from pybatchintory import Backlog, Job
from pybatchintory._forecast import pace
from pybatchintory._progress import ProgressBar, duration

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def _batch(start: float, end: float, weight: float, items: int) -> tuple[datetime, ...]:
    return (T0 + timedelta(seconds=start), T0 + timedelta(seconds=end), weight, items)  # type: ignore[return-value]


# Two workers: two batches at once in [0, 10] and in [10, 20], then an idle hour, then
# one batch alone in [3620, 3630]: busy 30 s, 50 batch-seconds, weight 50, items 25.
HISTORY = [
    _batch(0, 10, 10, 5),
    _batch(0, 10, 10, 5),
    _batch(10, 20, 10, 5),
    _batch(10, 20, 10, 5),
    _batch(3620, 3630, 10, 5),
]


def test_the_pace_counts_busy_time_once_and_skips_idle_gaps() -> None:
    f = pace(HISTORY, Backlog(items=30, weight=60.0), None, T0)
    assert f.sample_batches == 5
    assert f.weight_per_second == pytest.approx(50 / 30)
    assert f.items_per_second == pytest.approx(25 / 30)
    assert f.concurrency == pytest.approx(50 / 30)
    assert f.mean_batch_seconds == pytest.approx(10)
    assert f.batches == 6  # weight 60 at 10 a batch
    assert f.eta_seconds == pytest.approx(60 / (50 / 30))
    assert f.finishes_at == T0 + timedelta(seconds=36)
    assert f.basis == "history"


def test_without_weight_the_forecast_counts_items() -> None:
    f = pace(HISTORY, Backlog(items=12, weight=None), None, T0)
    assert (f.batches, f.eta_seconds) == (3, pytest.approx(12 / (25 / 30)))


def test_without_history_the_budget_gives_the_batches_and_no_eta() -> None:
    job = Job("j", source_table="t", weight=8, max_items=4)
    f = pace([], Backlog(items=10, weight=40.0), job, T0)
    assert (f.batches, f.eta_seconds, f.basis, f.sample_batches) == (5, None, "budget", 0)
    by_items = pace([], Backlog(items=10, weight=4.0), job, T0)
    assert by_items.batches == 3  # 10 items, 4 a batch
    unbounded = pace([], Backlog(items=10, weight=40.0), Job("j", source_table="t"), T0)
    assert unbounded.batches == 1  # an unbounded budget takes it all at once


def test_nothing_left_and_unfinished_or_instant_batches() -> None:
    assert (pace(HISTORY, Backlog(0, 0.0), None, T0).batches, 0) == (0, 0)
    assert pace(HISTORY, Backlog(0, 0.0), None, T0).eta_seconds == 0
    # A batch without an end, or of no duration, measures nothing.
    odd = [(T0, None, 5.0, 1), _batch(5, 5, 5, 1)]
    f = pace(odd, Backlog(4, 20.0), None, T0)
    assert (f.sample_batches, f.weight_per_second, f.eta_seconds, f.batches) == (0, None, None, 1)
    # A batch is at least one item: never more batches than items.
    assert pace(HISTORY, Backlog(2, 500.0), None, T0).batches == 2


def test_the_progress_bar_starts_from_the_forecast_then_follows_the_run() -> None:
    now = [100.0]
    out = io.StringIO()
    forecast = pace(HISTORY, Backlog(6, 60.0), None, T0)
    bar = ProgressBar("j", Backlog(6, 60.0), out, width=10, forecast=forecast, clock=lambda: now[0])
    assert out.getvalue().endswith("0/60 weight, 0 batches, ~6 left, ETA 36s")
    now[0] += 20
    bar.advance(20, 2)  # this run: weight 20 in 20 s, one batch of 20
    assert out.getvalue().endswith("20/60 weight, 1 batches, ~2 left, ETA 40s")
    now[0] += 10
    bar.advance(40, 4)
    assert out.getvalue().endswith("] 100% 60/60 weight, 2 batches")
    bar.close()
    # No forecast: no estimate until a batch comes back.
    plain = io.StringIO()
    ProgressBar("j", Backlog(6, None), plain, forecast=None, clock=lambda: 0.0)
    assert plain.getvalue().endswith("0/6 items, 0 batches")


def test_durations_read_well() -> None:
    assert [duration(s) for s in (0.4, 45, 725, 12_000, 200_000)] == [
        "0s",
        "45s",
        "12m 05s",
        "3h 20m",
        "2d 07h",
    ]
