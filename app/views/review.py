"""Review queue: a paginated grid of images filtered by flag kind, class, split, score range and review state, sorted
by any score; pick images (or a whole page) and decide keep / remove / relabel with a note, or undo; the evidence
behind one image's flags below the grid, and its full Point detail one click away."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from app.common import evidence_line, flag_name, run_page, thumbnail
from app.decide import decide, decision_badge, pick_box, picked, set_picks, show_decision_error
from app.evidence import label_text, mem_text, models_text, picture, flag_evidence
from app.reviewer import KEY as REVIEWER_KEY, reviewer
from auditor import queries
from auditor.queries import ReviewFilter
from auditor.reviews import ACTIONS, current_decisions
from auditor.store import Store, StoreBusy

PAGE_SIZES = (12, 24, 48, 96)
GRID_COLUMNS = 6
# Flags that the mem line and the badges already tell on a tile; every other kind gets a line of evidence.
MEM_FLAGS = ("memorized_candidate", "memorized")
SCORE_NAMES = {"apb": "ApB", "mem": "mem", "score": "flag strength", "first_learned": "first learned",
               "forgetting": "forgetting events", "el2n": "EL2N", "confidence": "confidence"}
# Labels of the orderings; the options are the keys of queries.REVIEW_SORTS, so only those ever reach the query.
SORTS = {key: f"{SCORE_NAMES[key.rsplit('_', 1)[0]]}, {'lowest' if key.endswith('_asc') else 'highest'} first"
         for key in queries.REVIEW_SORTS}
STATES = {"any": "Any review state", "undecided": "Not reviewed yet", "decided": "Decided", "keep": "Kept",
          "remove": "Removed", "relabel": "Relabeled"}
SELECTION_KEY = "selection"  # ids brushed on the Overview scatter, opened here
# The view that lives in the URL (?flag=mislabeled&page=2&evidence=...) and is kept for the way back from another
# page: filters, order, page size, page and the image whose evidence is shown.
VIEW_KEYS = ("flag", "label", "split", "state", "sort", "page_size", "page", "evidence")
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


def _show_evidence(sample_id: str) -> None:
    """Select `sample_id` in the evidence section below the grid."""
    st.session_state["evidence"] = sample_id


def _open_detail(sample_id: str) -> None:
    """Remember `sample_id` for the Point detail page, which the caller then switches to."""
    st.session_state["point"] = sample_id


def _flags(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The flags of a grid row ({kind, score, detail}, most important first)."""
    return list(row["flags"]) if row["flags"] is not None else []


def _card(row: dict[str, Any]) -> None:
    """One image with its id, label, predicted label, ApB and mem (a test image has neither), a line of evidence per
    detector flag, badges and its decision; the path comes from the query, never the browser."""
    image = thumbnail(row["path"])
    if image is None:
        st.warning(f"{row['sample_id']}: image unreadable")
    else:
        st.image(image, caption=row["sample_id"])
    predicted = label_text(row["pred_label"])
    if predicted != label_text(row["label"]):
        predicted = f":red[**{predicted}**]"
    lines = [f"label **{label_text(row['label'])}**, predicted {predicted}"]
    if pd.isna(row["apb"]):
        lines.append(f"{'test' if row['split'] == 'test' else 'not a scored'} image: no ApB, no mem")
    else:
        lines += [f"ApB **{row['apb']:.2f}**", mem_text(row)]
        if models_text(row):
            lines.append(f":gray[{models_text(row)}]")
    flags = _flags(row)
    lines += [evidence_line(f["kind"], f["detail"], row["label"]) for f in flags if f["kind"] not in MEM_FLAGS]
    badges = [badge for badge, on in ((":orange-badge[candidate]", row["memorized_candidate"]),
                                      (":red-badge[memorized]", row["memorized"])) if on]
    badges.append(decision_badge(row["decision"], row["decision_label"]))
    if any(badges):
        lines.append(" ".join(b for b in badges if b))
    st.markdown(":small[" + "  \n".join(lines) + "]")
    pick_box(row["sample_id"])  # on rows of their own: halves of a narrow tile clip the labels to '|' and 'D.'
    if st.button("Details", key=f"detail_{row['sample_id']}", type="tertiary",
                 help="Open the Point detail page of this image"):
        _open_detail(row["sample_id"])
        st.switch_page("views/point.py", query_params={"id": row["sample_id"]})
    if any(f["kind"] != "memorized_candidate" for f in flags):
        st.button("Evidence ↓", key=f"evidence_{row['sample_id']}", type="tertiary", on_click=_show_evidence,
                  args=(row["sample_id"],), help="Show the evidence behind its flags below the grid")


