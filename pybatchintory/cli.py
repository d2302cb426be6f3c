"""The ``pybatchintory`` command: create the tables, list jobs, show status, trace an
item, map a job's coverage, write an HTML report, plan its next batches, re-queue
failed batches, reset a job, check and upgrade the tables' schema.

Configured like the library (``PYBATCHINTORY_*`` variables, ``.env``), with
``--inventory-url`` and ``--meta-url`` on top. Tables for people, ``--json`` for
scripts. A user error is one line on stderr and exit code 2; a database failure exit
code 1; never a traceback for either. ``check`` exits 0 when the tables are current, 1 when an
upgrade is pending and 2 on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn

import anyio

from . import _migrations
from ._admin import BATCH_FILTERS
from ._engines import create_engine
from ._progress import duration
from ._tables import build_tables
from .config import Settings, hide_password
from .exceptions import BackendError, InvalidArgumentError, PyBatchintoryError
from .inventory import Inventory

__all__ = ["main"]

EXIT_BACKEND = 1
EXIT_USAGE = 2
EXIT_PENDING = 1  # check: an upgrade is pending
EXIT_CHECK_ERROR = 2  # check: any error


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _common() -> _Parser:
    # SUPPRESS: an option given before the command is not overwritten by the
    # subparser's default, so both places work.
    common = _Parser(add_help=False)
    common.add_argument(
        "--inventory-url", default=argparse.SUPPRESS, help="URL of the backend tables' database"
    )
    common.add_argument(
        "--meta-url", default=argparse.SUPPRESS, help="URL of the metadata table's database"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output, for scripts"
    )
    return common


def _plain(text: str) -> str:
    """Docstring text for a terminal: no reStructuredText markup."""
    return " ".join(text.replace("``", "").split())


def _item_id(value: str) -> int:
    """An argparse type: a 64-bit integer id."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer id: {value!r}") from None
    if not -(2**63) <= number < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is outside the 64-bit id range")
    return number


def _generation(value: str) -> int:
    """An argparse type: a generation number (>= 0)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a generation number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"a generation is >= 0, not {value}")
    return number


def _count(value: str) -> int:
    """An argparse type: a count of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {value!r}") from None
    if not 1 <= number <= 10_000:
        raise argparse.ArgumentTypeError(f"a count from 1 to 10,000, not {value}")
    return number


