"""Where batches come from: a reflected metadata table, or the batches of an upstream job.

Range planning pages through ``(id, weight)`` in ascending id order with ``LIMIT`` and
stops at the budget, so an acquisition reads the index range it hands out and no more,
whatever the size of the table (docs/design.md, invariant 6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import CompileError, NoSuchTableError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._dialects import dialect_named
from ._engines import HotConnection, cursor_transaction, hot_connection, read_connection
from ._horizon import Horizon, check_horizon
from ._statements import frontier
from ._tables import BackendTables
from .exceptions import (
    HorizonUnavailableError,
    InvalidArgumentError,
    InvalidFilterError,
    SourceDataError,
    UnknownColumnError,
    UnknownTableError,
)
from .job import Filter

__all__ = [
    "BatchPlan",
    "RangeAccumulator",
    "Source",
    "SourceBinding",
    "check_table",
    "job_source",
    "narrowed",
    "reflect_table_source",
    "time_predicate",
]

# Marks a filter text whose bound values could not be rendered: not runnable SQL.
PARAMS_DIGEST = " -- params sha256:"
_FIRST_PAGE = 64
_MAX_PAGE = 8192
_NO_UPPER = 2**63 - 1
_PG_INT_FLOOR: dict[type, int] = {
    sa.Integer: -(2**31),
    sa.INTEGER: -(2**31),
    sa.SmallInteger: -(2**15),
    sa.SMALLINT: -(2**15),
}


@dataclass(frozen=True)
class SourceBinding:
    """What a job is bound to: a job never mixes two sources (see JobSourceMismatchError)."""

    kind: str  # 'table' or 'job'
    name: str
    id_column: str
    filter_text: str
    # A mapping filter's clauses, each with the texts it may have in a filter text stored
    # by an older version (keys in the caller's order, IN lists unsorted): see accepts().
    legacy_clauses: tuple[frozenset[str], ...] = field(default=(), compare=False)

    def accepts(self, stored: SourceBinding) -> bool:
        """Whether a job bound to ``stored`` may run with this binding: the same source,
        id column and filter. Fix (issue 13, item 7): a mapping filter's text is now
        canonical (keys sorted, IN lists sorted), so ``{"a": 1, "b": 2}`` and
        ``{"b": 2, "a": 1}`` bind alike; a text stored before, in the caller's key order,
        is recognised as the same filter whatever that order was."""
        if (stored.kind, stored.name, stored.id_column) != (self.kind, self.name, self.id_column):
            return False
        if stored.filter_text == self.filter_text:
            return True
        return bool(self.legacy_clauses) and _joins_clauses(
            stored.filter_text, list(self.legacy_clauses)
        )

    def describe(self) -> str:
        what = f"{self.kind} {self.name!r} (id column {self.id_column!r}"
        return what + (f", filter {self.filter_text})" if self.filter_text else ", no filter)")


@dataclass(frozen=True)
class BatchPlan:
    """A contiguous id range chosen for a new batch."""

    range_start: int
    range_end: int
    weight: float
    item_count: int


@dataclass
class RangeAccumulator:
    """Admit rows in id order while they fit the budget (pure, no I/O).

    The first row is always admitted, however heavy: a soft limit, so that a job can
    never get stuck behind an item heavier than its budget (docs/design.md, invariant 5).
    """

    budget: float | None
    max_items: int | None
    first_id: int | None = None
    last_id: int | None = None
    weight: float = 0.0
    count: int = 0
    full: bool = False

    def offer(self, item_id: int, item_weight: Any) -> bool:
        """Admit the row if it fits; return False (and stay full) once it does not."""
        before = self.count
        self.offer_rows(((item_id, item_weight),))
        return self.count > before

    def offer_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Admit each ``(id, weight)`` row in order until one does not fit, in one
        tight loop: planning offers every row of a batch, and a method call per row
        showed in profiles."""
        if self.full:
            return
        budget, max_items = self.budget, self.max_items
        first, last, total, count, full = (
            self.first_id,
            self.last_id,
            self.weight,
            self.count,
            False,
        )
        for item_id, item_weight in rows:
            kind = item_weight.__class__
            if kind is float or kind is int:
                value = float(item_weight)
                if value < 0 or value != value:  # negative or NaN: raise as offer() does
                    value = _checked_weight(item_id, item_weight)
            else:
                value = _checked_weight(item_id, item_weight)
            if count and budget is not None and total + value > budget:
                full = True
                break
            if first is None:
                first = item_id
            last, total, count = item_id, total + value, count + 1
            if (budget is not None and total >= budget) or (
                max_items is not None and count >= max_items
            ):
                full = True
                break
        self.first_id, self.last_id, self.weight, self.count, self.full = (
            first,
            last,
            total,
            count,
            full,
        )

    def plan(self) -> BatchPlan | None:
        if self.first_id is None or self.last_id is None:
            return None
        return BatchPlan(self.first_id, self.last_id, self.weight, self.count)


