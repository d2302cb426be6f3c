"""PostgreSQL behind PgBouncer (issue 12, item 1), with ``pgbouncer=True``.

The suite starts its own PgBouncer on a free port, in a temporary directory with its
own ini and userlist (``auth_type = trust``, in front of the test server), in
transaction and in session pooling mode, and stops it at teardown. Worker processes
(fresh interpreters) go through it. Without a ``pgbouncer`` program these tests skip
with the reason, except under CI=true, where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pybatchintory import Settings
from pybatchintory._engines import create_engine
from tests.acceptance._worker import check_job_invariants, run_workers
from tests.acceptance.test_race import RACE_FILTER, matching_ids, seed
from tests.conftest import IN_CI, PG_URL, Db, require_postgres

# pybatchintory's DDL lock key (pybatchintory/_migrations/__init__.py): it fits in 32
# bits, so pg_locks shows it as classid 0, objid key, objsubid 1.
_DDL_LOCK_KEY = 0x70796269


@dataclass
class Bouncer:
    port: int
    mode: str
    directory: Path

    def url(self, base: str = PG_URL) -> str:
        """``base`` with PgBouncer's address instead of the server's."""
        url = make_url(base).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text()[-3000:] if path.exists() else ""


def _require_pgbouncer() -> str:
    program = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if program is None:
        reason = "pgbouncer is not installed (apt-get install pgbouncer)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}; CI must run the PgBouncer tests", pytrace=False)
        pytest.skip(reason)
    return program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(program: str, directory: Path, mode: str) -> tuple[subprocess.Popen[bytes], Bouncer]:
    server = make_url(PG_URL)
    user = server.username or "postgres"
    port = _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        f"pool_mode = {mode}\n"
        # Few server connections: the test server is shared. Transaction mode: more
        # than the workers' concurrent acquisitions (4 processes x 2 tasks), as
        # docs/deployment.md asks. Session mode pins one per client connection.
        f"default_pool_size = {10 if mode == 'transaction' else 24}\n"
        "max_client_conn = 200\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    argv = [program]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        argv += ["-u", _unprivileged_user()]
        directory.chmod(0o777)
    with open(directory / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            [*argv, str(directory / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=stderr
        )
    bouncer = Bouncer(port, mode, directory)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            err = (directory / "stderr.txt").read_text()
            pytest.fail(f"pgbouncer exited {proc.returncode}: {err}{bouncer.log()}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"pgbouncer did not listen: {bouncer.log()}", pytrace=False)
            time.sleep(0.05)
    return proc, bouncer


def _unprivileged_user() -> str:
    for name in ("nobody", "postgres"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.skip("running as root and no unprivileged user for pgbouncer")


@pytest.fixture(params=["transaction", "session"])
def bouncer(request: pytest.FixtureRequest) -> Iterator[Bouncer]:
    require_postgres()
    program = _require_pgbouncer()
    # A directory of its own under the system's temporary directory (not pytest's,
    # which an unprivileged user cannot enter when the tests run as root).
    directory = Path(tempfile.mkdtemp(prefix=f"pbi-pgbouncer-{request.param}-"))
    proc, found = _start(program, directory, request.param)
    try:
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _args(db: Db, bouncer: Bouncer, **extra: Any) -> dict[str, Any]:
    return {
        "url": bouncer.url(db.url),
        "schema": db.schema,
        "settings": {"pgbouncer": True},
        **extra,
    }


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_four_workers_drain_a_job_through_pgbouncer(db: Db, bouncer: Bouncer) -> None:
    table = await seed(db, 1200)
    job = {"name": "bounced", "weight": 40, "filter": RACE_FILTER}
    args = _args(db, bouncer, table=table, jobs=[job], tasks=2, fail_every=5)
    try:
        results = await run_workers(
            "drain", [{**args, "name": f"w{i}"} for i in range(4)], timeout=90
        )
    except AssertionError:
        print(bouncer.log())
        raise
    facts = await check_job_invariants(db, "bounced", await matching_ids(db, ("a", "b")))
    assert sum(r["succeeded"] for r in results) == facts["batches"]
    assert sum(r["failed"] for r in results) == facts["attempts"] - facts["batches"] > 0
    assert sum(r["lost"] for r in results) == 0
    running = await db.scalar("SELECT count(*) FROM {s}inventory WHERE status = 'running'")
    assert running == 0


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.parametrize("bouncer", ["transaction"], indirect=True)
async def test_table_creation_through_pgbouncer_leaks_no_lock(
    db: Db, bouncer: Bouncer, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    schema = f"{db.schema}_new"  # tables nobody created yet: both processes race for them
    args = {**_args(db, bouncer), "schema": schema, "go_file": str(go)}
    runner = asyncio.ensure_future(run_workers("open", [args] * 2, timeout=60))
    await asyncio.sleep(2)  # let the interpreters start and wait on the signal
    go.touch()
    try:
        assert await runner == [{"opened": True}] * 2
        held = await db.rows(
            "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = 0 AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            key=_DDL_LOCK_KEY,
        )
        assert held == [], f"the DDL lock is still held or awaited: {held}"
        stuck = await db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pybatchintory' "
            "AND state LIKE 'idle in transaction%' AND datname = current_database()"
        )
        assert stuck == 0
        tables = await db.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
            "ORDER BY table_name",
            s=schema,
        )
        assert [t[0] for t in tables] == [
            "inventory",
            "inventory_jobs",
            "inventory_jobs_version",
            "inventory_logs",
        ]
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


class _Seen(Exception):
    pass


async def test_pgbouncer_setting_applies_the_documented_recipe() -> None:
    # No server needed: the connect arguments are caught before any connection.
    settings = Settings(pgbouncer=True, _env_file=None)
    url = "postgresql+asyncpg://u@127.0.0.1:1/x?statement_cache_size=0"
    seen: dict[str, Any] = {}
    for writer in (True, False):
        engine = create_engine(url, settings, writer=writer)
        seen.clear()

        def _catch(*_cargs: Any, **cparams: Any) -> None:
            seen.update(cparams)
            raise _Seen

        engine.sync_engine.dialect.connect = _catch  # type: ignore[method-assign]

        with pytest.raises(_Seen):
            async with engine.connect():
                pass
        await engine.dispose()
        assert seen["statement_cache_size"] == 0  # a number, also from the URL's query
        assert seen["prepared_statement_cache_size"] == 0
        names = {seen["prepared_statement_name_func"]() for _ in range(3)}
        assert len(names) == 3 and all(n.startswith("__asyncpg_") for n in names)
        # No autocommit behind PgBouncer: every statement in a transaction.
        assert engine.sync_engine.get_execution_options().get("isolation_level") != "AUTOCOMMIT"
        assert engine.sync_engine.dialect.isolation_level != "AUTOCOMMIT"  # type: ignore[attr-defined]
