"""Start a long job only once confirmed: a request waits in the session with its plan (steps, models, time) until
Confirm starts it or Cancel drops it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.common import md
from pipelines.job_plan import JobPlan


def hold(key: str, request: dict[str, Any], plan: JobPlan) -> None:
    """Keep `request` and its plan under `key` until it is confirmed or cancelled (replacing an earlier one)."""
    st.session_state[key] = (request, plan)


def confirmed(key: str) -> dict[str, Any] | None:
    """Show the plan of the request held under `key` with Confirm and Cancel; the request once Confirm is pressed
    (then forgotten), else None. Cancel forgets it and reruns the page."""
    if key not in st.session_state:
        return None
    request, plan = st.session_state[key]
    box = st.empty()
    with box.container(border=True):
        st.markdown("**Start this job?** Nothing runs until you confirm.")
        st.markdown("\n".join(f"- {md(step)}" for step in plan.steps))
        models = "none" if plan.models is None else f"{plan.models:,}"
        later = f" + up to **{plan.conditional:,}** if a later phase runs (above)" if plan.conditional else ""
        st.markdown(f"Models planned ahead: **{models}**{later} · time: **{plan.estimate()}** (from the seconds per "
                    "model measured in this database)")
        left, right, _ = st.columns([1, 1, 6])
        confirm = left.button("Confirm", type="primary", key=f"{key}-confirm")
        cancel = right.button("Cancel", key=f"{key}-cancel")
    if not (confirm or cancel):
        return None
    del st.session_state[key]
    box.empty()
    if cancel:
        st.rerun()
    return request
