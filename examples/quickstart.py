"""Quickstart: incremental batches, a backfill and a failing batch on embedded SQLite.

Run it with ``python examples/quickstart.py``. It needs no server: the metadata table
and the inventory live in ``quickstart.sqlite3`` in the working directory, made anew at
every run.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from pybatchintory import acquire_batch, acquire_batches, configure

DATABASE = Path("quickstart.sqlite3")


def build_demo_metadata(items: int = 60) -> None:
    """A metadata table as a pipeline would fill it: one row per file, with its size."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DATABASE}{suffix}").unlink(missing_ok=True)
    with closing(sqlite3.connect(DATABASE)) as db, db:
        db.execute(
            "CREATE TABLE meta_data_raw_data ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, uri TEXT NOT NULL, weight REAL NOT NULL)"
        )
        db.executemany(
            "INSERT INTO meta_data_raw_data (uri, weight) VALUES (?, ?)",
            [(f"s3://raw/file_{i:03d}.parquet", 1 + i % 4) for i in range(1, items + 1)],
        )


def process_func(items: list[dict[str, object]]) -> None:
    print(f"    processing {len(items)} files: {items[0]['uri']} .. {items[-1]['uri']}")


def failing_func(items: list[dict[str, object]]) -> None:
    raise RuntimeError(f"corrupt file {items[0]['uri']}")


def print_inventory() -> None:
    with closing(sqlite3.connect(DATABASE)) as db, db:
        rows = db.execute(
            "SELECT b.id, b.job_identifier, b.range_start, b.range_end, b.weight, "
            "b.attempt, b.status, l.logging FROM inventory b "
            "JOIN inventory_logs l ON l.id = b.id AND l.attempt = b.attempt ORDER BY b.id"
        ).fetchall()
    print(f"\n{'id':>3} {'job':<16} {'range':>9} {'weight':>6} {'try':>3} {'status':<9} log")
    for id_, job, start, end, weight, attempt, status, log in rows:
        last_line = (log or "").strip().splitlines()[-1:] or [""]
        print(
            f"{id_:>3} {job:<16} {f'{start}-{end}':>9} {weight:>6g} {attempt:>3} {status:<9} {last_line[0]}"
        )


def main() -> None:
    build_demo_metadata()
    configure(inventory_url=os.environ.get("QUICKSTART_URL", f"sqlite+aiosqlite:///{DATABASE}"))

    print("incremental: one batch of at most weight 10")
    batch = acquire_batch(
        source_table="meta_data_raw_data", job_identifer="incremental_job", weight=10
    )
    process_func(batch.items)
    batch.success()

    print("incremental: five more batches, each continuing where the last ended")
    batches = acquire_batches(
        source_table="meta_data_raw_data", job_identifer="incremental_job", weight=10, batch_count=5
    )
    for batch in batches:
        process_func(batch.items)
        batch.success()

    print("backfill: ids 10 to 50, in chunks of weight 10")
    while (
        batch := acquire_batch(
            source_table="meta_data_raw_data",
            job_identifer="backfill_job",
            id_start=10,
            id_end=50,
            weight=10,
        )
    ) is not None:
        batch.process(process_func)

    print("a failing batch: recorded as failed, with its traceback")
    batch = acquire_batch(source_table="meta_data_raw_data", job_identifer="fragile_job", weight=5)
    try:
        failing_func(batch.items)
        batch.success()
    except Exception as e:
        batch.error(e)
        print(f"    caught: {e}")

    print_inventory()


if __name__ == "__main__":
    main()
