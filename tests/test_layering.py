"""The layering of the three packages: `app` (the dashboard) on top of `pipelines` on top of `auditor` (the library),
no cycles among the project's modules, and a dashboard that never loads the training stack (torch, faiss,
open_clip): its pages read names from light modules (pipelines.stage_names, auditor.detectors.pair_kinds)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from auditor.store.database import Store

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "auditor", "pipelines")
HEAVY = ("torch", "faiss", "open_clip")
# Which package may not import which: the library knows neither the pipelines nor the dashboard, and the pipelines
# do not know the dashboard.
FORBIDDEN = {"auditor": ("app", "pipelines"), "pipelines": ("app",)}

# Run in a fresh interpreter: import every module of `app` that is not a page, then run every page (app/main.py,
# which renders the default page, and each of app/views/) with streamlit's AppTest against an empty audit database,
# and report, page by page, which heavy modules are loaded by then and what the page raised.
PAGE_PROBE = """
import importlib, json, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest

heavy, modules, pages = json.loads(sys.argv[1])
report = []
for name in modules:
    importlib.import_module(name)
    report.append({"page": name, "errors": [], "heavy": [m for m in heavy if m in sys.modules]})
for page in pages:
    at = AppTest.from_file(page).run(timeout=120)
    report.append({"page": Path(page).name, "errors": [str(e.value) for e in at.exception],
                   "heavy": [m for m in heavy if m in sys.modules]})
print(json.dumps(report))
"""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the three packages by its dotted name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` imports anywhere in its file (function-level imports included):
    `from a.b import c` names a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level - 1` packages up
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of `graph` (each as the path that closes it), by depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "auditor.detectors.flag_kinds" in graph["auditor.review.queries"]  # from a.b import name
    assert "auditor.store.job_queries" in graph["app.views.jobs"]  # from a import module
    assert "pipelines.launcher" in graph["app.views.jobs"]
    assert "app.common" in graph["app.views.review"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_lower_layer_imports_a_higher_one():
    wrong = [f"{name} imports {target}" for name, targets in import_graph().items() for target in sorted(targets)
             if target.split(".")[0] in FORBIDDEN.get(name.split(".")[0], ())]
    assert not wrong, "layering broken (app > pipelines > auditor):\n" + "\n".join(wrong)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_dashboard_never_loads_the_training_stack(tmp_path):
    db = tmp_path / "empty.duckdb"
    Store(db).init()
    modules = [m for m in project_modules() if m.split(".")[0] == "app" and not m.startswith("app.views")
               and m != "app.main"]
    pages = [str(ROOT / "app" / "main.py"), *map(str, sorted((ROOT / "app" / "views").glob("*.py")))]
    assert len(pages) > 5 and "app.common" in modules
    env = dict(os.environ, MEMAUDIT_DB=str(db), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", PAGE_PROBE, json.dumps([HEAVY, modules, pages])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert [r["page"] for r in report] == [*modules, *(Path(p).name for p in pages)]
    assert all(not r["errors"] for r in report), [r for r in report if r["errors"]]
    first = next((r for r in report if r["heavy"]), None)
    assert first is None, f"the dashboard loaded {', '.join(first['heavy'])}, first with {first['page']}"


def test_the_cli_loads_the_training_stack_only_to_train():
    """`memaudit app`, `status` and `export` start without torch, faiss or open_clip (seconds of cold start)."""
    probe = f"import sys, pipelines.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
