"""The async client: two engines, one for the metadata table and one for the inventory."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping
from contextlib import nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._backend import Backend, BatchRecord
from ._engines import (
    backend_errors,
    complete_despite_cancellation,
    create_engine,
    write_transaction,
)
from ._request import AcquireRequest, make_request, positive_int, resolve_job_identifier
from ._source import Filter, Source, job_source, reflect_table_source
from ._tables import build_tables
from .batch import Batch
from .config import Settings, hide_password
from .exceptions import ConfigurationError, InventoryNotOpenError

if TYPE_CHECKING:
    from ._reports import Backlog, JobStatus, JobSummary, ResetResult, TraceEntry

__all__ = ["Inventory"]

_SOURCE_CACHE_SIZE = 64

logger = logging.getLogger("pybatchintory")


def load_settings(settings: Settings | None, overrides: Mapping[str, Any]) -> Settings:
    """Settings from the environment and dotenv files, with ``overrides`` on top.

    Raises ConfigurationError (without input values: a URL may carry a password).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        # Environment variables may carry anything; a misspelled argument must not
        # silently fall back to a default such as the local SQLite file.
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}; the settings are: "
            f"{', '.join(Settings.model_fields)}"
        )
    if settings is None:
        return Settings(**given)
    if not given:
        return settings
    # model_copy would skip validation (and SecretStr wrapping): validate the merge.
    return Settings(**{**settings.model_dump(), **given, "_env_file": None})