def _checked_weight(item_id: int, item_weight: Any) -> float:
    if item_weight is None:
        raise SourceDataError(
            f"item id {item_id} has a NULL weight; fix the row or exclude it with a filter"
        )
    value = float(item_weight) if isinstance(item_weight, (int, float, Decimal)) else math.nan
    if math.isnan(value) or value < 0:
        raise SourceDataError(
            f"item id {item_id} has weight {item_weight!r}; weights must be numbers >= 0"
        )
    return value


@dataclass
class Source:
    """A table (with a filter) that batches are planned over and items are read from."""

    engine: AsyncEngine
    table: sa.Table | sa.FromClause
    id_col: sa.ColumnElement[int]
    weight_col: sa.ColumnElement[Any] | None  # None: every item weighs 1
    where: sa.ColumnElement[bool]
    item_cols: Sequence[sa.ColumnElement[Any]]
    binding: SourceBinding
    # planning only: never plan past this condition (the settle lag), items unaffected
    plan_bound: sa.ColumnElement[bool] | None = None
    # the last batch's item count, so the first page usually covers the whole batch
    page_hint: int = field(default=_FIRST_PAGE)
    # planning only: never plan past the exact horizon (PostgreSQL; docs/design-horizon.md)
    horizon: Horizon | None = None
    # the job's time window alone (also inside ``where``): its rows' lowest and highest id
    # bound the run (see time_window_ids)
    time_window: sa.ColumnElement[bool] | None = None

    def __post_init__(self) -> None:
        # Built once per source: a statement object memoizes its cache key, so executing
        # the same object with new parameter values skips statement construction and
        # cache-key generation, leaving SQLAlchemy only its compiled-cache lookup.
        weight = self.weight_col if self.weight_col is not None else sa.literal(1)
        id_type = self.id_col.type
        page = (
            sa.select(self.id_col, weight)
            .where(self.id_col >= sa.bindparam("pybi_start", type_=id_type), self.where)
            .order_by(self.id_col)
            .limit(sa.bindparam("pybi_page", type_=sa.Integer()))
        )
        if self.plan_bound is not None:
            page = page.where(self.plan_bound)
        self._page: sa.Select[Any] = page
        self._page_upto: sa.Select[Any] = page.where(
            self.id_col <= sa.bindparam("pybi_upper", type_=id_type)
        )
        self._range: sa.Select[Any] = (
            sa.select(*self.item_cols)
            .where(
                self.id_col >= sa.bindparam("pybi_start", type_=id_type),
                self.id_col <= sa.bindparam("pybi_end", type_=id_type),
                self.where,
            )
            .order_by(self.id_col)
        )
        self._max_id: sa.Select[Any] = sa.select(sa.func.max(self.id_col))
        # Items whose values SQLAlchemy would not convert may be read by the driver
        # itself (pybatchintory._direct); others, say an ARRAY, go through SQLAlchemy.
        dialect = self.engine.dialect
        self._plain_items = all(
            _no_result_processing(column.type, dialect) for column in self._range.selected_columns
        )

    async def max_id(self) -> int | None:
        """The highest id in the table now: fixes the upper bound of a run (O(log n))."""
        # Without the filter: a backward step on the id index, never a scan.
        async with read_connection(self.engine) as conn:
            value = await conn.scalar(self._max_id)
        return None if value is None else int(value)

    async def time_window_ids(self) -> tuple[int, int] | None:
        """The lowest and highest id of the rows in the job's time window (None: no row),
        read once when a run starts; the time predicate in ``where`` keeps the rows of
        other times between them out (docs/observability.md, time windows)."""
        if self.time_window is None:
            raise AssertionError("the source has no time window")
        return await window_ids(self.engine, self.table, self.id_col, self.time_window)

    async def plan(
        self,
        start: int,
        upper: int | None,
        budget: float | None,
        max_items: int | None,
        conn: HotConnection | None = None,
        horizon_since: int | None = None,
    ) -> BatchPlan | None:
        """Choose the next batch: the longest run of matching ids from ``start`` that fits.

        ``conn``: plan on this connection (one of this source's engine) rather than a
        pooled one; a job source plans inside the acquisition's own transaction, which
        would otherwise hold one inventory connection while waiting for a second.
        ``horizon_since``: what ``Horizon.prefetch`` returned, if this acquisition
        prefetched the horizon.
        """
        acc = RangeAccumulator(budget, max_items)
        horizon = self.horizon
        if horizon is None:
            await self._fill(acc, start, upper, conn)
        else:
            # Plan up to the settled horizon; read the writers (one statement) only when
            # the batch is not full there and the range could go further.
            settled = horizon.settled
            begin = start
            if settled is not None and settled >= start:
                await self._fill(acc, start, _lowest(upper, settled), conn)
                begin = settled + 1
            horizon.at_tail = not acc.full and (settled is None or upper is None or settled < upper)
            if horizon.at_tail:
                settled = await horizon.refresh(horizon_since)
                if settled is not None and settled >= begin:
                    # a new statement, after the one that settled the ids up to there
                    await self._fill(acc, begin, _lowest(upper, settled), conn)
        planned = acc.plan()
        if planned is not None:
            self.page_hint = max(_FIRST_PAGE, min(_MAX_PAGE, planned.item_count + 1))
        return planned

    async def _fill(
        self, acc: RangeAccumulator, start: int, upper: int | None, conn: HotConnection | None
    ) -> None:
        """Offer ``acc`` the rows from ``start`` (up to ``upper``), page by page."""
        if self.engine.dialect.name == "postgresql":
            # "from the start" is -2**63, which an int4 or int2 parameter cannot carry
            start = max(start, _PG_INT_FLOOR.get(type(self.id_col.type), -(2**63)))
        page = self.page_hint if acc.max_items is None else min(self.page_hint, acc.max_items)
        page = max(page, 1)
        query = self._page_upto if upper is not None else self._page
        params: dict[str, Any] = {"pybi_start": start, "pybi_page": page}
        if upper is not None:
            params["pybi_upper"] = upper
        async with nullcontext(conn) if conn is not None else read_connection(self.engine) as db:
            while True:
                rows = (await db.execute(query, params)).all()
                acc.offer_rows(rows)
                if acc.full or len(rows) < params["pybi_page"] or rows[-1][0] >= _NO_UPPER:
                    break  # (the last test: no 64-bit id follows 2**63 - 1)
                params["pybi_start"] = rows[-1][0] + 1
                params["pybi_page"] = min(params["pybi_page"] * 2, _MAX_PAGE)

    async def contains(self, item_id: int) -> bool:
        """Whether ``item_id`` is a matching row (filter included): one index lookup."""
        query = (
            sa.select(sa.literal(1))
            .select_from(self.table)
            .where(self.id_col == item_id, self.where)
        )
        async with read_connection(self.engine) as conn:
            return (await conn.scalar(query)) is not None

    async def load(self, range_start: int, range_end: int) -> list[dict[str, Any]]:
        """All rows of the range, as dicts."""
        connect = hot_connection if self._plain_items else read_connection
        async with connect(self.engine) as conn:
            result = await conn.execute(
                self._range, {"pybi_start": range_start, "pybi_end": range_end}
            )
            keys = list(result.keys())
            # One fetch of all rows, then zip over plain rows: about twice as fast as
            # iterating the result and building dict(RowMapping) per row.
            return [dict(zip(keys, row)) for row in result.all()]

    async def stream(
        self, range_start: int, range_end: int, chunk_size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The rows of the range in chunks, through a server-side cursor."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise InvalidArgumentError(f"chunk_size must be an integer > 0, got {chunk_size!r}")
        async with cursor_transaction(self.engine) as conn:
            result = await conn.stream(
                self._range.execution_options(yield_per=chunk_size),
                {"pybi_start": range_start, "pybi_end": range_end},
            )
            keys = list(result.keys())
            async for chunk in result.partitions(chunk_size):
                yield [dict(zip(keys, row)) for row in chunk]


def _no_result_processing(type_: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
    if isinstance(type_, (sa.Numeric, sa.Float)):  # (Float is no Numeric in SQLAlchemy 2.1)
        # the driver returns float for float columns and Decimal for numeric ones, as
        # SQLAlchemy does unless asked to convert (asdecimal against the column's kind)
        return bool(type_.asdecimal) != isinstance(type_, sa.Float)
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, None) is None
    except Exception:  # a type that needs the driver's column type to decide
        return False


def _split_name(source_table: str) -> tuple[str | None, str]:
    schema, _, name = source_table.rpartition(".")
    return (schema or None), name


async def _reflect(conn: AsyncConnection, schema: str | None, name: str) -> sa.Table:
    def reflect(sync_conn: sa.Connection) -> sa.Table:
        table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=sync_conn)
        for column in table.c:
            # SQLAlchemy reflects MySQL's DOUBLE and REAL as Decimal-returning types;
            # a floating-point column gives floats on every database (docs/mysql.md).
            if isinstance(column.type, sa.Float) and column.type.asdecimal:
                column.type.asdecimal = False
        return table

    try:
        return await conn.run_sync(reflect)
    except NoSuchTableError:
        raise UnknownTableError(
            f"source table {'.'.join(filter(None, (schema, name)))!r} does not exist on the "
            "metadata database; give it as 'table' or 'schema.table'"
        ) from None