def _moment(value: str) -> datetime:
    """An argparse type: an ISO 8601 date or time; without an offset, UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or time: {value!r} (ISO 8601: 2024-03-01, 2024-03-01T12:00+02:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _time_window(parser: argparse.ArgumentParser) -> None:
    """``--since``/``--until``/``--time-column`` (docs/cli.md, time windows)."""
    parser.add_argument(
        "--since", type=_moment, help="only rows at or after this time (ISO 8601; no offset: UTC)"
    )
    parser.add_argument("--until", type=_moment, help="only rows before this time")
    parser.add_argument(
        "--time-column", default=None, help="the source's timestamp column (default: the job's)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pybatchintory`` command."""
    common = _common()
    parser = _Parser(
        prog="pybatchintory", description=_plain(__doc__.split("\n\n")[0]), parents=[common]
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    commands.add_parser(
        "init", parents=[common], help="create the backend tables if absent, or upgrade them"
    )
    commands.add_parser("jobs", parents=[common], help="every job with a one-line status")
    status = commands.add_parser(
        "status", parents=[common], help="a job's batches, leases and backlog"
    )
    status.add_argument("job")
    status.add_argument("--id-start", type=_item_id, help="count the backlog from this id")
    status.add_argument("--id-end", type=_item_id, help="count the backlog up to this id")
    status.add_argument(
        "--weight-column",
        default=None,
        help="the source's weight column (default: the job's stored one)",
    )
    status.add_argument(
        "--trust-stored-filter",
        action="store_true",
        help="run the job's stored filter SQL on the metadata database to count its backlog",
    )
    _time_window(status)
    trace = commands.add_parser("trace", parents=[common], help="every batch that covered an item")
    trace.add_argument("table", help="the metadata table ('table' or 'schema.table')")
    trace.add_argument("id", type=_item_id, help="the item's id")
    coverage = commands.add_parser(
        "coverage",
        parents=[common],
        help="a job's ids as segments: succeeded, running, retry_wait, out_of_attempts, not_taken",
    )
    coverage.add_argument("job")
    coverage.add_argument(
        "--id-start",
        type=_item_id,
        help="from this id (default: the job's window, else its source's lowest id)",
    )
    coverage.add_argument(
        "--id-end",
        type=_item_id,
        help="up to this id (default: the job's window, else its source's highest id)",
    )
    coverage.add_argument(
        "--generation", type=_generation, help="this generation (default: the current one)"
    )
    coverage.add_argument(
        "--versus", metavar="JOB", help="compare with another job over the same source"
    )
    _time_window(coverage)
    plan = commands.add_parser(
        "plan", parents=[common], help="the next batches an acquisition would take, taking nothing"
    )
    plan.add_argument("job")
    plan.add_argument("--next", type=_count, default=5, help="how many batches (default: 5)")
    report = commands.add_parser(
        "report", parents=[common], help="write a self-contained HTML page about some jobs"
    )
    report.add_argument("jobs", nargs="*", metavar="JOB", help="these jobs (default: every job)")
    report.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    retry = commands.add_parser(
        "retry", parents=[common], help="give failed batches one more attempt"
    )
    retry.add_argument("job")
    retry.add_argument("--batch", type=_item_id, help="only this batch id")
    reset = commands.add_parser(
        "reset", parents=[common], help="rewind a job's cursor, keeping history"
    )
    reset.add_argument("job")
    reset.add_argument(
        "--to", type=_item_id, dest="to_id", help="reprocess the ids after this one (default: all)"
    )
    reset.add_argument(
        "--force", action="store_true", help="even if batches after the point are running"
    )
    reset.add_argument(
        "--dry-run", action="store_true", help="say what the reset would do; change nothing"
    )
    batches = commands.add_parser(
        "batches", parents=[common], help="a job's batches, newest first, with their last error"
    )
    batches.add_argument("job")
    batches.add_argument(
        "--status",
        choices=BATCH_FILTERS,
        help="only these (retry_wait: failed with attempts left; out_of_attempts: failed for good)",
    )
    batches.add_argument("--limit", type=_count, default=50, help="at most this many (default: 50)")
    for name, what in (
        ("release", "hand a running batch back now, unprocessed, using no attempt"),
        ("expire", "end a running batch's lease now, as if its worker had died"),
    ):
        command = commands.add_parser(name, parents=[common], help=what)
        command.add_argument("job")
        command.add_argument("batch", type=_item_id, help="the batch id (see 'batches JOB')")
        command.add_argument("--reason", help="recorded in the batch's log row")
    pause = commands.add_parser(
        "pause", parents=[common], help="hand out no batch of a job until it is resumed"
    )
    pause.add_argument("job")
    pause.add_argument("--reason", help="shown in status and in the acquisitions' idle reason")
    resume = commands.add_parser("resume", parents=[common], help="resume a paused job")
    resume.add_argument("job")
    migrate = commands.add_parser(
        "migrate", parents=[common], help="upgrade the backend tables to this version's schema"
    )
    migrate.add_argument("--dry-run", action="store_true", help="only print the pending steps")
    commands.add_parser(
        "check",
        parents=[common],
        help="the tables' schema version against this library's (exit 0 current, 1 upgrade pending, 2 error)",
    )
    return parser


# -- output ------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    """``1 batch``, ``2 batches``, ``1,024 items``."""
    return f"{count:,} {noun if count == 1 else noun + ('es' if noun.endswith('ch') else 's')}"


_BINARY_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def _weight(value: float | None, unit: str | None) -> str:
    """A weight for people: ``3.1 MiB`` for a job whose weight is bytes, else
    ``3,210,360`` (no exponent, thousands separated)."""
    if value is None:
        return "-"
    if unit == "bytes":
        scaled, step = float(value), 0
        while abs(scaled) >= 1024 and step < len(_BINARY_UNITS) - 1:
            scaled, step = scaled / 1024, step + 1
        return f"{scaled:,.0f} bytes" if step == 0 else f"{scaled:,.1f} {_BINARY_UNITS[step]}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()  # UTC, said so
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _weight(value, None)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in pairs)


