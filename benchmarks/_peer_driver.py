"""Runs inside the peer venv (pybatchintory 0.0.8, sync SQLAlchemy, psycopg2): ms per
acquire-items-succeed cycle. Prints one JSON line. Not imported by the other scripts.

    /tmp/peer-venv/bin/python benchmarks/_peer_driver.py PG_DSN SCHEMA TABLE CYCLES
"""

import json
import sys
import time

dsn, schema, table, cycles = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

from pybatchintory.config.main import configure  # noqa: E402

import pybatchintory  # noqa: E402

configure(settings={"INVENTORY_CONN": dsn, "INVENTORY_CONN_SCHEMA": schema})
from pybatchintory import sql  # noqa: E402

sql.db.initialize_metadata_backend()
cols = {"uid": "id", "item": "uri", "weight": "weight"}


def cycle() -> None:
    # 0.0.8's API: job, meta table and its columns, a weight budget; Batch.items loaded
    batch = pybatchintory.acquire_batch(
        job="bench_job", meta_table_name=table, meta_table_cols=cols, batch_weight=100
    )
    assert batch is not None and len(batch.items) == batch.id_range.count == 100
    batch.succeeded()


cycle()  # warm-up: reflection, pool
started = time.perf_counter()
for _ in range(cycles):
    cycle()
print(json.dumps({"ms": (time.perf_counter() - started) * 1000 / cycles}))
