"""Entry point of the dashboard: `streamlit run app/main.py -- --db PATH` (or `memaudit app --db PATH`).

The pages live in `views/`, not `pages/`: streamlit serves a deep link (/review) to a file of a `pages/` folder as
a page of its own, without this navigation."""

import streamlit as st

st.set_page_config(layout="wide", page_title="memaudit")
st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/review.py", title="Review", icon=":material/grid_view:"),
    st.Page("views/point.py", title="Point detail", icon=":material/image_search:"),
    st.Page("views/decisions.py", title="Decisions", icon=":material/fact_check:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
    st.Page("views/experiments.py", title="Experiments", icon=":material/science:"),
    st.Page("views/jobs.py", title="Jobs", icon=":material/sync:"),
]).run()