def _status_text(s: Any) -> str:
    source = f"{s.source_kind} {s.source}" + (
        f" (filter: {s.filter_text})" if s.filter_text else ""
    )
    unit = (s.definition or {}).get("weight_unit")
    if s.backlog is not None:
        weight = "" if s.backlog.weight is None else f", weight {_weight(s.backlog.weight, unit)}"
        backlog = f"{_plural(s.backlog.items, 'item')}{weight}"
    else:
        backlog = f"unknown: {s.backlog_note}"
    pairs: list[tuple[str, Any]] = [
        ("job", s.job_identifier),
        ("source", source),
        ("cursor", f"{_cell(s.cursor)} (generation {s.generation})"),
        ("running", f"{_plural(s.running, 'batch')}, weight {_weight(s.running_weight, unit)}"),
        (
            "succeeded",
            f"{_plural(s.succeeded, 'batch')}, weight {_weight(s.succeeded_weight, unit)}",
        ),
        (
            "failed",
            f"{_plural(s.failed, 'batch')}, weight {_weight(s.failed_weight, unit)} "
            f"({s.retryable:,} to retry, {s.out_of_attempts:,} out of attempts)",
        ),
        ("released", _plural(s.released, "batch") + (" (to hand out again)" if s.released else "")),
        ("next retry due", s.next_retry_at),
        ("oldest running", s.oldest_running_start),
        ("next lease expiry", s.earliest_lease_expiry),
        ("expired leases", s.expired_leases),
        ("last success", s.last_success_at),
        ("backlog", backlog),
    ]
    if s.definition:
        d = s.definition
        budget = ", ".join(
            part
            for part in (
                None if d.get("weight") is None else f"weight {_weight(d['weight'], unit)}",
                None if d.get("max_items") is None else _plural(d["max_items"], "item"),
            )
            if part
        )
        pairs.insert(2, ("budget", budget or "unbounded"))
        if d.get("weight_column"):
            pairs.insert(3, ("weight column", d["weight_column"]))
    if s.forecast is not None:
        pairs.append(("forecast", _forecast_text(s.forecast, unit)))
    if s.source_kind == "job":
        pairs.insert(3, ("upstream frontier", s.frontier_batch_id))
    if s.idle_reason:
        pairs.append(("idle", s.idle_reason))
    if s.superseded:
        pairs.append(("earlier generations", _plural(s.superseded, "batch")))
    if s.horizon is not None:
        pairs += _horizon_pairs(s.horizon)
    return _pairs(pairs)


def _forecast_text(f: Any, unit: str | None) -> str:
    """``~6 batches, ETA 30s, done at ...; pace 2 weight/s, 0.2 items/s, 2.0 at once
    (4 recent batches)``."""
    if f.batches == 0:
        return "nothing left"
    parts = ["batches unknown" if f.batches is None else f"~{_plural(f.batches, 'batch')}"]
    if f.eta_seconds is not None:
        parts.append(f"ETA {duration(f.eta_seconds)}, done at {_cell(f.finishes_at)}")
    if f.basis != "history":
        return ", ".join(parts) + " (by the budget: no succeeded batch to measure the pace on)"
    per_second = (
        f"{_weight(f.weight_per_second, unit)}/s"
        if unit == "bytes"
        else f"{f.weight_per_second:,.3g} weight/s, {f.items_per_second:,.3g} items/s"
    )
    pace = (
        f"{per_second}, {f.concurrency:.1f} at once ({_plural(f.sample_batches, 'recent batch')})"
    )
    return f"{', '.join(parts)}; pace {pace}"


def _horizon_pairs(h: Any) -> list[tuple[str, Any]]:
    """The horizon, and each open writer transaction that holds it back."""
    settled = "not yet known past the cursor" if h.settled_id is None else h.settled_id
    pairs: list[tuple[str, Any]] = [
        ("horizon", f"settled up to {settled}, highest visible id {_cell(h.highest_visible_id)}")
    ]
    for holder in h.held_by:
        who = "prepared transaction" if holder.pid is None else f"pid {holder.pid}"
        age = (
            ""
            if holder.transaction_age_seconds is None
            else f" for {holder.transaction_age_seconds:.1f} s"
        )
        since = (
            f" (transaction since {_cell(holder.transaction_start)})"
            if holder.transaction_start
            else ""
        )
        query = " ".join((holder.query or "").split())[:120]
        pairs.append(
            (
                "  held by",
                f"{who}, {holder.state or 'state unknown'}{age}{since}"
                + (f": {query}" if query else ""),
            )
        )
    return pairs


