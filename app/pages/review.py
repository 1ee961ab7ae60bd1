"""Review page: the scored training images as a paginated grid, filtered by class and flag (memorized candidate,
memorized) and sorted by ApB (lowest first) or by mem (highest first)."""

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
NBSP = "\u00a0"
# Flag filter: None = every scored image, else a flag kind (sent to the query as a parameter).
FLAGS = {None: "All scored", "memorized_candidate": "Memorized candidates", "memorized": "Memorized"}
# Labels of the orderings; the options are the keys of queries.REVIEW_SORTS, so only those ever reach the query.
SORTS = {"apb_asc": "ApB, lowest first", "mem_desc": "mem, highest first"}


def _first_page() -> None:
    """Go back to page 1 whenever a filter or the order changes."""
    st.session_state["page"] = 1


def mem_text(row: dict[str, Any]) -> str:
    """'mem 0.62 [0.31, 0.85]' for a scored point, 'mem – (not a candidate)' (from mem_note) for one that is not."""
    if pd.isna(row["mem"]):
        if pd.isna(row["mem_method"]):
            return "mem – (not run)"
        note = "not scored" if pd.isna(row["mem_note"]) else str(row["mem_note"]).split(" (")[0]
        return f"mem – ({note})"
    return f"mem **{row['mem']:.2f}** [{row['mem_low']:.2f},{NBSP}{row['mem_high']:.2f}]"


def models_text(row: dict[str, Any]) -> str:
    """'4 models in, 4 out' (shadow models trained with / without the point); '' for an unscored point."""
    if pd.isna(row["mem"]):
        return ""
    return f"{int(row['mem_n_in'])} models in, {int(row['mem_n_out'])} out"


def _card(row: dict[str, Any]) -> None:
    """One image with its id, label, predicted label, ApB and mem; the path comes from the query, never the browser."""
    image = thumbnail(row["path"])
    if image is None:
        st.warning(f"{row['sample_id']}: image unreadable")
    else:
        st.image(image, caption=row["sample_id"])
    predicted = "–" if pd.isna(row["pred_label"]) else row["pred_label"]
    if predicted != row["label"]:
        predicted = f":red[**{predicted}**]"
    lines = [f"label **{row['label']}**, predicted {predicted}", f"ApB **{row['apb']:.2f}**", mem_text(row)]
    if models_text(row):
        lines.append(f":gray[{models_text(row)}]")
    badges = [badge for badge, on in ((":orange-badge[candidate]", row["memorized_candidate"]),
                                      (":red-badge[memorized]", row["memorized"])) if on]
    if badges:
        lines.append(" ".join(badges))
    st.markdown(":small[" + "  \n".join(lines) + "]")


def render(store: Store) -> None:
    """Filters, order, pager and one page of the grid, or an info message while nothing is scored."""
    if queries.review_count(store) == 0:
        st.info("No ApB scores yet: the review grid fills in once `memaudit run --db ...` has trained and scored.")
        return
    controls = st.columns([2, 2, 2, 1, 1], vertical_alignment="bottom")
    label = controls[0].selectbox("Class", [None, *queries.class_labels(store)], key="label",
                                  format_func=lambda v: "All classes" if v is None else v, on_change=_first_page)
    flag = controls[1].selectbox("Flag", list(FLAGS), key="flag", format_func=FLAGS.get, on_change=_first_page)
    sort = controls[2].selectbox("Order", list(queries.REVIEW_SORTS), key="sort",
                                 format_func=lambda k: SORTS.get(k, k), on_change=_first_page)
    size = controls[3].selectbox("Images per page", PAGE_SIZES, index=1, key="page_size", on_change=_first_page)
    total = queries.review_count(store, label, flag)
    pages = max(1, math.ceil(total / size))
    st.session_state["page"] = min(st.session_state.get("page", 1), pages)
    page = controls[4].number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="page")
    if total == 0:
        st.info("No scored training images match these filters"
                + (": has the memorization stage run (`memaudit run --stages memorization --db ...`)?"
                   if flag == "memorized" else "."))
        return
    offset = (page - 1) * size
    rows = queries.review_page(store, label, flag, sort, limit=size, offset=offset).to_dict("records")
    st.caption(f"Images {offset + 1:,}–{offset + len(rows):,} of {total:,}, {SORTS.get(sort, sort)}. "
               "mem [95% interval]: accuracy of the shadow models trained with the image (in) minus that of those "
               "trained without it (out); candidates have the lowest ApB, memorized ones a mem at or above the "
               "threshold with an interval above 0.")
    for start in range(0, len(rows), GRID_COLUMNS):
        for column, row in zip(st.columns(GRID_COLUMNS), rows[start:start + GRID_COLUMNS]):
            with column.container(border=True):
                _card(row)


run_page("Review training images", render)
