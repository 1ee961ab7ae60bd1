"""The memorized-candidate flags: which points, and evidence a person can read (seed averages rounded)."""

import json
import math

import pandas as pd

from auditor.config import CandidateConfig
from auditor.detectors.flags import memorized_candidates


def test_candidates_are_the_lowest_apb_with_readable_evidence():
    scores = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "apb": [0.1, 0.9, 0.2, 0.05],
                           "first_learned": [11 + 1 / 3, 2.0, float("nan"), 4.0],
                           "forgetting_events": [1 / 3, 0.0, math.inf, 1.0]})
    flags = memorized_candidates(scores, CandidateConfig(fraction=0.75, apb_cutoff=-1.0, max=10))
    assert flags["sample_id"].tolist() == ["d", "a", "c"]
    summaries = {r.sample_id: json.loads(r.detail)["summary"] for r in flags.itertuples()}
    assert "learned for good at epoch 11.3; 0.3 forgetting events (mean over seeds)" in summaries["a"]
    assert "learned for good at epoch 4; 1 forgetting event (mean over seeds)" in summaries["d"]
    assert "never learned; never correct in a seed (forgetting events: maximal)" in summaries["c"]
    assert json.loads(flags.set_index("sample_id").loc["c", "detail"])["forgetting_events"] is None
