"""The backend tables' schema version: upgrades from version 1 (made by the frozen DDL
in _schema_v1.py), refusal of newer tables, concurrent upgrades, ``migrate``/``check``.

Every test runs on a SQLite file and on a PostgreSQL schema of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pybatchintory import ConfigurationError, SchemaVersionError
from pybatchintory._migrations import HEAD_REVISION, LIBRARY_VERSION, scripts
from tests.conftest import Db
from tests.integration._schema_v1 import build_v1_tables, create_v1_tables

ROOT = Path(__file__).resolve().parents[2]
LEASE_EXPIRED = "lease expired"
V1_TABLES = ("inventory_jobs", "inventory", "inventory_logs")


# -- helpers ---------------------------------------------------------------------------


def _ts(db: Db, moment: datetime) -> datetime:
    """A timestamp as 0.1.0 wrote it: naive UTC on SQLite, aware on PostgreSQL."""
    return moment.replace(tzinfo=None) if db.kind == "sqlite" else moment


async def make_v1_inventory(db: Db) -> str:
    """Version-1 tables holding two jobs, batches in every status and their log rows,
    as 0.1.0 would have left them; plus a metadata table of ten items of weight 1.
    Returns the metadata table's qualified name."""
    table = await db.create_meta(weights=[1] * 10)
    md = build_v1_tables(db.schema)
    jobs, batches, logs = (md.tables[db.qualified(n)] for n in V1_TABLES)
    now = datetime.now(timezone.utc)
    t = lambda minutes: _ts(db, now - timedelta(minutes=minutes))  # noqa: E731

    def batch(
        bid: int, job: str, lo: int, hi: int, status: str, attempt: int, **kw: Any
    ) -> dict[str, Any]:
        return {
            "id": bid,
            "job_identifier": job,
            "generation": 0,
            "processing_start": t(60),
            "processing_end": kw.get("end"),
            "range_start": lo,
            "range_end": hi,
            "weight": float(hi - lo + 1),
            "item_count": hi - lo + 1,
            "attempt": attempt,
            "max_attempts": 3,
            "status": status,
            "lease_expires_at": kw.get("lease"),
            "worker": "old-host:1",
            "result": kw.get("result"),
        }

    def log(bid: int, attempt: int, status: str, text: str | None = None) -> dict[str, Any]:
        end = None if status == "running" else t(50)
        return {
            "id": bid,
            "attempt": attempt,
            "processing_start": t(60),
            "processing_end": end,
            "status": status,
            "logging": text,
            "worker": "old-host:1",
        }

    async with db.engine.begin() as conn:
        await create_v1_tables(conn, db.schema)
        job = {"source_kind": "table", "source": table, "id_column": "id", "filter_text": ""}
        await conn.execute(
            sa.insert(jobs),
            [
                {
                    **job,
                    "job_identifier": "convert",
                    "cursor": 8,
                    "generation": 0,
                    "created_at": t(90),
                    "updated_at": t(60),
                },
                {
                    **job,
                    "job_identifier": "index",
                    "cursor": 2,
                    "generation": 0,
                    "created_at": t(90),
                    "updated_at": t(60),
                },
            ],
        )
        await conn.execute(
            sa.insert(batches),
            [
                batch(1, "convert", 1, 2, "succeeded", 1, end=t(55), result={"rows": 2}),
                batch(2, "convert", 3, 4, "failed", 1, end=t(55)),  # attempts left
                batch(3, "convert", 5, 6, "running", 1, lease=t(30)),  # lease expired
                batch(4, "convert", 7, 8, "failed", 3, end=t(55)),  # out of attempts
                batch(5, "index", 1, 2, "succeeded", 1, end=t(55), result={"rows": 2}),
            ],
        )
        await conn.execute(
            sa.insert(logs),
            [
                log(1, 1, "succeeded"),
                log(2, 1, "failed", "boom"),
                log(3, 1, "running"),
                log(4, 1, "failed", "boom 1"),
                log(4, 2, "failed", "boom 2"),
                log(4, 3, "failed", "boom 3"),
                log(5, 1, "succeeded"),
            ],
        )
        if db.kind == "postgresql":  # the ids came from the sequence in 0.1.0's database
            qualified = db.qualified("inventory")
            await conn.execute(
                sa.text(f"SELECT setval(pg_get_serial_sequence('{qualified}', 'id'), 5)")
            )
    return table


