"""Recursive pipeline: raw files are converted, then the converted batches aggregated.

Run it with ``python examples/recursive_pipeline.py``. Everything lives in
``recursive_pipeline.sqlite3`` in the working directory, made anew at every run (or in
the database named by ``RECURSIVE_PIPELINE_URL``).

- ``convert`` reads the metadata table of raw files in batches of at most 8 MiB; one
  batch fails on its first attempt (a corrupt file).
- ``aggregate`` consumes ``convert``'s succeeded batches. While the failed batch waits
  for its retry, ``aggregate`` stops at it (the frontier) instead of skipping it.
- After the retry, ``aggregate`` takes the rest; each of its batches knows which raw
  files are behind it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from pybatchintory import Inventory

DATABASE = Path("recursive_pipeline.sqlite3")


def build_raw_files(count: int = 24) -> None:
    """The raw files' metadata table: one row per file, with its size in MiB."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DATABASE}{suffix}").unlink(missing_ok=True)
    with closing(sqlite3.connect(DATABASE)) as db, db:
        db.execute(
            "CREATE TABLE raw_files (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " uri TEXT NOT NULL, weight REAL NOT NULL)"
        )
        db.executemany(
            "INSERT INTO raw_files (uri, weight) VALUES (?, ?)",
            [(f"s3://raw/day_{i:02d}.csv", 1 + i % 3) for i in range(1, count + 1)],
        )


async def convert(inventory: Inventory, corrupt: set[str]) -> None:
    """Convert raw files to parquet, 8 MiB at a time; a corrupt file fails its batch."""
    while (
        batch := await inventory.acquire_batch(
            source_table="raw_files", job_identifier="convert", weight=8, max_attempts=1
        )
    ) is not None:
        uris = [item["uri"] for item in batch.items]
        try:
            bad = corrupt.intersection(uris)
            if bad:
                raise ValueError(f"corrupt file {sorted(bad)[0]}")
            await batch.success(
                {"parquet": f"s3://converted/part-{batch.id}.parquet", "files": len(uris)}
            )
            print(
                f"  convert   batch {batch.id}: files {batch.range_start}..{batch.range_end} -> part-{batch.id}"
            )
        except ValueError as exc:
            await batch.error(exc)
            print(
                f"  convert   batch {batch.id}: files {batch.range_start}..{batch.range_end} FAILED ({exc})"
            )


async def aggregate(inventory: Inventory) -> list[int]:
    """Aggregate converted parts, 20 MiB of input at a time; return the parts taken."""
    taken = []
    while (
        batch := await inventory.acquire_batch(
            source_job="convert", job_identifier="aggregate", weight=20
        )
    ) is not None:
        parts = [upstream["result"]["parquet"].rsplit("/", 1)[1] for upstream in batch.items]
        files = [row["uri"] async for row in inventory.iter_source_items(batch)]
        await batch.success({"parts": parts})
        taken.extend(upstream["id"] for upstream in batch.items)
        print(f"  aggregate batch {batch.id}: {', '.join(parts)} ({len(files)} raw files)")
    return taken


async def main(url: str | None = None) -> dict[str, object]:
    """Run the pipeline; return what a test checks."""
    if url is None:
        build_raw_files()
        url = os.environ.get("RECURSIVE_PIPELINE_URL", f"sqlite+aiosqlite:///{DATABASE}")
    async with Inventory(url) as inventory:
        print("1. convert, with a corrupt file in the second batch")
        await convert(inventory, corrupt={"s3://raw/day_07.csv"})

        print("2. aggregate stops at the failed convert batch (the frontier)")
        before = await aggregate(inventory)
        status = await inventory.status("aggregate")
        print(f"  aggregate waits at convert batch {status.frontier_batch_id}")

        print("3. the file is repaired; retry the failed batch, then continue")
        requeued = await inventory.retry("convert")
        await convert(inventory, corrupt=set())
        after = await aggregate(inventory)

        print("4. which batches processed s3://raw/day_07.csv (id 7)?")
        trace = await inventory.trace("raw_files", 7)
        for entry in trace:
            tries = ", ".join(f"{a.status}" for a in entry.attempts)
            print(f"  {'  ' * entry.depth}{entry.job_identifier} batch {entry.batch_id}: {tries}")
        return {"before": before, "after": after, "requeued": requeued, "trace": trace}


if __name__ == "__main__":
    asyncio.run(main())
