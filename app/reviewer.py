"""Who decides: the reviewer's name, typed once in the sidebar and kept in the address (?reviewer=NAME), so that it
survives page changes, new tabs and reloads; never a silent default such as the OS user."""

from __future__ import annotations

import streamlit as st

KEY = "reviewer"  # the sidebar field's session key and the URL parameter


def reviewer() -> str:
    """The reviewer's name as typed ('' while nobody has named themselves)."""
    return str(st.session_state.get(KEY) or "").strip()


def reviewer_box() -> None:
    """The sidebar field, filled from this session, else from the URL; a named reviewer goes back into the URL.
    Re-assigning the value before the widget keeps it across pages (streamlit drops a keyed widget's value on the
    run after a page change, before the new page creates the widget again)."""
    st.session_state[KEY] = reviewer() or str(st.query_params.get(KEY, "")).strip()
    st.sidebar.text_input("Reviewer", key=KEY, placeholder="your name",
                          help="Signs every decision you make; kept in the address, so reloads and new tabs keep it")
    name = reviewer()
    if name and st.query_params.get(KEY) != name:
        st.query_params[KEY] = name
    elif not name:
        st.sidebar.warning("Type your name above: every decision is signed with it.")
