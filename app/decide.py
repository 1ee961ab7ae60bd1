"""Recording review decisions from any page: one call per button press, the picks kept when the database is busy,
the label a flag suggests (for one image or each of many), and the badge that shows a decision on a tile."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import streamlit as st

from app.common import md, parse_detail
from app.reviewer import reviewer
from auditor.review import queries
from auditor.review.queries import ReviewFilter
from auditor.review.reviews import current_decisions, record_decisions, undo
from auditor.store.database import Store, StoreBusy

DECISION_BADGES = {"keep": ":green-badge[keep]", "remove": ":red-badge[remove]", "relabel": ":blue-badge[relabel]"}
PICK_PREFIX = "pick_"
PICKS_KEY = "picks"  # the picked ids, kept apart from the checkboxes so that picks survive paging and filtering
# In a browser the picks live in the page (app.picks): a tick toggles them there, with no script run, and they reach
# the server as the state of the component SYNC_KEY ({"picks": {"ids": [...], "seq": n}}) with a press that needs
# them. SEEN_KEY: the seq last taken over; VERSION_KEY: bumped whenever the server changes the picks, so that the
# page takes them over in turn.
SYNC_KEY, SEEN_KEY, VERSION_KEY = "picks_sync", "picks_seen", "picks_version"
# Keyed fragments of the Review queue: the whole queue (grid, focused image, evidence) and the decision bar with its
# pick count. A tick reruns the bar alone (the box shows its own state), unless the focused image's panel shows it too.
QUEUE_FRAGMENT, BAR_FRAGMENT = "review_queue", "decision_bar"
FOCUS_KEY = "evidence"  # the focused image of the Review grid (app.focus)


def picked() -> set[str]:
    """The images picked for a bulk decision, on any page: the page's picks when it has sent newer ones."""
    state = st.session_state
    sent = (state.get(SYNC_KEY) or {}).get("picks")
    if isinstance(sent, dict) and sent.get("seq") != state.get(SEEN_KEY):
        state[SEEN_KEY] = sent.get("seq")
        state[PICKS_KEY] = {str(i) for i in sent.get("ids", ())}
    return set(state.get(PICKS_KEY, ()))


def set_picks(ids: list[str], on: bool) -> None:
    """Pick `ids`, or clear their picks (the page takes the new picks over on its next render)."""
    st.session_state[PICKS_KEY] = picked() | set(ids) if on else picked() - set(ids)
    st.session_state[VERSION_KEY] = st.session_state.get(VERSION_KEY, 0) + 1


def pick_box(sample_id: str, compact: bool = False) -> None:
    """The pick checkbox of one tile, ticked when the image is picked (on this or an earlier page); `compact`: the
    box alone (its label stays for screen readers), for the small tiles."""
    key = f"{PICK_PREFIX}{sample_id}"
    st.session_state[key] = sample_id in picked()
    st.checkbox("pick", key=key, help=None if compact else "Pick for a decision", on_change=_toggle,
                args=(sample_id,), label_visibility="collapsed" if compact else "visible")


def _toggle(sample_id: str) -> None:
    """Follow a pick checkbox's new state where no page script does (a browser's page toggles it itself, app.picks):
    rerun the pick count, not the grid (the queue when the image is focused: its panel's pick button follows)."""
    set_picks([sample_id], bool(st.session_state[f"{PICK_PREFIX}{sample_id}"]))
    st.rerun(QUEUE_FRAGMENT if st.session_state.get(FOCUS_KEY) == sample_id else BAR_FRAGMENT)


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
