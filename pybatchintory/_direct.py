"""PostgreSQL's hot path on asyncpg itself, below SQLAlchemy's execution layer.

Why (issue 12, benchmarks/floor.py): per statement, SQLAlchemy's execution (context,
greenlet hop, cursor adapter, result set-up) costs about 60 µs of Python beyond
asyncpg's own, and a transaction's BEGIN and COMMIT about 150 µs more. An acquisition
is one transaction of four statements and a finish is one statement, so on a 3.7 ms
cycle that overhead was the gap to the raw-driver floor.

What stays the same: the statements are still SQLAlchemy constructs (``_statements``,
``_source``), compiled once each for the engine's dialect, so there is one definition
of every query. The connection still comes from SQLAlchemy's pool (sizes, pre-ping,
connect arguments, ``application_name``). Errors are translated the way SQLAlchemy's
asyncpg adapter translates them, into ``sqlalchemy.exc.DBAPIError`` with the same
``orig.sqlstate``, so ``retry_transient`` and ``backend_errors`` treat both paths alike.

Only for engines that ``_engines.create_engine`` made on asyncpg and not behind
PgBouncer: there SQLAlchemy's documented prepared-statement recipe applies.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

__all__ = ["DirectConnection", "DirectResult", "direct_connection", "direct_transaction"]

_CACHE_LIMIT = 512  # statements are built once per inventory or source: a few dozen
# Compiled statements per engine: the bind processors depend on the engine's dialect
# (its JSON serializer, for one).
_CACHES: weakref.WeakKeyDictionary[sa.Engine, dict[int, Any]] = weakref.WeakKeyDictionary()


class _Row(asyncpg.Record):  # type: ignore[misc]
    """An asyncpg record read like SQLAlchemy's Row: by position, key or attribute."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(self.items())


class DirectResult:
    """The part of SQLAlchemy's Result that the hot path reads."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def all(self) -> Sequence[Any]:
        return self._rows

    def keys(self) -> list[str]:
        return list(self._rows[0].keys()) if self._rows else []

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if not self._rows:
            raise sa.exc.NoResultFound("expected one row, got none")
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


@dataclass(frozen=True)
class _Compiled:
    """A statement's SQL and, per ``$n``, where its value comes from."""

    statement: Any  # kept alive: the cache is keyed by its id()
    sql: str
    slots: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    returns_rows: bool


