"""Regenerate the console session in docs/cli.md from a real run.

    python3 docs/cli_session.py

Runs examples/recursive_pipeline.py in a fresh temporary directory, then each command
below through a shell, and writes what they printed between the session markers of
docs/cli.md, so that the documented output is what this version prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
START, END = "<!-- session:start -->", "<!-- session:end -->"
COMMANDS = [
    "pybatchintory jobs",
    "pybatchintory status convert",
    "pybatchintory batches convert --limit 4",
    "pybatchintory trace raw_files 7",
    "pybatchintory retry convert",
    "pybatchintory pause aggregate --reason 'warehouse maintenance'",
    "pybatchintory jobs",
    "pybatchintory resume aggregate",
    "pybatchintory reset convert --to 16 --dry-run",
    "pybatchintory reset convert --to 16",
    "pybatchintory reset convert --to 16",
    "pybatchintory status convert --json | head -8",
    "pybatchintory status no_such_job",
    "echo $?",
    "pybatchintory --inventory-url postgresql+asyncpg://nobody:secret@127.0.0.1:1/x jobs",
    "echo $?",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
        env["PYTHONPATH"] = str(ROOT)
        # the command as a user types it, whatever venv runs this script
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYBATCHINTORY_INVENTORY_URL"] = "sqlite+aiosqlite:///recursive_pipeline.sqlite3"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "recursive_pipeline.py")],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        lines = [
            "```console",
            f"$ export PYBATCHINTORY_INVENTORY_URL={env['PYBATCHINTORY_INVENTORY_URL']}",
        ]
        exit_code = 0
        for command in COMMANDS:
            lines.append(f"$ {command}")
            if command == "echo $?":  # the previous command's exit code
                lines.append(str(exit_code))
                continue
            run = subprocess.run(
                ["bash", "-c", command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            exit_code = run.returncode
            lines += (run.stdout + run.stderr).rstrip("\n").splitlines()
        lines.append("```")
    page = PAGE.read_text()
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{START}\n{chr(10).join(lines)}\n{END}{tail}")
    print(f"rewrote the session in {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
