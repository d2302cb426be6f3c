"""Our tables' SQL: job locking, reclaiming, recording batches, fenced finishing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._engines import backend_errors, db_now, db_now_plus, retry_transient, write_transaction
from ._source import BatchPlan, SourceBinding
from ._tables import BackendTables, UtcDateTime, unfinished
from .exceptions import BatchLostError, JobSourceMismatchError

__all__ = ["Backend", "BatchRecord", "JobState"]

logger = logging.getLogger("pybatchintory")

# Serialises the first creation of the backend tables across processes (PostgreSQL).
_DDL_LOCK_KEY = 0x70796269  # "pybi"
LEASE_EXPIRED = "lease expired: the worker stopped renewing it (crashed, killed or hung)"


@dataclass(frozen=True)
class JobState:
    """The locked job row's cursor and generation."""

    cursor: int | None
    generation: int


@dataclass(frozen=True)
class BatchRecord:
    """A batch row as handed to a worker."""

    id: int
    job_identifier: str
    range_start: int
    range_end: int
    weight: float
    item_count: int
    attempt: int
    max_attempts: int
    lease_expires_at: datetime


class Backend:
    """The backend tables on the inventory engine."""

    def __init__(self, engine: AsyncEngine, tables: BackendTables) -> None:
        self.engine = engine
        self.tables = tables
        self.dialect = engine.dialect.name
        self._insert: Any = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._stmts: dict[str, Any] | None = None

    def _statements(self) -> dict[str, Any]:
        """The acquisition's and finish's statements, built once with bind parameters.

        A statement object memoizes its cache key: executing the same object with new
        values skips statement construction and cache-key generation, which were about
        a third of the CPU of an acquire-and-succeed cycle (benchmarks/floor.py).
        """
        if self._stmts is not None:
            return self._stmts
        jobs, b, logs = self.tables.jobs, self.tables.batches, self.tables.logs
        now, p = db_now(self.dialect), sa.bindparam
        lock = self._insert(jobs).values(
            job_identifier=p("p_job"), source_kind=p("p_kind"), source=p("p_source"),
            id_column=p("p_id_column"), filter_text=p("p_filter_text"),
            created_at=now, updated_at=now,
        )
        lock = lock.on_conflict_do_update(
            index_elements=[jobs.c.job_identifier], set_={"updated_at": now}
        ).returning(
            jobs.c.source_kind, jobs.c.source, jobs.c.id_column, jobs.c.filter_text,
            jobs.c.cursor, jobs.c.generation,
        )
        later: sa.ColumnElement[Any]
        if self.dialect == "sqlite":
            later = sa.func.strftime(
                "%Y-%m-%d %H:%M:%f", "now", p("p_lease_modifier")
            ).concat("000")
        else:
            later = sa.func.now() + sa.func.make_interval(
                0, 0, 0, 0, 0, 0, p("p_lease_seconds", type_=sa.Double)
            )
        self._stmts = {
            "lock": lock,
            "insert": sa.insert(b).values(
                job_identifier=p("p_job"), generation=p("p_generation"), processing_start=now,
                range_start=p("p_range_start"), range_end=p("p_range_end"),
                weight=p("p_weight"), item_count=p("p_item_count"), attempt=1,
                max_attempts=p("p_max_attempts"), status="running",
                lease_expires_at=sa.type_coerce(later, UtcDateTime), worker=p("p_worker"),
            ).returning(*self._record_columns()),
            "cursor": sa.update(jobs)
            .where(jobs.c.job_identifier == p("p_job"))
            .values(cursor=p("p_cursor"), updated_at=now),
            "open_log": sa.insert(logs).values(
                id=p("p_batch_id"), attempt=p("p_attempt"), processing_start=now,
                status="running", worker=p("p_worker"),
            ),
            "close_log": sa.update(logs)
            .where(
                logs.c.id == p("p_batch_id"), logs.c.attempt == p("p_attempt"),
                logs.c.status == "running",
            )
            .values(status=p("p_status"), processing_end=now, logging=p("p_text")),
            "finish": sa.update(b)
            .where(b.c.id == p("p_batch_id"), b.c.attempt == p("p_attempt"), b.c.status == "running")
            .values(
                status=p("p_status"), processing_end=now, lease_expires_at=None,
                result=p("p_result", type_=b.c.result.type),
                max_attempts=b.c.max_attempts + p("p_refund", type_=sa.Integer),
            )
            .returning(b.c.max_attempts),
        }
        return self._stmts

    def _lease_params(self, lease_seconds: float) -> dict[str, Any]:
        if self.dialect == "sqlite":
            return {"p_lease_modifier": f"{float(lease_seconds):+f} seconds"}
        return {"p_lease_seconds": float(lease_seconds)}

    # -- creation -------------------------------------------------------------------

    async def create_tables(self) -> None:
        """Create the tables if absent; safe when many processes do it at once."""
        async with backend_errors("creating the backend tables", self.engine):
            if self.dialect == "postgresql":
                await self._create_postgresql()
            else:
                await retry_transient(self._create_sqlite)

    async def _create_sqlite(self) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.run_sync(self.tables.metadata.create_all)

    async def _create_postgresql(self) -> None:
        async with self.engine.connect() as conn:
            # Autocommit, so that each check sees what a concurrent creator committed.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.select(sa.func.pg_advisory_lock(_DDL_LOCK_KEY)))
            try:
                schema = self.tables.metadata.schema
                if schema:
                    await conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
                await conn.run_sync(self.tables.metadata.create_all)
                await self._add_exclusion_constraint(conn)
            finally:
                await conn.execute(sa.select(sa.func.pg_advisory_unlock(_DDL_LOCK_KEY)))

    async def _add_exclusion_constraint(self, conn: AsyncConnection) -> None:
        """A database-level net under invariant 1, where btree_gist can be had."""
        batches = self.tables.batches
        name = f"{batches.name}_ranges_disjoint"
        prep = conn.dialect.identifier_preparer
        # Fix (issue 3): look on this table only. Constraint names are per schema, and the
        # check by name alone found another schema's constraint and skipped ours.
        exists = await conn.scalar(
            sa.text(
                "SELECT 1 FROM pg_constraint WHERE conname = :name "
                "AND conrelid = to_regclass(:table)"
            ),
            {"name": name, "table": prep.format_table(batches)},
        )
        if exists:
            return
        try:
            await conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
            await conn.execute(
                sa.text(
                    f"ALTER TABLE {prep.format_table(batches)} ADD CONSTRAINT "
                    f"{prep.quote(name)} EXCLUDE USING gist (job_identifier WITH =, "
                    "generation WITH =, int8range(range_start, range_end, '[]') WITH &&)"
                )
            )
        except DBAPIError as exc:
            logger.info(
                "no exclusion constraint on %s (%s); the job lock alone keeps ranges disjoint",
                batches.name,
                type(exc.orig).__name__,
            )

    # -- acquisition (inside the caller's write transaction) -----------------------

    async def lock_job(
        self, conn: AsyncConnection, job_identifier: str, binding: SourceBinding
    ) -> JobState:
        """Insert the job's row if absent and lock it, in one statement.

        ``ON CONFLICT DO UPDATE`` takes the row lock that ``SELECT … FOR UPDATE`` would,
        and returns the row. On SQLite the transaction already holds the write lock.
        """
        params = {
            "p_job": job_identifier,
            "p_kind": binding.kind,
            "p_source": binding.name,
            "p_id_column": binding.id_column,
            "p_filter_text": binding.filter_text,
        }
        row = (await conn.execute(self._statements()["lock"], params)).one()
        bound = SourceBinding(row.source_kind, row.source, row.id_column, row.filter_text)
        if bound != binding:
            raise JobSourceMismatchError(
                f"job {job_identifier!r} is bound to {bound.describe()}, not to "
                f"{binding.describe()}; use another job identifier for another source"
            )
        return JobState(row.cursor, row.generation)

    async def reclaim(
        self,
        conn: AsyncConnection,
        job_identifier: str,
        job: JobState,
        window: tuple[int | None, int | None],
        lease_seconds: float,
        worker: str,
    ) -> BatchRecord | None:
        """Hand out again the job's oldest failed batch with attempts left, or running
        batch whose lease expired: same range, ``attempt + 1``, a new log row."""
        b = self.tables.batches
        now = db_now(self.dialect)
        expired = sa.and_(b.c.status == "running", b.c.lease_expires_at < now)
        retryable = sa.and_(b.c.status == "failed", b.c.attempt < b.c.max_attempts)
        candidates = (
            sa.select(b.c.id, b.c.attempt, b.c.max_attempts, b.c.status)
            .where(
                b.c.job_identifier == job_identifier,
                unfinished(b),
                b.c.generation == job.generation,
                sa.or_(expired, retryable),
            )
            .order_by(b.c.id)
            .limit(1)
        )
        id_start, id_end = window
        if id_start is not None:
            candidates = candidates.where(b.c.range_start >= id_start)
        if id_end is not None:
            candidates = candidates.where(b.c.range_end <= id_end)
        while (found := (await conn.execute(candidates)).first()) is not None:
            # Fenced on what we saw: a finish or heartbeat that committed in between
            # makes the update match nothing, and we look again.
            was_running = found.status == "running"
            fence = sa.and_(
                b.c.id == found.id,
                b.c.attempt == found.attempt,
                expired if was_running else retryable,
            )
            if was_running and found.attempt >= found.max_attempts:
                await self._expire_exhausted(conn, fence, found.id, found.attempt)
                continue
            taken = (
                await conn.execute(
                    sa.update(b)
                    .where(fence)
                    .values(
                        status="running",
                        attempt=b.c.attempt + 1,
                        processing_start=now,
                        processing_end=None,
                        lease_expires_at=db_now_plus(self.dialect, lease_seconds),
                        worker=worker,
                    )
                    .returning(*self._record_columns())
                )
            ).first()
            if taken is None:
                continue
            if was_running:
                await self._close_log(conn, found.id, found.attempt, "failed", LEASE_EXPIRED)
            await self._open_log(conn, taken.id, taken.attempt, worker)
            return BatchRecord(**taken._mapping)
        return None

    async def _expire_exhausted(
        self, conn: AsyncConnection, fence: sa.ColumnElement[bool], batch_id: int, attempt: int
    ) -> None:
        b = self.tables.batches
        expired = await conn.execute(
            sa.update(b)
            .where(fence)
            .values(status="failed", processing_end=db_now(self.dialect), lease_expires_at=None)
        )
        if expired.rowcount != 1:
            return
        await self._close_log(conn, batch_id, attempt, "failed", LEASE_EXPIRED)
        logger.warning(
            "batch %s used its last attempt (%s) and its lease expired; it stays failed",
            batch_id,
            attempt,
            extra={"batch_id": batch_id, "attempt": attempt},
        )

    async def insert_batch(
        self,
        conn: AsyncConnection,
        job_identifier: str,
        job: JobState,
        plan: BatchPlan,
        *,
        max_attempts: int,
        lease_seconds: float,
        worker: str,
    ) -> BatchRecord:
        """Record a new batch, its first log row and the job's new cursor together."""
        st = self._statements()
        params = {
            "p_job": job_identifier,
            "p_generation": job.generation,
            "p_range_start": plan.range_start,
            "p_range_end": plan.range_end,
            "p_weight": plan.weight,
            "p_item_count": plan.item_count,
            "p_max_attempts": max_attempts,
            "p_worker": worker,
            **self._lease_params(lease_seconds),
        }
        row = (await conn.execute(st["insert"], params)).one()
        await self._open_log(conn, row.id, 1, worker)
        await conn.execute(st["cursor"], {"p_job": job_identifier, "p_cursor": plan.range_end})
        return BatchRecord(**row._mapping)

    def _record_columns(self) -> list[sa.Column[Any]]:
        b = self.tables.batches
        return [
            b.c.id,
            b.c.job_identifier,
            b.c.range_start,
            b.c.range_end,
            b.c.weight,
            b.c.item_count,
            b.c.attempt,
            b.c.max_attempts,
            b.c.lease_expires_at,
        ]

    async def _open_log(
        self, conn: AsyncConnection, batch_id: int, attempt: int, worker: str
    ) -> None:
        await conn.execute(
            self._statements()["open_log"],
            {"p_batch_id": batch_id, "p_attempt": attempt, "p_worker": worker},
        )

    async def _close_log(
        self, conn: AsyncConnection, batch_id: int, attempt: int, status: str, text: str | None
    ) -> None:
        await conn.execute(
            self._statements()["close_log"],
            {"p_batch_id": batch_id, "p_attempt": attempt, "p_status": status, "p_text": text},
        )

    # -- a worker's own batch (no job lock: fenced on id, attempt and status) --------

    async def finish(
        self,
        batch_id: int,
        attempt: int,
        *,
        succeeded: bool,
        result: dict[str, Any] | None,
        text: str | None,
        refund_attempt: bool = False,
    ) -> int:
        """Record the outcome of one attempt; return the batch's max_attempts.

        ``refund_attempt`` hands a batch back without counting the attempt against it
        (the worker never got it, e.g. its acquisition was cancelled). Raises
        BatchLostError, writing nothing, when the attempt is no longer running.
        """
        status = "succeeded" if succeeded else "failed"
        params = {
            "p_batch_id": batch_id,
            "p_attempt": attempt,
            "p_status": status,
            "p_result": result,
            "p_refund": 1 if refund_attempt else 0,
        }

        async def attempt_finish() -> int:
            async with write_transaction(self.engine) as conn:
                row = (await conn.execute(self._statements()["finish"], params)).first()
                if row is None:
                    raise _lost(batch_id, attempt)
                await self._close_log(conn, batch_id, attempt, status, text)
                return int(row.max_attempts)

        async with backend_errors(f"recording batch {batch_id} as {status}", self.engine):
            return await retry_transient(attempt_finish)

    async def heartbeat(self, batch_id: int, attempt: int, lease_seconds: float) -> datetime:
        """Extend the lease of a running attempt; return the new expiry."""
        b = self.tables.batches

        async def attempt_renew() -> datetime:
            async with write_transaction(self.engine) as conn:
                expires = await conn.scalar(
                    sa.update(b)
                    .where(b.c.id == batch_id, b.c.attempt == attempt, b.c.status == "running")
                    .values(lease_expires_at=db_now_plus(self.dialect, lease_seconds))
                    .returning(b.c.lease_expires_at)
                )
                if expires is None:
                    raise _lost(batch_id, attempt)
                return expires  # type: ignore[no-any-return]

        async with backend_errors(f"renewing the lease of batch {batch_id}", self.engine):
            return await retry_transient(attempt_renew)


    async def requeue(self, job_identifier: str, batch_id: int | None) -> list[int]:
        """Give failed batches that used up their attempts one more; return their ids."""
        b, jobs = self.tables.batches, self.tables.jobs
        # Only the current generation: batches superseded by a reset are history.
        generation = (
            sa.select(jobs.c.generation)
            .where(jobs.c.job_identifier == job_identifier)
            .scalar_subquery()
        )
        exhausted = sa.and_(
            b.c.job_identifier == job_identifier,
            b.c.generation == generation,
            b.c.status == "failed",
            b.c.attempt >= b.c.max_attempts,
        )
        if batch_id is not None:
            exhausted = sa.and_(exhausted, b.c.id == batch_id)

        async def requeue_all() -> list[int]:
            async with write_transaction(self.engine) as conn:
                result = await conn.execute(
                    sa.update(b).where(exhausted).values(max_attempts=b.c.attempt + 1).returning(b.c.id)
                )
                return sorted(int(i) for i in result.scalars())

        async with backend_errors(f"re-queueing failed batches of job {job_identifier!r}", self.engine):
            return await retry_transient(requeue_all)


def _lost(batch_id: int, attempt: int) -> BatchLostError:
    return BatchLostError(
        f"batch {batch_id} attempt {attempt} is no longer running under this worker: its "
        "lease expired and it was handed out again, or it was already finished. Nothing "
        "was recorded; renew the lease more often or acquire with a longer lease_seconds"
    )
