"""The HTML report: one self-contained page about some jobs (docs/report.md).

No script, no stylesheet or font to fetch: inline CSS and SVG drawn here, so the file
opens anywhere, offline, and stays small. Every figure is bounded whatever the job's
size (``_report_data``: at most 600 bar columns, 60 time buckets, 50 failed batches).
Text that comes from users (job names, error texts, sources) is HTML-escaped.

States are the coverage's (``_coverage.STATES`` and whatever state a segment carries):
a state added there shows up here with a colour of its own, never silently merged.
"""

from __future__ import annotations

import html
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio

from ._coverage import STATES
from ._progress import duration
from ._report_data import (
    TIME_BUCKETS,
    Bar,
    Bucket,
    Column,
    Failure,
    coverage_bar,
    failures,
    timeline,
)
from ._reports import JobStatus
from ._status import job_status, list_jobs
from ._storage import Storage
from .exceptions import BackendError, InvalidArgumentError
from .job import job_name

__all__ = ["backlog_eta", "colour", "html_report", "render"]

_ERROR_CHARS = 2000
_COLOURS = {
    "succeeded": "#2e7d32",
    "running": "#1e88e5",
    "retry_wait": "#f9a825",
    "out_of_attempts": "#c62828",
    "released": "#8e24aa",
    "not_taken": "#d0d0d0",
    "beyond_horizon": "#9e9e9e",
}
_SPARE = ("#00897b", "#6d4c41", "#3949ab", "#d81b60", "#7cb342", "#5e35b1")


def colour(state: str) -> str:
    """A state's colour; a state unknown here gets a stable one of its own."""
    return _COLOURS.get(state) or _SPARE[zlib.crc32(state.encode()) % len(_SPARE)]


def backlog_eta(status: JobStatus) -> str | None:
    """The backlog's ETA at the job's recent pace (:class:`Forecast`), as text; None
    without a forecast, history or backlog. The report prints it next to the backlog."""
    forecast = status.forecast
    if forecast is None or forecast.eta_seconds is None:
        return None
    when = (
        "" if forecast.finishes_at is None else f", about {forecast.finishes_at:%Y-%m-%d %H:%M} UTC"
    )
    batches = "" if forecast.batches is None else f" ({forecast.batches:,} batches)"
    return f"ETA {duration(forecast.eta_seconds)}{batches}{when}"


@dataclass(frozen=True)
class JobPage:
    name: str
    status: JobStatus | None
    note: str | None
    bar: Bar | None
    width: float
    buckets: list[Bucket]
    failures: list[Failure]
    failed_total: int


async def _page(store: Storage, name: str) -> JobPage:
    status: JobStatus | None = None
    note = None
    try:
        status = await job_status(store, name)
    except BackendError as exc:
        note = f"the status could not be read: {exc}"
    bar: Bar | None = None
    try:
        bar = await coverage_bar(store, name)
    except InvalidArgumentError as exc:  # a job stored without a definition (0.1)
        note = f"no coverage: {exc}"
    generation = bar.generation if bar is not None else 0
    width, buckets = await timeline(store, name, generation)
    shown, total = await failures(store, name, generation)
    return JobPage(name, status, note, bar, width, buckets, shown, total)


