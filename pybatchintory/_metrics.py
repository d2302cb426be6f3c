"""Metrics through the OpenTelemetry API (docs/metrics.md), when it is installed.

The library only ever calls the API (``opentelemetry.metrics``): the application picks
the SDK, the readers and the exporters, and sets the global meter provider. Without the
API installed every hook here is a no-op (the acquisition decorator returns the method
itself), so metrics cost nothing and nothing fails.

Observable gauges are read by the SDK on its own thread (a periodic reader's), or on
whichever thread calls ``collect`` (an in-memory reader in a test, possibly the event
loop's own thread). A callback that waited for a coroutine on the inventory's loop could
therefore block that loop or deadlock on it. So the gauges never touch a database: a
:class:`JobGauges` refreshes each observed job's values on the inventory's loop every
``interval`` seconds and swaps in a new snapshot; the callbacks only read the snapshots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ._reports import JobStatus
from .exceptions import BatchLostError, InvalidArgumentError, PyBatchintoryError
from .job import Job, job_name

try:
    from opentelemetry import metrics as otel
except ImportError:  # the optional extra 'otel' is not installed
    otel = None  # type: ignore[assignment]

__all__ = ["ENABLED", "JobGauges", "clock", "observe", "outcome", "stop_observing", "timed"]

logger = logging.getLogger("pybatchintory")
ENABLED = otel is not None
clock = time.monotonic  # processing time and latency: immune to wall-clock steps
SCOPE = "pybatchintory"


class _Handed(Protocol):
    """What the acquisition returns when it hands out a batch (a Batch)."""

    job_identifier: str
    weight: float
    item_count: int


class _Finished(Protocol):
    job_identifier: str
    _started: float


H = TypeVar("H", bound=_Handed)
P = ParamSpec("P")


@dataclass
class _Instruments:
    acquisitions: Any
    acquisition_duration: Any
    batch_weight: Any
    batch_items: Any
    outcomes: Any
    processing_duration: Any


_lock = threading.Lock()  # guards the lazily made instruments and the gauges' registry
_instruments: _Instruments | None = None
_gauges_registered = False
_observers: list[JobGauges] = []


def _meter() -> Any:
    # The global provider, looked up through the API's proxy: instruments made before the
    # application sets its provider start recording once it does.
    return otel.get_meter(SCOPE, version("pybatchintory"))


def _get() -> _Instruments:
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                m = _meter()
                _instruments = _Instruments(
                    acquisitions=m.create_counter(
                        "pybatchintory.acquisitions",
                        unit="{acquisition}",
                        description="Acquisitions, by job and outcome (batch, nothing, error)",
                    ),
                    acquisition_duration=m.create_histogram(
                        "pybatchintory.acquisition.duration",
                        unit="s",
                        description="Time an acquisition took, items loaded included",
                    ),
                    batch_weight=m.create_histogram(
                        "pybatchintory.batch.weight",
                        unit="1",
                        description="Weight of each batch handed out (the job's weight unit)",
                    ),
                    batch_items=m.create_histogram(
                        "pybatchintory.batch.items",
                        unit="{item}",
                        description="Items in each batch handed out",
                    ),
                    outcomes=m.create_counter(
                        "pybatchintory.batch.outcomes",
                        unit="{batch}",
                        description="Outcomes recorded: succeeded, failed, released, lost",
                    ),
                    processing_duration=m.create_histogram(
                        "pybatchintory.batch.duration",
                        unit="s",
                        description="Time from a batch's acquisition to its outcome",
                    ),
                )
    return _instruments


# -- counters and histograms: one-line hooks in inventory.py and batch.py -----------------


def timed(
    acquire: Callable[Concatenate[Any, Job, P], Awaitable[H | None]],
) -> Callable[Concatenate[Any, Job, P], Awaitable[H | None]]:
    """Decorates ``Inventory._acquire(self, job, ...)``: counts and times each call."""
    if not ENABLED:
        return acquire

    @functools.wraps(acquire)
    async def measured(owner: Any, job: Job, /, *args: P.args, **kwargs: P.kwargs) -> H | None:
        started = clock()
        name = job.job_identifier
        try:
            batch = await acquire(owner, job, *args, **kwargs)
        except BaseException:
            _acquired(name, "error", clock() - started)
            raise
        _acquired(name, "nothing" if batch is None else "batch", clock() - started)
        if batch is not None:
            tools = _get()
            tools.batch_weight.record(batch.weight, {"job": name})
            tools.batch_items.record(batch.item_count, {"job": name})
        return batch

    return measured


def _acquired(job: str, outcome: str, seconds: float) -> None:
    tools = _get()
    attributes = {"job": job, "outcome": outcome}
    tools.acquisitions.add(1, attributes)
    tools.acquisition_duration.record(seconds, attributes)


async def outcome(batch: _Finished, write: Awaitable[None], kind: str) -> None:
    """Await the outcome's ``write`` (``Batch._finish``), then count it as ``kind``
    (succeeded, failed, released), or as ``lost`` when another worker took the batch."""
    if not ENABLED:
        await write
        return
    try:
        await write
    except BatchLostError:
        kind = "lost"
        raise
    except BaseException:
        kind = ""  # not recorded (the database failed): the outcome is unknown
        raise
    finally:
        if kind:
            tools = _get()
            attributes = {"job": batch.job_identifier, "outcome": kind}
            tools.outcomes.add(1, attributes)
            tools.processing_duration.record(clock() - batch._started, attributes)


# -- observable gauges --------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    """One job's values at its last refresh (None: not known, not observed)."""

    backlog_items: int | None
    backlog_weight: float | None
    running: int
    oldest_running_start: float | None  # epoch seconds (database clock)
    out_of_attempts: int
    horizon_lag: int | None