def _batches_text(job: str, found: Sequence[Any]) -> str:
    if not found:
        return f"job {job} has no such batch in its current generation"
    rows = []
    for b in found:
        if b.status == "failed" and b.attempt < b.max_attempts:
            due = f"retry at {_cell(b.retry_after)}" if b.retry_after else "retry now"
        elif b.status == "running":
            due = f"lease to {_cell(b.lease_expires_at)}"
        else:
            due = ""
        last = " ".join((b.last_log or "").strip().splitlines()[-1:])[:100]
        rows.append(
            (
                b.id,
                f"{b.range_start:,}..{b.range_end:,}",
                b.status,
                f"{b.attempt} of {b.max_attempts}",
                b.item_count,
                b.worker or "-",
                due,
                last,
            )
        )
    return _table(
        ["batch", "ids", "status", "attempt", "items", "worker", "when", "last log"], rows
    )


def _reset_text(r: Any) -> str:
    if not r.changed:
        return f"job {r.job_identifier}: the cursor is already at {_cell(r.new_cursor)}; nothing changed"
    head = "would reset" if r.dry_run else "reset"
    return (
        f"job {r.job_identifier} {head}: cursor {_cell(r.old_cursor)} -> {_cell(r.new_cursor)}, "
        f"generation {r.generation}; {_plural(r.kept, 'succeeded batch')} kept, "
        f"{_plural(len(r.carried), 'unfinished batch')} carried, {len(r.superseded):,} superseded"
        + ("; nothing was changed (dry run)" if r.dry_run else "")
    )


def _trace_text(entries: Sequence[Any]) -> str:
    if not entries:
        return "no batch covered this item"
    lines = []
    for e in entries:
        via = f" via batch {e.via_batch_id}" if e.via_batch_id is not None else ""
        lines.append(
            f"{'  ' * e.depth}{e.job_identifier}: batch {e.batch_id} ids {e.range_start}..{e.range_end}"
            f"{via}, generation {e.generation}, {e.status} after {_plural(e.attempt, 'attempt')}"
        )
        if not e.verified:
            lines.append(f"{'  ' * e.depth}  unverified: {e.note}")
        for a in e.attempts:
            last = (a.logging or "").strip().splitlines()[-1:] or [""]
            lines.append(
                f"{'  ' * e.depth}  attempt {a.attempt}: {a.status:<9} {_cell(a.processing_start)}"
                f" .. {_cell(a.processing_end)} {a.worker or ''} {last[0]}".rstrip()
            )
    return "\n".join(lines)


def _range(start: int, end: int) -> str:
    return f"{start:,}" if start == end else f"{start:,}..{end:,}"


def _coverage_text(c: Any) -> str:
    if not c.segments:
        return f"job {c.job_identifier}: no ids to cover (its source and batches have none in its window)"
    head = (
        f"job {c.job_identifier}, generation {c.generation}, cursor {_cell(c.cursor)}, "
        f"ids {_range(c.id_start, c.id_end)}"
    )
    rows = [
        (_range(s.range_start, s.range_end), s.state, s.batches or "-", s.items or "-")
        for s in c.segments
    ]
    return head + "\n" + _table(["ids", "state", "batches", "items"], rows)


def _diff_text(d: Any) -> str:
    window = "no ids" if d.id_start is None else f"ids {_range(d.id_start, d.id_end)}"
    lines = [f"{d.a} versus {d.b}, {window}"]
    for mine, other, segments in ((d.a, d.b, d.only_a), (d.b, d.a, d.only_b)):
        if not segments:
            lines.append(f"{mine} succeeded nowhere that {other} has not")
            continue
        lines.append(f"{mine} succeeded, {other} has not:")
        lines += [
            f"  {_range(s.range_start, s.range_end)}  ({other}: {s.other_state})" for s in segments
        ]
    return "\n".join(lines)


