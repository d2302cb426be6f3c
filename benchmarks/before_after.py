"""The acquisition cycle of this checkout against an earlier commit, in one run.

    python benchmarks/before_after.py [--base COMMIT] [--runs N]

Checks ``--base`` (default: 0.1.0's last commit) out into a temporary git worktree and
runs ``benchmarks/acquire.py --quick`` of each tree in turn, ``--runs`` times (default
3), alternating, so that both see the same load. Prints each tree's median and the
ratio this checkout / base (below 1: faster now).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "7e4f6a0"  # 0.1.0 as released: the flat keyword API, before Job
_ROW = re.compile(r"^\|\s*([\d,]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|$")


def acquire_figures(tree: Path) -> dict[tuple[str, str], float]:
    """ms per cycle by (rows, database) from one run of the tree's acquire.py."""
    done = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / "acquire.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    figures = {}
    for line in done.stdout.splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows, sqlite_ms, pg_ms = match.groups()
            figures[(rows, "SQLite")] = float(sqlite_ms)
            figures[(rows, "PostgreSQL")] = float(pg_ms)
    if not figures:
        raise SystemExit(f"no figures from {tree}:\n{done.stdout}\n{done.stderr}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            samples: dict[str, list[dict[tuple[str, str], float]]] = {"base": [], "now": []}
            for _ in range(args.runs):
                samples["base"].append(acquire_figures(base))
                samples["now"].append(acquire_figures(ROOT))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                check=False,
                capture_output=True,
            )
    keys = list(samples["now"][0])
    print(
        f"\n### Acquire cycle, ms: {args.base} against this checkout "
        f"(medians of {args.runs} alternating runs of acquire.py --quick)\n"
    )
    print("| metadata rows | database | base ms | now ms | now / base |")
    print("|---|---|--:|--:|--:|")
    for key in keys:
        before = statistics.median(run[key] for run in samples["base"])
        after = statistics.median(run[key] for run in samples["now"])
        print(f"| {key[0]} | {key[1]} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
