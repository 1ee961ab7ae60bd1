"""Recording review decisions from any page: one call per button press, the picks kept when the database is busy,
the label a flag suggests (for one image or each of many), and the badge that shows a decision on a tile."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import streamlit as st

from app.common import md, parse_detail
from app.reviewer import reviewer
from auditor import queries
from auditor.queries import ReviewFilter
from auditor.reviews import current_decisions, record_decisions, undo
from auditor.store import Store, StoreBusy

DECISION_BADGES = {"keep": ":green-badge[keep]", "remove": ":red-badge[remove]", "relabel": ":blue-badge[relabel]"}
PICK_PREFIX = "pick_"
RANGE_PREFIX = "pickto_"  # a hidden button per tile that a shift-click of its pick box presses (app.focus)
ANCHOR_KEY = "pick_anchor"  # the tile last picked or unpicked by a plain click, where a shift-click range starts
PICKS_KEY = "picks"  # the picked ids, kept apart from the checkboxes so that picks survive paging and filtering
# Keyed fragments of the Review queue: the whole queue (grid, focused image, evidence) and the decision bar with its
# pick count. A tick reruns the bar alone (the box shows its own state), unless the focused image's panel shows it too.
QUEUE_FRAGMENT, BAR_FRAGMENT = "review_queue", "decision_bar"
FOCUS_KEY = "evidence"  # the focused image of the Review grid (app.focus)


def picked() -> set[str]:
    """The images picked for a bulk decision, on any page."""
    return set(st.session_state.get(PICKS_KEY, ()))


def set_picks(ids: list[str], on: bool) -> None:
    """Pick `ids`, or clear their picks."""
    st.session_state[PICKS_KEY] = picked() | set(ids) if on else picked() - set(ids)


def pick_box(sample_id: str, compact: bool = False) -> None:
    """The pick checkbox of one tile, ticked when the image is picked (on this or an earlier page); `compact`: the
    box alone (its label stays for screen readers), for the small tiles."""
    key = f"{PICK_PREFIX}{sample_id}"
    st.session_state[key] = sample_id in picked()
    st.checkbox("pick", key=key, help=None if compact else "Pick for a decision", on_change=_toggle,
                args=(sample_id,), label_visibility="collapsed" if compact else "visible")


def _toggle(sample_id: str) -> None:
    """Follow a pick checkbox's new state; rerun the pick count, not the grid (the queue when the image is focused:
    its panel's pick button follows). One fragment only: a list of them reruns as one script run each."""
    set_picks([sample_id], bool(st.session_state[f"{PICK_PREFIX}{sample_id}"]))
    st.session_state[ANCHOR_KEY] = sample_id
    st.rerun(QUEUE_FRAGMENT if st.session_state.get(FOCUS_KEY) == sample_id else BAR_FRAGMENT)


def range_button(ids: list[str], sample_id: str) -> None:
    """The hidden button that a shift-click of `sample_id`'s pick box presses: it picks the range from the anchor."""
    st.button("pick range", key=f"{RANGE_PREFIX}{sample_id}", on_click=pick_range, args=(ids, sample_id))


def pick_range(ids: list[str], target: str) -> None:
    """Pick every image of `ids` (the page, in grid order) from the anchor to `target`, both included, in one rerun;
    `target` alone (and it becomes the anchor) when no plain click on this page set one."""
    anchor = st.session_state.get(ANCHOR_KEY)
    if anchor in ids and target in ids:
        low, high = sorted((ids.index(anchor), ids.index(target)))
        set_picks(ids[low:high + 1], True)
    else:
        st.session_state[ANCHOR_KEY] = target
        set_picks([target], True)
    st.rerun(QUEUE_FRAGMENT)  # every box of the range and the count follow


def decision_badge(action: str | None, new_label: str | None) -> str:
    """A coloured badge for the current decision ('' when undecided)."""
    if action is None or pd.isna(action):
        return ""
    return DECISION_BADGES.get(action, action) + (f" → **{md(new_label)}**" if action == "relabel" else "")


