"""The README stays a short guide whose every number is backed by docs/, no page links to a missing file, and
docs/layout.md names the modules that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024
# Packages whose committed modules docs/layout.md must list exactly; names under `app/` only have to exist.
LAYOUT_EXACT = ("auditor", "pipelines", "benchmarks")
LAYOUT_LISTED = ("app",)

_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_NUMBER = re.compile(r"(?<![\w.,])(\d[\d,.]*\d|\d)(\s?%)?")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def quoted_numbers(text: str) -> set[str]:
    """Decimals, percentages and thousands-grouped numbers in prose (code and versions or addresses excluded)."""
    found = set()
    for match in _NUMBER.finditer(_CODE.sub(" ", text)):
        digits, percent = match.group(1), match.group(2)
        if digits.count(".") > 1:
            continue
        if percent or "." in digits or re.fullmatch(r"\d{1,3}(,\d{3})+", digits):
            found.add(digits + ("%" if percent else ""))
    return found


def in_text(number: str, text: str) -> bool:
    """Whether `number` (e.g. "0.95", "5,000", "25%") occurs in `text` as a whole number."""
    digits = re.escape(number.rstrip("%"))
    tail = r"\s?%" if number.endswith("%") else r"(?![\d]|[.,]\d)"
    return re.search(rf"(?<![\w.,]){digits}{tail}", text) is not None


def docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))


def broken_links(page: Path) -> list[str]:
    """The relative link targets of a markdown page whose file or folder does not exist."""
    broken = []
    for target in _LINK.findall(_CODE.sub(" ", page.read_text())):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z]+:", path):
            continue
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


def layout_rows() -> dict[str, set[str]]:
    """docs/layout.md's table: folder -> the module names of its last column."""
    rows = {}
    for line in (DOCS / "layout.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`\w+/`", cells[0]):
            rows[cells[0].strip("`/")] = set(re.findall(r"`([\w/]+)`", cells[2]))
    return rows


def modules_of(package: str, committed: bool) -> set[str]:
    """The modules of a package (as `sub/name`): those git tracks, or every file in the tree."""
    if committed:
        listed = subprocess.run(["git", "ls-files", f"{package}/*.py"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
        paths = [ROOT / p for p in listed if (ROOT / p).exists()]
    else:
        paths = list((ROOT / package).rglob("*.py"))
    return {p.relative_to(ROOT / package).with_suffix("").as_posix() for p in paths if p.name != "__init__.py"}


def test_the_checks_see_numbers_and_links(tmp_path):
    text = "precision 0.95, 5,000 images, 25 % of them, 12 epochs, `torch==2.14.1` on 127.0.0.1, (p = 0.006)."
    assert quoted_numbers(text) == {"0.95", "5,000", "25%", "0.006"}
    assert in_text("0.95", "P 0.95 [0.92]") and not in_text("0.95", "0.951 and 10.95")
    assert in_text("25%", "audit 25 % of each") and not in_text("25%", "125 %")
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md) [b](page.md#x) [c](https://example.org/x.md) `[d](gone.md)`")
    assert broken_links(page) == ["missing.md"]


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}: move details to docs/"


def test_every_number_the_readme_quotes_is_in_docs():
    docs = docs_text()
    missing = sorted(n for n in quoted_numbers(README.read_text()) if not in_text(n, docs))
    assert not missing, f"README.md quotes numbers that no docs/*.md page holds (with date, machine, command): {missing}"


def test_no_relative_link_points_to_a_missing_file():
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in [README, *sorted(DOCS.glob("*.md"))]
              for target in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_layout_page_matches_the_tree():
    rows = layout_rows()
    assert set(LAYOUT_EXACT + LAYOUT_LISTED) <= set(rows), f"docs/layout.md lacks rows for {sorted(rows)}"
    wrong = []
    for package in LAYOUT_EXACT + LAYOUT_LISTED:
        present = modules_of(package, committed=False)
        wrong += [f"{package}/{m} is named in docs/layout.md but does not exist" for m in sorted(rows[package] - present)]
        if package in LAYOUT_EXACT:
            missing = modules_of(package, committed=True) - rows[package]
            wrong += [f"{package}/{m}.py is missing from docs/layout.md" for m in sorted(missing)]
    assert not wrong, "\n".join(wrong)
