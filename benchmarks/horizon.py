"""The exact horizon's cost and lag (issue 10), PostgreSQL, in one run.

1. ms per acquire-items-succeed cycle (100-item batches) draining a static table, with
   ``horizon="exact"`` and ``horizon=None`` interleaved: the horizon's steady cost.
2. ms per acquisition of a job that follows a table under steady inserts (each
   acquisition reaches the settled horizon and reads the writers), on vs off.
3. The horizon's lag under steady inserts: writers commit transactions of 0-50 ms; a
   follower samples the highest committed id and the settled horizon. Median ids
   behind, and median ms from an id's commit being visible to the horizon passing it.

    python benchmarks/horizon.py [--quick] [--reps N]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from typing import Any

import _common as c
import asyncpg

WRITERS = 4
WRITE_MS = (0, 50)
ROWS_PER_TXN = (1, 20)


async def drain_cycles(inv: Any, table: str, horizon: str | None, state: dict[str, int]) -> None:
    """One acquire-items-succeed cycle; a fresh job when the table runs out."""
    for _ in range(2):
        job = f"drain_{horizon}_{state['job']}"
        batch = await inv.acquire_batch(
            source_table=table, job_identifier=job, weight=c.BATCH_ITEMS, horizon=horizon
        )
        if batch is not None:
            assert len(batch.items) == batch.item_count
            await batch.success()
            return
        state["job"] += 1
    raise RuntimeError("empty table")


async def writer(dsn: str, table: str, seconds: float, seed: int) -> int:
    """One writer (run in a process of its own, so that the follower's loop is not shared)."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    written = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            n = rng.randint(*ROWS_PER_TXN)
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {table} (uri, weight) SELECT 'w', 1 FROM generate_series(1, $1::int)",
                    n,
                )
                await asyncio.sleep(rng.uniform(*WRITE_MS) / 1000)
            written += n
    finally:
        await conn.close()
    return written


async def stream_table(dsn: str) -> tuple[str, str]:
    schema = f"hz_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE TABLE {schema}.stream (id bigserial PRIMARY KEY, uri text NOT NULL, "
            "weight double precision NOT NULL)"
        )
    finally:
        await conn.close()
    return schema, f"{schema}.stream"


async def count_rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def follow(
    inv: Any, table: str, horizon: str | None, seconds: float
) -> list[tuple[float, bool]]:
    """ms per acquisition of a job that keeps up with the writers, and whether it found a batch."""
    samples = []
    job = f"follow_{horizon}_{uuid.uuid4().hex[:6]}"
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        batch = await inv.acquire_batch(
            source_table=table, job_identifier=job, weight=1000, horizon=horizon, load_items=False
        )
        samples.append(((time.perf_counter() - started) * 1000, batch is not None))
        if batch is not None:
            await batch.success()
        else:
            await asyncio.sleep(0.005)
    return samples


async def lag(inv: Any, dsn: str, table: str, seconds: float) -> tuple[float, float, int]:
    """Sample (time, highest committed id) and the settled horizon; the median ids behind
    and the median ms until the horizon passes a sampled highest id."""
    # the follower's source (and its Horizon), as an acquisition builds it
    await inv.acquire_batch(source_table=table, job_identifier="lag", load_items=False)
    (horizon,) = [s.horizon for k, (s, _) in inv._sources.items() if k[0] == table and s.horizon]
    conn = await asyncpg.connect(dsn)
    seen: list[tuple[float, int]] = []
    behind: list[int] = []
    passed: list[float] = []
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            highest = await conn.fetchval(f"SELECT max(id) FROM {table}")
            now = time.perf_counter()
            seen.append((now, int(highest)))
            settled = await horizon.refresh()
            behind.append(int(highest) - (settled or 0))
            done = time.perf_counter()
            while seen and settled is not None and seen[0][1] <= settled:
                passed.append((done - seen.pop(0)[0]) * 1000)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return statistics.median(behind), statistics.median(passed), len(behind)


async def main() -> None:
    args = c.arguments(__doc__.splitlines()[0])
    rows = 100_000 if args.quick else 1_000_000
    reps = args.reps or (3 if args.quick else 7)
    cycles = 20 if args.quick else 100
    seconds = 3.0 if args.quick else 10.0
    dsn = c.pg_dsn()
    async with c.target("postgresql", rows) as tgt, tgt.inventory() as inv:
        # 1. drain
        state = {"job": 0}
        drain: dict[str | None, list[float]] = {"exact": [], None: []}
        for mode in drain:
            for _ in range(5):
                await drain_cycles(inv, tgt.source_table, mode, state)
        for _ in range(reps):
            for mode in drain:
                drain[mode].append(
                    await c.ms_per_cycle(
                        lambda m=mode: drain_cycles(inv, tgt.source_table, m, state), cycles
                    )
                )  # type: ignore[misc]

        # 2. and 3. under steady inserts
        schema, table = await stream_table(dsn)
        window = 1.0 + 2 * seconds * max(1, reps // 2) / 2 + seconds + 30
        writers = [
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--writer", json.dumps([dsn, table, window, i])
            )
            for i in range(WRITERS)
        ]
        try:
            while not await count_rows(dsn, table):  # the writers have started
                await asyncio.sleep(0.1)
            tail: dict[str | None, list[tuple[float, bool]]] = {"exact": [], None: []}
            for _ in range(max(1, reps // 2)):
                for mode in tail:
                    tail[mode] += await follow(inv, table, mode, seconds / 2)
            behind, passed_ms, samples = await lag(inv, dsn, table, seconds)
        finally:
            for proc in writers:
                proc.terminate()
            await asyncio.gather(*(p.wait() for p in writers))
            written = await count_rows(dsn, table)
            await drop_schema(dsn, schema)

    on, off = c.median(drain["exact"]), c.median(drain[None])
    t_on, t_off = (c.median([ms for ms, _ in tail[m]]) for m in ("exact", None))
    f_on, f_off = (c.median([ms for ms, found in tail[m] if found]) for m in ("exact", None))
    c.print_table(
        "Exact horizon: cost and lag (PostgreSQL)",
        ["measure", "horizon exact", "horizon None", "ratio"],
        [
            [f"drain {rows:,} rows: ms per 100-item cycle", on, off, f"{on / off:.2f}x"],
            [f"follow {WRITERS} writers: ms per acquisition", t_on, t_off, f"{t_on / t_off:.2f}x"],
            ["follow: ms per acquisition that found a batch", f_on, f_off, f"{f_on / f_off:.2f}x"],
            ["lag: median ids behind the highest committed id", behind, "-", "-"],
            ["lag: median ms until the horizon passes it", passed_ms, "-", "-"],
        ],
        [
            f"Drain: median of {reps} repetitions of {cycles} cycles, modes interleaved. Follow: "
            f"{len(tail['exact'])}/{len(tail[None])} acquisitions (weight 1000; a None result, "
            f"nothing settled or visible yet, is cheap). Lag: {samples} samples every ~10 ms while {WRITERS} writers committed "
            f"{written:,} rows in transactions of {WRITE_MS[0]}-{WRITE_MS[1]} ms, "
            f"{ROWS_PER_TXN[0]}-{ROWS_PER_TXN[1]} rows each. {c.machine()}."
        ],
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        dsn_, table_, seconds_, seed_ = json.loads(sys.argv[2])
        asyncio.run(writer(dsn_, table_, seconds_, seed_))
    else:
        c.run(main)
