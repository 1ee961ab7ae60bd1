"""Overview page: what the audit database holds, which run produced the scores, and how far to trust them."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.common import run_page
from auditor import queries
from auditor.store import Store

PROBLEM_ROWS = 500


def _score_run(store: Store) -> None:
    """The run behind the scores, with a warning banner when its model had not converged."""
    run = queries.score_run(store)
    if run is None:
        st.info("No scores yet: training and scoring have not finished. Run `memaudit run --db ...`; "
                "the dataset and any training progress are shown below.")
        return
    if not run["converged"]:
        st.warning("**These scores come from a model that did not converge**: its test accuracy was still "
                   "improving when training stopped, so ApB and the memorized candidates are not reliable yet. "
                   "Re-run with more epochs (e.g. `--profile standard`).", icon="⚠️")
    facts = {"Run": f"`{run['run_id']}`", "Profile": run["profile"], "Architecture": run["arch"],
             "Epochs": run["epochs"], "Seeds": run["seeds"], "Train accuracy": _percent(run["train_acc"]),
             "Test accuracy": _percent(run["test_acc"]), "Converged": "yes" if run["converged"] else "**no**"}
    st.subheader("Scores")
    st.markdown("\n".join(["| " + " | ".join(facts) + " |", "|---" * len(facts) + "|",
                           "| " + " | ".join("–" if v is None else str(v) for v in facts.values()) + " |"]))
    finished = "–" if run["finished_at"] is None else f"{run['finished_at']:%Y-%m-%d %H:%M} UTC"
    st.caption(f"ApB of {run['n_scored']:,} training images; run {run['status'] or 'not recorded'} on "
               f"{run['device']}, code {run['code_version']}, finished {finished}.")


def _percent(value: float | None) -> str | None:
    """`value` as a percentage, None when missing."""
    return None if value is None else f"{value:.1%}"


def _dataset(store: Store, counts: pd.DataFrame) -> None:
    """Images per split and class (`counts`), and the problems met while reading or training on them."""
    n_problems = queries.problem_count(store)
    per_split = counts.groupby("split")["n"].sum()
    st.subheader("Dataset")
    cols = st.columns(4)
    cols[0].metric("Training images", f"{per_split.get('train', 0):,}")
    cols[1].metric("Test images", f"{per_split.get('test', 0):,}")
    cols[2].metric("Classes", counts["label"].nunique())
    cols[3].metric("Problems", f"{n_problems:,}")
    left, right = st.columns([2, 3])
    with left:
        st.subheader("Images per class")
        st.dataframe(counts.pivot_table(index="label", columns="split", values="n", fill_value=0, sort=False),
                     width="stretch")
    with right:
        st.subheader("Problems found")
        if n_problems == 0:
            st.success("No problems: every input file was read and used.")
        else:
            if n_problems > PROBLEM_ROWS:
                st.caption(f"The first {PROBLEM_ROWS:,} of {n_problems:,} problems.")
            st.dataframe(queries.problems(store, PROBLEM_ROWS), hide_index=True, width="stretch")


def _charts(store: Store) -> None:
    """Accuracy per epoch of each training run, and the distribution of ApB."""
    left, right = st.columns(2)
    with left:
        st.subheader("Accuracy per epoch")
        curves = queries.accuracy_curves(store)
        if curves.empty:
            st.info("No training epochs recorded yet.")
        else:
            st.altair_chart(alt.Chart(curves).mark_line(point=True).encode(
                x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), axis=alt.Axis(format="%")),
                color=alt.Color("split:N", title=None), detail="run_id:N",
                tooltip=["run_id", "seed", "epoch", "split", alt.Tooltip("accuracy:Q", format=".2%")]),
                width="stretch")
    with right:
        st.subheader("ApB of the training images")
        histogram = queries.apb_histogram(store)
        if histogram.empty:
            st.info("No ApB scores yet.")
        else:
            st.altair_chart(alt.Chart(histogram).mark_bar().encode(
                x=alt.X("start:Q", bin="binned", title="ApB (fraction of records classified correctly)",
                        scale=alt.Scale(domain=[0, 1])),
                x2="end:Q", y=alt.Y("n:Q", title="training images"),
                tooltip=[alt.Tooltip("start:Q", title="from"), alt.Tooltip("end:Q", title="to"), "n"]),
                width="stretch")


def render(store: Store) -> None:
    """The whole overview, or an info message while the database holds no samples."""
    counts = queries.dataset_counts(store)
    if counts.empty:
        st.info("The audit database holds no samples yet: ingest a dataset with `memaudit run --db ...`.")
        return
    _score_run(store)
    _dataset(store, counts)
    _charts(store)


run_page("Audit overview", render)
