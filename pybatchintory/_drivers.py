"""What the library adds to the database drivers, below SQLAlchemy: connections opened
whole despite a cancellation, and SQLite cursors that let go of a failed statement in
the connection's own thread.

Installed on every engine by :func:`open_connections_whole` (a ``do_connect`` listener;
docs/design.md, "Finishing, leases and cancellation"):
SQLAlchemy's asyncpg and aiosqlite adapters take the driver's connect function as the
``async_creator_fn`` connect argument, which is also how ``create_async_engine``'s public
``async_creator`` reaches them; here the URL's and ``connect_args``' parameters still
apply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import anyio
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Self

__all__ = ["open_connections_whole"]

logger = logging.getLogger("pybatchintory")

_DRIVER_CONNECT: dict[str, Callable[..., Any]] = {
    "asyncpg": asyncpg.connect,
    "aiosqlite": aiosqlite.connect,
}


def open_connections_whole(engine: AsyncEngine) -> None:
    """Every new DBAPI connection of ``engine`` is opened by :func:`_open_whole`; on
    SQLite its cursors are :class:`_ClosingCursor`."""

    def _do_connect(
        dialect: sa.Dialect, _record: Any, _cargs: Any, cparams: dict[str, Any]
    ) -> None:
        connect = cparams.get("async_creator_fn") or _DRIVER_CONNECT.get(str(dialect.driver))
        if connect is None or getattr(connect, "func", None) is _open_whole:
            return  # already wrapped (never twice, whatever SQLAlchemy does with cparams)
        cparams["async_creator_fn"] = functools.partial(_open_whole, connect)
        if dialect.driver == "aiosqlite":
            cparams.setdefault("factory", _SqliteConnection)
        # None: the next listener (or SQLAlchemy) connects, with these parameters

    # First of the do_connect listeners: one of them returns the connection.
    sa.event.listen(engine.sync_engine, "do_connect", _do_connect, insert=True)


async def _open_whole(connect: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Open a connection with the driver's ``connect``, in a task that a cancellation of
    the caller does not reach; if the caller was cancelled, close the connection once it
    is open, then let the cancellation go on.

    Fix (issue 13, a cancelled acquisition on Python 3.13 and on PostgreSQL): a
    cancellation that cut a driver's connect midway left debris the library could not
    reach. aiosqlite (omnilib/aiosqlite#259, open) drops the sqlite3 connection its
    thread opens after the caller was cancelled, never closed (Python 3.13 reports
    "unclosed database"). asyncpg, under sslmode=prefer or require (prefer is its
    default, whether or not the server has TLS), leaves the future of its SSLRequest
    answer failed and unread when loop.create_connection is cancelled after the
    protocol exists: asyncio then logs "Future exception was never retrieved". Never
    cancelling the connect avoids both. The cost: a cancellation that arrives while a
    connection is being opened takes effect when the opening ends (within the driver's
    connect timeout).
    """
    opener = connect(*args, **kwargs)
    if connect is aiosqlite.connect:
        _daemon_thread(opener)
    opening = asyncio.ensure_future(_await(opener))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        if opening.cancelled():  # cancelled itself (the event loop closing)
            raise
        with anyio.CancelScope(shield=True):
            while not opening.done():
                try:
                    await asyncio.shield(opening)
                except (Exception, asyncio.CancelledError):
                    continue  # failed (then done), or cancelled again: ours is on its way
            await _close_quietly(opening)
        raise


async def _await(opener: Awaitable[Any]) -> Any:
    return await opener


async def _close_quietly(opening: asyncio.Future[Any]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened
    try:
        await opening.result().close()
    except Exception as exc:  # the caller's cancellation is what it must see
        logger.debug("could not close a connection opened for a cancelled caller: %s", exc)


def _daemon_thread(opener: Any) -> None:
    """aiosqlite's worker thread as a daemon, as SQLAlchemy's adapter makes it when it
    calls aiosqlite.connect itself: a connection left open must not hold the
    interpreter at exit. (Before aiosqlite 0.22 the connection was the thread.)"""
    thread = opener if isinstance(opener, threading.Thread) else getattr(opener, "_thread", None)
    if isinstance(thread, threading.Thread):
        thread.daemon = True


class _ClosingCursor(sqlite3.Cursor):
    """A sqlite3 cursor that closes itself, in the connection's worker thread, when a
    statement fails.

    Fix (issue 13, the Python 3.10 livelock of two inventories on one SQLite file):
    Python 3.10's sqlite3 keeps a statement that failed (say "database is locked" from
    an acquisition's BEGIN IMMEDIATE) attached to its cursor, still marked in use
    (3.11 lets go of it: python/cpython#89121, PR 30379). SQLAlchemy's aiosqlite adapter
    does not close a cursor whose execute failed; the cursor ends up in a reference
    cycle of the exception's traceback, and the garbage collector, on the event loop's
    thread, resets its statement. sqlite3_reset takes the connection's mutex, which the
    connection's worker thread holds for as long as another statement of it waits in
    SQLite's busy handler (a renewal or a finish: up to busy_timeout_seconds). The whole
    event loop stood still, the task holding the write lock with it, and every writer
    waited out the busy timeout. Closed here, the cursor holds no statement for the
    collector to reset.
    """

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        try:
            return super().execute(sql, parameters)
        except BaseException:
            self.close()
            raise

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Self:
        try:
            return super().executemany(sql, seq_of_parameters)
        except BaseException:
            self.close()
            raise

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except BaseException:
            self.close()
            raise


class _SqliteConnection(sqlite3.Connection):
    """A sqlite3 connection whose cursors are :class:`_ClosingCursor`."""

    def cursor(self, factory: Any = _ClosingCursor) -> Any:
        return super().cursor(factory)
