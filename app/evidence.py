"""The evidence behind a flag, as the dashboard shows it: twins side by side, a cluster's members, the neighbours
that disagree with a label, mem with its interval; shared by the Review and Point detail pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from app.common import flag_name, md, parse_detail, shown_image
from app.reviewer import reviewer
from auditor.review import queries
from auditor.detectors.flag_kinds import evidence_style
from auditor.review.reviews import judge_pair, pair_judgement
from auditor.store.database import Store, StoreBusy

EVIDENCE_IMAGE = 160
STRIP_IMAGE = 96
TWINS_SHOWN = 6
CLUSTER_MEMBERS_SHOWN = 8
NEIGHBORS_SHOWN = 10
NBSP = "\u00a0"


def mem_text(row: dict[str, Any]) -> str:
    """'mem 0.62 [0.31, 0.85]' for a scored point, 'mem – (not a candidate)' (from mem_note) for one that is not."""
    if pd.isna(row["mem"]):
        if pd.isna(row["mem_method"]):
            return "mem – (not run)"
        note = "not scored" if pd.isna(row["mem_note"]) else str(row["mem_note"]).split(" (")[0]
        return f"mem – ({note})"
    return f"mem **{row['mem']:.2f}** [{row['mem_low']:.2f},{NBSP}{row['mem_high']:.2f}]"


def models_text(row: dict[str, Any]) -> str:
    """'4 models in, 4 out' (shadow models trained with / without the point); '' for an unscored point."""
    if pd.isna(row["mem"]):
        return ""
    return f"{int(row['mem_n_in'])} models in, {int(row['mem_n_out'])} out"


def label_text(value: Any) -> str:
    """A label from the data, escaped for markdown; '–' when missing."""
    return "–" if value is None or pd.isna(value) else md(value)


def picture(path: str | None, caption: str, size: int = EVIDENCE_IMAGE, file_hash: str | None = None) -> None:
    """An image from a path recorded in `samples` (`size` pixels wide, or as wide as its column for a strip of small
    ones), or a note when it cannot be shown (unreadable, or changed since the audit: then a placeholder);
    `file_hash`: the one recorded with the path, when the caller's query has it."""
    image, note = shown_image(path, size, file_hash)
    if image is None:
        st.caption(f"{caption} ({note})")
    else:
        st.image(image, caption=f"{caption} ({note})" if note else caption,
                 width="stretch" if size <= STRIP_IMAGE else size)


def twin_evidence(store: Store, row: dict[str, Any], kind: str, info: dict, thresholds: dict) -> None:
    """The image and its closest twin side by side with similarity, threshold and labels, then any other twins."""
    pairs = queries.twins(store, row["sample_id"], kind, TWINS_SHOWN + 1)
    if pairs.empty:
        st.info(f"The pairs behind this flag are gone (twin {info.get('twin', '–')}): re-run the detectors.")
        return
    best = pairs.iloc[0]
    threshold = info.get("threshold", thresholds.get(kind, {}).get("value"))
    method = info.get("threshold_method", thresholds.get(kind, {}).get("method"))
    left, middle, right = st.columns([1, 1, 2])
    with left:
        picture(row["path"], f"{row['sample_id']} ({row['split']})", file_hash=row["file_hash"])
    with middle:
        picture(best["path"], f"twin {best['twin_id']} ({best['split'] or '–'})", file_hash=best["file_hash"])
    with right:
        same = label_text(row["label"]) == label_text(best["label"])
        labels = (f"**{label_text(row['label'])}** and **{label_text(best['label'])}**" if same else
                  f":red[**{label_text(row['label'])}** and **{label_text(best['label'])}**: the labels differ]")
        facts = [f"similarity **{best['similarity']:.4f}**"
                 + (" (an exact copy: same pixels or file)" if best["exact"] else "")
                 + (f", matched **{info['match']}**" if info.get("match") and best["twin_id"] == info.get("twin")
                    else ""),
                 "threshold " + ("–" if threshold is None else f"**{threshold:.4f}**")
                 + f" ({method or 'unknown method'})",
                 f"labels {labels}"]
        if info.get("chance") and best["twin_id"] == info.get("twin"):
            facts.append(f":gray[{md(info['chance'])}]")
        if not best["exact"] and threshold is not None and best["similarity"] < threshold:
            facts.append(":gray[below the threshold, but kept: far closer to this image than to anything else]")
        if kind == "leaked":
            here, there = ("training", "test") if row["split"] == "train" else ("test", "training")
            facts.append(f"a copy of this {here} image is in the {there} set: fix the split")
        st.markdown("  \n".join(facts))
        if not best["exact"]:
            _judge_buttons(store, row["sample_id"], best["twin_id"], kind)
    if len(pairs) > 1:
        st.markdown(f"**Other twins** ({int(info.get('twins', len(pairs))) - 1} in all)")
        for column, twin in zip(st.columns(TWINS_SHOWN), pairs.iloc[1:].itertuples()):
            with column:
                picture(twin.path, f"{twin.twin_id} {twin.similarity:.3f}", STRIP_IMAGE, twin.file_hash)
                if label_text(twin.label) != label_text(row["label"]):
                    st.markdown(f":small[:red[label **{label_text(twin.label)}**]]")


