"""What every dashboard page shares: finding the audit database, guarding reads, cached image thumbnails."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import streamlit as st
from PIL import Image, ImageOps

from auditor import queries
from auditor.images import ImageError, decode_image
from auditor.store import Store, StoreBusy

DB_ENV = "MEMAUDIT_DB"
USAGE = f"start the dashboard with `memaudit app --db PATH` (or `streamlit run app/main.py -- --db PATH`, or {DB_ENV})"
_TABLES = {"samples", "classes", "problems", "runs", "epochs", "predictions", "scores", "flags"}
METHOD_NAMES = {"ploo": "pLOO", "ploo_improved": "pLOO-improved", "loo": "exact LOO"}


def method_name(method: str | None) -> str:
    """Display name of a memorization method ('ploo_improved' -> 'pLOO-improved'); '–' when missing."""
    return "–" if method is None else METHOD_NAMES.get(method, method)


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
    """The audit database as a short-timeout read-only Store; shows an error and stops the page when unusable."""
    path = db_path()
    if path is None:
        st.error(f"No audit database given: {USAGE}.")
        st.stop()
    if not path.is_file():
        st.error(f"The audit database `{path}` does not exist; create it with `memaudit run --db {path}`.")
        st.stop()
    store = Store(path, timeout_s=10.0)
    missing = _TABLES - store.tables()
    if missing:
        st.error(f"`{path}` is not a memaudit database (missing tables: {', '.join(sorted(missing))}).")
        st.stop()
    if not queries.has_memorization_schema(store):
        st.error(f"`{path}` was written by an older memaudit without memorization scores; upgrade it (and score "
                 f"memorization) with `memaudit run --stages memorization --db {path}`.")
        st.stop()
    return store


def run_page(title: str, render: Callable[[Store], None]) -> None:
    """Render one page against the database, turning a locked or unreadable file into an error message."""
    st.title(title)
    try:
        store = open_store()
        st.caption(f"Audit database: `{store.path}`")
        render(store)
    except (StoreBusy, duckdb.Error) as exc:
        st.error(f"Could not read the audit database: {exc}")


@st.cache_data(max_entries=2048, show_spinner=False)
def thumbnail(path: str, size: int = 112) -> bytes | None:
    """PNG bytes of the image at `path` fitted into size x size (pixelated when enlarged); None if unreadable."""
    try:
        img = Image.fromarray(decode_image(path).pixels)
    except (ImageError, Image.DecompressionBombError):
        return None
    method = Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.LANCZOS
    out = io.BytesIO()
    ImageOps.contain(img, (size, size), method=method).save(out, format="PNG")
    return out.getvalue()
