"""The settle lag: the way out of the auto-increment visibility hazard (docs/design.md, "Known hazard")."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from pybatchintory import InvalidArgumentError, UnknownColumnError
from tests.conftest import Db

OLD = datetime.now(timezone.utc) - timedelta(hours=1)


def _table(db: Db) -> sa.Table:
    return sa.Table(
        "events",
        sa.MetaData(schema=db.schema),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("weight", sa.Double, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
    )


@pytest.fixture
def db(meta_db: Db) -> Db:
    """The settle lag is SQL on the metadata table: every test runs on MariaDB too."""
    return meta_db


async def _stamp(db: Db, moment: datetime) -> datetime:
    """The value a writer stores: SQLite keeps naive UTC text; PostgreSQL a timestamptz;
    a MySQL DATETIME the session's local time, as DEFAULT CURRENT_TIMESTAMP fills it
    (the settle lag compares with NOW(), docs/mysql.md)."""
    if db.kind == "sqlite":
        return moment.replace(tzinfo=None)
    if db.kind == "mariadb":
        async with db.meta_engine.connect() as conn:
            offset = await conn.scalar(
                sa.text("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
            )
        return (moment + timedelta(seconds=int(offset))).replace(tzinfo=None)
    return moment


async def _events(db: Db, created: list[datetime]) -> str:
    table = _table(db)
    rows = [
        {"id": i, "weight": 1, "created_at": await _stamp(db, c)} for i, c in enumerate(created, 1)
    ]
    async with db.meta_engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(sa.insert(table), rows)
    return db.qualified("events")


async def test_the_job_stops_before_a_row_still_settling_even_with_older_rows_above_it(
    db: Db,
) -> None:
    # Row 4 is young (its writer only just inserted it); rows 5 and 6 are old. A filter
    # on created_at would take 5 and 6 and leave 4 behind the cursor for good.
    now = datetime.now(timezone.utc)
    table = await _events(db, [OLD, OLD, OLD, now, OLD, OLD])
    settle = {"settle_column": "created_at", "settle_seconds": 600}
    async with db.inventory() as inv:
        first = await inv.acquire_batch(source_table=table, job_identifier="inc", **settle)
        assert first is not None and (first.range_start, first.range_end) == (1, 3)
        await first.success()
        assert await inv.acquire_batch(source_table=table, job_identifier="inc", **settle) is None

        old = await _stamp(db, OLD)
        async with db.meta_engine.begin() as conn:  # row 4 settles
            t = _table(db)
            await conn.execute(sa.update(t).where(t.c.id == 4).values(created_at=old))
        rest = await inv.acquire_batch(source_table=table, job_identifier="inc", **settle)
        assert rest is not None and (rest.range_start, rest.range_end) == (4, 6)
        assert [item["id"] for item in rest.items] == [4, 5, 6]
        await rest.success()


async def test_without_a_settle_lag_every_visible_row_is_taken(db: Db) -> None:
    table = await _events(db, [OLD, datetime.now(timezone.utc), OLD])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, job_identifier="eager", **db.job_options
        )
        assert batch is not None and (batch.range_start, batch.range_end) == (1, 3)
        await batch.success()


async def test_settle_arguments_are_checked_before_anything_is_written(db: Db) -> None:
    table = await _events(db, [OLD])
    async with db.inventory() as inv:
        with pytest.raises(InvalidArgumentError, match="go together"):
            await inv.acquire_batch(
                source_table=table, job_identifier="j", settle_column="created_at"
            )
        with pytest.raises(InvalidArgumentError, match="settle_seconds must be > 0"):
            await inv.acquire_batch(
                source_table=table, job_identifier="j", settle_column="created_at", settle_seconds=0
            )
        with pytest.raises(UnknownColumnError, match="settle column 'weight'"):
            await inv.acquire_batch(
                source_table=table, job_identifier="j", settle_column="weight", settle_seconds=60
            )
        with pytest.raises(UnknownColumnError, match="settle column 'nope'"):
            await inv.acquire_batch(
                source_table=table, job_identifier="j", settle_column="nope", settle_seconds=60
            )
    assert await db.scalar("SELECT count(*) FROM {s}inventory_jobs") == 0


async def test_a_lag_of_a_fraction_of_a_second_is_not_truncated(db: Db) -> None:
    # A lag below one second: the database's time arithmetic must keep the fraction
    # (MySQL's INTERVAL in whole microseconds, PostgreSQL's make_interval, SQLite's
    # modifiers); truncated to 0 s it would take row 2 at once. Row 2 is stamped 0.3 s
    # old just before the acquisition, so it is still settling under a 0.9 s lag.
    settle = {"settle_column": "created_at", "settle_seconds": 0.9}
    async with db.inventory() as inv:
        stamped = time.monotonic()
        table = await _events(db, [OLD, datetime.now(timezone.utc) - timedelta(seconds=0.3)])
        first = await inv.acquire_batch(source_table=table, job_identifier="j", **settle)
        age = 0.3 + time.monotonic() - stamped  # row 2's age, at the latest, when planned
        assert first is not None and first.range_start == 1
        if age < 0.9:  # still settling when planned: held back, unless the lag was cut
            assert first.range_end == 1, f"row 2, {age:.2f} s old, was not held back"
        await first.success()
        await asyncio.sleep(1.0)  # row 2 settles
        if first.range_end == 1:
            second = await inv.acquire_batch(source_table=table, job_identifier="j", **settle)
            assert second is not None and (second.range_start, second.range_end) == (2, 2)
            await second.success()
