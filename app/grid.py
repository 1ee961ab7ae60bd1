"""The Review grid's pieces: a tile per image (three thumbnail sizes, decided tiles dimmed with their decision), the
decision bar for the images picked on any page, and the focused image beside the grid with its one-key decisions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app.common import evidence_line, fragment_reading, thumbnail
from app.decide import (BAR_FRAGMENT, QUEUE_FRAGMENT, accept_suggestions, decide, decision_badge, pick_box, picked,
                        set_picks, show_decision_error)
from app.evidence import label_text, mem_text, models_text
from auditor.review.reviews import ACTIONS, current_decisions
from auditor.store.database import Store, StoreBusy

# Thumbnail size -> tile width in pixels; the tiles wrap into as many columns as the window holds. 'small' is a
# dense grid of images, pick boxes and decisions only.
THUMB_WIDTHS = {"small": 76, "medium": 150, "large": 220}
DEFAULT_THUMBS = "medium"
# Flags that the mem line and the badges already tell on a tile; every other kind gets a line of evidence.
MEM_FLAGS = ("memorized_candidate", "memorized")
# Decided tiles dimmed, the focused one outlined; tile keys are tile[done][focus]_<sample id>.
# The focused image keeps a fixed width beside the tiles (key grid_<size>), which wrap into the rest of the width.
GRID_CSS = """<style>
[class*="st-key-tiledone"] [data-testid="stImage"] {opacity: 0.35;}
[class*="st-key-tile"][class*="focus_"] {outline: 3px solid #ff4b4b; outline-offset: 2px;}
[class*="st-key-grid_"] [data-testid="stColumn"]:has(.st-key-focus_panel) {flex: 0 0 240px !important;
  width: 240px !important; min-width: 240px;}
[class*="st-key-grid_"] [data-testid="stColumn"]:has(.st-key-tiles) {flex: 1 1 0 !important; min-width: 0;}
.st-key-grid_small [class*="st-key-tile"] {padding: 6px !important; gap: 4px !important;}
</style>"""


def flags(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The flags of a grid row ({kind, score, detail}, most important first)."""
    return list(row["flags"]) if row["flags"] is not None else []


def focus(sample_id: str) -> None:
    """Focus `sample_id`: the panel beside the grid and the evidence below it show it."""
    st.session_state["evidence"] = sample_id


def _open_detail(sample_id: str) -> None:
    """Remember `sample_id` for the Point detail page, which the caller then switches to."""
    st.session_state["point"] = sample_id


def _prediction(row: dict[str, Any], label: Any, p: Any) -> str:
    """A predicted label with its probability, red when it is not the image's label."""
    text = label_text(label)
    return (text if text == label_text(row["label"]) else f":red[**{text}**]") + ("" if pd.isna(p) else f" ({p:.2f})")


def _facts(row: dict[str, Any]) -> list[str]:
    """A tile's lines: label, the prediction of the model trained on it (in sample) and that of the shadow models
    trained without it (out of sample, where there are any), ApB and mem, one line of evidence per detector flag."""
    lines = [f"label **{label_text(row['label'])}**, predicted {_prediction(row, row['pred_label'], row['p_pred'])}"]
    if not pd.isna(row["oos_label"]):
        lines.append(f"out of sample {_prediction(row, row['oos_label'], row['oos_p'])} "
                     f":gray[({int(row['oos_models'])} model{'s' if row['oos_models'] != 1 else ''} without it)]")
    if pd.isna(row["apb"]):
        lines.append(f"{'test' if row['split'] == 'test' else 'not a scored'} image: no ApB, no mem")
    else:
        lines += [f"ApB **{row['apb']:.2f}**", mem_text(row)]
        if models_text(row):
            lines.append(f":gray[{models_text(row)}]")
    lines += [evidence_line(f["kind"], f["detail"], row["label"]) for f in flags(row) if f["kind"] not in MEM_FLAGS]
    badges = [badge for badge, on in ((":orange-badge[candidate]", row["memorized_candidate"]),
                                      (":red-badge[memorized]", row["memorized"])) if on]
    return lines + ([" ".join(badges)] if badges else [])


def tile(row: dict[str, Any], size: str, focused: bool) -> None:
    """One image in a bordered tile: its thumbnail, id, pick box (a shift+click picks the range from the last tick,
    app.picks) and decision; at the medium and large sizes also its facts and the Details and Focus buttons. The
    path comes from the query, never the browser."""
    sample_id = row["sample_id"]
    decided = row["decision"] is not None and not pd.isna(row["decision"])
    key = f"tile{'done' if decided else ''}{'focus' if focused else ''}_{sample_id}"
    with st.container(border=True, key=key, width=THUMB_WIDTHS[size]):
        image = thumbnail(row["path"], file_hash=row["file_hash"])
        if image is None:
            st.warning(f"{sample_id}: image unreadable")
        else:
            st.image(image, caption=sample_id, width="stretch" if size == "small" else "content")
        lines = [] if size == "small" else _facts(row)
        badge = decision_badge(row["decision"], row["decision_label"])
        if badge or lines:
            st.markdown(":small[" + "  \n".join([*lines, badge] if badge else lines) + "]")
        pick_box(sample_id, compact=size == "small")  # on a row of its own: half a tile clips the label to '|'
        if size == "small":
            return
        if st.button("Details", key=f"detail_{sample_id}", type="tertiary",
                     help="Open the Point detail page of this image"):
            _open_detail(sample_id)
            st.switch_page("views/point.py", query_params={"id": sample_id})
        st.button("Focus", key=f"evidence_{sample_id}", type="tertiary", on_click=focus, args=(sample_id,),
                  help="Show it beside the grid, its evidence below, and decide it with one key")


def _apply(store: Store) -> None:
    """Record the bar's decision for every picked image, those already decided only when 'Replace' is ticked (they
    stay picked otherwise); once stored, the note is cleared, so it never signs the next decision."""
    state = st.session_state
    action, ids = state["decision_action"], sorted(picked())
    if not ids:
        state["decision_error"] = "Nothing picked: tick the images to decide first."
        return
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
        st.rerun(QUEUE_FRAGMENT)  # the tiles show the decisions; a failure reruns the bar alone, with its error


def _accept(store: Store) -> None:
    """Relabel every picked image to its own suggested label."""
    if not picked():
        st.session_state["decision_error"] = "Nothing picked: tick the images to relabel first."
    elif accept_suggestions(store, sorted(picked()), bool(st.session_state.get("decision_replace"))):
        st.session_state["decision_replace"] = False
        st.rerun(QUEUE_FRAGMENT)


def _pick_all(ids: list[str] | None, on: bool) -> None:
    """Pick `ids`, or clear their picks (every pick when None), and redraw the tiles' boxes."""
    set_picks(sorted(picked()) if ids is None else ids, on)
    st.rerun(QUEUE_FRAGMENT)


def _already_decided(store: Store, chosen: list[str], action: str, page: dict[str, tuple[str, str] | None]) -> None:
    """A warning when picked images already have a decision, and the box that lets Apply replace them: the picks on
    this page as its tiles show them, the others as the database holds them (Apply checks them all again)."""
    if action == "undo" or not chosen:
        return
    decided = [page[i] for i in chosen if page.get(i) is not None]
    elsewhere = [i for i in chosen if i not in page]
    if elsewhere:
        decided += list(current_decisions(store, elsewhere)[["action", "reviewer"]].itertuples(index=False, name=None))
    if not decided:
        return
    counts = ", ".join(f"{n} {a} by {who}" for (a, who), n in Counter(decided).most_common())
    st.warning(f"{len(decided)} of the {len(chosen)} picked images already have a decision ({counts}): Apply "
               "leaves them as they are unless you tick 'Replace'.")
    st.checkbox(f"Replace their decisions with '{action}'", key="decision_replace")


@st.fragment(key=BAR_FRAGMENT)
def decision_bar(path: Path, labels: list[str], page: dict[str, tuple[str, str] | None]) -> None:
    """How many images are picked across pages, pick the page or clear every pick, and one decision (with an
    optional note) for all of them, or each to its suggested label, or undo; a warning when some are decided.
    `page`: the page's images with their (action, reviewer) as shown, None when undecided. A fragment: a change of
    its own widgets reruns the bar alone (it reads the database only for picks on other pages), a stored decision
    the whole queue; in a browser a tick reruns nothing (the page keeps the count, app.picks)."""
    with fragment_reading(path) as store:
        _bar(store, labels, page)
    show_decision_error()


def _bar(store: Store, labels: list[str], page: dict[str, tuple[str, str] | None]) -> None:
    """The decision bar's widgets (see decision_bar)."""
    chosen, page_ids = sorted(picked()), list(page)
    elsewhere = len(set(chosen) - set(page_ids))
    with st.container(border=True, key="decision_box"):  # two rows: no label is clipped in a 1,000 px window
        count, pick, clear, accept = st.columns([2, 1.2, 1.2, 1.8], vertical_alignment="center")
        count.markdown(f"**{len(chosen)} picked**")
        count.caption(f"{len(chosen)} picked across pages" + (f", {elsewhere} not on this one" if elsewhere else ""))
        pick.button("Pick page", on_click=_pick_all, args=(page_ids, True), key="bulk_pick_page", width="stretch")
        clear.button("Clear all", on_click=_pick_all, args=(None, False), key="bulk_pick_clear", width="stretch",
                     help="Clear every pick, on every page")
        accept.button("Accept suggested", key="bulk_accept", on_click=_accept, args=(store,),
                      width="stretch", help="Relabel each picked image to its own suggested label (the mislabeled "
                                            "flag's, else the model's prediction)")
        decision, label, note, apply = st.columns([1.4, 1.2, 2.4, 1], vertical_alignment="bottom")
        action = decision.selectbox("Decision", [*ACTIONS, "undo"], key="decision_action",
                                    format_func=lambda a: {"relabel": "relabel to …", "undo": "undo last"}.get(a, a))
        label.selectbox("New label", labels, key="decision_label", disabled=action != "relabel")
        note.text_input("Note (optional)", key="decision_note")
        apply.button("Apply", type="primary", key="decision_apply", on_click=_apply,
                     args=(store,), width="stretch")
        _already_decided(store, chosen, action, page)
