"""The statements the library really sends, and their query plans.

``Captured`` records every statement an engine sends (with its parameters) through a
``before_cursor_execute`` event, so that a plan test explains what the code executes,
not a hand-written copy of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


class Captured:
    """Every statement an engine sends, with its parameters, while attached."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.statements: list[tuple[str, Any]] = []

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def __enter__(self) -> Captured:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def matching(self, *fragments: str) -> list[tuple[str, Any]]:
        return [(s, p) for s, p in self.statements if all(f in s for f in fragments)]


async def pg_plan(engine: AsyncEngine, statement: str, parameters: Any) -> dict[str, Any]:
    """PostgreSQL: ``EXPLAIN (ANALYZE, FORMAT JSON)`` of a captured statement, run in a
    transaction that is rolled back."""
    async with engine.connect() as conn:
        raw = (
            await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
        ).scalar_one()
        await conn.rollback()
    plan = json.loads(raw) if isinstance(raw, str) else raw
    return plan[0]["Plan"]  # type: ignore[no-any-return]


async def sqlite_plan(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    """SQLite: the details of ``EXPLAIN QUERY PLAN`` of a captured statement, joined."""
    async with engine.connect() as conn:
        steps = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)).all()
    return " ".join(str(step[-1]) for step in steps)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans_of(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """The plan's nodes that read ``relation``."""
    return [n for n in nodes(plan) if n.get("Relation Name") == relation]
