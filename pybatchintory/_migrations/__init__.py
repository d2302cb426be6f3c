"""The backend tables' schema version, and their upgrade (Alembic, run in-process).

Policy (docs/migrations.md):

* The tables carry a version: one row in ``<jobs_table>_version``, next to them (same
  schema, name taken from the configured jobs table, so two inventories in one schema
  do not collide). Version 1 is the schema of pybatchintory 0.1.0, which had no version
  table: tables without one are version 1.
* :func:`ensure_current` runs in ``Inventory.open()``. Fast path: one read of the
  version row; if it is this library's version, nothing else happens. Otherwise, in
  one transaction that holds the migration lock (``pg_advisory_xact_lock`` on
  PostgreSQL, which lives and dies with the transaction; ``BEGIN IMMEDIATE`` on
  SQLite), it looks again, then creates the tables at the newest version (new
  database) or upgrades them step by step, and stamps the version. Many processes
  opening at once: one upgrades, the others wait for the lock and find the work done.
* Tables newer than this library are refused (:class:`SchemaVersionError`), writing
  nothing: upgrade pybatchintory. Upgrades are additive (nullable columns, or columns
  with a default), so an older library that predates versioning keeps working on
  upgraded tables (version 5's counters excepted, docs/migrations.md).
* An upgrade that fails for lack of privilege names ``pybatchintory migrate``, to be
  run by a role that may alter the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._engines import backend_errors, read_connection, retry_transient, safe_write
from .._tables import BackendTables
from ..exceptions import SchemaVersionError

if TYPE_CHECKING:  # Alembic is imported only when there is something to upgrade
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "LIBRARY_VERSION",
    "MigrationResult",
    "SchemaState",
    "ensure_current",
    "exclusion_constraint_name",
    "migrate",
    "read_state",
    "version_table_name",
]

logger = logging.getLogger("pybatchintory")

# The newest revision in versions/ (a unit test holds the two together). A constant, so
# that the fast path of open() does not load the revision scripts.
HEAD_REVISION = "0005"
LIBRARY_VERSION = int(HEAD_REVISION)
# Serialises creation and upgrades across processes (PostgreSQL). The key that
# pybatchintory 0.1.0 took as a session lock around its create_all: transaction and
# session advisory locks on one key exclude each other, so an old and a new library
# starting side by side do not interleave their DDL either.
_DDL_LOCK_KEY = 0x70796269  # "pybi"
_INSUFFICIENT_PRIVILEGE = "42501"
_SCRIPTS = Path(__file__).resolve().parent

T = TypeVar("T")


def version_table_name(tables: BackendTables) -> str:
    """The version table of these backend tables: ``<jobs_table>_version``."""
    return f"{tables.jobs.name}_version"


def exclusion_constraint_name(tables: BackendTables) -> str:
    """PostgreSQL: the constraint that keeps a job's ranges disjoint per generation."""
    return f"{tables.batches.name}_ranges_disjoint"


