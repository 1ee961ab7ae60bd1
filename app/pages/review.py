"""Review page: a paginated grid of images, filtered by class and by any flag kind present (memorized candidate,
memorized, duplicate, leaked, long tail, mislabeled, ...), sorted by ApB, mem or the flag's strength, and the evidence
behind the flags of one image of the page (its twin, its cluster, its disagreeing neighbours, its mem)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from app.common import evidence_line, flag_name, md, parse_detail, run_page, thumbnail
from auditor import queries
from auditor.store import Store

PAGE_SIZES = (12, 24, 48, 96)
GRID_COLUMNS = 6
EVIDENCE_IMAGE = 160
STRIP_IMAGE = 96
TWINS_SHOWN = 6
CLUSTER_MEMBERS_SHOWN = 8
NEIGHBORS_SHOWN = 10
NBSP = "\u00a0"
# Flags that the mem line and the badges already tell on a tile; every other kind gets a line of evidence.
MEM_FLAGS = ("memorized_candidate", "memorized")
# Labels of the orderings; the options are the keys of queries.REVIEW_SORTS, so only those ever reach the query.
SORTS = {"apb_asc": "ApB, lowest first", "mem_desc": "mem, highest first", "score_desc": "flag strength, highest first"}


def _first_page() -> None:
    """Go back to page 1 whenever a filter or the order changes."""
    st.session_state["page"] = 1


def _flag_changed() -> None:
    """Page 1, ordered by the chosen flag's strength (similarity, issue score, ...), or by ApB for every image."""
    _first_page()
    if st.session_state.get("flag") is not None:
        st.session_state["sort"] = "score_desc"
    elif st.session_state.get("sort") == "score_desc":
        st.session_state["sort"] = "apb_asc"


def _show_evidence(sample_id: str) -> None:
    """Select `sample_id` in the evidence section below the grid."""
    st.session_state["evidence"] = sample_id


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


