"""The documentation holds together: every relative link in the README and docs/ points at a file (and heading)
that exists, the README stays a front door, and docs/results.md's column table is the Parquet schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deft_clean.outputs.results import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
PAGES.append(ROOT / "benchmarks" / "README.md")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TYPES = {"string": "string", "int64": "int64", "bool": "bool", "float": "float32"}  # arrow name -> the docs' word


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a link in an example is not a link)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == []


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 15_000
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("pip install -e '.[dev]'", "python -m pytest"):  # .ci/run runs exactly these
        assert command in readme and command in ci
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name}" in readme, f"the README does not link docs/{doc.name}"


def documented_columns() -> dict[str, str]:
    """column -> its type word, from the table under docs/results.md's "| column | type | meaning |"."""
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = text.split("| column | type | meaning |", 1)[1].split("\n\n", 1)[0]
    columns = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            columns[name] = cells[1].split(",")[0].strip()
    return columns


def test_parquet_column_table_is_the_schema():
    documented = documented_columns()
    schema = {field.name: TYPES.get(str(field.type), str(field.type)) for field in SCHEMA}
    assert list(documented) == list(schema), "docs/results.md's column table must list SCHEMA's columns in order"
    assert documented == schema
