"""The lease soak, short (issue 13's DONE criterion at 20 s instead of 2 minutes):
worker processes renewing 1 s leases while others acquire and finish in a loop; no
batch may be taken from a live worker. benchmarks/lease_soak.py runs the long one."""

from __future__ import annotations

import os

import pytest

from benchmarks.lease_soak import run
from tests.conftest import PG_URL

SECONDS = float(os.environ.get("PYBATCHINTORY_SOAK_SECONDS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_batch_is_taken_from_a_live_worker(db_kind: str) -> None:
    figures = run(
        db_kind,
        seconds=SECONDS,
        processes=4,
        holders=4,
        hammers=2,
        lease=1.0,
        url=PG_URL,
        items=200_000,
    )
    assert figures["processes_finished"] == 4, figures
    assert figures["errors"] == 0, figures
    assert figures["held"] > 0 and figures["hammered"] > 0, figures
    assert figures["reclaimed_from_live_workers"] == 0, figures
    assert figures["lost"] == 0, figures