async def v1_rows(db: Db) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables, in the version-1 columns."""
    md = build_v1_tables(db.schema)
    out = {}
    async with db.engine.connect() as conn:
        for name in V1_TABLES:
            table = md.tables[db.qualified(name)]
            query = sa.select(table).order_by(*table.primary_key.columns)
            out[name] = [tuple(r) for r in (await conn.execute(query)).all()]
    return out


async def stamped_versions(db: Db) -> list[str] | None:
    """The rows of the version table, or None if it does not exist."""
    async with db.engine.connect() as conn:
        exists = await conn.run_sync(
            lambda c: sa.inspect(c).has_table("inventory_jobs_version", schema=db.schema)
        )
    if not exists:
        return None
    return [r[0] for r in await db.rows("SELECT version_num FROM {s}inventory_jobs_version")]


async def catalog(db: Db) -> list[tuple[Any, ...]]:
    """The schema objects (tables, columns, indexes, constraints) as the catalog lists them."""
    if db.kind == "sqlite":
        return [
            tuple(r)
            for r in await db.rows("SELECT type, name, sql FROM sqlite_master ORDER BY name")
        ]
    return [
        tuple(r)
        for r in await db.rows(
            "SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE n.nspname = :schema ORDER BY 1, 3",
            schema=db.schema,
        )
    ] + [
        tuple(r)
        for r in await db.rows(
            "SELECT conname, contype FROM pg_constraint co JOIN pg_namespace n "
            "ON n.oid = co.connamespace WHERE n.nspname = :schema ORDER BY 1",
            schema=db.schema,
        )
    ]


async def cli(db: Db, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pybatchintory`` with the database's settings, in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = str(ROOT)
    if db.schema:
        env["PYBATCHINTORY_SCHEMA_NAME"] = db.schema
    command = [sys.executable, "-m", "pybatchintory", "--inventory-url", url or db.url, *args]
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    )


async def assert_acquisition_continues(db: Db, table: str) -> None:
    """After the upgrade the old job goes on where it stood: the failed batch with
    attempts left, then the expired one, then a new range after the cursor (8)."""
    async with db.inventory() as inv:
        taken = []
        for _ in range(3):
            batch = await inv.acquire_batch(source_table=table, job_identifier="convert", weight=2)
            assert batch is not None
            taken.append((batch.id, batch.range_start, batch.range_end, batch.attempt))
            await batch.success()
        assert taken == [(2, 3, 4, 2), (3, 5, 6, 2), (6, 9, 10, 1)]
        assert (
            await inv.acquire_batch(source_table=table, job_identifier="convert", weight=2) is None
        )
        # The other job too: its cursor was 2.
        other = await inv.acquire_batch(source_table=table, job_identifier="index", weight=100)
        assert other is not None and (other.range_start, other.range_end) == (3, 10)
        await other.success()
        status = await inv.status("convert")
        assert (status.cursor, status.succeeded, status.failed, status.running) == (10, 4, 1, 0)
    expired = await db.rows(
        "SELECT status, logging FROM {s}inventory_logs WHERE id = 3 AND attempt = 1"
    )
    assert expired[0][0] == "failed" and LEASE_EXPIRED in expired[0][1]
    # The new column exists, and each old job's next acquisition stored its definition.
    stored = [
        json.loads(r[0])
        for r in await db.rows("SELECT definition FROM {s}inventory_jobs ORDER BY job_identifier")
    ]
    assert [(d["source_table"].rpartition(".")[2], d["weight"]) for d in stored] == [
        ("meta", 2.0),
        ("meta", 100.0),
    ]


def _keep_old_rows(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> None:
    for name in V1_TABLES:
        assert after[name] == before[name], f"{name} changed by the upgrade"


# -- (a) upgrading version-1 tables -------------------------------------------------------


async def test_open_upgrades_version_1_tables_keeping_every_row(db: Db) -> None:
    table = await make_v1_inventory(db)
    before = await v1_rows(db)
    assert await stamped_versions(db) is None

    async with db.inventory() as inv:
        # Version 5's counters, set from the rows: convert has 4 batches of weight 2,
        # index 1; the status built on them is the one 0.1.0's rows say.
        assert await counters(db) == [("convert", 4, 8.0, 4), ("index", 1, 2.0, 1)]
        status = await inv.status("convert")
        assert (status.succeeded, status.failed, status.running, status.superseded) == (1, 2, 1, 0)
        assert (status.succeeded_weight, status.retryable, status.out_of_attempts) == (2.0, 1, 1)
        assert status.last_success_at is not None
    assert await stamped_versions(db) == [HEAD_REVISION]
    _keep_old_rows(before, await v1_rows(db))

    await assert_acquisition_continues(db, table)
    # One new batch each (the reclaims reuse their rows).
    assert await counters(db) == [("convert", 5, 10.0, 5), ("index", 2, 10.0, 2)]


async def counters(db: Db) -> list[tuple[str, int, float, int]]:
    """The batch counters of schema version 5, per job."""
    return [
        (r[0], int(r[1]), float(r[2]), int(r[3]))
        for r in await db.rows(
            "SELECT job_identifier, generation_batches, generation_weight, total_batches "
            "FROM {s}inventory_jobs ORDER BY job_identifier"
        )
    ]


async def test_upgrade_counts_the_current_generation_apart(db: Db) -> None:
    """A job reset under 0.1.0 (generation 1) with batches of both generations: the
    upgrade to version 5 counts the current generation's batches apart from the rest."""
    await make_v1_inventory(db)
    md = build_v1_tables(db.schema)
    jobs, batches = (md.tables[db.qualified(n)] for n in ("inventory_jobs", "inventory"))
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.update(jobs).where(jobs.c.job_identifier == "convert").values(generation=1)
        )
        await conn.execute(sa.update(batches).where(batches.c.id.in_([1, 2])).values(generation=1))
    async with db.inventory() as inv:
        assert await counters(db) == [("convert", 2, 4.0, 4), ("index", 1, 2.0, 1)]
        status = await inv.status("convert")
        assert (status.succeeded, status.failed, status.running, status.superseded) == (1, 1, 0, 2)