@dataclass(frozen=True)
class SchemaState:
    """What the inventory database holds, as ``pybatchintory check`` reports it."""

    tables_version: int | None  # None: no backend tables yet
    stamped: bool  # False for tables created before versioning (version 1)
    library_version: int
    # PostgreSQL: whether the exclusion constraint exists; None on SQLite or without tables
    exclusion_constraint: bool | None
    pending: list[str] = field(default_factory=list)  # the steps an upgrade would run

    @property
    def status(self) -> str:
        """``current``, ``upgrade pending`` or ``newer than this library``."""
        if self.tables_version is None or self.tables_version < self.library_version:
            return "upgrade pending"
        if self.tables_version > self.library_version:
            return "newer than this library"
        return "current" if self.stamped else "upgrade pending"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables_version": self.tables_version,
            "stamped": self.stamped,
            "library_version": self.library_version,
            "exclusion_constraint": self.exclusion_constraint,
            "status": self.status,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate` did (or, dry, would do)."""

    from_version: int | None  # None: there were no tables
    to_version: int
    steps: list[str]
    dry_run: bool
    exclusion_constraint: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "steps": self.steps,
            "dry_run": self.dry_run,
            "exclusion_constraint": self.exclusion_constraint,
        }


# -- the fast path ---------------------------------------------------------------------


async def ensure_current(
    engine: AsyncEngine, tables: BackendTables, *, create: bool = True
) -> None:
    """Make the backend tables current: create, or upgrade, or nothing (the usual case,
    one read). Raises SchemaVersionError for tables newer than this library, or for an
    upgrade refused for lack of privilege.

    ``create=False`` (the ``create_tables`` setting): never issue DDL; tables that are
    missing or older than this library raise SchemaVersionError naming
    ``pybatchintory init`` or ``pybatchintory migrate``."""
    async with backend_errors("creating or upgrading the backend tables", engine):
        stamped = await _read_version_quickly(engine, tables)
        if stamped == HEAD_REVISION:
            return
        if stamped is not None:
            _refuse_newer(_parse(stamped, tables), tables)
        if not create:
            state = await read_state(engine, tables)
            _refuse_without_creation(state, tables)
            return
        await _upgrade(engine, tables, dry_run=False)


def _refuse_without_creation(state: SchemaState, tables: BackendTables) -> None:
    """create_tables=False: tables that are not current are an error, not a job."""
    if state.status == "current":
        return
    if state.tables_version is not None:
        _refuse_newer(state.tables_version, tables)
    where = (
        f"tables {tables.jobs.name}, {tables.batches.name}, {tables.logs.name} in schema "
        f"{tables.metadata.schema!r}"
    )
    if state.tables_version is None:
        raise SchemaVersionError(
            f"the backend tables do not exist ({where}) and create_tables is off: run "
            "`pybatchintory init` (or `pybatchintory migrate`) once, as a role that may "
            "create them, with the same settings"
        )
    raise SchemaVersionError(
        f"the backend tables ({where}) are at schema version {state.tables_version}"
        f"{'' if state.stamped else ' (unstamped)'}, this pybatchintory needs version "
        f"{LIBRARY_VERSION}, and create_tables is off: run `pybatchintory migrate` as a "
        "role that may alter them, with the same settings"
    )


async def _read_version_quickly(engine: AsyncEngine, tables: BackendTables) -> str | None:
    """The stamped revision, or None if it cannot be read (no version table yet, or
    several rows): the locked slow path then looks properly."""
    vt = sa.table(
        version_table_name(tables), sa.column("version_num"), schema=tables.metadata.schema
    )
    try:
        async with read_connection(engine) as conn:
            rows = (await conn.execute(sa.select(vt.c.version_num))).scalars().all()
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        return None
    return str(rows[0]) if len(rows) == 1 else None


# -- reading the state -------------------------------------------------------------------


async def read_state(engine: AsyncEngine, tables: BackendTables) -> SchemaState:
    """The tables' version against the library's, without writing anything."""
    async with backend_errors("reading the backend tables' version", engine):
        async with read_connection(engine) as conn:
            return await conn.run_sync(_read_state_sync, tables)


def _read_state_sync(conn: sa.Connection, tables: BackendTables) -> SchemaState:
    version, stamped = _tables_version(conn, tables)
    exclusion = None
    if conn.dialect.name == "postgresql" and version is not None:
        exclusion = _has_exclusion_constraint(conn, tables)
    pending = (
        _describe_steps(version, stamped) if version is None or version <= LIBRARY_VERSION else []
    )
    return SchemaState(version, stamped, LIBRARY_VERSION, exclusion, pending)


def _tables_version(conn: sa.Connection, tables: BackendTables) -> tuple[int | None, bool]:
    """(version, stamped): (None, False) without tables, (1, False) for tables that
    predate versioning. Raises SchemaVersionError for a version row it cannot read."""
    schema = tables.metadata.schema
    inspector = sa.inspect(conn)
    if not inspector.has_table(tables.jobs.name, schema=schema):
        return None, False
    name = version_table_name(tables)
    if not inspector.has_table(name, schema=schema):
        return 1, False
    vt = sa.table(name, sa.column("version_num"), schema=schema)
    rows = [str(v) for v in conn.execute(sa.select(vt.c.version_num)).scalars()]
    if len(rows) != 1:
        raise SchemaVersionError(
            f"the version table {_qualified(name, schema)} holds {len(rows)} rows "
            f"({', '.join(rows) or 'none'}); it must hold exactly one. Repair it by hand"
        )
    return _parse(rows[0], tables), True


def _parse(revision: str, tables: BackendTables) -> int:
    if not revision.isdigit():
        name = _qualified(version_table_name(tables), tables.metadata.schema)
        raise SchemaVersionError(
            f"the version table {name} holds {revision!r}, not a pybatchintory schema "
            "version; is the table used by something else?"
        )
    return int(revision)


def _refuse_newer(version: int, tables: BackendTables) -> None:
    if version > LIBRARY_VERSION:
        raise SchemaVersionError(
            f"the backend tables ({tables.jobs.name}, {tables.batches.name}, "
            f"{tables.logs.name}) are at schema version {version}, but this "
            f"pybatchintory supports version {LIBRARY_VERSION} at most: they were "
            "upgraded by a newer pybatchintory. Upgrade pybatchintory; nothing was written"
        )


def _exclusion_definition(conn: sa.Connection, tables: BackendTables) -> str | None:
    """The exclusion constraint's definition, or None when the table has none."""
    prep = conn.dialect.identifier_preparer
    # Look on this table only: constraint names are per schema, not per database.
    found = conn.scalar(
        sa.text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name "
            "AND conrelid = to_regclass(:table)"
        ),
        {"name": exclusion_constraint_name(tables), "table": prep.format_table(tables.batches)},
    )
    return None if found is None else str(found)


def _has_exclusion_constraint(conn: sa.Connection, tables: BackendTables) -> bool:
    return _exclusion_definition(conn, tables) is not None


# -- upgrading ---------------------------------------------------------------------------


async def migrate(
    engine: AsyncEngine, tables: BackendTables, *, dry_run: bool = False
) -> MigrationResult:
    """Bring the tables to the newest version (``pybatchintory migrate``); on
    PostgreSQL also add the exclusion constraint if it is missing and can be had.
    ``dry_run`` only reports the pending steps."""
    async with backend_errors("upgrading the backend tables", engine):
        return await _upgrade(engine, tables, dry_run=dry_run)


async def _upgrade(engine: AsyncEngine, tables: BackendTables, *, dry_run: bool) -> MigrationResult:
    def work(conn: sa.Connection) -> MigrationResult:
        return _upgrade_sync(conn, tables, dry_run=dry_run)

    if engine.dialect.name == "postgresql":
        return await retry_transient(lambda: _in_postgresql_lock(engine, tables, work))
    # On the one cancellation-safe write path: a cancellation that cut the BEGIN
    # IMMEDIATE midway left a statement of a connection closed meanwhile unfinalized,
    # and the write lock held until the garbage collector found it (issue 13).
    return await safe_write(lambda: _in_sqlite_lock(engine, work))


async def _in_sqlite_lock(engine: AsyncEngine, work: Callable[[sa.Connection], T]) -> T:
    async with engine.connect() as outside:
        # A step that rebuilds a table (SQLite cannot alter a constraint) drops the
        # logs' parent table: foreign keys must be off, which SQLite honours only
        # outside a transaction, so through the driver before the BEGIN. The check
        # below stands in for them, and they are on again before the pool has it back.
        driver: Any = (await outside.get_raw_connection()).driver_connection
        await driver.execute("PRAGMA foreign_keys = OFF")
        try:
            # BEGIN IMMEDIATE: the write lock from the start, held to the commit.
            conn = await outside.execution_options(sqlite_begin="IMMEDIATE", sqlite_busy_ms=None)
            async with conn.begin():
                result = await conn.run_sync(work)
                broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).first()
                if broken is not None:
                    raise SchemaVersionError(
                        f"the upgrade would leave a log row without its batch ({tuple(broken)}); "
                        "nothing was changed"
                    )
                return result
        finally:
            await _foreign_keys_on(outside, driver)


async def _foreign_keys_on(conn: AsyncConnection, driver: Any) -> None:
    """Foreign keys on again; a connection where that cannot be done (closed by a
    cancellation midway) is dropped from the pool rather than reused without them."""
    try:
        with anyio.CancelScope(shield=True):
            await driver.execute("PRAGMA foreign_keys = ON")
    except Exception:
        await conn.invalidate()


async def _in_postgresql_lock(
    engine: AsyncEngine, tables: BackendTables, work: Callable[[sa.Connection], T]
) -> T:
    async with engine.connect() as conn:
        # READ COMMITTED whatever the inventory's isolation level: each statement must
        # see what a process that held the lock before us committed.
        conn = await conn.execution_options(isolation_level="READ COMMITTED")
        async with conn.begin():
            # A transaction-level lock: released by the commit or rollback, also when
            # the connection is a PgBouncer transaction-pooled one.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
            await _create_schema(conn, tables)
            return await conn.run_sync(work)


async def _create_schema(conn: AsyncConnection, tables: BackendTables) -> None:
    schema = tables.metadata.schema
    if not schema:
        return
    # Only when absent: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
    # database even when the schema exists, which an application role may lack.
    exists = await conn.scalar(
        sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
    )
    if exists is None:
        try:
            await conn.execute(sa.schema.CreateSchema(schema))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
                raise _no_privilege(None, tables, exc) from exc
            raise


def _upgrade_sync(conn: sa.Connection, tables: BackendTables, *, dry_run: bool) -> MigrationResult:
    """Under the migration lock: look, then create or upgrade, and stamp."""
    version, stamped = _tables_version(conn, tables)
    if version is not None:
        _refuse_newer(version, tables)
    steps = _describe_steps(version, stamped)
    postgresql = conn.dialect.name == "postgresql"
    if dry_run:
        exclusion = (
            _has_exclusion_constraint(conn, tables) if postgresql and version is not None else None
        )
        return MigrationResult(version, LIBRARY_VERSION, steps, True, exclusion)
    try:
        if steps:
            from alembic import command

            config = _alembic_config(conn, tables)
            if version is None:
                tables.metadata.create_all(conn)
                command.stamp(config, HEAD_REVISION)
            else:
                if not stamped:
                    command.stamp(config, _revision(version))
                command.upgrade(config, HEAD_REVISION)
                # Tables that a creation cut short left out (checkfirst: only those).
                tables.metadata.create_all(conn)
            logger.info(
                "backend tables %s: version %s -> %s",
                tables.jobs.name,
                version if version is not None else "none",
                LIBRARY_VERSION,
            )
        exclusion = _add_exclusion_constraint(conn, tables) if postgresql else None
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            raise _no_privilege(version, tables, exc) from exc
        raise
    return MigrationResult(version, LIBRARY_VERSION, steps, False, exclusion)


def _no_privilege(
    version: int | None, tables: BackendTables, exc: DBAPIError
) -> SchemaVersionError:
    what = (
        "creating the backend tables"
        if version is None
        else f"upgrading the backend tables from schema version {version} to {LIBRARY_VERSION}"
    )
    return SchemaVersionError(
        f"{what} failed for lack of privilege ({type(exc.orig).__name__}: {exc.orig}). "
        "Run `pybatchintory migrate` as a role that may create and alter them (e.g. "
        f"their owner), with the same settings (jobs table {tables.jobs.name!r}, schema "
        f"{tables.metadata.schema!r}); then open the inventory again"
    )


def _add_exclusion_constraint(conn: sa.Connection, tables: BackendTables) -> bool:
    """A database-level net under invariant 1, where btree_gist can be had. Returns
    whether the constraint exists afterwards."""
    existing = _exclusion_definition(conn, tables)
    if existing is not None and "int8range" not in existing:
        return True
    prep = conn.dialect.identifier_preparer
    batches = prep.format_table(tables.batches)
    name = prep.quote(exclusion_constraint_name(tables))
    # numrange, not int8range: int8range(a, b, '[]') is stored as [a, b + 1), out of range
    # for a batch that ends at 2**63 - 1. Schema version 3 replaces an int8range one.
    add = (
        f"ADD CONSTRAINT {name} EXCLUDE USING gist (job_identifier WITH =, "
        "generation WITH =, numrange(range_start, range_end, '[]') WITH &&)"
    )
    try:
        # A savepoint: a refusal (no extension, no privilege) must not abort the
        # migration's transaction.
        with conn.begin_nested():
            if existing is not None:
                conn.execute(sa.text(f"ALTER TABLE {batches} DROP CONSTRAINT {name}, {add}"))
            else:
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
                conn.execute(sa.text(f"ALTER TABLE {batches} {add}"))
    except DBAPIError as exc:
        logger.info(
            "no exclusion constraint on %s (%s); the job lock alone keeps ranges disjoint",
            tables.batches.name,
            type(exc.orig).__name__,
        )
        return False
    return True


# -- the revision scripts ------------------------------------------------------------------


def _revision(version: int) -> str:
    return f"{version:04d}"


@cache
def scripts() -> ScriptDirectory:
    """The revision scripts shipped in pybatchintory/_migrations/versions."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_base_config())


def _base_config() -> Config:
    from alembic.config import Config

    config = Config()
    # configparser interpolation: a '%' in the install path must be doubled.
    config.set_main_option("script_location", str(_SCRIPTS).replace("%", "%%"))
    return config


def _alembic_config(conn: sa.Connection, tables: BackendTables) -> Config:
    config = _base_config()
    config.attributes.update(
        connection=conn, tables=tables, version_table=version_table_name(tables)
    )
    return config


def _describe_steps(version: int | None, stamped: bool) -> list[str]:
    """The steps an upgrade from ``version`` runs, one line each."""
    if version is None:
        return [f"create the backend tables at schema version {LIBRARY_VERSION}"]
    steps = (
        [] if stamped else [f"record schema version {version} (tables created before versioning)"]
    )
    if version < LIBRARY_VERSION:
        revisions = scripts().iterate_revisions(HEAD_REVISION, _revision(version))
        for script in reversed(list(revisions)):
            steps.append(f"{int(script.revision)}: {script.doc}")
    return steps


def _qualified(name: str, schema: str | None) -> str:
    return f"{schema}.{name}" if schema else name
