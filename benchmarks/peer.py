"""Peer: the original pybatchintory 0.0.8 (PyPI) against this library, per batch, on PostgreSQL.

0.0.8 runs in its own virtual environment, isolated (``python -I``) from this checkout (``PYBATCHINTORY_PEER_VENV``, default
/tmp/peer-venv), created here if absent: ``python -m venv`` then
``pip install pybatchintory==0.0.8 'numpy<2' psycopg2-binary`` (its pandas 1.5 needs
numpy 1.x; SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, so the URL names
psycopg2). Both libraries take 100-item batches (weight budget 100) of the same cached
tables, load the items and record success, each on its own fresh inventory schema,
interleaved. If 0.0.8 cannot be installed or run, the table says so and why.

    python benchmarks/peer.py [--quick] [--reps N]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import _common as c
import asyncpg

VENV = Path(os.environ.get("PYBATCHINTORY_PEER_VENV", "/tmp/peer-venv"))
PYTHON = VENV / "bin" / "python"
DRIVER = Path(__file__).with_name("_peer_driver.py")


def ensure_peer() -> str | None:
    """None when 0.0.8 is ready to run, else why it is not."""
    try:
        if not PYTHON.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True
            )
        probe = subprocess.run(
            [str(PYTHON), "-I", "-c", "import pybatchintory, psycopg2"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            subprocess.run(
                [
                    str(PYTHON),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "pybatchintory==0.0.8",
                    "numpy<2",
                    "psycopg2-binary",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        probe = subprocess.run(
            [str(PYTHON), "-I", "-c", "import pybatchintory, psycopg2"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            return f"0.0.8 does not import: {probe.stderr.strip().splitlines()[-1]}"
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-1:] or [str(exc)]
        return f"cannot install 0.0.8: {tail[0]}"
    return None


def peer_ms(table: str, cycles: int) -> float:
    schema = f"peer_{uuid.uuid4().hex[:10]}"
    url = c.pg_dsn().replace("postgresql://", "postgresql+psycopg2://", 1)

    async def ddl(sql: str) -> None:
        conn = await asyncpg.connect(c.pg_dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(ddl(f"CREATE SCHEMA {schema}"))
    try:
        out = subprocess.run(
            [str(PYTHON), "-I", str(DRIVER), url, schema, table, str(cycles)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
    finally:
        asyncio.run(ddl(f"DROP SCHEMA {schema} CASCADE"))


async def ours_ms(rows: int, cycles: int) -> float:
    async with c.target("postgresql", rows) as tgt, tgt.inventory() as inv:
        cycler = c.LibraryCycler(inv, tgt.source_table)
        await cycler.cycle()  # warm-up, like the peer's
        return await c.ms_per_cycle(cycler.cycle, cycles)


def main() -> None:
    args = c.arguments(__doc__.splitlines()[0])
    sizes = [10_000, 100_000] if args.quick else [10_000, 1_000_000]
    reps = args.reps or (1 if args.quick else 3)
    problem = ensure_peer()
    tables = {n: asyncio.run(c.pg_meta_table(n)) for n in sizes}
    peer: dict[int, list[float]] = {n: [] for n in sizes}
    ours: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(reps):
        for n in sizes:
            if problem is None:
                try:
                    peer[n].append(peer_ms(tables[n], 20 if n <= 100_000 else 5))
                except subprocess.CalledProcessError as exc:
                    problem = f"0.0.8 failed: {(exc.stderr or '').strip().splitlines()[-1:]}"
            ours[n].append(asyncio.run(ours_ms(n, 50)))
    rows = []
    for n in sizes:
        mine = c.median(ours[n])
        if problem is None:
            theirs = c.median(peer[n])
            rows.append([f"{n:,}", theirs, mine, f"{theirs / mine:.0f}x"])
        else:
            rows.append([f"{n:,}", "n/a", mine, "n/a"])
    notes = [
        f"Median of {reps} repetitions, interleaved; ms per acquire-items-succeed cycle "
        f"(100-item batches); PostgreSQL; {c.machine()}.",
        "Target: at least 100x faster per batch than 0.0.8 at 1M rows.",
    ]
    if problem is not None:
        notes.insert(0, f"pybatchintory 0.0.8 could not be measured: {problem}")
    c.print_table(
        "Peer: pybatchintory 0.0.8 vs this library, ms per batch",
        ["metadata rows", "0.0.8 ms", "this library ms", "speed-up"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
