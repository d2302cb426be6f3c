"""Released is not failed (issue 9): a batch handed back unprocessed (``release()``,
Ctrl-C, ``sys.exit()``, a cancelled body) is stored as ``released``, uses no attempt, and
is never counted or shown as a failure; the next acquisition takes it again at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from pybatchintory import Inventory, Job
from tests.conftest import Db, cancel_while_processing
from tests.integration.test_cli import ROOT, cli, ok_json


async def take(inv: Inventory, table: str, **options: object) -> object:
    batch = await inv.acquire_batch(Job("convert", source_table=table, max_items=2, max_attempts=1))
    assert batch is not None
    return batch


async def assert_released_then_replayed(db: Db, inv: Inventory, table: str, batch_id: int) -> None:
    """Stored and logged as released, counted nowhere as failed, and handed out again
    at once, although the job allows a single attempt."""
    assert await db.scalar("SELECT status FROM {s}inventory WHERE id = :i", i=batch_id) == (
        "released"
    )
    logs = await db.rows("SELECT status FROM {s}inventory_logs WHERE id = :i", i=batch_id)
    assert [r.status for r in logs] == ["released"]
    status = await inv.status("convert")
    assert (status.failed, status.released, status.retryable, status.out_of_attempts) == (
        0,
        1,
        0,
        0,
    )
    [summary] = await inv.jobs()
    assert (
        summary.failed == 0 and "1 released" in summary.summary and "failed" not in summary.summary
    )
    [entry] = await inv.trace(table, 1)
    assert entry.status == "released"

    again = await inv.acquire_batch(Job("convert", source_table=table, max_items=2, max_attempts=1))
    assert again is not None and again.id == batch_id and again.attempt == 2
    await again.success()
    assert await db.scalar("SELECT status FROM {s}inventory WHERE id = :i", i=batch_id) == (
        "succeeded"
    )


async def test_release_is_stored_shown_and_counted_as_released(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await take(inv, table)
        await batch.release("worker shutting down")  # type: ignore[attr-defined]
        assert batch.status == "released"  # type: ignore[attr-defined]
        await assert_released_then_replayed(db, inv, table, batch.id)  # type: ignore[attr-defined]

    text = await cli(db, "status", "convert")
    assert text.returncode == 0, text.stderr
    assert "released" in text.stdout
    assert ok_json(await cli(db, "--json", "status", "convert"))["failed"] == 0


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
async def test_an_interrupted_body_releases_its_batch(
    db: Db, interruption: type[BaseException]
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await take(inv, table)
        with pytest.raises(interruption):
            async with batch:  # type: ignore[attr-defined]
                raise interruption()
        await assert_released_then_replayed(db, inv, table, batch.id)  # type: ignore[attr-defined]
        [log] = await db.rows(
            "SELECT logging FROM {s}inventory_logs WHERE id = :i AND attempt = 1",
            i=batch.id,  # type: ignore[attr-defined]
        )
        assert interruption.__name__ in log.logging


async def test_a_cancelled_body_releases_its_batch(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await take(inv, table)
        await cancel_while_processing(batch)  # type: ignore[arg-type]
        await assert_released_then_replayed(db, inv, table, batch.id)  # type: ignore[attr-defined]


async def test_an_exception_in_the_body_is_still_a_failure(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await take(inv, table)
        with pytest.raises(ValueError):
            async with batch:  # type: ignore[attr-defined]
                raise ValueError("corrupt file")
        status = await inv.status("convert")
        assert (status.failed, status.released, status.out_of_attempts) == (1, 0, 1)


CTRL_C_SCRIPT = """
import sys, time
from pybatchintory import Job, SyncInventory

url, schema, table = sys.argv[1], sys.argv[2] or None, sys.argv[3]
inventory = SyncInventory(inventory_url=url, meta_url=url, schema_name=schema)
batch = inventory.acquire_batch(Job("convert", source_table=table, max_items=2, max_attempts=1))
with batch:
    print("processing", flush=True)
    time.sleep(60)
"""


async def test_ctrl_c_in_a_sync_script_releases_its_batch(db: Db, tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) in a plain script, inside ``with batch:``."""
    table = await db.create_meta(weights=[1] * 4)
    script = tmp_path / "worker.py"
    script.write_text(CTRL_C_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, str(script), db.url, db.schema or "", table],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = await anyio.to_thread.run_sync(process.stdout.readline)
        assert line.strip() == "processing", process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGINT)
        _, stderr = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=60))
    finally:
        if process.poll() is None:
            process.kill()
    assert "KeyboardInterrupt" in stderr
    async with db.inventory() as inv:
        [batch] = await inv.batches("convert")
        assert (batch.status, batch.attempt, batch.max_attempts) == ("released", 1, 2)
        assert "KeyboardInterrupt" in (batch.last_log or "")
        assert (await inv.status("convert")).failed == 0
