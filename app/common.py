"""What every dashboard page shares: finding the audit database, guarding reads, cached image thumbnails, and the
names, colours and one-line evidence of the flag kinds."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from app.reviewer import reviewer_box
from auditor.review import queries
from auditor.detectors.flag_kinds import REGISTRY, evidence_style
from auditor.data.thumbnails import FileChanged, thumbnail as make_thumbnail
from auditor.store.database import Store, StoreBusy, StoreCorrupt, StoreUnwritable

DB_ENV = "MEMAUDIT_DB"
USAGE = f"start the dashboard with `memaudit app --db PATH` (or `streamlit run app/main.py -- --db PATH`, or {DB_ENV})"
_TABLES = {"samples", "classes", "problems", "runs", "epochs", "predictions", "scores", "flags"}
METHOD_NAMES = {"ploo": "pLOO", "ploo_improved": "pLOO-improved", "loo": "exact LOO"}
# Display names and colours of the flag kinds (in the registry's priority order); 'none' is an unflagged map point.
FLAG_NAMES = {**{kind.name: kind.display for kind in REGISTRY}, "none": "No flag"}
FLAG_COLORS = {**{kind.name: kind.color for kind in REGISTRY}, "none": "#c7c7c7"}
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~$"})
UNREADABLE = "image unreadable"
CHANGED = "file changed since the audit: not shown (re-run ingest to audit it as it is now)"
# The Store of the page being rendered in this thread (run_page), whose shared connection image checks reuse.
_PAGE_STORE: contextvars.ContextVar[Store | None] = contextvars.ContextVar("page_store", default=None)


def method_name(method: str | None) -> str:
    """Display name of a memorization method ('ploo_improved' -> 'pLOO-improved'); '–' when missing."""
    return "–" if method is None else METHOD_NAMES.get(method, method)


def flag_name(kind: str | None) -> str:
    """Display name of a flag kind ('long_tail' -> 'Long tail'); unknown kinds as they are."""
    return "–" if kind is None else FLAG_NAMES.get(kind, kind)


def md(text: Any) -> str:
    """`text` with markdown's special characters escaped, to show a label or id from the data as it is."""
    return str(text).translate(_MARKDOWN_SPECIAL)


def parse_detail(detail: str | None) -> dict | str:
    """A flag's detail: the JSON object of a detector flag as a dict, any other detail as its text ('' when none)."""
    if detail is None:
        return ""
    try:
        value = json.loads(detail)
    except (TypeError, ValueError):
        return str(detail)
    return value if isinstance(value, dict) else str(detail)


def _number(value: Any, fmt: str = ".3f") -> str:
    """`value` formatted with `fmt`, '–' when missing or not a number."""
    return format(value, fmt) if isinstance(value, int | float) and not math.isnan(value) else "–"


def evidence_line(kind: str, detail: str | None, label: str | None = None) -> str:
    """The one-line evidence of a flag as markdown, e.g. 'leaked: twin mnist_0505 (0.975)', 'mislabeled: given 3 →
    suggested 8' or 'long tail: cluster of 2 in class 7'; `label` is the flagged sample's class."""
    info, name = parse_detail(detail), md(kind.replace("_", " "))
    if not isinstance(info, dict):
        text = info if len(info) <= 80 else info[:79] + "…"
        return f"{name}: {md(text)}" if text else name
    evidence = evidence_style(kind)
    if evidence == "twins":
        line = f"{name}: twin {md(info.get('twin', '–'))} ({_number(info.get('similarity'))})"
        if info.get("exact"):
            line += ", exact copy"
        if info.get("twins", 1) > 1:
            line += f", {info['twins'] - 1} more"
        if info.get("conflicting") or info.get("conflicting_twins"):
            line += ", :red[**other label**]"
        return line
    if evidence == "labels":
        return f"{name}: given {md(info.get('given', '–'))} → suggested **{md(info.get('suggested', '–'))}**"
    if evidence == "cluster":
        where = "" if label is None else f" in class {md(label)}"
        line = f"{name}: cluster of {info.get('cluster_size', '–')}{where}"
        return line + (", low density" if "low_density" in info.get("reasons", []) else "")
    if "summary" in info:
        return f"{name}: {md(info['summary'])}"
    return f"{name}: " + ", ".join(f"{md(k)} {md(v)}" for k, v in list(info.items())[:3])


