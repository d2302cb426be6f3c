"""A password with an unencoded '@' shows nowhere: not in repr(Inventory), BackendError
messages or the CLI's output (issue 13, item 9)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from pybatchintory import Inventory
from pybatchintory.cli import main
from pybatchintory.exceptions import BackendError

SECRET = "S3CRET"
URLS = [
    f"postgresql+asyncpg://u:ab@{SECRET}@127.0.0.1:1/db",
    f"postgresql+asyncpg://u:x@{SECRET}/z@127.0.0.1:1/db",
    f"postgresql+asyncpg://127.0.0.1:1/db?password={SECRET}",
]


@pytest.mark.parametrize("url", URLS)
async def test_repr_and_backend_errors_hide_the_password(url: str) -> None:
    inv = Inventory(url, url)
    assert SECRET not in repr(inv)
    with pytest.raises(BackendError) as raised:
        await inv.open()
    assert SECRET not in str(raised.value)
    await inv.close()


@pytest.mark.parametrize("url", URLS)
def test_the_cli_hides_the_password(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # In a thread of its own: the CLI's event loop on the main thread would leave it
    # without one, which pytest-asyncio before 1.0 replaces by one it never closes.
    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, ["--inventory-url", url, "jobs"]).result()
    out, err = capsys.readouterr()
    assert code != 0
    assert SECRET not in out + err
