"""Recording review decisions from any page: one call per button press, the picks kept when the database is busy,
and the badge that shows a decision on a tile."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import md, reviewer
from auditor.reviews import record_decisions, undo
from auditor.store import Store, StoreBusy

DECISION_BADGES = {"keep": ":green-badge[keep]", "remove": ":red-badge[remove]", "relabel": ":blue-badge[relabel]"}
PICK_PREFIX = "pick_"


def picked() -> set[str]:
    """The images picked for a bulk decision (checkbox keys 'pick_<id>')."""
    return {key[len(PICK_PREFIX):] for key, on in st.session_state.items()
            if isinstance(key, str) and key.startswith(PICK_PREFIX) and on}


def set_picks(ids: list[str], on: bool) -> None:
    """Tick or clear the pick checkboxes of `ids`."""
    for sample_id in ids:
        st.session_state[f"{PICK_PREFIX}{sample_id}"] = on


def decision_badge(action: str | None, new_label: str | None) -> str:
    """A coloured badge for the current decision ('' when undecided)."""
    if action is None or pd.isna(action):
        return ""
    return DECISION_BADGES.get(action, action) + (f" → **{md(new_label)}**" if action == "relabel" else "")


def decide(store: Store, ids: list[str], action: str, new_label: str | None, note: str | None) -> bool:
    """Record one decision for every id (one transaction), or undo their current ones ('undo'); a busy database or
    a bad decision shows an error and keeps the picks, so nothing is silently lost. True when stored."""
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