def db_path(argv: list[str] | None = None) -> Path | None:
    """The database named by `--db PATH` after streamlit's `--`, else by $MEMAUDIT_DB, else None."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--db")
    try:
        known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except argparse.ArgumentError:
        known = argparse.Namespace(db=None)
    value = known.db or os.environ.get(DB_ENV)
    return Path(value) if value else None


def open_store() -> Store:
    """The audit database as a short-timeout read-only Store; shows an error and stops the page when there is no
    such file (its tables are checked by `check_store`, on the render's own connection)."""
    path = db_path()
    if path is None:
        st.error(f"No audit database given: {USAGE}.")
        st.stop()
    if path.is_dir():
        st.error(f"`{path}` is a folder, not an audit database; start the dashboard on the .duckdb file: {USAGE}.")
        st.stop()
    if not path.is_file():
        st.error(f"The audit database `{path}` does not exist; create it with `memaudit run --db {path}`.")
        st.stop()
    return Store(path, timeout_s=10.0)


def check_store(store: Store) -> None:
    """Show an error and stop the page unless `store` holds the tables of a memaudit database with memorization."""
    missing = _TABLES - store.tables()
    if missing:
        st.error(f"`{store.path}` is not a memaudit database (missing tables: {', '.join(sorted(missing))}).")
        st.stop()
    if not queries.has_memorization_schema(store):
        st.error(f"`{store.path}` was written by an older memaudit without memorization scores; upgrade it (and "
                 f"score memorization) with `memaudit run --stages memorization --db {store.path}`.")
        st.stop()


@contextlib.contextmanager
def reading(store: Store) -> Iterator[None]:
    """One read-only connection for a whole render (a page's, or a fragment's rerun alone), which the images'
    checks reuse too; a locked or unreadable file becomes an error message."""
    try:
        with store.reading():  # released when the render ends
            token = _PAGE_STORE.set(store)
            try:
                yield
            finally:
                _PAGE_STORE.reset(token)
    except StoreUnwritable as exc:
        st.error(f"Could not save: {exc}")
    except (StoreBusy, StoreCorrupt, duckdb.Error) as exc:
        st.error(f"Could not read the audit database: {exc}")


@contextlib.contextmanager
def fragment_reading(path: Path) -> Iterator[Store]:
    """The Store a fragment reads: the page's, on its connection, while the page runs; for a rerun of the fragment
    alone, a connection of its own (errors shown as `reading` shows them)."""
    store = _PAGE_STORE.get()
    if store is not None:
        yield store
        return
    store = Store(path, timeout_s=10.0)
    with reading(store):
        yield store


def run_page(title: str, render: Callable[[Store], None]) -> None:
    """Render one page against the database, turning a locked or unreadable file into an error message; the
    sidebar names the reviewer (app.reviewer)."""
    reviewer_box()
    st.title(title)
    store = open_store()
    st.caption(f"Audit database: `{store.path}`")
    with reading(store):
        check_store(store)
        render(store)


def shown_image(path: str | None, size: int = 112, file_hash: str | None = None) -> tuple[bytes | None, str]:
    """What to show for the image at `path`, fitted into size x size: (PNG bytes, '') when its bytes still hash to
    the `file_hash` recorded at ingest; (a placeholder saying so, CHANGED) when the file changed since the audit;
    (None, UNREADABLE) when it cannot be read or `samples` has no such path. Paths only ever come from `samples`;
    pass the row's `file_hash` along when the query that gave the path has it (else it is looked up by path)."""
    db = db_path()
    if not path or not isinstance(path, str) or db is None:
        return None, UNREADABLE
    recorded = file_hash if isinstance(file_hash, str) else queries.recorded_file_hash(
        _PAGE_STORE.get() or Store(db, timeout_s=10.0), path)
    try:
        stat = os.stat(path)
    except OSError:
        return None, UNREADABLE
    if recorded is None:
        return None, UNREADABLE
    return _checked_image(path, size, recorded, (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=2048)
def _checked_image(path: str, size: int, file_hash: str, stamp: tuple[int, int]) -> tuple[bytes | None, str]:
    """shown_image of a recorded path, cached in memory until the file's size or mtime (`stamp`) or its recorded
    hash changes; thumbnails are kept on disk beside the audit database (`<db>.artifacts/thumbs/`). An lru_cache:
    st.cache_data spends about 1.5 ms per call hashing its arguments, 45 ms for the 30 images of a Review page."""
    db = db_path()
    try:
        image = make_thumbnail(path, size, db.with_name(db.name + ".artifacts") / "thumbs", file_hash)
    except FileChanged:
        return _changed_placeholder(size), CHANGED
    return image, "" if image is not None else UNREADABLE


def clear_image_cache() -> None:
    """Forget the images held in memory (the files on disk stay), for a benchmark's cold render."""
    _checked_image.cache_clear()


def _changed_placeholder(size: int) -> bytes:
    """A size x size PNG that says, in red on grey, that the file changed since the audit."""
    img = Image.new("RGB", (size, size), (235, 235, 235))
    font = ImageFont.load_default(size=max(8, size // 9))
    ImageDraw.Draw(img).multiline_text((size // 2, size // 2), "file changed\nsince the audit\n(not shown)",
                                       fill=(200, 0, 0), font=font, anchor="mm", align="center")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def thumbnail(path: str | None, size: int = 112, file_hash: str | None = None) -> bytes | None:
    """The image part of shown_image: PNG bytes (a placeholder for a file changed since the audit), or None."""
    return shown_image(path, size, file_hash)[0]