def _compile(statement: Any, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    if compiled.insert_prefetch or compiled.update_prefetch:
        # Python-side column defaults are computed by SQLAlchemy's execution context
        raise AssertionError("the direct path cannot run a statement with Python defaults")
    # A filter's IN list is fixed in the statement: expanded once, here, as SQLAlchemy
    # expands it at each execution. Values given at execution come from the caller.
    given_later = {name: None for name, bind in compiled.binds.items() if bind.required}
    expanded = compiled.construct_expanded_state(given_later)
    slots = []
    for name in expanded.positiontup or ():
        bind = compiled.binds.get(name)
        if bind is None:  # an element of an expanded IN list
            slots.append((name, expanded.parameters[name], expanded.processors.get(name)))
            continue
        if bind.expanding:
            raise AssertionError(f"the direct path cannot expand {name!r} at execution")
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        slots.append((name, bind.effective_value, processor))
    dml = compiled.isinsert or compiled.isupdate or compiled.isdelete
    returns_rows = not dml or bool(compiled.effective_returning)
    return _Compiled(statement, expanded.statement, tuple(slots), returns_rows)


class DirectConnection:
    """``execute`` and ``scalar`` on the asyncpg connection of a pooled one."""

    def __init__(self, engine: AsyncEngine, pooled: PoolProxiedConnection) -> None:
        self._engine, self._pooled = engine, pooled
        self._raw: Any = pooled.driver_connection
        self._adapted: Any = pooled.dbapi_connection
        self._dialect = engine.dialect
        self._cache = _CACHES.setdefault(engine.sync_engine, {})

    def _compiled(self, statement: Any) -> _Compiled:
        entry = self._cache.get(id(statement))
        if entry is None or entry.statement is not statement:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            entry = self._cache[id(statement)] = _compile(statement, self._dialect)
        return entry

    async def execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> Any:
        compiled = self._compiled(statement)
        given = parameters or {}
        args = []
        for name, default, processor in compiled.slots:
            value = given[name] if name in given else default
            args.append(processor(value) if processor is not None else value)
        try:
            if compiled.returns_rows:
                rows = await self._raw.fetch(compiled.sql, *args, record_class=_Row)
                return DirectResult(rows, len(rows))
            status = await self._raw.execute(compiled.sql, *args)
        except Exception as exc:
            raise self._translated(exc, compiled.sql, args) from exc
        # "UPDATE 3", "INSERT 0 1", "DELETE 0": the row count is the last word
        last = status.rsplit(" ", 1)[-1]
        return DirectResult((), int(last) if last.isdigit() else -1)

    async def scalar(self, statement: Any, parameters: dict[str, Any] | None = None) -> Any:
        return (await self.execute(statement, parameters)).scalar()

    def _translated(self, exc: Exception, sql: str, args: list[Any]) -> Exception:
        """The exception SQLAlchemy would raise for ``exc`` (asyncpg's)."""
        try:
            self._adapted._handle_exception(exc)  # raises the adapter's DBAPI error
        except Exception as dbapi_error:
            error: Exception = dbapi_error
        else:  # pragma: no cover - the adapter always raises
            error = exc
        dialect = self._dialect
        if not isinstance(error, dialect.loaded_dbapi.Error):
            return exc  # not a database error (SQLAlchemy does not wrap these either)
        invalidated = bool(dialect.is_disconnect(error, self._adapted, None))
        return sa.exc.DBAPIError.instance(
            sql,
            args,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=self._engine.sync_engine.hide_parameters,
            dialect=dialect,
            connection_invalidated=invalidated,
        )


@asynccontextmanager
async def _pooled(engine: AsyncEngine) -> AsyncIterator[DirectConnection]:
    """A connection of the engine's pool, without SQLAlchemy's Connection around it (a
    third of what remained of SQLAlchemy's cost per cycle): returned as SQLAlchemy
    returns one (reset, then queued). When its session is lost, it and every connection
    opened before it are replaced, as SQLAlchemy does after a disconnect (the server
    they reached restarted or failed over)."""
    pooled = await engine.raw_connection()
    direct = DirectConnection(engine, pooled)
    try:
        yield direct
    except BaseException as exc:
        lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
        if lost or direct._raw.is_closed():
            with anyio.CancelScope(shield=True):
                await greenlet_spawn(engine.sync_engine.pool._invalidate, pooled, exc)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await greenlet_spawn(pooled.close)


def direct_connection(engine: AsyncEngine) -> AbstractAsyncContextManager[DirectConnection]:
    """A pooled connection for one statement on its own: asyncpg runs it outside any
    transaction, atomic by itself."""
    return _pooled(engine)


@asynccontextmanager
async def direct_transaction(
    engine: AsyncEngine, before_commit: Callable[[], None]
) -> AsyncIterator[DirectConnection]:
    """A transaction at the engine's isolation level, begun and ended by asyncpg.

    SQLAlchemy's adapter does not know of it, so its reset-on-return would not roll it
    back: every way out of here ends it first, and a connection whose transaction
    cannot be ended (a BEGIN or ROLLBACK that failed or was cancelled, a lost server) is
    closed, never pooled.
    """
    async with _pooled(engine) as direct:
        raw = direct._raw
        isolation = getattr(direct._adapted, "isolation_level", None)
        try:
            transaction = raw.transaction(
                isolation=None if isolation == "autocommit" else isolation
            )
            await transaction.start()
        except BaseException as exc:
            # asyncpg's own state after a cut BEGIN cannot be trusted: close the session
            await _discard(direct)
            if isinstance(exc, Exception):
                raise direct._translated(exc, "BEGIN", []) from exc
            raise
        try:
            yield direct
            before_commit()
            try:
                await transaction.commit()
            except Exception as exc:
                raise direct._translated(exc, "COMMIT", []) from exc
        except BaseException:
            await _end(direct, transaction)
            raise


async def _end(direct: DirectConnection, transaction: Any) -> None:
    """Roll back what is left of a failed transaction, or close its connection."""
    raw = direct._raw
    if raw.is_closed() or not raw.is_in_transaction():
        return  # closed: _pooled replaces it
    try:
        with anyio.CancelScope(shield=True):
            await transaction.rollback()
    except BaseException as exc:
        await _discard(direct)
        if not isinstance(exc, Exception):
            raise  # a cancellation goes on; a failed rollback gives way to the first error


async def _discard(direct: DirectConnection) -> None:
    """Close the session (the server rolls back what it holds) and drop the connection."""
    direct._raw.terminate()  # synchronous, so no cancellation can cut it
    if direct._pooled.is_valid:
        with anyio.CancelScope(shield=True):
            await greenlet_spawn(direct._pooled.invalidate)
