"""examples/distributed_workers.py runs with worker processes (and on Dask if installed),
and its coverage check holds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import IN_CI, PG_URL, require_postgres, run_aside

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "distributed_workers.py"

VARIANTS = [
    pytest.param([], id="processes"),
    pytest.param(
        ["--dask"],
        id="dask",
        # The test sessions install dask (the examples extra): under CI a missing one fails.
        marks=pytest.mark.skipif(
            importlib.util.find_spec("distributed") is None and not IN_CI,
            reason="dask[distributed] not installed",
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
# Synchronous: the example runs in its own interpreter, and the fixtures' probe needs no loop.
def test_distributed_example_drains_the_backfill_once(variant: list[str]) -> None:
    require_postgres()
    schema = f"demo_{uuid.uuid4().hex[:10]}"
    command = [
        sys.executable,
        str(EXAMPLE),
        "--url",
        PG_URL,
        "--schema",
        schema,
        "--items",
        "800",
        "--workers",
        "2",
        "--budget-mib",
        "200",
        *variant,
    ]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
        assert done.returncode == 0, done.stderr[-4000:]
        last = done.stdout.strip().splitlines()[-1]
        assert last.startswith("coverage: 800 items in ")
        assert "disjoint=True complete=True unfinished=0 one_log_per_attempt=True" in last
        assert done.stdout.count(" batches, ") == 2  # one line per worker
    finally:
        run_aside(lambda: drop_schema(schema))


async def drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()
