"""Engines, the database clock, error wrapping and the retry loop for transient conflicts."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ._direct import DirectConnection, direct_connection, direct_transaction
from ._drivers import open_connections_whole
from .config import Settings, hide_password, redact, safe_url
from .exceptions import BackendError, ConfigurationError, InventoryFileGoneError

__all__ = [
    "backend_errors",
    "complete_despite_cancellation",
    "create_engine",
    "cursor_transaction",
    "read_connection",
    "retry_transient",
    "UrgentSignal",
    "WriteGate",
    "urgent_signal",
    "safe_write",
    "write_transaction",
]

T = TypeVar("T")
logger = logging.getLogger("pybatchintory")

# A plain URL of each backend means its asyncio driver. MySQL and MariaDB (metadata
# tables only, docs/mysql.md): asyncmy, chosen over aiomysql there.
_ASYNC_DRIVERS = {
    "postgresql": "asyncpg",
    "sqlite": "aiosqlite",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
}
# Backends that can hold the inventory's tables (the others hold metadata tables only)
INVENTORY_BACKENDS = ("postgresql", "sqlite")
# MySQL closes a connection idle for wait_timeout (8 hours by default): pooled
# connections are replaced well before that.
_MYSQL_POOL_RECYCLE_SECONDS = 3600
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
# SQLite: how long an acquisition waits in the busy handler before backing off (see
# WriteGate); heartbeats and finishes wait the whole busy_timeout_seconds there.
_ACQUIRE_BUSY_MS = 20
# SQLite: how long an acquisition defers to urgent writes of other processes (UrgentSignal)
_YIELD_SECONDS = 1.0
# PostgreSQL engines created in autocommit mode (the metadata engine)
_AUTOCOMMIT_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
# PostgreSQL engines behind PgBouncer in transaction pooling mode: no autocommit
_PGBOUNCER_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
# PostgreSQL engines on asyncpg, not behind PgBouncer: the hot path runs on asyncpg
# itself (pybatchintory._direct)
_DIRECT_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _async_url(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {hide_password(dsn)}") from None
    backend = url.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"{hide_password(dsn)}: backend {backend!r} is not supported; "
            "use postgresql+asyncpg:// or sqlite+aiosqlite:// (or, for metadata tables, "
            "mysql+asyncmy://)"
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
    backend = url.get_backend_name()
    if writer and backend not in INVENTORY_BACKENDS:
        raise ConfigurationError(mysql_inventory_refusal(hide_password(dsn)))
    postgresql = backend == "postgresql"
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
    elif backend in ("mysql", "mariadb"):
        kwargs["pool_size"] = settings.pool_size
        kwargs["max_overflow"] = settings.pool_size
        kwargs["pool_recycle"] = _MYSQL_POOL_RECYCLE_SECONDS
        # A metadata read is one statement, or a page loop that wants one snapshot
        # only per page: autocommit saves the BEGIN/ROLLBACK round trips, and no
        # REPEATABLE READ snapshot outlives a statement (docs/mysql.md).
        kwargs["isolation_level"] = "AUTOCOMMIT"
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
        message = redact(str(exc), url)
        raise ConfigurationError(
            f"cannot create an engine for {hide_password(dsn)} (check engine_options): "
            f"{type(exc).__name__}: {message}"
        ) from None
    open_connections_whole(engine)  # see _drivers
    _refuse_bad_connect_args(engine, dsn, url)
    if url.get_backend_name() == "sqlite":
        _configure_sqlite(engine, settings, writer=writer)
    elif not writer and not pgbouncer:
        _AUTOCOMMIT_ENGINES.add(engine.sync_engine)  # PostgreSQL and MySQL
    if pgbouncer:
        _PGBOUNCER_ENGINES.add(engine.sync_engine)
    elif postgresql and engine.dialect.driver == "asyncpg":
        _DIRECT_ENGINES.add(engine.sync_engine)
    _ENGINES.add(engine)
    return engine


def mysql_inventory_refusal(where: str) -> str:
    """Why the inventory's tables cannot live on MySQL or MariaDB (measured: docs/mysql.md)."""
    return (
        f"{where}: the inventory (inventory_url) cannot be on MySQL or MariaDB: the "
        "backend's invariants (fencing by UPDATE ... RETURNING, partial indexes, "
        "microsecond UTC timestamps, retry of lock wait timeouts) are implemented for PostgreSQL "
        "and SQLite only (docs/mysql.md). Keep the inventory on PostgreSQL or SQLite and "
        "point meta_url at MySQL/MariaDB: metadata tables there are supported"
    )


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


