"""examples/recursive_pipeline.py runs, and its numbers are the frontier rule's."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recursive_pipeline.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recursive_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_recursive_example_waits_at_the_failed_batch_and_takes_every_part_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECURSIVE_PIPELINE_URL", raising=False)
    outcome = await load_example().main()

    # convert made batches 1..8; batch 2 failed first, so aggregate took only batch 1.
    assert outcome["before"] == [1]
    assert outcome["requeued"] == [2]
    assert Counter([*outcome["before"], *outcome["after"]]) == Counter(range(1, 9))
    trace = outcome["trace"]
    assert [(e.job_identifier, e.depth, [a.status for a in e.attempts]) for e in trace] == [
        ("convert", 0, ["failed", "succeeded"]),
        ("aggregate", 1, ["succeeded"]),
    ]
    printed = capsys.readouterr().out
    assert "aggregate waits at convert batch 2" in printed
    assert "(9 raw files)" in printed