async def check_table(engine: AsyncEngine, source_table: str) -> None:
    """Raise UnknownTableError unless ``source_table`` exists on ``engine``'s database."""
    schema, name = _split_name(source_table)
    async with read_connection(engine) as conn:
        await _reflect(conn, schema, name)


def _column(table: sa.Table, name: str, role: str, kinds: tuple[type, ...]) -> sa.Column[Any]:
    if name not in table.c:
        raise UnknownColumnError(
            f"{role} column {name!r} does not exist in table {table.fullname!r}; "
            f"its columns are: {', '.join(table.c.keys())}"
        )
    column = table.c[name]
    if not isinstance(column.type, kinds):
        wanted = "an integer" if kinds == (sa.Integer,) else "a number"
        raise UnknownColumnError(
            f"{role} column {name!r} of table {table.fullname!r} has type {column.type}; "
            f"it must be {wanted}"
        )
    return column


def build_filter(table: sa.Table, filter: Filter) -> sa.ColumnElement[bool]:
    """Turn the user's filter into a boolean expression with every value bound."""
    if filter is None:
        return sa.true()
    if isinstance(filter, str):
        raise InvalidFilterError(
            "a filter given as a plain string is refused: wrap deliberate SQL in "
            "sqlalchemy.text(...), or pass a mapping {column: value}"
        )
    if isinstance(filter, Mapping):
        if not filter:
            return sa.true()
        # Canonical (keys and IN lists sorted), so that the job binding's text is the
        # same in every process whatever order the mapping was written in.
        return sa.and_(*_mapping_clauses(table, filter, canonical=True))
    if callable(filter) and not isinstance(filter, sa.ClauseElement):
        return build_filter(table, filter(table))
    if isinstance(filter, sa.TextClause):
        return sa.and_(sa.true(), filter)
    if isinstance(filter, sa.ColumnElement):
        return filter
    raise InvalidFilterError(
        f"a filter of type {type(filter).__name__} is not supported; pass a mapping, "
        "a SQLAlchemy boolean expression or a callable(table) returning one"
    )


