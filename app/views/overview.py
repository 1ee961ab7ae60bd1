"""Overview page: what the audit database holds, which run produced the scores, how far to trust them, the
memorization scores of the shadow models, the findings of every detector with the thresholds they used, a 2-D map of
the embeddings coloured by flag (the progress of long jobs is on the Jobs page)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.common import FLAG_COLORS, flag_name, method_name, run_page
from auditor.memorization import memorization_queries
from auditor.review import queries
from auditor.store import job_queries
from auditor.store.database import Store

PROBLEM_ROWS = 500
SCATTER_POINTS = 5000
MAP_UNFLAGGED_POINTS = 5000
MAP_FLAGGED_POINTS = 20_000
JITTER = 0.04
BRUSH = "brush"
MEM_FLAG_SCALE = alt.Scale(domain=["memorized", "not flagged"], range=["#d62728", "#7f7f7f"])


def _score_run(store: Store) -> dict | None:
    """The run behind the scores (returned), with a warning banner when its model had not converged."""
    run = queries.score_run(store)
    if run is None:
        st.info("No scores yet: training and scoring have not finished. Run `memaudit run --db ...`; "
                "the dataset and any training progress are shown below.")
        return None
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
    return run


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
    cols[3].metric("Input problems", f"{n_problems:,}",
                   help="Input files that could not be read or used; the audit's findings are under Findings")
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
            st.altair_chart(_histogram(histogram, "ApB (fraction of records classified correctly)", (0, 1)),
                            width="stretch")


def _histogram(histogram: pd.DataFrame, title: str, domain: tuple[float, float]) -> alt.Chart:
    """Bars of a pre-binned score (columns start, end, n from auditor.review.queries) over `domain`."""
    return alt.Chart(histogram).mark_bar().encode(
        x=alt.X("start:Q", bin="binned", title=title, scale=alt.Scale(domain=list(domain))),
        x2="end:Q", y=alt.Y("n:Q", title="training images"),
        tooltip=[alt.Tooltip("start:Q", title="from", format=".2f"), alt.Tooltip("end:Q", title="to", format=".2f"),
                 "n"])


def _memorization(store: Store) -> None:
    """Method, shadow models, points scored and memorized; the distribution of mem and ApB against mem."""
    st.subheader("Memorization")
    run = memorization_queries.memorization_run(store)
    if run is None:
        running = not job_queries.running_jobs(store).empty
        st.info("No memorization scores yet"
                + (": a shadow-model job is running (see the Jobs page)." if running else
                   f": train the shadow models and score the candidates with "
                   f"`memaudit run --stages memorization --db {store.path}`."))
        return
    threshold = run["threshold"]
    cols = st.columns([3, 2, 2, 2, 2])
    cols[0].metric("Method", method_name(run["method"]),
                   help="pLOO-improved scores only the memorized candidates (lowest ApB); pLOO scores every point.")
    estimate = memorization_queries.estimate(store)
    models = run["n_models"] if estimate is None else estimate["n_models"]  # every design of the audit
    cols[1].metric("Shadow models", "–" if models is None else f"{models:,}",
                   help="Each is trained on a random part of the training set; mem compares the models trained "
                        "with a point against those trained without it.")
    cols[2].metric("Points scored", f"{run['n_scored']:,}")
    cols[3].metric("Memorized", f"{run['n_memorized']:,}",
                   help="mem at or above the threshold, with a 95% interval that excludes 0.")
    cols[4].metric("Threshold", "–" if threshold is None else f"{threshold:g}")
    _memorization_audit(store, estimate)
    if run["n_trained"] is not None and run["n_models"] is not None and run["n_trained"] < run["n_models"]:
        st.warning(f"Only {run['n_trained']:,} of {run['n_models']:,} shadow models were trained: "
                   f"re-run `memaudit run --stages memorization --db {store.path}` to finish (it resumes).")
    parts = [f"Run `{run['run_id']}`"]
    if run["fraction"] is not None:
        parts.append(f"each shadow model trained on {run['fraction']:.0%} of "
                     + ("the candidates and all other points" if run["method"] == "ploo_improved" else
                        "the training set"))
    if run["shadow_test_acc"] is not None:
        parts.append(f"mean shadow test accuracy {run['shadow_test_acc']:.1%}")
    if run["n_points"] is not None and run["n_scored"] < run["n_points"]:
        parts.append(f"{run['n_points'] - run['n_scored']:,} of the {run['n_points']:,} training images are not "
                     "scored (mem shows –, never 0)")
    st.caption("; ".join(parts) + ". mem = accuracy of the models trained with a point minus that of the models "
               "trained without it, with a 95% Newcombe interval.")
    left, right = st.columns(2)
    with left:
        st.markdown("**mem of the scored points**")
        histogram = memorization_queries.mem_histogram(store)
        if histogram.empty:
            st.info("No point has a mem score.")
        else:
            st.altair_chart(_histogram(histogram, "mem (memorization score)", (-1, 1))
                            + _threshold_rule(threshold, "x"), width="stretch")
    with right:
        st.markdown("**ApB against mem** (bars: 95% interval)")
        points = _jittered(memorization_queries.mem_scatter(store, SCATTER_POINTS))
        if points.empty:
            st.info("No point has a mem score.")
        else:
            if run["n_scored"] > len(points):
                st.caption(f"{len(points):,} of {run['n_scored']:,} scored points (all memorized ones first).")
            event = st.altair_chart(_scatter(points) + _threshold_rule(threshold, "y"), width="stretch",
                                    on_select="rerun", key="mem_scatter", selection_mode=BRUSH)
            _open_brushed(points, event)


def _interval(value: float | None, low: float | None, high: float | None, fmt: str) -> str:
    """'830 [760, 910]'; '–' when the value is unknown."""
    if value is None:
        return "–"
    bounds = "" if low is None or high is None else f" [{format(low, fmt)}, {format(high, fmt)}]"
    return format(value, fmt) + bounds


def _memorization_audit(store: Store, row: dict | None) -> None:
    """What the flags cover (`row`: the audit's estimate): the states, the estimated memorized total with the recall
    of the flags, the per-band audit and how far the cheap proxies track mem on this dataset."""
    if row is None:
        st.caption("This audit predates the completeness estimate: re-run the memorization stage to get it.")
        return
    cols = st.columns(4)
    cols[0].metric("Uncertain", f"{row['n_uncertain']:,}",
                   help="The 95% interval straddles the threshold: more shadow models would decide. Filter "
                        "'Memorized? (uncertain)' in Review.")
    cols[1].metric("Not memorized / not scored", f"{row['n_not_memorized']:,} / {row['n_not_scored']:,}")
    cols[2].metric("Estimated memorized (whole training set)",
                   _interval(row["est_total"], row["est_low"], row["est_high"], ",.0f"),
                   help="Scored points counted, the rest estimated from the random audit sample of each ApB band; "
                        "95% interval.")
    cols[3].metric("Recall of the flags", _interval(row["recall"], row["recall_low"], row["recall_high"], ".0%"),
                   help="Memorized flags / estimated memorized total: the share of memorized images the flags "
                        "find.")
    st.caption(f"{row['n_memorized']:,} memorized, of which {row['n_memorized_certain']:,} with the whole 95% "
               f"interval above the threshold; scored: {row['n_shortlist']:,} lowest-ApB shortlist, "
               f"{row['n_audit']:,} random audit sample, {row['n_extension']:,} from {row['bands_extended']} "
               f"extended ApB bands; {row['n_models']:,} shadow models in all (expected half-width of the mem "
               f"interval {row['expected_half_width']:.2f}).")
    bands, calibration = memorization_queries.bands(store), memorization_queries.calibration(store)
    left, right = st.columns(2)
    with left:
        st.markdown("**Memorized rate per ApB band** (random audit sample, 95% interval)")
        if not bands.empty:
            st.dataframe(bands[["band", "role", "apb_low", "apb_high", "n_points", "n_scored", "rate", "rate_low",
                                "rate_high", "est_memorized"]], hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.2f")
                                        for c in ("apb_low", "apb_high", "rate", "rate_low", "rate_high")}
                         | {"est_memorized": st.column_config.NumberColumn("est. memorized", format="%.0f")})
    with right:
        st.markdown("**How far the proxies track mem here** (weighted to the whole training set, 95% intervals)")
        if not calibration.empty:
            table = calibration.assign(
                spearman=[_interval(r.spearman, r.spearman_low, r.spearman_high, "+.2f")
                          for r in calibration.itertuples()],
                pearson=[_interval(r.pearson, r.pearson_low, r.pearson_high, "+.2f") for r in calibration.itertuples()],
                overlap=[_interval(r.top_k_overlap, r.top_k_overlap_low, r.top_k_overlap_high, ".0%")
                         for r in calibration.itertuples()])
            st.dataframe(table[["proxy", "spearman", "pearson", "overlap"]], hide_index=True, width="stretch")
            st.caption(f"overlap: share of each proxy's {calibration['top_k'].iat[0]:,} most memorized-looking "
                       "training images that are memorized (mem at or above the threshold).")


def _open_brushed(points: pd.DataFrame, event) -> None:
    """A button that opens the points brushed on the scatter (an ApB x mem rectangle) in the Review grid."""
    box = (event or {}).get("selection", {}).get(BRUSH) or {}
    if "x" not in box or "mem" not in box:
        st.caption("Drag a rectangle on the scatter to open those points in Review.")
        return
    (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["mem"])
    chosen = points.loc[points["x"].between(x0, x1) & points["mem"].between(y0, y1), "sample_id"].tolist()
    if st.button(f"Open the {len(chosen)} brushed points in Review", disabled=not chosen, key="open_brushed"):
        st.session_state["selection"] = chosen
        st.switch_page("views/review.py")


def _jittered(points: pd.DataFrame) -> pd.DataFrame:
    """The points with x = ApB plus a small fixed jitter (from the sample id) that separates equal ApB and mem."""
    jitter = pd.util.hash_pandas_object(points["sample_id"], index=False).to_numpy() % 1000 / 1000 - 0.5
    return points.assign(x=points["apb"] + JITTER * jitter)


def _scatter(points: pd.DataFrame) -> alt.LayerChart:
    """ApB (x) against mem (y) with its interval as a vertical bar, colored by the memorized flag."""
    tooltip = ["sample_id", "label", alt.Tooltip("apb:Q", title="ApB", format=".2f"),
               alt.Tooltip("mem:Q", format=".2f"), alt.Tooltip("interval:N", title="95% interval"),
               alt.Tooltip("mem_n_in:Q", title="models with it"), alt.Tooltip("mem_n_out:Q", title="models without"),
               "flag"]
    base = alt.Chart(points).encode(
        x=alt.X("x:Q", title="ApB (lower: harder to learn)",
                scale=alt.Scale(domain=[-JITTER, 1 + JITTER], nice=False)),
        color=alt.Color("flag:N", title=None, scale=MEM_FLAG_SCALE, legend=alt.Legend(orient="top")),
        tooltip=tooltip)
    bars = base.mark_rule(opacity=0.25).encode(y=alt.Y("mem_low:Q"), y2="mem_high:Q")
    dots = base.mark_circle(size=45, opacity=0.8).encode(
        y=alt.Y("mem:Q", title="mem", scale=alt.Scale(domain=[-1, 1]))).add_params(
        alt.selection_interval(name=BRUSH, encodings=["x", "y"]))
    return bars + dots


def _threshold_rule(threshold: float | None, channel: str) -> alt.Chart:
    """A dashed rule at the memorized threshold on the x or y channel (nothing when unknown)."""
    frame = pd.DataFrame({"threshold": [] if threshold is None else [threshold]})
    encoding = {channel: alt.X("threshold:Q") if channel == "x" else alt.Y("threshold:Q")}
    return alt.Chart(frame).mark_rule(strokeDash=[4, 4], color="#d62728").encode(
        tooltip=[alt.Tooltip("threshold:Q", title="memorized threshold")], **encoding)


def _findings(store: Store) -> None:
    """Flags per kind, samples per triage reading of the `audit` view, and the thresholds the detectors used."""
    st.subheader("Findings")
    counts = queries.flag_counts(store)
    if counts.empty:
        st.info("No flags yet: `memaudit run --db ...` flags memorized candidates after scoring, and the detectors "
                "(duplicates, leaks, long tail, label issues) after the embeddings.")
        return
    left, right = st.columns(2)
    with left:
        st.markdown("**Flags per kind** (most important first)")
        table = counts.assign(flag=counts["kind"].map(flag_name))[["flag", "samples", "train", "test"]]
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "samples": st.column_config.NumberColumn(help="Distinct samples with this flag"),
            "train": st.column_config.NumberColumn(help="Of which training images"),
            "test": st.column_config.NumberColumn(help="Of which test images")})
        by_class = queries.flag_class_counts(store).assign(flag=lambda f: f["kind"].map(flag_name))
        st.altair_chart(alt.Chart(by_class).mark_bar().encode(
            x=alt.X("label:N", title="class", sort=None), y=alt.Y("samples:Q", title="flagged images"),
            color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=list(FLAG_COLORS),
                                                                  range=list(FLAG_COLORS.values())),
                            legend=alt.Legend(orient="top")),
            xOffset="kind:N", tooltip=["flag", "label", "samples"]).properties(height=220), width="stretch")
    with right:
        st.markdown("**Triage** (the `audit` view reads the flags of each sample together)")
        triage = queries.triage_counts(store)
        if triage.empty:
            st.caption("No sample has a flag that the triage reads.")
        else:
            st.dataframe(triage, hide_index=True, width="stretch")
    thresholds = queries.detector_thresholds(store)
    run = memorization_queries.memorization_run(store)
    rows = [{"threshold": f"{kind} similarity", "value": value, "method": method}
            for kind, value, method in thresholds[["kind", "value", "method"]].itertuples(index=False)]
    if run is not None and run["threshold"] is not None:
        rows.append({"threshold": "memorized mem", "value": run["threshold"], "method": "configured"})
    if rows:
        st.markdown("**Thresholds used**")
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
            "value": st.column_config.NumberColumn(format="%.4f")})
        if not thresholds.empty:
            st.caption(f"Detectors run `{thresholds['run_id'].iloc[0]}` on embedder "
                       f"`{thresholds['embedder_id'].iloc[0]}`; 'nn_fdr': Benjamini-Hochberg over this dataset's "
                       "nearest-neighbour similarities, 'synthetic_copies': the same over copy scores, with the null "
                       "and recall from synthetic copies of your images, 'labels': on reviewed pairs, 'configured': "
                       "set in the config.")


def _embedding_map(store: Store) -> None:
    """A 2-D PCA map of the latest embedder (computed by the pipeline) coloured by each sample's most important flag."""
    st.subheader("Embedding map")
    embedder = queries.map_embedder(store)
    if embedder is None:
        st.info(f"No embedding map yet: compute the embeddings with `memaudit run --stages embeddings,detectors "
                f"--db {store.path}`.")
        return
    if embedder["fallback_reason"]:
        st.warning(f"Embedder `{embedder['embedder_id']}` is a fallback: {embedder['fallback_reason']}", icon="⚠️")
    points = queries.embedding_map(store, embedder["embedder_id"], MAP_UNFLAGGED_POINTS, MAP_FLAGGED_POINTS)
    n_flagged = int((points["flag"] != "none").sum())
    flagged = (f"{n_flagged:,} flagged: the most important kinds first, up to {MAP_FLAGGED_POINTS:,}"
               if n_flagged >= MAP_FLAGGED_POINTS else f"all {n_flagged:,} flagged")
    shown = (f"all {len(points):,} points" if len(points) >= embedder["n_points"] else
             f"{len(points):,} of {embedder['n_points']:,} points ({flagged}, a sample of the rest)")
    st.caption(f"First two principal components of embedder `{embedder['embedder_id']}` ({embedder['kind']}, "
               f"{embedder['model_name']}, {embedder['dim']}-d, input {embedder['input_size']} px), computed by the "
               f"pipeline; {shown}. Colour: the most important flag of each image; triangles are test images.")
    present = [kind for kind in FLAG_COLORS if kind in set(points["flag"])]
    others = sorted(set(points["flag"]) - set(FLAG_COLORS))
    domain = [*present[:-1], *others, present[-1]] if present and present[-1] == "none" else [*present, *others]
    colors = [FLAG_COLORS.get(kind, "#8c564b") for kind in domain]
    points = points.assign(flag_name=points["flag"].map(flag_name), split=points["split"].fillna("–"))
    names = [flag_name(kind) for kind in domain]
    chart = alt.Chart(points).mark_point(filled=True).encode(
        x=alt.X("x:Q", title="PC 1", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("y:Q", title="PC 2", axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color("flag_name:N", title=None, scale=alt.Scale(domain=names, range=colors),
                        legend=alt.Legend(orient="top")),
        shape=alt.Shape("split:N", title=None, scale=alt.Scale(domain=["train", "test", "–"],
                                                              range=["circle", "triangle-up", "diamond"]),
                        legend=None),
        opacity=alt.condition(alt.datum.flag == "none", alt.value(0.3), alt.value(0.9)),
        size=alt.condition(alt.datum.flag == "none", alt.value(14), alt.value(48)),
        tooltip=["sample_id", "split", "label", alt.Tooltip("flag_name:N", title="flag"),
                 alt.Tooltip("flags:N", title="all flags")])
    st.altair_chart(chart.properties(height=520).configure_axis(grid=False).interactive(), width="stretch")


def render(store: Store) -> None:
    """The whole overview, or an info message while the database holds no samples."""
    running = len(job_queries.running_jobs(store))
    if running:
        st.info(f"{running} job{'s' if running > 1 else ''} running — see the Jobs page.", icon=":material/sync:")
    counts = queries.dataset_counts(store)
    if counts.empty:
        st.info("The audit database holds no samples yet: ingest a dataset with `memaudit run --db ...`.")
        return
    scored = _score_run(store) is not None
    _dataset(store, counts)
    _charts(store)
    if scored:
        _memorization(store)
    if queries.has_detector_schema(store):
        _findings(store)
        _embedding_map(store)
    else:
        st.info(f"This file predates the detectors (no embeddings, pairs or `audit` view): add them with "
                f"`memaudit run --stages embeddings,detectors --db {store.path}`.")


run_page("Audit overview", render)
