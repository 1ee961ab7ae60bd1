"""Export: a cleaned manifest (CSV, Parquet or JSONL, the input manifest's columns, so it can be audited again) with
relabels applied, removed images dropped and, optionally, unreviewed images of chosen flag kinds dropped; a preview
of what changes, then an atomic write into the audit's `exports/` folder and a download."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import streamlit as st

from app.common import flag_name, run_page
from auditor.review import queries
from auditor.review.export import ExportError, ExportSummary, export_manifest, plan_export
from auditor.store.database import Store

FORMATS = ("csv", "parquet", "jsonl")
# An export is named, never pathed: it is written into exports/ beside the audit database.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SUMMARY_KEY = "export_summary"  # the last export of the session


def export_dir(store: Store):
    """The only folder the dashboard writes exports to: `exports/` beside the audit database."""
    return store.path.parent / "exports"


def render(store: Store) -> None:
    """Options, a preview of the changes, and the write."""
    left, right = st.columns(2)
    with left:
        apply_relabels = st.checkbox("Apply relabels", value=True, key="export_relabels")
        drop_removed = st.checkbox("Drop images decided 'remove'", value=True, key="export_drop_removed")
        drop_kinds = st.multiselect("Also drop unreviewed images flagged", queries.flag_kinds(store),
                                    format_func=flag_name, key="export_drop_kinds",
                                    help="An image decided 'keep' or 'relabel' is never dropped by its flags")
    with right:
        fmt = st.selectbox("Format", FORMATS, key="export_format")
        name = st.text_input("File name", value="cleaned", key="export_name",
                             help=f"Written as {export_dir(store)}/<name>.<format> with its changelog, "
                                  "<name>.changelog.csv (csv) or <name>.changelog.<format>.csv")
    manifest, changelog = plan_export(store, apply_relabels=apply_relabels, drop_removed=drop_removed,
                                      drop_kinds=drop_kinds)
    st.subheader("Preview")
    changes = changelog["change"].value_counts().to_dict()
    cols = st.columns(4)
    cols[0].metric("Rows kept", f"{len(manifest):,}")
    cols[1].metric("Removed", f"{changes.get('removed', 0):,}")
    cols[2].metric("Relabeled", f"{changes.get('relabeled', 0):,}")
    cols[3].metric("Dropped unreviewed", f"{changes.get('dropped_unreviewed', 0):,}")
    if not changelog.empty:
        st.dataframe(changelog.head(200), hide_index=True, width="stretch")
    stem = name.strip().removesuffix(f".{fmt}")
    if not _NAME.match(stem):
        st.error("Use a plain file name (letters, digits, '.', '_' or '-'), not a path.")
        return
    target = export_dir(store) / f"{stem}.{fmt}"
    overwrite = False
    if target.exists():
        st.warning(f"exports/{target.name} exists already: tick 'Overwrite it' to replace it and its changelog, "
                   "or choose another name.")
        overwrite = st.checkbox("Overwrite it", key="export_overwrite")
    options = {"apply_relabels": apply_relabels, "drop_removed": drop_removed, "drop_kinds": drop_kinds}
    st.button("Export", type="primary", key="export_write", on_click=_export, args=(store, target, fmt, options,
                                                                                   overwrite))
    error = st.session_state.pop("export_error", None)
    if error:
        st.error(error)
        return
    if SUMMARY_KEY in st.session_state:
        _result(st.session_state[SUMMARY_KEY])


def _export(store: Store, target: Path, fmt: str, options: dict[str, Any], overwrite: bool) -> None:
    """The Export button: write the manifest and its changelog, keep the summary (or the error) for the page, and
    ask again before the next overwrite."""
    try:
        st.session_state[SUMMARY_KEY] = export_manifest(store, target, fmt=fmt, overwrite=overwrite, **options)
    except (ExportError, ValueError) as exc:
        st.session_state["export_error"] = f"Export failed: {exc}"
        return
    st.session_state["export_overwrite"] = False


def _result(summary: ExportSummary) -> None:
    """The last export of this session with its download buttons, kept across reruns (a download is one)."""
    st.success(f"Wrote {summary.rows_out:,} of {summary.rows_in:,} rows to `{summary.path}` "
               f"({summary.removed} removed, {summary.relabeled} relabeled"
               + "".join(f", {n} {kind} dropped" for kind, n in summary.dropped_by_kind.items())
               + f"); changelog `{summary.changelog}`.")
    st.dataframe(summary.by_class, hide_index=True)
    if not (summary.path.is_file() and summary.changelog.is_file()):
        st.caption("The exported files are gone from exports/: export again to download them.")
        return
    left, right = st.columns(2)
    left.download_button("Download the manifest", summary.path.read_bytes(), file_name=summary.path.name,
                         key="export_download", on_click="ignore")
    right.download_button("Download the changelog", summary.changelog.read_bytes(),
                          file_name=summary.changelog.name, key="export_download_log", on_click="ignore")

run_page("Export a cleaned manifest", render)
