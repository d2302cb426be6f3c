"""The HTML report (issue 11, point 5), opened in a real headless Chromium: each job's
coverage bar with its states, the charts, and the failed batches' errors escaped.

Without a ``chromium`` program these tests skip with the reason, except under CI=true,
where they fail: ``.ci/run`` installs it."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from benchmarks.report import JOB, fill
from pybatchintory import InvalidArgumentError, Inventory, Job
from pybatchintory._html_report import backlog_eta
from pybatchintory._report_data import BAR_PIXELS, coverage_bar, fold, timeline
from pybatchintory._reports import Coverage, CoverageSegment
from tests.conftest import IN_CI, Db
from tests.integration.test_cli import cli
from tests.integration.test_coverage import _mixed_job

# An error text that would run a script, close the cell and break the table if it were
# written as HTML rather than as text.
EVIL = 'ValueError: <script>document.title="owned"</script></td></table> & <b>bold</b>'


def chromium() -> str:
    program = shutil.which("chromium") or shutil.which("chromium-browser")
    if program is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}; CI must run the report tests", pytrace=False)
        pytest.skip(reason)
    return program


def browse(page: Path, screenshot: Path, *, height: int = 1800, timeout: float = 120) -> str:
    """Open ``page`` in headless Chromium: its DOM after loading, and a screenshot."""
    common = [
        chromium(),
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
        f"--window-size=1200,{height}",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout
    subprocess.run(
        [*common, f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return dom


async def _scenario(inv: Inventory, db: Db) -> None:
    """Job 'convert' with every state (see test_coverage), one error text of it made
    hostile; job 'validate' reading the same table, all succeeded."""
    table = await db.create_meta(weights=[1] * 20)
    await _mixed_job(inv, table)
    b = inv.storage.tables.logs
    async with inv.inventory_engine.begin() as conn:  # the out-of-attempts batch's error
        await conn.execute(sa.update(b).where(b.c.logging == "corrupt").values(logging=EVIL))
    validate = Job("validate", source_table=table, weight=5)
    async for batch in inv.acquire_batches(validate, load_items=False):
        await batch.success()


def _sections(dom: str) -> dict[str, str]:
    parts = re.split(r'(?=<section class="job")', dom)
    return {
        re.search(r'data-job="([^"]*)"', p).group(1): p  # type: ignore[union-attr]
        for p in parts
        if p.startswith("<section")
    }


async def test_report_in_chromium(db: Db, tmp_path: Path) -> None:
    async with db.inventory() as inv:
        await _scenario(inv, db)
        page = tmp_path / "report.html"
        written = await inv.html_report(path=page)
        eta = backlog_eta(await inv.status("convert"))
    assert eta is not None and eta.startswith("ETA ")  # the forecast, at the job's pace
    assert page.read_text(encoding="utf-8") == written
    assert not re.search(r"<(script|link|img|iframe)\b|https?://", written), (
        "the page must need no network and run no script"
    )
    dom = browse(page, tmp_path / "report.png")

    assert "<script" not in dom.lower()  # the error text did not become an element
    sections = _sections(dom)
    assert set(sections) == {"convert", "validate"}
    for section in sections.values():
        assert section.count('<svg class="coverage"') == 1  # a bar per job
    convert = sections["convert"]
    bar = convert[convert.index('<svg class="coverage"') : convert.index("</svg>")]
    # 20 ids over 20 columns: each state of the scenario has its own rectangle, and the
    # states needing attention their own in the alert strip above
    states = re.findall(r'<rect class="s" [^>]*data-state="([^"]+)"', bar)
    alerts = re.findall(r'<rect class="alert" [^>]*data-state="([^"]+)"', bar)
    assert alerts == ["retry_wait", "out_of_attempts", "running"]
    assert states == [
        "succeeded",
        "retry_wait",
        "out_of_attempts",
        "running",
        "not_taken",
        "succeeded",
        "not_taken",
    ]
    assert "ids 5..6: out_of_attempts" in bar  # the tooltip of the failed range
    # The failed batches, newest first, with their last error as text, escaped
    failed = convert[convert.index('<table class="failed">') :]
    assert re.findall(r"<td>(retry_wait|out_of_attempts)</td>", failed) == [
        "out_of_attempts",
        "retry_wait",
    ]
    assert '&lt;script&gt;document.title="owned"&lt;/script&gt;&lt;/td&gt;&lt;/table&gt;' in failed
    assert "&amp; &lt;b&gt;bold&lt;/b&gt;" in failed and "flaky" in failed
    assert "<title>pybatchintory report</title>" in dom  # the script did not run
    # Charts and backlog: validate succeeded 4 batches of 5 ids; convert has 6 ids ahead
    assert 'class="chart throughput"' in sections["validate"]
    assert 'class="chart duration"' in sections["validate"]
    assert "<th>backlog</th><td>6 items, weight 6</td>" in convert
    assert f"<th>ETA</th><td>{html.escape(eta)}</td>" in convert
    assert "No failed batch." in sections["validate"]


async def test_report_of_named_jobs_by_the_cli(db: Db, tmp_path: Path) -> None:
    async with db.inventory() as inv:
        await _scenario(inv, db)
    page = tmp_path / "validate.html"
    done = await cli(db, "--meta-url", db.url, "report", "validate", "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {page} (validate)"
    assert set(_sections(page.read_text(encoding="utf-8"))) == {"validate"}
    missing = await cli(db, "report", "nosuchjob", "--html", str(tmp_path / "x.html"))
    assert missing.returncode == 2 and "nosuchjob" in missing.stderr


async def test_report_bad_input(db: Db, tmp_path: Path) -> None:
    async with db.inventory() as inv:
        with pytest.raises(InvalidArgumentError, match="list of job names"):
            await inv.html_report("convert")
        with pytest.raises(InvalidArgumentError, match="cannot write the report"):
            await inv.html_report([], path=tmp_path / "no" / "such" / "dir.html")


def test_fold_is_bounded() -> None:
    """A million batches in alternating states: at most BAR_PIXELS columns, each id
    counted once, and a lone failure among successes stays visible."""
    segments = []
    for i in range(1_000_000):
        state = "out_of_attempts" if i == 777_777 else ("succeeded" if i % 2 else "running")
        segments.append(CoverageSegment(state, 10 * i + 1, 10 * i + 10, 1, 10, 10.0))
    bar = fold(Coverage("big", 0, None, 1, 10_000_000, tuple(segments)))
    columns = bar.columns
    assert len(columns) == BAR_PIXELS
    assert sum(sum(c.ids.values()) for c in columns) == 10_000_000
    assert [c.alert for c in columns].count("out_of_attempts") == 1
    assert {c.state for c in columns} == {"running", "succeeded"}
    assert bar.totals["out_of_attempts"] == [10, 1]
    assert bar.totals["succeeded"] == [4_999_990, 499_999]  # id 777,777 is odd: it failed


async def test_bar_folded_by_the_database_matches_the_exact_one(db: Db) -> None:
    """Past EXACT_BATCHES batches the database groups them by column; on a window of
    one column per id, that is exactly the coverage's segments folded in Python."""
    async with db.inventory() as inv:
        await _scenario(inv, db)
        for name, pixels in (("convert", 20), ("convert", 7), ("validate", 20)):
            exact = await coverage_bar(inv.storage, name, pixels)
            grouped = await coverage_bar(inv.storage, name, pixels, exact_batches=0)
            assert exact.exact and not grouped.exact
            assert grouped.totals == exact.totals, name
            assert [c.end for c in grouped.columns] == [c.end for c in exact.columns]
            assert [sum(c.ids.values()) for c in grouped.columns] == [
                c.end - c.start + 1 for c in exact.columns
            ]
            if pixels == 20:  # one id per column: no apportioning, identical
                assert [c.ids for c in grouped.columns] == [c.ids for c in exact.columns]
            assert [c.state for c in grouped.columns] == [c.state for c in exact.columns], (
                name,
                pixels,
            )


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_million_batches_render_in_chromium(tmp_path: Path) -> None:
    """The report of one job of 1,000,000 bulk-inserted batches (benchmarks/report.py's
    job) renders in Chromium: a bar of two rectangles (succeeded, then the untaken tail)
    under an alert strip of at most BAR_PIXELS rectangles in which the 1,000 failed
    batches show, the legend's exact counts, and the newest failed batches."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'big.sqlite3'}"
    async with Inventory(url) as inv:
        await fill(inv, 1_000_000)
        page = tmp_path / "big.html"
        await inv.html_report([JOB], path=page)
    assert page.stat().st_size < 200_000
    dom = browse(page, tmp_path / "big.png", height=1400)
    sections = _sections(dom)
    assert list(sections) == [JOB]
    section = sections[JOB]
    bar = section[section.index('<svg class="coverage"') : section.index("</svg>")]
    states = re.findall(r'<rect class="s" [^>]*data-state="([^"]+)"', bar)
    alerts = re.findall(r'<rect class="alert" [^>]*data-state="([^"]+)"', bar)
    # most ids succeeded, then the untaken tail; every column holds failed batches
    assert states == ["succeeded", "not_taken"]
    assert 1 < len(alerts) <= BAR_PIXELS
    assert {"out_of_attempts", "retry_wait"} <= set(alerts)
    assert "ids apportioned within a column" in section  # the database grouped them
    legend = section[section.index('<ul class="legend">') :]
    assert "out_of_attempts: 5,000 ids, 500 batches" in legend
    assert "retry_wait: 5,000 ids, 500 batches" in legend
    assert "running: 1,000 ids, 100 batches" in legend
    assert "not_taken: 100,000 ids, 0 batches" in legend
    assert "The newest 50 of 1,000 failed batches." in section
    assert section.count("<tr data-batch=") == 50
    assert "is &lt;corrupt&gt; &amp; unreadable" in section


async def test_timeline_buckets_in_the_database(db: Db) -> None:
    """Succeeded batches bucketed by the end of their attempt: 60 buckets from the first
    end to the last, the last end folded into the last bucket; durations per bucket."""
    async with db.inventory() as inv:
        await _scenario(inv, db)  # validate: 4 succeeded batches (ids 1..5, .., 16..20)
        b = inv.storage.tables.batches
        base = datetime(2026, 3, 1, tzinfo=timezone.utc)
        # ended at +0 s, +14 s, +15 s and +600 s (buckets of 10 s), lasting 1, 2, 3, 4 s
        for n, (end, seconds) in enumerate(((0, 1), (14, 2), (15, 3), (600, 4))):
            async with inv.inventory_engine.begin() as conn:
                await conn.execute(
                    sa.update(b)
                    .where(b.c.job_identifier == "validate", b.c.range_start == 5 * n + 1)
                    .values(
                        processing_start=base + timedelta(seconds=end - seconds),
                        processing_end=base + timedelta(seconds=end),
                    )
                )
        width, buckets = await timeline(inv.storage, "validate", 0)
    # SQLite's julianday() is exact to about a microsecond: approx
    assert width == pytest.approx(10.0, abs=1e-3)
    start = base.timestamp()
    got = [(b.start - start, b.batches, b.items, b.mean_seconds, b.max_seconds) for b in buckets]
    want = [(0.0, 1, 5, 1.0, 1.0), (10.0, 2, 10, 2.5, 3.0), (590.0, 1, 5, 4.0, 4.0)]
    assert len(got) == len(want)
    for row, expected in zip(got, want):
        assert row == pytest.approx(expected, abs=1e-3)