def _judge(store: Store, one: str, other: str, is_duplicate: bool) -> None:
    """Store a reviewer's answer on a pair; a busy or changed database shows why it was not stored."""
    try:
        judge_pair(store, one, other, is_duplicate, reviewer=reviewer())
    except (StoreBusy, ValueError) as exc:
        st.session_state["decision_error"] = f"Judgement not saved: {exc}"


def _judge_buttons(store: Store, sample_id: str, twin_id: str, kind: str) -> None:
    """Confirm or reject a detected pair: the answers calibrate this pair kind's threshold on the next detectors
    run (once both answers exist), instead of the similarity distribution."""
    answer = pair_judgement(store, sample_id, twin_id)
    what = "a copy" if kind == "leaked" else "a duplicate"
    st.caption("Your judgement: " + ("not yet given" if answer is None else
                                     f"**{what}**" if answer else f"**not {what}**")
               + " — judged pairs calibrate the next detectors run's threshold.")
    yes, no = st.columns(2)
    key = f"judge_{kind}_{sample_id}_{twin_id}"
    yes.button(f"Yes, {what}", key=f"{key}_yes", on_click=_judge, args=(store, sample_id, twin_id, True))
    no.button(f"No, not {what}", key=f"{key}_no", on_click=_judge, args=(store, sample_id, twin_id, False))


def cluster_evidence(store: Store, row: dict[str, Any], kind: str, info: dict, thresholds: dict) -> None:
    """The cluster's size against its class, the rules that fired, and a few other members of the cluster."""
    reasons = {"tiny_cluster": "tiny cluster", "low_density": "low local density"}
    percentile = info.get("density_percentile")
    density = ("" if percentile is None else "; the lowest local density of its class" if percentile <= 0 else
               f"; local density above only {percentile:.0%} of its class")
    size = info.get("cluster_size", "–")
    st.markdown(f"cluster **#{info.get('cluster', '–')}** of **{size}** image{'' if size == 1 else 's'} in class "
                f"**{label_text(row['label'])}** ({info.get('class_size', '–')} training images): "
                f"{', '.join(reasons.get(r, r) for r in info.get('reasons', [])) or 'no rule recorded'}{density}")
    members = queries.cluster_members(store, row["sample_id"], CLUSTER_MEMBERS_SHOWN)
    if members.empty:
        st.caption("No other member: this image is a cluster of its own.")
        return
    st.caption(f"{len(members)} other member{'s' if len(members) > 1 else ''} of its cluster"
               + (" (densest first)" if int(info.get("cluster_size", 0) or 0) - 1 > len(members) else "") + ":")
    for column, member in zip(st.columns(CLUSTER_MEMBERS_SHOWN), members.itertuples()):
        with column:
            picture(member.path, member.sample_id, STRIP_IMAGE, member.file_hash)


