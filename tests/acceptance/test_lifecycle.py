"""The sync face never hangs a process: unclosed clients, fork() and fork pools.

Each scenario is a real script in a subprocess with a timeout, as a cron job or a
multiprocessing pool would run it, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import PG_URL, require_postgres, run_aside

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a script: the database URL and schema, with a metadata table of
    40 rows named ``meta``."""
    if request.param == "sqlite":
        import sqlite3

        path = tmp_path / "db.sqlite3"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY, uri TEXT, weight REAL)")
        con.executemany(
            "INSERT INTO meta (uri, weight) VALUES (?, 1)", [(f"f{i}",) for i in range(40)]
        )
        con.commit()
        con.close()
        yield {
            "PYBATCHINTORY_INVENTORY_URL": f"sqlite:///{path}",
            "PYBATCHINTORY_META_URL": f"sqlite:///{path}",
        }
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_aside(
        lambda: _pg(
            f'CREATE SCHEMA "{schema}"',
            f'CREATE TABLE "{schema}".meta (id bigserial PRIMARY KEY, uri text, weight float8)',
            f"INSERT INTO \"{schema}\".meta (uri, weight) SELECT 'f' || g, 1 FROM generate_series(1, 40) g",
        )
    )
    url = PG_URL.replace("+asyncpg", "")
    try:
        yield {
            "PYBATCHINTORY_INVENTORY_URL": url,
            "PYBATCHINTORY_META_URL": url,
            "PYBATCHINTORY_SCHEMA_NAME": schema,
            "META": f"{schema}.meta",
        }
    finally:
        run_aside(lambda: _pg(f'DROP SCHEMA "{schema}" CASCADE'))


async def _pg(*statements: str) -> None:
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def run(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    full = {**base, **env, "PYTHONPATH": str(ROOT), "META": env.get("META", "meta")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=TIMEOUT,
    )


def test_an_unclosed_sync_inventory_does_not_keep_the_process_alive(
    target: dict[str, str], tmp_path: Path
) -> None:
    done = run(
        """
        import os
        from pybatchintory import SyncInventory
        inventory = SyncInventory()  # never closed, as a forgetful cron script does
        batch = inventory.acquire_batch(source_table=os.environ["META"], job_identifier="j", max_items=5)
        assert batch is not None
        batch.success()
        print("done", batch.range_start, batch.range_end)
        """,
        target,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "done"


def test_a_forked_child_gets_its_own_default_inventory_and_exits(
    target: dict[str, str], tmp_path: Path
) -> None:
    done = run(
        """
        import os
        from pybatchintory import InventoryNotOpenError, SyncInventory, acquire_batch
        META = os.environ["META"]
        first = acquire_batch(source_table=META, job_identifer="j", max_items=5)
        assert first is not None
        first.success()
        explicit = SyncInventory()

        idle = os.fork()
        if idle == 0:
            raise SystemExit(0)  # a child that never touches the library: exits normally
        working = os.fork()
        if working == 0:
            batch = acquire_batch(source_table=META, job_identifer="j", max_items=5)
            assert batch is not None and batch.range_start == 6, batch
            batch.success()
            try:
                explicit.jobs()
            except InventoryNotOpenError as exc:
                assert "before a fork" in str(exc)
            else:
                raise AssertionError("an inventory made before the fork must refuse")
            raise SystemExit(0)
        for pid in (idle, working):
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        after = acquire_batch(source_table=META, job_identifer="j", max_items=5)
        assert after is not None and after.range_start == 11, after
        after.success()
        print("ok")
        """,
        target,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_fork_pool_of_four_drains_a_job(target: dict[str, str], tmp_path: Path) -> None:
    done = run(
        """
        import multiprocessing, os
        import pybatchintory
        META = os.environ["META"]

        def init() -> None:
            pybatchintory.configure(worker=f"pool-{os.getpid()}")

        def drain(_: int) -> list[tuple[int, int]]:
            taken = []
            while (batch := pybatchintory.acquire_batch(source_table=META, job_identifer="pool", max_items=3)) is not None:
                batch.process(lambda items: len(items))
                taken.append((batch.range_start, batch.range_end))
            return taken

        if __name__ == "__main__":
            # the parent used the sync face before forking:
            assert pybatchintory.default_inventory().jobs() == []
            with multiprocessing.get_context("fork").Pool(4, initializer=init) as pool:
                ranges = sorted(r for part in pool.map(drain, range(4)) for r in part)
            ids = [i for start, end in ranges for i in range(start, end + 1)]
            assert ids == list(range(1, 41)), ranges
            status = pybatchintory.default_inventory().status("pool")
            assert (status.succeeded, status.running, status.failed) == (len(ranges), 0, 0)
            print("drained", len(ranges))
        """,
        target,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("drained")


def test_the_async_client_refuses_another_event_loop_at_once(tmp_path: Path) -> None:
    pytest.importorskip("trio")
    done = run(
        """
        import trio
        from pybatchintory import ConfigurationError, Inventory

        async def main() -> None:
            try:
                await Inventory("sqlite:///x.sqlite3").open()
            except ConfigurationError as exc:
                print("refused:", exc)

        trio.run(main)
        """,
        {},
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "asyncio only" in done.stdout
