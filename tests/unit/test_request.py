"""make_request: every acquisition argument is checked before any I/O (no database)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pybatchintory import InvalidArgumentError, Settings
from pybatchintory._request import AcquireRequest, make_request, resolve_job_identifier

SETTINGS = Settings(_env_file=None, max_attempts=3, lease_seconds=600)


def request(**overrides: Any) -> AcquireRequest:
    arguments: dict[str, Any] = {
        "source_table": "meta",
        "source_job": None,
        "job_identifier": "job",
        "job_identifer": None,
        "weight": None,
        "max_items": None,
        "id_start": None,
        "id_end": None,
        "filter": None,
        "id_column": "id",
        "weight_column": "weight",
        "item_columns": None,
        "max_attempts": None,
        "lease_seconds": None,
        "load_items": True,
        **overrides,
    }
    return make_request(SETTINGS, **arguments)


def test_defaults_come_from_the_settings() -> None:
    checked = request()
    assert checked.job_identifier == "job" and checked.source_table == "meta"
    assert (checked.weight, checked.max_items, checked.window) == (None, None, (None, None))
    assert (checked.max_attempts, checked.lease_seconds) == (3, 600)
    assert checked.item_columns is None and checked.load_items is True


def test_valid_values_are_normalised() -> None:
    checked = request(
        weight=10, max_items=5, id_start=10, id_end=50, item_columns=["id", "uri"],
        max_attempts=1, lease_seconds=30, load_items=0,
    )
    assert checked.weight == 10.0 and isinstance(checked.weight, float)
    assert checked.max_items == 5 and checked.window == (10, 50)
    assert checked.item_columns == ("id", "uri")
    assert (checked.max_attempts, checked.lease_seconds, checked.load_items) == (1, 30, False)


def test_an_infinite_weight_means_unbounded() -> None:
    assert request(weight=math.inf).weight is None


def test_a_one_id_window_is_allowed() -> None:
    assert request(id_start=7, id_end=7).window == (7, 7)


def test_job_identifer_is_an_alias() -> None:
    assert request(job_identifier=None, job_identifer="spec_job").job_identifier == "spec_job"
    assert request(job_identifier="same", job_identifer="same").job_identifier == "same"
    assert resolve_job_identifier(None, "x") == "x"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_identifier": None}, "job_identifier is required"),
        ({"job_identifier": "a", "job_identifer": "b"}, "name different jobs"),
        ({"job_identifier": "  "}, "job_identifier must be a non-empty string"),
        ({"job_identifier": 12}, "job_identifier must be a non-empty string"),
        ({"job_identifier": "x" * 256}, "job_identifier must be at most 255"),
        ({"job_identifier": "line\nbreak"}, "job_identifier must be at most 255 printable"),
        ({"source_table": None}, "pass exactly one source"),
        ({"source_job": "upstream"}, "pass exactly one source"),
        ({"source_table": None, "source_job": "job"}, "cannot consume its own batches"),
        ({"source_table": ""}, "source_table must be a non-empty string"),
        ({"id_start": 51, "id_end": 50}, r"id_start \(51\) is greater than id_end \(50\)"),
        ({"id_start": 1.5}, "id_start must be an integer"),
        ({"id_end": "50"}, "id_end must be an integer"),
        ({"id_start": True}, "id_start must be an integer"),
        ({"weight": 0}, "weight must be > 0"),
        ({"weight": -2}, "weight must be > 0"),
        ({"weight": math.nan}, "weight must be a number"),
        ({"weight": "10"}, "weight must be a number"),
        ({"weight": True}, "weight must be a number"),
        ({"max_items": 0}, "max_items must be > 0"),
        ({"max_items": -1}, "max_items must be > 0"),
        ({"max_items": 3.0}, "max_items must be an integer"),
        ({"max_items": False}, "max_items must be an integer"),
        ({"max_attempts": 0}, "max_attempts must be > 0"),
        ({"lease_seconds": 0}, "lease_seconds must be > 0"),
        ({"lease_seconds": math.inf}, "lease_seconds must be finite"),
        ({"id_column": ""}, "id_column must be a non-empty string"),
        ({"weight_column": ""}, "weight_column must be a non-empty string"),
        ({"item_columns": "id"}, "item_columns must be a list of column names"),
        ({"item_columns": []}, "item_columns must name at least one column"),
        ({"item_columns": ["id", None]}, "item column must be a non-empty string"),
    ],
)
def test_a_bad_argument_is_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        request(**overrides)


def test_invalid_argument_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        request(weight=0)


def test_weight_column_none_means_every_item_weighs_one() -> None:
    assert request(weight_column=None).weight_column is None
