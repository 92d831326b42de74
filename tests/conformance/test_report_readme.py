"""README.md's catalogue table is the one tools/catalogue_table.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conformance.checks import CATALOGUE
from conformance.rules import RULES
from tests.helpers import ROOT

TOOL = ROOT / "tools" / "catalogue_table.py"
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


def generate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def block(text: str) -> str:
    return text[text.index(START) + len(START) : text.index(END)].removeprefix("\n")


def test_catalogue_table_has_a_row_per_check() -> None:
    result = generate()
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [c.id for c in CATALOGUE] + [r.id for r in RULES]


def test_readme_catalogue_table_is_current() -> None:
    table = generate().stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert block(readme) == table, "README.md is stale: run python tools/catalogue_table.py --write"


def test_catalogue_table_write_replaces_only_its_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nold table\n{END}\n\nkept\n", encoding="utf-8")
    result = generate("--write", "--readme", str(readme))
    assert result.returncode == 0, result.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# title\n\n{START}\n")
    assert text.endswith(f"{END}\n\nkept\n")
    assert block(text) == generate().stdout
    readme.write_text("no markers\n", encoding="utf-8")
    missing = generate("--write", "--readme", str(readme))
    assert missing.returncode == 1
    assert "README lacks" in missing.stderr
