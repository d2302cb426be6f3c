"""Configuration: Settings from the environment and dotenv files, their precedence,
and no password in any repr or error message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from pybatchintory import (
    BackendError,
    ConfigurationError,
    Inventory,
    Settings,
    SyncInventory,
    UnknownTableError,
    configure,
)
from pybatchintory.config import DEFAULT_INVENTORY_URL, hide_password
from tests.conftest import Db

SECRET = "s3cret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PYBATCHINTORY_* variable from the outer environment, an empty working directory."""
    for name in list(os.environ):
        if name.startswith("PYBATCHINTORY_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def _dotenv(path: Path, **values: str) -> Path:
    path.write_text("".join(f"PYBATCHINTORY_{k.upper()}={v}\n" for k, v in values.items()))
    return path


# -- where settings come from -----------------------------------------------------------


def test_with_nothing_set_the_inventory_is_an_embedded_sqlite_file() -> None:
    settings = Settings()
    assert settings.inventory_dsn == DEFAULT_INVENTORY_URL
    assert settings.inventory_dsn.startswith("sqlite+aiosqlite:///")
    assert settings.meta_dsn == settings.inventory_dsn
    assert (settings.batches_table, settings.logs_table) == ("inventory", "inventory_logs")


def test_environment_variables_set_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", "postgresql+asyncpg://inv@db1/inventory")
    monkeypatch.setenv("PYBATCHINTORY_META_URL", "postgresql+asyncpg://meta@db2/lake")
    monkeypatch.setenv("PYBATCHINTORY_SCHEMA_NAME", "pipelines")
    monkeypatch.setenv("PYBATCHINTORY_BATCHES_TABLE", "batch_inventory")
    monkeypatch.setenv("PYBATCHINTORY_ISOLATION_LEVEL", "SERIALIZABLE")
    monkeypatch.setenv("PYBATCHINTORY_MAX_ATTEMPTS", "5")
    settings = Settings()
    assert settings.inventory_dsn == "postgresql+asyncpg://inv@db1/inventory"
    assert settings.meta_dsn == "postgresql+asyncpg://meta@db2/lake"
    assert settings.schema_name == "pipelines"
    assert settings.batches_table == "batch_inventory"
    assert settings.isolation_level == "SERIALIZABLE"
    assert settings.max_attempts == 5


def test_meta_url_defaults_to_the_inventory_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", "postgresql+asyncpg://inv@db1/inventory")
    assert Settings().meta_dsn == "postgresql+asyncpg://inv@db1/inventory"


def test_a_dotenv_in_the_working_directory_is_read(clean_environment: Path) -> None:
    _dotenv(
        clean_environment / ".env",
        inventory_url="sqlite+aiosqlite:///from_dotenv.db",
        max_attempts="7",
    )
    (clean_environment / ".env").write_text(
        (clean_environment / ".env").read_text() + "UNRELATED_VARIABLE=ignored\n"
    )
    settings = Settings()
    assert settings.inventory_dsn == "sqlite+aiosqlite:///from_dotenv.db"
    assert settings.max_attempts == 7


def test_the_dotenv_named_by_pybatchintory_env_file_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = _dotenv(tmp_path / "prod.env", inventory_url="sqlite+aiosqlite:///named.db")
    monkeypatch.setenv("PYBATCHINTORY_ENV_FILE", str(named))
    assert Settings().inventory_dsn == "sqlite+aiosqlite:///named.db"


def test_precedence_code_then_environment_then_named_file_then_dotenv(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path, tmp_path: Path
) -> None:
    _dotenv(
        clean_environment / ".env",
        inventory_url="sqlite+aiosqlite:///dotenv.db",
        meta_url="sqlite+aiosqlite:///dotenv_meta.db",
        schema_name="from_dotenv",
        max_attempts="2",
    )
    named = _dotenv(
        tmp_path / "named.env",
        inventory_url="sqlite+aiosqlite:///named.db",
        meta_url="sqlite+aiosqlite:///named_meta.db",
        schema_name="from_named",
    )
    monkeypatch.setenv("PYBATCHINTORY_ENV_FILE", str(named))
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", "sqlite+aiosqlite:///environment.db")
    monkeypatch.setenv("PYBATCHINTORY_META_URL", "sqlite+aiosqlite:///environment_meta.db")

    settings = Settings(inventory_url="sqlite+aiosqlite:///code.db")
    assert settings.inventory_dsn == "sqlite+aiosqlite:///code.db"  # code beats environment
    assert settings.meta_dsn == "sqlite+aiosqlite:///environment_meta.db"  # environment beats files
    assert settings.schema_name == "from_named"  # the named file beats .env
    assert settings.max_attempts == 2  # .env fills in what nobody else set

    inventory = Inventory("sqlite+aiosqlite:///code.db", schema_name="from_code")
    assert inventory.settings.inventory_dsn == "sqlite+aiosqlite:///code.db"
    assert inventory.settings.meta_dsn == "sqlite+aiosqlite:///environment_meta.db"
    assert inventory.settings.schema_name == "from_code"


async def test_inventory_with_no_arguments_works_from_the_environment_alone(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = await db.create_meta(weights=[1, 1, 1])
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", db.url)
    if db.schema:
        monkeypatch.setenv("PYBATCHINTORY_SCHEMA_NAME", db.schema)
    async with Inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="env_job", max_items=2)
        assert batch is not None and batch.item_count == 2
        await batch.success()
    assert (
        await db.scalar("SELECT count(*) FROM {s}inventory WHERE job_identifier = 'env_job'") == 1
    )


# -- invalid settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"oracle+oracledb://user:{SECRET}@db.example.com/lake",
        f"postgresql+asyncpg://user:{SECRET}@db.example.com:notaport/lake",
        f"user:{SECRET} at db.example.com",
    ],
)
def test_an_invalid_url_is_a_configuration_error_without_the_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [
        lambda: Settings(inventory_url=url),
        lambda: Settings(meta_url=url),
        lambda: Inventory(inventory_url=url),
        lambda: Inventory(meta_url=url),
        lambda: configure(inventory_url=url),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="inventory_url|meta_url") as raised:
            call()
        assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)

    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", url)
    with pytest.raises(ConfigurationError, match="inventory_url") as raised:
        Settings()
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batches_table", "inventory; DROP TABLE x"),
        ("schema_name", '"public"--'),
        ("isolation_level", "READ UNCOMMITTED"),
        ("max_attempts", "0"),
        ("lease_seconds", "-1"),
    ],
)
def test_other_invalid_settings_name_the_field(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Settings(**{field: value})


def test_hide_password_masks_or_refuses_to_render() -> None:
    assert SECRET not in hide_password(f"postgresql+asyncpg://user:{SECRET}@h/db")
    assert "user" in hide_password(f"postgresql+asyncpg://user:{SECRET}@h/db")
    assert SECRET not in hide_password(f"postgresql://user:{SECRET}@h:port/db")


# -- no password in reprs and errors ------------------------------------------------------


def test_reprs_of_settings_and_inventory_hide_the_password() -> None:
    url = f"postgresql+asyncpg://user:{SECRET}@db.example.com/lake"
    settings = Settings(inventory_url=url, meta_url=url)
    assert settings.inventory_dsn == url  # the clear value is there for the engine
    for text in (
        repr(settings),
        str(settings),
        str(settings.model_dump()),
        settings.model_dump_json(),
    ):
        assert SECRET not in text
    inventory = Inventory(inventory_url=url)
    assert SECRET not in repr(inventory)
    assert "user" in repr(inventory) and "db.example.com" in repr(inventory)


async def test_a_server_that_does_not_answer_is_a_backend_error_without_the_password() -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    url = f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db"
    inventory = Inventory(inventory_url=url)
    with pytest.raises(BackendError) as raised:
        await inventory.open()
    assert "127.0.0.1:1" in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert raised.value.__cause__ is not None
    assert SECRET not in str(raised.value.__cause__)
    assert SECRET not in repr(inventory)


def test_sync_inventory_to_a_dead_server_raises_a_backend_error_without_the_password() -> None:
    with pytest.raises(BackendError) as raised:
        SyncInventory(inventory_url=f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db")
    assert SECRET not in str(raised.value)


async def test_an_open_inventory_with_a_password_never_shows_it(pg_only: Db) -> None:
    # The test server's own password, or else one of ours: the local test server trusts
    # its connections, so any password is accepted.
    parsed = sa.make_url(pg_only.url)
    if not parsed.password:
        parsed = parsed.set(password=SECRET)
    secret = str(parsed.password)
    url = parsed.render_as_string(hide_password=False)
    assert secret in url
    async with Inventory(inventory_url=url, schema_name=pg_only.schema) as inv:
        assert secret not in repr(inv) and "***" in repr(inv)
        with pytest.raises(UnknownTableError) as raised:
            await inv.acquire_batch(source_table="no_such_table_xyz", job_identifier="j")
        assert secret not in str(raised.value)


@pytest.mark.parametrize(
    "override",
    [
        {"max_attempts": 0},
        {"batches_table": "inventory; DROP TABLE x"},
        {"inventory_url": f"mysql+aiomysql://user:{SECRET}@db.example.com/lake"},
        {"meta_url": f"oracle+oracledb://user:{SECRET}@db.example.com/lake"},
    ],
)
def test_overrides_of_given_settings_are_validated(override: dict[str, str | int]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(override))) as raised:
        Inventory(settings=Settings(), **override)  # type: ignore[arg-type]
    assert SECRET not in str(raised.value)


def test_a_url_override_of_given_settings_stays_secret() -> None:
    url = f"postgresql+asyncpg://user:{SECRET}@db.example.com/lake"
    inventory = Inventory(settings=Settings(), inventory_url=url)
    assert inventory.settings.inventory_dsn == url
    assert SECRET not in repr(inventory.settings) and SECRET not in repr(inventory)


# -- engine and connect options (issue 12, item 1) ---------------------------------------


def test_pgbouncer_engine_options_and_connect_args_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYBATCHINTORY_PGBOUNCER", "true")
    monkeypatch.setenv(
        "PYBATCHINTORY_ENGINE_OPTIONS", '{"pool_recycle": 300, "poolclass": "NullPool"}'
    )
    monkeypatch.setenv("PYBATCHINTORY_CONNECT_ARGS", '{"command_timeout": 60}')
    settings = Settings()
    assert settings.pgbouncer is True
    assert settings.engine_options == {"pool_recycle": 300, "poolclass": "NullPool"}
    assert settings.connect_args == {"command_timeout": 60}
    assert Settings(pgbouncer=False).pgbouncer is False  # code wins


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"connect_args": {"no_such_argument": 1}}, "no_such_argument"),
        ({"engine_options": {"no_such_option": 1}}, "no_such_option"),
        ({"engine_options": {"poolclass": "NoSuchPool"}}, "NoSuchPool"),
        ({"engine_options": {"pool_size": "many"}}, "engine"),
    ],
)
async def test_a_wrong_engine_or_connect_option_is_a_configuration_error_without_the_password(
    overrides: dict[str, dict[str, object]], named: str
) -> None:
    url = f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db"
    with pytest.raises(ConfigurationError) as raised:
        async with Inventory(inventory_url=url, **overrides):
            pass
    assert named in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert raised.value.__cause__ is None


