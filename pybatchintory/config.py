"""Settings, read from ``PYBATCHINTORY_*`` environment variables and dotenv files.

Sources, strongest first: arguments given in code, environment variables, the dotenv
file named by ``PYBATCHINTORY_ENV_FILE``, then ``.env`` in the working directory.
URLs are secrets: they may carry passwords, so their repr is masked.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .exceptions import ConfigurationError

__all__ = ["DEFAULT_INVENTORY_URL", "Settings", "hide_password", "redact", "safe_url", "secrets_of"]

DEFAULT_INVENTORY_URL = "sqlite+aiosqlite:///pybatchintory.sqlite3"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# MySQL and MariaDB: metadata tables (meta_url) only, never the inventory (docs/mysql.md)
_META_ONLY_BACKENDS = ("mysql", "mariadb")


def _env_files() -> tuple[str, ...]:
    named = os.environ.get("PYBATCHINTORY_ENV_FILE")
    return (".env", named) if named else (".env",)


# Query parameters that drivers accept as secrets (asyncpg takes ?password=...).
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile", "sslkey"})
# Up to the LAST '@': a password holding an unencoded '@' ends there, not at the first.
_USERINFO = re.compile(r"(?s)^([^:/?#]+://[^:/]*):(.*)@([^@]*)$")
_HIDDEN_REST = "<hidden: the password may hold an unencoded '@'>"


def _query_values(url: URL) -> list[str]:
    values: list[str] = []
    for key, value in url.query.items():
        values.append(key)
        values.extend(value if isinstance(value, tuple) else (value,))
    return values


def _ambiguous(url: URL) -> bool:
    """Whether the password may have held an unencoded '@'. SQLAlchemy's parser ends a
    password at the first '@'; the rest of it then shows as the host (``u:ab@SECRET@host``
    gives host ``SECRET@host``), the database or the query."""
    if url.password is None:
        return False
    return any("@" in part for part in [url.host or "", url.database or "", *_query_values(url)])


def _render(url: URL) -> str:
    """A parsed URL with its password and secret query values as ``***``."""
    if _ambiguous(url):
        host = url.host or ""
        if "@" in host and not any("@" in p for p in [url.database or "", *_query_values(url)]):
            # The password went on to the host's last '@': the real host follows it.
            return _render(url.set(host=host.rsplit("@", 1)[1]))
        user = url.username or ""
        return f"{url.drivername}://{user}:***@{_HIDDEN_REST}"
    hidden = {key: "***" for key in url.query if key.lower() in _SECRET_QUERY_KEYS}
    return url.update_query_dict(hidden).render_as_string(hide_password=True)


def safe_url(url: URL) -> str:
    """Render a parsed URL with its password, also one given in the query, as ``***``.

    Fix (issue 13, item 9): whatever the URL's shape, including a password with an
    unencoded '@' (which SQLAlchemy reads as part of the host or database)."""
    return _render(url)


def hide_password(url: str) -> str:
    """Render a database URL with its password (in the userinfo or the query) hidden."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparsable URL>"
    if _ambiguous(parsed):
        # In the text, the password runs to the last '@': parse what follows it.
        match = _USERINFO.match(url)
        if match:
            try:
                tail = make_url(f"{match.group(1)}:***@{match.group(3)}")
            except (ArgumentError, ValueError):
                return "<unparsable URL>"
            if not _ambiguous(tail):
                return _render(tail)
    return _render(parsed)


def secrets_of(url: URL) -> list[str]:
    """Text that must not appear in a message about ``url``: its password, secret query
    values and, where the password may hold an unencoded '@', the pieces of it that
    SQLAlchemy took for the host, database or query. Longest first."""
    found: set[str] = set()
    if url.password:
        found.add(str(url.password))
    for key, value in url.query.items():
        if key.lower() in _SECRET_QUERY_KEYS:
            found.update(v for v in (value if isinstance(value, tuple) else (value,)) if v)
    if _ambiguous(url):
        later = [url.database or "", *_query_values(url)]
        if url.host and any("@" in part for part in later):
            found.add(url.host)  # the password went on past what was taken for the host
        for part in [url.host or "", *later]:
            if "@" in part:
                found.update(piece for piece in part.rsplit("@", 1)[0].split("@") if piece)
    return sorted(found, key=len, reverse=True)


