"""Point detail: one image large with every score (interval and run), its training dynamics, nearest neighbours,
twins, the test points it influences most, its flags explained in plain words, and the decision on it."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.common import md, method_name, parse_detail, run_page
from app.evidence import (STRIP_IMAGE, flag_evidence, label_text, mem_text, models_text, picture)
from app.decide import decide, decision_badge, show_decision_error
from auditor.review import point_queries, queries
from auditor.review.reviews import ACTIONS, decision_history
from auditor.store.database import Store

DETAIL_IMAGE = 320
INFLUENCED_SHOWN = 8
NEIGHBORS_SHOWN = 10


def _chosen(store: Store) -> str | None:
    """The sample to show: ?id=... in the address, else the one opened from Review, else a search box."""
    wanted = st.query_params.get("id") or st.session_state.get("point")
    typed = st.text_input("Sample id", value=wanted or "", key="point_search",
                          help="Type an id (or its beginning) to open another image")
    if typed and typed != wanted:
        matches = point_queries.sample_ids_like(store, typed)
        if typed in matches or not matches:
            wanted = typed
        else:
            wanted = st.selectbox("Matching ids", matches, key="point_match")
    if wanted:
        st.session_state["point"] = wanted
        st.query_params["id"] = wanted
    return wanted


def _scores(row: dict) -> None:
    """Every score of the point with its interval and the run it came from."""
    facts = [f"label **{label_text(row['label'])}** ({row['split']}), predicted **{label_text(row['pred_label'])}**"
             + ("" if row["p_pred"] is None else f" (p {row['p_pred']:.2f})")]
    if row["apb"] is None:
        facts.append("no ApB or mem: " + ("test images are not trained on" if row["split"] == "test" else
                                          "not scored yet"))
    else:
        facts.append(f"ApB **{row['apb']:.3f}** (mean over {row['n_seeds'] or '–'} seeds, run `{row['run_id']}`"
                     + ("" if row["converged"] else ", :orange[not converged]") + ")")
        facts.append(f"{mem_text(row)}" + (f" — {models_text(row)}" if models_text(row) else "")
                     + (f", {method_name(row['mem_method'])} run `{row['mem_run_id']}`" if row["mem_run_id"] else ""))
        for name, key, fmt in (("first learned for good at epoch", "first_learned", ".1f"),
                               ("forgetting events", "forgetting_events", ".1f"), ("confidence", "confidence", ".2f"),
                               ("variability", "variability", ".2f"), ("EL2N", "el2n", ".3f")):
            if row[key] is not None:
                facts.append(f"{name} {format(row[key], fmt)}")
    st.markdown("  \n".join(facts))


def _loo(store: Store, sample_id: str) -> None:
    """The exact leave-one-out score, when one was computed for this point."""
    loo = point_queries.sample_loo(store, sample_id)
    if loo is not None:
        st.markdown(f"exact LOO mem **{loo['mem']:.2f}** [{loo['mem_low']:.2f}, {loo['mem_high']:.2f}] from "
                    f"{int(loo['mem_n_in'])} models with it and {int(loo['mem_n_out'])} without (run `{loo['run_id']}`)")


def _dynamics(store: Store, sample_id: str) -> None:
    """p(label) over training steps per seed, with the steps where it was classified correctly marked."""
    frame = point_queries.sample_dynamics(store, sample_id)
    st.markdown("**Training dynamics**")
    if frame.empty:
        st.caption("No training dynamics recorded for this image (test images and unscored files have none).")
        return
    frame = frame.assign(seed=frame["seed"].astype(str), outcome=frame["correct"].map({True: "correct",
                                                                                     False: "wrong"}))
    line = alt.Chart(frame).mark_line(opacity=0.6).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("p_label:Q", title="p(label)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("seed:N", title="seed"))
    dots = alt.Chart(frame).mark_point(filled=True, size=30).encode(
        x="step:Q", y="p_label:Q", shape=alt.Shape("outcome:N", title=None),
        color=alt.Color("seed:N"), tooltip=["seed", "epoch", "step", alt.Tooltip("p_label:Q", format=".2f"),
                                            "outcome", alt.Tooltip("loss:Q", format=".3f")])
    st.altair_chart(line + dots, width="stretch")


def _strip(frame: pd.DataFrame, id_column: str, caption: callable) -> None:
    """A row of small images with a caption line each."""
    for column, item in zip(st.columns(max(len(frame), 1)), frame.itertuples()):
        with column:
            picture(item.path, getattr(item, id_column), STRIP_IMAGE, item.file_hash)
            st.markdown(caption(item))


def _influence(store: Store, sample_id: str) -> None:
    """The test points this training point influences most, with the sign and size of the influence."""
    frame = point_queries.influenced_tests(store, sample_id, INFLUENCED_SHOWN)
    if frame.empty:
        return
    st.markdown("**Test points it influences most** (accuracy on the test point with it in training minus without)")
    _strip(frame, "test_id", lambda t: f":small[{label_text(t.label)} · {'+' if t.score >= 0 else ''}"
                                       f"{t.score:.2f}]")


def _neighbors(store: Store, row: dict) -> None:
    """The nearest training images in the detectors' embedding, those labelled otherwise in red."""
    if not queries.has_detector_schema(store):
        return
    frame = queries.sample_neighbors(store, row["sample_id"], NEIGHBORS_SHOWN)
    if frame.empty:
        return
    st.markdown("**Nearest training images** (label · cosine similarity)")
    _strip(frame, "neighbor_id", lambda n: (f":small[:red[**{label_text(n.label)}**] · {n.similarity:.2f}]"
                                            if n.disagrees else f":small[{label_text(n.label)} · {n.similarity:.2f}]"))


