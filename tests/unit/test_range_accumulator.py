"""RangeAccumulator: which rows, offered in id order, a batch admits (no database)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from pybatchintory import SourceDataError
from pybatchintory._source import BatchPlan, RangeAccumulator


def admit(acc: RangeAccumulator, weights: list[Any], first_id: int = 1) -> list[int]:
    """Offer the rows until one is refused; return the ids admitted."""
    admitted = []
    for item_id, weight in enumerate(weights, start=first_id):
        if not acc.offer(item_id, weight):
            break
        admitted.append(item_id)
    return admitted


def test_admits_the_longest_run_that_fits_the_budget() -> None:
    acc = RangeAccumulator(budget=10, max_items=None)
    assert admit(acc, [3, 3, 3, 3]) == [1, 2, 3]
    assert acc.full
    assert acc.plan() == BatchPlan(range_start=1, range_end=3, weight=9, item_count=3)


def test_a_batch_that_reaches_the_budget_exactly_is_full_without_looking_further() -> None:
    acc = RangeAccumulator(budget=10, max_items=None)
    assert admit(acc, [5, 5]) == [1, 2]
    assert acc.full
    # Once full, the next row is not even examined: its bad weight belongs to the next batch.
    assert acc.offer(3, None) is False
    assert acc.plan() == BatchPlan(1, 2, 10, 2)


def test_an_item_heavier_than_the_budget_is_admitted_alone_when_first() -> None:
    acc = RangeAccumulator(budget=7, max_items=None)
    assert admit(acc, [50, 1, 1]) == [1]
    assert acc.plan() == BatchPlan(1, 1, 50, 1)


def test_an_item_heavier_than_the_budget_waits_for_the_next_batch_when_not_first() -> None:
    acc = RangeAccumulator(budget=7, max_items=None)
    assert admit(acc, [3, 50]) == [1]
    assert acc.plan() == BatchPlan(1, 1, 3, 1)


def test_the_batch_never_exceeds_the_budget_unless_it_is_a_single_item() -> None:
    weights = [1, 4, 2, 7, 3, 3, 12, 1, 1, 5, 6, 2]
    start = 0
    while start < len(weights):
        acc = RangeAccumulator(budget=8, max_items=None)
        admitted = admit(acc, weights[start:], first_id=start)
        plan = acc.plan()
        assert plan is not None and plan.item_count == len(admitted) >= 1
        assert plan.weight <= 8 or plan.item_count == 1
        assert plan.weight == sum(weights[start : start + len(admitted)])
        start += len(admitted)


def test_max_items_bounds_the_count() -> None:
    acc = RangeAccumulator(budget=None, max_items=2)
    assert admit(acc, [1, 1, 1]) == [1, 2]
    assert acc.plan() == BatchPlan(1, 2, 2, 2)


def test_the_first_limit_reached_wins() -> None:
    by_weight = RangeAccumulator(budget=3, max_items=5)
    assert admit(by_weight, [1] * 10) == [1, 2, 3]
    by_count = RangeAccumulator(budget=100, max_items=4)
    assert admit(by_count, [1] * 10) == [1, 2, 3, 4]


def test_without_budget_or_max_items_everything_is_admitted() -> None:
    acc = RangeAccumulator(budget=None, max_items=None)
    assert admit(acc, [10**12] * 50) == list(range(1, 51))
    assert not acc.full
    assert acc.plan() == BatchPlan(1, 50, 50 * 10**12, 50)


def test_zero_fractional_and_decimal_weights() -> None:
    acc = RangeAccumulator(budget=1.0, max_items=None)
    assert admit(acc, [0, 0.25, Decimal("0.25"), 0.5, 0.125]) == [1, 2, 3, 4]
    assert acc.plan() == BatchPlan(1, 4, 1.0, 4)


def test_ids_need_not_be_consecutive() -> None:
    acc = RangeAccumulator(budget=10, max_items=None)
    for item_id in (5, 9, 40):
        assert acc.offer(item_id, 2)
    assert acc.plan() == BatchPlan(5, 40, 6, 3)


def test_nothing_offered_plans_nothing() -> None:
    assert RangeAccumulator(budget=10, max_items=None).plan() is None


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (None, "item id 7 has a NULL weight"),
        (-1, "item id 7 has weight -1"),
        (-0.5, "item id 7 has weight -0.5"),
        (math.nan, "item id 7 has weight nan"),
        (Decimal("NaN"), "item id 7 has weight Decimal"),
        ("12", "item id 7 has weight '12'"),
    ],
)
@pytest.mark.parametrize("position", ["first", "later"])
def test_a_null_negative_nan_or_non_numeric_weight_names_the_id(
    weight: Any, message: str, position: str
) -> None:
    acc = RangeAccumulator(budget=100, max_items=None)
    if position == "later":
        assert acc.offer(6, 1)
    with pytest.raises(SourceDataError, match=message):
        acc.offer(7, weight)