def redact(text: str, url: URL) -> str:
    """``text`` (say, a driver's error message) with every secret of ``url`` as ``***``."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


_PREFIX = "PYBATCHINTORY_"
# Variables of this prefix that are not settings: the env-file pointer, and the
# project's own test suite and benchmarks.
_NOT_SETTINGS = ("PYBATCHINTORY_ENV_FILE", "PYBATCHINTORY_TEST_", "PYBATCHINTORY_BENCH_")


def _refuse_unknown_variables(env_files: Any) -> None:
    """A misspelled variable must not silently fall back to a default (such as a new,
    empty local SQLite file): name it, and the setting it was probably meant to be."""
    names = {key for key in os.environ if key.upper().startswith(_PREFIX)}
    files = (env_files,) if isinstance(env_files, (str, os.PathLike)) else env_files or ()
    for path in files:
        if os.path.isfile(path):
            names |= {k for k in dotenv_values(path) if k.upper().startswith(_PREFIX)}
    fields = [f"{_PREFIX}{name.upper()}" for name in Settings.model_fields]
    for name in sorted(names):
        upper = name.upper()
        if upper in fields or upper.startswith(_NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(upper, fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigurationError(
            f"unknown setting {name} (environment or dotenv file){hint} The settings are: "
            f"{', '.join(fields)}"
        )


class Settings(BaseSettings):
    """Configuration of an :class:`~pybatchintory.Inventory`.

    Every field can be set as ``PYBATCHINTORY_<FIELD>`` in the environment or a dotenv
    file, or passed as a keyword argument.
    """

    model_config = SettingsConfigDict(
        env_prefix="PYBATCHINTORY_", extra="ignore", env_file_encoding="utf-8"
    )

    inventory_url: SecretStr = Field(
        default=SecretStr(DEFAULT_INVENTORY_URL),
        description="SQLAlchemy async URL of the database holding the backend tables.",
    )
    meta_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy async URL of the metadata table's database; "
        "defaults to inventory_url.",
    )
    schema_name: str | None = Field(
        default=None, description="Schema of the backend tables (PostgreSQL)."
    )
    jobs_table: str = "inventory_jobs"
    batches_table: str = "inventory"
    logs_table: str = "inventory_logs"
    isolation_level: Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] = "READ COMMITTED"
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per batch before it stays failed."
    )
    lease_seconds: float = Field(
        default=600.0, gt=0, description="How long a running batch is owned without a heartbeat."
    )
    retry_delay_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Retry backoff: how long a failed batch waits before it is handed "
        "out again, doubling with each attempt up to an hour, with jitter; 0: at once.",
    )
    busy_timeout_seconds: float = Field(
        default=30.0, gt=0, description="SQLite: how long a writer waits for the lock."
    )
    pool_size: int = Field(default=5, ge=1, description="Pooled connections per engine.")
    create_tables: bool = Field(
        default=True,
        description="Whether open() creates or upgrades the backend tables; off, it "
        "issues no DDL and refuses tables that are missing or old (run pybatchintory "
        "init or migrate as an admin role).",
    )
    pgbouncer: bool = Field(
        default=False,
        description="PostgreSQL behind PgBouncer in transaction pooling mode: unique "
        "prepared statement names, no statement caches, every statement in a transaction.",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments of SQLAlchemy's create_async_engine "
        "(JSON in the environment); they win over the library's own.",
    )
    connect_args: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,  # may carry a password
        description="Extra keyword arguments of the driver's connect (asyncpg.connect, "
        "aiosqlite.connect; JSON in the environment).",
    )

    def __init__(self, **values: Any) -> None:
        values.setdefault("_env_file", _env_files())
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # pydantic's own message quotes each input value, and a URL may hold a
            # password: list the problems without them.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigurationError(f"invalid pybatchintory settings: {problems}") from None
        _refuse_unknown_variables(values.get("_env_file"))

    @field_validator("inventory_url", "meta_url")
    @classmethod
    def _parsable_url(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        try:
            url = make_url(value.get_secret_value())
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ValueError(
                "not a database URL; expected e.g. postgresql+asyncpg://user@host/db "
                "or sqlite+aiosqlite:///path.db"
            ) from None
        backend = url.get_backend_name()
        if info.field_name == "meta_url" and backend in _META_ONLY_BACKENDS:
            pass  # metadata tables on MySQL/MariaDB (docs/mysql.md)
        elif backend in _META_ONLY_BACKENDS:
            raise ValueError(
                f"backend {backend!r} holds metadata tables only (meta_url): the inventory "
                "needs PostgreSQL or SQLite, whose backend invariants MySQL/MariaDB lack "
                "(docs/mysql.md); use postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        elif backend not in ("postgresql", "sqlite"):
            raise ValueError(
                f"backend {backend!r} is not supported; use postgresql+asyncpg:// or "
                "sqlite+aiosqlite:// (and, for meta_url only, mysql+asyncmy://)"
            )
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError(f"port {url.port} is not a TCP port (1 to 65535)")
        return value

    @field_validator("schema_name", "jobs_table", "batches_table", "logs_table")
    @classmethod
    def _plain_identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not a plain identifier (letters, digits, underscore, "
                "at most 63 characters, not starting with a digit)"
            )
        return value

    @property
    def inventory_dsn(self) -> str:
        """The inventory URL in clear, for creating engines only."""
        return self.inventory_url.get_secret_value()

    @property
    def meta_dsn(self) -> str:
        """The metadata URL in clear (the inventory's if none was set)."""
        return (self.meta_url or self.inventory_url).get_secret_value()
