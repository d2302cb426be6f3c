"""build_filter and filter_text: the user's filter as a bound SQL expression (no database)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pybatchintory import InvalidFilterError, UnknownColumnError
from pybatchintory._source import build_filter, filter_text

TABLE = sa.Table(
    "meta",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("category", sa.String),
    sa.Column("weight", sa.Float),
)


def compiled(expr: sa.ColumnElement[bool]) -> tuple[str, dict[str, Any]]:
    """The SQL text and its parameters, as the driver would receive them."""
    query = sa.select(TABLE.c.id).where(expr)
    result = query.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
    return str(result), dict(result.params)


@pytest.mark.parametrize("empty", [None, {}])
def test_no_filter_matches_everything(empty: Any) -> None:
    expr = build_filter(TABLE, empty)
    assert isinstance(expr, sa.True_)
    assert filter_text(expr, sqlite.dialect()) == ""


def test_a_mapping_value_is_a_bound_parameter_never_sql() -> None:
    hostile = "a' OR '1'='1"
    sql, params = compiled(build_filter(TABLE, {"category": hostile}))
    assert "OR" not in sql.split("WHERE", 1)[1]
    assert list(params.values()) == [hostile]


def test_a_list_tuple_or_set_becomes_in_with_each_value_bound() -> None:
    for values in (["b", "a"], ("b", "a"), {"b", "a"}, frozenset({"a", "b"})):
        sql, params = compiled(build_filter(TABLE, {"category": values}))
        assert " IN (" in sql
        assert sorted(params.values()) == ["a", "b"]


def test_several_keys_are_combined_with_and_and_none_means_is_null() -> None:
    sql, params = compiled(build_filter(TABLE, {"category": None, "weight": 2.5}))
    where = sql.split("WHERE", 1)[1]
    assert "meta.category IS NULL" in where and " AND " in where
    assert list(params.values()) == [2.5]


@pytest.mark.parametrize("key", ["kind", "category; DROP TABLE meta", 3, ("category",)])
def test_an_unknown_filter_column_is_named(key: Any) -> None:
    with pytest.raises(UnknownColumnError, match="filter column"):
        build_filter(TABLE, {key: "x"})


@pytest.mark.parametrize("bad", ["category = 'a'", "1=1; DROP TABLE meta"])
def test_a_plain_string_is_refused(bad: str) -> None:
    with pytest.raises(InvalidFilterError, match=r"sqlalchemy\.text"):
        build_filter(TABLE, bad)


@pytest.mark.parametrize("bad", [42, b"category = 'a'", ["category"], object()])
def test_other_types_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidFilterError, match="not supported"):
        build_filter(TABLE, bad)


def test_a_callable_receives_the_table_and_its_result_is_checked_too() -> None:
    seen: list[sa.Table] = []

    def light(table: sa.Table) -> sa.ColumnElement[bool]:
        seen.append(table)
        return table.c.weight < 2

    sql, params = compiled(build_filter(TABLE, light))
    assert seen == [TABLE] and "meta.weight <" in sql and list(params.values()) == [2]
    with pytest.raises(InvalidFilterError):
        build_filter(TABLE, lambda table: "weight < 2")


def test_expressions_and_text_clauses_are_accepted() -> None:
    expr = TABLE.c.category.in_(["a"])
    assert build_filter(TABLE, expr) is expr
    sql, _ = compiled(build_filter(TABLE, sa.text("weight > 1")))
    assert "weight > 1" in sql


def test_filter_text_is_stable_and_distinguishes_values() -> None:
    dialect = postgresql.dialect()
    one = filter_text(build_filter(TABLE, {"category": {"b", "a"}}), dialect)
    same = filter_text(build_filter(TABLE, {"category": ["a", "b"]}), dialect)
    assert one == same and "'a'" in one and "'b'" in one
    hostile = filter_text(build_filter(TABLE, {"category": "a' OR '1'='1"}), dialect)
    assert hostile != filter_text(build_filter(TABLE, {"category": "a"}), dialect)
    assert "'a'' OR ''1''=''1'" in hostile  # quoted as one literal: it binds the job, never runs
