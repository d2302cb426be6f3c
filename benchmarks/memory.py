"""Items: peak memory while streaming a 1M-item batch with iter_items(), and while
loading a 100k-item batch into ``items``.

Each measurement runs in a fresh process: the peak resident size (sampled every 2 ms)
minus the one just before the items are read, after the batch was acquired with
``load_items=False`` (streaming), or just before the acquisition (loading).

    python benchmarks/memory.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import threading
from pathlib import Path

import _common as c

MIB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _Sampler:
    """The highest resident size seen, sampled every 2 ms from a thread (ru_maxrss is
    the whole process's lifetime peak, which may predate the measured part)."""

    def __init__(self) -> None:
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def start(self) -> int:
        self.peak = _rss()
        self._thread.start()
        return self.peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss())


async def _child(kind: str, rows: int, how: str) -> dict[str, float]:
    sampler = _Sampler()
    async with c.target(kind, rows) as tgt, tgt.inventory() as inv:
        if how == "stream":
            batch = await inv.acquire_batch(
                source_table=tgt.source_table,
                job_identifier=c.JOB,
                max_items=rows,
                load_items=False,
            )
            assert batch is not None
            before, seen = sampler.start(), 0
            async for _item in batch.iter_items(chunk_size=1000):
                seen += 1
        else:
            before = sampler.start()
            batch = await inv.acquire_batch(
                source_table=tgt.source_table, job_identifier=c.JOB, max_items=rows
            )
            assert batch is not None
            seen = len(batch.items)
        peak = sampler.stop()
        assert seen == rows, seen
        await batch.success()
    return {"grew_mib": (peak - before) / MIB, "items": seen}


def measure(kind: str, rows: int, how: str) -> float:
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "--child", kind, str(rows), how],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["grew_mib"])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, rows, how = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        print(json.dumps(asyncio.run(_child(kind, rows, how))))
        return
    args = c.arguments(__doc__.splitlines()[0])
    stream_rows, load_rows = (100_000, 10_000) if args.quick else (1_000_000, 100_000)
    reps = args.reps or (1 if args.quick else 3)
    for rows in {stream_rows, load_rows}:
        asyncio.run(c.pg_meta_table(rows))
        c.sqlite_meta_file(rows)
    table = []
    for kind in ("sqlite", "postgresql"):
        streamed = c.median([measure(kind, stream_rows, "stream") for _ in range(reps)])
        loaded = c.median([measure(kind, load_rows, "load") for _ in range(reps)])
        table.append([kind, f"iter_items(), {stream_rows:,} items", streamed])
        table.append([kind, f"items, {load_rows:,} items", loaded])
    c.print_table(
        "Items: peak memory growth (MiB of resident set)",
        ["database", "how", "peak growth MiB"],
        table,
        [
            f"Median of {reps} fresh processes; rows of (id bigint, uri text, weight double); {c.machine()}.",
            "Target: streaming a 1M-item batch grows peak memory by less than 50 MiB.",
        ],
    )


if __name__ == "__main__":
    main()
