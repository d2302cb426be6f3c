"""OpenTelemetry metrics (docs/metrics.md), read back from the SDK's in-memory reader on
SQLite and PostgreSQL; and, without the API installed, no metrics and no failure."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pybatchintory import BatchLostError, InvalidArgumentError, Job
from tests.conftest import Db

_READER: list[InMemoryMetricReader] = []


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """The process-wide provider (the API lets it be set once), with an in-memory reader.
    Each test uses job names of its own, so the cumulative values are its own."""
    if not _READER:
        _READER.append(InMemoryMetricReader())
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER[0]]))
    return _READER[0]


def _points(reader: InMemoryMetricReader, name: str, job: str) -> dict[str, Any]:
    """The data points of instrument ``name`` for ``job``, by their other attributes."""
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "pybatchintory":
                continue
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.pop("job", None) != job:
                        continue
                    key = attributes.get("outcome", "")
                    found[key] = (
                        (point.count, point.sum) if hasattr(point, "count") else point.value
                    )
    return found


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def test_counters_and_histograms(db: Db, reader: InMemoryMetricReader) -> None:
    table = await db.create_meta(weights=[1, 2, 3, 4, 5])
    name = _name("metrics")
    job = Job(name, source_table=table, weight=3, max_attempts=3)
    async with db.inventory() as inv:
        ok = await inv.acquire_batch(job)  # ids 1..2, weight 3
        assert ok is not None and (ok.item_count, ok.weight) == (2, 3.0)
        await ok.success()
        bad = await inv.acquire_batch(job)  # id 3
        assert bad is not None
        await bad.error("boom")
        again = await inv.acquire_batch(job)  # id 3 again, attempt 2
        assert again is not None and again.attempt == 2
        await again.release("shutting down")
        taken = await inv.acquire_batch(job)  # id 3 again (released: attempt 2 again)
        assert taken is not None
        await inv.reset(name, force=True)  # the worker of 'taken' loses it
        with pytest.raises(BatchLostError):
            await taken.success()
        again_all = 0
        while (batch := await inv.acquire_batch(job)) is not None:  # 1..2, 3, 4, 5 (gen 1)
            await batch.success()
            again_all += 1
        assert again_all == 4

    acquisitions = _points(reader, "pybatchintory.acquisitions", name)
    assert acquisitions == {"batch": 8, "nothing": 1}
    latency = _points(reader, "pybatchintory.acquisition.duration", name)
    assert latency["batch"][0] == 8 and latency["nothing"][0] == 1
    assert 0 < latency["batch"][1] < 60
    outcomes = _points(reader, "pybatchintory.batch.outcomes", name)
    assert outcomes == {"succeeded": 5, "failed": 1, "released": 1, "lost": 1}
    durations = _points(reader, "pybatchintory.batch.duration", name)
    assert {k: v[0] for k, v in durations.items()} == outcomes
    assert all(0 <= total < 60 for _, total in durations.values())
    # generation 0: 1..2 (weight 3), then id 3 (weight 3) three times; generation 1:
    # 1..2, 3, 4, 5
    weights = _points(reader, "pybatchintory.batch.weight", name)
    items = _points(reader, "pybatchintory.batch.items", name)
    assert weights[""] == (8, 3 + 3 + 3 + 3 + 3 + 3 + 4 + 5)
    assert items[""] == (8, 2 + 1 + 1 + 1 + 2 + 1 + 1 + 1)


async def test_job_gauges(db: Db, reader: InMemoryMetricReader) -> None:
    table = await db.create_meta(weights=[1] * 10)
    name = _name("gauges")
    job = Job(name, source_table=table, weight=2, max_attempts=1)
    async with db.inventory() as inv:
        failed = await inv.acquire_batch(job, load_items=False)  # 1..2
        running = await inv.acquire_batch(job, load_items=False)  # 3..4
        assert failed is not None and running is not None
        await failed.error("corrupt")  # out of attempts (max_attempts=1)
        gauges = await inv.observe_jobs([name], interval=3600)
        # Collected on the event loop's own thread: a callback that waited for the loop
        # would hang here; the gauges only read the values refreshed above.
        value = {
            metric: _points(reader, f"pybatchintory.job.{metric}", name).get("")
            for metric in (
                "backlog.items",
                "backlog.weight",
                "batches.running",
                "batches.out_of_attempts",
                "lease.oldest_age",
                "horizon.lag",
            )
        }
        assert value["backlog.items"] == 6  # ids 5..10
        assert value["backlog.weight"] == 6.0
        assert value["batches.running"] == 1
        assert value["batches.out_of_attempts"] == 1
        assert 0 <= value["lease.oldest_age"] < 60
        # PostgreSQL tables have a horizon (no writer open: lag 0); SQLite has none
        assert value["horizon.lag"] == (0 if db.kind == "postgresql" else None)

        await running.success()
        await gauges.refresh()
        assert _points(reader, "pybatchintory.job.batches.running", name) == {"": 0}
        assert _points(reader, "pybatchintory.job.lease.oldest_age", name) == {"": 0}
        assert gauges._task is not None
    assert gauges._task is None  # closing the inventory stopped the refreshes


async def test_observe_jobs_bad_input(db: Db, reader: InMemoryMetricReader) -> None:
    async with db.inventory() as inv:
        with pytest.raises(InvalidArgumentError, match="list of jobs"):
            await inv.observe_jobs("convert")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="at least one job"):
            await inv.observe_jobs([])
        with pytest.raises(InvalidArgumentError, match="interval"):
            await inv.observe_jobs(["convert"], interval=0)


def test_without_opentelemetry(tmp_path: Any) -> None:
    """With the API missing, acquisitions and outcomes work and nothing is measured."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        import anyio
        from pybatchintory import Inventory, Job, _metrics
        from pybatchintory.inventory import Inventory as I
        assert not _metrics.ENABLED
        assert not hasattr(I._acquire, "__wrapped__")  # not even a wrapper on the path

        async def main():
            url = "sqlite+aiosqlite:///{tmp_path}/inv.sqlite3"
            async with Inventory(url, url) as inv:
                from sqlalchemy import text
                async with inv.meta_engine.begin() as conn:
                    await conn.execute(text("CREATE TABLE meta (id INTEGER PRIMARY KEY, weight REAL)"))
                    await conn.execute(text("INSERT INTO meta VALUES (1, 1), (2, 1)"))
                job = Job("j", source_table="meta", weight=1)
                batch = await inv.acquire_batch(job)
                await batch.success()
                gauges = await inv.observe_jobs(["j"])
                assert gauges._task is None
            print("ok")

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
