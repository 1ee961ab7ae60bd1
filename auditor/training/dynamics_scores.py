"""Per-example scores from a training-dynamics log: ApB, first epoch learned, forgetting events, dataset
cartography (confidence, variability) and EL2N. Pure functions over a long-format log, one row per record."""

from __future__ import annotations

import numpy as np
import pandas as pd

LOG_COLUMNS = ("run_id", "sample_id", "step", "epoch", "correct", "p_label", "el2n")
SCORE_COLUMNS = ["sample_id", "apb", "first_learned", "forgetting_events", "confidence", "variability", "el2n",
                 "n_records", "n_seeds"]


def per_run_scores(log: pd.DataFrame, el2n_epoch: int) -> pd.DataFrame:
    """Scores of every (run_id, sample_id) from that run's records, ordered by step.

    - apb: fraction of records at which the example was classified correctly (Algorithm 1, normalised to 0..1);
    - first_learned: epoch of the first record after which it stays correct to the end (NaN: never learned);
    - forgetting_events: correct -> incorrect transitions between consecutive records (Toneva et al.); an example
      never classified correctly at any record is forgotten infinitely often (+inf), as Toneva et al. rank it;
    - confidence / variability: mean and standard deviation of p(label) over records (Swayamdipta et al.);
    - el2n: mean ||softmax - onehot||_2 over the records of epoch `el2n_epoch` (Paul et al.).
    """
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing:
        raise ValueError(f"dynamics log lacks columns {missing}")
    keys = ["run_id", "sample_id"]
    log = log.sort_values(keys + ["step"], kind="stable").reset_index(drop=True)
    correct = log["correct"].astype(bool).to_numpy()
    group_start = np.r_[True, (log["run_id"].to_numpy()[1:] != log["run_id"].to_numpy()[:-1])
                        | (log["sample_id"].to_numpy()[1:] != log["sample_id"].to_numpy()[:-1])]
    prev_correct = np.r_[False, correct[:-1]] & ~group_start
    group_id = np.cumsum(group_start) - 1
    position = np.arange(len(log)) - np.flatnonzero(group_start)[group_id]
    size = np.bincount(group_id)
    # Position of the last incorrect record per group (-1 when never wrong): learned from the record after it.
    last_wrong = np.full(len(size), -1)
    np.maximum.at(last_wrong, group_id[~correct], position[~correct])
    learned_at = last_wrong + 1
    learned = learned_at < size
    first_rows = np.flatnonzero(group_start)
    epochs = log["epoch"].to_numpy()
    first_learned = np.full(len(size), np.nan)
    first_learned[learned] = epochs[first_rows[learned] + learned_at[learned]]
    p = log["p_label"].to_numpy(dtype=np.float64)
    mean_p = np.bincount(group_id, weights=p) / size
    mean_p2 = np.bincount(group_id, weights=p * p) / size
    out = pd.DataFrame({
        "run_id": log["run_id"].to_numpy()[first_rows],
        "sample_id": log["sample_id"].to_numpy()[first_rows],
        "apb": np.bincount(group_id, weights=correct) / size,
        "first_learned": first_learned,
        "forgetting_events": np.where(np.bincount(group_id, weights=correct) > 0,
                                      np.bincount(group_id, weights=prev_correct & ~correct), np.inf),
        "confidence": mean_p,
        "variability": np.sqrt(np.clip(mean_p2 - mean_p ** 2, 0, None)),
        "n_records": size,
    })
    early = log[log["epoch"] == el2n_epoch]
    el2n = early.groupby(keys, sort=False)["el2n"].mean().rename("el2n").reset_index()
    return out.merge(el2n, on=keys, how="left")


def dynamics_scores(log: pd.DataFrame, el2n_epoch: int) -> pd.DataFrame:
    """One row per example: per-run scores averaged over runs (seeds); first_learned over the runs that learned it;
    forgetting_events is +inf when any run never learned the example."""
    runs = per_run_scores(log, el2n_epoch)
    grouped = runs.groupby("sample_id", sort=True)
    out = grouped[["apb", "first_learned", "forgetting_events", "confidence", "variability", "el2n"]].mean()
    out["n_records"] = grouped["n_records"].sum()
    out["n_seeds"] = grouped["run_id"].nunique()
    return out.reset_index()[SCORE_COLUMNS]