def _refuse_bad_connect_args(engine: AsyncEngine, dsn: str, url: URL) -> None:
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
                f"setting or URL query) is wrong: {redact(str(exc), url)}"
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


def _sqlite_file(url: URL) -> str | None:
    """The absolute path of a file database, or None (in memory, or a URI)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return os.path.abspath(database)


class _FileIdentity:
    """Fix (issue 13, item 8): the inventory's SQLite file, as opened first (device and
    inode). A file deleted while open took every later outcome with it, silently: each
    connection and each transaction checks the path still names that file (one stat)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise InventoryFileGoneError(
                f"the inventory's SQLite file {self.path} was deleted while the inventory "
                "was open; nothing was written"
            ) from None
        current = (st.st_dev, st.st_ino)
        if self.identity is None:
            self.identity = current
        elif current != self.identity:
            raise InventoryFileGoneError(
                f"the inventory's SQLite file {self.path} was replaced by another file while "
                "the inventory was open; nothing was written"
            )


def urgent_signal(engine: AsyncEngine) -> UrgentSignal | None:
    """The cross-process urgent-write signal of a SQLite file database, or None."""
    if engine.dialect.name != "sqlite":
        return None
    path = _sqlite_file(engine.url)
    return UrgentSignal(f"{path}-pybi-urgent") if path is not None else None


def _configure_sqlite(engine: AsyncEngine, settings: Settings, *, writer: bool) -> None:
    busy_ms = int(settings.busy_timeout_seconds * 1000)
    path = _sqlite_file(engine.url) if writer else None
    file = _FileIdentity(path) if path is not None else None

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
        if file is not None:
            try:
                file.check()  # the first connection records the file it created or found
            except InventoryFileGoneError:
                dbapi_connection.close()
                raise

    if writer:

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            if file is not None:
                file.check()
            options = conn.get_execution_options()
            wanted = options.get("sqlite_busy_ms") or busy_ms
            info = conn.connection.info
            if info.get("busy_ms", busy_ms) != wanted:  # set only on a change
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(wanted)}")
                info["busy_ms"] = wanted
            mode = options.get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass
class _WriteProgress:
    """Where a write run by :func:`safe_write` stands: whether cancelling it now is
    safe (nothing can have been committed, and nothing is left held)."""

    interruptible: bool = False
    urgent: bool = False


_write_progress: ContextVar[_WriteProgress | None] = ContextVar(
    "pybatchintory_write_progress", default=None
)


# What the acquisition's statements run on: SQLAlchemy's connection or asyncpg's.
HotConnection = AsyncConnection | DirectConnection


def _runs_direct(engine: AsyncEngine) -> bool:
    """Whether the hot path may bypass SQLAlchemy's execution on ``engine``: not when
    someone watches its statements (``echo``, cursor-execute listeners such as
    OpenTelemetry's SQLAlchemy instrumentation), who would then miss them."""
    sync = engine.sync_engine
    if sync not in _DIRECT_ENGINES or sync.echo:
        return False
    if sync.get_execution_options().get("schema_translate_map"):
        return False  # applied by SQLAlchemy's execution (engine_options may set it)
    return not (sync.dispatch.before_cursor_execute or sync.dispatch.after_cursor_execute)


def _no_longer_interruptible() -> None:
    progress = _write_progress.get()
    if progress is not None:
        progress.interruptible = False  # the COMMIT follows


