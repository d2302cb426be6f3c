"""The exact horizon of a PostgreSQL metadata table (issue 10; docs/design-horizon.md).

An id is handed out by ``nextval()`` inside the INSERT, after the INSERT took
``RowExclusiveLock`` on the table, and becomes visible at its transaction's commit. A
job that plans up to the highest visible id can therefore skip a lower id whose
transaction commits later. The horizon is the highest id H such that every row with an
id <= H that will ever become visible already is:

- one statement reads M, the highest visible id of its snapshot S, and the virtual
  transaction ids holding RowExclusiveLock on the table (or a partition, parent or
  child of it) from pg_locks, which is read live, after S (a *candidate*);
- once none of those transactions holds that lock any more (read by a later statement),
  every id <= M is settled, and a plan made in a still later statement may go up to M.

SQLite has one writer at a time, and ids commit in the order they were assigned: the
highest visible id is the horizon by construction, so the mode needs nothing there.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ._engines import read_connection
from ._reports import HorizonHolder, HorizonReport
from .exceptions import HorizonUnavailableError

__all__ = ["HORIZON_MODES", "Horizon", "HorizonHolder", "HorizonReport", "check_horizon", "report"]

HorizonMode = Literal["exact"]
HORIZON_MODES = ("exact", None)
# Candidates not yet settled. When full, the newest is replaced: the oldest ones settle
# first, and dropping them could postpone settling for ever under steady inserts.
_MAX_PENDING = 32

# The table, its inheritance children (partitions included, at any depth) and its
# ancestors: an INSERT through a parent locks the parent before its DEFAULT runs, and
# locks the partition only when it routes the row there.
_RELATIONS = """
WITH RECURSIVE down(oid) AS (
    SELECT CAST(:pybi_rel AS oid)
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN down ON i.inhparent = down.oid
), up(oid) AS (
    SELECT CAST(:pybi_rel AS oid)
    UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid
), rels(oid) AS (SELECT oid FROM down UNION SELECT oid FROM up)
"""
# Granted RowExclusiveLocks only: a writer still waiting for the lock has not run its
# DEFAULT yet, so its ids will exceed M. pid is NULL for a prepared transaction, which
# keeps its locks until COMMIT/ROLLBACK PREPARED: it counts like any other writer.
_LOCKERS = """
SELECT l.virtualtransaction, l.pid FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                    WHERE d.datname = pg_catalog.current_database())
  AND l.relation IN (SELECT oid FROM rels)
  AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