def _snapshot(status: JobStatus) -> _Snapshot:
    backlog, horizon = status.backlog, status.horizon
    lag = None
    if horizon is not None and horizon.highest_visible_id is not None:
        settled = horizon.settled_id
        lag = 0 if settled is None else max(horizon.highest_visible_id - settled, 0)
        if settled is None and horizon.held_by:
            lag = None  # nothing is known to be settled past what this process saw
    start = status.oldest_running_start
    return _Snapshot(
        backlog_items=None if backlog is None else backlog.items,
        backlog_weight=None if backlog is None else backlog.weight,
        running=status.running,
        oldest_running_start=None if start is None else start.timestamp(),
        out_of_attempts=status.out_of_attempts,
        horizon_lag=lag,
    )


class JobGauges:
    """The observed jobs of one inventory: their gauges' values, refreshed on its loop.

    Made by ``Inventory.observe_jobs``; stopped by :meth:`stop` or when the inventory
    closes. The gauges report each job's values as of the last refresh (at most
    ``interval`` seconds old); a job whose refresh failed reports nothing until the next
    one succeeds (a warning is logged), rather than stale values."""

    def __init__(
        self,
        owner: object,
        read: Callable[[Job | str], Awaitable[JobStatus]],
        jobs: Sequence[Job | str],
        interval: float,
    ) -> None:
        self.owner = owner
        self.jobs = tuple(jobs)
        self.interval = interval
        self._read = read
        self._values: dict[str, _Snapshot] = {}  # replaced whole: readers see one version
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        names = ", ".join(
            job_name(j) if isinstance(j, str) else j.job_identifier for j in self.jobs
        )
        state = "running" if self._task is not None else "stopped"
        return f"<JobGauges {state} every {self.interval:g}s: {names}>"

    async def refresh(self) -> None:
        """Read every observed job's status now (the background task does it every
        ``interval``; call it to have fresh values at once)."""
        values: dict[str, _Snapshot] = {}
        for job in self.jobs:
            name = job if isinstance(job, str) else job.job_identifier
            try:
                values[name] = _snapshot(await self._read(job))
            except PyBatchintoryError as exc:
                logger.warning(
                    "metrics: the gauges of job %s could not be refreshed: %s",
                    name,
                    exc,
                    extra={"job": name},
                )
        self._values = values

    def start(self) -> None:
        if ENABLED and self._task is None:
            _register_gauges()
            with _lock:
                _observers.append(self)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # a bug must not end the refreshes silently
                logger.exception("metrics: refreshing the job gauges failed")

    async def stop(self) -> None:
        """Stop refreshing; the gauges no longer report these jobs."""
        with _lock:
            if self in _observers:
                _observers.remove(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._values = {}

    def snapshot(self) -> dict[str, _Snapshot]:
        return self._values


def observe(
    owner: object,
    read: Callable[[Job | str], Awaitable[JobStatus]],
    jobs: Iterable[Job | str],
    interval: float,
) -> JobGauges:
    """The gauges of ``jobs`` (not yet refreshed nor started)."""
    if isinstance(jobs, (str, Job)):
        raise InvalidArgumentError(
            "jobs must be a list of jobs or job names, e.g. observe_jobs(['convert']), "
            f"not a single {type(jobs).__name__}"
        )
    listed = [j if isinstance(j, Job) else job_name(j) for j in jobs]
    if not listed:
        raise InvalidArgumentError("observe_jobs needs at least one job (a Job or a job name)")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise InvalidArgumentError(f"interval must be a number of seconds > 0, got {interval!r}")
    if not ENABLED:
        logger.info(
            "metrics: opentelemetry-api is not installed (pip install 'pybatchintory[otel]'), "
            "so the job gauges are not observed"
        )
    return JobGauges(owner, read, listed, float(interval))


async def stop_observing(owner: object) -> None:
    """Stop the gauges of ``owner`` (an inventory being closed)."""
    with _lock:
        mine = [g for g in _observers if g.owner is owner]
    for gauges in mine:
        await gauges.stop()


def _register_gauges() -> None:
    global _gauges_registered
    with _lock:
        if _gauges_registered:
            return
        m = _meter()
        for name, unit, description, value in _GAUGES:
            m.create_observable_gauge(
                name, callbacks=[_callback(value)], unit=unit, description=description
            )
        _gauges_registered = True


def _callback(value: Callable[[_Snapshot], float | None]) -> Callable[[Any], Iterator[Any]]:
    def observe_all(options: Any) -> Iterator[Any]:
        with _lock:  # held only to copy the list: never while a database is read
            observers = list(_observers)
        for gauges in observers:
            for job, snap in gauges.snapshot().items():
                number = value(snap)
                if number is not None:
                    yield otel.Observation(number, {"job": job})

    return observe_all


def _lease_age(snap: _Snapshot) -> float:
    if snap.oldest_running_start is None:
        return 0.0
    return max(time.time() - snap.oldest_running_start, 0.0)


_GAUGES: tuple[tuple[str, str, str, Callable[[_Snapshot], float | None]], ...] = (
    (
        "pybatchintory.job.backlog.items",
        "{item}",
        "Matching items ahead of the job's cursor, in its window",
        lambda s: s.backlog_items,
    ),
    (
        "pybatchintory.job.backlog.weight",
        "1",
        "Weight of the backlog (the job's weight unit; absent without a weight column)",
        lambda s: s.backlog_weight,
    ),
    (
        "pybatchintory.job.batches.running",
        "{batch}",
        "Running batches of the job's current generation",
        lambda s: s.running,
    ),
    (
        "pybatchintory.job.lease.oldest_age",
        "s",
        "Age of the oldest running batch (since its attempt started; 0 when none runs)",
        _lease_age,
    ),
    (
        "pybatchintory.job.batches.out_of_attempts",
        "{batch}",
        "Failed batches with no attempt left (they wait for retry)",
        lambda s: s.out_of_attempts,
    ),
    (
        "pybatchintory.job.horizon.lag",
        "{id}",
        "PostgreSQL source: ids between the settled horizon and the highest visible id",
        lambda s: s.horizon_lag,
    ),
)