def hot_transaction(engine: AsyncEngine) -> AbstractAsyncContextManager[HotConnection]:
    """:func:`write_transaction` for the acquisition's statements: on asyncpg (not
    behind PgBouncer) run by asyncpg itself (:mod:`pybatchintory._direct`), which
    offers ``execute`` and ``scalar`` only. (The context manager of either, not one
    wrapped around it: this is every acquisition's path.)"""
    if not _runs_direct(engine):
        return write_transaction(engine)
    progress = _write_progress.get()
    if progress is not None:
        progress.interruptible = True  # up to the COMMIT, as in write_transaction
    return direct_transaction(engine, _no_longer_interruptible)


def hot_connection(engine: AsyncEngine) -> AbstractAsyncContextManager[HotConnection]:
    """:func:`read_connection` for one statement on its own (a finish, a renewal, a
    batch's items); on asyncpg run by asyncpg itself, outside any transaction."""
    if not _runs_direct(engine):
        return read_connection(engine)
    return direct_connection(engine)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that writes: on SQLite it holds the write lock from its start."""
    progress = _write_progress.get()
    # PostgreSQL: up to the COMMIT, a cancellation rolls the transaction back and
    # leaves nothing held (a lock wait ends at once). SQLite: never (see safe_write).
    interruptible = engine.dialect.name == "postgresql"
    if progress is not None:
        progress.interruptible = interruptible
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # Writes that are not urgent (acquisitions) do not sit in SQLite's busy
            # handler: they try for the lock briefly, then back off in retry_transient,
            # so that renewals and finishes, waiting in the busy handler, get it first.
            urgent = progress is None or progress.urgent
            conn = await conn.execution_options(
                sqlite_begin="IMMEDIATE", sqlite_busy_ms=None if urgent else _ACQUIRE_BUSY_MS
            )
        async with conn.begin():
            yield conn
            _no_longer_interruptible()


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


class UrgentSignal:
    """SQLite, across processes: "a renewal or finish waits for the write lock".

    Urgent writers hold a shared flock on ``<database>-pybi-urgent`` while they wait and
    write; an acquisition first probes for an exclusive one, and while it cannot have it
    (an urgent write waits in some process) it backs off, for up to ``_YIELD_SECONDS``.
    Best effort, never blocking: without fcntl (Windows) it does nothing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._held: int | None = None  # the fd of our shared lock
        self._probe: int | None = None

    def _open(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None

    def raise_(self) -> None:
        if fcntl is None or self._held is not None:
            return
        fd = self._open()
        if fd is None:
            return
        for _ in range(3):  # a probe holds the exclusive lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            except OSError:
                break
            self._held = fd
            return
        os.close(fd)

    def lower(self) -> None:
        fd, self._held = self._held, None
        if fd is not None:
            os.close(fd)  # releases the lock

    def _urgent_elsewhere(self) -> bool:
        if fcntl is None:
            return False
        if self._probe is None:
            self._probe = self._open()
            if self._probe is None:
                return False
        try:
            fcntl.flock(self._probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    async def yield_to_urgent(self) -> None:
        deadline = anyio.current_time() + _YIELD_SECONDS
        while self._urgent_elsewhere() and anyio.current_time() < deadline:
            await anyio.sleep(0.002)

    def close(self) -> None:
        self.lower()
        fd, self._probe = self._probe, None
        if fd is not None:
            os.close(fd)


class WriteGate:
    """SQLite: acquisitions of one process one at a time, and never while a renewal or a
    finish of that process waits for the database.

    Fix (issue 13, item 4): SQLite has one write lock, and a writer that finds it taken
    polls for it with sleeps of up to 100 ms (the busy handler), in no order. Tasks
    acquiring in a loop kept the lock busy, and lease renewals lost the race until their
    leases ran out: live workers lost their batches. Here urgent writes (heartbeats,
    finishes) pass at once and hold back this process's acquisitions until they are
    done; acquisitions queue in arrival order, so that at most one of them per process
    contends for the lock. Across processes, see ``_ACQUIRE_BUSY_MS``.
    """

    def __init__(self, signal: UrgentSignal | None = None) -> None:
        self._signal = signal
        self._urgent = 0  # urgent writes in progress
        self._busy = False  # an acquisition holds the gate
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _wake(self) -> None:
        if self._urgent or self._busy:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._busy = True
                waiter.set_result(None)
                return

    async def _enter(self) -> None:
        if not self._urgent and not self._busy and not self._waiters:
            self._busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._leave()  # handed over just as the cancellation came: pass it on
            raise

    def _leave(self) -> None:
        self._busy = False
        self._wake()

    def gated(
        self, operation: Callable[[], Awaitable[T]], urgent: bool
    ) -> Callable[[], Awaitable[T]]:
        """``operation`` run under the gate (one try of it: the backoff between tries
        of retry_transient holds nothing)."""

        async def run_urgent() -> T:
            self._urgent += 1
            if self._urgent == 1 and self._signal is not None:
                self._signal.raise_()
            try:
                return await operation()
            finally:
                self._urgent -= 1
                if self._urgent == 0 and self._signal is not None:
                    self._signal.lower()
                self._wake()

        async def run() -> T:
            await self._enter()
            try:
                if self._signal is not None:
                    await self._signal.yield_to_urgent()
                return await operation()
            finally:
                self._leave()

        return run_urgent if urgent else run


async def safe_write(
    operation: Callable[[], Awaitable[T]],
    undo: Callable[[T], Awaitable[None]] | None = None,
    *,
    gate: WriteGate | None = None,
    urgent: bool = False,
) -> T:
    """The one path of every write to the backend tables: ``operation`` (one
    transaction, run again on transient conflicts by :func:`retry_transient`) is never
    cut at an unsafe point by a cancellation of its caller.

    Fix (issue 13, items 2 and 3): a write cancelled midway left SQLite's write lock
    held by a connection whose BEGIN IMMEDIATE or COMMIT ran on in aiosqlite's thread
    (every other writer then waited out the busy timeout), and let a PostgreSQL
    acquisition commit a batch that never reached its caller. Here the write runs in a
    task of its own; if the caller is cancelled, the write still ends, ``undo`` is
    given what it returned (an acquisition hands its batch back), and then the
    cancellation goes on. Without a cancellation this costs one task.

    One exception: a PostgreSQL transaction of :func:`write_transaction` that has not
    reached its COMMIT is cancelled with its caller (say, while it waits for a job's
    row lock): its rollback leaves nothing behind.

    ``gate`` (SQLite): the process's :class:`WriteGate`, taken for each try;
    ``urgent`` writes (heartbeats, finishes) go first.
    """
    progress = _WriteProgress(urgent=urgent)
    token = _write_progress.set(progress)
    try:
        if gate is not None:
            operation = gate.gated(operation, urgent)
        task = asyncio.ensure_future(retry_transient(operation))  # copies the context
    finally:
        _write_progress.reset(token)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled():  # cancelled directly (the event loop closing): nothing to wait for
            raise
        if progress.interruptible:
            task.cancel()
        await complete_despite_cancellation(_settle(task, undo))
        raise


async def _settle(task: asyncio.Future[T], undo: Callable[[T], Awaitable[None]] | None) -> None:
    """Wait for a write whose caller was cancelled; undo what it did, if asked to."""
    try:
        result = await task
    except asyncio.CancelledError:  # interrupted before its COMMIT: nothing was written
        return
    except Exception as exc:  # the write failed on its own: nothing to undo
        logger.debug("a write whose caller was cancelled failed: %s", exc)
        return
    if undo is None or result is None:
        return
    try:
        await undo(result)
    except Exception:  # the cancellation is what the caller must see
        logger.exception("could not undo a write whose caller was cancelled")


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
        message = redact(describe(exc), engine.url)
        raise BackendError(f"{what} failed on {where}: {message}") from exc
    except OSError as exc:  # connection refused before SQLAlchemy could wrap it
        where = safe_url(engine.url)
        message = redact(f"{type(exc).__name__}: {exc}", engine.url)
        raise BackendError(f"{what} failed on {where}: {message}") from exc