def _apply(store: Store) -> None:
    """Record the bar's decision for every picked image, those already decided only when 'Replace' is ticked (they
    stay picked otherwise); once stored, the note is cleared, so it never signs the next decision."""
    state = st.session_state
    action, ids = state["decision_action"], sorted(picked())
    skipped = 0
    if action != "undo" and not state.get("decision_replace"):
        try:
            decided = set(current_decisions(store, ids)["sample_id"])
        except StoreBusy as exc:
            state["decision_error"] = f"Not saved, the database is busy: {exc}. Your picks are kept."
            return
        ids, skipped = [i for i in ids if i not in decided], len(decided)
        if not ids:
            state["decision_error"] = ("Nothing recorded: every picked image already has a decision; tick "
                                       "'Replace' to change them.")
            return
    if decide(store, ids, action, state.get("decision_label") if action == "relabel" else None,
              state.get("decision_note")):
        state["decision_note"] = ""
        state["decision_replace"] = False
        if skipped:
            state["decision_done"] += f"; {skipped} already decided left as they were (still picked)"


def _already_decided(store: Store, chosen: list[str], action: str) -> None:
    """A warning when picked images already have a decision, and the box that lets Apply replace them."""
    if action == "undo" or not chosen:
        return
    decided = current_decisions(store, chosen)
    if decided.empty:
        return
    counts = ", ".join(f"{n} {a}" for a, n in decided["action"].value_counts().items())
    st.warning(f"{len(decided)} of the {len(chosen)} picked images already have a decision ({counts}): Apply "
               "leaves them as they are unless you tick 'Replace'.")
    st.checkbox(f"Replace their decisions with '{action}'", key="decision_replace")


def _decision_bar(store: Store, page_ids: list[str]) -> None:
    """Pick the page or clear every pick, and one decision (with an optional note) for every image picked on any
    page, or undo; a warning when some of them are decided already."""
    chosen = sorted(picked())
    elsewhere = len(set(chosen) - set(page_ids))
    with st.container(border=True):
        cols = st.columns([1.2, 1, 1, 1.4, 1.4, 2.4, 1], vertical_alignment="bottom")
        cols[0].markdown(f"**{len(chosen)} picked**")
        if elsewhere:
            cols[0].caption(f"{elsewhere} of them on other pages")
        cols[1].button("Pick page", on_click=set_picks, args=(page_ids, True), key="bulk_pick_page")
        cols[2].button("Clear", on_click=set_picks, args=(chosen, False), key="bulk_pick_clear",
                       help="Clear every pick, on every page")
        action = cols[3].selectbox("Decision", [*ACTIONS, "undo"], key="decision_action",
                                   format_func=lambda a: {"relabel": "relabel to …", "undo": "undo last"}.get(a, a))
        labels = queries.class_labels(store)
        cols[4].selectbox("New label", labels, key="decision_label", disabled=action != "relabel")
        cols[5].text_input("Note (optional)", key="decision_note")
        cols[6].button("Apply", type="primary", disabled=not chosen, key="decision_apply", on_click=_apply,
                       args=(store,))
        _already_decided(store, chosen, action)
    show_decision_error()


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


