"""The async client: two engines, one for the metadata table and one for the inventory."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, overload

from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Unpack

from . import _metrics
from ._admin import expire_batch, list_batches, pause_job, release_batch
from ._backend import Backend, BatchRecord, JobState
from ._coverage import coverage_diff, job_coverage
from ._engines import (
    backend_errors,
    complete_despite_cancellation,
    create_engine,
    hot_transaction,
)
from ._forecast import forecast_of
from ._html_report import html_report
from ._idle import (
    backoff_reason,
    frontier_reason,
    nothing_new_reason,
    paused_reason,
    time_window_reason,
    window_reason,
)
from ._plan import plan_batches
from ._reports import (
    Backlog,
    BatchInfo,
    Coverage,
    CoverageDiff,
    Forecast,
    JobStatus,
    JobSummary,
    PlannedBatch,
    ResetResult,
    TraceEntry,
)
from ._reset import reset_job
from ._source import Source
from ._status import backlog_of, batch_ranges, job_status, list_jobs
from ._storage import Storage
from ._tables import build_tables
from ._trace import source_rows, trace_item
from .batch import Batch
from .config import Settings, hide_password
from .exceptions import ConfigurationError, InvalidArgumentError, InventoryNotOpenError
from .job import (
    Filter,
    Job,
    JobArguments,
    JobOptions,
    job_definition,
    job_name,
    positive_int,
    resolve_job,
    time_bounds,
)

__all__ = ["Inventory"]

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
        if not isinstance(self.worker, str) or not 0 < len(self.worker) <= 255:
            raise InvalidArgumentError(
                f"worker must be a name of 1 to 255 characters (it is stored with each "
                f"attempt), got {str(self.worker)[:40]!r}..."
            )
        self._tables = build_tables(self.settings)
        self._storage: Storage | None = None
        self.idle_reasons: dict[str, str] = {}
        """Per job, why its last acquisition handed out nothing (gone once one hands
        out a batch): window done, upstream frontier, nothing new."""
        self._last_idle: str | None = None

    def __repr__(self) -> str:
        state = "open" if self._storage is not None else "closed"
        return (
            f"<Inventory {state} inventory_url={hide_password(self.settings.inventory_dsn)!r} "
            f"meta_url={hide_password(self.settings.meta_dsn)!r}>"
        )

    # -- life cycle ----------------------------------------------------------------

    async def open(self) -> Inventory:
        """Create the engines and, if absent, the backend tables (with the
        ``create_tables`` setting off: only check that they are current)."""
        if self._storage is not None:
            return self
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "pybatchintory runs on asyncio only (asyncpg and aiosqlite are asyncio "
                "drivers): open the Inventory under asyncio (anyio with the asyncio "
                "backend), or use SyncInventory from plain or other-async code"
            ) from None
        inventory_engine = create_engine(self.settings.inventory_dsn, self.settings, writer=True)
        meta_engine = create_engine(self.settings.meta_dsn, self.settings, writer=False)
        backend = Backend(inventory_engine, self._tables)
        try:
            await backend.create_tables(create=self.settings.create_tables)
        except BaseException:
            await complete_despite_cancellation(_dispose(inventory_engine, meta_engine))
            raise
        self._storage = Storage(backend, meta_engine)
        return self

    async def close(self) -> None:
        """Dispose of both engines' pools. Batches not finished keep their lease."""
        store, self._storage = self._storage, None
        if store is None:
            return
        store.backend.closed = True  # its batches must not reopen the disposed pool
        await _metrics.stop_observing(self)
        if store.backend.signal is not None:
            store.backend.signal.close()
        store.forget_sources()
        await complete_despite_cancellation(_dispose(store.engine, store.meta_engine))

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
    def storage(self) -> Storage:
        """Both databases, once open (the layer every feature works on)."""
        if self._storage is None:
            raise InventoryNotOpenError(
                "the inventory is not open: use 'async with Inventory(...)' or "
                "'await inventory.open()' first"
            )
        return self._storage

    @property
    def backend(self) -> Backend:
        """The backend tables' SQL on the inventory engine (once open)."""
        return self.storage.backend

    @property
    def inventory_engine(self) -> AsyncEngine:
        """The engine of the backend tables."""
        return self.storage.engine

    @property
    def meta_engine(self) -> AsyncEngine:
        """The engine of the metadata table (read only)."""
        return self.storage.meta_engine

    # -- administration and observability -----------------------------------------

    async def retry(self, job: Job | str, batch_id: int | None = None) -> list[int]:
        """Re-queue failed batches of the job that used up their attempts (or only
        ``batch_id``): each gets one more attempt, handed out by the next acquisition
        before any new range. Returns the ids re-queued."""
        name = job_name(job)
        store = self.storage
        ids = await store.backend.requeue(name, batch_id)
        for batch_id_, start, end, attempt in await batch_ranges(store, ids):
            logger.info(
                "batch %s of job %s (ids %s..%s) re-queued for attempt %s",
                batch_id_,
                name,
                start,
                end,
                attempt + 1,
                extra={
                    "job": name,
                    "batch_id": batch_id_,
                    "range_start": start,
                    "range_end": end,
                    "attempt": attempt,
                },
            )
        return ids

    async def status(
        self,
        job: Job | str,
        *,
        filter: Filter = None,
        id_start: int | None = None,
        id_end: int | None = None,
        weight_column: str | None = None,
        trust_stored_filter: bool = False,
        time_column: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> JobStatus:
        """The job's cursor, batch counts and weights per status, leases, last success,
        and its backlog: items and weight still ahead of its cursor, so that the next
        run can be sized before it starts.

        ``job`` is a :class:`Job` or the name of one: the inventory stores each job's
        definition, so the name alone gives the right weight column, window and (for a
        mapping filter) filter. An expression filter is stored as SQL text only: pass the
        Job or its ``filter``, or ``trust_stored_filter=True`` to run the stored text.
        ``id_start``, ``id_end`` and ``weight_column`` override the stored ones. When the
        metadata database cannot be reached, the inventory's own counts are reported and
        ``backlog_note`` says why the backlog is missing. ``since``/``until``
        (timezone-aware) count the backlog of that time window only, by ``time_column``
        (default: the job's own); ``forecast`` turns the backlog into batches and an ETA.
        """
        if not isinstance(job, Job):
            job = job_name(job)
        since, until = time_bounds(since, until)
        return await job_status(
            self.storage,
            job,
            filter=filter,
            id_start=id_start,
            id_end=id_end,
            weight_column=weight_column,
            trust_stored_filter=trust_stored_filter,
            time_column=time_column,
            since=since,
            until=until,
        )

    async def observe_jobs(
        self, jobs: Iterable[Job | str], *, interval: float = 60.0
    ) -> _metrics.JobGauges:
        """Report the OpenTelemetry gauges of ``jobs`` (Jobs or names): backlog items and
        weight, running batches, age of the oldest lease, batches out of attempts and
        horizon lag (docs/metrics.md). Their values are read now, then every
        ``interval`` seconds on this inventory's event loop (a status per job each time);
        the exporter's thread only reads the last values. Stop with ``.stop()``; closing
        the inventory stops it too. Without ``opentelemetry-api`` installed it does
        nothing."""
        gauges = _metrics.observe(self, self.status, jobs, interval)
        if _metrics.ENABLED:
            await gauges.refresh()
            gauges.start()
        return gauges

    async def jobs(self) -> list[JobSummary]:
        """Every job with its source and a one-line status."""
        return await list_jobs(self.storage)

    async def trace(self, source_table: str, item_id: int) -> list[TraceEntry]:
        """Every batch of every job that covered ``item_id`` of ``source_table``, with
        its attempts and log lines, then the batches of downstream jobs that consumed
        those batches. Index lookups only: fast whatever the inventory's size."""
        return await trace_item(self.storage, source_table, item_id)

    async def coverage(
        self,
        job: Job | str,
        *,
        id_start: int | None = None,
        id_end: int | None = None,
        generation: int | None = None,
        time_column: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Coverage:
        """The job's id window as range-compressed segments, each id in one state:
        succeeded, running, retry_wait (failed, attempts left), out_of_attempts, or
        not_taken (no batch: after the cursor, or a gap). See :class:`Coverage`.

        ``job`` is a :class:`Job` or the name of a stored one. The window defaults to the
        job's own (``id_start``/``id_end``), else from the lowest to the highest id of its
        source and batches; ``generation`` defaults to the current one. One ordered scan
        of the job's batches in the window: the cost follows their number, not the
        number of items.

        ``since``/``until`` (timezone-aware, by ``time_column``, default the job's; a job
        with a time window has them by default): the window is from the lowest to the
        highest id of the rows in that time window (ids of other times between them
        included: a batch covers ids, not times)."""
        since, until = time_bounds(since, until)
        return await job_coverage(
            self.storage,
            job,
            id_start=id_start,
            id_end=id_end,
            generation=generation,
            time_column=time_column,
            since=since,
            until=until,
        )

    async def coverage_diff(
        self,
        a: Job | str,
        b: Job | str,
        *,
        id_start: int | None = None,
        id_end: int | None = None,
    ) -> CoverageDiff:
        """Two jobs over one source compared (current generations): the ids ``a``
        succeeded on and ``b`` has not, and the reverse, each with the other job's state
        there. The window defaults to the union of both jobs' windows."""
        return await coverage_diff(self.storage, a, b, id_start=id_start, id_end=id_end)

    async def html_report(
        self, jobs: Iterable[str] | None = None, *, path: str | os.PathLike[str] | None = None
    ) -> str:
        """One self-contained HTML page about ``jobs`` (names; None: every job): per job
        its status and backlog, a coverage bar of its ids coloured by state, throughput
        and batch duration over time, and the failed batches with their last error
        (docs/report.md). Written to ``path`` when given; returned either way."""
        return await html_report(self.storage, jobs, path)

    async def plan(self, job: Job | str, next: int = 5) -> list[PlannedBatch]:
        """The next ``next`` batches the job's acquisitions would hand out, without taking
        them and without writing anything: reclaimable batches first (failed with
        attempts left, running with an expired lease: same range, next attempt), then
        new ranges planned from the cursor with the job's budget and window.

        ``job`` is a :class:`Job` or the name of a stored one (a job whose filter is a
        SQL expression needs the Job). Workers acquiring meanwhile may take them first."""
        return await plan_batches(self.storage, job, next)

    async def reset(
        self,
        job: Job | str,
        to_id: int | None = None,
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> ResetResult:
        """Rewind the job's cursor so that ids after ``to_id`` (all, if None) are
        processed again; history is kept, in an older generation. Refuses while batches
        after ``to_id`` run, unless ``force`` (their workers then lose them). Batches
        wholly at or below ``to_id`` stand (succeeded ones are kept, unfinished ones
        still to be finished); a reset to the cursor changes nothing; ``dry_run`` writes
        nothing. See :class:`ResetResult`."""
        return await reset_job(self.storage, job_name(job), to_id, force=force, dry_run=dry_run)

    async def batches(
        self, job: Job | str, *, status: str | None = None, limit: int = 50
    ) -> list[BatchInfo]:
        """The job's batches (current generation), newest first, with the text of each
        one's last log row (a failure's error). ``status``: ``running``, ``succeeded``,
        ``failed``, ``released``, ``retry_wait`` (failed, attempts left) or
        ``out_of_attempts``."""
        return await list_batches(self.storage, job_name(job), status=status, limit=limit)

    async def release_batch(
        self, job: Job | str, batch_id: int, *, reason: str | None = None
    ) -> BatchInfo:
        """Take a running batch from its worker now and hand it back unprocessed: it is
        ``released`` (no attempt used) and the next acquisition takes it. For the batch
        of a worker known dead, rather than waiting out its lease. The worker, if alive,
        gets BatchLostError at its next renewal or finish."""
        return await release_batch(self.storage, job_name(job), batch_id, reason)

    async def expire_batch(
        self, job: Job | str, batch_id: int, *, reason: str | None = None
    ) -> BatchInfo:
        """End a running batch's lease now, as if it had run out: the attempt counts as
        failed (a hung worker's), and the batch is handed out again at once while it
        has attempts left. The worker, if alive, gets BatchLostError."""
        return await expire_batch(self.storage, job_name(job), batch_id, reason)

    async def pause(self, job: Job | str, *, reason: str | None = None) -> bool:
        """Pause the job: acquisitions hand out nothing (``idle_reasons`` says why);
        batches in flight finish normally. Returns False if it was already paused."""
        return await pause_job(self.storage, job_name(job), paused=True, reason=reason)

    async def resume(self, job: Job | str) -> bool:
        """Resume a paused job. Returns False if it was not paused."""
        return await pause_job(self.storage, job_name(job), paused=False)

    @overload
    async def backlog(self, job: Job | str, /, **options: Unpack[JobOptions]) -> Backlog: ...

    @overload
    async def backlog(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        **arguments: Unpack[JobArguments],
    ) -> Backlog: ...

    async def backlog(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        **arguments: Any,
    ) -> Backlog:
        """Items and weight that the job's acquisitions still have ahead (new ranges
        only, not retries), to size a run before it starts. ``job`` is a :class:`Job`,
        the name of a stored job, or the flat keyword form of ``acquire_batch``."""
        store = self.storage
        job = await self._job_of_call(source_table, job_identifier, arguments)
        source = await store.counting_source(job)
        return await backlog_of(store, source, job.job_identifier, job.id_start, job.id_end)

    @overload
    async def forecast(self, job: Job | str, /, **options: Unpack[JobOptions]) -> Forecast: ...

    @overload
    async def forecast(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        **arguments: Unpack[JobArguments],
    ) -> Forecast: ...

    async def forecast(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        **arguments: Any,
    ) -> Forecast:
        """The job's :meth:`backlog` as a number of batches and an ETA, at the pace of
        its recent history (the succeeded batches among its last 100): see
        :class:`Forecast`. Takes the arguments of :meth:`backlog`."""
        job = await self._job_of_call(source_table, job_identifier, arguments)
        return (await self.backlog_and_forecast(job))[1]

    async def backlog_and_forecast(self, job: Job) -> tuple[Backlog, Forecast]:
        """:meth:`backlog` and :meth:`forecast` of ``job``, counted once (a progress bar
        needs both)."""
        store = self.storage
        source = await store.counting_source(job)
        backlog = await backlog_of(store, source, job.job_identifier, job.id_start, job.id_end)
        return backlog, await forecast_of(store, job.job_identifier, backlog, job)

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
        chunks = source_rows(
            self.storage,
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

    @overload
    async def acquire_batch(
        self, job: Job, /, *, load_items: bool = True, **options: Unpack[JobOptions]
    ) -> Batch | None: ...

    @overload
    async def acquire_batch(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        load_items: bool = True,
        **arguments: Unpack[JobArguments],
    ) -> Batch | None: ...

    async def acquire_batch(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        *,
        load_items: bool = True,
        **arguments: Any,
    ) -> Batch | None:
        """Take the job's next batch, or None when nothing is left in its window.

        ``acquire_batch(job)`` with a :class:`Job`, optionally with per-call overrides of
        its budget, window, lease or attempts (:class:`JobOptions`); or the flat keyword
        form, ``acquire_batch(source_table="meta", job_identifier="job", weight=10)``
        (``job_identifer`` is an alias), which builds the Job.

        A failed batch with attempts left, or a running one whose lease expired, is
        handed out again first (same range, next attempt). Otherwise a new range starts
        after the job's cursor (and at ``id_start`` or later, up to ``id_end``) and holds
        the most consecutive matching items whose weights sum to at most ``weight``
        (an item heavier than ``weight`` forms a batch alone) and at most ``max_items``.
        ``load_items=False`` leaves ``batch.items`` unloaded (stream with ``iter_items``).
        """
        job = resolve_job(source_table, job_identifier, arguments)
        source = await self.storage.source(job)
        run = await _run_window(source)
        return await self._acquire(job, source, run, load_items=load_items)

    @overload
    def acquire_batches(
        self,
        job: Job,
        /,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        **options: Unpack[JobOptions],
    ) -> AsyncIterator[Batch]: ...

    @overload
    def acquire_batches(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        **arguments: Unpack[JobArguments],
    ) -> AsyncIterator[Batch]: ...

    def acquire_batches(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        **arguments: Any,
    ) -> AsyncIterator[Batch]:
        """Yield up to ``batch_count`` batches (None: until nothing is left), one at a time.

        Takes the same job arguments as :meth:`acquire_batch`, checked now, so bad input
        raises here rather than at the first ``anext``. The run's upper id bound is the
        table's highest id when the run starts, so a run over a table that keeps growing
        still ends. Finish each batch before taking the next, or the lease of an
        unfinished one runs out.
        """
        job = resolve_job(source_table, job_identifier, arguments)
        count = positive_int(batch_count, "batch_count")
        return self._acquire_many(job, count, load_items)

    async def _job_of_call(
        self, job: Job | str | None, job_identifier: str | None, arguments: dict[str, Any]
    ) -> Job:
        """The Job of a call that may also name a stored job: ``backlog("name")``."""
        if isinstance(job, str) and job_identifier is None and not _names_source(arguments):
            stored = await self.storage.stored_job(job_name(job))
            if stored.job is None or stored.filter_kind == "expression":
                raise InvalidArgumentError(
                    f"job {job!r} has no stored definition that can be rebuilt (it was last "
                    "acquired by pybatchintory 0.1, or its filter is a SQL expression): pass "
                    "the Job"
                )
            return stored.job.with_options(**arguments)
        return resolve_job(job, job_identifier, arguments)

    async def _acquire_many(
        self, job: Job, count: int | None, load_items: bool
    ) -> AsyncIterator[Batch]:
        source = await self.storage.source(job)
        async with backend_errors("reading the source's highest id", source.engine):
            highest = await source.max_id()
        if highest is None:
            return
        run = await _run_window(source, highest)
        taken = 0
        while count is None or taken < count:
            batch = await self._acquire(job, source, run, load_items=load_items)
            if batch is None:
                return
            taken += 1
            yield batch

    @_metrics.timed  # acquisitions, their latency, weight and items (docs/metrics.md)
    async def _acquire(
        self, job: Job, source: Source, run: _RunWindow, load_items: bool
    ) -> Batch | None:
        backend = self.storage.backend
        upper = _lowest(job.id_end, run.upper)
        lower = _highest(job.id_start, run.lower)
        name = job.job_identifier
        definition = job_definition(job)
        lease = job.lease_seconds or self.settings.lease_seconds
        max_attempts = job.max_attempts or self.settings.max_attempts
        retry_delay = (
            self.settings.retry_delay_seconds
            if job.retry_delay_seconds is None
            else job.retry_delay_seconds
        )

        seen: list[JobState | None] = [None]  # the job's row, as the last attempt saw it

        async def take() -> BatchRecord | None:
            # at the tail, the horizon's refresh runs while the job row is being locked
            since = source.horizon.prefetch(upper) if source.horizon is not None else None
            async with hot_transaction(backend.engine) as conn:
                state = await backend.lock_job(conn, name, source.binding, definition, job.window)
                seen[0] = state
                if state.paused_at is not None:  # workers in flight finish; none start
                    return None
                record = await backend.reclaim(conn, name, state, job.window, lease, self.worker)
                if record is not None:
                    return record
                if state.exhausted or run.empty:  # the cursor is at the highest 64-bit id,
                    return None  # or no row lies in the job's time window
                start = _highest(lower, state.next_id)
                if start is not None and upper is not None and start > upper:
                    return None
                # Plan on this transaction's own connection when the source lives in the
                # inventory's database (a job source; a metadata table at the same URL):
                # one server connection per acquisition, and a conflict reaches
                # retry_transient unwrapped. Otherwise on the metadata engine.
                same_engine = source.engine is backend.engine or (
                    self.storage.same_database and source.engine is self.storage.meta_engine
                )
                errors = nullcontext() if same_engine else backend_errors("planning", source.engine)
                async with errors:
                    plan = await source.plan(
                        start if start is not None else -(2**63),
                        upper,
                        job.weight,
                        job.max_items,
                        conn=conn if same_engine else None,
                        horizon_since=since,
                    )
                if plan is None:
                    return None
                return await backend.insert_batch(
                    conn,
                    name,
                    state,
                    plan,
                    max_attempts=max_attempts,
                    lease_seconds=lease,
                    worker=self.worker,
                )

        async with backend_errors(f"acquiring a batch of job {name!r}", backend.engine):
            record = await backend.take(take)
        if record is None:
            await self._note_idle(job, seen[0], lower, upper, run.empty)
            return None
        self.idle_reasons.pop(name, None)
        batch = Batch(backend, record, source, lease, retry_delay)
        if logger.isEnabledFor(logging.INFO):  # its fields cost more than the call
            logger.info(
                "acquired batch %s of job %s: ids %s..%s, attempt %s, %s items, weight %g",
                record.id,
                name,
                record.range_start,
                record.range_end,
                record.attempt,
                record.item_count,
                record.weight,
                extra=batch._log_fields(),
            )
        if load_items:
            await self._load_items(batch, source)
        return batch

    async def _note_idle(
        self,
        job: Job,
        state: JobState | None,
        lower: int | None,
        upper: int | None,
        empty: bool,
    ) -> None:
        """Say why nothing was handed out: an attribute, and a log line at INFO."""
        cursor = None if state is None else state.cursor
        reason = None if state is None else paused_reason(state.paused_at, state.pause_reason)
        if reason is None and empty:
            reason = time_window_reason(job)
        if reason is None:
            # a time window's end is its rows' highest id; an id window's, id_end
            timed = job.since is not None or job.until is not None
            reason = window_reason(cursor, lower, upper if timed else job.id_end)
        if reason is None and job.source_job is not None:
            reason = await frontier_reason(self.storage, job.source_job)
        if reason is None:
            reason = nothing_new_reason(cursor, upper)
            waiting = await backoff_reason(self.storage, job.job_identifier)
            if waiting is not None:
                reason = f"{reason}; {waiting}"
        self.idle_reasons[job.job_identifier] = self._last_idle = reason
        logger.info(
            "job %s: nothing to hand out: %s",
            job.job_identifier,
            reason,
            extra={"job": job.job_identifier, "reason": reason},
        )

    @property
    def last_idle_reason(self) -> str | None:
        """Why the last acquisition that returned None handed out nothing."""
        return self._last_idle

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


@dataclass(frozen=True)
class _RunWindow:
    """A run's id bounds, fixed when it starts: the source's highest id then, and the
    lowest and highest id of the rows in the job's time window (``empty``: none)."""

    lower: int | None = None
    upper: int | None = None
    empty: bool = False


async def _run_window(source: Source, highest: int | None = None) -> _RunWindow:
    if source.time_window is None:
        return _RunWindow(None, highest)
    async with backend_errors("reading the ids of the job's time window", source.engine):
        ids = await source.time_window_ids()
    if ids is None:
        return _RunWindow(None, highest, empty=True)
    return _RunWindow(ids[0], _lowest(ids[1], highest))


def _names_source(arguments: Mapping[str, Any]) -> bool:
    return any(key in arguments for key in ("source_table", "source_job", "job_identifer"))


def _lowest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _highest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
