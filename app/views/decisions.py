"""Decisions: what reviewers decided (counts by action, the current decision of every reviewed image with its
thumbnail and a link to its Point detail, newest first), for one reviewer or all; the images on which reviewers
disagree; undo for a selection and the full history of one image."""

from __future__ import annotations

import base64
import math
from urllib.parse import urlencode

import altair as alt
import pandas as pd
import streamlit as st

from app.common import run_page, thumbnail
from app.decide import decide, show_decision_error
from app.reviewer import KEY as REVIEWER_KEY, reviewer
from auditor.review.reviews import conflicts, current_decisions, decision_counts, decision_history, reviewers
from auditor.store.database import Store

PAGE_SIZE = 50
ACTION_COLORS = alt.Scale(domain=["keep", "remove", "relabel"], range=["#2ca02c", "#d62728", "#1f77b4"])
COLUMNS = {"image": st.column_config.ImageColumn("Image", width="small"),
           "detail": st.column_config.LinkColumn("Point detail", display_text="open")}


def _image_url(path: str | None) -> str | None:
    """The image's thumbnail as a data URL (None when unreadable)."""
    image = thumbnail(path)
    return None if image is None else "data:image/png;base64," + base64.b64encode(image).decode()


def _detail_url(sample_id: str) -> str:
    """Point detail of `sample_id`, signed by the same reviewer (a new tab keeps the name)."""
    return "point?" + urlencode({"id": sample_id, **({REVIEWER_KEY: reviewer()} if reviewer() else {})})


def _with_links(frame: pd.DataFrame, paths: pd.Series | None = None) -> pd.DataFrame:
    """`frame` with a thumbnail (from `paths`, when given) before and a Point detail link after its sample id."""
    shown = frame.drop(columns="path", errors="ignore").copy()
    shown.insert(1, "detail", shown["sample_id"].map(_detail_url))
    if paths is not None:
        shown.insert(0, "image", paths.map(_image_url).to_numpy())
    return shown


def _conflicts(store: Store) -> None:
    """The images on which reviewers' latest decisions disagree, each reviewer's on a row of its own."""
    found = conflicts(store)
    if found.empty:
        st.caption("No image has decisions by two reviewers that disagree.")
        return
    n = found["sample_id"].nunique()
    st.warning(f"Reviewers disagree on {n} image{'s' if n != 1 else ''}: each reviewer's latest decision is listed; "
               "the one that counts (newest) is ticked. Decide again, or undo, to settle them.")
    st.dataframe(_with_links(found), hide_index=True, width="stretch", column_config=COLUMNS,
                 key="decisions_conflicts")


def render(store: Store) -> None:
    """Counts, the conflicts, one page of current decisions (of one reviewer or all) with undo, and a history."""
    if int(decision_counts(store)["samples"].sum()) == 0:
        st.info("No decisions yet: pick images on the Review page (or open one in Point detail) and decide keep, "
                "remove or relabel.")
        return
    who = st.selectbox("Decided by", [None, *reviewers(store)], key="decisions_reviewer",
                       format_func=lambda r: "Every reviewer" if r is None else r)
    counts = decision_counts(store, who)
    total = int(counts["samples"].sum())
    left, right = st.columns([1, 2])
    with left:
        st.metric("Images decided", f"{total:,}")
        st.altair_chart(alt.Chart(counts).mark_bar().encode(
            x=alt.X("samples:Q", title="images"), y=alt.Y("action:N", title=None, sort=None),
            color=alt.Color("action:N", scale=ACTION_COLORS, legend=None), tooltip=["action", "samples"]),
            width="stretch")
    with right:
        st.subheader("Conflicting decisions")
        _conflicts(store)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    st.session_state["decisions_page"] = min(st.session_state.get("decisions_page", 1), pages)
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="decisions_page")
    frame = current_decisions(store, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, reviewer=who)
    table = st.dataframe(_with_links(frame, frame["path"]), hide_index=True, width="stretch", row_height=48,
                         column_config=COLUMNS, key="decisions_table", on_select="rerun", selection_mode="multi-row")
    rows = table.selection.rows if table is not None else []
    chosen = frame["sample_id"].iloc[rows].tolist() if rows else []
    if st.button(f"Undo the decision of {len(chosen)} selected", disabled=not chosen, key="decisions_undo"):
        decide(store, chosen, "undo", None, None)
        st.rerun()
    show_decision_error()
    st.subheader("History of one image")
    sample_id = st.selectbox("Image", frame["sample_id"].tolist(), key="history_id")
    if sample_id:
        st.dataframe(decision_history(store, sample_id), hide_index=True, width="stretch")


run_page("Decisions", render)
