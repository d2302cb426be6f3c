"""A job: what one processing job consumes, and how, defined once.

A :class:`Job` is frozen and checked when it is made, so that bad input fails before
any I/O. Every entry point takes one; the flat keyword form of the specification
(``acquire_batch(source_table=..., job_identifer=..., weight=...)``) is the adapter
:func:`resolve_job`, which builds a Job from those keywords.

The inventory stores each job's definition (:func:`job_definition`), so that status,
backlog and the CLI need only the job's name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timezone
from numbers import Real
from typing import Any, Literal, TypedDict, Union

import sqlalchemy as sa

from .exceptions import InvalidArgumentError, InvalidFilterError

__all__ = [
    "Filter",
    "Job",
    "JobArguments",
    "JobOptions",
    "job_definition",
    "job_from_definition",
    "check_time_window",
    "job_name",
    "positive_int",
    "resolve_job",
    "time_bounds",
]

Filter = Union[
    Mapping[str, Any],
    sa.ColumnElement[bool],
    sa.TextClause,
    Callable[[sa.Table], Union[sa.ColumnElement[bool], sa.TextClause]],
    None,
]

_MAX_NAME = 255
_INT64 = (-(2**63), 2**63 - 1)
_MAX_ATTEMPTS = 1_000_000
_MAX_LEASE_SECONDS = 366 * 24 * 3600  # a year: longer is surely a unit mistake
# What one call may change on a job: its budget, window, lease and attempts.
_OPTIONS = (
    "weight",
    "max_items",
    "id_start",
    "id_end",
    "max_attempts",
    "lease_seconds",
    "retry_delay_seconds",
)
_MAX_RETRY_DELAY_SECONDS = 3600.0  # the backoff's ceiling too
# ... and its time window (docs/observability.md, time windows): an acquisition binds the
# job to it, as to its filter, since it decides which rows a range holds.
_TIME_OPTIONS = ("time_column", "since", "until")
_JSON_SCALARS = (str, int, float, bool, type(None))


class JobOptions(TypedDict, total=False):
    """Per-call overrides of a :class:`Job` (``inventory.acquire_batch(job, weight=5)``)."""

    weight: float | None
    max_items: int | None
    id_start: int | None
    id_end: int | None
    max_attempts: int | None
    lease_seconds: float | None
    retry_delay_seconds: float | None
    time_column: str | None
    since: datetime | None
    until: datetime | None


class JobArguments(JobOptions, total=False):
    """The flat keyword form of a job, besides ``source_table`` and ``job_identifier``."""

    source_job: str | None
    filter: Filter
    id_column: str
    weight_column: str | None
    weight_unit: Literal["bytes"] | None
    item_columns: Iterable[str] | None
    settle_column: str | None
    settle_seconds: float | None
    horizon: Literal["exact"] | None
    job_identifer: str | None


@dataclass(frozen=True, eq=False)
class Job:
    """One processing job: its name, its source, and how its batches are cut.

    ``Job("convert", source_table="raw_files", weight=10)``. Checked when made; raises
    :class:`~pybatchintory.InvalidArgumentError` naming the first bad field. Vary it per
    call with ``dataclasses.replace(job, ...)`` or the keyword overrides of
    :class:`JobOptions`.
    """

    job_identifier: str
    """The job's name: its cursor, batches and history are kept under it."""
    _: KW_ONLY
    source_table: str | None = None
    """The metadata table (``'table'`` or ``'schema.table'``); or give ``source_job``."""
    source_job: str | None = None
    """An upstream job whose succeeded batches are this job's items (recursion)."""
    weight: float | None = None
    """Budget: the most total weight per batch (None: unbounded). An item heavier than
    the budget forms a batch alone, so a job never gets stuck."""
    max_items: int | None = None
    """The most items per batch (None: unbounded)."""
    id_start: int | None = None
    """Lowest id to process (inclusive): with ``id_end``, a backfill window."""
    id_end: int | None = None
    """Highest id to process (inclusive); None: incremental, up to the newest id."""
    filter: Filter = None
    """Restricts the table to relevant items: a mapping ``{column: value}`` (a list or
    set means IN, None means IS NULL), a SQLAlchemy boolean expression, or a callable
    taking the reflected table and returning one. A mapping is stored with the job as
    data; an expression only as its SQL text."""
    id_column: str = "id"
    """The auto-increment integer id column."""
    weight_column: str | None = "weight"
    """The numeric weight column; None: every item weighs 1."""
    weight_unit: Literal["bytes"] | None = None
    """What a weight counts: ``"bytes"`` shows weights as KiB, MiB, GiB in status and
    the CLI; None, plain numbers."""
    item_columns: tuple[str, ...] | None = None
    """The columns loaded as ``batch.items`` (None: all)."""
    max_attempts: int | None = None
    """Attempts per batch before it stays failed (None: the setting, default 3)."""
    lease_seconds: float | None = None
    """How long a worker owns a batch without renewing it (None: the setting, 600 s)."""
    retry_delay_seconds: float | None = None
    """Retry backoff: a failed batch waits this long before it is handed out again,
    doubling with each attempt up to an hour, with jitter; 0 retries at once (None: the
    setting, 2 s)."""
    settle_column: str | None = None
    """A timestamp column of the source: with ``settle_seconds``, the job never plans
    past a row younger than that, so rows whose lower ids commit late are not skipped."""
    settle_seconds: float | None = None
    """How long a new row may take to become visible (see ``settle_column``)."""
    horizon: Literal["exact"] | None = "exact"
    """``"exact"`` (default): on PostgreSQL the job never plans past an id whose writer
    may still commit a lower one, with no lag to guess (docs/design-horizon.md). Off
    with a settle lag and for a source job; ``None`` plans up to the highest visible id."""
    time_column: str | None = None
    """A timestamp column of the source, for time windows (``since``/``until``)."""
    since: datetime | None = None
    """With ``time_column``: only rows whose time is at or after it (timezone-aware)."""
    until: datetime | None = None
    """With ``time_column``: only rows whose time is before it (timezone-aware). Like the
    filter, the window decides which rows are items: a job is bound to it."""

    def __post_init__(self) -> None:
        name = _name(self.job_identifier, "job_identifier")
        if (self.source_table is None) == (self.source_job is None):
            raise InvalidArgumentError(
                "pass exactly one source: source_table='table' (or 'schema.table'), or "
                "source_job='upstream job' to consume another job's succeeded batches"
            )
        if self.source_table is not None:
            _name(self.source_table, "source_table")
            if self.source_table.count(".") > 1:
                raise InvalidArgumentError(
                    f"source_table must be 'table' or 'schema.table', got {self.source_table!r}"
                )
        if self.source_job is not None:
            _name(self.source_job, "source_job")
            if self.source_job == name:
                raise InvalidArgumentError(f"job {name!r} cannot consume its own batches")
            if (self.id_column, self.weight_column, self.item_columns) != ("id", "weight", None):
                raise InvalidArgumentError(
                    "id_column, weight_column and item_columns apply to a source table; a "
                    "source job's items are its upstream batches (id, weight, result, ...)"
                )
            if self.settle_column is not None:
                raise InvalidArgumentError(
                    "settle_column applies to a source table; a source job's batches need none"
                )
        start = _optional_id(self.id_start, "id_start")
        end = _optional_id(self.id_end, "id_end")
        if start is not None and end is not None and start > end:
            raise InvalidArgumentError(f"id_start ({start}) is greater than id_end ({end})")
        since, until = check_time_window(self.time_column, self.since, self.until)
        if self.source_job is not None and self.time_column is not None:
            raise InvalidArgumentError(
                "time_column applies to a source table; a source job's items are its "
                "upstream batches (give the upstream job the time window)"
            )
        settle = _positive_number(self.settle_seconds, "settle_seconds")
        if (self.settle_column is None) != (settle is None):
            raise InvalidArgumentError(
                "settle_column and settle_seconds go together: the timestamp column of the "
                "source and how long a new row may take to become visible"
            )
        lease = _positive_number(self.lease_seconds, "lease_seconds")
        if self.lease_seconds is not None and (lease is None or lease > _MAX_LEASE_SECONDS):
            raise InvalidArgumentError(
                f"lease_seconds must be a finite number of seconds up to {_MAX_LEASE_SECONDS} "
                f"(a year), got {self.lease_seconds!r}"
            )
        delay = self.retry_delay_seconds
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not 0 <= delay <= _MAX_RETRY_DELAY_SECONDS
        ):
            raise InvalidArgumentError(
                "retry_delay_seconds must be a number of seconds from 0 (retry at once) to "
                f"{_MAX_RETRY_DELAY_SECONDS:g}, got {delay!r}"
            )
        normal = {
            "retry_delay_seconds": None if delay is None else float(delay),
            "weight": _positive_number(self.weight, "weight"),
            "max_items": positive_int(self.max_items, "max_items"),
            "max_attempts": positive_int(self.max_attempts, "max_attempts", _MAX_ATTEMPTS),
            "lease_seconds": lease,
            "settle_seconds": settle,
            "id_column": _name(self.id_column, "id_column"),
            "weight_column": _optional_name(self.weight_column, "weight_column"),
            "settle_column": _optional_name(self.settle_column, "settle_column"),
            "item_columns": _columns(self.item_columns),
            "filter": _canonical_filter(self.filter),
            "time_column": _optional_name(self.time_column, "time_column"),
            "since": since,
            "until": until,
        }
        if self.weight_unit not in ("bytes", None):
            raise InvalidArgumentError(
                f"weight_unit must be 'bytes' or None, got {self.weight_unit!r}"
            )
        if self.horizon not in ("exact", None):
            raise InvalidArgumentError(f"horizon must be 'exact' or None, got {self.horizon!r}")
        if settle is not None or self.source_job is not None:
            normal["horizon"] = None  # a settle lag replaces it; a job source needs none
        for key, value in normal.items():
            object.__setattr__(self, key, value)

    def _identity(self) -> tuple[Any, ...]:
        # A SQLAlchemy expression must not be compared with == (that builds SQL): an
        # expression filter is equal only to itself; a mapping filter by its content.
        filter = self.filter
        key = tuple(filter.items()) if isinstance(filter, Mapping) else ("object", id(filter))
        values = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "filter"]
        return (*values, key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        # A mapping filter is not hashable; the name and source identify a job enough.
        return hash((self.job_identifier, self.source_table, self.source_job))

    @property
    def name(self) -> str:
        """The job's name (``job_identifier``)."""
        return self.job_identifier

    @property
    def window(self) -> tuple[int | None, int | None]:
        """``(id_start, id_end)``."""
        return self.id_start, self.id_end

    def with_options(self, **options: Any) -> Job:
        """This job with the per-call overrides of :class:`JobOptions` applied."""
        if not options:
            return self
        allowed = _OPTIONS + _TIME_OPTIONS
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            fields = [f.name for f in dataclasses.fields(self)]
            raise InvalidArgumentError(
                f"{_unexpected(unknown, allowed + tuple(fields))}. A call may override only "
                f"{', '.join(allowed)}; for another source, filter or columns make another "
                "Job (dataclasses.replace(job, ...))"
            )
        return dataclasses.replace(self, **options)


_RESOLVED: dict[Hashable, Job] = {}
_RESOLVED_LIMIT = 256
_PLAIN = (str, int, float, bool, type(None), datetime)


def _plain(value: Any) -> bool:
    """A value whose repr says all of it: a scalar, or a list or tuple of names."""
    if isinstance(value, (list, tuple)):
        return all(type(v) is str for v in value)
    return type(value) in _PLAIN


def resolve_job(
    job_or_table: Job | str | None,
    job_identifier: str | None,
    arguments: Mapping[str, Any],
) -> Job:
    """The Job of a call: a :class:`Job` with overrides, or one built from the flat
    keyword form (``source_table``, ``job_identifier`` or ``job_identifer``, ...)."""
    if isinstance(job_or_table, Job):
        if job_identifier is not None or "job_identifer" in arguments:
            raise InvalidArgumentError(
                "pass a Job alone: its name is part of it (job_identifier is for the keyword form)"
            )
        return job_or_table.with_options(**arguments)
    if job_or_table is not None and not isinstance(job_or_table, str):
        raise InvalidArgumentError(
            f"expected a Job or a source table name, got {type(job_or_table).__name__}"
        )
    # The keyword form builds and checks a Job at every call; a loop of calls with the
    # same arguments gets the same Job back, whose definition and source are cached by
    # identity (about a tenth of an acquisition's Python time, benchmarks/floor.py).
    # Only for plain values, keyed by their repr (True is no 1, -0.0 no 0.0); a filter
    # or anything else is built every time.
    key: Hashable | None = None
    if all(_plain(v) for v in arguments.values()):
        key = (
            job_or_table,
            job_identifier,
            tuple((k, repr(arguments[k])) for k in sorted(arguments)),
        )
        resolved = _RESOLVED.get(key)
        if resolved is not None:
            return resolved
    job = _build_job(job_or_table, job_identifier, arguments)
    if key is not None:
        if len(_RESOLVED) >= _RESOLVED_LIMIT:
            _RESOLVED.clear()
        _RESOLVED[key] = job
    return job


def _build_job(
    job_or_table: str | None, job_identifier: str | None, arguments: Mapping[str, Any]
) -> Job:
    table: str | None = job_or_table
    arguments = dict(arguments)
    if "source_table" in arguments:
        if table is not None:
            raise InvalidArgumentError("source_table given twice (positionally and by keyword)")
        table = arguments.pop("source_table")
    alias = arguments.pop("job_identifer", None)
    if "job_identifier" in arguments:
        job_identifier = arguments.pop("job_identifier")
    name = _resolve_alias(job_identifier, alias)
    fields = {f.name for f in dataclasses.fields(Job)} - {"_", "job_identifier", "source_table"}
    unknown = sorted(set(arguments) - fields)
    if unknown:
        raise InvalidArgumentError(_unexpected(unknown, tuple(fields) + ("job_identifier",)))
    if "item_columns" in arguments and arguments["item_columns"] is not None:
        if isinstance(arguments["item_columns"], str):
            raise InvalidArgumentError(
                "item_columns must be a list of column names, not the string "
                f"{arguments['item_columns']!r}"
            )
        arguments["item_columns"] = tuple(arguments["item_columns"])
    return Job(name, source_table=table, **arguments)


def job_name(job: Job | str) -> str:
    """The name of ``job`` (a Job or a name), checked."""
    return job.job_identifier if isinstance(job, Job) else _name(job, "job_identifier")


# -- the stored definition ----------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # once per Job, not once per acquisition
def job_definition(job: Job) -> str:
    """The job's definition as stable JSON text, as the inventory stores it.

    A mapping filter of JSON values is stored as data, so it can be rebuilt exactly; any
    other filter only as the SQL text its binding records (``filter_text``).
    """
    data: dict[str, Any] = {
        "version": 1,
        "source_table": job.source_table,
        "source_job": job.source_job,
        "id_column": job.id_column,
        "weight_column": job.weight_column,
        "weight_unit": job.weight_unit,
        "item_columns": None if job.item_columns is None else list(job.item_columns),
        "filter": _filter_data(job.filter),
        "filter_kind": _filter_kind(job.filter),
        **{key: getattr(job, key) for key in _OPTIONS},
        "settle_column": job.settle_column,
        "settle_seconds": job.settle_seconds,
        "horizon": job.horizon,
    }
    if job.time_column is not None:
        # Only when set, so that a definition stored before time windows stays the same.
        data["time_column"] = job.time_column
        data["since"] = None if job.since is None else job.since.isoformat()
        data["until"] = None if job.until is None else job.until.isoformat()
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def job_from_definition(name: str, text: str) -> tuple[Job, str]:
    """The stored job and its filter's kind: ``'none'``, ``'mapping'`` (rebuilt exactly)
    or ``'expression'`` (not rebuilt: the Job has no filter; the stored SQL text is in
    the job's binding)."""
    data = json.loads(text)
    kind = data.get("filter_kind", "none")
    fields = {f.name for f in dataclasses.fields(Job)} - {"_", "job_identifier"}
    values = {key: data[key] for key in fields if key in data and key != "filter"}
    if values.get("item_columns") is not None:
        values["item_columns"] = tuple(values["item_columns"])
    for key in ("since", "until"):
        if values.get(key) is not None:
            values[key] = datetime.fromisoformat(values[key])
    job = Job(name, **values, filter=data.get("filter") if kind == "mapping" else None)
    return job, kind


def _filter_kind(filter: Filter) -> str:
    if filter is None or (isinstance(filter, Mapping) and not filter):
        return "none"
    if isinstance(filter, Mapping) and _filter_data(filter) is not None:
        return "mapping"
    return "expression"


def _filter_data(filter: Filter) -> dict[str, Any] | None:
    if not isinstance(filter, Mapping) or not filter:
        return None
    data: dict[str, Any] = {}
    for key, value in filter.items():
        if isinstance(value, (list, tuple, frozenset)):
            if not all(isinstance(v, _JSON_SCALARS) for v in value):
                return None
            data[key] = list(value)
        elif isinstance(value, _JSON_SCALARS):
            data[key] = value
        else:
            return None
    return data


# -- checks -------------------------------------------------------------------------------


def check_time_window(
    time_column: Any, since: Any, until: Any
) -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` checked (see :func:`time_bounds`), with a ``time_column``
    to apply them to."""
    lo, hi = time_bounds(since, until)
    if time_column is None and (lo, hi) != (None, None):
        raise InvalidArgumentError(
            "since/until need time_column: the source's timestamp column the time window "
            "applies to (time_column='created_at')"
        )
    _optional_name(time_column, "time_column")
    return lo, hi


def time_bounds(since: Any, until: Any) -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` checked (timezone-aware datetimes, ``since < until``), in UTC."""
    lo, hi = _moment(since, "since"), _moment(until, "until")
    if lo is not None and hi is not None and lo >= hi:
        raise InvalidArgumentError(
            f"since ({lo.isoformat()}) must be before until ({hi.isoformat()}): the window "
            "is [since, until), since included, until excluded"
        )
    return lo, hi


def _moment(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgumentError(
            f"{what} must be a timezone-aware datetime, got {type(value).__name__} {value!r}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{what} is a naive datetime ({value.isoformat()}): give its time zone, "
            "e.g. datetime(2024, 3, 1, tzinfo=timezone.utc)"
        )
    return value.astimezone(timezone.utc)


def _canonical_filter(filter: Filter) -> Filter:
    """A mapping filter with sorted keys and sets as sorted tuples, so that the same
    filter written in another order is the same job in every process."""
    if isinstance(filter, str):
        raise InvalidFilterError(
            "a filter given as a plain string is refused: wrap deliberate SQL in "
            "sqlalchemy.text(...), or pass a mapping {column: value}"
        )
    if not isinstance(filter, Mapping):
        return filter
    canonical: dict[str, Any] = {}
    for key in sorted(filter, key=str):
        if not isinstance(key, str) or not key:
            raise InvalidFilterError(f"filter keys must be column names, got {key!r}")
        value = filter[key]
        if isinstance(value, Mapping):
            raise InvalidFilterError(
                f"filter value for {key!r} is a mapping; give a value, a list of values "
                "(IN) or None (IS NULL), or use a SQLAlchemy expression"
            )
        if isinstance(value, (set, frozenset)):
            try:
                value = tuple(sorted(value))
            except TypeError:
                raise InvalidFilterError(
                    f"filter values for {key!r} mix types that cannot be ordered "
                    f"({sorted({type(v).__name__ for v in value})}); give values of one type"
                ) from None
        elif isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not value:
            raise InvalidFilterError(
                f"filter values for {key!r} are empty: an empty IN matches nothing"
            )
        canonical[key] = value
    return canonical


def _resolve_alias(job_identifier: Any, job_identifer: Any) -> str:
    """Accept the specification's spelling ``job_identifer`` as an alias."""
    if job_identifier is not None and job_identifer is not None:
        if job_identifier != job_identifer:
            raise InvalidArgumentError(
                "job_identifier and its alias job_identifer name different jobs "
                f"({job_identifier!r}, {job_identifer!r}); pass only one"
            )
    value = job_identifier if job_identifier is not None else job_identifer
    if value is None:
        raise InvalidArgumentError("job_identifier is required: the name of the processing job")
    return _name(value, "job_identifier")


def _unexpected(unknown: list[str], known: tuple[str, ...]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unexpected argument(s) {', '.join(parts)}"


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_NAME or any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise InvalidArgumentError(
            f"{what} must be at most {_MAX_NAME} printable characters, got {value[:40]!r}..."
        )
    return value


def _optional_name(value: Any, what: str) -> str | None:
    return None if value is None else _name(value, what)


def _positive_number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidArgumentError(f"{what} must be a number > 0 or None, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{what} is too large for a float: {value!r}") from None
    if math.isnan(number) or number <= 0:
        raise InvalidArgumentError(f"{what} must be > 0 (None means unbounded), got {value!r}")
    return None if math.isinf(number) else number


def positive_int(value: Any, what: str, most: int = _INT64[1]) -> int | None:
    """``value`` as an int in 1..``most``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an integer > 0 or None, got {value!r}")
    if not 0 < value <= most:
        raise InvalidArgumentError(
            f"{what} must be > 0 and at most {most} (None means unbounded), got {value!r}"
        )
    return value


def _optional_id(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an integer id or None, got {value!r}")
    if not _INT64[0] <= value <= _INT64[1]:
        raise InvalidArgumentError(f"{what} must be a 64-bit integer id, got {value}")
    return value


def _columns(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidArgumentError(
            f"item_columns must be a list of column names, not the string {value!r}"
        )
    columns = tuple(_name(c, "item column") for c in value)
    if not columns:
        raise InvalidArgumentError("item_columns must name at least one column, or be None")
    return columns
