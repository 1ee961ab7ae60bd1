"""Review queue: a paginated grid of images filtered by flag kind, class, split, score range and review state, sorted
by any score; pick images on any page and decide keep / remove / relabel with a note, each to its suggested label, or
undo; the focused image beside the grid with one-key decisions, its evidence below, its Point detail one click away.

Everything below the filters is a fragment: deciding and paging rerun only the queue, not the page; a change of
the decision widgets reruns only the decision bar (app.grid); a tick reruns nothing (the browser keeps the picks until
a press needs them, app.picks)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import focus
from app.common import flag_name, fragment_reading, run_page
from app.decide import QUEUE_FRAGMENT
from app.evidence import flag_evidence, label_text, mem_text, models_text
from app.grid import DEFAULT_THUMBS, GRID_CSS, THUMB_WIDTHS, decision_bar, flags, tile
from app.picks import pick_sync
from app.reviewer import KEY as REVIEWER_KEY, reviewer
from auditor.review import queries
from auditor.review.queries import ReviewFilter
from auditor.store.database import Store

PAGE_SIZES = (12, 24, 48, 96)
SCORE_NAMES = {"apb": "ApB", "mem": "mem", "score": "flag strength", "first_learned": "first learned",
               "forgetting": "forgetting events", "el2n": "EL2N", "confidence": "confidence"}
# Labels of the orderings; the options are the keys of queries.REVIEW_SORTS, so only those ever reach the query.
SORTS = {key: f"{SCORE_NAMES[key.rsplit('_', 1)[0]]}, {'lowest' if key.endswith('_asc') else 'highest'} first"
         for key in queries.REVIEW_SORTS}
STATES = {"any": "Any review state", "undecided": "Not reviewed yet", "decided": "Decided", "keep": "Kept",
          "remove": "Removed", "relabel": "Relabeled"}
SELECTION_KEY = "selection"  # ids brushed on the Overview scatter, opened here
# The view that lives in the URL (?flag=mislabeled&page=2&evidence=...) and is kept for the way back from another
# page: filters, order, page size, page, thumbnail size and the focused image (whose evidence is shown).
VIEW_KEYS = ("flag", "label", "split", "state", "sort", "page_size", "page", "thumbs", "evidence")
VIEW_KEY = "review_view"
DEFAULT_PAGE_SIZE = 24


def _parse_view(key: str, text: str | None, options: dict[str, list[str]]) -> str | int | None:
    """One view value from its URL text: a page size or page number as an int, an evidence id as it is, any other
    key only when it is one of its `options`; None when missing or not valid."""
    if text is None:
        return None
    if key in ("page", "page_size"):
        number = int(text) if text.isdigit() else 0
        return number if number >= 1 and (key == "page" or number in PAGE_SIZES) else None
    return text if key == "evidence" or text in options[key] else None


def _restore_view(options: dict[str, list[str]]) -> None:
    """Before the filter widgets: each view key the session lacks (a first visit, or back from another page, whose
    run dropped the widgets' values) takes its value from the URL, else from this session's last Review view."""
    saved = st.session_state.get(VIEW_KEY, {})
    for key in VIEW_KEYS:
        if key not in st.session_state:
            value = _parse_view(key, st.query_params.get(key, saved.get(key)), options)
            if value is not None:
                st.session_state[key] = value
    st.session_state.setdefault("page_size", DEFAULT_PAGE_SIZE)
    st.session_state.setdefault("thumbs", DEFAULT_THUMBS)


def _save_view() -> None:
    """The view into the URL (Back and a shared link reopen it) and into the session (for the way back); the
    reviewer's name stays in the URL too."""
    view = {key: str(st.session_state[key]) for key in VIEW_KEYS if st.session_state.get(key) is not None}
    st.session_state[VIEW_KEY] = view
    if reviewer():
        view = {**view, REVIEWER_KEY: reviewer()}
    if st.query_params.to_dict() != view:
        st.query_params.from_dict(view)


def _first_page() -> None:
    """Go back to page 1 whenever a filter or the order changes."""
    st.session_state["page"] = 1


def _flag_changed() -> None:
    """Page 1, ordered by the chosen flag's strength (similarity, issue score, ...), or by ApB for every image."""
    _first_page()
    if st.session_state.get("flag") is not None:
        st.session_state["sort"] = "score_desc"
    elif st.session_state.get("sort", "").startswith("score_"):
        st.session_state["sort"] = "apb_asc"


def _score_filter(store: Store, flag: str | None) -> tuple[str | None, float | None, float | None]:
    """A score and a range slider over its values among the current rows (none: no range)."""
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    score = left.selectbox("Score range on", [None, *queries.REVIEW_SCORES], key="range_score",
                           format_func=lambda k: "No score range" if k is None else SCORE_NAMES[k],
                           on_change=_first_page)
    if score is None:
        return None, None, None
    bounds = queries.review_score_range(store, score, flag)
    if bounds is None or bounds[0] == bounds[1]:
        right.caption(f"No spread of {SCORE_NAMES[score]} among these images.")
        return None, None, None
    low, high = right.slider(SCORE_NAMES[score], bounds[0], bounds[1], bounds, key=f"range_{score}_{flag}",
                             on_change=_first_page)
    return score, low, high


def _filters(store: Store, kinds: list[str]) -> tuple[ReviewFilter, str, int, list[str]]:
    """The filter row (flag, class, split, state, order, page size), a score range and a brushed selection; returns
    the filter, order, page size and the class labels."""
    counts = queries.flag_counts(store).set_index("kind")["samples"].to_dict()
    labels = queries.class_labels(store)
    splits = sorted(queries.dataset_counts(store)["split"].unique(), key=lambda s: (s != "train", s != "test", s))
    _restore_view({"flag": ["any", *kinds], "label": labels, "split": splits, "state": list(STATES),
                   "sort": list(queries.REVIEW_SORTS), "thumbs": list(THUMB_WIDTHS)})
    controls = st.columns([2, 1.3, 1.2, 1.5, 2, 1], vertical_alignment="bottom")
    flag = controls[0].selectbox("Flag", [None, "any", *kinds], key="flag", on_change=_flag_changed,
                                 format_func=lambda k: "All scored training images" if k is None else
                                 "Any flag but candidate" if k == "any" else f"{flag_name(k)} ({counts.get(k, 0):,})")
    label = controls[1].selectbox("Class", [None, *labels], key="label",
                                  format_func=lambda v: "All classes" if v is None else v, on_change=_first_page)
    split = controls[2].selectbox("Split", [None, *splits], key="split", on_change=_first_page,
                                  format_func=lambda v: "All splits" if v is None else v)
    state = controls[3].selectbox("Review state", list(STATES), key="state", format_func=STATES.get,
                                  on_change=_first_page)
    sort = controls[4].selectbox("Order", list(queries.REVIEW_SORTS), key="sort", format_func=SORTS.get,
                                 on_change=_first_page)
    size = controls[5].selectbox("Per page", PAGE_SIZES, key="page_size", on_change=_first_page)
    score, low, high = _score_filter(store, flag)
    selection = st.session_state.get(SELECTION_KEY)
    if selection:
        note, clear = st.columns([5, 1], vertical_alignment="center")
        note.info(f"Showing the {len(selection):,} images selected on the Overview scatter.")
        if clear.button("Show all", key="clear_selection"):
            del st.session_state[SELECTION_KEY]
            st.rerun()
    where = ReviewFilter(label=label, flag=flag, split=split, score=score, low=low, high=high, state=state,
                         sample_ids=tuple(selection) if selection else None)
    return where, sort, size, labels


def _evidence(store: Store, row: dict[str, Any]) -> None:
    """The evidence behind every flag of the focused image."""
    st.divider()
    st.subheader("Evidence")
    facts = [f"**{row['sample_id']}**: label **{label_text(row['label'])}**, predicted {label_text(row['pred_label'])}"
             + ("" if pd.isna(row["p_pred"]) else f" (p {row['p_pred']:.2f})")]
    if not pd.isna(row["apb"]):
        facts.append(f"ApB **{row['apb']:.2f}**, {mem_text(row)}"
                     + (f" ({models_text(row)})" if models_text(row) else ""))
    st.markdown("  \n".join(facts))
    if not flags(row):
        st.caption("No flag on this image.")
    flag_evidence(store, row, flags(row))


def _has_flag(row: dict[str, Any]) -> bool:
    return any(f["kind"] != "memorized_candidate" for f in flags(row))


def _grid(store: Store, rows: list[dict[str, Any]], pages: int) -> None:
    """The page's tiles, wrapped into as many columns as the window holds at their size, the focused image beside
    them."""
    ids = [row["sample_id"] for row in rows]
    by_id = {row["sample_id"]: row for row in rows}
    chosen = focus.focused_id(ids, by_id, _has_flag)
    size = st.session_state.get("thumbs", DEFAULT_THUMBS)
    st.html(GRID_CSS)
    focus.shortcuts()
    left, right = st.container(key=f"grid_{size}").columns([4, 1])
    with left.container(key="tiles", horizontal=True, gap="small"):
        for row in rows:
            tile(row, size, row["sample_id"] == chosen)
    with right.container(key="focus_panel"):
        st.selectbox("Focused image", ids, key="evidence", format_func=lambda i: f"{i}: " + (
            ", ".join(flag_name(f["kind"]) for f in flags(by_id[i])) or "no flag"))
        focus.panel(store, by_id[st.session_state["evidence"]], ids, pages)
    if queries.has_detector_schema(store):
        _evidence(store, by_id[st.session_state["evidence"]])
    else:
        st.info(f"This file predates the detectors: add their evidence with "
                f"`memaudit run --stages embeddings,detectors --db {store.path}`.")


def _queue(store: Store, where: ReviewFilter, sort: str, size: int, labels: list[str]) -> None:
    """Pager, the decision bar, one page of the grid and the focused image: all that a decision or a page turn
    changes (`labels`: the classes, read once by the page)."""
    total = queries.review_count(store, where=where)
    pages = max(1, math.ceil(total / size))
    st.session_state["page"] = min(st.session_state.get("page", 1), pages)
    pager, thumbs, keeper = st.columns([1, 2, 1.5], vertical_alignment="bottom")
    with keeper:  # no visible element; mounted before any early return, so the page's picks always have it
        pick_sync()
    page = pager.number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="page")
    thumbs.segmented_control("Thumbnails", list(THUMB_WIDTHS), key="thumbs", required=True)
    if total == 0:
        st.info("No images match these filters"
                + (": has the memorization stage run (`memaudit run --stages memorization --db ...`)?"
                   if where.flag == "memorized" else "."))
        return
    offset = (page - 1) * size
    rows = queries.review_page(store, sort=sort, limit=size, offset=offset, where=where).to_dict("records")
    what = ("scored training images" if where.flag is None else
            "images with any flag" if where.flag == "any" else
            "images on either side of a train/test leak (test images have no ApB or mem)" if where.flag == "leaked"
            else f"images flagged {flag_name(where.flag).lower()}")
    st.caption(f"Images {offset + 1:,}–{offset + len(rows):,} of {total:,} {what}, {SORTS.get(sort, sort)}. "
               "mem [95% interval]: accuracy of the shadow models trained with the image (in) minus that of "
               "those trained without it (out). **Focus** shows an image beside the grid and its evidence "
               "below, **Details** everything about it.")
    decision_bar(store.path, labels,
                 {row["sample_id"]: (row["decision"], row["decided_by"]) if isinstance(row["decision"], str) else None
                  for row in rows})
    _grid(store, rows, pages)


@st.fragment(key=QUEUE_FRAGMENT)
def _queue_fragment(path: Path, where: ReviewFilter, sort: str, size: int, labels: list[str]) -> None:
    """The queue, on the page's connection while the page runs, else (a rerun of the fragment alone) its own."""
    with fragment_reading(path) as store:
        _queue(store, where, sort, size, labels)
    _save_view()


def render(store: Store) -> None:
    """The review view, kept in the URL; an info message while nothing is scored or flagged."""
    kinds = queries.flag_kinds(store)
    if not kinds and queries.review_count(store) == 0:  # the count (a join of scores and samples) only when needed
        st.info("No ApB scores yet: the review grid fills in once `memaudit run --db ...` has trained and scored.")
        return
    where, sort, size, labels = _filters(store, kinds)
    _queue_fragment(store.path, where, sort, size, labels)
    _save_view()


run_page("Review images", render)
