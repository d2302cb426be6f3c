"""The sync face is typed like the async one: mypy catches a misspelled keyword on
``SyncInventory.acquire_batch``, the module-level ``acquire_batch`` and ``Inventory``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = textwrap.dedent(
    """
    from pybatchintory import Inventory, Job, SyncInventory, acquire_batch, acquire_batches

    job = Job("convert", source_table="raw_files", weight=10)

    def sync_calls(inventory: SyncInventory) -> None:
        inventory.acquire_batch(source_table="meta", job_identifier="j", wieght=10)  # line 7
        acquire_batch(source_table="meta", job_identifer="j", wieght=10)  # line 8
        inventory.acquire_batch(job, wieght=10)  # line 9
        acquire_batches(job, batch_count=2, filter={"kind": "a"})  # line 10
        batch = inventory.acquire_batch(job, weight=5)
        if batch is not None:
            reveal_type(batch.range_start)  # line 13

    async def async_calls(inventory: Inventory) -> None:
        await inventory.acquire_batch(source_table="meta", job_identifier="j", max_item=3)  # 16
        # correct calls: no error
        await inventory.acquire_batch(job, max_items=3, lease_seconds=60)
        acquire_batch(source_table="meta", job_identifer="incremental_job", weight=10)
    """
)


@pytest.mark.slow  # a cold mypy run over SQLAlchemy's types takes a minute or two
def test_mypy_flags_misspelled_keywords_on_both_faces(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "typing-test"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    lines = result.stdout.splitlines()
    errors = {int(line.split(":")[1]) for line in lines if ": error:" in line}
    assert errors == {7, 8, 9, 10, 16}, result.stdout
    revealed = [line for line in lines if "snippet.py:13: note: Revealed type is" in line]
    assert revealed and revealed[0].endswith('int"'), result.stdout
