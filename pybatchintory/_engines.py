"""Engines, the database clock, error wrapping and the retry loop for transient conflicts."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import Settings, hide_password, safe_url
from .exceptions import BackendError, ConfigurationError

__all__ = [
    "backend_errors",
    "complete_despite_cancellation",
    "create_engine",
    "cursor_transaction",
    "read_connection",
    "retry_transient",
    "write_transaction",
]

T = TypeVar("T")

_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
# SQLSTATEs that mean "run the transaction again": serialization failure, deadlock.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Fix (issue 3): the bound was 10 tries. Under SERIALIZABLE every acquisition that waits
# for a job's row lock fails with 40001 once the holder commits, so N contenders make
# roughly N tries; 16 processes x 2 tasks needed up to 23 tries in the race test and
# 10 made acquisitions fail. Bound the loop by time instead, like a lock timeout.
_RETRY_SECONDS = 30.0
_MAX_BACKOFF_SECONDS = 0.5
# Every engine made here, to detach their pools in a forked child
_ENGINES: weakref.WeakSet[AsyncEngine] = weakref.WeakSet()
# A forked child's inherited pools, never to be collected (see _forget_connections_after_fork)
_INHERITED_POOLS: list[sa.Pool] = []
# PostgreSQL engines created in autocommit mode (the metadata engine)
_AUTOCOMMIT_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
# PostgreSQL engines behind PgBouncer in transaction pooling mode: no autocommit
_PGBOUNCER_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _async_url(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {hide_password(dsn)}") from None
    backend = url.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"{hide_password(dsn)}: backend {backend!r} is not supported; "
            "use postgresql+asyncpg:// or sqlite+aiosqlite://"
        )
    driver = _ASYNC_DRIVERS[backend]
    if url.get_driver_name() != driver:
        # An async library needs the asyncio driver; a plain postgresql:// or sqlite://
        # URL is taken to mean it.
        url = url.set(drivername=f"{backend}+{driver}")
    return url


def create_engine(dsn: str, settings: Settings, *, writer: bool) -> AsyncEngine:
    """Create an engine for ``dsn``.

    ``writer`` engines hold the backend tables: on SQLite they use WAL and open every
    transaction with the mode given in the ``sqlite_begin`` execution option, so that
    an acquisition takes the write lock before it reads (``BEGIN IMMEDIATE``).

    ``settings.pgbouncer`` (PostgreSQL behind PgBouncer in transaction pooling mode)
    applies SQLAlchemy's documented recipe for asyncpg ("Prepared Statement Name with
    PGBouncer" in the asyncpg dialect's documentation): unique prepared statement names
    (``prepared_statement_name_func``), and no statement cache in asyncpg
    (``statement_cache_size=0``) nor in SQLAlchemy's adapter
    (``prepared_statement_cache_size=0``). And no autocommit: every statement runs in a
    transaction, so that a statement's Parse and its Execute reach one server
    connection (see :func:`read_connection`).
    """
    url, query_args = _split_driver_query(_async_url(dsn))
    postgresql = url.get_backend_name() == "postgresql"
    pgbouncer = postgresql and settings.pgbouncer
    kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    if postgresql:
        kwargs["pool_size"] = settings.pool_size
        kwargs["max_overflow"] = settings.pool_size
        connect_args["server_settings"] = {"application_name": "pybatchintory"}
        # The metadata engine only reads, one statement at a time: autocommit, set once
        # per pooled connection, saves BEGIN/ROLLBACK round trips on every read. Not
        # behind PgBouncer: there a statement outside a transaction may be prepared on
        # one server connection and executed on another.
        if writer:
            kwargs["isolation_level"] = settings.isolation_level
        else:
            kwargs["isolation_level"] = "READ COMMITTED" if pgbouncer else "AUTOCOMMIT"
        if pgbouncer:
            connect_args.update(
                statement_cache_size=0,
                prepared_statement_cache_size=0,
                prepared_statement_name_func=_unique_statement_name,
            )
    connect_args.update(query_args)
    for key, value in settings.connect_args.items():
        if key == "server_settings" and isinstance(value, dict):
            value = {**connect_args.get("server_settings", {}), **value}
        connect_args[key] = value
    kwargs["connect_args"] = connect_args
    options = _engine_options(settings.engine_options, dsn)
    if options.get("poolclass") in (sa.pool.NullPool, sa.pool.StaticPool):
        for key in ("pool_size", "max_overflow"):  # these pools take no sizes
            if key not in options:
                kwargs.pop(key, None)
    kwargs.update(options)
    try:
        engine = create_async_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot create an engine for {hide_password(dsn)} (check engine_options): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    _refuse_bad_connect_args(engine, dsn)
    if url.get_backend_name() == "sqlite":
        _configure_sqlite(engine, settings, writer=writer)
    elif not writer and not pgbouncer:
        _AUTOCOMMIT_ENGINES.add(engine.sync_engine)
    if pgbouncer:
        _PGBOUNCER_ENGINES.add(engine.sync_engine)
    _ENGINES.add(engine)
    return engine


def _unique_statement_name() -> str:
    """A prepared statement name no other client of a PgBouncer server connection uses."""
    return f"__asyncpg_{uuid.uuid4().hex}__"


# asyncpg's connect() takes these as numbers; in a URL's query they arrive as strings.
_NUMERIC_QUERY_ARGS = {
    "statement_cache_size": int,
    "max_cached_statement_lifetime": float,
    "max_cacheable_statement_size": int,
    "command_timeout": float,
    "timeout": float,
}


def _split_driver_query(url: URL) -> tuple[URL, dict[str, Any]]:
    """Take asyncpg's numeric connect arguments out of the URL's query, as numbers: the
    dialect passes query values on as strings, which asyncpg refuses with a TypeError."""
    if url.get_backend_name() != "postgresql":
        return url, {}
    found: dict[str, Any] = {}
    for key, kind in _NUMERIC_QUERY_ARGS.items():
        if key not in url.query:
            continue
        raw = url.query[key]
        try:
            found[key] = kind(raw if isinstance(raw, str) else raw[-1])
        except ValueError:
            raise ConfigurationError(
                f"{safe_url(url)}: the query parameter {key} must be a number"
            ) from None
    return url.difference_update_query(found), found


def _engine_options(options: dict[str, Any], dsn: str) -> dict[str, Any]:
    """``engine_options`` as create_async_engine takes them; ``poolclass`` may be
    named (``"NullPool"``), as it must be in the environment."""
    options = dict(options)
    poolclass = options.get("poolclass")
    if isinstance(poolclass, str):
        found = getattr(sa.pool, poolclass, None)
        if not (isinstance(found, type) and issubclass(found, sa.Pool)):
            raise ConfigurationError(
                f"cannot create an engine for {hide_password(dsn)}: engine_options "
                f"poolclass {poolclass!r} is not a pool class of sqlalchemy.pool"
            )
        options["poolclass"] = found
    return options


def _refuse_bad_connect_args(engine: AsyncEngine, dsn: str) -> None:
    """A connect argument the driver does not take fails each connection with a
    TypeError: make it a ConfigurationError naming the argument, without the URL's
    password."""

    @sa.event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: sa.Dialect, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except TypeError as exc:
            raise ConfigurationError(
                f"cannot connect to {hide_password(dsn)}: a connect argument (connect_args "
                f"setting or URL query) is wrong: {exc}"
            ) from None


def _forget_connections_after_fork() -> None:
    """A forked child shares its parent's sockets: it must never use, nor close, the
    parent's pooled connections (closing sends Terminate and breaks them for the
    parent). Each pool is replaced by an empty one, and the parent's pool is kept
    referenced for the child's life: were its connections garbage-collected here, the
    driver would abort their transports, unregistering the sockets from the epoll
    instance that parent and child share."""
    for engine in list(_ENGINES):
        _INHERITED_POOLS.append(engine.sync_engine.pool)
        engine.sync_engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _configure_sqlite(engine: AsyncEngine, settings: Settings, *, writer: bool) -> None:
    busy_ms = int(settings.busy_timeout_seconds * 1000)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        if writer:
            # We emit BEGIN ourselves (below); the driver's implicit, deferred BEGIN
            # would take the write lock only at the first write: too late for a
            # read-then-write acquisition.
            dbapi_connection.isolation_level = None
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    if writer:

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that writes: on SQLite it holds the write lock from its start."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
        async with conn.begin():
            yield conn


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for short reads, or for one statement that is a whole write:
    PostgreSQL skips the BEGIN/ROLLBACK round trips. Behind PgBouncer (transaction
    pooling) it is a READ COMMITTED transaction instead, committed at the end: outside
    a transaction, PgBouncer may run a statement's Execute on another server connection
    than its Parse."""
    async with engine.connect() as conn:
        if engine.sync_engine in _PGBOUNCER_ENGINES:
            conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                yield conn
            return
        if engine.dialect.name == "postgresql" and engine.sync_engine not in _AUTOCOMMIT_ENGINES:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@asynccontextmanager