def decide(store: Store, ids: list[str], action: str, new_label: str | None, note: str | None) -> bool:
    """Record one decision for every id (one transaction), or undo their current ones ('undo'); a busy database or
    a bad decision shows an error and keeps the picks, so nothing is silently lost; nothing is recorded until the
    reviewer has named themselves. True when stored."""
    if not reviewer():
        st.session_state["decision_error"] = ("Not saved: type your name in the sidebar (Reviewer) first; every "
                                              "decision is signed with it. Your picks are kept.")
        return False
    try:
        if action == "undo":
            n = undo(store, ids, reviewer=reviewer())
            done = f"Undid the decision of {n} image{'s' if n != 1 else ''}"
        else:
            record_decisions(store, ids, action, reviewer=reviewer(), new_label=new_label, note=note or None)
            done = f"{action} recorded for {len(ids)} image{'s' if len(ids) != 1 else ''}"
    except StoreBusy as exc:
        st.session_state["decision_error"] = (f"Not saved, the database is busy: {exc}. Your picks are kept; press "
                                              "the button again.")
        return False
    except ValueError as exc:
        st.session_state["decision_error"] = f"Not saved: {exc}"
        return False
    st.session_state["decision_done"] = done  # shown after the rerun the caller triggers (a toast could be lost)
    set_picks(ids, False)
    return True


def show_decision_error() -> None:
    """What became of the last decision, once: stored (a success line) or not (the error)."""
    message = st.session_state.pop("decision_error", None)
    if message:
        st.error(message)
    done = st.session_state.pop("decision_done", None)
    if done:
        st.success(done)


def suggested_label(row: dict[str, Any]) -> str | None:
    """The label to offer for a relabel: the mislabeled flag's suggestion, else the prediction where it differs from
    the label; None when nothing suggests another label."""
    for flag in row["flags"] if row["flags"] is not None else []:
        info = parse_detail(flag["detail"])
        if flag["kind"] == "mislabeled" and isinstance(info, dict) and info.get("suggested") is not None:
            return str(info["suggested"])
    predicted = row["pred_label"]
    return None if predicted is None or pd.isna(predicted) or predicted == row["label"] else str(predicted)


def suggestions(store: Store, ids: list[str]) -> dict[str, str]:
    """The suggested label of each of `ids` that has one (picked on any page, flagged or not)."""
    found: dict[str, str] = {}
    for where in (ReviewFilter(sample_ids=tuple(ids)), ReviewFilter(flag="any", sample_ids=tuple(ids))):
        missing = [i for i in ids if i not in found]
        if not missing:
            break
        rows = queries.review_page(store, limit=len(ids), where=where).to_dict("records")
        found |= {row["sample_id"]: label for row in rows if (label := suggested_label(row)) is not None}
    return found


def accept_suggestions(store: Store, ids: list[str], replace: bool) -> bool:
    """Relabel each of `ids` to its own suggested label (one decision per label), leaving those without a
    suggestion, and those already decided unless `replace`, picked; True when something was stored."""
    try:
        wanted = suggestions(store, ids)
        decided = set() if replace else set(current_decisions(store, list(wanted))["sample_id"])
    except StoreBusy as exc:
        st.session_state["decision_error"] = f"Not saved, the database is busy: {exc}. Your picks are kept."
        return False
    by_label: dict[str, list[str]] = defaultdict(list)
    for sample_id, label in sorted(wanted.items()):
        if sample_id not in decided:
            by_label[label].append(sample_id)
    if not by_label:
        st.session_state["decision_error"] = ("Nothing recorded: none of the picked images has a suggested label"
                                              + (" and no decision yet." if decided else "."))
        return False
    for label, group in by_label.items():
        if not decide(store, group, "relabel", label, None):
            return False
    done = sum(map(len, by_label.values()))
    left = len(ids) - done
    st.session_state["decision_done"] = (f"Relabeled {done} image{'s' if done != 1 else ''} to their suggested "
                                         f"labels" + (f"; {left} left picked (no suggestion or already decided)"
                                                      if left else ""))
    return True
