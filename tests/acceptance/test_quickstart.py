"""examples/quickstart.py runs as a new user would run it: a fresh directory, no server,
no settings, and leaves the inventory it promises."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def run_quickstart(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYBATCHINTORY_") and k != "QUICKSTART_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(QUICKSTART)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def inventory(database: Path) -> list[tuple[str, int, int, float, int, str, str | None]]:
    with closing(sqlite3.connect(database)) as db, db:
        return db.execute(
            "SELECT b.job_identifier, b.range_start, b.range_end, b.weight, b.attempt, "
            "l.status, l.logging FROM inventory b "
            "JOIN inventory_logs l ON l.id = b.id AND l.attempt = b.attempt ORDER BY b.id"
        ).fetchall()


def test_quickstart_runs_in_a_fresh_directory_and_leaves_its_inventory(tmp_path: Path) -> None:
    done = run_quickstart(tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout

    # Each file weighs 1 + i % 4: every four consecutive files weigh exactly 10.
    assert "processing 4 files: s3://raw/file_001.parquet .. s3://raw/file_004.parquet" in out
    assert "processing 4 files: s3://raw/file_021.parquet .. s3://raw/file_024.parquet" in out
    assert "processing 4 files: s3://raw/file_010.parquet .. s3://raw/file_013.parquet" in out
    assert "processing 1 files: s3://raw/file_050.parquet .. s3://raw/file_050.parquet" in out
    assert "caught: corrupt file s3://raw/file_001.parquet" in out
    assert "RuntimeError: corrupt file s3://raw/file_001.parquet" in out  # the printed table

    database = tmp_path / "quickstart.sqlite3"
    assert database.exists()
    rows = inventory(database)
    incremental = [r for r in rows if r[0] == "incremental_job"]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in incremental] == [
        (s, s + 3, 10, 1, "succeeded") for s in range(1, 22, 4)
    ]
    backfill = [r for r in rows if r[0] == "backfill_job"]
    assert [(r[1], r[2]) for r in backfill] == [(s, s + 3) for s in range(10, 47, 4)] + [(50, 50)]
    assert all(r[3] <= 10 and r[5] == "succeeded" for r in backfill)
    (fragile,) = [r for r in rows if r[0] == "fragile_job"]
    assert fragile[1:6] == (1, 2, 5, 1, "failed")
    assert fragile[6] is not None and "Traceback" in fragile[6]
    assert "RuntimeError: corrupt file s3://raw/file_001.parquet" in fragile[6]
    assert len(rows) == len(incremental) + len(backfill) + 1


def test_quickstart_starts_afresh_at_every_run(tmp_path: Path) -> None:
    assert run_quickstart(tmp_path).returncode == 0
    again = run_quickstart(tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(inventory(tmp_path / "quickstart.sqlite3")) == 18