async def test_migrate_command_upgrades_version_1_tables(db: Db) -> None:
    table = await make_v1_inventory(db)
    before = await v1_rows(db)

    dry = await cli(db, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would upgrade the backend tables from version 1 to {LIBRARY_VERSION}" in dry.stdout
    assert "2: jobs.definition" in dry.stdout
    assert await stamped_versions(db) is None  # a dry run writes nothing

    done = await cli(db, "migrate")
    assert done.returncode == 0, done.stderr
    assert f"upgraded from version 1 to {LIBRARY_VERSION}" in done.stdout
    assert await stamped_versions(db) == [HEAD_REVISION]
    _keep_old_rows(before, await v1_rows(db))

    again = await cli(db, "--json", "migrate")
    assert json.loads(again.stdout)["steps"] == [], again.stderr

    await assert_acquisition_continues(db, table)


async def test_upgraded_tables_match_new_ones(db: Db) -> None:
    """Version 1 plus the upgrades is the schema a new database gets: the same columns,
    CHECK constraints (the status enum with ``released``) and indexes (the reclaimable
    index's predicate), also where SQLite had to rebuild a table."""
    await make_v1_inventory(db)
    async with db.inventory():
        pass
    names = {"jobs_table": "fresh_jobs", "batches_table": "fresh", "logs_table": "fresh_logs"}
    async with db.inventory(**names):
        pass

    def shape(conn: sa.Connection, table: str, rename: str) -> dict[str, Any]:
        found = sa.inspect(conn)

        def same(text: Any) -> str:  # the fresh tables' names spelt as the upgraded ones
            return str(text).replace(rename, "inventory")

        return {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"])
                for c in found.get_columns(table, schema=db.schema)
            ],
            "checks": sorted(
                (same(c["name"]), " ".join(same(c["sqltext"]).split()))
                for c in found.get_check_constraints(table, schema=db.schema)
            ),
            "indexes": sorted(
                (
                    same(i["name"]),
                    tuple(i["column_names"]),
                    same(sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items())),
                )
                for i in found.get_indexes(table, schema=db.schema)
            ),
        }

    async with db.engine.connect() as conn:
        for old, new in (
            ("inventory_jobs", "fresh_jobs"),
            ("inventory", "fresh"),
            ("inventory_logs", "fresh_logs"),
        ):
            upgraded = await conn.run_sync(shape, old, "-")
            fresh = await conn.run_sync(shape, new, "fresh")
            assert upgraded == fresh, old
        jobs = await conn.run_sync(shape, "inventory_jobs", "-")
        batches = await conn.run_sync(shape, "inventory", "-")
    assert [c[0] for c in jobs["columns"]][-6:] == [
        "definition",
        "paused_at",
        "pause_reason",
        "generation_batches",
        "generation_weight",
        "total_batches",
    ]
    assert [c[2] for c in jobs["columns"]][-3:] == [False, False, False]  # NOT NULL
    assert ("ix_inventory_succeeded_end", ("job_identifier", "processing_end")) in [
        i[:2] for i in batches["indexes"]
    ]
    assert "retry_after" in [c[0] for c in batches["columns"]]
    assert any("released" in text for _, text in batches["checks"])
    assert any(
        "released" in str(options)
        for name, _, options in batches["indexes"]
        if "reclaimable" in name
    )