def _plan_text(job: str, planned: Sequence[Any]) -> str:
    if not planned:
        return f"job {job}: nothing to hand out"
    rows = [
        (p.kind, p.batch_id, _range(p.range_start, p.range_end), p.item_count, p.weight, p.attempt)
        for p in planned
    ]
    return _table(["kind", "batch", "ids", "items", "weight", "attempt"], rows)


def _version(value: int | None) -> str:
    return "none (no tables)" if value is None else str(value)


def _check_text(state: _migrations.SchemaState, dialect: str) -> str:
    tables = _version(state.tables_version)
    if state.tables_version is not None and not state.stamped:
        tables += " (created before versioning)"
    if dialect != "postgresql":
        exclusion = "n/a (SQLite)"
    elif state.exclusion_constraint is None:
        exclusion = "-"
    else:
        exclusion = "present" if state.exclusion_constraint else "absent"
    status = state.status
    if status == "upgrade pending":
        status += ": run 'pybatchintory migrate' (or open an Inventory)"
    elif status != "current":
        status += ": upgrade pybatchintory"
    pairs: list[tuple[str, Any]] = [
        ("tables version", tables),
        ("library version", state.library_version),
        ("exclusion constraint", exclusion),
        ("status", status),
    ]
    text = _pairs(pairs)
    if state.pending:
        text += "\npending steps:\n" + "\n".join(f"  {step}" for step in state.pending)
    return text


def _migrate_text(result: _migrations.MigrationResult) -> str:
    if not result.steps:
        text = f"backend tables already at schema version {result.to_version}"
    elif result.dry_run:
        text = f"would upgrade the backend tables from version {_version(result.from_version)} to {result.to_version}:"
        text += "".join(f"\n  {step}" for step in result.steps)
    elif result.from_version is None:
        text = f"backend tables created at schema version {result.to_version}"
    else:
        text = f"backend tables upgraded from version {result.from_version} to {result.to_version}"
        text += "".join(f"\n  {step}" for step in result.steps)
    if result.exclusion_constraint is False:
        text += "\nno exclusion constraint (btree_gist unavailable or not permitted); the job lock alone keeps ranges disjoint"
    return text


# -- commands ----------------------------------------------------------------------------


async def _schema_command(args: argparse.Namespace, settings: Settings) -> tuple[Any, str]:
    """``migrate`` and ``check``: on the inventory engine alone, without ``open()``
    (which would upgrade by itself)."""
    # check only reads: a reader engine, which on SQLite does not switch the file to WAL.
    engine = create_engine(settings.inventory_dsn, settings, writer=args.command == "migrate")
    tables = build_tables(settings)
    try:
        if args.command == "check":
            state = await _migrations.read_state(engine, tables)
            return state.as_dict(), _check_text(state, engine.dialect.name)
        result = await _migrations.migrate(engine, tables, dry_run=args.dry_run)
        return result.as_dict(), _migrate_text(result)
    finally:
        await engine.dispose()


