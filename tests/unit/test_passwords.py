"""A URL's password is hidden whatever the URL's shape (issue 13, item 9)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pybatchintory.config import hide_password, redact, safe_url

SECRET = "S3CRET"

# (url, what must still be shown)
SHAPES = [
    (f"postgresql://u:ab@{SECRET}@host/db", "host/db"),
    (f"postgresql+asyncpg://u:ab@{SECRET}@host:5432/db", "host:5432/db"),
    (f"postgresql://u:{SECRET}@x@host/db", "host/db"),
    (f"postgresql://u:a@{SECRET}@b@host/db", "host/db"),
    (f"postgresql://u:x@y/{SECRET}@host/db", "u:***@"),
    (f"postgresql://u:x@{SECRET}/z@host/db", "u:***@"),
    (f"postgresql://u:a?b@{SECRET}@host/db", "u:***@"),
    (f"postgresql://u:a@b?{SECRET}@host/db", "u:***@"),
    (f"postgresql://u:pa:{SECRET}@host/db", "host/db"),
    (f"postgresql://u:pa/{SECRET}@host/db", "host/db"),
    (f"postgresql://u:pa?{SECRET}@host/db", "host/db"),
    (f"postgresql://u:pa#{SECRET}@host/db", "host/db"),
    (f"postgresql://u:{SECRET}%40x@host/db", "host/db"),
    (f"postgresql://u:p%3A%2F%3F%23{SECRET}@host/db", "host/db"),
    (f"postgresql://:{SECRET}@host/db", "host/db"),
    (f"postgresql://u:{SECRET}@host/db?application_name=a@b", "u:***@"),
    (f"postgresql://host/db?password={SECRET}", "host/db"),
    (f"postgresql://host/db?PASSWORD={SECRET}&sslmode=require", "sslmode=require"),
    (f"postgresql://host/db?password={SECRET}&password={SECRET}2", "host/db"),
    (f"postgresql://u@host/db?sslpassword={SECRET}", "u@host/db"),
    (f"postgresql://u:{SECRET}@host", "@host"),
    (f"postgresql://u:{SECRET}@[::1]:5432/db", "5432/db"),
    (f"postgresql://u:{SECRET}@host:notaport/db", "unparsable"),
    (f"postgresql://u:ab@{SECRET}:x@host/db", ""),
    (f"u:{SECRET}@host/db", "unparsable"),
    # SQLAlchemy renders the '@' of a file name as %40 since 2.0.55 or so; either is fine
    (f"sqlite+aiosqlite:///tmp/{SECRET[:0]}a@b.db", "/tmp/a"),
]


@pytest.mark.parametrize(("url", "shown"), SHAPES)
def test_the_password_never_shows(url: str, shown: str) -> None:
    text = hide_password(url)
    assert SECRET not in text
    assert shown in text
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return
    assert SECRET not in safe_url(parsed)
    # A driver's message naming what SQLAlchemy took for the host or database.
    message = (
        f"could not connect to {parsed.host} (database {parsed.database}) {dict(parsed.query)}"
    )
    assert SECRET not in redact(message, parsed)


def test_a_url_without_a_password_is_shown_whole() -> None:
    url = "postgresql+asyncpg://user@db.example:5432/inventory?sslmode=require"
    assert hide_password(url) == url
    assert safe_url(make_url(url)) == url
