"""Experiments: build marginal-utility arms (the paper's buckets, review decisions, flag kinds), start an experiment in
the background, and read its results (accuracy drop vs the full-data arm with 95% CIs, sub-population and leaked test
accuracy, convergence, re-audit); and the natural-memorization sweeps across models and training lengths."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.common import flag_name, run_page
from app.confirm import confirmed, hold
from auditor.experiments import sweep_queries
from auditor.review import queries
from auditor.experiments.experiment_queries import (
    control_models, control_spread, experiment_results, experiments, schedule_check_row, schedule_line)
from auditor.store.database import Store
from pipelines.job_plan import plan_experiment
from pipelines.launcher import launch_experiment
from pipelines.stage_names import BUCKETS

BUCKET_NAMES = {"memorized": "all memorized points", "leakage": "leakage bucket (memorized with a test twin)",
                "subpopulation": "sub-population bucket (shared influenced test points or a tiny cluster)",
                "memorized_remainder": "memorized remainder", "decisions": "images decided 'remove'"}
PROFILES = ("standard", "quick")
PENDING = "experiment_pending"  # the session key of the experiment awaiting confirmation
# Results columns shown in % (besides *_acc, *_drop, *_std)
PERCENT = ("drop", "drop_low", "drop_high", "vs_control", "vs_control_low", "vs_control_high", "mem_share",
           "mem_share_low", "mem_share_high")


def _start(store: Store) -> None:
    """The arms to compare (each gets a class-matched random control), models per arm, re-audit, and Start."""
    st.subheader("Run an experiment")
    flagged = [f"flag:{kind}" for kind in queries.flag_kinds(store)]
    options = [*BUCKETS, "decisions", *flagged]
    with st.form("experiment_form"):
        arms = st.multiselect("Arms (points removed from training)", options, default=list(BUCKETS),
                              format_func=lambda a: BUCKET_NAMES.get(a) or f"unreviewed and reviewed "
                              f"{flag_name(a.removeprefix('flag:')).lower()} flags", key="experiment_arms")
        left, middle, right = st.columns(3)
        models = left.number_input("Models per arm", min_value=2, max_value=500, value=20, key="experiment_models",
                                   help="The paper used 100+; 20 is a CPU-friendly default, 50+ for a benchmark")
        profile = middle.selectbox("Recipe (profile)", PROFILES, key="experiment_profile")
        reaudit = right.checkbox("Re-audit after removal", key="experiment_reaudit",
                                 help="Re-run ApB on each reduced dataset and count newly flagged points")
        started = st.form_submit_button("Start in the background", type="primary")
    if started:
        request = {"arms": arms, "models": int(models), "profile": profile, "reaudit": reaudit}
        try:
            hold(PENDING, request, plan_experiment(store.path, arms, models=int(models), profile=profile))
        except (ValueError, FileNotFoundError) as exc:
            st.error(f"Not started: {exc}")
    request = confirmed(PENDING)
    if request is not None:
        try:
            job_id = launch_experiment(store.path, request["arms"], models=request["models"],
                                       profile=request["profile"], reaudit=request["reaudit"])
        except ValueError as exc:
            st.error(f"Not started: {exc}")
        else:
            st.success(f"Started job `{job_id}`: follow it on the Jobs page; results appear below when it ends.")
    st.caption("Every arm trains the same recipe with different seeds and the same number of SGD steps as the "
               "full-data arm; the full-data arm, the same trained 2x longer (the convergence check) and a random "
               "control of the same size, matched per class and drawn afresh for every model, are always added. "
               "Convergence is also checked per arm: an arm whose models had not plateaued is marked, since that "
               "alone inflates the drop.")


def _drop_chart(table: pd.DataFrame) -> alt.Chart:
    """Accuracy drop vs the full-data arm per arm, with its 95% confidence interval as an error bar."""
    data = table[table["arm"] != "full"].assign(drop_pct=lambda t: 100 * t["drop"], low=lambda t: 100 * t["drop_low"],
                                                high=lambda t: 100 * t["drop_high"])
    base = alt.Chart(data).encode(y=alt.Y("arm:N", sort=None, title=None))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", title="test accuracy drop vs full data (%)"),
                                                x2="high:Q")
    points = base.mark_point(filled=True, size=80).encode(
        x="drop_pct:Q", color=alt.Color("not_converged:N", title="not converged",
                                        scale=alt.Scale(domain=[False, True], range=["#1f77b4", "#d62728"])),
        tooltip=["arm", "n_removed", "models", alt.Tooltip("drop_pct:Q", format=".2f", title="drop %"),
                 alt.Tooltip("low:Q", format=".2f"), alt.Tooltip("high:Q", format=".2f"),
                 alt.Tooltip("p_value:Q", format=".3f")])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 4], color="#7f7f7f").encode(x="x:Q")
    return (bars + points + zero).properties(height=40 * max(len(data), 2))


def _results(store: Store) -> None:
    """One experiment's results table (the paper's format) and its error-bar chart."""
    st.subheader("Results")
    listing = experiments(store)
    if listing.empty:
        st.info("No experiment yet: start one above (or `memaudit experiment --db ...`).")
        return
    chosen = st.selectbox("Experiment", listing["experiment_id"].tolist(), key="experiment_id",
                          format_func=lambda e: f"{e} ({listing.set_index('experiment_id').at[e, 'status']}, "
                                                f"{listing.set_index('experiment_id').at[e, 'models']} models)")
    table = experiment_results(store, chosen)
    _convergence(store, chosen)
    if table["not_converged"].any():
        st.warning("Arms marked not converged: " + ", ".join(table.loc[table["not_converged"], "arm"])
                   + ". Their drop is inflated by training too short; re-run with more epochs.")
    percent = [c for c in table.columns if c.endswith(("_acc", "_drop", "_std")) or c in PERCENT]
    shown = table.assign(**{c: 100 * table[c] for c in percent})
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in percent} | {
        c: st.column_config.NumberColumn(format="%.4f") for c in ("p_value", "vs_control_p")})
    st.caption("Accuracies and drops in %; drop = full-data accuracy minus the arm's (positive: removing the points "
               "hurts), with a Welch 95% CI and p-value; vs_control = the arm's drop beyond its random control's, "
               "its interval widened by the spread between random draws; subpop / leaked / rest: the test points "
               "the removed points influenced, those that have a copy in the removed points, and all others; "
               "mem_share: the memorized points an arm removes over the audit's estimated memorized total.")
    st.altair_chart(_drop_chart(table), width="stretch")
    _controls(store, chosen)


def _convergence(store: Store, experiment_id: str) -> None:
    """The 2x-schedule convergence check of the full arm, as a success or a warning."""
    check = schedule_check_row(store, experiment_id)
    line = schedule_line(check)
    if check["trained_to_max"] is False:
        st.warning(line)
    elif check["trained_to_max"]:
        st.success(line)
    else:
        st.info(line)


def _controls(store: Store, experiment_id: str) -> None:
    """Per-model random controls: a summary per control, and every model's own draw and drop."""
    st.markdown("**Random controls, drawn per model**")
    spread = control_spread(store, experiment_id)
    if spread.empty:
        st.info("This experiment drew each random control once per arm (older design) or has no control.")
        return
    st.dataframe(spread.assign(drop_mean=100 * spread["drop_mean"], drop_std=100 * spread["drop_std"]),
                 hide_index=True, width="stretch", column_config={
                     c: st.column_config.NumberColumn(format="%.2f") for c in ("drop_mean", "drop_std",
                                                                               "new_ids_vs_model_0")})
    st.caption("Each model of a control removes its own class-matched random draw, so the control's interval "
               "covers which points were drawn, not one draw; new_ids_vs_model_0: ids a model removes that model 0 "
               "does not (mean); drops in % of the full-data mean.")
    with st.expander("Every control model"):
        st.dataframe(control_models(store, experiment_id), hide_index=True, width="stretch")