async def _run(args: argparse.Namespace) -> tuple[Any, str]:
    """Run the command; return its JSON-able value and its text for people."""
    inventory = Inventory(
        getattr(args, "inventory_url", None),
        getattr(args, "meta_url", None),
        # init is the command that creates them, whatever the setting says
        create_tables=True if args.command == "init" else None,
    )
    if args.command in ("migrate", "check"):
        return await _schema_command(args, inventory.settings)
    async with inventory:
        if args.command == "init":
            url = inventory.settings.inventory_dsn
            return {
                "inventory_url": hide_password(url)
            }, f"backend tables ready on {hide_password(url)}"
        if args.command == "jobs":
            jobs = await inventory.jobs()
            rows = [(j.job_identifier, f"{j.source_kind} {j.source}", j.summary) for j in jobs]
            text = _table(["job", "source", "status"], rows) if jobs else "no jobs yet"
            return [j.as_dict() for j in jobs], text
        if args.command == "status":
            status = await inventory.status(
                args.job,
                id_start=args.id_start,
                id_end=args.id_end,
                weight_column=args.weight_column,
                trust_stored_filter=args.trust_stored_filter,
                time_column=args.time_column,
                since=args.since,
                until=args.until,
            )
            return status.as_dict(), _status_text(status)
        if args.command == "trace":
            entries = await inventory.trace(args.table, args.id)
            return [e.as_dict() for e in entries], _trace_text(entries)
        if args.command == "coverage":
            if args.versus is not None:
                if args.generation is not None:
                    raise InvalidArgumentError(
                        "--generation and --versus cannot be combined: a comparison is of current generations"
                    )
                if args.since is not None or args.until is not None:
                    raise InvalidArgumentError(
                        "--since/--until and --versus cannot be combined: compare on ids "
                        "(--id-start, --id-end)"
                    )
                diff = await inventory.coverage_diff(
                    args.job, args.versus, id_start=args.id_start, id_end=args.id_end
                )
                return diff.as_dict(), _diff_text(diff)
            cov = await inventory.coverage(
                args.job,
                id_start=args.id_start,
                id_end=args.id_end,
                generation=args.generation,
                time_column=args.time_column,
                since=args.since,
                until=args.until,
            )
            return cov.as_dict(), _coverage_text(cov)
        if args.command == "plan":
            planned = await inventory.plan(args.job, args.next)
            return [p.as_dict() for p in planned], _plan_text(args.job, planned)
        if args.command == "report":
            await inventory.html_report(args.jobs or None, path=args.html)
            which = ", ".join(args.jobs) if args.jobs else "every job"
            return {"html": args.html, "jobs": args.jobs}, f"wrote {args.html} ({which})"
        if args.command == "retry":
            ids = await inventory.retry(args.job, args.batch)
            if ids:
                text = f"re-queued {_plural(len(ids), 'batch')}: {', '.join(map(str, ids))}"
            else:
                text = f"nothing re-queued: no batch of job {args.job} is out of attempts"
            return {"requeued": ids}, text
        if args.command == "batches":
            found = await inventory.batches(args.job, status=args.status, limit=args.limit)
            return [b.as_dict() for b in found], _batches_text(args.job, found)
        if args.command in ("release", "expire"):
            take = inventory.release_batch if args.command == "release" else inventory.expire_batch
            info = await take(args.job, args.batch, reason=args.reason)
            then = (
                "handed out again by the next acquisition, no attempt used"
                if args.command == "release"
                else "attempt counted as failed; handed out again while attempts are left"
            )
            return info.as_dict(), (
                f"batch {info.id} of job {info.job_identifier} (ids {info.range_start:,}.."
                f"{info.range_end:,}) {info.status}: {then}; its worker gets BatchLostError"
            )
        if args.command in ("pause", "resume"):
            pausing = args.command == "pause"
            if pausing:
                changed = await inventory.pause(args.job, reason=args.reason)
            else:
                changed = await inventory.resume(args.job)
            state = "paused" if pausing else "resumed"
            text = (
                f"job {args.job} {state}"
                if changed
                else f"job {args.job} was already {'paused' if pausing else 'running (not paused)'}"
            )
            return {"job": args.job, "paused": pausing, "changed": changed}, text
        assert args.command == "reset"
        result = await inventory.reset(args.job, args.to_id, force=args.force, dry_run=args.dry_run)
        return result.as_dict(), _reset_text(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pybatchintory`` and ``python -m pybatchintory``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "id_start", None) is not None and getattr(args, "id_end", None) is not None:
        if args.id_start > args.id_end:
            parser.error(f"--id-start {args.id_start} is greater than --id-end {args.id_end}")
    check = args.command == "check"
    try:
        value, text = anyio.run(_run, args)
    except BackendError as exc:
        print(f"pybatchintory: database error: {exc}", file=sys.stderr)
        return EXIT_CHECK_ERROR if check else EXIT_BACKEND
    except PyBatchintoryError as exc:
        print(f"pybatchintory: error: {exc}", file=sys.stderr)
        return EXIT_CHECK_ERROR if check else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    try:
        if getattr(args, "json", False):
            print(json.dumps(value, indent=2, default=str))
        else:
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (| head) stopped early: not an error, and no traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if check and value["status"] != "current":
        return EXIT_PENDING if value["status"] == "upgrade pending" else EXIT_CHECK_ERROR
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