def _filters(store: Store, kinds: list[str]) -> tuple[ReviewFilter, str, int]:
    """The filter row (flag, class, split, state, order, page size), a score range and a brushed selection."""
    counts = queries.flag_counts(store).set_index("kind")["samples"].to_dict()
    labels = queries.class_labels(store)
    splits = sorted(queries.dataset_counts(store)["split"].unique(), key=lambda s: (s != "train", s != "test", s))
    _restore_view({"flag": ["any", *kinds], "label": labels, "split": splits, "state": list(STATES),
                   "sort": list(queries.REVIEW_SORTS)})
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
    return where, sort, size


def _evidence(store: Store, rows: list[dict[str, Any]]) -> None:
    """The evidence behind every flag of one image of the page, chosen in a selectbox (or by a tile's button)."""
    st.divider()
    st.subheader("Evidence")
    ids = [row["sample_id"] for row in rows]
    by_id = {row["sample_id"]: row for row in rows}
    if st.session_state.get("evidence") not in by_id:
        flagged = [i for i in ids if any(f["kind"] != "memorized_candidate" for f in _flags(by_id[i]))]
        st.session_state["evidence"] = (flagged or ids)[0]
    sample_id = st.selectbox(
        "Image of this page", ids, key="evidence",
        format_func=lambda i: f"{i}: " + (", ".join(flag_name(f["kind"]) for f in _flags(by_id[i])) or "no flag"))
    row = by_id[sample_id]
    twin_flag = any(f["kind"] in queries.PAIR_KINDS for f in _flags(row))  # its section shows the image already
    left, right = st.columns([1, 5]) if not twin_flag else (None, st.container())
    if left is not None:
        with left:
            picture(row["path"], f"{sample_id} ({row['split'] or 'not in samples'})")
    with right:
        facts = [f"label **{label_text(row['label'])}**, predicted {label_text(row['pred_label'])}"
                 + ("" if pd.isna(row["p_pred"]) else f" (p {row['p_pred']:.2f})")]
        if not pd.isna(row["apb"]):
            facts.append(f"ApB **{row['apb']:.2f}**, {mem_text(row)}"
                         + (f" ({models_text(row)})" if models_text(row) else ""))
        st.markdown("  \n".join(facts))
        if not _flags(row):
            st.caption("No flag on this image.")
    flag_evidence(store, row, _flags(row))


def _review(store: Store, kinds: list[str]) -> None:
    """Filters, order, pager, the decision bar, one page of the grid and the evidence of one of its images."""
    where, sort, size = _filters(store, kinds)
    total = queries.review_count(store, where=where)
    pages = max(1, math.ceil(total / size))
    st.session_state["page"] = min(st.session_state.get("page", 1), pages)
    pager, caption = st.columns([1, 6], vertical_alignment="bottom")
    page = pager.number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="page")
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
    caption.caption(f"Images {offset + 1:,}–{offset + len(rows):,} of {total:,} {what}, {SORTS.get(sort, sort)}. "
                    "mem [95% interval]: accuracy of the shadow models trained with the image (in) minus that of "
                    "those trained without it (out). **Evidence ↓** shows what lies behind a tile's flags, "
                    "**Details** everything about the image.")
    _decision_bar(store, [row["sample_id"] for row in rows])
    for start in range(0, len(rows), GRID_COLUMNS):
        for column, row in zip(st.columns(GRID_COLUMNS), rows[start:start + GRID_COLUMNS]):
            with column.container(border=True):
                _card(row)
    if queries.has_detector_schema(store):
        _evidence(store, rows)
    else:
        st.info(f"This file predates the detectors: add their evidence with "
                f"`memaudit run --stages embeddings,detectors --db {store.path}`.")


def render(store: Store) -> None:
    """The review view, kept in the URL; an info message while nothing is scored or flagged."""
    kinds = queries.flag_kinds(store)
    if queries.review_count(store) == 0 and not kinds:
        st.info("No ApB scores yet: the review grid fills in once `memaudit run --db ...` has trained and scored.")
        return
    _review(store, kinds)
    _save_view()


run_page("Review images", render)
