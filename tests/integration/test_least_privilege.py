"""Least privilege (issue 12, item 4): the ``create_tables`` setting, and the roles of
docs/deployment.md (an admin that creates the tables, a worker without DDL, a read-only
metadata role), made by running the documented GRANT block as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from pybatchintory import Inventory, SchemaVersionError
from tests.conftest import PG_URL, Db, require_postgres

ROOT = Path(__file__).resolve().parents[2]
_NAMES = ("pbi_admin", "pbi_worker", "pbi_reader", "pbi", "catalog")


def documented_grants() -> str:
    """The SQL block that follows ``<!-- grants -->`` in docs/deployment.md."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    found = re.search(r"<!-- grants -->\n```sql\n(.*?)```", text, re.S)
    assert found, "docs/deployment.md has no <!-- grants --> SQL block"
    return found.group(1)


def statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@dataclass
class Roles:
    names: dict[str, str]  # documented name -> this test's unique name

    def url(self, role: str) -> str:
        return (
            make_url(PG_URL)
            .set(username=self.names[role], password=None)
            .render_as_string(hide_password=False)
        )


@pytest.fixture
def postgres() -> None:
    require_postgres()  # sync: it probes the server with asyncio.run


@pytest.fixture
async def roles(postgres: None) -> AsyncIterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"{name}_{suffix}" for name in _NAMES}
    pattern = re.compile(r"\b(" + "|".join(sorted(_NAMES, key=len, reverse=True)) + r")\b")
    sql = pattern.sub(lambda m: names[m.group(1)], documented_grants())
    engine = create_async_engine(PG_URL, pool_size=1, max_overflow=0)
    catalog = names["catalog"]
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{catalog}"'))
            await conn.execute(
                sa.text(
                    f'CREATE TABLE "{catalog}".files (id bigserial PRIMARY KEY, '
                    "uri text NOT NULL, weight float8)"
                )
            )
            await conn.execute(
                sa.text(
                    f'INSERT INTO "{catalog}".files (uri, weight) '
                    "SELECT 's3://lp/' || i, 1 + i % 3 FROM generate_series(1, 50) i"
                )
            )
            for statement in statements(sql):
                await conn.execute(sa.text(statement))
        yield Roles(names)
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{catalog}" CASCADE'))
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{names["pbi"]}" CASCADE'))
            for role in ("pbi_admin", "pbi_worker", "pbi_reader"):
                exists = await conn.scalar(
                    sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": names[role]}
                )
                if exists:
                    await conn.execute(sa.text(f'DROP OWNED BY "{names[role]}"'))
                    await conn.execute(sa.text(f'DROP ROLE "{names[role]}"'))
        await engine.dispose()


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    return subprocess.run(
        [sys.executable, "-m", "pybatchintory", *argv],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
async def test_documented_roles_an_admin_inits_a_worker_acquires_a_reader_reads(
    roles: Roles,
) -> None:
    schema = roles.names["pbi"]
    done = run_cli(
        "init",
        env={
            "PYBATCHINTORY_INVENTORY_URL": roles.url("pbi_admin"),
            "PYBATCHINTORY_SCHEMA_NAME": schema,
            "PYBATCHINTORY_CREATE_TABLES": "false",  # init creates them whatever it says
        },
    )
    assert done.returncode == 0, done.stderr
    source = f"{roles.names['catalog']}.files"
    for create_tables in (False, True):  # with the default too: the tables are current
        inventory = Inventory(
            inventory_url=roles.url("pbi_worker"),
            meta_url=roles.url("pbi_reader"),
            schema_name=schema,
            create_tables=create_tables,
            pool_size=1,
        )
        async with inventory:
            batch = await inventory.acquire_batch(
                source_table=source, job_identifier=f"lp_{create_tables}", weight=10
            )
            assert batch is not None and batch.item_count > 0
            async with batch:
                pass
            status = await inventory.status(f"lp_{create_tables}")
            assert status.succeeded == 1 and status.running == 0


@pytest.mark.postgres
async def test_a_worker_cannot_create_and_is_told_to_run_init(roles: Roles) -> None:
    # No init yet: the worker has no CREATE in the schema.
    common = {
        "inventory_url": roles.url("pbi_worker"),
        "meta_url": roles.url("pbi_reader"),
        "schema_name": roles.names["pbi"],
        "pool_size": 1,
    }
    with pytest.raises(SchemaVersionError, match="pybatchintory init"):
        async with Inventory(**common, create_tables=False):
            pass
    with pytest.raises(SchemaVersionError, match="pybatchintory migrate"):
        async with Inventory(**common):  # tries, and names the command for an admin
            pass


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
async def test_create_tables_off_issues_no_ddl_and_names_init(db: Db) -> None:
    with pytest.raises(SchemaVersionError, match="pybatchintory init"):
        async with db.inventory(create_tables=False):
            pass
    if db.kind == "postgresql":
        count = await db.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s", s=db.schema
        )
    else:
        count = await db.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
    assert count == 0
    async with db.inventory():  # creates them
        pass
    async with db.inventory(create_tables=False):  # current: opens
        pass
