"""What the observability calls return: plain frozen dataclasses with ``as_dict()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (timestamps in ISO 8601)."""
        return _plain(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Backlog(_AsDict):
    """What a job still has ahead of its cursor: matching items and their total weight
    (None when the source has no weight column)."""

    items: int
    weight: float | None


@dataclass(frozen=True)
class HorizonHolder(_AsDict):
    """A transaction that holds the horizon back: it may still make an id at or below
    the highest visible id visible. ``pid`` is None for a prepared transaction;
    ``query`` is the session's last statement where the role may see it."""

    virtual_transaction: str
    pid: int | None
    state: str | None
    transaction_start: datetime | None
    transaction_age_seconds: float | None
    query: str | None
    user: str | None
    application_name: str | None


@dataclass(frozen=True)
class HorizonReport(_AsDict):
    """The horizon of a job's PostgreSQL source table when the status was read.

    ``settled_id``: every id up to it that will ever be visible is visible (None: not
    known past what this process saw; with no writer open it is ``highest_visible_id``).
    ``held_by``: the writer transactions open when the status was read; ids up to
    ``highest_visible_id`` settle once they end.
    """

    settled_id: int | None
    highest_visible_id: int | None
    held_by: tuple[HorizonHolder, ...]


@dataclass(frozen=True)
class Forecast(_AsDict):
    """The backlog as batches and an ETA, at the pace of the job's recent history.

    The pace is measured on the succeeded batches among the job's last 100 (by range):
    ``weight_per_second`` and ``items_per_second`` of busy time (while at least one of
    them ran; idle gaps between runs do not count), ``concurrency`` (how many ran at
    once on average), ``mean_batch_seconds``. ``batches``: the backlog over the mean
    batch (``basis`` ``"history"``), or over the budget when the job has no history
    (``"budget"``). ``eta_seconds``/``finishes_at``: the backlog at that pace, with as
    many workers as recently (None without history or backlog). New ranges only:
    retries come on top."""

    sample_batches: int
    weight_per_second: float | None
    items_per_second: float | None
    concurrency: float | None
    mean_batch_seconds: float | None
    batches: int | None
    eta_seconds: float | None
    finishes_at: datetime | None
    basis: str


@dataclass(frozen=True)
class JobStatus(_AsDict):
    """A job's state: its source, cursor, batches by status and its backlog.

    Batch counts cover the current generation (since the last reset); ``superseded``
    counts the batches of earlier generations, kept as history. ``backlog`` is None
    when it cannot be computed safely; ``backlog_note`` then says why. ``horizon``
    (a PostgreSQL source table whose id sequence allows it) explains a stalled job: how
    far ids are settled, the highest visible id, and the writer transactions between.
    """

    job_identifier: str
    source_kind: str
    source: str
    filter_text: str
    cursor: int | None
    generation: int
    created_at: datetime
    updated_at: datetime
    running: int
    running_weight: float
    succeeded: int
    succeeded_weight: float
    failed: int
    failed_weight: float
    retryable: int
    out_of_attempts: int
    superseded: int
    expired_leases: int
    oldest_running_start: datetime | None
    earliest_lease_expiry: datetime | None
    last_success_at: datetime | None
    frontier_batch_id: int | None
    backlog: Backlog | None
    backlog_note: str | None
    definition: dict[str, Any] | None = None
    """The job's stored definition (source, columns, filter, budget, window, ...)."""
    idle_reason: str | None = None
    """Why the next acquisition would hand out nothing new, if it would: the window is
    done, the upstream frontier holds it back, the horizon holds it back, or nothing
    new (retries aside)."""
    horizon: HorizonReport | None = None
    """PostgreSQL table sources: the exact horizon and what holds it (docs/design-horizon.md)."""
    released: int = 0
    """Batches handed back unprocessed (``release()``, Ctrl-C, an operator): no failure,
    no attempt used; the next acquisition takes them again."""
    next_retry_at: datetime | None = None
    """When the first failed batch with attempts left is due again (retry backoff; in the
    past: due now). None when none waits or none has a backoff."""
    paused_at: datetime | None = None
    """Set while the job is paused: acquisitions hand out nothing."""
    pause_reason: str | None = None
    forecast: Forecast | None = None
    """The backlog as batches and an ETA at the job's recent pace (see :class:`Forecast`)."""


@dataclass(frozen=True)
class JobSummary(_AsDict):
    """One line per job: its source, cursor and unfinished batches."""

    job_identifier: str
    source_kind: str
    source: str
    cursor: int | None
    generation: int
    running: int
    failed: int
    out_of_attempts: int
    updated_at: datetime
    summary: str


@dataclass(frozen=True)
class AttemptLog(_AsDict):
    """One attempt of a batch, from the log table."""

    attempt: int
    status: str
    processing_start: datetime
    processing_end: datetime | None
    worker: str | None
    logging: str | None


@dataclass(frozen=True)
class TraceEntry(_AsDict):
    """A batch that covered the traced item.

    ``depth`` 0 is a job reading the metadata table; depth 1 a job consuming that job's
    batches (``via_batch_id`` is the upstream batch that carried the item), and so on.

    A batch's range covering the id does not make the item part of it when the job has
    a filter. ``verified`` is True when the item was checked against the job's own
    filter (a mapping, stored as data) on the metadata table, or the job has none;
    False when only the SQL text of an expression filter is known, or the metadata
    database could not be read (``note`` says which). Jobs whose filter excludes the
    item are not listed.
    """

    job_identifier: str
    batch_id: int
    generation: int
    depth: int
    via_batch_id: int | None
    range_start: int
    range_end: int
    status: str
    attempt: int
    max_attempts: int
    processing_start: datetime
    processing_end: datetime | None
    worker: str | None
    result: Any
    attempts: tuple[AttemptLog, ...]
    verified: bool = True
    note: str | None = None


@dataclass(frozen=True)
class ResetResult(_AsDict):
    """What a reset did: the cursor's move, the new generation, and which unfinished
    batches were carried into it (wholly at or below ``to_id``: still to be finished)
    or superseded (their ids are processed again; a worker still on one loses it)."""

    job_identifier: str
    old_cursor: int | None
    new_cursor: int | None
    generation: int
    carried: tuple[int, ...]
    superseded: tuple[int, ...]
    kept: int = 0
    """Succeeded batches wholly at or below ``to_id``, carried into the new generation:
    their ids stand and are not processed again."""
    changed: bool = True
    """False for a reset to where the cursor already is: nothing was written."""
    dry_run: bool = False
    """True: what the reset would do; nothing was written (``generation`` is the one it
    would make)."""


@dataclass(frozen=True)
class CoverageSegment(_AsDict):
    """Consecutive ids of a job's window in one state.

    ``state``: ``succeeded``, ``running``, ``retry_wait`` (failed, attempts left: handed
    out again once its retry backoff is over), ``out_of_attempts`` (failed for good until
    ``retry``), ``released`` (handed back unprocessed: taken again at once) or ``not_taken`` (no batch of the generation covers these ids: after the
    cursor, or a gap below it). ``batches``, ``items`` and ``weight`` sum the batches
    in the segment (0 for ``not_taken``)."""

    state: str
    range_start: int
    range_end: int
    batches: int
    items: int
    weight: float


@dataclass(frozen=True)
class Coverage(_AsDict):
    """A job's id window as range-compressed segments, each id in exactly one state.

    ``id_start``/``id_end`` is the window covered (None when the job and its source have
    no id at all); ``segments`` cover it without gap, in id order, adjacent segments
    never in the same state."""

    job_identifier: str
    generation: int
    cursor: int | None
    id_start: int | None
    id_end: int | None
    segments: tuple[CoverageSegment, ...]


@dataclass(frozen=True)
class DiffSegment(_AsDict):
    """Ids one job succeeded on and the other has not: ``other_state`` is the other
    job's state there (see :class:`CoverageSegment`)."""

    range_start: int
    range_end: int
    other_state: str


@dataclass(frozen=True)
class CoverageDiff(_AsDict):
    """Two jobs over one source, compared on one window: ``only_a`` the ids that job
    ``a`` succeeded on and ``b`` has not, ``only_b`` the reverse."""

    a: str
    b: str
    id_start: int | None
    id_end: int | None
    only_a: tuple[DiffSegment, ...]
    only_b: tuple[DiffSegment, ...]


@dataclass(frozen=True)
class PlannedBatch(_AsDict):
    """A batch the next acquisition would hand out (nothing is taken).

    ``kind``: ``retry`` (a failed batch with attempts left, its backoff over),
    ``released`` (handed back unprocessed), ``expired`` (a running
    batch whose lease ran out) or ``new`` (a range planned after the cursor, with the
    job's budget). ``batch_id`` is None for a new range; ``attempt`` is the attempt it
    would be."""

    kind: str
    batch_id: int | None
    range_start: int
    range_end: int
    item_count: int
    weight: float
    attempt: int


@dataclass(frozen=True)
class BatchInfo(_AsDict):
    """One batch of a job, as ``batches`` lists it.

    ``status``: ``running``, ``succeeded``, ``failed`` or ``released`` (handed back
    unprocessed: no attempt used, no failure). ``retry_after``: when a failed batch with
    attempts left is due again (None: at once). ``last_log``: the text of its last
    attempt's log row (a failure's error and traceback, a release's reason)."""

    id: int
    job_identifier: str
    generation: int
    range_start: int
    range_end: int
    status: str
    attempt: int
    max_attempts: int
    item_count: int
    weight: float
    worker: str | None
    processing_start: datetime
    processing_end: datetime | None
    lease_expires_at: datetime | None
    retry_after: datetime | None
    last_log: str | None