def label_evidence(store: Store, row: dict[str, Any], kind: str, info: dict, thresholds: dict) -> None:
    """Given and suggested label, the model's confidence, and the nearest neighbours with the disagreeing ones red."""
    suggested, voted = label_text(info.get("suggested")), label_text(info.get("knn_label"))
    facts = [f"given **{label_text(info.get('given'))}** → suggested :orange[**{suggested}**] by the model: confident "
             "learning on out-of-sample predicted probabilities (probability of the given label "
             f"{info.get('self_confidence', float('nan')):.2f})"]
    if info.get("neighbors"):
        facts.append(f"{info.get('disagreeing_neighbors', '–')} of {info['neighbors']} nearest neighbours carry "
                     f"another label (weighted vote {info.get('knn_disagreement', float('nan')):.0%} against, "
                     f"mostly for **{voted}**): they confirm the label is doubtful, not which label is right")
        if voted != suggested:
            facts.append(f":orange[The two signals disagree: the model suggests **{suggested}**, the neighbours "
                         f"vote **{voted}**; check the image before relabeling]")
    if info.get("memorization") is not None:
        reading = {"mislabeled": "memorized and hurting the test points it influences: likely mislabeled",
                   "rare_but_useful": "memorized and helping test points: likely rare but correct"}
        facts.append(f"mem {info['memorization']:.2f}, mean influence on test points "
                     + ("–" if info.get("cross_influence") is None else f"{info['cross_influence']:+.2f}")
                     + (f": {reading[info['influence_reading']]}" if info.get("influence_reading") in reading else ""))
    st.markdown("  \n".join(facts))
    neighbors = queries.sample_neighbors(store, row["sample_id"], NEIGHBORS_SHOWN)
    if neighbors.empty:
        st.caption("No neighbours recorded for this image.")
        return
    st.caption("Nearest training images (rank, id; label · similarity), those with another label in red:")
    for column, neighbor in zip(st.columns(NEIGHBORS_SHOWN), neighbors.itertuples()):
        with column:
            picture(neighbor.path, f"{neighbor.rank}. {neighbor.neighbor_id}", STRIP_IMAGE, neighbor.file_hash)
            text = f"**{label_text(neighbor.label)}** · {neighbor.similarity:.2f}"
            st.markdown(f":red[{text}]" if neighbor.disagrees else text)


def detail_evidence(store: Store, row: dict[str, Any], kind: str, info: dict | str, thresholds: dict) -> None:
    """The flag's own detail: its summary, else its fields, else its text."""
    if isinstance(info, dict) and "summary" in info:
        st.markdown(md(info["summary"]))
    elif isinstance(info, dict):
        st.json(info, expanded=False)
    else:
        st.markdown(md(info) or ":gray[no detail recorded]")


def mem_evidence(store: Store, row: dict[str, Any], kind: str, info: dict | str, thresholds: dict) -> None:
    """mem with its 95% interval and the shadow models in and out, then the flag's summary (its detail when the
    point has no mem)."""
    if row.get("mem") is None or pd.isna(row["mem"]):
        detail_evidence(store, row, kind, info, thresholds)
        return
    summary = info.get("summary", "") if isinstance(info, dict) else info
    st.markdown(f"{mem_text(row)} (95% interval), {models_text(row)}  \n:gray[{md(summary)}]")


# The renderer of each evidence style of the flag-kind registry; a structured style needs a JSON detail (a dict).
EVIDENCE: dict[str, Callable[[Store, dict[str, Any], str, Any, dict], None]] = {
    "twins": twin_evidence, "cluster": cluster_evidence, "labels": label_evidence, "mem": mem_evidence,
    "detail": detail_evidence}
_STRUCTURED = ("twins", "cluster", "labels")


def flag_evidence(store: Store, row: dict[str, Any], flags: list[dict[str, Any]]) -> None:
    """Each flag of one image as a heading with its evidence in plain words (twin, cluster, neighbours, mem)."""
    thresholds = queries.detector_thresholds(store).set_index("kind").to_dict("index") \
        if queries.has_detector_schema(store) else {}
    for flag in flags:
        kind, info = flag["kind"], parse_detail(flag["detail"])
        style = evidence_style(kind)
        scored = style not in ("twins", "mem") and not pd.isna(flag["score"])
        st.markdown(f"#### {flag_name(kind)}" + (f" :gray[(score {flag['score']:.2f})]" if scored else ""))
        if style in _STRUCTURED and not isinstance(info, dict):
            style = "detail"
        EVIDENCE[style](store, row, kind, info, thresholds)
