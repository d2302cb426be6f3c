"""Every mistake is named, nothing is a silent no-op, and trace tells the truth about
filtered jobs. Each on SQLite and PostgreSQL; the CLI answers a mistake with one line
and exit code 2."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pybatchintory import ConfigurationError, InvalidArgumentError, Job, Settings, UnknownTableError
from tests.conftest import Db
from tests.integration.test_cli import ROOT, cli


async def test_trace_leaves_out_a_job_whose_filter_excludes_the_item(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4, category="a")
    await db.add_items("meta", [1] * 4, category="b")  # ids 5..8
    async with db.inventory() as inv:
        for job in (
            Job("only_a", source_table=table, filter={"category": "a"}),
            Job("everything", source_table=table),
            Job("expr_b", source_table=table, filter=lambda t: t.c.category == "b"),
        ):
            batch = await inv.acquire_batch(job)
            assert batch is not None
            await batch.success()
        # only_a's batch is ids 1..4: its range cannot reach 6, and it would not claim it.
        # Widen it: a job over a..b whose range covers 6 while its filter excludes it.
        spans = Job("spans", source_table=table, filter={"category": ["a", "c"]})
        await db.add_items("meta", [1], category="a")  # id 9: spans takes 1..9 minus b's
        batch = await inv.acquire_batch(spans)
        assert batch is not None and (batch.range_start, batch.range_end) == (1, 9)
        await batch.success()

        entries = {e.job_identifier: e for e in await inv.trace(table, 6)}
    assert "spans" not in entries, "its range covers 6, but its filter excludes the item"
    assert "only_a" not in entries
    assert entries["everything"].verified and entries["everything"].note is None
    assert not entries["expr_b"].verified and "not checked" in (entries["expr_b"].note or "")


async def test_trace_of_an_unknown_table_is_an_error(db: Db) -> None:
    await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        with pytest.raises(UnknownTableError, match="raw_filez"):
            await inv.trace("raw_filez", 7)
    result = await cli(db, "--meta-url", db.url, "trace", "raw_filez", "7")
    assert result.returncode == 2 and "raw_filez" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_an_unknown_upstream_job_is_named_and_nothing_is_registered(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        upstream = await inv.acquire_batch(Job("convert", source_table=table))
        assert upstream is not None
        with pytest.raises(
            InvalidArgumentError, match=r"no upstream job 'convrt'.*did you mean 'convert'"
        ):
            await inv.acquire_batch(source_job="convrt", job_identifier="down")
        assert [j.job_identifier for j in await inv.jobs()] == ["convert"]


async def test_retry_names_an_unknown_job_an_unknown_batch_and_one_with_attempts_left(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        job = Job("convert", source_table=table, max_items=1, max_attempts=2)
        flaky = await inv.acquire_batch(job)
        assert flaky is not None
        await flaky.error("network")  # attempt 1 of 2: retried by the next acquisition
        with pytest.raises(InvalidArgumentError, match="no job 'nojob'"):
            await inv.retry("nojob")
        with pytest.raises(InvalidArgumentError, match="has no batch 999"):
            await inv.retry("convert", 999)
        with pytest.raises(
            InvalidArgumentError, match=r"still has attempts left \(attempt 1 of 2\)"
        ):
            await inv.retry("convert", flaky.id)
        assert await inv.retry("convert") == []  # a known job with nothing out of attempts
    for args in (
        ("retry", "nojob"),
        ("retry", "convert", "--batch", "999"),
        ("retry", "convert", "--batch", str(flaky.id)),
    ):
        result = await cli(db, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    nothing = await cli(db, "retry", "convert")
    assert nothing.returncode == 0 and "nothing re-queued" in nothing.stdout


async def test_an_acquisition_that_hands_out_nothing_says_why(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        whole = Job("convert", source_table=table)
        batch = await inv.acquire_batch(whole)
        assert batch is not None and batch.range_end == 4
        with caplog.at_level(logging.INFO, logger="pybatchintory"):
            # the downstream waits for the upstream's running batch
            assert await inv.acquire_batch(source_job="convert", job_identifier="down") is None
        assert "upstream frontier: batch" in inv.idle_reasons["down"]
        assert any(
            "nothing to hand out: upstream frontier" in r.getMessage() for r in caplog.records
        )
        assert "upstream frontier" in ((await inv.status("down")).idle_reason or "")
        await batch.success()

        # a backfill window below the cursor
        assert await inv.acquire_batch(whole, id_start=1, id_end=3) is None
        assert inv.last_idle_reason is not None and inv.last_idle_reason.startswith("window done")
        assert "window done" in ((await inv.status("convert", id_end=3)).idle_reason or "")

        assert await inv.acquire_batch(whole) is None
        assert inv.idle_reasons["convert"] == "nothing new: no matching item after id 4"
        assert (
            await inv.status("convert")
        ).idle_reason == "nothing new: no matching item after id 4"
        await db.add_items("meta", [1])
        assert await inv.acquire_batch(whole) is not None
        assert "convert" not in inv.idle_reasons


def test_a_misspelled_variable_is_named_with_the_closest_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYBATCHINTORY_LEASE_SECOND", "60")
    with pytest.raises(ConfigurationError, match="did you mean PYBATCHINTORY_LEASE_SECONDS"):
        Settings()
    monkeypatch.delenv("PYBATCHINTORY_LEASE_SECOND")
    (tmp_path / ".env").write_text("PYBATCHINTORY_INVENTRY_URL=sqlite:///other.sqlite3\n")
    with pytest.raises(ConfigurationError, match="did you mean PYBATCHINTORY_INVENTORY_URL"):
        Settings()
    assert not (tmp_path / "pybatchintory.sqlite3").exists()


def test_the_cli_names_a_misspelled_variable_in_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PYBATCHINTORY_INVENTRY_URL=sqlite:///x.sqlite3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "pybatchintory", "jobs"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "PYBATCHINTORY_INVENTRY_URL" in result.stderr
        and "PYBATCHINTORY_INVENTORY_URL" in result.stderr
    )
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pybatchintory.sqlite3").exists(), "no new empty inventory"
