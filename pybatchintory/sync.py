"""The sync face, for plain scripts: the same client, driven from one event-loop thread.

A :class:`SyncInventory` owns one event loop in a background thread (anyio's blocking
portal) for its whole life and creates its engines there. Every call, from any thread,
runs in that loop: pooled asyncpg connections belong to the loop that made them, so an
``asyncio.run`` per call would break the second call.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, overload

from anyio.from_thread import BlockingPortal
from typing_extensions import Unpack

from ._loop import EventLoopThread
from ._metrics import JobGauges
from ._progress import ProgressBar
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
from ._trace import source_rows
from .batch import Batch
from .config import Settings
from .exceptions import InventoryNotOpenError
from .inventory import Inventory, load_settings
from .job import Filter, Job, JobArguments, JobOptions, resolve_job

__all__ = [
    "SyncBatch",
    "SyncInventory",
    "acquire_batch",
    "acquire_batches",
    "configure",
    "default_inventory",
]

T = TypeVar("T")
_DONE = object()


class SyncBatch:
    """A :class:`~pybatchintory.Batch` for sync code. ``with batch:`` renews the lease
    in the background, then records success, or the failure and re-raises."""

    def __init__(self, batch: Batch, loop: EventLoopThread) -> None:
        self._batch = batch
        self._loop = loop

    def __repr__(self) -> str:
        return repr(self._batch)

    @property
    def id(self) -> int:
        """The batch's id in the inventory."""
        return self._batch.id

    @property
    def job_identifier(self) -> str:
        """Its job's name."""
        return self._batch.job_identifier

    @property
    def range_start(self) -> int:
        """First id of the range (inclusive)."""
        return self._batch.range_start

    @property
    def range_end(self) -> int:
        """Last id of the range (inclusive)."""
        return self._batch.range_end

    @property
    def item_count(self) -> int:
        """Matching items in the range."""
        return self._batch.item_count

    @property
    def weight(self) -> float:
        """Total weight of its items."""
        return self._batch.weight

    @property
    def attempt(self) -> int:
        """1 for a first attempt, then 2, ..."""
        return self._batch.attempt

    @property
    def max_attempts(self) -> int:
        """Attempts allowed."""
        return self._batch.max_attempts

    @property
    def status(self) -> str:
        """running, succeeded or failed."""
        return self._batch.status

    @property
    def result(self) -> dict[str, Any] | None:
        """The result given to success()."""
        return self._batch.result

    @property
    def lease_expires_at(self) -> datetime:
        """When the lease runs out unless renewed (database clock, UTC)."""
        return self._batch.lease_expires_at

    @property
    def items(self) -> list[dict[str, Any]]:
        """The rows of the range, as dicts, loaded at acquisition."""
        return self._batch.items

    def iter_items(self, chunk_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Stream the rows of the range, ``chunk_size`` rows per round trip."""
        chunks = self._batch.iter_item_chunks(chunk_size)
        try:
            while (chunk := self._loop.call(_next_or_done, chunks)) is not _DONE:
                yield from chunk
        finally:
            self._loop.call(_close, chunks)

    def success(self, result: Mapping[str, Any] | None = None) -> None:
        """Record success, with an optional JSON-able result."""
        self._loop.call(self._batch.success, result)

    def error(self, exc_or_text: BaseException | str) -> None:
        """Record the failure; the message and traceback go into the log row."""
        self._loop.call(self._batch.error, exc_or_text)

    def release(self, reason: str = "released by its worker unprocessed") -> None:
        """Hand the batch back unprocessed, without using up an attempt."""
        self._loop.call(self._batch.release, reason)

    def heartbeat(self) -> None:
        """Renew the lease now."""
        self._loop.call(self._batch.heartbeat)

    def process(
        self,
        func: Callable[..., T] | Callable[..., Awaitable[T]],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``func(batch.items, *args, **kwargs)`` in this thread under the lease:
        success on return, failure recorded and re-raised on an exception. Returns its
        result. ``batch.process(process_func)`` is the specification's "version 2"."""
        if inspect.iscoroutinefunction(func):
            result: T = self._loop.call(self._batch.process, func, tuple(args), kwargs)
            return result
        items = self.items
        with self:
            return func(items, *args, **(kwargs or {}))  # type: ignore[return-value]

    def __enter__(self) -> SyncBatch:
        self._loop.call(self._batch.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.call(self._batch.__aexit__, exc_type, exc, tb)


async def _next_or_done(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _DONE


async def _close(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class SyncInventory:
    """:class:`~pybatchintory.Inventory` for sync code; same arguments, same methods.

    Use it as ``with SyncInventory(...) as inventory:`` or call :meth:`close`.
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
        self._inventory = Inventory(
            inventory_url, meta_url, settings=settings, worker=worker, **setting_overrides
        )
        self._loop: EventLoopThread | None = EventLoopThread()
        self._loop.on_exit(self._inventory.close)
        try:
            self._loop.call(self._inventory.open)
        except BaseException:
            self._loop.stop()
            raise

    def __repr__(self) -> str:
        return repr(self._inventory).replace("<Inventory", "<SyncInventory", 1)

    @property
    def inventory(self) -> Inventory:
        """The async client underneath."""
        return self._inventory

    @property
    def idle_reasons(self) -> dict[str, str]:
        """Same as :attr:`Inventory.idle_reasons`: why a job's last acquisition handed
        out nothing."""
        return self._inventory.idle_reasons

    @property
    def last_idle_reason(self) -> str | None:
        """Same as :attr:`Inventory.last_idle_reason`."""
        return self._inventory.last_idle_reason

    @property
    def _loop_or_closed(self) -> EventLoopThread:
        if self._loop is None:
            raise InventoryNotOpenError("the SyncInventory was closed; make a new one")
        return self._loop

    @property
    def portal(self) -> BlockingPortal:
        """The portal into this inventory's event loop, to run other coroutines there."""
        return self._loop_or_closed.portal

    @overload
    def acquire_batch(
        self, job: Job, /, *, load_items: bool = True, **options: Unpack[JobOptions]
    ) -> SyncBatch | None: ...

    @overload
    def acquire_batch(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        load_items: bool = True,
        **arguments: Unpack[JobArguments],
    ) -> SyncBatch | None: ...

    def acquire_batch(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        *,
        load_items: bool = True,
        **arguments: Any,
    ) -> SyncBatch | None:
        """Same as :meth:`Inventory.acquire_batch`: the job's next batch, or None."""
        acquire = functools.partial(
            self._inventory.acquire_batch,
            source_table,
            job_identifier,
            load_items=load_items,
            **arguments,
        )
        batch = self._loop_or_closed.call(acquire)
        return None if batch is None else SyncBatch(batch, self._loop_or_closed)

    @overload
    def acquire_batches(
        self,
        job: Job,
        /,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        progress: bool = False,
        **options: Unpack[JobOptions],
    ) -> Iterator[SyncBatch]: ...

    @overload
    def acquire_batches(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        progress: bool = False,
        **arguments: Unpack[JobArguments],
    ) -> Iterator[SyncBatch]: ...

    def acquire_batches(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        *,
        batch_count: int | None = None,
        load_items: bool = True,
        progress: bool = False,
        **arguments: Any,
    ) -> Iterator[SyncBatch]:
        """Same as :meth:`Inventory.acquire_batches`; acquires lazily.

        Arguments are checked now, so bad input raises here, not at the first ``next``.
        ``progress=True`` draws a bar on stderr, sized by the job's backlog (see
        :meth:`Inventory.backlog`), advanced as each batch is handed back.
        """
        job = resolve_job(source_table, job_identifier, arguments)
        batches = self._inventory.acquire_batches(
            job, batch_count=batch_count, load_items=load_items
        )
        bar = None
        if progress:
            backlog, forecast = self.call(self._inventory.backlog_and_forecast, job)
            bar = ProgressBar(job.job_identifier, backlog, forecast=forecast)
        return self._drain(batches, bar)

    def _drain(self, batches: Any, bar: Any = None) -> Iterator[SyncBatch]:
        try:
            while (batch := self._loop_or_closed.call(_next_or_done, batches)) is not _DONE:
                yield SyncBatch(batch, self._loop_or_closed)
                if bar is not None:
                    bar.advance(batch.weight, batch.item_count)
        finally:
            if bar is not None:
                bar.close()
            self._loop_or_closed.call(_close, batches)

    def call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run any coroutine function in this inventory's event loop and wait for it."""
        result: T = self._loop_or_closed.call(functools.partial(method, *args, **kwargs))
        return result

    def iter_source_items(
        self,
        batch: SyncBatch,
        *,
        filter: Filter = None,
        trust_stored_filter: bool = False,
        item_columns: Iterable[str] | None = None,
        chunk_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Same as :meth:`Inventory.iter_source_items`: the metadata rows behind a
        downstream batch, streamed ``chunk_size`` rows per round trip."""
        chunks = source_rows(
            self._inventory.storage,
            batch.job_identifier,
            [(batch.range_start, batch.range_end)],
            filter=filter,
            trust_stored_filter=trust_stored_filter,
            item_columns=item_columns,
            chunk_size=chunk_size,
        )
        try:
            while (chunk := self._loop_or_closed.call(_next_or_done, chunks)) is not _DONE:
                yield from chunk
        finally:
            self._loop_or_closed.call(_close, chunks)

    def retry(self, job: Job | str, batch_id: int | None = None) -> list[int]:
        """Same as :meth:`Inventory.retry`."""
        return self.call(self._inventory.retry, job, batch_id)

    def status(
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
        """Same as :meth:`Inventory.status`."""
        return self.call(
            self._inventory.status,
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

    def jobs(self) -> list[JobSummary]:
        """Same as :meth:`Inventory.jobs`."""
        return self.call(self._inventory.jobs)

    def trace(self, source_table: str, item_id: int) -> list[TraceEntry]:
        """Same as :meth:`Inventory.trace`."""
        return self.call(self._inventory.trace, source_table, item_id)

    def coverage(
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
        """Same as :meth:`Inventory.coverage`."""
        return self.call(
            self._inventory.coverage,
            job,
            id_start=id_start,
            id_end=id_end,
            generation=generation,
            time_column=time_column,
            since=since,
            until=until,
        )

    def coverage_diff(
        self,
        a: Job | str,
        b: Job | str,
        *,
        id_start: int | None = None,
        id_end: int | None = None,
    ) -> CoverageDiff:
        """Same as :meth:`Inventory.coverage_diff`."""
        return self.call(self._inventory.coverage_diff, a, b, id_start=id_start, id_end=id_end)

    def observe_jobs(self, jobs: Iterable[Job | str], *, interval: float = 60.0) -> JobGauges:
        """Same as :meth:`Inventory.observe_jobs` (refreshed on this inventory's loop
        thread; stop with ``inventory.call(gauges.stop)``, or by closing it)."""
        return self.call(self._inventory.observe_jobs, jobs, interval=interval)

    def html_report(
        self, jobs: Iterable[str] | None = None, *, path: str | os.PathLike[str] | None = None
    ) -> str:
        """Same as :meth:`Inventory.html_report`."""
        return self.call(self._inventory.html_report, jobs, path=path)

    def plan(self, job: Job | str, next: int = 5) -> list[PlannedBatch]:
        """Same as :meth:`Inventory.plan`."""
        return self.call(self._inventory.plan, job, next)

    def reset(
        self,
        job: Job | str,
        to_id: int | None = None,
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> ResetResult:
        """Same as :meth:`Inventory.reset`."""
        return self.call(self._inventory.reset, job, to_id, force=force, dry_run=dry_run)

    def batches(
        self, job: Job | str, *, status: str | None = None, limit: int = 50
    ) -> list[BatchInfo]:
        """Same as :meth:`Inventory.batches`."""
        return self.call(self._inventory.batches, job, status=status, limit=limit)

    def release_batch(
        self, job: Job | str, batch_id: int, *, reason: str | None = None
    ) -> BatchInfo:
        """Same as :meth:`Inventory.release_batch`."""
        return self.call(self._inventory.release_batch, job, batch_id, reason=reason)

    def expire_batch(
        self, job: Job | str, batch_id: int, *, reason: str | None = None
    ) -> BatchInfo:
        """Same as :meth:`Inventory.expire_batch`."""
        return self.call(self._inventory.expire_batch, job, batch_id, reason=reason)

    def pause(self, job: Job | str, *, reason: str | None = None) -> bool:
        """Same as :meth:`Inventory.pause`."""
        return self.call(self._inventory.pause, job, reason=reason)

    def resume(self, job: Job | str) -> bool:
        """Same as :meth:`Inventory.resume`."""
        return self.call(self._inventory.resume, job)

    @overload
    def backlog(self, job: Job | str, /, **options: Unpack[JobOptions]) -> Backlog: ...

    @overload
    def backlog(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        **arguments: Unpack[JobArguments],
    ) -> Backlog: ...

    def backlog(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        **arguments: Any,
    ) -> Backlog:
        """Same as :meth:`Inventory.backlog`."""
        backlog = functools.partial(
            self._inventory.backlog,
            source_table,
            job_identifier,
            **arguments,
        )
        result: Backlog = self._loop_or_closed.call(backlog)
        return result

    @overload
    def forecast(self, job: Job | str, /, **options: Unpack[JobOptions]) -> Forecast: ...

    @overload
    def forecast(
        self,
        source_table: str | None = None,
        job_identifier: str | None = None,
        **arguments: Unpack[JobArguments],
    ) -> Forecast: ...

    def forecast(
        self,
        source_table: Job | str | None = None,
        job_identifier: str | None = None,
        **arguments: Any,
    ) -> Forecast:
        """Same as :meth:`Inventory.forecast`."""
        forecast = functools.partial(
            self._inventory.forecast, source_table, job_identifier, **arguments
        )
        result: Forecast = self._loop_or_closed.call(forecast)
        return result

    def close(self) -> None:
        """Dispose of the engines and stop the event-loop thread."""
        loop, self._loop = self._loop, None
        if loop is None or loop.forked:
            return
        try:
            loop.call(self._inventory.close)
        finally:
            loop.stop()

    def __enter__(self) -> SyncInventory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the process-wide default behind acquire_batch / acquire_batches -----------------

_default: SyncInventory | None = None
_default_settings: dict[str, Any] = {}
_default_lock = threading.Lock()


def configure(**settings: Any) -> None:
    """Set the process-wide settings of :func:`acquire_batch` and :func:`acquire_batches`.

    Takes the fields of :class:`~pybatchintory.Settings` (``inventory_url``,
    ``meta_url``, ...); what is not given comes from the environment. Closes the
    current default inventory; batches acquired from it can no longer be finished.
    """
    global _default
    # Fail now, with a clear error, on a bad or unknown setting.
    fields = {key: value for key, value in settings.items() if key not in ("settings", "worker")}
    load_settings(settings.get("settings"), fields)
    with _default_lock:
        previous, _default = _default, None
        _default_settings.clear()
        _default_settings.update(settings)
    if previous is not None:
        previous.close()


def default_inventory() -> SyncInventory:
    """The process-wide inventory, created at first use from the configured settings."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SyncInventory(**_default_settings)
        return _default


def _forget_default_after_fork() -> None:
    """A forked child starts without the parent's default inventory (its event loop did
    not follow): the first call in the child makes its own, with the same settings."""
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_default_after_fork)


@atexit.register
def _close_default() -> None:
    global _default
    with _default_lock:
        previous, _default = _default, None
    if previous is not None:
        previous.close()


@overload
def acquire_batch(
    job: Job, /, *, load_items: bool = True, **options: Unpack[JobOptions]
) -> SyncBatch | None: ...


@overload
def acquire_batch(
    source_table: str | None = None,
    job_identifier: str | None = None,
    *,
    load_items: bool = True,
    **arguments: Unpack[JobArguments],
) -> SyncBatch | None: ...


def acquire_batch(
    source_table: Job | str | None = None,
    job_identifier: str | None = None,
    *,
    load_items: bool = True,
    **arguments: Any,
) -> SyncBatch | None:
    """Take the next batch of a job with the process-wide settings, or None.

    Same arguments as :meth:`Inventory.acquire_batch`: ``acquire_batch(job)``, or the
    specification's ``acquire_batch(source_table="meta", job_identifer="incremental_job",
    weight=10)``.
    """
    return default_inventory().acquire_batch(
        source_table,  # type: ignore[arg-type]
        job_identifier,
        load_items=load_items,
        **arguments,
    )


@overload
def acquire_batches(
    job: Job,
    /,
    *,
    batch_count: int | None = None,
    load_items: bool = True,
    progress: bool = False,
    **options: Unpack[JobOptions],
) -> Iterator[SyncBatch]: ...


@overload
def acquire_batches(
    source_table: str | None = None,
    job_identifier: str | None = None,
    *,
    batch_count: int | None = None,
    load_items: bool = True,
    progress: bool = False,
    **arguments: Unpack[JobArguments],
) -> Iterator[SyncBatch]: ...


def acquire_batches(
    source_table: Job | str | None = None,
    job_identifier: str | None = None,
    *,
    batch_count: int | None = None,
    load_items: bool = True,
    progress: bool = False,
    **arguments: Any,
) -> Iterator[SyncBatch]:
    """Take up to ``batch_count`` batches of a job, lazily, with the process-wide settings."""
    return default_inventory().acquire_batches(
        source_table,  # type: ignore[arg-type]
        job_identifier,
        batch_count=batch_count,
        load_items=load_items,
        progress=progress,
        **arguments,
    )
