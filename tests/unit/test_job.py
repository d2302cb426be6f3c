"""Job: every field is checked when a job is made, before any I/O (no database)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from pybatchintory import InvalidArgumentError, InvalidFilterError, Job
from pybatchintory.job import job_definition, job_from_definition, resolve_job


def job(**overrides: Any) -> Job:
    return Job("job", **{"source_table": "meta", **overrides})


def test_defaults() -> None:
    made = job()
    assert made.job_identifier == made.name == "job" and made.source_table == "meta"
    assert (made.weight, made.max_items, made.window) == (None, None, (None, None))
    # None: the settings decide (max_attempts 3, lease 600 s by default)
    assert (made.max_attempts, made.lease_seconds) == (None, None)
    assert (made.id_column, made.weight_column, made.item_columns) == ("id", "weight", None)


def test_the_name_comes_first_and_every_other_field_is_a_keyword() -> None:
    assert Job("convert", source_table="raw_files", weight=10).weight == 10.0
    with pytest.raises(TypeError):
        Job("convert", "raw_files")  # type: ignore[misc]


def test_valid_values_are_normalised() -> None:
    made = job(
        weight=10,
        max_items=5,
        id_start=10,
        id_end=50,
        item_columns=["id", "uri"],
        max_attempts=1,
        lease_seconds=30,
    )
    assert made.weight == 10.0 and isinstance(made.weight, float)
    assert made.max_items == 5 and made.window == (10, 50)
    assert made.item_columns == ("id", "uri")
    assert (made.max_attempts, made.lease_seconds) == (1, 30.0)


def test_an_infinite_weight_means_unbounded() -> None:
    assert job(weight=math.inf).weight is None


def test_a_one_id_window_is_allowed() -> None:
    assert job(id_start=7, id_end=7).window == (7, 7)


def test_a_job_is_frozen_and_varied_with_replace_or_overrides() -> None:
    made = job(weight=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.weight = 5  # type: ignore[misc]
    assert dataclasses.replace(made, weight=5).weight == 5.0
    assert made.with_options(weight=5, id_end=9).window == (None, 9)
    with pytest.raises(InvalidArgumentError, match="weight must be > 0"):
        dataclasses.replace(made, weight=-1)


def test_an_override_of_the_source_is_refused_with_the_way_out() -> None:
    with pytest.raises(InvalidArgumentError, match=r"may override only .*dataclasses.replace"):
        job().with_options(filter={"kind": "a"})


def test_a_misspelled_keyword_names_the_closest_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'wieght' \(did you mean 'weight'\?\)"):
        resolve_job(None, "job", {"source_table": "meta", "wieght": 10})
    with pytest.raises(InvalidArgumentError, match=r"'wieght' \(did you mean 'weight'\?\)"):
        resolve_job(job(), None, {"wieght": 10})


def test_the_flat_form_builds_the_same_job() -> None:
    flat = resolve_job("meta", None, {"job_identifer": "job", "weight": 10, "item_columns": ["id"]})
    assert flat == job(weight=10, item_columns=("id",))
    assert resolve_job(None, None, {"source_table": "meta", "job_identifier": "job"}) == job()


def test_job_identifer_is_an_alias() -> None:
    assert resolve_job("meta", None, {"job_identifer": "spec_job"}).job_identifier == "spec_job"
    assert resolve_job("meta", "same", {"job_identifer": "same"}).job_identifier == "same"
    with pytest.raises(InvalidArgumentError, match="name different jobs"):
        resolve_job("meta", "a", {"job_identifer": "b"})
    with pytest.raises(InvalidArgumentError, match="job_identifier is required"):
        resolve_job("meta", None, {})


def test_a_job_passed_with_a_name_besides_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="pass a Job alone"):
        resolve_job(job(), "other", {})


def test_a_mapping_filter_is_canonical_whatever_its_order() -> None:
    one = job(filter={"kind": "a", "colour": "red", "size": {3, 1, 2}})
    other = job(filter={"size": [1, 2, 3], "colour": "red", "kind": "a"})
    assert one == other and hash(one) == hash(other)
    assert job_definition(one) == job_definition(other)
    assert list(one.filter) == ["colour", "kind", "size"]  # type: ignore[arg-type]


def test_the_definition_round_trips() -> None:
    made = job(
        weight=10.5,
        max_items=7,
        id_start=3,
        id_end=99,
        weight_column="size_bytes",
        item_columns=("id", "uri"),
        max_attempts=5,
        lease_seconds=60,
        filter={"kind": ["a", "b"], "region": None},
    )
    rebuilt, kind = job_from_definition("job", job_definition(made))
    assert kind == "mapping" and rebuilt == made
    assert json.loads(job_definition(made))["weight_column"] == "size_bytes"


def test_a_time_window_round_trips_in_utc_and_leaves_other_definitions_alone() -> None:
    from datetime import datetime, timedelta, timezone

    paris = timezone(timedelta(hours=1))
    made = job(
        time_column="created_at",
        since=datetime(2024, 3, 1, 1, tzinfo=paris),
        until=datetime(2024, 4, 1, tzinfo=timezone.utc),
    )
    assert made.since == datetime(2024, 3, 1, tzinfo=timezone.utc)  # stored in UTC
    assert made == job(
        time_column="created_at",
        since=datetime(2024, 3, 1, tzinfo=timezone.utc),
        until=datetime(2024, 4, 1, 2, tzinfo=timezone(timedelta(hours=2))),
    )
    data = json.loads(job_definition(made))
    assert (data["time_column"], data["since"], data["until"]) == (
        "created_at",
        "2024-03-01T00:00:00+00:00",
        "2024-04-01T00:00:00+00:00",
    )
    rebuilt, _ = job_from_definition("job", job_definition(made))
    assert rebuilt == made
    # A job without a time column stores the same definition as before time windows.
    assert "since" not in json.loads(job_definition(job()))


def test_an_expression_filter_is_stored_as_its_kind_only() -> None:
    import sqlalchemy as sa

    made = job(filter=sa.text("kind = 'a'"))
    rebuilt, kind = job_from_definition("job", job_definition(made))
    assert kind == "expression" and rebuilt.filter is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_identifier": "  "}, "job_identifier must be a non-empty string"),
        ({"job_identifier": 12}, "job_identifier must be a non-empty string"),
        ({"job_identifier": "x" * 256}, "job_identifier must be at most 255"),
        ({"job_identifier": "line\nbreak"}, "job_identifier must be at most 255 printable"),
        (
            {"job_identifier": "lone \ud800 surrogate"},
            "job_identifier must be at most 255 printable",
        ),
        ({"source_table": None}, "pass exactly one source"),
        ({"source_job": "upstream"}, "pass exactly one source"),
        ({"source_table": None, "source_job": "job"}, "cannot consume its own batches"),
        (
            {"source_table": None, "source_job": "up", "weight_column": "w"},
            "apply to a source table",
        ),
        ({"source_table": ""}, "source_table must be a non-empty string"),
        ({"id_start": 51, "id_end": 50}, r"id_start \(51\) is greater than id_end \(50\)"),
        ({"id_start": 1.5}, "id_start must be an integer"),
        ({"id_end": "50"}, "id_end must be an integer"),
        ({"id_start": True}, "id_start must be an integer"),
        ({"id_end": 2**63}, "id_end must be a 64-bit integer id"),
        ({"weight": 0}, "weight must be > 0"),
        ({"weight": -2}, "weight must be > 0"),
        ({"weight": math.nan}, "weight must be > 0"),
        ({"weight": 10**400}, "weight is too large"),
        ({"weight": "10"}, "weight must be a number"),
        ({"weight": True}, "weight must be a number"),
        ({"max_items": 0}, "max_items must be > 0 and at most"),
        ({"max_items": -1}, "max_items must be > 0 and at most"),
        ({"max_items": 3.0}, "max_items must be an integer"),
        ({"max_items": False}, "max_items must be an integer"),
        ({"max_attempts": 0}, "max_attempts must be > 0 and at most"),
        ({"max_attempts": 2**40}, "max_attempts must be > 0 and at most 1000000"),
        ({"lease_seconds": 0}, "lease_seconds must be > 0"),
        ({"lease_seconds": math.inf}, "lease_seconds must be a finite number"),
        ({"lease_seconds": 1e12}, "lease_seconds must be a finite number of seconds up to"),
        ({"settle_column": "created_at"}, "settle_column and settle_seconds go together"),
        ({"settle_seconds": 5}, "settle_column and settle_seconds go together"),
        ({"id_column": ""}, "id_column must be a non-empty string"),
        ({"weight_column": ""}, "weight_column must be a non-empty string"),
        ({"item_columns": "id"}, "item_columns must be a list of column names"),
        ({"item_columns": []}, "item_columns must name at least one column"),
        ({"item_columns": ["id", None]}, "item column must be a non-empty string"),
    ],
)
def test_a_bad_field_is_named(overrides: dict[str, Any], message: str) -> None:
    fields = {"job_identifier": "job", "source_table": "meta", **overrides}
    name = fields.pop("job_identifier")
    with pytest.raises(InvalidArgumentError, match=message):
        Job(name, **fields)


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ("kind = 'a'", "plain string is refused"),
        ({"kind": {1, "a"}}, "mix types that cannot be ordered"),
        ({"kind": {"nested": 1}}, "is a mapping"),
        ({"kind": []}, "empty IN matches nothing"),
        ({1: "a"}, "filter keys must be column names"),
    ],
)
def test_a_bad_filter_is_named(filter: Any, message: str) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        job(filter=filter)


def test_invalid_argument_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        job(weight=0)


def test_the_keyword_form_reuses_the_job_of_identical_calls() -> None:
    # Its definition and source are cached by identity: a loop of identical calls must
    # not build and check a new Job each time (benchmarks/floor.py).
    args = {"source_table": "meta", "job_identifier": "reuse", "weight": 10}
    first = resolve_job(None, None, args)
    assert resolve_job(None, None, dict(args)) is first
    assert resolve_job(None, None, {**args, "weight": 11}) is not first
    # A value equal to another of another type is no shortcut past the checks.
    assert resolve_job(None, None, {**args, "max_items": 1}).max_items == 1
    with pytest.raises(InvalidArgumentError, match="max_items"):
        resolve_job(None, None, {**args, "max_items": True})
    # Unhashable arguments are built every time, and still equal.
    filtered = {**args, "filter": {"category": ["a", "b"]}}
    assert resolve_job(None, None, filtered) == resolve_job(None, None, filtered)
