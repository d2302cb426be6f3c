"""Where the databases differ in SQL: one object per database, so that the statements,
the planner and the backend ask it rather than test a dialect's name (a third
database is one more class here, plus its engine options in ``_engines``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ._tables import UtcDateTime

__all__ = ["SqlDialect", "dialect_named"]

p = sa.bindparam


class SqlDialect:
    """The SQL a database needs for the clock, leases, upserts and the settle lag."""

    name: str
    # One statement can write a batch, its log row and the cursor (data-modifying CTEs)
    combined_writes: bool
    # INSERT ... ON CONFLICT for the job row's upsert
    insert: Any

    def now(self) -> sa.ColumnElement[datetime]:
        """The database's clock when the statement runs (never a worker's clock)."""
        raise NotImplementedError

    def later(self) -> sa.ColumnElement[datetime]:
        """:meth:`now` plus the seconds given by :meth:`later_params`."""
        raise NotImplementedError

    def later_params(self, seconds: float) -> dict[str, Any]:
        """The bind parameters of :meth:`later`."""
        raise NotImplementedError

    def younger_than(self, column: sa.ColumnElement[Any], seconds: float) -> sa.ColumnElement[bool]:
        """``column`` (a timestamp) is less than ``seconds`` old."""
        raise NotImplementedError

    def epoch(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        """``column`` (a timestamp) as seconds since 1970 UTC: the report's time buckets."""
        raise NotImplementedError

    def floor(self, value: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        """The integer part of ``value``, a number >= 0 (the report's bucket index)."""
        raise NotImplementedError


class _SQLite(SqlDialect):
    name, combined_writes, insert = "sqlite", False, staticmethod(sqlite.insert)
    # The format SQLAlchemy stores SQLite datetimes in, with microseconds. SQLite's
    # 'now' is the time of the statement (one value per sqlite3_step).
    _FORMAT = "%Y-%m-%d %H:%M:%f"

    def now(self) -> sa.ColumnElement[datetime]:
        return sa.type_coerce(sa.func.strftime(self._FORMAT, "now").concat("000"), UtcDateTime)

    def later(self) -> sa.ColumnElement[datetime]:
        later = sa.func.strftime(self._FORMAT, "now", p("p_lease_modifier"))
        return sa.type_coerce(later.concat("000"), UtcDateTime)

    def later_params(self, seconds: float) -> dict[str, Any]:
        return {"p_lease_modifier": f"{float(seconds):+f} seconds"}

    def younger_than(self, column: sa.ColumnElement[Any], seconds: float) -> sa.ColumnElement[bool]:
        # SQLite keeps timestamps as ISO text, which compares in time order.
        threshold = sa.func.strftime(
            self._FORMAT, "now", sa.literal(f"{-float(seconds):+f} seconds")
        )
        return sa.type_coerce(column, sa.String) > threshold

    def epoch(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        # julianday() reads the stored ISO text (UTC); day 2440587.5 is 1970-01-01.
        days = sa.func.julianday(sa.type_coerce(column, sa.String))
        return sa.type_coerce((days - 2440587.5) * 86400.0, sa.Double)

    def floor(self, value: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        # CAST truncates, which is the floor of a number >= 0; SQLite's floor() needs
        # its optional math functions.
        return sa.cast(value, sa.BigInteger)


class _PostgreSQL(SqlDialect):
    name, combined_writes, insert = "postgresql", True, staticmethod(postgresql.insert)

    def now(self) -> sa.ColumnElement[datetime]:
        # Fix (issue 13, item 1): now() is the start of the transaction, which may have
        # waited for the job's row lock and planned for longer than a lease: a batch
        # granted then was born expired. clock_timestamp() is the time of the grant.
        return sa.type_coerce(sa.func.clock_timestamp(), UtcDateTime)

    def later(self) -> sa.ColumnElement[datetime]:
        interval = sa.func.make_interval(0, 0, 0, 0, 0, 0, p("p_lease_seconds", type_=sa.Double))
        return sa.type_coerce(sa.func.clock_timestamp() + interval, UtcDateTime)

    def later_params(self, seconds: float) -> dict[str, Any]:
        return {"p_lease_seconds": float(seconds)}

    def younger_than(self, column: sa.ColumnElement[Any], seconds: float) -> sa.ColumnElement[bool]:
        # now(), not clock_timestamp(): a stable value lets PostgreSQL use the
        # timestamp's index; the settle lag is a guess of seconds anyway.
        interval = sa.func.make_interval(0, 0, 0, 0, 0, 0, sa.literal(float(seconds), sa.Double))
        return column > sa.func.now() - interval

    def epoch(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        # date_part() is double precision; EXTRACT is numeric (half as fast on 1M rows)
        return sa.type_coerce(sa.func.date_part("epoch", column), sa.Double)

    def floor(self, value: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        # CAST rounds to the nearest integer here: floor() first
        return sa.cast(sa.func.floor(value), sa.BigInteger)


class _MySQL(SqlDialect):
    """MySQL 8 and MariaDB: metadata tables only, so only the settle lag is needed here;
    the inventory is refused on them (``_engines.mysql_inventory_refusal``,
    docs/mysql.md). The clock and lease methods stay unimplemented on purpose."""

    name, combined_writes, insert = "mysql", False, staticmethod(mysql.insert)

    def younger_than(self, column: sa.ColumnElement[Any], seconds: float) -> sa.ColumnElement[bool]:
        # NOW(6) is the statement's start (one value per statement, like PostgreSQL's
        # now()), so the comparison is an index range. Whole microseconds: the count
        # of TIMESTAMPADD is an integer, and seconds would truncate 0.9 to 0. NOW() is in the
        # session's time zone, as a TIMESTAMP column reads and as DEFAULT
        # CURRENT_TIMESTAMP fills a DATETIME (docs/mysql.md).
        micros = sa.literal(-round(float(seconds) * 1_000_000), sa.BigInteger)
        threshold = sa.func.timestampadd(
            sa.literal_column("MICROSECOND"), micros, sa.func.now(6), type_=sa.DateTime
        )
        return column > threshold


_DIALECTS: dict[str, SqlDialect] = {d.name: d for d in (_SQLite(), _PostgreSQL(), _MySQL())}
_DIALECTS["mariadb"] = _DIALECTS["mysql"]  # SQLAlchemy's name for a mariadb:// URL


def dialect_named(name: str) -> SqlDialect:
    """The SQL dialect object of a SQLAlchemy dialect name."""
    return _DIALECTS[name]
