"""ms per acquire-and-succeed cycle of one job at 10k and 1M rows, SQLite and PostgreSQL
side by side (issue 2's benchmark; scale.py extends it to 10M rows and a long history).

    python benchmarks/acquire.py [--quick] [--reps N]
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import _common as c


async def main() -> None:
    args = c.arguments(__doc__.splitlines()[0])
    sizes = [10_000, 100_000] if args.quick else [10_000, 1_000_000]
    reps = args.reps or (3 if args.quick else 5)
    cycles = 20 if args.quick else 100
    samples: dict[tuple[str, int], list[float]] = {}
    async with AsyncExitStack() as stack:
        cyclers = {}
        for kind in ("sqlite", "postgresql"):
            for n in sizes:
                tgt = await stack.enter_async_context(c.target(kind, n))
                inv = await stack.enter_async_context(tgt.inventory())
                cyclers[(kind, n)] = c.LibraryCycler(inv, tgt.source_table)
                for _ in range(5):
                    await cyclers[(kind, n)].cycle()
                samples[(kind, n)] = []
        for _ in range(reps):
            for key, cycler in cyclers.items():
                samples[key].append(await c.ms_per_cycle(cycler.cycle, cycles))
    rows = [
        [f"{n:,}"] + [c.median(samples[(k, n)]) for k in ("sqlite", "postgresql")] for n in sizes
    ]
    c.print_table(
        "Acquire: ms per acquire-items-succeed cycle (100-item batches)",
        ["metadata rows", "SQLite ms", "PostgreSQL ms"],
        rows,
        [f"Median of {reps} repetitions of {cycles} cycles, interleaved; {c.machine()}."],
    )


if __name__ == "__main__":
    c.run(main)
