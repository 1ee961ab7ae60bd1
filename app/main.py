"""Entry point of the dashboard: `streamlit run app/main.py -- --db PATH` (or `memaudit app --db PATH`)."""

import streamlit as st

st.set_page_config(layout="wide", page_title="memaudit")
st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/review.py", title="Review", icon=":material/grid_view:"),
    st.Page("pages/point.py", title="Point detail", icon=":material/image_search:"),
    st.Page("pages/decisions.py", title="Decisions", icon=":material/fact_check:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/sync:"),
]).run()
