"""Scale: ms per acquire-items-succeed cycle as the metadata table and the inventory grow.

A cycle takes a 100-item batch (weight budget 100, every item weighs 1), loads its
items and records success. Sizes: metadata tables of 10k, 1M and 10M rows with an empty
inventory, and the 10M table with an inventory already holding 100k batches of the
job. Every configuration is open at once and measured round-robin, repetition after
repetition, so that the machine's noise falls on all of them alike; medians reported.

    python benchmarks/scale.py [--quick] [--reps N] [--cycles N] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import _common as c


@dataclass
class Config:
    kind: str
    rows: int
    history: int  # batches in the inventory before measuring
    label: str
    cycler: Any = None
    samples: list[float] | None = None


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=None, help="cycles per repetition")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], action="append")


async def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], extra)
    sizes = [10_000, 100_000, 1_000_000] if args.quick else [10_000, 1_000_000, 10_000_000]
    history = 1_000 if args.quick else 100_000
    reps = args.reps or (3 if args.quick else 5)
    cycles = args.cycles or (20 if args.quick else 100)
    kinds = args.db or ["sqlite", "postgresql"]
    configs = []
    for kind in kinds:
        configs += [Config(kind, n, 0, f"{n:,} rows") for n in sizes]
        configs.append(
            Config(kind, sizes[-1], history, f"{sizes[-1]:,} rows + {history:,} batches")
        )

    async with AsyncExitStack() as stack:
        for cfg in configs:
            tgt = await stack.enter_async_context(c.target(cfg.kind, cfg.rows))
            inv = await stack.enter_async_context(tgt.inventory())
            cfg.cycler = c.LibraryCycler(inv, tgt.source_table)
            cfg.samples = []
            # warm-up: reflection, pools, statement caches; creates the job row
            for _ in range(5):
                await cfg.cycler.cycle()
            if cfg.history:
                await c.prefill_history(tgt, cfg.history, first_id=5 * c.BATCH_ITEMS + 1)
                for _ in range(5):
                    await cfg.cycler.cycle()
        for _ in range(reps):
            for cfg in configs:
                assert cfg.samples is not None
                cfg.samples.append(await c.ms_per_cycle(cfg.cycler.cycle, cycles))

    rows = []
    for kind in kinds:
        mine = [cfg for cfg in configs if cfg.kind == kind]
        base = c.median(mine[0].samples or [])
        empty_big = c.median(mine[-2].samples or [])
        for cfg in mine:
            med = c.median(cfg.samples or [])
            against = empty_big if cfg.history else base
            what = f"{mine[-2].label}, empty" if cfg.history else mine[0].label
            rows.append([kind, cfg.label, med, 1000 / med, f"{med / against:.2f}x vs {what}"])
    c.print_table(
        "Scale: ms per acquire-items-succeed cycle (100-item batches)",
        ["database", "metadata table / inventory", "ms per cycle", "cycles/s", "ratio"],
        rows,
        [
            f"Median of {reps} repetitions of {cycles} cycles, configurations interleaved; {c.machine()}.",
            "Target: the largest table within 1.25x of the smallest; 100k batches of history within 1.25x of none.",
        ],
    )


if __name__ == "__main__":
    c.run(main)