def _joins_clauses(text: str, clauses: list[frozenset[str]]) -> bool:
    """Whether ``text`` is ``" AND "``-joined texts of every clause once, in any order
    (each clause spelled by one of its texts). Backtracking over a handful of clauses."""
    if not clauses:
        return text == ""
    for i, spellings in enumerate(clauses):
        rest = clauses[:i] + clauses[i + 1 :]
        for spelling in spellings:
            if not text.startswith(spelling):
                continue
            tail = text[len(spelling) :]
            if not rest and tail == "":
                return True
            if rest and tail.startswith(" AND ") and _joins_clauses(tail[5:], rest):
                return True
    return False


def _in_values(value: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]) -> list[Any]:
    """An IN list in canonical order (its order has no meaning): sorted, duplicates
    dropped, where the values allow it."""
    try:
        return sorted(set(value))
    except TypeError:  # unhashable or unorderable values: as given
        return list(value)


def _mapping_clauses(
    table: sa.Table, filter: Mapping[Any, Any], *, canonical: bool
) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    items = sorted(filter.items(), key=lambda kv: str(kv[0])) if canonical else filter.items()
    for name, value in items:
        if not isinstance(name, str) or name not in table.c:
            raise UnknownColumnError(
                f"filter column {name!r} does not exist in table {table.fullname!r}"
            )
        column = table.c[name]
        if value is None:
            clauses.append(column.is_(None))
        elif isinstance(value, (list, tuple, set, frozenset)):
            if canonical:
                values = _in_values(value)
            else:  # how versions before issue 13 spelled it
                values = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
            clauses.append(column.in_(values))
        else:
            clauses.append(column == value)
    return clauses


