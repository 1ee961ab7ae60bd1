"""Flags raised in the foundation: `memorized_candidate` (lowest ApB) and `unreadable` (ingest failures)."""

from __future__ import annotations

import json
import math

import pandas as pd

from auditor.config import CandidateConfig

FLAG_COLUMNS = ["sample_id", "kind", "score", "detail"]


def _short(value: float) -> str:
    """A seed average for people: '3' when whole, else one decimal ('11.3', not '11.3333')."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _forgetting_text(events: float) -> str:
    """'2 forgetting events', or the never-learned case (counted +inf, as Toneva et al. rank it)."""
    if math.isinf(events):
        return "never correct in a seed (forgetting events: maximal)"
    return f"{_short(events)} forgetting event{'' if events == 1 else 's'} (mean over seeds)"


def memorized_candidates(scores: pd.DataFrame, cfg: CandidateConfig) -> pd.DataFrame:
    """The lowest-ApB training points (likely memorized, to be scored by pLOO): below `apb_cutoff` when it is set,
    else the lowest `fraction`; at most `max`. Score = 1 - ApB, so higher means more suspicious."""
    ranked = scores.sort_values(["apb", "sample_id"], kind="stable").reset_index(drop=True)
    if cfg.apb_cutoff >= 0:
        chosen = ranked[ranked["apb"] < cfg.apb_cutoff]
        rule = f"ApB below the cut-off {cfg.apb_cutoff:g}"
    else:
        chosen = ranked.head(math.ceil(cfg.fraction * len(ranked)))
        rule = f"among the lowest {cfg.fraction:.0%} by ApB"
    chosen = chosen.head(cfg.max)
    details = []
    for rank, row in enumerate(chosen.itertuples(index=False), start=1):
        never = pd.isna(row.first_learned)
        learned = "never learned" if never else f"learned for good at epoch {_short(row.first_learned)}"
        details.append(json.dumps({
            "apb": round(float(row.apb), 6), "rank": rank, "ranked": len(ranked), "rule": rule,
            "first_learned": None if never else float(row.first_learned),
            "forgetting_events": None if math.isinf(row.forgetting_events) else float(row.forgetting_events),
            "summary": f"ApB {row.apb:.2f} (rank {rank} of {len(ranked)}, {rule}); {learned}; "
                       f"{_forgetting_text(row.forgetting_events)}"}))
    return pd.DataFrame({"sample_id": chosen["sample_id"].to_numpy(), "kind": "memorized_candidate",
                         "score": 1.0 - chosen["apb"].to_numpy(), "detail": details}, columns=FLAG_COLUMNS)


def unreadable_flags(problems: pd.DataFrame) -> pd.DataFrame:
    """One `unreadable` flag per input file that could not be decoded (its reason as the detail)."""
    bad = problems[(problems["code"] == "unreadable") & problems["sample_id"].notna()]
    return pd.DataFrame({"sample_id": bad["sample_id"].to_numpy(), "kind": "unreadable", "score": 1.0,
                         "detail": bad["reason"].to_numpy()}, columns=FLAG_COLUMNS)