def _flags(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The flags of a grid row ({kind, score, detail}, most important first)."""
    return list(row["flags"]) if row["flags"] is not None else []


def _label(value: Any) -> str:
    """A label from the data, escaped for markdown; '–' when missing."""
    return "–" if value is None or pd.isna(value) else md(value)


def _card(row: dict[str, Any]) -> None:
    """One image with its id, label, predicted label, ApB and mem (a test image has neither), a line of evidence per
    detector flag and badges; the path comes from the query, never the browser."""
    image = thumbnail(row["path"])
    if image is None:
        st.warning(f"{row['sample_id']}: image unreadable")
    else:
        st.image(image, caption=row["sample_id"])
    predicted = _label(row["pred_label"])
    if predicted != _label(row["label"]):
        predicted = f":red[**{predicted}**]"
    lines = [f"label **{_label(row['label'])}**, predicted {predicted}"]
    if pd.isna(row["apb"]):
        lines.append(f"{'test' if row['split'] == 'test' else 'not a scored'} image: no ApB, no mem")
    else:
        lines += [f"ApB **{row['apb']:.2f}**", mem_text(row)]
        if models_text(row):
            lines.append(f":gray[{models_text(row)}]")
    flags = _flags(row)
    lines += [evidence_line(f["kind"], f["detail"], row["label"]) for f in flags if f["kind"] not in MEM_FLAGS]
    badges = [badge for badge, on in ((":orange-badge[candidate]", row["memorized_candidate"]),
                                      (":red-badge[memorized]", row["memorized"])) if on]
    if badges:
        lines.append(" ".join(badges))
    st.markdown(":small[" + "  \n".join(lines) + "]")
    if any(f["kind"] != "memorized_candidate" for f in flags):
        st.button("Evidence ↓", key=f"evidence_{row['sample_id']}", type="tertiary", on_click=_show_evidence,
                  args=(row["sample_id"],), help="Show the evidence behind its flags below the grid")


def _picture(path: str | None, caption: str, size: int = EVIDENCE_IMAGE) -> None:
    """An image from a path recorded in `samples` (`size` pixels wide, or as wide as its column for a strip of small
    ones), or a note when it cannot be shown."""
    image = thumbnail(path, size)
    if image is None:
        st.caption(f"{caption} (image unreadable)")
    else:
        st.image(image, caption=caption, width="stretch" if size <= STRIP_IMAGE else size)


def _twin_evidence(store: Store, row: dict[str, Any], kind: str, info: dict, thresholds: dict) -> None:
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
        _picture(row["path"], f"{row['sample_id']} ({row['split']})")
    with middle:
        _picture(best["path"], f"twin {best['twin_id']} ({best['split'] or '–'})")
    with right:
        same = _label(row["label"]) == _label(best["label"])
        labels = (f"**{_label(row['label'])}** and **{_label(best['label'])}**" if same else
                  f":red[**{_label(row['label'])}** and **{_label(best['label'])}**: the labels differ]")
        facts = [f"similarity **{best['similarity']:.4f}**"
                 + (" (an exact copy: same pixels or file)" if best["exact"] else ""),
                 "threshold " + ("–" if threshold is None else f"**{threshold:.4f}**")
                 + f" ({method or 'unknown method'})",
                 f"labels {labels}"]
        if not best["exact"] and threshold is not None and best["similarity"] < threshold:
            facts.append(":gray[below the threshold, but kept: far closer to this image than to anything else]")
        if kind == "leaked":
            here, there = ("training", "test") if row["split"] == "train" else ("test", "training")
            facts.append(f"a copy of this {here} image is in the {there} set: fix the split")
        st.markdown("  \n".join(facts))
    if len(pairs) > 1:
        st.markdown(f"**Other twins** ({int(info.get('twins', len(pairs))) - 1} in all)")
        for column, twin in zip(st.columns(TWINS_SHOWN), pairs.iloc[1:].itertuples()):
            with column:
                _picture(twin.path, f"{twin.twin_id} {twin.similarity:.3f}", STRIP_IMAGE)
                if _label(twin.label) != _label(row["label"]):
                    st.markdown(f":small[:red[label **{_label(twin.label)}**]]")


def _cluster_evidence(store: Store, row: dict[str, Any], info: dict) -> None:
    """The cluster's size against its class, the rules that fired, and a few other members of the cluster."""
    reasons = {"tiny_cluster": "tiny cluster", "low_density": "low local density"}
    percentile = info.get("density_percentile")
    density = ("" if percentile is None else "; the lowest local density of its class" if percentile <= 0 else
               f"; local density above only {percentile:.0%} of its class")
    st.markdown(f"cluster **#{info.get('cluster', '–')}** of **{info.get('cluster_size', '–')}** images in class "
                f"**{_label(row['label'])}** ({info.get('class_size', '–')} training images): "
                f"{', '.join(reasons.get(r, r) for r in info.get('reasons', [])) or 'no rule recorded'}{density}")
    members = queries.cluster_members(store, row["sample_id"], CLUSTER_MEMBERS_SHOWN)
    if members.empty:
        st.caption("No other member: this image is a cluster of its own.")
        return
    st.caption(f"{len(members)} other member{'s' if len(members) > 1 else ''} of its cluster"
               + (" (densest first)" if int(info.get("cluster_size", 0) or 0) - 1 > len(members) else "") + ":")
    for column, member in zip(st.columns(CLUSTER_MEMBERS_SHOWN), members.itertuples()):
        with column:
            _picture(member.path, member.sample_id, STRIP_IMAGE)


def _label_evidence(store: Store, row: dict[str, Any], info: dict) -> None:
    """Given and suggested label, the model's confidence, and the nearest neighbours with the disagreeing ones red."""
    facts = [f"given **{_label(info.get('given'))}** → suggested :orange[**{_label(info.get('suggested'))}**]",
             f"out-of-sample probability of the given label {info.get('self_confidence', float('nan')):.2f}"]
    if info.get("neighbors"):
        facts.append(f"{info.get('disagreeing_neighbors', '–')} of {info['neighbors']} nearest neighbours carry "
                     f"another label (weighted vote {info.get('knn_disagreement', float('nan')):.0%} against, "
                     f"mostly for **{_label(info.get('knn_label'))}**)")
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
            _picture(neighbor.path, f"{neighbor.rank}. {neighbor.neighbor_id}", STRIP_IMAGE)
            text = f"**{_label(neighbor.label)}** · {neighbor.similarity:.2f}"
            st.markdown(f":red[{text}]" if neighbor.disagrees else text)


def _evidence(store: Store, rows: list[dict[str, Any]]) -> None:
    """The evidence behind every flag of one image of the page, chosen in a selectbox (or by a tile's button)."""
    st.divider()
    st.subheader("Evidence")
    ids = [row["sample_id"] for row in rows]
    by_id = {row["sample_id"]: row for row in rows}
    if st.session_state.get("evidence") not in by_id:
        flagged = [i for i in ids if any(f["kind"] != "memorized_candidate" for f in _flags(by_id[i]))]
        st.session_state["evidence"] = (flagged or ids)[0]
    sample_id = st.selectbox(
        "Image of this page", ids, key="evidence",
        format_func=lambda i: f"{i}: " + (", ".join(flag_name(f["kind"]) for f in _flags(by_id[i])) or "no flag"))
    row = by_id[sample_id]
    twin_flag = any(f["kind"] in queries.PAIR_KINDS for f in _flags(row))  # its section shows the image already
    left, right = st.columns([1, 5]) if not twin_flag else (None, st.container())
    if left is not None:
        with left:
            _picture(row["path"], f"{sample_id} ({row['split'] or 'not in samples'})")
    with right:
        facts = [f"label **{_label(row['label'])}**, predicted {_label(row['pred_label'])}"
                 + ("" if pd.isna(row["p_pred"]) else f" (p {row['p_pred']:.2f})")]
        if not pd.isna(row["apb"]):
            facts.append(f"ApB **{row['apb']:.2f}**, {mem_text(row)}"
                         + (f" ({models_text(row)})" if models_text(row) else ""))
        st.markdown("  \n".join(facts))
        if not _flags(row):
            st.caption("No flag on this image.")
    thresholds = queries.detector_thresholds(store).set_index("kind").to_dict("index")
    for flag in _flags(row):
        kind, info = flag["kind"], parse_detail(flag["detail"])
        scored = kind not in (*queries.PAIR_KINDS, "memorized") and not pd.isna(flag["score"])
        st.markdown(f"#### {flag_name(kind)}" + (f" :gray[(score {flag['score']:.2f})]" if scored else ""))
        if kind in queries.PAIR_KINDS and isinstance(info, dict):
            _twin_evidence(store, row, kind, info, thresholds)
        elif kind == "long_tail" and isinstance(info, dict):
            _cluster_evidence(store, row, info)
        elif kind == "mislabeled" and isinstance(info, dict):
            _label_evidence(store, row, info)
        elif kind == "memorized" and not pd.isna(row["mem"]):
            st.markdown(f"{mem_text(row)} (95% interval), {models_text(row)}  \n:gray[{md(info)}]")
        elif isinstance(info, dict):
            st.json(info, expanded=False)
        else:
            st.markdown(md(info) or ":gray[no detail recorded]")


def render(store: Store) -> None:
    """Filters, order, pager, one page of the grid and the evidence of one of its images; an info message while
    nothing is scored or flagged."""
    kinds = queries.flag_kinds(store)
    if queries.review_count(store) == 0 and not kinds:
        st.info("No ApB scores yet: the review grid fills in once `memaudit run --db ...` has trained and scored.")
        return
    counts = queries.flag_counts(store).set_index("kind")["samples"].to_dict()
    controls = st.columns([2, 2, 2, 1, 1], vertical_alignment="bottom")
    label = controls[0].selectbox("Class", [None, *queries.class_labels(store)], key="label",
                                  format_func=lambda v: "All classes" if v is None else v, on_change=_first_page)
    flag = controls[1].selectbox("Flag", [None, *kinds], key="flag", on_change=_flag_changed,
                                 format_func=lambda k: "All scored training images" if k is None else
                                 f"{flag_name(k)} ({counts.get(k, 0):,})")
    sort = controls[2].selectbox("Order", list(queries.REVIEW_SORTS), key="sort",
                                 format_func=lambda k: SORTS.get(k, k), on_change=_first_page)
    size = controls[3].selectbox("Images per page", PAGE_SIZES, index=1, key="page_size", on_change=_first_page)
    total = queries.review_count(store, label, flag)
    pages = max(1, math.ceil(total / size))
    st.session_state["page"] = min(st.session_state.get("page", 1), pages)
    page = controls[4].number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="page")
    if total == 0:
        st.info("No images match these filters"
                + (": has the memorization stage run (`memaudit run --stages memorization --db ...`)?"
                   if flag == "memorized" else "."))
        return
    offset = (page - 1) * size
    rows = queries.review_page(store, label, flag, sort, limit=size, offset=offset).to_dict("records")
    what = ("scored training images" if flag is None else
            "images on either side of a train/test leak (test images have no ApB or mem)" if flag == "leaked" else
            f"images flagged {flag_name(flag).lower()}")
    st.caption(f"Images {offset + 1:,}–{offset + len(rows):,} of {total:,} {what}, {SORTS.get(sort, sort)}. "
               "mem [95% interval]: accuracy of the shadow models trained with the image (in) minus that of those "
               "trained without it (out); candidates have the lowest ApB, memorized ones a mem at or above the "
               "threshold with an interval above 0. **Evidence ↓** shows what lies behind a tile's flags.")
    for start in range(0, len(rows), GRID_COLUMNS):
        for column, row in zip(st.columns(GRID_COLUMNS), rows[start:start + GRID_COLUMNS]):
            with column.container(border=True):
                _card(row)
    if queries.has_detector_schema(store):
        _evidence(store, rows)
    else:
        st.info(f"This file predates the detectors: add their evidence with "
                f"`memaudit run --stages embeddings,detectors --db {store.path}`.")


run_page("Review images", render)