def legacy_clause_texts(
    table: sa.Table, filter: Filter, dialect: sa.Dialect
) -> tuple[frozenset[str], ...]:
    """For a mapping filter: each clause's canonical text and its text as an older
    version stored it (see :meth:`SourceBinding.accepts`); () for other filters."""
    if not isinstance(filter, Mapping) or not filter:
        return ()
    try:
        canonical = _mapping_clauses(table, filter, canonical=True)
        by_key = dict(zip(sorted(map(str, filter)), canonical))
        old = dict(zip(map(str, filter), _mapping_clauses(table, filter, canonical=False)))
    except TypeError:  # unsortable set values: no old text to recognise
        return ()
    texts = []
    for key, clause in by_key.items():
        spellings = {filter_text(clause, dialect), filter_text(old[key], dialect)}
        if any(PARAMS_DIGEST in t for t in spellings):
            return ()  # bound parameter names depend on the order: exact texts only
        texts.append(frozenset(spellings))
    return tuple(texts)


def filter_text(expr: sa.ColumnElement[bool], dialect: sa.Dialect) -> str:
    """A stable text of the filter, to bind a job to it; '' for no filter."""
    if isinstance(expr, sa.True_):
        return ""
    try:
        return str(expr.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except (CompileError, NotImplementedError, TypeError):
        compiled = expr.compile(dialect=dialect)
        params = sorted((k, repr(v)) for k, v in compiled.params.items())
        digest = hashlib.sha256(repr(params).encode()).hexdigest()[:16]
        return f"{compiled}{PARAMS_DIGEST}{digest}"


async def reflect_table_source(
    engine: AsyncEngine,
    source_table: str,
    *,
    id_column: str,
    weight_column: str | None,
    item_columns: Iterable[str] | None,
    filter: Filter,
    settle_column: str | None = None,
    settle_seconds: float | None = None,
    horizon: bool = False,
    time_column: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Source:
    """Reflect ``source_table`` and check every named column and the filter.

    ``horizon``: never plan past the exact horizon (docs/design-horizon.md). On
    PostgreSQL its preconditions are checked here (HorizonUnavailableError); SQLite
    needs nothing, its ids become visible in order.
    """
    schema, name = _split_name(source_table)
    async with read_connection(engine) as conn:
        table = await _reflect(conn, schema, name)
    id_col = _column(table, id_column, "id", (sa.Integer,))
    weight_col = (
        None
        if weight_column is None
        else _column(table, weight_column, "weight", (sa.Integer, sa.Numeric, sa.Float))
    )
    if item_columns is None:
        items: list[sa.ColumnElement[Any]] = list(table.c)
    else:
        items = [_column(table, c, "item", (sa.types.TypeEngine,)) for c in item_columns]
    where = build_filter(table, filter)
    legacy = legacy_clause_texts(table, filter, engine.dialect)
    window = None
    if time_column is not None:
        window = time_predicate(table, time_column, since, until)
        if since is not None or until is not None:
            # Part of the row predicate, and of the job's binding, like the filter: the
            # window decides which rows a range holds. A column alone changes nothing.
            where = sa.and_(where, window)
            if legacy:
                legacy = (*legacy, frozenset({filter_text(window, engine.dialect)}))
    binding = SourceBinding(
        "table", table.fullname, id_column, filter_text(where, engine.dialect), legacy
    )
    bound = None
    if settle_column is not None and settle_seconds is not None:
        settle_col = _column(table, settle_column, "settle", (sa.DateTime,))
        bound = settle_bound(table, id_col, settle_col, settle_seconds, engine.dialect.name)
    exact = None
    if horizon and engine.dialect.name == "postgresql":
        exact = await check_horizon(engine, table, id_column)
    elif horizon and engine.dialect.name != "sqlite":
        # MySQL/MariaDB: InnoDB hands out auto-increment ids at INSERT and transactions
        # commit in any order, and no server view tells which ids are still uncommitted
        # the way pg_locks does: refused, as docs/design-horizon.md promises.
        raise HorizonUnavailableError(
            f"{source_table}: the exact horizon (horizon='exact', the default) is "
            f"implemented for PostgreSQL (and SQLite needs none), not for "
            f"{engine.dialect.name}, where a lower id can commit after a higher one: bound "
            "the job by settle_column/settle_seconds (a settle lag), or pass horizon=None "
            "to plan up to the highest visible id and accept that hazard (docs/mysql.md)"
        )
    return Source(
        engine,
        table,
        id_col,
        weight_col,
        where,
        items,
        binding,
        bound,
        horizon=exact,
        time_window=window if since is not None or until is not None else None,
    )


def time_predicate(
    table: sa.Table | sa.FromClause, column: str, since: datetime | None, until: datetime | None
) -> sa.ColumnElement[bool]:
    """``since <= time_column < until`` (either bound may be open); NULL times are out.

    The bounds are timezone-aware UTC (checked by the Job); a column without a time zone
    (and SQLite's, which stores text) is compared with them as UTC wall-clock times.
    """
    if column not in table.c:
        raise UnknownColumnError(
            f"time column {column!r} does not exist in table "
            f"{getattr(table, 'fullname', table)!r}; its columns are: {', '.join(table.c.keys())}"
        )
    col = table.c[column]
    if not isinstance(col.type, sa.DateTime):
        raise UnknownColumnError(
            f"time column {column!r} has type {col.type}; it must be a timestamp "
            "(DATETIME, TIMESTAMP or TIMESTAMP WITH TIME ZONE)"
        )
    aware = bool(getattr(col.type, "timezone", False))

    def bound(moment: datetime) -> datetime:
        moment = moment.astimezone(timezone.utc)
        return moment if aware else moment.replace(tzinfo=None)

    clauses: list[sa.ColumnElement[bool]] = []
    if since is not None:
        clauses.append(col >= bound(since))
    if until is not None:
        clauses.append(col < bound(until))
    return sa.and_(*clauses) if clauses else sa.true()


def narrowed(
    source: Source, time_column: str | None, since: datetime | None, until: datetime | None
) -> Source:
    """``source`` seen through a time window given for one call (status, coverage): the
    window is ANDed to its rows, its binding unchanged (a view, not another job)."""
    if since is None and until is None:
        return source
    if time_column is None:
        raise InvalidArgumentError(
            "since/until need time_column: the job has none, so name the source's timestamp "
            "column (time_column='created_at', --time-column created_at)"
        )
    window = time_predicate(source.table, time_column, since, until)
    both = window if source.time_window is None else sa.and_(source.time_window, window)
    return dataclasses.replace(source, where=sa.and_(source.where, window), time_window=both)


async def window_ids(
    engine: AsyncEngine,
    table: sa.Table | sa.FromClause,
    id_col: sa.ColumnElement[int],
    predicate: sa.ColumnElement[bool],
) -> tuple[int, int] | None:
    """``min(id), max(id)`` of the rows matching ``predicate`` (a time window), or None.

    Not one index step: a B-tree on the time column is ordered by time, not by id, so
    the lowest id of a time range is found by reading the range's index entries (an
    index-only scan with an index on ``(time_column, id)``), in proportion to the rows
    in the window, once per run. Without such an index it is a scan of the table."""
    # ``id + 0``: PostgreSQL would otherwise walk the primary key from each end, testing
    # each row's time, which is quick when the window's rows are spread over all ids but
    # reads every row before the window when times follow ids (the usual case) and the
    # window is late. Its cost would depend on where the rows lie; this one does not.
    key = id_col + 0
    query = sa.select(sa.func.min(key), sa.func.max(key)).select_from(table).where(predicate)
    async with read_connection(engine) as conn:
        low, high = (await conn.execute(query)).one()
    return None if low is None or high is None else (int(low), int(high))


def settle_bound(
    table: sa.Table,
    id_col: sa.ColumnElement[int],
    settle_col: sa.ColumnElement[Any],
    seconds: float,
    dialect: str,
) -> sa.ColumnElement[bool]:
    """Stop before the lowest id whose row is younger than ``seconds``.

    Ids are assigned at insert, not at commit: a row with a lower id can become visible
    after higher ones. A job that never plans past a row still settling gives slow
    writers ``seconds`` to commit. Not a filter: a filter would skip the young row and
    take the older ones above it, leaving the young one behind for good. One statement
    with the page, so both see one snapshot; an index on the timestamp keeps it cheap.
    """
    young = dialect_named(dialect).younger_than(settle_col, seconds)
    first_young = sa.select(sa.func.min(id_col)).where(young).scalar_subquery()
    return id_col < sa.func.coalesce(first_young, _NO_UPPER)


def _lowest(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def job_source(engine: AsyncEngine, tables: BackendTables, upstream_job: str) -> Source:
    """The succeeded batches of ``upstream_job``, up to its frontier.

    The frontier is the upstream's oldest batch that is running or failed: ids are
    assigned at acquisition, so moving past it would skip it for good. The bound is in
    the same statement as the page, so both see one snapshot.
    """
    b = tables.batches
    where = sa.and_(
        b.c.job_identifier == upstream_job,
        b.c.status == "succeeded",
        b.c.id < sa.func.coalesce(frontier(tables, upstream_job), _NO_UPPER),
    )
    binding = SourceBinding("job", upstream_job, "id", "")
    return Source(engine, b, b.c.id, b.c.weight, where, list(b.c), binding)