class Inventory:
    """Hands out weight-bounded batches of a metadata table and records what each job did.

    ``Inventory()`` reads :class:`~pybatchintory.Settings` (``PYBATCHINTORY_*`` variables
    and dotenv files); URLs and any setting given here take precedence. Use it as
    ``async with Inventory(...) as inventory:``, or call :meth:`open` and :meth:`close`.
    """

    def __init__(
        self,
        inventory_url: str | None = None,
        meta_url: str | None = None,
        *,
        settings: Settings | None = None,
        worker: str | None = None,
        **setting_overrides: Any,
    ) -> None:
        self.settings = load_settings(
            settings, {"inventory_url": inventory_url, "meta_url": meta_url, **setting_overrides}
        )
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self._tables = build_tables(self.settings)
        self._backend: Backend | None = None
        self._meta_engine: AsyncEngine | None = None
        # LRU: a filter written inline makes a new object (and key) at every call.
        self._sources: OrderedDict[Hashable, tuple[Source, Any]] = OrderedDict()

    def __repr__(self) -> str:
        state = "open" if self._backend is not None else "closed"
        return (
            f"<Inventory {state} inventory_url={hide_password(self.settings.inventory_dsn)!r} "
            f"meta_url={hide_password(self.settings.meta_dsn)!r}>"
        )

    # -- life cycle ----------------------------------------------------------------

    async def open(self) -> Inventory:
        """Create the engines and, if absent, the backend tables."""
        if self._backend is not None:
            return self
        inventory_engine = create_engine(self.settings.inventory_dsn, self.settings, writer=True)
        meta_engine = create_engine(self.settings.meta_dsn, self.settings, writer=False)
        backend = Backend(inventory_engine, self._tables)
        try:
            await backend.create_tables()
        except BaseException:
            await complete_despite_cancellation(_dispose(inventory_engine, meta_engine))
            raise
        self._backend, self._meta_engine = backend, meta_engine
        return self

    async def close(self) -> None:
        """Dispose of both engines' pools. Batches not finished keep their lease."""
        backend, meta = self._backend, self._meta_engine
        self._backend = self._meta_engine = None
        if backend is not None:
            backend.closed = True  # its batches must not reopen the disposed pool
            if backend.signal is not None:
                backend.signal.close()
        self._sources.clear()
        await complete_despite_cancellation(
            _dispose(backend.engine if backend is not None else None, meta)
        )

    async def __aenter__(self) -> Inventory:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def backend(self) -> Backend:
        """The backend tables' SQL on the inventory engine (once open)."""
        if self._backend is None:
            raise InventoryNotOpenError(
                "the inventory is not open: use 'async with Inventory(...)' or "
                "'await inventory.open()' first"
            )
        return self._backend

    @property
    def inventory_engine(self) -> AsyncEngine:
        """The engine of the backend tables."""
        return self.backend.engine

    @property
    def meta_engine(self) -> AsyncEngine:
        """The engine of the metadata table (read only)."""
        self.backend  # noqa: B018 -- raises the helpful error when closed
        assert self._meta_engine is not None
        return self._meta_engine

    # -- administration and observability -----------------------------------------

    async def retry(self, job_identifier: str, batch_id: int | None = None) -> list[int]:
        """Re-queue failed batches of the job that used up their attempts (or only
        ``batch_id``): each gets one more attempt, handed out by the next acquisition
        before any new range. Returns the ids re-queued."""
        job = resolve_job_identifier(job_identifier, None)
        from ._status import batch_ranges

        ids = await self.backend.requeue(job, batch_id)
        for batch_id_, start, end, attempt in await batch_ranges(self, ids):
            logger.info(
                "batch re-queued for one more attempt",
                extra={
                    "job": job,
                    "batch_id": batch_id_,
                    "range_start": start,
                    "range_end": end,
                    "attempt": attempt,
                },
            )
        return ids

    async def status(
        self,
        job_identifier: str,
        *,
        filter: Filter = None,
        id_start: int | None = None,
        id_end: int | None = None,
        weight_column: str | None = "weight",
        trust_stored_filter: bool = False,
    ) -> JobStatus:
        """The job's cursor, batch counts and weights per status, leases, last success,
        and its backlog: items and weight still ahead of its cursor (within
        ``id_start``..``id_end``), so that the next run can be sized before it starts.

        A job reading a filtered table only stores its filter as SQL text. Pass the same
        ``filter`` as its acquisitions (checked against that text) to count the backlog,
        or ``trust_stored_filter=True`` to run the stored text on the metadata database;
        otherwise ``backlog`` is None and ``backlog_note`` says why.
        """
        from ._status import job_status

        return await job_status(
            self,
            resolve_job_identifier(job_identifier, None),
            filter=filter,
            id_start=id_start,
            id_end=id_end,
            weight_column=weight_column,
            trust_stored_filter=trust_stored_filter,
        )

    async def jobs(self) -> list[JobSummary]:
        """Every job with its source and a one-line status."""
        from ._status import list_jobs

        return await list_jobs(self)

    async def trace(self, source_table: str, item_id: int) -> list[TraceEntry]:
        """Every batch of every job that covered ``item_id`` of ``source_table``, with
        its attempts and log lines, then the batches of downstream jobs that consumed
        those batches. Index lookups only: fast whatever the inventory's size."""
        from ._trace import trace_item

        return await trace_item(self, source_table, item_id)

    async def reset(
        self, job_identifier: str, to_id: int | None = None, *, force: bool = False
    ) -> ResetResult:
        """Rewind the job's cursor so that ids after ``to_id`` (all, if None) are
        processed again; history is kept, in an older generation. Refuses while batches
        after ``to_id`` run, unless ``force`` (their workers then lose them). Unfinished
        batches at or below ``to_id`` stay to be finished; see :class:`ResetResult`."""
        from ._reset import reset_job

        return await reset_job(self, resolve_job_identifier(job_identifier, None), to_id, force=force)

    async def backlog(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        source_job: str | None = None,
        filter: Filter = None,
        id_start: int | None = None,
        id_end: int | None = None,
        id_column: str = "id",
        weight_column: str | None = "weight",
        job_identifer: str | None = None,
    ) -> Backlog:
        """Items and weight that acquisitions with these arguments still have ahead (new
        ranges only, not retries), to size a run before it starts."""
        from ._status import backlog_of

        request = make_request(
            self.settings,
            source_table=source_table,
            source_job=source_job,
            job_identifier=job_identifier,
            job_identifer=job_identifer,
            weight=None,
            max_items=None,
            id_start=id_start,
            id_end=id_end,
            filter=filter,
            id_column=id_column,
            weight_column=weight_column,
            item_columns=None,
            max_attempts=None,
            lease_seconds=None,
            load_items=False,
        )
        source = await self._source(request)
        return await backlog_of(self, source, request.job_identifier, id_start, id_end)

    async def iter_source_items(
        self,
        batch: Batch,
        *,
        filter: Filter = None,
        trust_stored_filter: bool = False,
        item_columns: Iterable[str] | None = None,
        chunk_size: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """The metadata rows behind a downstream batch: its upstream batches' ranges,
        followed down the chain to the metadata table, as a union (a row covered twice,
        after an upstream reset, comes once). ``filter`` is the root job's filter, checked
        against the one it stored (or ``trust_stored_filter=True`` to run the stored SQL)."""
        from ._trace import source_rows

        chunks = source_rows(
            self,
            batch.job_identifier,
            [(batch.range_start, batch.range_end)],
            filter=filter,
            trust_stored_filter=trust_stored_filter,
            item_columns=item_columns,
            chunk_size=chunk_size,
        )
        async for chunk in chunks:
            for row in chunk:
                yield row

    # -- acquisition ---------------------------------------------------------------

    async def acquire_batch(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        source_job: str | None = None,
        weight: float | None = None,
        max_items: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        filter: Filter = None,
        id_column: str = "id",
        weight_column: str | None = "weight",
        item_columns: Iterable[str] | None = None,
        max_attempts: int | None = None,
        lease_seconds: float | None = None,
        load_items: bool = True,
        settle_column: str | None = None,
        settle_seconds: float | None = None,
        job_identifer: str | None = None,
    ) -> Batch | None:
        """Take the job's next batch, or None when nothing is left in its window.

        A failed batch with attempts left, or a running one whose lease expired, is
        handed out again first (same range, next attempt). Otherwise a new range starts
        after the job's cursor (and at ``id_start`` or later, up to ``id_end``) and holds
        the most consecutive matching items whose weights sum to at most ``weight``
        (an item heavier than ``weight`` forms a batch alone) and at most ``max_items``.
        ``settle_column`` and ``settle_seconds`` keep the job from planning past a row
        younger than ``settle_seconds`` by that timestamp column, so that rows whose
        lower ids become visible late are not skipped (see the README's known hazard).
        ``job_identifer`` is an alias of ``job_identifier``.
        """
        request = make_request(self.settings, **_acquire_arguments(locals()))
        source = await self._source(request)
        return await self._acquire(request, source, run_upper=None)

    def acquire_batches(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        batch_count: int | None = None,
        source_job: str | None = None,
        weight: float | None = None,
        max_items: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        filter: Filter = None,
        id_column: str = "id",
        weight_column: str | None = "weight",
        item_columns: Iterable[str] | None = None,
        max_attempts: int | None = None,
        lease_seconds: float | None = None,
        load_items: bool = True,
        settle_column: str | None = None,
        settle_seconds: float | None = None,
        job_identifer: str | None = None,
    ) -> AsyncIterator[Batch]:
        """Yield up to ``batch_count`` batches (None: until nothing is left), one at a time.

        The run's upper id bound is the table's highest id when the run starts, so a
        run over a table that keeps growing still ends. Finish each batch before taking
        the next, or the lease of an unfinished one runs out.
        """
        arguments = _acquire_arguments(locals())
        count = positive_int(arguments.pop("batch_count"), "batch_count")
        request = make_request(self.settings, **arguments)
        return self._acquire_many(request, count)

    async def _acquire_many(
        self, request: AcquireRequest, count: int | None
    ) -> AsyncIterator[Batch]:
        source = await self._source(request)
        async with backend_errors("reading the source's highest id", source.engine):
            run_upper = await source.max_id()
        if run_upper is None:
            return
        taken = 0
        while count is None or taken < count:
            batch = await self._acquire(request, source, run_upper=run_upper)
            if batch is None:
                return
            taken += 1
            yield batch

    async def _source(self, request: AcquireRequest) -> Source:
        """The request's source, reflected once and cached with its filter."""
        key = _source_key(request)
        cached = self._sources.get(key) if key is not None else None
        if cached is not None:
            self._sources.move_to_end(key)
            return cached[0]
        if request.source_job is not None:
            source = job_source(self.inventory_engine, self._tables, request.source_job)
        else:
            assert request.source_table is not None
            async with backend_errors("reflecting the source table", self.meta_engine):
                source = await reflect_table_source(
                    self.meta_engine,
                    request.source_table,
                    id_column=request.id_column,
                    weight_column=request.weight_column,
                    item_columns=request.item_columns,
                    filter=request.filter,
                    settle_column=request.settle_column,
                    settle_seconds=request.settle_seconds,
                )
        if key is not None:
            # The filter object is kept alive with the entry, so its id() stays unique.
            self._sources[key] = (source, request.filter)
            if len(self._sources) > _SOURCE_CACHE_SIZE:
                self._sources.popitem(last=False)
        return source

    async def _acquire(
        self, request: AcquireRequest, source: Source, run_upper: int | None
    ) -> Batch | None:
        backend = self.backend
        upper = _lowest(request.id_end, run_upper)

        async def take() -> BatchRecord | None:
            async with write_transaction(backend.engine) as conn:
                job = await backend.lock_job(conn, request.job_identifier, source.binding)
                record = await backend.reclaim(
                    conn,
                    request.job_identifier,
                    job,
                    request.window,
                    request.lease_seconds,
                    self.worker,
                )
                if record is not None:
                    return record
                if job.exhausted:  # the cursor is at the highest 64-bit id
                    return None
                start = _highest(request.id_start, job.next_id)
                if start is not None and upper is not None and start > upper:
                    return None
                # A job source plans inside this transaction, where a conflict must reach
                # retry_transient unwrapped; a metadata table on its own engine.
                same_engine = source.engine is backend.engine
                errors = nullcontext() if same_engine else backend_errors("planning", source.engine)
                async with errors:
                    plan = await source.plan(
                        start if start is not None else -(2**63),
                        upper,
                        request.weight,
                        request.max_items,
                        conn=conn if same_engine else None,
                    )
                if plan is None:
                    return None
                return await backend.insert_batch(
                    conn,
                    request.job_identifier,
                    job,
                    plan,
                    max_attempts=request.max_attempts,
                    lease_seconds=request.lease_seconds,
                    worker=self.worker,
                )

        async with backend_errors(f"acquiring a batch of job {request.job_identifier!r}", backend.engine):
            record = await backend.take(take)
        if record is None:
            return None
        batch = Batch(backend, record, source, request.lease_seconds)
        logger.info(
            "acquired batch (attempt %s, %s items, weight %g)",
            record.attempt,
            record.item_count,
            record.weight,
            extra=batch._log_fields(),
        )
        if request.load_items:
            await self._load_items(batch, source)
        return batch

    async def _load_items(self, batch: Batch, source: Source) -> None:
        try:
            async with backend_errors(f"loading the items of batch {batch.id}", source.engine):
                batch._items = await source.load(batch.range_start, batch.range_end)
        except BaseException as exc:
            # Hand the range back at once rather than after the lease runs out.
            await complete_despite_cancellation(_hand_back(batch, exc))
            raise


async def _dispose(*engines: AsyncEngine | None) -> None:
    for engine in engines:
        if engine is not None:
            await engine.dispose()


async def _hand_back(batch: Batch, exc: BaseException) -> None:
    try:
        if isinstance(exc, asyncio.CancelledError):
            # The batch never reached a worker: it must not use up an attempt.
            await batch.release("the acquisition was cancelled while its items loaded")
        else:
            await batch.error(exc)
    except Exception:  # the original error is the one to report
        logger.exception("could not hand back batch %s", batch.id)


def _acquire_arguments(local_vars: dict[str, Any]) -> dict[str, Any]:
    arguments = dict(local_vars)
    arguments.pop("self")
    return arguments


def _source_key(request: AcquireRequest) -> Hashable | None:
    """A cache key for the source, or None when the filter cannot be keyed."""
    filter = request.filter
    if filter is None:
        filter_key: Hashable = None
    elif isinstance(filter, Mapping):
        try:
            filter_key = tuple(
                sorted(
                    (k, tuple(v) if isinstance(v, (list, set, frozenset)) else v)
                    for k, v in filter.items()
                )
            )
            hash(filter_key)
        except TypeError:
            return None
    else:
        filter_key = ("object", id(filter))
    return (
        request.source_table,
        request.source_job,
        request.id_column,
        request.weight_column,
        request.item_columns,
        request.settle_column,
        request.settle_seconds,
        filter_key,
    )


def _lowest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _highest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
