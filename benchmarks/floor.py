"""Floor: the library's cycle against the same cycle written by hand with the raw driver.

Same metadata table (1M rows), same statements, same transactions, measured
interleaved in one run. PostgreSQL: asyncpg. SQLite: the stdlib sqlite3 (the target's
floor) and aiosqlite (the driver the library runs on, for reference).

    python benchmarks/floor.py [--quick] [--reps N] [--cycles N]
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from typing import Any

import _common as c
from _floor import AiosqliteFloor, PgFloor, SqliteFloor


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=None, help="cycles per repetition")


async def open_runner(stack: AsyncExitStack, kind: str, rows: int, how: str) -> Any:
    """An object with ``cycle()``: the library or a floor, on a fresh inventory."""
    tgt = await stack.enter_async_context(c.target(kind, rows))
    inv = await stack.enter_async_context(tgt.inventory())  # creates the backend tables
    if how == "library":
        return c.LibraryCycler(inv, tgt.source_table)
    if how == "asyncpg":
        floor: Any = PgFloor(tgt.schema or "", tgt.source_table)
    else:
        assert tgt.workdir is not None
        meta = c.sqlite_meta_file(rows)
        cls = SqliteFloor if how == "sqlite3" else AiosqliteFloor
        floor = cls(tgt.workdir / "inventory.sqlite3", meta)
    await floor.open()
    stack.push_async_callback(floor.close)
    return floor


async def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], extra)
    rows = 100_000 if args.quick else 1_000_000
    reps = args.reps or (3 if args.quick else 7)
    cycles = args.cycles or (20 if args.quick else 100)
    plan = [
        ("sqlite", "library"),
        ("sqlite", "sqlite3"),
        ("sqlite", "aiosqlite"),
        ("postgresql", "library"),
        ("postgresql", "asyncpg"),
    ]
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    async with AsyncExitStack() as stack:
        runners = {key: await open_runner(stack, key[0], rows, key[1]) for key in plan}
        for runner in runners.values():
            for _ in range(5):
                await runner.cycle()
        for _ in range(reps):
            for key, runner in runners.items():
                samples[key].append(await c.ms_per_cycle(runner.cycle, cycles))

    table = []
    for kind, floor in [("sqlite", "sqlite3"), ("sqlite", "aiosqlite"), ("postgresql", "asyncpg")]:
        lib = c.median(samples[(kind, "library")])
        raw = c.median(samples[(kind, floor)])
        table.append([kind, floor, raw, lib, lib / raw, f"{100 * raw / lib:.0f}%"])
    c.print_table(
        f"Floor: library vs raw driver, ms per acquire-items-succeed cycle ({rows:,} rows)",
        [
            "database",
            "floor driver",
            "floor ms",
            "library ms",
            "library / floor",
            "library cycles/s as % of floor",
        ],
        table,
        [
            f"Median of {reps} repetitions of {cycles} cycles, interleaved; one worker; {c.machine()}.",
            "Target (issue 12): on PostgreSQL the library reaches at least 70% of the floor's cycles per second.",
        ],
    )


if __name__ == "__main__":
    c.run(main)
