"""Run every benchmark script in turn (``nox -s bench``); arguments such as ``--quick``
are passed on to each. Each script prints one Markdown table of medians and ratios."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "acquire.py",
    "scale.py",
    "floor.py",
    "concurrency.py",
    "memory.py",
    "peer.py",
    "horizon.py",
]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        started = time.perf_counter()
        print(f"\n## {script} {' '.join(sys.argv[1:])}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]], cwd=HERE.parent)
        print(f"\n({script}: {time.perf_counter() - started:.0f} s)", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
