"""Decisions: what reviewers decided (counts by action, the current decision of every reviewed image, newest first),
with undo for a selection and the full history of one image."""

from __future__ import annotations

import math

import altair as alt
import streamlit as st

from app.common import run_page
from app.decide import decide, show_decision_error
from auditor.reviews import current_decisions, decision_counts, decision_history
from auditor.store import Store

PAGE_SIZE = 50
ACTION_COLORS = alt.Scale(domain=["keep", "remove", "relabel"], range=["#2ca02c", "#d62728", "#1f77b4"])


def render(store: Store) -> None:
    """Counts, one page of current decisions with undo, and a history lookup."""
    counts = decision_counts(store)
    total = int(counts["samples"].sum())
    if total == 0:
        st.info("No decisions yet: pick images on the Review page (or open one in Point detail) and decide keep, "
                "remove or relabel.")
        return
    left, right = st.columns([1, 2])
    with left:
        st.metric("Images decided", f"{total:,}")
        st.altair_chart(alt.Chart(counts).mark_bar().encode(
            x=alt.X("samples:Q", title="images"), y=alt.Y("action:N", title=None, sort=None),
            color=alt.Color("action:N", scale=ACTION_COLORS, legend=None), tooltip=["action", "samples"]),
            width="stretch")
    with right:
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="decisions_page")
        frame = current_decisions(store, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        table = st.dataframe(frame, hide_index=True, width="stretch", key="decisions_table", on_select="rerun",
                             selection_mode="multi-row")
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