# -- (b) tables newer than the library ----------------------------------------------------


@pytest.mark.parametrize("shape", ["stamped", "upgraded"])
async def test_newer_tables_are_refused_and_nothing_is_written(db: Db, shape: str) -> None:
    await make_v1_inventory(db)
    if shape == "stamped":  # version-1 tables that a future library stamped
        async with db.engine.begin() as conn:
            vt = sa.Table(
                "inventory_jobs_version",
                sa.MetaData(schema=db.schema),
                sa.Column("version_num", sa.String(32)),
            )
            await conn.run_sync(vt.create)
            await conn.execute(sa.insert(vt).values(version_num="0099"))
    else:  # current tables, then a future library's version
        async with db.inventory():
            pass
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(f"UPDATE {db.qualified('inventory_jobs_version')} SET version_num = '0099'")
            )
    before_rows, before_catalog = await v1_rows(db), await catalog(db)

    with pytest.raises(SchemaVersionError) as raised:
        await db.inventory().open()
    message = str(raised.value)
    assert "schema version 99" in message
    assert f"supports version {LIBRARY_VERSION}" in message
    assert "Upgrade pybatchintory" in message
    assert isinstance(raised.value, ConfigurationError)

    migrate = await cli(db, "migrate")
    assert migrate.returncode == 2 and "schema version 99" in migrate.stderr

    assert await v1_rows(db) == before_rows
    assert await catalog(db) == before_catalog
    assert await stamped_versions(db) == ["0099"]
    # The old tables are untouched; nothing was acquired either.
    assert await db.scalar(f"SELECT count(*) FROM {db.qualified('inventory')}") == 5


# -- (c) many processes opening old tables at once -----------------------------------------


async def test_processes_opening_old_tables_at_once_upgrade_once(db: Db, tmp_path: Path) -> None:
    table = await make_v1_inventory(db)
    before = await v1_rows(db)
    go = tmp_path / "race" / "go"
    go.parent.mkdir()
    args = json.dumps({"url": db.url, "schema": db.schema, "go_file": str(go)})
    count = 8 if db.kind == "postgresql" else 4
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration._migrate_worker",
            args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        with anyio.fail_after(60):  # every interpreter started and imported
            while len(list(go.parent.glob("ready-*"))) < count:
                await asyncio.sleep(0.02)
        go.touch()
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err.decode()[-4000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["opened"] for r in results)
    upgrades = [m for r in results for m in r["upgraded"]]
    assert upgrades == [f"backend tables inventory_jobs: version 1 -> {LIBRARY_VERSION}"], upgrades
    assert await stamped_versions(db) == [HEAD_REVISION]
    _keep_old_rows(before, await v1_rows(db))
    await assert_acquisition_continues(db, table)


# -- (d) check ---------------------------------------------------------------------------


