"""Validation of acquisition arguments: pure, so that bad input fails before any I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

from ._source import Filter
from .config import Settings
from .exceptions import InvalidArgumentError

__all__ = ["AcquireRequest", "make_request", "resolve_job_identifier"]

_MAX_NAME = 255


@dataclass(frozen=True)
class AcquireRequest:
    """The checked arguments of one acquisition."""

    job_identifier: str
    source_table: str | None
    source_job: str | None
    weight: float | None
    max_items: int | None
    id_start: int | None
    id_end: int | None
    filter: Filter
    id_column: str
    weight_column: str | None
    item_columns: tuple[str, ...] | None
    max_attempts: int
    lease_seconds: float
    load_items: bool
    settle_column: str | None = None
    settle_seconds: float | None = None
    horizon: Literal["exact"] | None = "exact"  # issue 10: see _horizon.py

    @property
    def window(self) -> tuple[int | None, int | None]:
        return self.id_start, self.id_end


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_NAME or any(ord(ch) < 32 for ch in value):
        raise InvalidArgumentError(
            f"{what} must be at most {_MAX_NAME} printable characters, got {value[:40]!r}..."
        )
    return value


def resolve_job_identifier(job_identifier: str | None, job_identifer: str | None) -> str:
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


def _positive_number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise InvalidArgumentError(f"{what} must be a number > 0 or None, got {value!r}")
    if value <= 0:
        raise InvalidArgumentError(
            f"{what} must be > 0 (None means unbounded), got {value!r}"
        )
    return None if math.isinf(float(value)) else float(value)


def positive_int(value: Any, what: str) -> int | None:
    """``value`` as an int > 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an integer > 0 or None, got {value!r}")
    if value <= 0:
        raise InvalidArgumentError(f"{what} must be > 0 (None means unbounded), got {value!r}")
    return value


def _required_int(value: Any, what: str) -> int:
    checked = positive_int(value, what)
    assert checked is not None  # value was not None
    return checked


def _optional_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an integer id or None, got {value!r}")
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


def make_request(
    settings: Settings,
    *,
    source_table: str | None,
    source_job: str | None,
    job_identifier: str | None,
    job_identifer: str | None,
    weight: float | None,
    max_items: int | None,
    id_start: int | None,
    id_end: int | None,
    filter: Filter,
    id_column: str,
    weight_column: str | None,
    item_columns: Iterable[str] | None,
    max_attempts: int | None,
    lease_seconds: float | None,
    load_items: bool,
    settle_column: str | None = None,
    settle_seconds: float | None = None,
    horizon: Literal["exact"] | None = "exact",
) -> AcquireRequest:
    """Check every argument; raise InvalidArgumentError naming the first bad one."""
    job = resolve_job_identifier(job_identifier, job_identifer)
    if (source_table is None) == (source_job is None):
        raise InvalidArgumentError(
            "pass exactly one source: source_table='table' (or 'schema.table'), or "
            "source_job='upstream job' to consume another job's succeeded batches"
        )
    if source_table is not None:
        _name(source_table, "source_table")
    if source_job is not None:
        _name(source_job, "source_job")
        if source_job == job:
            raise InvalidArgumentError(f"job {job!r} cannot consume its own batches")
        if (id_column, weight_column, item_columns) != ("id", "weight", None):
            raise InvalidArgumentError(
                "id_column, weight_column and item_columns apply to a source table; a "
                "source job's items are its upstream batches (id, weight, result, ...)"
            )
    start = _optional_int(id_start, "id_start")
    end = _optional_int(id_end, "id_end")
    if start is not None and end is not None and start > end:
        raise InvalidArgumentError(f"id_start ({start}) is greater than id_end ({end})")
    attempts = settings.max_attempts if max_attempts is None else _required_int(max_attempts, "max_attempts")
    lease = settings.lease_seconds if lease_seconds is None else _positive_number(lease_seconds, "lease_seconds")
    if lease is None:
        raise InvalidArgumentError("lease_seconds must be finite")
    settle = _positive_number(settle_seconds, "settle_seconds")
    if (settle_column is None) != (settle is None):
        raise InvalidArgumentError(
            "settle_column and settle_seconds go together: the timestamp column of the "
            "source and how long a new row may take to become visible"
        )
    if settle_column is not None and source_job is not None:
        raise InvalidArgumentError(
            "settle_column applies to a source table; a source job's batches need none"
        )
    if horizon not in ("exact", None):
        raise InvalidArgumentError(f"horizon must be 'exact' or None, got {horizon!r}")
    return AcquireRequest(
        # a settle lag chosen, or a job source (bounded by its upstream's frontier): no horizon
        horizon=None if settle is not None or source_job is not None else horizon,
        settle_column=None if settle_column is None else _name(settle_column, "settle_column"),
        settle_seconds=settle,
        job_identifier=job,
        source_table=source_table,
        source_job=source_job,
        weight=_positive_number(weight, "weight"),
        max_items=positive_int(max_items, "max_items"),
        id_start=start,
        id_end=end,
        filter=filter,
        id_column=_name(id_column, "id_column"),
        weight_column=None if weight_column is None else _name(weight_column, "weight_column"),
        item_columns=_columns(item_columns),
        max_attempts=attempts,
        lease_seconds=lease,
        load_items=bool(load_items),
    )
