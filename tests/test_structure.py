"""The shape of the code: no `auditor` module over 400 lines and no SQL in `pipelines/` (stages call the `auditor`
module that owns a table). The modules that break a rule today are listed with their current size, so they can only
shrink: a module that drops to the limit must leave its list, and no new one may join it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
# auditor modules over MAX_LINES today -> their line count now (the most they may have until they are split).
OVER_LINES: dict[str, int] = {}
# pipelines modules that still hold SQL -> how many SQL string literals they hold now.
SQL_HOLDERS: dict[str, int] = {}
_SQL = re.compile(r"\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WITH|COPY|PRAGMA|ATTACH)\s")


def sql_literals(source: str) -> int:
    """How many string literals (f-strings included, their fields blanked) of `source` begin an SQL statement."""
    nodes = list(ast.walk(ast.parse(source)))
    parts = {id(v) for node in nodes if isinstance(node, ast.JoinedStr) for v in node.values}
    count = 0
    for node in nodes:
        if id(node) in parts:  # a piece of an f-string, counted with it
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        count += bool(_SQL.match(text))
    return count


def over_limit(counts: dict[str, int], allowed: dict[str, int], limit: int) -> list[str]:
    """What breaks a rule 'at most `limit`, or at most the allowed count of a listed file'; listed files that meet
    the rule must leave the list."""
    wrong = [f"{path}: {n} (at most {allowed.get(path, limit)})" for path, n in sorted(counts.items())
             if n > allowed.get(path, limit)]
    wrong += [f"{path}: {counts.get(path, 0)} now meets the limit {limit}: remove it from the list"
              for path in sorted(allowed) if counts.get(path, 0) <= limit]
    return wrong


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_checks_count_what_they_should():
    source = 'a = "SELECT 1"\nb = f"""\n  INSERT INTO t VALUES ({x})"""\nc = "selected rows"\nd = "WITHOUT"\n'
    assert sql_literals(source) == 2
    assert over_limit({"a": 5, "b": 2}, {}, 3) == ["a: 5 (at most 3)"]
    assert over_limit({"a": 5, "b": 2}, {"a": 5, "b": 4}, 3) == ["b: 2 now meets the limit 3: remove it from the list"]
    assert over_limit({"a": 6}, {"a": 5}, 3) == ["a: 6 (at most 5)"]


def test_no_auditor_module_is_over_400_lines():
    counts = {relative(p): len(p.read_text().splitlines()) for p in sorted((ROOT / "auditor").rglob("*.py"))}
    wrong = over_limit(counts, OVER_LINES, MAX_LINES)
    assert not wrong, "auditor modules over the line limit (split them by topic):\n" + "\n".join(wrong)


def test_pipelines_hold_no_sql():
    counts = {relative(p): sql_literals(p.read_text()) for p in sorted((ROOT / "pipelines").rglob("*.py"))}
    wrong = over_limit(counts, SQL_HOLDERS, 0)
    assert not wrong, "SQL in pipelines/ (move it to the auditor module that owns the table):\n" + "\n".join(wrong)