async def test_check_exit_codes(db: Db) -> None:
    fresh = await cli(db, "check")
    assert fresh.returncode == 1, fresh.stderr
    assert "none (no tables)" in fresh.stdout and "upgrade pending" in fresh.stdout

    await make_v1_inventory(db)
    old = await cli(db, "--json", "check")
    assert old.returncode == 1, old.stderr
    state = json.loads(old.stdout)
    assert (state["tables_version"], state["stamped"], state["library_version"]) == (
        1,
        False,
        LIBRARY_VERSION,
    )
    assert state["status"] == "upgrade pending" and state["pending"]
    assert state["exclusion_constraint"] is (True if db.kind == "postgresql" else None)
    assert await stamped_versions(db) is None  # check writes nothing

    async with db.inventory():
        pass
    current = await cli(db, "check")
    assert current.returncode == 0, current.stderr
    assert "status                current" in current.stdout
    expected = "present" if db.kind == "postgresql" else "n/a (SQLite)"
    assert f"exclusion constraint  {expected}" in current.stdout

    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(f"UPDATE {db.qualified('inventory_jobs_version')} SET version_num = '0099'")
        )
    newer = await cli(db, "check")
    assert newer.returncode == 2, newer.stdout
    assert "newer than this library" in newer.stdout


async def test_check_on_a_broken_or_unreachable_database_exits_2(db: Db, tmp_path: Path) -> None:
    if db.kind == "sqlite":  # a file that is not a database
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"not a database, " * 512)
        url = f"sqlite+aiosqlite:///{garbage}"
    else:
        url = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"
    result = await cli(db, "check", url=url)
    assert result.returncode == 2
    assert "database error" in result.stderr and "Traceback" not in result.stderr


async def test_migrate_restores_a_missing_exclusion_constraint(pg_only: Db) -> None:
    db = pg_only
    async with db.inventory():
        pass
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"ALTER TABLE {db.qualified('inventory')} DROP CONSTRAINT inventory_ranges_disjoint"
            )
        )
    assert "exclusion constraint  absent" in (await cli(db, "check")).stdout
    assert (await cli(db, "check")).returncode == 0  # the version is current all the same
    done = await cli(db, "migrate")
    assert done.returncode == 0, done.stderr
    assert "already at schema version" in done.stdout
    assert "exclusion constraint  present" in (await cli(db, "check")).stdout


# -- the fast path, privileges -------------------------------------------------------------


async def test_opening_current_tables_reads_the_version_only(db: Db) -> None:
    async with db.inventory():
        pass
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    # What any new engine runs on its first connection (dialect initialisation).
    baseline_engine = create_async_engine(db.url)
    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        async with baseline_engine.connect():
            pass
        baseline = list(statements)
        statements.clear()
        async with db.inventory():
            pass
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)
        await baseline_engine.dispose()
    ours = [s for s in statements if s not in baseline and not s.startswith("BEGIN")]
    assert len(ours) == 1 and "inventory_jobs_version" in ours[0], statements


async def test_upgrade_without_privilege_names_migrate(pg_only: Db) -> None:
    db = pg_only
    await make_v1_inventory(db)
    role = f"pbi_app_{uuid.uuid4().hex[:8]}"
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {db.schema} TO {role}"))
        await conn.execute(
            sa.text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {db.schema} TO {role}"
            )
        )
    url = sa.make_url(db.url).set(username=role).render_as_string(hide_password=False)
    try:
        with pytest.raises(SchemaVersionError) as raised:
            await db.inventory(inventory_url=url, meta_url=url).open()
        message = str(raised.value)
        assert "pybatchintory migrate" in message
        assert f"from schema version 1 to {LIBRARY_VERSION}" in message
        assert "lack of privilege" in message
        assert await stamped_versions(db) is None

        # Creating new tables (their schema, first) is refused the same way.
        with pytest.raises(SchemaVersionError) as raised:
            await db.inventory(
                inventory_url=url, meta_url=url, schema_name=f"{db.schema}_new"
            ).open()
        assert "creating the backend tables failed for lack of privilege" in str(raised.value)
        assert "pybatchintory migrate" in str(raised.value)

        # The owner migrates; then the application role opens without altering anything.
        assert (await cli(db, "migrate")).returncode == 0
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(f"GRANT SELECT ON {db.qualified('inventory_jobs_version')} TO {role}")
            )
        async with db.inventory(inventory_url=url, meta_url=url):
            pass
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(f"DROP OWNED BY {role}"))
            await conn.execute(sa.text(f"DROP ROLE {role}"))


def test_head_revision_constant_matches_the_scripts() -> None:
    script_dir = scripts()
    assert script_dir.get_current_head() == HEAD_REVISION
    revisions = sorted(s.revision for s in script_dir.walk_revisions())
    assert revisions == [f"{v:04d}" for v in range(1, LIBRARY_VERSION + 1)]
