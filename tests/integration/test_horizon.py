"""The exact horizon (issue 10): an incremental job never moves past an id whose writer
may still commit a lower one. Real PostgreSQL sessions hold transactions open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory import HorizonUnavailableError, InvalidArgumentError, Inventory
from tests.conftest import Db, meta_table_def
from tests.integration.test_cli import cli, ok_json


def _meta(db: Db, name: str = "meta") -> sa.Table:
    return meta_table_def(sa.MetaData(schema=db.schema), name)


@asynccontextmanager
async def open_writer(db: Db, name: str = "meta") -> AsyncIterator[AsyncConnection]:
    """A session with a transaction open; the test commits or rolls it back."""
    async with db.engine.connect() as conn:
        await conn.begin()
        yield conn
        if conn.in_transaction():
            await conn.rollback()


async def insert(conn: AsyncConnection, db: Db, uri: str, name: str = "meta") -> int:
    table = _meta(db, name)
    value = await conn.scalar(sa.insert(table).values(uri=uri, weight=1).returning(table.c.id))
    return int(value)


async def take_all(inv: Inventory, table: str, job: str, **kw: Any) -> list[tuple[int, int]]:
    """Acquire and finish batches until None; their ranges."""
    taken = []
    while (
        batch := await inv.acquire_batch(source_table=table, job_identifier=job, weight=1, **kw)
    ) is not None:
        taken.append((batch.range_start, batch.range_end))
        await batch.success()
    return taken


def horizon_of(inv: Inventory) -> Any:
    ((source, _),) = inv.storage._sources.values()
    return source.horizon


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_lower_id_committed_late_is_waited_for_not_skipped(
    pg_only: Db, outcome: str
) -> None:
    db = pg_only
    table = await db.create_meta()
    async with db.inventory() as inv, open_writer(db) as a:
        first = await insert(a, db, "a")  # writer A: id 1, transaction left open
        async with db.engine.begin() as b:  # writer B: id 2, committed
            second = await insert(b, db, "b")
        assert (first, second) == (1, 2)

        assert await take_all(inv, table, "inc") == []  # id 2 is visible, but not settled
        assert horizon_of(inv).settled is None
        if outcome == "commit":
            await a.commit()
        else:
            await a.rollback()
        expected = [(1, 1), (2, 2)] if outcome == "commit" else [(2, 2)]
        assert await take_all(inv, table, "inc") == expected
    rows = await db.rows(
        "SELECT range_start, range_end FROM {s}inventory WHERE job_identifier = 'inc' ORDER BY range_start"
    )
    assert [tuple(r) for r in rows] == expected  # each id in exactly one batch


async def test_without_the_horizon_the_late_id_is_skipped_for_good(pg_only: Db) -> None:
    # The hazard the horizon closes, shown once: horizon=None takes id 2 and moves on.
    db = pg_only
    table = await db.create_meta()
    async with db.inventory() as inv, open_writer(db) as a:
        await insert(a, db, "a")
        async with db.engine.begin() as b:
            await insert(b, db, "b")
        assert await take_all(inv, table, "eager", horizon=None) == [(2, 2)]
        await a.commit()
        assert await take_all(inv, table, "eager", horizon=None) == []  # id 1: skipped


async def test_rows_below_an_open_writer_are_taken_and_the_rest_follow(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1, 1, 1])
    async with db.inventory() as inv:
        assert await take_all(inv, table, "inc") == [(1, 1), (2, 2), (3, 3)]  # no writer: settled
        async with open_writer(db) as a:
            assert await insert(a, db, "late") == 4
            await db.add_items("meta", [1, 1])  # ids 5, 6 committed
            assert await take_all(inv, table, "inc") == []
            assert horizon_of(inv).settled == 3
            await a.commit()
        assert await take_all(inv, table, "inc") == [(4, 4), (5, 5), (6, 6)]
        assert horizon_of(inv).settled == 6


async def test_a_writer_of_a_partition_holds_the_horizon_of_the_partitioned_table(
    pg_only: Db,
) -> None:
    db = pg_only
    s = f'"{db.schema}"'
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {s}.parted (id bigserial, uri text NOT NULL, weight double precision, "
                "category text, PRIMARY KEY (id)) PARTITION BY RANGE (id)"
            )
        )
        await conn.execute(
            sa.text(f"CREATE TABLE {s}.low PARTITION OF {s}.parted FOR VALUES FROM (1) TO (1000)")
        )
        await conn.execute(
            sa.text(
                f"CREATE TABLE {s}.high PARTITION OF {s}.parted FOR VALUES FROM (1000) TO (MAXVALUE)"
            )
        )
    table = db.qualified("parted")
    async with db.inventory() as inv, open_writer(db) as a:
        # straight into the partition: the parent itself is never locked by this writer
        await a.execute(sa.text(f"INSERT INTO {s}.low (uri, weight) VALUES ('a', 1)"))
        async with db.engine.begin() as b:
            await b.execute(sa.text(f"INSERT INTO {s}.parted (uri, weight) VALUES ('b', 1)"))
        assert await take_all(inv, table, "inc") == []
        await a.commit()
        assert await take_all(inv, table, "inc") == [(1, 1), (2, 2)]


async def test_status_names_the_session_that_holds_the_horizon(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        assert await take_all(inv, table, "inc") == [(1, 1), (2, 2)]
        status = await inv.status("inc")
        assert status.horizon is not None
        assert (status.horizon.settled_id, status.horizon.highest_visible_id) == (2, 2)
        assert status.horizon.held_by == ()
        async with open_writer(db) as a:
            pid = await a.scalar(sa.text("SELECT pg_backend_pid()"))
            await insert(a, db, "stuck")  # id 3, then idle in transaction
            await db.add_items("meta", [1])  # id 4 committed
            status = await inv.status("inc")
            assert status.horizon is not None
            assert status.horizon.highest_visible_id == 4
            (holder,) = status.horizon.held_by
            assert holder.pid == pid
            assert holder.state == "idle in transaction"
            assert (
                holder.transaction_age_seconds is not None and holder.transaction_age_seconds >= 0
            )
            assert holder.transaction_start is not None
            assert "INSERT INTO" in (holder.query or "")
            assert status.as_dict()["horizon"]["held_by"][0]["pid"] == pid

            result = await cli(db, "status", "inc")
            assert result.returncode == 0, result.stderr
            assert f"pid {pid}, idle in transaction for" in result.stdout
            assert "highest visible id 4" in result.stdout
            data = ok_json(await cli(db, "status", "inc", "--json"))
            assert data["horizon"]["held_by"][0]["pid"] == pid
            await a.commit()
        status = await inv.status("inc")
        assert status.horizon is not None
        assert (status.horizon.settled_id, status.horizon.held_by) == (4, ())


async def test_a_cached_sequence_is_refused_with_the_ways_out(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1, 1])
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f'ALTER SEQUENCE "{db.schema}".meta_id_seq CACHE 20'))
    async with db.inventory() as inv:
        with pytest.raises(HorizonUnavailableError) as refused:
            await inv.acquire_batch(source_table=table, job_identifier="inc")
        message = str(refused.value)
        assert "CACHE 20" in message and "ALTER SEQUENCE" in message and "CACHE 1" in message
        assert "settle_column" in message and "horizon=None" in message
        assert await db.scalar("SELECT count(*) FROM {s}inventory_jobs") == 0  # nothing written

        assert await take_all(inv, table, "opted_out", horizon=None) == [(1, 1), (2, 2)]
        status = await inv.status("opted_out")
        assert status.horizon is None  # no horizon to show, and no error either


async def test_an_id_without_a_sequence_is_refused_unless_opted_out(pg_only: Db) -> None:
    db = pg_only
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f'CREATE TABLE "{db.schema}".plain (id bigint PRIMARY KEY, weight double precision)'
            )
        )
        await conn.execute(sa.text(f'INSERT INTO "{db.schema}".plain VALUES (1, 1), (2, 1)'))
    table = db.qualified("plain")
    async with db.inventory() as inv:
        with pytest.raises(
            HorizonUnavailableError, match="identity column or give it DEFAULT nextval"
        ):
            await inv.acquire_batch(source_table=table, job_identifier="inc")
        assert await take_all(inv, table, "inc", horizon=None) == [(1, 1), (2, 2)]


async def test_a_settle_lag_chosen_turns_the_horizon_off(pg_only: Db) -> None:
    db = pg_only
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f'CREATE TABLE "{db.schema}".ev (id bigint PRIMARY KEY, weight double precision, '
                "created_at timestamptz NOT NULL DEFAULT now() - interval '1 hour')"
            )
        )
        await conn.execute(sa.text(f'INSERT INTO "{db.schema}".ev (id, weight) VALUES (1, 1)'))
    settle = {"settle_column": "created_at", "settle_seconds": 60}
    async with db.inventory() as inv:
        assert await take_all(inv, db.qualified("ev"), "lag", **settle) == [(1, 1)]


async def test_a_backfill_below_the_horizon_reads_no_lockers(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 5)
    async with db.inventory() as inv:
        assert await take_all(inv, table, "inc") == [(i, i) for i in range(1, 6)]
        horizon = horizon_of(inv)
        reads = horizon.refreshes
        async with open_writer(db) as a:
            await insert(a, db, "open")  # a writer open the whole time
            assert await take_all(inv, table, "backfill", id_start=2, id_end=4) == [
                (2, 2),
                (3, 3),
                (4, 4),
            ]
            assert horizon.refreshes == reads  # planned below the settled horizon: no pg_locks
            await a.rollback()


async def test_the_horizon_argument_is_checked(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        with pytest.raises(InvalidArgumentError, match="horizon must be 'exact' or None"):
            await inv.acquire_batch(source_table=table, job_identifier="j", horizon="lag")  # type: ignore[arg-type]


@pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
async def test_sqlite_accepts_the_exact_horizon(db: Db) -> None:
    # One writer at a time, ids visible in the order they were assigned: exact as it is.
    table = await db.create_meta(weights=[1, 1, 1])
    async with db.inventory() as inv:
        assert await take_all(inv, table, "inc", horizon="exact") == [(1, 1), (2, 2), (3, 3)]
        assert horizon_of(inv) is None
        status = await inv.status("inc")
        assert status.horizon is None


@pytest.mark.parametrize(
    "id_ddl",
    [
        "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "id bigint PRIMARY KEY DEFAULT nextval('{schema}.\"Odd Seq\"')",  # not owned, quoted
    ],
)
async def test_identity_and_hand_written_nextval_defaults_are_accepted(
    pg_only: Db, id_ddl: str
) -> None:
    db = pg_only
    s = f'"{db.schema}"'
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SEQUENCE {s}."Odd Seq"'))
        await conn.execute(
            sa.text(f"CREATE TABLE {s}.ident ({id_ddl.format(schema=s)}, weight double precision)")
        )
        await conn.execute(sa.text(f"INSERT INTO {s}.ident (weight) VALUES (1), (1)"))
    async with db.inventory() as inv:
        assert await take_all(inv, db.qualified("ident"), "inc") == [(1, 1), (2, 2)]
        assert horizon_of(inv).settled == 2
        status = await inv.status("inc", weight_column="weight")
        assert status.horizon is not None and status.horizon.settled_id == 2


async def test_at_the_tail_one_refresh_per_acquisition_prefetched(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        assert await take_all(inv, table, "inc") == [(1, 1)]  # ends at the tail
        horizon = horizon_of(inv)
        assert horizon.at_tail
        for expected in (2, 3, 4):
            await db.add_items("meta", [1])
            before = horizon.refreshes
            batch = await inv.acquire_batch(source_table=table, job_identifier="inc", weight=1)
            assert batch is not None and batch.range_start == expected
            await batch.success()
            assert horizon.refreshes == before + 1  # the prefetched one, taken by the plan
