"""Recording review decisions from any page: one call per button press, the picks kept when the database is busy,
and the badge that shows a decision on a tile."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import md
from app.reviewer import reviewer
from auditor.reviews import record_decisions, undo
from auditor.store import Store, StoreBusy

DECISION_BADGES = {"keep": ":green-badge[keep]", "remove": ":red-badge[remove]", "relabel": ":blue-badge[relabel]"}
PICK_PREFIX = "pick_"
PICKS_KEY = "picks"  # the picked ids, kept apart from the checkboxes so that picks survive paging and filtering


def picked() -> set[str]:
    """The images picked for a bulk decision, on any page."""
    return set(st.session_state.get(PICKS_KEY, ()))


def set_picks(ids: list[str], on: bool) -> None:
    """Pick `ids`, or clear their picks."""
    st.session_state[PICKS_KEY] = picked() | set(ids) if on else picked() - set(ids)


def pick_box(sample_id: str) -> None:
    """The pick checkbox of one tile, ticked when the image is picked (on this or an earlier page)."""
    key = f"{PICK_PREFIX}{sample_id}"
    st.session_state[key] = sample_id in picked()
    st.checkbox("pick", key=key, help="Pick for a decision", on_change=_toggle, args=(sample_id,))


def _toggle(sample_id: str) -> None:
    """Follow a pick checkbox's new state."""
    set_picks([sample_id], bool(st.session_state[f"{PICK_PREFIX}{sample_id}"]))


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
