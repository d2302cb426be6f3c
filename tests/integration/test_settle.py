"""The settle lag: the way out of the auto-increment visibility hazard (docs/design.md, "Known hazard")."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from pybatchintory import InvalidArgumentError, UnknownColumnError
from tests.conftest import Db

OLD = datetime.now(timezone.utc) - timedelta(hours=1)


def _table(db: Db) -> sa.Table:
    return sa.Table(
        "events",
        sa.MetaData(schema=db.schema),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("weight", sa.Double, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _stamp(db: Db, moment: datetime) -> datetime:
    # SQLite keeps naive UTC text; PostgreSQL a timestamptz.
    return moment.replace(tzinfo=None) if db.kind == "sqlite" else moment


async def _events(db: Db, created: list[datetime]) -> str:
    table = _table(db)
    async with db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(
            sa.insert(table),
            [{"id": i, "weight": 1, "created_at": _stamp(db, c)} for i, c in enumerate(created, 1)],
        )
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

        async with db.engine.begin() as conn:  # row 4 settles
            t = _table(db)
            await conn.execute(sa.update(t).where(t.c.id == 4).values(created_at=_stamp(db, OLD)))
        rest = await inv.acquire_batch(source_table=table, job_identifier="inc", **settle)
        assert rest is not None and (rest.range_start, rest.range_end) == (4, 6)
        assert [item["id"] for item in rest.items] == [4, 5, 6]
        await rest.success()


async def test_without_a_settle_lag_every_visible_row_is_taken(db: Db) -> None:
    table = await _events(db, [OLD, datetime.now(timezone.utc), OLD])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="eager")
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
