"""A batch: a contiguous id range of one job, owned by one worker for one attempt."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from . import _metrics
from ._backend import BatchRecord, Outcome
from ._engines import complete_despite_cancellation
from ._source import Source
from .exceptions import (
    BackendError,
    BatchLostError,
    BatchStateError,
    InvalidArgumentError,
    InventoryNotOpenError,
)

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["Batch"]

logger = logging.getLogger("pybatchintory")
T = TypeVar("T")
_MAX_LOG_TEXT = 64 * 1024
_MAX_BACKOFF_SECONDS = 3600.0
# What ends a body without it having failed: the batch is released, not failed.
_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def backoff_seconds(base: float, attempt: int) -> float:
    """How long a batch that failed its ``attempt`` waits before it is handed out again:
    ``base`` doubled with each attempt, at most an hour, with "equal jitter" (between
    half and all of that) so that batches failed together do not return together."""
    if base <= 0:
        return 0.0
    ceiling = min(base * 2.0 ** min(attempt - 1, 62), _MAX_BACKOFF_SECONDS)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def error_text(exc_or_text: BaseException | str) -> str:
    """The message and traceback of an exception, or the given text, for the log row."""
    if isinstance(exc_or_text, BaseException):
        text = "".join(traceback.format_exception(exc_or_text))
    else:
        text = str(exc_or_text)
    if len(text) > _MAX_LOG_TEXT:  # keep the end: the traceback's last frames matter most
        text = "…" + text[-_MAX_LOG_TEXT:]
    return text


class Batch:
    """One attempt at a contiguous range ``[range_start, range_end]`` of a job's source.

    A batch holds ids and a reference to its inventory, never a connection: it may be
    finished an hour later, from another task. ``async with batch:`` renews the lease
    while the body runs, then records success, or the failure and re-raises.
    """

    def __init__(
        self,
        backend: Backend,
        record: BatchRecord,
        source: Source,
        lease_seconds: float,
        retry_delay: float = 0.0,
    ) -> None:
        self._backend = backend
        self._source = source
        self._lease_seconds = lease_seconds
        self._retry_delay = retry_delay  # the backoff's base: see backoff_seconds
        self._items: list[dict[str, Any]] | None = None  # set by the acquisition
        self._renewal: asyncio.Task[None] | None = None
        self.id: int = record.id
        self.job_identifier: str = record.job_identifier
        self.range_start: int = record.range_start
        self.range_end: int = record.range_end
        self.item_count: int = record.item_count
        self.weight: float = record.weight
        self.attempt: int = record.attempt
        self.max_attempts: int = record.max_attempts
        self.lease_expires_at: datetime = record.lease_expires_at
        self.status: str = "running"
        self.result: dict[str, Any] | None = None
        self._started = _metrics.clock()  # for the processing time (docs/metrics.md)

    def __repr__(self) -> str:
        return (
            f"<Batch {self.id} of {self.job_identifier!r} ids {self.range_start}..{self.range_end} "
            f"items={self.item_count} weight={self.weight:g} attempt={self.attempt} {self.status}>"
        )

    @property
    def items(self) -> list[dict[str, Any]]:
        """The rows of the range, as dicts, loaded at acquisition."""
        if self._items is None:
            raise BatchStateError(
                f"the items of batch {self.id} were not loaded (load_items=False); "
                "stream them with iter_items()"
            )
        return self._items

    async def iter_items(self, chunk_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Stream the rows of the range through a server-side cursor, ``chunk_size`` at
        a time, without holding them all in memory."""
        async for chunk in self.iter_item_chunks(chunk_size):
            for row in chunk:
                yield row

    async def iter_item_chunks(self, chunk_size: int = 1000) -> AsyncIterator[list[dict[str, Any]]]:
        """Like :meth:`iter_items`, a list of up to ``chunk_size`` rows at a time."""
        if self._backend.closed:
            # Fix (issue 13, item 11): streaming reopened the disposed pool of a closed
            # inventory, and that connection then stayed open.
            raise InventoryNotOpenError(
                f"the items of batch {self.id} cannot be read: its inventory was closed"
            )
        async for chunk in self._source.stream(self.range_start, self.range_end, chunk_size):
            yield chunk

    # -- outcomes ------------------------------------------------------------------

    def _check_running(self, action: str) -> None:
        if self.status != "running":
            raise BatchStateError(f"cannot {action} batch {self.id}: it already {self.status}")

    async def success(self, result: Mapping[str, Any] | None = None) -> None:
        """Record this attempt as succeeded, with an optional JSON-able ``result``.

        Raises BatchLostError, recording nothing, if another worker took the batch over.
        """
        self._check_running("record success of")
        payload = None if result is None else _json_dict(result)
        await self._finish("succeeded", result=payload, text=None)
        self.result = payload
        if logger.isEnabledFor(logging.INFO):  # its fields cost more than the call
            logger.info("%s succeeded", self._describe(), extra=self._log_fields())

    async def error(self, exc_or_text: BaseException | str) -> None:
        """Record this attempt as failed, with the message and traceback in its log row.

        While attempts are left, the batch is handed out again once its retry backoff
        is over (``retry_delay_seconds``, doubling with each attempt, with jitter);
        meanwhile acquisitions hand out other ranges.
        """
        self._check_running("record failure of")
        await self._finish("failed", result=None, text=error_text(exc_or_text))

    async def release(self, reason: str = "released by its worker unprocessed") -> None:
        """Hand the batch back unprocessed: status ``released``, no attempt used, no
        failure counted; the next acquisition takes it again at once (for a worker
        shutting down before it starts)."""
        self._check_running("release")
        await self._finish("released", result=None, text=reason)

    async def _finish(self, outcome: Outcome, *, result: Any, text: str | None) -> None:
        # A cancelled caller: the write runs to its end (issue 13, item 2), and so does
        # the batch's own state, which must match what the inventory recorded.
        write = self._record_outcome(outcome, result, text)
        await complete_despite_cancellation(_metrics.outcome(self, write, outcome))

    async def _record_outcome(self, outcome: Outcome, result: Any, text: str | None) -> None:
        delay = backoff_seconds(self._retry_delay, self.attempt) if outcome == "failed" else 0.0
        max_attempts = await self._backend.finish(
            self.id, self.attempt, outcome=outcome, result=result, text=text, retry_delay=delay
        )
        self.status = outcome
        if outcome == "released":
            logger.info(
                "%s handed back unprocessed (released, no attempt used): %s",
                self._describe(),
                text,
                extra=self._log_fields(),
            )
        elif outcome == "failed":
            last = self.attempt >= max_attempts
            reason = (text or "").strip().splitlines()[-1:] or ["no reason given"]
            then = (
                "; it stays failed until retried"
                if last
                else f"; retried in {delay:.1f} s at the earliest"
            )
            logger.warning(
                "%s failed%s: %s%s",
                self._describe(),
                " on its last attempt" if last else "",
                reason[0],
                then,
                extra={**self._log_fields(), "error": reason[0], "retry_delay": delay},
            )

    async def heartbeat(self) -> None:
        """Renew the lease now (``async with`` does it in the background)."""
        self._check_running("renew the lease of")
        self.lease_expires_at = await self._backend.heartbeat(
            self.id, self.attempt, self._lease_seconds
        )

    async def process(
        self,
        func: Callable[..., T] | Callable[..., Awaitable[T]],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``func(batch.items, *args, **kwargs)`` under the lease: success on return,
        failure recorded and re-raised on an exception. A sync ``func`` runs in a worker
        thread, off the event loop. Returns what ``func`` returns.

        The specification's "version 2" of a worker: ``batch.process(process_func)`` is
        ``process_func(batch.items)`` inside try/except with success and error recorded.
        """
        call = functools.partial(func, self.items, *args, **(kwargs or {}))
        async with self:
            if inspect.iscoroutinefunction(func):
                return await call()  # type: ignore[misc,no-any-return]
            value = await anyio.to_thread.run_sync(call)
            if inspect.isawaitable(value):
                return await value  # type: ignore[no-any-return]
            return value  # type: ignore[return-value]

    # -- lease renewal and the context manager -------------------------------------

    def start_renewal(self) -> None:
        """Renew the lease in the background, every third of its length."""
        if self._renewal is None:
            self._renewal = asyncio.get_running_loop().create_task(self._renew_forever())

    async def stop_renewal(self) -> None:
        """Stop the background renewal and wait until it has stopped."""
        task, self._renewal = self._renewal, None
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)

    async def _renew_forever(self) -> None:
        interval = max(self._lease_seconds / 3, 0.05)
        while self.status == "running":
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except BatchLostError:
                logger.warning(
                    "%s lost its lease to another worker",
                    self._describe(),
                    extra=self._log_fields(),
                )
                return
            except InventoryNotOpenError:
                return
            except (BackendError, BatchStateError) as exc:
                # A passing outage: the lease may still hold; try again next interval.
                logger.warning(
                    "lease renewal of %s failed: %s",
                    self._describe(),
                    exc,
                    extra=self._log_fields(),
                )

    async def __aenter__(self) -> Batch:
        self._check_running("enter")
        self.start_renewal()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancellation arriving here must not leave the outcome unwritten.
        # (Fix, issue 3: an anyio CancelScope alone did not stop asyncio's own
        # task.cancel(); see complete_despite_cancellation.)
        await complete_despite_cancellation(self._record_exit(exc))

    async def _record_exit(self, exc: BaseException | None) -> None:
        await self.stop_renewal()
        if self.status != "running":  # the body recorded the outcome itself
            return
        if exc is None:
            await self.success()
            return
        try:
            if isinstance(exc, _INTERRUPTIONS):
                # Ctrl-C, sys.exit() or a cancelled task: the work was interrupted, not
                # failed; the batch goes back without using up an attempt.
                await self.release(f"interrupted by {type(exc).__name__} while being processed")
            else:
                await self.error(exc)
        except (BatchLostError, BackendError) as record_exc:
            # The body's exception matters more; say why it is not in the inventory.
            logger.error(
                "could not record the failure of %s: %s",
                self._describe(),
                record_exc,
                extra=self._log_fields(),
            )

    def _describe(self) -> str:
        return (
            f"batch {self.id} of job {self.job_identifier!r} "
            f"(ids {self.range_start}..{self.range_end}, attempt {self.attempt})"
        )

    def _log_fields(self) -> dict[str, Any]:
        return {
            "job": self.job_identifier,
            "batch_id": self.id,
            "range_start": self.range_start,
            "range_end": self.range_end,
            "attempt": self.attempt,
        }


def _json_dict(result: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        raise InvalidArgumentError(
            f"result must be a mapping of JSON-able values, got {type(result).__name__}"
        )
    try:
        # allow_nan=False: NaN and infinities are not JSON, and would be stored as such
        return json.loads(json.dumps(dict(result), allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"result is not JSON-able: {exc}") from None