def _sweeps(store: Store) -> None:
    """Natural memorization across models and training lengths: per variant, set differences and the gap-memorized
    correlation."""
    st.subheader("Sweeps: memorization across models and training time")
    listing = sweep_queries.sweeps(store)
    if listing.empty:
        st.info("No sweep yet: `memaudit sweep --db ... --widths 32,128 --epochs 3,10`.")
        return
    sweep_id = st.selectbox("Sweep", listing["sweep_id"].tolist(), key="sweep_id")
    summary = sweep_queries.sweep_summary(store, sweep_id)
    st.dataframe(summary, hide_index=True, width="stretch")
    if set(summary["method"]) == {"apb"}:
        st.caption("Method apb: memorized = ApB below the cut-off, a cheap proxy for late learning, not memorization; "
                   "`--method ploo` measures mem.")
    corr = sweep_queries.sweep_correlation(store, sweep_id)
    interval = "" if corr.low is None else f", 95% bootstrap interval {corr.low:.2f} to {corr.high:.2f}"
    st.markdown("Train–test gap vs memorized count across variants: " + (
        f"Pearson r = **{corr.r:.3f}** (p {corr.p:.3g}, {corr.n} variants{interval}; the paper found 0.99)"
        if corr.r is not None else f"no correlation ({corr.reason})"))
    if len(summary) > 1:
        st.altair_chart(alt.Chart(summary).mark_circle(size=90).encode(
            x=alt.X("gap:Q", title="train − test accuracy"), y=alt.Y("n_memorized:Q", title="memorized points"),
            tooltip=list(summary.columns)), width="stretch")
    st.markdown("**Memorized sets compared** (real set differences: points memorized by one variant and not the other)")
    st.dataframe(sweep_queries.sweep_set_differences(store, sweep_id), hide_index=True, width="stretch")
    transient = sweep_queries.sweep_transient(store, sweep_id)
    checkpoints = sweep_queries.sweep_checkpoints(store, sweep_id)
    if not checkpoints.empty:
        st.markdown("**Memorized count at checkpoints** of each variant's own shadow models (95% interval)")
        st.dataframe(checkpoints, hide_index=True, width="stretch")
    if not transient.empty:
        st.markdown(f"**Transient memorization** (memorized at one epoch, not at a later one; compared: "
                    f"{transient['compared'].iloc[0]})")
        st.dataframe(transient, hide_index=True, width="stretch")


def render(store: Store) -> None:
    """Start, results, sweeps."""
    if queries.review_count(store) == 0:
        st.info("Nothing audited yet: run `memaudit run --db ...` first; experiments remove flagged points from it.")
        return
    _start(store)
    _results(store)
    _sweeps(store)


run_page("Experiments", render)
