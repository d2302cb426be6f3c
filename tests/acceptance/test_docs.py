"""The documentation runs: every runnable Python block of README.md and docs/*.md is
executed as written.

The convention
--------------
A fenced block is *runnable* when the line right before its opening fence is exactly
``<!-- runnable -->`` (an HTML comment: GitHub renders nothing for it)::

    <!-- runnable -->
    ```python
    from pybatchintory import SyncInventory
    ...
    ```

Each runnable block runs on its own, as a script, in a fresh temporary directory, in a
subprocess (``sys.executable -W error``) with a 60 s timeout, with every
``PYBATCHINTORY_*`` variable removed: the inventory is the embedded SQLite default
(``pybatchintory.sqlite3`` in that directory). It passes when it exits with 0 and
prints no traceback (an "Exception ignored" report, such as an unclosed connection,
counts as one). So a runnable block must be complete:

- no placeholders: a bare ``...`` statement is refused, and so is ``<your ...>`` text;
- it creates the metadata table it reads (``sqlite3`` from the standard library, and
  it closes its connection: ``with sqlite3.connect()`` alone does not);
- it handles ``None`` from ``acquire_batch`` (nothing left to take).

Blocks without the marker (shell commands, CLI output, fragments, PostgreSQL URLs) are
not run; keep them real anyway (CLI output is pasted from real runs).

Running one block while writing docs
------------------------------------
Blocks are named ``<file>-<n>``, n counting the runnable blocks of that file from 1::

    python3 tests/acceptance/test_docs.py --list              # names, files and lines
    python3 tests/acceptance/test_docs.py README.md-2         # run it, show its output
    python3 -m pytest "tests/acceptance/test_docs.py::test_runnable_block[docs/reference.md-1]"
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
TIMEOUT_SECONDS = 60
TEST_COMMAND = "python3 -m pip install nox && python3 -m nox -s tests"
QUICKSTART_COMMAND = "python3 -m pip install -e . && python3 examples/quickstart.py"

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
_PLACEHOLDER = re.compile(r"<your[ _-][^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    file: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    runnable: bool
    name: str = ""  # "<file>-<n>" for runnable blocks


def doc_files() -> list[Path]:
    """README.md, then docs/*.md in name order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of ``path``; raise ValueError on a marker that marks nothing."""
    relative = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    runnable_count = 0
    previous = ""  # the last non-blank line outside a block
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i].strip())
        if match is None:
            if lines[i].strip():
                if previous.strip() == MARKER:
                    raise ValueError(
                        f"{relative}:{i}: {MARKER} must be followed by a ```python fence"
                    )
                previous = lines[i]
            i += 1
            continue
        fence, language = match.group(1), match.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{relative}:{start + 1}: the fence opened here is never closed")
        i += 1
        marked = previous.strip() == MARKER and lines[start - 1].strip() == MARKER
        if previous.strip() == MARKER and not marked:
            raise ValueError(f"{relative}:{start + 1}: put {MARKER} right before the fence")
        if marked and language != "python":
            raise ValueError(f"{relative}:{start + 1}: only ```python blocks can be runnable")
        name = ""
        if marked:
            runnable_count += 1
            name = f"{relative}-{runnable_count}"
        blocks.append(Block(relative, start + 1, language, "\n".join(body) + "\n", marked, name))
        previous = lines[i - 1]
    return blocks


def runnable_blocks() -> list[Block]:
    return [block for path in doc_files() for block in parse_blocks(path) if block.runnable]


def placeholder_problems(code: str) -> list[str]:
    """Why a block cannot run as written: bare ``...`` statements, ``<your ...>`` text."""
    problems = []
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"not valid Python: {exc}"]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and node.value.value is Ellipsis
        ):
            problems.append(f"line {node.lineno}: a bare '...' placeholder")
    for match in _PLACEHOLDER.finditer(code):
        problems.append(f"placeholder {match.group(0)!r}")
    return problems


def run_block(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run the block as a script in ``directory``, on the default embedded SQLite."""
    script = directory / "doc_block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def failure_report(block: Block, done: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{block.name} ({block.file}, line {block.line}) exited with {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    )


# -- tests ------------------------------------------------------------------------------


BLOCKS = runnable_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_runnable_block(block: Block, tmp_path: Path) -> None:
    assert placeholder_problems(block.code) == [], f"{block.name} cannot run as written"
    done = run_block(block, tmp_path)
    assert done.returncode == 0, failure_report(block, done)
    for sign in ("Traceback (most recent call last)", "Exception ignored"):
        assert sign not in done.stdout + done.stderr, failure_report(block, done)


def test_every_doc_file_has_well_formed_markers() -> None:
    for path in doc_files():
        parse_blocks(path)  # raises on a dangling or misplaced marker


def test_readme_has_a_sync_and_an_async_quickstart_that_run() -> None:
    readme = [b for b in BLOCKS if b.file == "README.md"]
    assert any("SyncInventory" in b.code or "acquire_batch(" in b.code for b in readme)
    assert any("asyncio.run(" in b.code for b in readme)


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}


def test_relative_links_point_at_files_and_headings_that_exist() -> None:
    broken = []
    for path in doc_files():
        for target in _LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert broken == []


def test_readme_keeps_the_commands_that_ci_and_newcomers_run() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TEST_COMMAND in readme  # .ci/run runs exactly this
    assert QUICKSTART_COMMAND in readme


@pytest.mark.parametrize(
    "code",
    [
        "from pybatchintory import SyncInventory\n...\n",
        "def handle(items):\n    ...\n",
        "acquire_batch(source_table='<your table>', job_identifier='j')\n",
    ],
)
def test_placeholders_are_refused(code: str) -> None:
    assert placeholder_problems(code)


def test_a_block_that_fails_is_reported(tmp_path: Path) -> None:
    block = Block("x.md", 1, "python", "raise SystemExit('boom')\n", True, "x.md-1")
    done = run_block(block, tmp_path)
    assert done.returncode != 0 and "boom" in done.stderr


def test_markers_are_parsed_as_documented(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- runnable -->\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page, tmp_path)
    assert [(b.runnable, b.code) for b in blocks] == [(True, "print(1)\n"), (False, "print(2)\n")]
    page.write_text("<!-- runnable -->\n\n```python\nprint(1)\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="right before the fence"):
        parse_blocks(page, tmp_path)
    page.write_text("<!-- runnable -->\n```console\n$ ls\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="only ```python"):
        parse_blocks(page, tmp_path)


# -- running one block by hand --------------------------------------------------------------


def _main(argv: list[str]) -> int:
    import tempfile

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        for block in BLOCKS:
            first = next((ln for ln in block.code.splitlines() if ln.strip()), "")
            print(f"{block.name:<28} {block.file}:{block.line}  {first[:60]}")
        return 0
    by_name = {block.name: block for block in BLOCKS}
    status = 0
    for name in argv:
        if name not in by_name:
            print(f"no runnable block {name!r}; --list names them", file=sys.stderr)
            return 2
        block = by_name[name]
        problems = placeholder_problems(block.code)
        if problems:
            print(f"{name}: {'; '.join(problems)}", file=sys.stderr)
            status = 1
            continue
        with tempfile.TemporaryDirectory() as directory:
            done = run_block(block, Path(directory))
        print(f"=== {name} ({block.file}:{block.line}): exit {done.returncode}")
        print(done.stdout, end="")
        print(done.stderr, end="", file=sys.stderr)
        status = status or done.returncode
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