"""


@dataclass
class Horizon:
    """The settled horizon of one PostgreSQL table, kept between acquisitions."""

    engine: AsyncEngine
    relation_oid: int
    max_id_sql: str
    settled: int | None = None
    refreshes: int = 0  # refresh statements started
    # the last plan reached the settled horizon: the next one will likely refresh
    at_tail: bool = False
    _latest: int = -1  # the number of the last refresh that completed
    _prefetches: set[asyncio.Future[int | None]] = field(default_factory=set)
    _pending: list[tuple[int, frozenset[str]]] = field(default_factory=list)
    _locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One statement: its snapshot S is taken before pg_lock_status() runs, so the
        # lockers are read after S, whatever the order of the two subqueries. Only
        # constants and SQLAlchemy's rendering of the reflected table's name go in.
        self._read = sa.text(
            "".join(
                (
                    _RELATIONS,
                    "SELECT (",
                    self.max_id_sql,
                    ") AS m, ARRAY(SELECT virtualtransaction FROM (",
                    _LOCKERS,
                    ") AS lockers) AS lockers",
                )
            )
        )

    def prefetch(self, upper: int | None) -> int | None:
        """At the tail, start a refresh now, while the acquisition locks its job row, and
        return the number that lets the plan take it (``refresh(since=...)``). Not for
        a window that ends at or below the settled horizon: it needs no refresh."""
        if not self.at_tail or (
            upper is not None and self.settled is not None and self.settled >= upper
        ):
            return None
        since = self.refreshes
        task = asyncio.ensure_future(self.refresh(since))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetched)
        return since

    def _prefetched(self, task: asyncio.Future[int | None]) -> None:
        self._prefetches.discard(task)
        if not task.cancelled():
            # a failure shows again in the plan's own refresh, which then runs anew
            task.exception()

    def _lock(self) -> asyncio.Lock:
        # one per event loop: a SyncInventory may run its calls on a loop of its own
        loop = asyncio.get_running_loop()
        lock = self._locks.get(id(loop))
        if lock is None:
            self._locks.clear()
            lock = self._locks[id(loop)] = asyncio.Lock()
        return lock

    async def refresh(self, since: int | None = None) -> int | None:
        """Read a new candidate and settle every older one whose lockers all ended.

        Refreshes of one source run one at a time, so that each candidate is checked
        against lockers read after its own. ``since``: a refresh whose statement started
        at or after that number (``refreshes`` when the caller began) will do, such as
        one prefetched by the same acquisition, or one another task ran meanwhile.
        Returns the settled horizon (None: nothing yet).
        """
        if since is None:
            since = self.refreshes
        async with self._lock():
            if self._latest >= since:
                return self.settled
            issue = self.refreshes
            self.refreshes += 1
            async with read_connection(self.engine) as conn:
                row = (await conn.execute(self._read, {"pybi_rel": self.relation_oid})).one()
            self._latest = issue
            highest, lockers = row.m, frozenset(row.lockers or ())
            settled = self.settled
            pending = []
            for m, held in self._pending:
                if held & lockers:
                    pending.append((m, held))
                else:
                    settled = m if settled is None else max(settled, m)
            if highest is not None:
                candidate = (int(highest), lockers)
                if not lockers:
                    settled = candidate[0] if settled is None else max(settled, candidate[0])
                elif len(pending) < _MAX_PENDING:
                    pending.append(candidate)
                else:
                    pending[-1] = candidate
            self._pending, self.settled = pending, settled
            return settled


_NEXTVAL = re.compile(r"^nextval\('(?:[^']|'')+'::regclass\)$")

_COLUMN = """
SELECT CAST(c.relkind AS text) AS relkind, CAST(a.attidentity AS text) AS attidentity,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       CASE WHEN a.attidentity IN ('a', 'd')
            THEN pg_catalog.pg_get_serial_sequence(CAST(c.oid AS regclass)::text, a.attname)::regclass::oid
            ELSE (SELECT dep.refobjid FROM pg_catalog.pg_depend dep
                  JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
                  WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid
                    AND dep.refclassid = 'pg_catalog.pg_class'::regclass LIMIT 1)
       END AS seq
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = :pybi_col
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.oid = CAST(:pybi_rel AS oid)
"""
_SEQUENCE = """
SELECT CAST(s.seqrelid AS regclass)::text AS name, s.seqcache, s.seqincrement, s.seqcycle
FROM pg_catalog.pg_sequence s WHERE s.seqrelid = CAST(:pybi_seq AS oid)
"""
_WAYS_OUT = (
    "; or bound the job by a settle lag instead (settle_column=..., settle_seconds=...), "
    "or pass horizon=None to plan up to the highest visible id (late commits can be "
    "skipped for good)"
)


async def check_horizon(engine: AsyncEngine, table: sa.Table, id_column: str) -> Horizon:
    """Check the preconditions of the exact horizon on ``table``; return its Horizon.

    The id column's default must be a sequence's ``nextval()`` (serial, bigserial or a
    DEFAULT written by hand) or an identity column, and the sequence must hand out one
    id at a time, ascending, without cycling. Raises HorizonUnavailableError otherwise.
    """
    name = table.fullname
    async with read_connection(engine) as conn:
        schema = table.schema or await conn.scalar(sa.text("SELECT current_schema()"))
        rel = await conn.scalar(
            sa.text(
                "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = :name"
            ),
            {"schema": schema, "name": table.name},
        )
        column = (
            await conn.execute(sa.text(_COLUMN), {"pybi_col": id_column, "pybi_rel": rel})
        ).first()
        sequence = None
        if column is not None and column.seq is not None:
            sequence = (await conn.execute(sa.text(_SEQUENCE), {"pybi_seq": column.seq})).first()
    if rel is None or column is None:
        raise HorizonUnavailableError(
            f"the exact horizon needs the id column {id_column!r} of table {name!r}, not found "
            "in the catalog" + _WAYS_OUT
        )
    if column.relkind not in ("r", "p"):
        raise HorizonUnavailableError(
            f"{name!r} is not a table (relkind {column.relkind!r}): the exact horizon watches "
            "the writers of a table; read the table itself" + _WAYS_OUT
        )
    identity = column.attidentity in ("a", "d")
    by_nextval = column.default_expr is not None and _NEXTVAL.match(column.default_expr)
    if sequence is None or not (identity or by_nextval):
        default = column.default_expr or "none"
        raise HorizonUnavailableError(
            f"the exact horizon needs ids that a sequence assigns inside the INSERT, but "
            f"id column {id_column!r} of {name!r} has default {default}: make it an identity "
            "column or give it DEFAULT nextval('a_sequence')" + _WAYS_OUT
        )
    if sequence.seqcache != 1:
        raise HorizonUnavailableError(
            f"sequence {sequence.name} of {name}.{id_column} has CACHE {sequence.seqcache}: "
            "each session reserves that many ids ahead and inserts them later, so a low id "
            "can appear after higher ones long after any writer of the table ended. Fix: "
            f"ALTER SEQUENCE {sequence.name} CACHE 1" + _WAYS_OUT
        )
    if sequence.seqincrement <= 0 or sequence.seqcycle:
        raise HorizonUnavailableError(
            f"sequence {sequence.name} of {name}.{id_column} "
            + ("counts down" if sequence.seqincrement <= 0 else "cycles")
            + ": the exact horizon needs ids that only grow. Fix: ALTER SEQUENCE "
            f"{sequence.name} INCREMENT BY 1 NO CYCLE" + _WAYS_OUT
        )
    max_id = sa.select(sa.func.max(table.c[id_column]))
    return Horizon(engine, int(rel), str(max_id.compile(dialect=engine.dialect)))


_HOLDERS = "".join(
    (
        _RELATIONS,
        """
