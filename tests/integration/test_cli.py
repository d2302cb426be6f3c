"""The command line, run in a subprocess against a real SQLite file and PostgreSQL schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from tests.conftest import Db

ROOT = Path(__file__).resolve().parents[2]


async def cli(db: Db, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pybatchintory`` with the database's settings in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = str(ROOT)
    if db.schema:
        env["PYBATCHINTORY_SCHEMA_NAME"] = db.schema
    if db.meta_url:  # the metadata tables on MariaDB (conftest.meta_db)
        env["PYBATCHINTORY_META_URL"] = db.meta_url
    command = [sys.executable, "-m", "pybatchintory", "--inventory-url", url or db.url, *args]
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_init_jobs_status_and_trace(db: Db) -> None:
    created = await cli(db, "init")
    assert created.returncode == 0, created.stderr
    assert "backend tables ready" in created.stdout
    assert "no jobs yet" in (await cli(db, "jobs")).stdout

    table = await db.create_meta(weights=[2] * 10)
    async with db.inventory() as inv:
        first = await inv.acquire_batch(source_table=table, job_identifier="convert", weight=4)
        assert first is not None
        await first.error("flaky network")
        again = await inv.acquire_batch(source_table=table, job_identifier="convert", weight=4)
        assert again is not None
        await again.success()

    # Read-only commands, run side by side to keep the suite quick.
    commands = {
        "jobs": ("jobs",),
        "status": ("status", "convert"),
        "status_json": ("status", "convert", "--json"),
        "trace": ("trace", table, "2"),
        "trace_json": ("--json", "trace", table, "2"),
    }
    out: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, args: tuple[str, ...]) -> None:
        out[name] = await cli(db, *args)

    async with anyio.create_task_group() as tg:
        for name, args in commands.items():
            tg.start_soon(run, name, args)

    jobs = out["jobs"]
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.splitlines()[0].split() == ["job", "source", "status"]
    assert "convert" in jobs.stdout and "cursor 2, idle" in jobs.stdout

    status = out["status"]
    assert status.returncode == 0, status.stderr
    assert "8 items, weight 16" in status.stdout
    as_json = ok_json(out["status_json"])
    assert (as_json["cursor"], as_json["succeeded"], as_json["backlog"]) == (
        2,
        1,
        {"items": 8, "weight": 16.0},
    )

    trace = out["trace"]
    assert trace.returncode == 0, trace.stderr
    assert "convert: batch 1 ids 1..2" in trace.stdout and "flaky network" in trace.stdout
    (entry,) = ok_json(out["trace_json"])
    assert [a["status"] for a in entry["attempts"]] == ["failed", "succeeded"]


async def test_retry_and_reset(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        failed = await inv.acquire_batch(
            source_table=table, job_identifier="j", weight=3, max_attempts=1
        )
        running = await inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
        assert failed is not None and running is not None
        await failed.error("boom")

        retry = await cli(db, "retry", "j", "--batch", str(failed.id))
        assert retry.returncode == 0 and f"re-queued 1 batch: {failed.id}" in retry.stdout

        refused = await cli(db, "reset", "j")
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1 and "running batch" in refused.stderr
        assert "Traceback" not in refused.stderr

        reset = ok_json(await cli(db, "reset", "j", "--to", "3", "--force", "--json"))
        assert (reset["old_cursor"], reset["new_cursor"], reset["generation"]) == (6, 3, 1)
        assert reset["carried"] == [failed.id] and reset["superseded"] == [running.id]


async def test_an_unknown_job_is_one_line_on_stderr_and_exit_code_2(db: Db) -> None:
    await cli(db, "init")
    unknown = await cli(db, "status", "no_such_job")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == (
        "pybatchintory: error: no job 'no_such_job' in the inventory; "
        "'pybatchintory jobs' lists the known jobs\n"
    )


async def test_bad_arguments_and_an_unreachable_database_never_show_a_traceback(
    tmp_path: Path,
) -> None:
    db = Db("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}", None, None)  # type: ignore[arg-type]
    usage = await cli(db, "trace", "meta", "not-a-number")
    assert (
        usage.returncode == 2
        and usage.stderr.count("\n") == 1
        and "not an integer id" in usage.stderr
    )

    secret_url = "postgresql+asyncpg://someone:s3cret@127.0.0.1:1/nowhere"
    down = await cli(db, "jobs", url=secret_url)
    assert down.returncode == 1 and down.stderr.startswith("pybatchintory: database error:")
    assert down.stderr.count("\n") == 1 and "s3cret" not in down.stderr
    assert "Traceback" not in down.stderr
