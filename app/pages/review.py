"""Review page: the lowest-ApB training images as a paginated grid, filtered by class and by candidate flag."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from app.common import run_page, thumbnail
from auditor import queries
from auditor.store import Store

PAGE_SIZES = (12, 24, 48, 96)
GRID_COLUMNS = 6


def _first_page() -> None:
    """Go back to page 1 whenever a filter changes."""
    st.session_state["page"] = 1


def _card(row: dict[str, Any]) -> None:
    """One image with its id, label, predicted label and ApB; the path comes from the query, never the browser."""
    image = thumbnail(row["path"])
    if image is None:
        st.warning(f"{row['sample_id']}: image unreadable")
    else:
        st.image(image, caption=row["sample_id"])
    predicted = "–" if pd.isna(row["pred_label"]) else row["pred_label"]
    if predicted != row["label"]:
        predicted = f":red[**{predicted}**]"
    flag = " :orange-badge[candidate]" if row["memorized_candidate"] else ""
    st.markdown(f":small[label **{row['label']}**, predicted {predicted}  \nApB **{row['apb']:.2f}**{flag}]")


def render(store: Store) -> None:
    """Filters, pager and one page of the grid, or an info message while nothing is scored."""
    if queries.review_count(store) == 0:
        st.info("No ApB scores yet: the review grid fills in once `memaudit run --db ...` has trained and scored.")
        return
    controls = st.columns([2, 1, 2, 1], vertical_alignment="bottom")
    label = controls[0].selectbox("Class", [None, *queries.class_labels(store)], key="label",
                                  format_func=lambda v: "All classes" if v is None else v, on_change=_first_page)
    size = controls[1].selectbox("Images per page", PAGE_SIZES, index=1, key="page_size", on_change=_first_page)
    only_candidates = controls[2].toggle("Only memorized candidates", key="only_candidates", on_change=_first_page)
    total = queries.review_count(store, label, only_candidates)
    pages = max(1, math.ceil(total / size))
    st.session_state["page"] = min(st.session_state.get("page", 1), pages)
    page = controls[3].number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="page")
    if total == 0:
        st.info("No scored training images match these filters.")
        return
    offset = (page - 1) * size
    rows = queries.review_page(store, label, only_candidates, limit=size, offset=offset).to_dict("records")
    st.caption(f"Images {offset + 1:,}–{offset + len(rows):,} of {total:,}, lowest ApB first.")
    for start in range(0, len(rows), GRID_COLUMNS):
        for column, row in zip(st.columns(GRID_COLUMNS), rows[start:start + GRID_COLUMNS]):
            with column.container(border=True):
                _card(row)


run_page("Review: lowest ApB first", render)
