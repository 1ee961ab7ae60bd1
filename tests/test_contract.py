"""The DuckDB contract in docs/schema.md is the real schema: every table and view it documents exists in a database the
pipeline wrote (`small_db`) with exactly the documented columns, and every table, view and column of that database is
documented."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
HEADER = "| table | columns | notes |"
# `name`, `view name` or `name` (what the row adds), in the table column
NAME = re.compile(r"^(?P<view>view )?`(?P<name>[a-z_]+)`(?: \((?P<part>[^)]*)\))?$")
# "every `samples` and `scores` column, ...": a view holding every column of the documented tables it names
EVERY = re.compile(r"^every (?P<tables>.+?) column\b")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _row(line: str, source: Path) -> tuple[str, str, str]:
    """(name, 'BASE TABLE' or 'VIEW', columns cell) of one contract row."""
    name, columns = _cells(line)[:2]
    match = NAME.match(name)
    assert match, f"{source.name}: a contract row names no table: {name!r}"
    return match["name"], "VIEW" if match["view"] else "BASE TABLE", columns


def contract_rows(schema: Path = SCHEMA) -> list[tuple[str, str, str]]:
    """Rows of the contract table in `schema`."""
    lines = schema.read_text().splitlines()
    start = lines.index(HEADER)
    assert lines[start + 1].startswith("|---"), "the contract table lost its header rule"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_row(line, schema))
    return rows


def documented(rows: list[tuple[str, str, str]]) -> dict[str, tuple[str, set[str]]]:
    """{name: (kind 'BASE TABLE' or 'VIEW', columns)} from the contract rows; a second row for the same name
    (`scores` (memorization columns)) adds its columns."""
    contract: dict[str, tuple[str, set[str]]] = {}
    expand = []
    for name, kind, columns in rows:
        every = EVERY.match(columns)
        if every:  # resolved once every table's row is read
            expand.append((name, re.findall(r"`([a-z_]+)`", every["tables"])))
            columns = columns[every.end():]
            names = set(re.findall(r"`([a-z_]+)`", columns))
        else:
            names = {c.strip() for c in columns.split(",")}
            assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in names), f"{name}: odd column in {columns!r}"
        old_kind, old = contract.get(name, (kind, set()))
        assert old_kind == kind, f"{name} is documented both as a table and as a view"
        contract[name] = (kind, old | names)
    for name, tables in expand:
        kind, names = contract[name]
        contract[name] = (kind, names | set().union(*(contract[t][1] for t in tables)))
    return contract


CONTRACT = documented(contract_rows())


@pytest.fixture(scope="module")
def real(small_db) -> dict[str, tuple[str, set[str]]]:
    """{name: (table type, columns)} of every table and view in the main schema of the pipeline's database."""
    con = duckdb.connect(str(small_db), read_only=True)
    try:
        types = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                 "WHERE table_schema = 'main'").fetchall())
        columns: dict[str, set[str]] = {}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'main'").fetchall():
            columns.setdefault(table, set()).add(column)
    finally:
        con.close()
    return {name: (kind, columns.get(name, set())) for name, kind in types.items()}


def test_the_docs_document_the_contract():
    assert len(CONTRACT) >= 40 and {"samples", "scores", "flags", "pairs", "audit"} <= set(CONTRACT)
    assert {"mem", "mem_run_id", "apb"} <= CONTRACT["scores"][1]  # both `scores` rows
    assert {"sample_id", "apb", "mem", "flags", "triage"} <= CONTRACT["audit"][1]  # every samples/scores column


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_a_documented_table_is_in_the_database_with_exactly_its_columns(name, real):
    kind, columns = CONTRACT[name]
    assert name in real, f"docs/schema.md documents {name}, the pipeline's database has no such table or view"
    real_kind, real_columns = real[name]
    assert real_kind == kind, f"{name} is a {real_kind}, docs/schema.md says {kind}"
    assert not columns - real_columns, f"{name}: documented but absent: {sorted(columns - real_columns)}"
    assert not real_columns - columns, f"{name}: in the database but undocumented: {sorted(real_columns - columns)}"


def test_every_table_and_view_of_the_database_is_documented(real):
    undocumented = sorted(set(real) - set(CONTRACT))
    assert not undocumented, f"tables or views docs/schema.md does not list: {undocumented}"

