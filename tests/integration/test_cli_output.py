"""The CLI as a person reads it: units, separators, time zones, plurals, no markup, no
traceback on a closed pipe, impossible input refused in one line; log lines that say
what happened in their text."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pybatchintory import Job
from tests.conftest import Db
from tests.integration.test_cli import ROOT, cli


async def test_status_speaks_in_units_separators_and_utc(db: Db) -> None:
    table = await db.create_meta(weights=[3_210_360.0] * 3 + [1.0])
    job = Job("sizes", source_table=table, weight_unit="bytes", max_items=1)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(job)
        assert batch is not None
        await batch.success()
    shown = await cli(db, "--meta-url", db.url, "status", "sizes")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "1 batch, weight 3.1 MiB" in out  # succeeded: one batch of 3,210,360 bytes
    assert "3 items, weight 6.1 MiB" in out  # the backlog
    assert "e+06" not in out
    assert "UTC" in out.split("last success")[1].splitlines()[0]


async def test_a_closed_pipe_is_not_an_error(db: Db, tmp_path: Path) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        for i in range(3):
            batch = await inv.acquire_batch(source_table=table, job_identifier=f"job_{i:02d}")
            assert batch is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = str(ROOT)
    if db.schema:
        env["PYBATCHINTORY_SCHEMA_NAME"] = db.schema
    # `pybatchintory jobs | head -1`, with a reader that is gone before the first line is
    # written (`true` reads nothing), so the write always meets a closed pipe
    command = (
        f"set -o pipefail; {shlex.quote(sys.executable)} -m pybatchintory --inventory-url "
        f"{shlex.quote(db.url)} jobs 2>{shlex.quote(str(tmp_path / 'err'))} | true"
    )
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60
    )
    errors = (tmp_path / "err").read_text()
    assert done.returncode == 0, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors


def test_help_has_no_markup() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pybatchintory", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "``" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "j", "--id-start", "10", "--id-end", "5"), "is greater than --id-end"),
        (("trace", "meta", "99999999999999999999"), "outside the 64-bit id range"),
        (("retry", "j", "--batch", "x"), "not an integer id"),
        (("reset", "j", "--to", str(2**64)), "outside the 64-bit id range"),
    ],
)
async def test_impossible_input_is_refused_in_one_line(
    db: Db, args: tuple[str, ...], message: str
) -> None:
    result = await cli(db, *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_log_lines_say_job_batch_range_attempt_and_error_in_their_text(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        with caplog.at_level(logging.INFO, logger="pybatchintory"):
            batch = await inv.acquire_batch(Job("convert", source_table=table, max_items=2))
            assert batch is not None
            await batch.error(ValueError("corrupt parquet footer"))
            again = await inv.acquire_batch(Job("convert", source_table=table, max_items=2))
            assert again is not None
            await again.release("worker shutting down")
    messages = [r.getMessage() for r in caplog.records]
    failed = next(m for m in messages if "failed" in m)
    assert f"batch {batch.id} of job 'convert' (ids 1..2, attempt 1)" in failed
    assert "ValueError: corrupt parquet footer" in failed
    handed = next(m for m in messages if "handed back" in m)
    assert "attempt 2" in handed and "worker shutting down" in handed and "failed" not in handed
    record = next(r for r in caplog.records if "failed" in r.getMessage())
    assert (record.job, record.batch_id, record.attempt) == ("convert", batch.id, 1)  # type: ignore[attr-defined]