def suggested_label(row: dict) -> str | None:
    """The label to offer for a relabel: the mislabeled flag's suggestion, else the prediction where it differs from
    the label; None when nothing suggests another label."""
    for flag in row["flags"]:
        info = parse_detail(flag["detail"])
        if flag["kind"] == "mislabeled" and isinstance(info, dict) and info.get("suggested") is not None:
            return str(info["suggested"])
    return row["pred_label"] if row["pred_label"] not in (None, row["label"]) else None


def _decide(store: Store, sample_id: str, action: str) -> None:
    """A decision button: record `action` with the chosen label and the note; once stored, the note is cleared so it
    never signs the next decision."""
    state = st.session_state
    new_label = state.get(f"point_label_{sample_id}") if action == "relabel" else None
    if decide(store, [sample_id], action, new_label, state.get("point_note")):
        state["point_note"] = ""


def _decision(store: Store, row: dict) -> None:
    """The current decision, buttons to decide (keep / remove / relabel with a note) or undo, and the history; the
    relabel target defaults to the suggested label, and with no suggestion it must be chosen first."""
    st.markdown("**Decision** " + (decision_badge(row["decision"], row["decision_label"]) or ":gray[not reviewed]")
                + (f" :gray[by {md(row['decided_by'])}]" if row["decided_by"] else ""))
    labels = [label for label in queries.class_labels(store) if label != row["label"]]
    suggested = suggested_label(row)
    st.text_input("Note (optional)", key="point_note")
    cols = st.columns(len(ACTIONS) + 1)
    new_label = st.selectbox("Relabel to", labels, index=labels.index(suggested) if suggested in labels else None,
                             key=f"point_label_{row['sample_id']}", placeholder="choose the new label",
                             help="The suggested label when the evidence suggests one") if labels else None
    for column, action in zip(cols, [*ACTIONS, "undo"]):
        column.button(action.capitalize(), key=f"point_{action}", on_click=_decide,
                      args=(store, row["sample_id"], action), type="primary" if action == "remove" else "secondary",
                      disabled=(action == "undo" and not row["decision"]) or (action == "relabel" and not new_label))
    show_decision_error()
    history = decision_history(store, row["sample_id"])
    if not history.empty:
        with st.expander(f"History ({len(history)} {'entry' if len(history) == 1 else 'entries'})"):
            st.dataframe(history.drop(columns=["sample_id"]), hide_index=True, width="stretch")


def render(store: Store) -> None:
    """The chosen point, or a hint on how to choose one."""
    sample_id = _chosen(store)
    if not sample_id:
        st.info("Open an image from the Review page (**Details**), or type its id above.")
        return
    row = queries.sample_detail(store, sample_id)
    if row is None:
        st.error(f"Sample **{md(sample_id)}** not found in this audit database.")
        return
    left, right = st.columns([1, 2])
    with left:
        picture(row["path"], f"{row['sample_id']} ({row['split']}, {row['width']}×{row['height']} {row['mode']})",
                DETAIL_IMAGE, row["file_hash"])
    with right:
        _scores(row)
        _loo(store, sample_id)
        _decision(store, row)
    _dynamics(store, sample_id)
    _influence(store, sample_id)
    _neighbors(store, row)
    st.subheader("Flags")
    if row["flags"]:
        flag_evidence(store, row, row["flags"])
    else:
        st.caption("No flag on this image.")


run_page("Point detail", render)