async def cursor_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read transaction, which PostgreSQL's server-side cursors need."""
    async with engine.connect() as conn:
        if engine.sync_engine in _AUTOCOMMIT_ENGINES:
            conn = await conn.execution_options(isolation_level="READ COMMITTED")
        async with conn.begin():
            yield conn


def is_transient(exc: BaseException) -> bool:
    """A conflict that a new attempt of the whole transaction resolves."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


async def retry_transient(operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation`` again after a serialization failure, deadlock or busy SQLite.

    Bounded in time (30 seconds), with jittered exponential backoff, so that colliding
    workers spread out.
    """
    deadline = anyio.current_time() + _RETRY_SECONDS
    attempt = 0
    while True:
        try:
            return await operation()
        except DBAPIError as exc:
            if not is_transient(exc) or anyio.current_time() >= deadline:
                raise
        backoff = min(_MAX_BACKOFF_SECONDS, 0.005 * 2 ** min(attempt, 10))
        await anyio.sleep(random.uniform(0, backoff))
        attempt += 1


async def complete_despite_cancellation(operation: Awaitable[T]) -> T:
    """Await ``operation`` to its end even if the caller is cancelled meanwhile; then
    let the cancellation go on.

    Fix (issue 3): ``anyio.CancelScope(shield=True)`` alone stops only anyio's own
    cancellation; a native ``task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``,
    a ``TaskGroup``) still cut the bookkeeping of ``Batch.__aexit__`` in half. The work
    runs in a task of its own, which a cancellation of the caller does not reach.
    """
    task = asyncio.ensure_future(operation)
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError as exc:
                if task.cancelled():
                    raise
                cancelled = exc  # keep waiting for the bookkeeping, re-raise after
    if cancelled is not None:
        raise cancelled
    return result


def describe(exc: SQLAlchemyError) -> str:
    """The driver's message without SQL text or parameters (they may hold values)."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        return f"{type(orig).__name__}: {orig}".strip()
    return f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}".strip()


@asynccontextmanager
async def backend_errors(what: str, engine: AsyncEngine) -> AsyncIterator[None]:
    """Turn a database error into a :class:`BackendError` naming what failed and where."""
    try:
        yield
    except SQLAlchemyError as exc:
        where = safe_url(engine.url)
        raise BackendError(f"{what} failed on {where}: {describe(exc)}") from exc
    except OSError as exc:  # connection refused before SQLAlchemy could wrap it
        where = safe_url(engine.url)
        raise BackendError(f"{what} failed on {where}: {type(exc).__name__}: {exc}") from exc
