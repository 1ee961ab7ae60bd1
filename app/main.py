"""Entry point of the dashboard: `streamlit run app/main.py -- --db PATH` (or `memaudit app --db PATH`)."""

import streamlit as st

st.set_page_config(layout="wide", page_title="memaudit")
st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/review.py", title="Review", icon=":material/grid_view:"),
]).run()
