"""MySQL/MariaDB (docs/mysql.md): metadata tables are supported, through asyncmy; the
inventory is refused with the reason, and so is the exact horizon. The conformance
tests of the metadata side run on MariaDB through the ``meta_db`` fixture; these are
what is particular to it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pybatchintory import ConfigurationError, HorizonUnavailableError, Inventory, Settings
from pybatchintory._engines import create_engine
from tests.conftest import Db

SECRET = "s3cret-pw"


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+pymysql", "mariadb+asyncmy"])
def test_the_inventory_on_mysql_is_refused_with_the_reason_and_the_way_out(scheme: str) -> None:
    url = f"{scheme}://user:{SECRET}@db.example.com/lake"
    with pytest.raises(ConfigurationError, match="inventory_url") as raised:
        Inventory(inventory_url=url)
    message = str(raised.value)
    assert "metadata tables only (meta_url)" in message and "PostgreSQL or SQLite" in message
    assert SECRET not in message and SECRET not in repr(raised.value)


async def test_an_inventory_engine_on_mysql_is_refused_even_past_the_settings_check() -> None:
    # The engine's own check, for settings made without validation (model_construct)
    url = f"mysql://user:{SECRET}@db.example.com/lake"
    with pytest.raises(ConfigurationError, match="cannot be on MySQL or MariaDB") as raised:
        create_engine(url, Settings(), writer=True)
    assert SECRET not in str(raised.value)
    meta = create_engine(url, Settings(), writer=False)  # no connection is made here
    try:
        assert meta.url.drivername == "mysql+asyncmy"
    finally:
        await meta.dispose()


@pytest.mark.parametrize("meta_db", ["mariadb"], indirect=True)
@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+pymysql"])
async def test_a_plain_mysql_or_mariadb_url_means_asyncmy(meta_db: Db, scheme: str) -> None:
    # pymysql is not installed: a URL naming it works only because it is replaced by
    # the asyncio driver, as postgresql:// means asyncpg.
    table = await meta_db.create_meta(weights=[1, 2, 3])
    assert meta_db.meta_url is not None
    url = sa.engine.make_url(meta_db.meta_url).set(drivername=scheme)
    meta_url = url.render_as_string(hide_password=False)
    async with meta_db.inventory(meta_url=meta_url) as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", horizon=None)
        assert batch is not None and (batch.range_start, batch.range_end) == (1, 3)
        assert [item["uri"] for item in batch.items] == [f"s3://bucket/meta/{i}" for i in range(3)]
        await batch.success()


@pytest.mark.parametrize("meta_db", ["mariadb"], indirect=True)
async def test_the_exact_horizon_is_refused_on_mysql_naming_both_ways_out(meta_db: Db) -> None:
    table = await meta_db.create_meta(weights=[1, 2, 3])
    async with meta_db.inventory() as inv:
        with pytest.raises(HorizonUnavailableError) as raised:
            await inv.acquire_batch(source_table=table, job_identifier="j")  # horizon="exact"
        message = str(raised.value)
        assert "settle_column/settle_seconds" in message and "horizon=None" in message
        assert "implemented for PostgreSQL" in message
        # the way out works, and the refusal wrote nothing
        assert await meta_db.scalar("SELECT count(*) FROM inventory_jobs") == 0
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", horizon=None)
        assert batch is not None and batch.item_count == 3
        await batch.success()


@pytest.mark.parametrize("meta_db", ["mariadb"], indirect=True)
async def test_a_source_table_in_another_mysql_database_is_read_as_schema_dot_table(
    meta_db: Db,
) -> None:
    # MySQL's schemas are databases: 'otherdb.table' reads a table beside the URL's one.
    await meta_db.create_meta("items", weights=[5, 5])
    assert meta_db.meta_url is not None
    database = sa.engine.make_url(meta_db.meta_url).database
    async with meta_db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=f"{database}.items", job_identifier="j", horizon=None
        )
        assert batch is not None and (batch.item_count, batch.weight) == (2, 10)
        await batch.success()