SELECT lockers.virtualtransaction, lockers.pid, a.state, a.xact_start, a.query, a.usename,
       a.application_name,
       EXTRACT(EPOCH FROM (pg_catalog.clock_timestamp() - a.xact_start)) AS age
FROM (SELECT DISTINCT * FROM (""",
        _LOCKERS,
        """) AS l) AS lockers
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = lockers.pid
ORDER BY a.xact_start NULLS FIRST
""",
    )
)


async def report(horizon: Horizon) -> HorizonReport:
    """The horizon now: one refresh, then who holds it (pg_stat_activity by pid)."""
    settled = await horizon.refresh()
    async with read_connection(horizon.engine) as conn:
        highest = await conn.scalar(sa.text(horizon.max_id_sql))
        rows = (await conn.execute(sa.text(_HOLDERS), {"pybi_rel": horizon.relation_oid})).all()
    holders = tuple(_holder(r) for r in rows)
    if not holders and highest is not None:
        settled = int(highest) if settled is None else max(settled, int(highest))
    return HorizonReport(settled, None if highest is None else int(highest), holders)


def _holder(row: Any) -> HorizonHolder:
    return HorizonHolder(
        virtual_transaction=row.virtualtransaction,
        pid=row.pid,
        state="prepared transaction" if row.pid is None else row.state,
        transaction_start=row.xact_start,
        transaction_age_seconds=None if row.age is None else float(row.age),
        query=row.query,
        user=row.usename,
        application_name=row.application_name,
    )
