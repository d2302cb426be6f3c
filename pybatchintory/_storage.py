"""The storage layer under every feature: our tables (:class:`Backend`) on the inventory
engine, the metadata engine, the jobs' stored definitions and their reflected sources.

Features (acquisition, status, trace, reset) depend on this module, never on the
:class:`~pybatchintory.Inventory` client above them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._backend import Backend
from ._engines import backend_errors, read_connection
from ._source import Source, job_source, reflect_table_source
from ._tables import BackendTables
from .exceptions import InvalidArgumentError
from .job import Job, job_from_definition

__all__ = ["Storage", "StoredJob", "job_row"]

_SOURCE_CACHE_SIZE = 64


@dataclass(frozen=True)
class StoredJob:
    """A job's row, and its definition when one was stored (jobs first seen by 0.1.0
    have none until their next acquisition)."""

    row: Any
    job: Job | None
    filter_kind: str  # 'none', 'mapping' (rebuilt exactly) or 'expression' (text only)


async def job_row(
    conn: AsyncConnection, tables: BackendTables, job: str, *, lock: bool = False
) -> Any:
    """The job's row; InvalidArgumentError naming ``pybatchintory jobs`` when unknown."""
    jobs = tables.jobs
    query = sa.select(jobs).where(jobs.c.job_identifier == job)
    if lock:
        query = query.with_for_update()  # rendered as nothing on SQLite: BEGIN IMMEDIATE locks
    row = (await conn.execute(query)).first()
    if row is None:
        raise InvalidArgumentError(
            f"no job {job!r} in the inventory; 'pybatchintory jobs' lists the known jobs"
        )
    return row


class Storage:
    """The inventory's two databases, with the sources its jobs read reflected once."""

    def __init__(self, backend: Backend, meta_engine: AsyncEngine) -> None:
        self.backend = backend
        self.meta_engine = meta_engine
        # The metadata table in the inventory's own database: acquisitions plan on
        # their own connection (one server connection each, not two).
        self.same_database = meta_engine.url == backend.engine.url
        # LRU: a filter written inline makes a new object (and key) at every call.
        self._sources: OrderedDict[Hashable, tuple[Source, Any]] = OrderedDict()

    @property
    def tables(self) -> BackendTables:
        return self.backend.tables

    @property
    def engine(self) -> AsyncEngine:
        """The inventory engine (our tables)."""
        return self.backend.engine

    @asynccontextmanager
    async def reading(
        self, what: str, engine: AsyncEngine | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A read connection of ``engine`` (default: ours), its errors wrapped as
        BackendError naming ``what``."""
        engine = engine if engine is not None else self.engine
        async with backend_errors(what, engine), read_connection(engine) as conn:
            yield conn

    async def stored_job(self, name: str) -> StoredJob:
        """The job's row and stored definition."""
        async with self.reading(f"reading job {name!r}") as conn:
            row = await job_row(conn, self.tables, name)
        if row.definition is None:
            return StoredJob(row, None, "expression" if row.filter_text else "none")
        job, kind = job_from_definition(name, row.definition)
        return StoredJob(row, job, kind)

    async def job_of(self, job: Job | str) -> tuple[Job, Any | None, str]:
        """The Job behind ``job`` (a Job, or the name of a stored one), its row (None for
        a Job never acquired) and its filter's kind (see :class:`StoredJob`).

        A name needs a stored definition: InvalidArgumentError when there is none."""
        if isinstance(job, Job):
            jobs = self.tables.jobs
            query = sa.select(jobs).where(jobs.c.job_identifier == job.job_identifier)
            async with self.reading(f"reading job {job.job_identifier!r}") as conn:
                row = (await conn.execute(query)).first()
            return job, row, "none" if job.filter is None else "given"
        stored = await self.stored_job(job)
        if stored.job is None:
            raise InvalidArgumentError(
                f"job {job!r} has no stored definition (it was last acquired by "
                "pybatchintory 0.1): pass the Job, or acquire once with this version"
            )
        return stored.job, stored.row, stored.filter_kind

    async def source(self, job: Job) -> Source:
        """The job's source, reflected once and cached with its filter."""
        key = _source_key(job)
        cached = self._sources.get(key) if key is not None else None
        if cached is not None:
            self._sources.move_to_end(key)
            return cached[0]
        if job.source_job is not None:
            await self._check_upstream(job.source_job)
            source = job_source(self.engine, self.tables, job.source_job)
        else:
            assert job.source_table is not None
            async with backend_errors("reflecting the source table", self.meta_engine):
                source = await reflect_table_source(
                    self.meta_engine,
                    job.source_table,
                    id_column=job.id_column,
                    weight_column=job.weight_column,
                    item_columns=job.item_columns,
                    filter=job.filter,
                    settle_column=job.settle_column,
                    settle_seconds=job.settle_seconds,
                    horizon=job.horizon is not None,
                    time_column=job.time_column,
                    since=job.since,
                    until=job.until,
                )
        if key is not None:
            # The filter object is kept alive with the entry, so its id() stays unique.
            self._sources[key] = (source, job.filter)
            if len(self._sources) > _SOURCE_CACHE_SIZE:
                self._sources.popitem(last=False)
        return source

    async def _check_upstream(self, upstream: str) -> None:
        """An unknown upstream would make a downstream that silently waits forever."""
        jobs = self.tables.jobs
        async with self.reading(f"looking up upstream job {upstream!r}") as conn:
            names = list((await conn.execute(sa.select(jobs.c.job_identifier))).scalars())
        if upstream not in names:
            close = difflib.get_close_matches(upstream, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidArgumentError(
                f"no upstream job {upstream!r} in the inventory{hint}: a downstream job "
                "consumes the batches of a job that has acquired at least once; "
                "'pybatchintory jobs' lists the known jobs"
            )

    async def counting_source(self, job: Job) -> Source:
        """The job's source for counting (backlog, status): without the exact horizon,
        whose preconditions only acquisition needs."""
        return await self.source(dataclasses.replace(job, horizon=None))

    def forget_sources(self) -> None:
        self._sources.clear()


def _source_key(job: Job) -> Hashable | None:
    """A cache key for the job's source, or None when the filter cannot be keyed."""
    filter = job.filter
    if filter is None:
        filter_key: Hashable = None
    elif isinstance(filter, Mapping):
        try:
            filter_key = tuple(filter.items())  # canonical: sorted keys, tuples for lists
            hash(filter_key)
        except TypeError:
            return None
    else:
        filter_key = ("object", id(filter))
    return (
        job.source_table,
        job.source_job,
        job.id_column,
        job.weight_column,
        job.item_columns,
        job.settle_column,
        job.settle_seconds,
        job.horizon,
        job.time_column,
        job.since,
        job.until,
        filter_key,
    )
