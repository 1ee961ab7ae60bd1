"""What the Experiments page and `memaudit experiment --show` read about marginal-utility experiments (no SQL in
pages)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.experiments.marginal_utility import FULL, FULL_LONGER, summarize
from auditor.store.database import Store

# Per-arm design columns shown next to the results (added after the first schema: absent in old files' rows = NULL).
ARM_COLUMNS = ("epochs", "per_model_control", "n_memorized_removed", "mem_share", "mem_share_low", "mem_share_high")


def experiment_results(store: Store, experiment_id: str) -> pd.DataFrame:
    """Per arm: n_removed, models, test accuracy mean ± std, drop vs full with 95% CI and p, accuracy and drop on the
    influenced / leaked / remaining test points, converged share (and `not_converged`), newly flagged on re-audit,
    epochs, whether its control is drawn per model, and the memorized points it removes (count, share of the
    estimated memorized total with its interval)."""
    arms = store.query("SELECT * FROM experiment_arms WHERE experiment_id = ? ORDER BY position", [experiment_id])
    if arms.empty:
        known = store.query("SELECT experiment_id FROM experiments ORDER BY created_at")["experiment_id"].tolist()
        raise ValueError(f"no experiment {experiment_id!r} in {store.path}; known: {', '.join(known) or 'none'}")
    models = store.query("SELECT arm, test_acc, converged, test_correct FROM experiment_models "
                         "WHERE experiment_id = ?", [experiment_id])
    test_ids = np.asarray(store.scalar("SELECT test_ids FROM experiments WHERE experiment_id = ?", [experiment_id]))
    table = summarize(arms, models, test_ids)
    newly = store.query("SELECT arm, count(*) FILTER (WHERE newly_flagged) AS newly_flagged FROM experiment_reaudit "
                        "WHERE experiment_id = ? GROUP BY arm", [experiment_id])
    design = arms.reindex(columns=["arm", *ARM_COLUMNS])
    return table.merge(newly, on="arm", how="left").merge(design, on="arm", how="left")


def schedule_check_row(store: Store, experiment_id: str) -> dict:
    """The convergence check of one experiment (full arm vs its longer schedule: gain with CI, p, trained_to_max)
    and the estimated memorized total it was designed against; values are None where not measured."""
    row = store.query("SELECT * FROM experiments WHERE experiment_id = ?", [experiment_id])
    keys = ("check_gain", "check_low", "check_high", "check_p", "trained_to_max", "est_memorized",
            "est_memorized_low", "est_memorized_high")
    values = row.reindex(columns=list(keys)).iloc[0] if len(row) else pd.Series(index=keys, dtype=object)
    return {k: None if pd.isna(v) else v.item() if hasattr(v, "item") else v for k, v in values.items()}


def schedule_line(check: dict) -> str:
    """The convergence check in one line: what a 2x longer schedule gains on the full arm, and the verdict."""
    if check["trained_to_max"] is None:
        return "convergence check (full arm vs a 2x longer schedule): not measured (too few models, or not finished)"
    verdict = ("trained to maximum test accuracy" if check["trained_to_max"] else
               "NOT trained to maximum test accuracy: the longer schedule is significantly better, drops are suspect")
    p = "-" if check["check_p"] is None else f"{check['check_p']:.3g}"
    return (f"convergence check: a 2x longer schedule changes full-data test accuracy by {check['check_gain']:+.2%} "
            f"[{check['check_low']:+.2%}, {check['check_high']:+.2%}] (p {p}): {verdict}")


def control_models(store: Store, experiment_id: str) -> pd.DataFrame:
    """Each model of each random control: its own draw (count of ids removed), test accuracy and its drop against
    the mean of the full-data models; empty for experiments whose controls were drawn once per arm."""
    frame = store.query("SELECT m.* FROM experiment_models m JOIN experiment_arms a USING (experiment_id, arm) "
                        "WHERE m.experiment_id = ? AND a.control_of IS NOT NULL ORDER BY a.position, m.model_index",
                        [experiment_id])
    if frame.empty or "removed_ids" not in frame.columns or frame["removed_ids"].isna().all():
        return pd.DataFrame(columns=["arm", "model_index", "n_removed", "distinct_from_model_0", "test_acc",
                                     "drop_vs_full_mean"])
    full = mean_accuracy(store, experiment_id, FULL)
    first = frame.groupby("arm")["removed_ids"].transform("first")
    return pd.DataFrame({
        "arm": frame["arm"], "model_index": frame["model_index"], "n_removed": frame["removed_ids"].map(len),
        "distinct_from_model_0": [len(set(a) - set(b)) for a, b in zip(frame["removed_ids"], first)],
        "test_acc": frame["test_acc"], "drop_vs_full_mean": full - frame["test_acc"]})


def control_spread(store: Store, experiment_id: str) -> pd.DataFrame:
    """Per random control: its models, the points each removes, the mean count of ids not in model 0's draw, and
    the mean and standard deviation of its models' drops against the full-data mean (empty as `control_models`)."""
    models = control_models(store, experiment_id)
    columns = ["arm", "models", "n_removed", "new_ids_vs_model_0", "drop_mean", "drop_std"]
    if models.empty:
        return pd.DataFrame(columns=columns)
    return models.groupby("arm", sort=False).agg(
        models=("model_index", "size"), n_removed=("n_removed", "first"),
        new_ids_vs_model_0=("distinct_from_model_0", "mean"), drop_mean=("drop_vs_full_mean", "mean"),
        drop_std=("drop_vs_full_mean", "std")).reset_index()[columns]


def seconds_per_model(store: Store) -> float | None:
    """Median training seconds of one experiment model on `store` (1x-schedule arms), None before any experiment."""
    value = store.scalar("SELECT median(seconds) FROM experiment_models WHERE arm <> ?", [FULL_LONGER])
    return None if value is None else float(value)


def mean_accuracy(store: Store, experiment_id: str, arm: str) -> float | None:
    """The mean test accuracy of one arm's models; None before any is trained."""
    return store.scalar("SELECT avg(test_acc) FROM experiment_models WHERE experiment_id = ? AND arm = ?",
                        [experiment_id, arm])


def experiment_status(store: Store, experiment_id: str) -> str | None:
    """An experiment's status (running, done, failed); None when there is no such experiment."""
    return store.scalar("SELECT status FROM experiments WHERE experiment_id = ?", [experiment_id])


def experiments(store: Store) -> pd.DataFrame:
    """Marginal-utility experiments, newest first (experiment_id, status, created_at, finished_at, arms, models)."""
    if "experiments" not in store.tables():
        return pd.DataFrame(columns=["experiment_id", "status", "created_at", "finished_at", "arms", "models"])
    return store.query(
        "SELECT e.experiment_id, e.status, e.created_at, e.finished_at, "
        "       (SELECT count(*) FROM experiment_arms a WHERE a.experiment_id = e.experiment_id) AS arms, "
        "       (SELECT count(*) FROM experiment_models m WHERE m.experiment_id = e.experiment_id) AS models "
        "FROM experiments e ORDER BY e.created_at DESC, e.experiment_id")