async def test_numeric_driver_arguments_in_the_url_query_are_numbers() -> None:
    # asyncpg refused the query's string "0" with a raw TypeError; now the connection is
    # attempted (and refused: nothing listens on port 1).
    url = f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db?statement_cache_size=0"
    with pytest.raises(BackendError) as raised:
        async with Inventory(inventory_url=url):
            pass
    assert "ConnectionRefusedError" in str(raised.value)
    bad = url.replace("=0", "=none")
    with pytest.raises(
        ConfigurationError, match="statement_cache_size must be a number"
    ) as raised2:
        async with Inventory(inventory_url=bad):
            pass
    assert SECRET not in str(raised2.value)


def test_connect_args_stay_out_of_the_settings_repr() -> None:
    settings = Settings(connect_args={"password": SECRET})
    assert SECRET not in repr(settings)


def test_a_misspelled_setting_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting.*max_atempts"):
        Inventory("sqlite+aiosqlite:///x.sqlite3", max_atempts=7)
    with pytest.raises(ConfigurationError, match="inventroy_url"):
        configure(inventroy_url="sqlite+aiosqlite:///elsewhere.sqlite3")


def test_a_password_in_the_query_string_is_hidden() -> None:
    url = f"postgresql+asyncpg://etl@db.example.com/lake?password={SECRET}&ssl=require"
    assert SECRET not in hide_password(url) and "ssl=require" in hide_password(url)
    assert SECRET not in repr(Inventory(url))
