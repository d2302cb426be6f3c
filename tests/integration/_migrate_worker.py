"""A process that opens an inventory, for the concurrent-upgrade test.

Run as ``python -m tests.integration._migrate_worker '<json arguments>'``: says it is
ready (a file ``ready-<pid>`` next to the start file), waits for the start signal (the
start file appearing), opens the inventory (which upgrades old tables) and
prints one JSON line: ``{"opened": true, "upgraded": <whether this process did it>}``.
Whether it upgraded is read from the library's own INFO log record of the upgrade.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


class _Upgrades(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("backend tables ") and " -> " in message:
            self.messages.append(message)


async def _open(args: dict[str, Any]) -> dict[str, Any]:
    from pybatchintory import Inventory

    upgrades = _Upgrades()
    log = logging.getLogger("pybatchintory")
    log.setLevel(logging.INFO)
    log.addHandler(upgrades)
    go = Path(args["go_file"])
    (go.parent / f"ready-{os.getpid()}").touch()  # imported: ready to race
    deadline = time.monotonic() + 60
    while not go.exists():  # every process opens at the same moment
        if time.monotonic() > deadline:
            raise TimeoutError("no start signal")
        await asyncio.sleep(0.005)
    inventory = Inventory(
        inventory_url=args["url"], meta_url=args["url"], schema_name=args.get("schema"), pool_size=1
    )
    async with inventory:
        pass
    return {"opened": True, "upgraded": upgrades.messages}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_open(json.loads(sys.argv[1])))), flush=True)