async def html_report(
    store: Storage,
    jobs: Iterable[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> str:
    """The report of ``jobs`` (names; None: every job), as one HTML page, also written
    to ``path`` when given."""
    if jobs is None:
        names = [j.job_identifier for j in await list_jobs(store)]
    elif isinstance(jobs, str):
        raise InvalidArgumentError(
            f"jobs must be a list of job names, e.g. [{jobs!r}], not a single string"
        )
    else:
        names = list(dict.fromkeys(job_name(j) for j in jobs))
    page = render([await _page(store, name) for name in names], datetime.now(timezone.utc))
    if path is not None:
        try:
            await anyio.Path(path).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot write the report to {os.fspath(path)!r}: {exc.strerror or exc}; "
                "give a file in a directory that exists and is writable"
            ) from None
    return page


# -- what is drawn ------------------------------------------------------------------------

_e = html.escape


def _n(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{int(value):,}"


def _count(value: int, noun: str) -> str:
    return f"{_n(value)} {noun}{'' if value == 1 else ('es' if noun.endswith('ch') else 's')}"


def _t(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bar(page: JobPage) -> str:
    bar = page.bar
    if bar is None or not bar.columns:
        return '<p class="empty">No id to show: the job and its source have no id yet.</p>'
    columns = bar.columns
    width = len(columns)
    rects = _runs(columns, lambda c: c.state, 'class="s" y="12" height="28"')
    alerts = _runs(columns, lambda c: c.alert, 'class="alert" y="0" height="9"')
    totals = bar.totals
    order = [s for s in STATES if s in totals] + sorted(set(totals) - set(STATES))
    legend = "".join(
        f'<li data-state="{_e(s)}"><span class="swatch" style="background:{colour(s)}"></span>'
        f"{_e(s)}: {_count(totals[s][0], 'id')}, {_count(totals[s][1], 'batch')}</li>"
        for s in order
    )
    how = "" if bar.exact else "; ids apportioned within a column"
    return (
        f'<svg class="coverage" viewBox="0 0 {width} 40" preserveAspectRatio="none" '
        f'width="100%" height="40" role="img" aria-label="coverage of ids {bar.id_start} to '
        f'{bar.id_end}">{alerts}{rects}</svg>'
        f'<div class="axis"><span>{_n(bar.id_start)}</span><span>ids (cursor {_n(bar.cursor)}, '
        f"generation {bar.generation}; a column shows the state of most of its ids, the strip "
        f"above it the most urgent one among them{how})</span>"
        f"<span>{_n(bar.id_end)}</span></div>"
        f'<ul class="legend">{legend}</ul>'
    )


def _runs(columns: Sequence[Column], key: Callable[[Column], str | None], attributes: str) -> str:
    """Adjacent columns with one key: one rectangle each, with a tooltip (None: none)."""
    out = []
    i = 0
    while i < len(columns):
        j = i
        state = key(columns[i])
        while j + 1 < len(columns) and key(columns[j + 1]) == state:
            j += 1
        if state is not None:
            ids: dict[str, int] = {}
            for c in columns[i : j + 1]:
                for s, n in c.ids.items():
                    ids[s] = ids.get(s, 0) + n
            detail = ", ".join(f"{s} {_n(n)}" for s, n in sorted(ids.items(), key=lambda x: -x[1]))
            out.append(
                f'<rect {attributes} x="{i}" width="{j - i + 1}" fill="{colour(state)}" '
                f'data-state="{_e(state)}"><title>ids {columns[i].start:,}..{columns[j].end:,}: '
                f"{_e(state)} ({_e(detail)})</title></rect>"
            )
        i = j + 1
    return "".join(out)


def _chart(page: JobPage, label: str, css: str, value: Callable[[Bucket], float], unit: str) -> str:
    buckets = page.buckets
    if not buckets:
        return f'<p class="empty">{_e(label)}: no succeeded batch yet.</p>'
    top = max((value(b) for b in buckets), default=0.0) or 1.0
    t0 = buckets[0].start
    w, h = 600, 120
    step = w / TIME_BUCKETS
    bars = "".join(
        f'<rect x="{(b.start - t0) / page.width * step:.1f}" y="{h - value(b) / top * h:.1f}" '
        f'width="{max(step - 1, 1):.1f}" height="{value(b) / top * h:.1f}">'
        f"<title>{_t(b.start)}: {_n(value(b))} {unit} ({_count(b.batches, 'batch')})</title></rect>"
        for b in buckets
    )
    end = t0 + page.width * TIME_BUCKETS
    return (
        f'<figure class="chart {css}"><figcaption>{_e(label)} (max {_n(top)} {unit}; '
        f"buckets of {_n(page.width)} s)</figcaption>"
        f'<svg viewBox="0 0 {w} {h}" width="100%" height="{h}" preserveAspectRatio="none">'
        f'{bars}</svg><div class="axis"><span>{_t(t0)}</span><span>{_t(end)}</span></div>'
        "</figure>"
    )


def _summary(page: JobPage) -> str:
    s = page.status
    if s is None:
        return f'<p class="note">{_e(page.note or "no status")}</p>'
    if s.backlog is not None:
        backlog = f"{_n(s.backlog.items)} items" + (
            f", weight {_n(s.backlog.weight)}" if s.backlog.weight is not None else ""
        )
    else:
        backlog = f"unknown ({s.backlog_note})"
    eta = backlog_eta(s)
    rows = [
        ("source", f"{s.source_kind} {s.source}"),
        ("cursor", _n(s.cursor)),
        ("backlog", backlog),
        ("ETA", eta if eta is not None else "no forecast"),
        ("running", f"{_count(s.running, 'batch')} ({_n(s.expired_leases)} with an expired lease)"),
        ("succeeded", f"{_count(s.succeeded, 'batch')}, weight {_n(s.succeeded_weight)}"),
        (
            "failed",
            f"{_n(s.retryable)} waiting for a retry, {_n(s.out_of_attempts)} out of attempts",
        ),
        ("last success", _t(s.last_success_at)),
    ]
    if s.idle_reason:
        rows.append(("idle", s.idle_reason))
    if page.note:
        rows.append(("note", page.note))
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{cells}</table>'


def _failed(page: JobPage) -> str:
    if not page.failures:
        return '<p class="empty">No failed batch.</p>'
    rows = "".join(
        f'<tr data-batch="{f.batch_id}"><td>{f.batch_id}</td><td>{_e(f.state)}</td>'
        f"<td>{f.range_start:,}..{f.range_end:,}</td><td>{f.attempt}/{f.max_attempts}</td>"
        f"<td>{_t(f.ended)}</td><td><pre>{_e(_tail(f.error))}</pre></td></tr>"
        for f in page.failures
    )
    more = (
        f"<p>The newest {len(page.failures)} of {_n(page.failed_total)} failed batches.</p>"
        if page.failed_total > len(page.failures)
        else ""
    )
    return (
        f'{more}<table class="failed"><tr><th>batch</th><th>state</th><th>ids</th>'
        f"<th>attempt</th><th>ended</th><th>last error</th></tr>{rows}</table>"
    )


def _tail(text: str | None) -> str:
    if not text:
        return "(no error text)"
    return text if len(text) <= _ERROR_CHARS else "…" + text[-_ERROR_CHARS:]


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:17px;margin-top:32px;border-top:1px solid #ccc;padding-top:12px}
svg.coverage{display:block;border:1px solid #999;background:#fff}
.axis{display:flex;justify-content:space-between;font-size:12px;color:#555}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#555}
.throughput rect{fill:#2e7d32}.duration rect{fill:#1e88e5}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:2px 6px;
text-align:left;vertical-align:top}pre{margin:0;white-space:pre-wrap;max-height:12em;
overflow:auto;font-size:12px}.empty,.note{color:#666}
"""


def _section(page: JobPage) -> str:
    width = page.width
    return (
        f'<section class="job" data-job="{_e(page.name)}"><h2>{_e(page.name)}</h2>'
        f"{_summary(page)}<h3>Coverage</h3>{_bar(page)}<h3>Over time</h3>"
        '<div class="charts">'
        + _chart(page, "throughput", "throughput", lambda b: b.items / width, "items/s")
        + _chart(page, "mean batch duration", "duration", lambda b: b.mean_seconds, "s")
        + f"</div><h3>Failed batches</h3>{_failed(page)}</section>"
    )


def render(pages: Sequence[JobPage], now: datetime) -> str:
    """The page: a section per job."""
    body = (
        "".join(_section(p) for p in pages) or '<p class="empty">No job in this inventory yet.</p>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>pybatchintory report</title>"
        f"<style>{_STYLE}</style></head><body><h1>pybatchintory report</h1>"
        f'<p class="generated">Written {_t(now)}, {len(pages)} job(s).</p>{body}</body></html>\n'
    )
