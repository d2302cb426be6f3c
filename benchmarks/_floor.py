"""The raw-driver floor: the library's acquire-items-succeed cycle written by hand.

The same statements the library sends (see the SQL log of one acquisition), the same
transactions and the same connections split (one to the inventory, one to the
metadata table), but no SQLAlchemy, no pool, no validation: asyncpg with its automatic
prepared statements, and sqlite3 (or aiosqlite) with plain cursors. Written against the
backend tables that ``Inventory.open()`` created, so that indexes and constraints match.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from _common import BATCH_ITEMS, JOB, pg_dsn

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"
_LEASE = 600.0


def _sql(schema: str | None, source: str, dialect: str) -> dict[str, str]:
    """The statements, with ``$n`` (asyncpg) or ``?`` (sqlite3) placeholders."""
    p = f"{schema}." if schema else ""
    if dialect == "postgresql":
        now, lease = "now()", f"now() + make_interval(secs => {_LEASE})"
        ph = [f"${i}" for i in range(1, 12)]
    else:
        now = _SQLITE_NOW
        lease = f"strftime('%Y-%m-%d %H:%M:%f', 'now', '+{_LEASE:f} seconds') || '000'"
        ph = ["?"] * 11
    return {
        "lock": (
            f"INSERT INTO {p}inventory_jobs (job_identifier, source_kind, source, id_column, "
            f"filter_text, created_at, updated_at) VALUES ({ph[0]}, 'table', {ph[1]}, 'id', '', "
            f"{now}, {now}) ON CONFLICT (job_identifier) DO UPDATE SET updated_at = {now} "
            "RETURNING source_kind, source, id_column, filter_text, cursor, generation"
        ),
        "reclaim": (
            f"SELECT id, attempt, max_attempts, status FROM {p}inventory WHERE job_identifier = "
            f"{ph[0]} AND status <> 'succeeded' AND generation = {ph[1]} AND ((status = 'running' "
            f"AND lease_expires_at < {now}) OR status = 'released' OR (status = 'failed' AND "
            f"attempt < max_attempts AND (retry_after IS NULL OR retry_after <= {now}))) "
            "ORDER BY id LIMIT 1"
        ),
        "plan": f"SELECT id, weight FROM {source} WHERE id >= {ph[0]} ORDER BY id LIMIT {ph[1]}",
        "insert": (
            f"INSERT INTO {p}inventory (job_identifier, generation, processing_start, range_start, "
            "range_end, weight, item_count, attempt, max_attempts, status, lease_expires_at, worker) "
            f"VALUES ({ph[0]}, {ph[1]}, {now}, {ph[2]}, {ph[3]}, {ph[4]}, {ph[5]}, 1, 3, 'running', "
            f"{lease}, {ph[6]}) RETURNING id, job_identifier, range_start, range_end, weight, "
            "item_count, attempt, max_attempts, lease_expires_at"
        ),
        "open_log": (
            f"INSERT INTO {p}inventory_logs (id, attempt, processing_start, status, worker) "
            f"VALUES ({ph[0]}, 1, {now}, 'running', {ph[1]})"
        ),
        "cursor": (
            f"UPDATE {p}inventory_jobs SET cursor = {ph[0]}, updated_at = {now}, "
            f"generation_batches = generation_batches + 1, generation_weight = "
            f"generation_weight + {ph[1]}, total_batches = total_batches + 1 "
            f"WHERE job_identifier = {ph[2]}"
        ),
        "load": f"SELECT id, uri, weight FROM {source} WHERE id >= {ph[0]} AND id <= {ph[1]} ORDER BY id",
        "finish": (
            f"UPDATE {p}inventory SET status = 'succeeded', processing_end = {now}, "
            f"lease_expires_at = NULL, result = NULL, retry_after = NULL WHERE id = {ph[0]} AND attempt = {ph[1]} "
            "AND status = 'running' RETURNING max_attempts"
        ),
        "close_log": (
            f"UPDATE {p}inventory_logs SET status = 'succeeded', processing_end = {now}, "
            f"logging = NULL WHERE id = {ph[0]} AND attempt = {ph[1]} AND status = 'running'"
        ),
        # PostgreSQL: the library's merged forms (data-modifying CTEs), one statement each.
        "lock_and_look": (
            f"WITH locked_job AS (INSERT INTO {p}inventory_jobs (job_identifier, source_kind, "
            f"source, id_column, filter_text, created_at, updated_at) VALUES ({ph[0]}, 'table', "
            f"{ph[1]}, 'id', '', {now}, {now}) ON CONFLICT (job_identifier) DO UPDATE SET "
            f"updated_at = {now} RETURNING source_kind, source, id_column, filter_text, cursor, "
            "generation) SELECT locked_job.*, candidate.id AS candidate_id FROM locked_job LEFT "
            f"JOIN (SELECT id FROM {p}inventory WHERE job_identifier = {ph[0]} AND generation = "
            "(SELECT generation FROM locked_job) AND status <> 'succeeded' AND ((status = "
            f"'running' AND lease_expires_at < {now}) OR status = 'released' OR (status = "
            f"'failed' AND attempt < max_attempts AND (retry_after IS NULL OR retry_after <= "
            f"{now}))) ORDER BY id LIMIT 1) candidate ON true"
        ),
        "record_batch": (
            f"WITH new_batch AS (INSERT INTO {p}inventory (job_identifier, generation, "
            "processing_start, range_start, range_end, weight, item_count, attempt, max_attempts, "
            f"status, lease_expires_at, worker) VALUES ({ph[0]}, {ph[1]}, {now}, {ph[2]}, {ph[3]}, "
            f"{ph[4]}, {ph[5]}, 1, 3, 'running', {lease}, {ph[6]}) RETURNING id, job_identifier, "
            "range_start, range_end, weight, item_count, attempt, max_attempts, lease_expires_at), "
            f"first_log AS (INSERT INTO {p}inventory_logs (id, attempt, processing_start, status, "
            f"worker) SELECT id, 1, {now}, 'running', {ph[6]} FROM new_batch), "
            f"moved_cursor AS (UPDATE {p}inventory_jobs SET cursor = {ph[3]}, updated_at = {now}, "
            f"generation_batches = generation_batches + 1, generation_weight = generation_weight "
            f"+ {ph[4]}, total_batches = total_batches + 1 "
            f"WHERE job_identifier = {ph[0]}) SELECT * FROM new_batch"
        ),
        "finish_and_log": (
            f"WITH finished AS (UPDATE {p}inventory SET status = 'succeeded', processing_end = "
            f"{now}, lease_expires_at = NULL, result = NULL, max_attempts = max_attempts + 0, "
            f"retry_after = NULL WHERE id = {ph[0]} AND attempt = "
            f"{ph[1]} AND status = 'running' RETURNING id, attempt, max_attempts), closed_log AS "
            f"(UPDATE {p}inventory_logs SET status = 'succeeded', processing_end = {now}, "
            f"logging = NULL FROM finished WHERE {p}inventory_logs.id = finished.id AND "
            f"{p}inventory_logs.attempt = finished.attempt AND {p}inventory_logs.status = "
            "'running') SELECT max_attempts FROM finished"
        ),
    }


def _take(rows: list[Any], budget: float) -> tuple[int, int, float, int] | None:
    """The same soft-budget accumulation as the library (first row always admitted)."""
    first = last = None
    total, count = 0.0, 0
    for item_id, weight in rows:
        if count and total + weight > budget:
            break
        first = item_id if first is None else first
        last, total, count = item_id, total + weight, count + 1
        if total >= budget:
            break
    return None if first is None or last is None else (first, last, total, count)


class PgFloor:
    """The cycle with asyncpg: two connections, prepared statements, nothing else."""

    def __init__(self, schema: str, source: str, job: str = JOB, worker: str = "floor") -> None:
        self.sql = _sql(schema, source, "postgresql")
        self.source, self.job, self.worker, self.jobs_used = source, job, worker, 1

    async def open(self) -> PgFloor:
        self.inv = await asyncpg.connect(pg_dsn())
        self.meta = await asyncpg.connect(pg_dsn())
        return self

    async def close(self) -> None:
        await self.inv.close()
        await self.meta.close()

    async def cycle(self) -> None:
        for _ in range(2):
            if await self._one():
                return
            self.jobs_used += 1
            self.job = f"{JOB}_{self.jobs_used}"
        raise RuntimeError("the metadata table is empty")

    async def _one(self) -> bool:
        s, inv = self.sql, self.inv
        async with inv.transaction():
            job = await inv.fetchrow(s["lock_and_look"], self.job, self.source)
            if job["candidate_id"] is not None:
                raise RuntimeError("the floor never fails a batch")
            start = 1 if job["cursor"] is None else job["cursor"] + 1
            planned = _take(await self.meta.fetch(s["plan"], start, BATCH_ITEMS + 1), BATCH_ITEMS)
            if planned is None:
                return False
            first, last, weight, count = planned
            batch = await inv.fetchrow(
                s["record_batch"],
                self.job,
                job["generation"],
                first,
                last,
                weight,
                count,
                self.worker,
            )
        items = [dict(r) for r in await self.meta.fetch(s["load"], first, last)]
        assert len(items) == count
        # One statement, atomic by itself: no transaction block, as in the library.
        if await inv.fetchrow(s["finish_and_log"], batch["id"], 1) is None:
            raise RuntimeError("lost the batch")
        return True


class SqliteFloor:
    """The cycle with the stdlib sqlite3 (synchronous: the fastest Python can do)."""

    def __init__(self, inventory: Path, meta: Path, job: str = JOB, worker: str = "floor") -> None:
        self.sql = _sql(None, "items", "sqlite")
        self.paths, self.job, self.worker, self.jobs_used = (inventory, meta), job, worker, 1

    async def open(self) -> SqliteFloor:
        self.inv = sqlite3.connect(self.paths[0], isolation_level=None)
        for pragma in (
            "busy_timeout = 30000",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
        ):
            self.inv.execute(f"PRAGMA {pragma}")
        self.meta = sqlite3.connect(self.paths[1])
        return self

    async def close(self) -> None:
        self.inv.close()
        self.meta.close()

    async def cycle(self) -> None:
        for _ in range(2):
            if self._one():
                return
            self.jobs_used += 1
            self.job = f"{JOB}_{self.jobs_used}"
        raise RuntimeError("the metadata table is empty")

    def _one(self) -> bool:
        s, inv = self.sql, self.inv
        inv.execute("BEGIN IMMEDIATE")
        try:
            _kind, _src, _col, _flt, cursor, generation = inv.execute(
                s["lock"], (self.job, "items")
            ).fetchone()
            if inv.execute(s["reclaim"], (self.job, generation)).fetchone() is not None:
                raise RuntimeError("the floor never fails a batch")
            start = 1 if cursor is None else cursor + 1
            planned = _take(
                self.meta.execute(s["plan"], (start, BATCH_ITEMS + 1)).fetchall(), BATCH_ITEMS
            )
            if planned is None:
                inv.execute("ROLLBACK")
                return False
            first, last, weight, count = planned
            batch_id = inv.execute(
                s["insert"], (self.job, generation, first, last, weight, count, self.worker)
            ).fetchone()[0]
            inv.execute(s["open_log"], (batch_id, self.worker))
            inv.execute(s["cursor"], (last, weight, self.job))
            inv.execute("COMMIT")
        except BaseException:
            if inv.in_transaction:
                inv.execute("ROLLBACK")
            raise
        cur = self.meta.execute(s["load"], (first, last))
        names = [d[0] for d in cur.description]
        items = [dict(zip(names, row)) for row in cur.fetchall()]
        assert len(items) == count
        inv.execute("BEGIN IMMEDIATE")
        if inv.execute(s["finish"], (batch_id, 1)).fetchone() is None:
            raise RuntimeError("lost the batch")
        inv.execute(s["close_log"], (batch_id, 1))
        inv.execute("COMMIT")
        return True


class AiosqliteFloor(SqliteFloor):
    """The same with aiosqlite, the driver the library runs on: one thread hop per call."""

    async def open(self) -> AiosqliteFloor:  # type: ignore[override]
        self.ainv = await aiosqlite.connect(self.paths[0], isolation_level=None)
        for pragma in (
            "busy_timeout = 30000",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
        ):
            await self.ainv.execute(f"PRAGMA {pragma}")
        self.ameta = await aiosqlite.connect(self.paths[1])
        return self

    async def close(self) -> None:
        await self.ainv.close()
        await self.ameta.close()

    async def cycle(self) -> None:
        for _ in range(2):
            if await self._aone():
                return
            self.jobs_used += 1
            self.job = f"{JOB}_{self.jobs_used}"
        raise RuntimeError("the metadata table is empty")

    async def _aone(self) -> bool:
        s, inv = self.sql, self.ainv

        async def row(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Any:
            async with conn.execute(sql, params) as cur:
                return await cur.fetchone()

        await inv.execute("BEGIN IMMEDIATE")
        try:
            _kind, _src, _col, _flt, cursor, generation = await row(
                inv, s["lock"], (self.job, "items")
            )
            if await row(inv, s["reclaim"], (self.job, generation)) is not None:
                raise RuntimeError("the floor never fails a batch")
            start = 1 if cursor is None else cursor + 1
            async with self.ameta.execute(s["plan"], (start, BATCH_ITEMS + 1)) as cur:
                planned = _take(list(await cur.fetchall()), BATCH_ITEMS)
            if planned is None:
                await inv.execute("ROLLBACK")
                return False
            first, last, weight, count = planned
            batch_id = (
                await row(
                    inv,
                    s["insert"],
                    (self.job, generation, first, last, weight, count, self.worker),
                )
            )[0]
            await inv.execute(s["open_log"], (batch_id, self.worker))
            await inv.execute(s["cursor"], (last, weight, self.job))
            await inv.execute("COMMIT")
        except BaseException:
            if inv.in_transaction:
                await inv.execute("ROLLBACK")
            raise
        async with self.ameta.execute(s["load"], (first, last)) as cur:
            names = [d[0] for d in cur.description]
            items = [dict(zip(names, r)) for r in await cur.fetchall()]
        assert len(items) == count
        await inv.execute("BEGIN IMMEDIATE")
        if await row(inv, s["finish"], (batch_id, 1)) is None:
            raise RuntimeError("lost the batch")
        await inv.execute(s["close_log"], (batch_id, 1))
        await inv.execute("COMMIT")
        return True
