"""What the Experiments page and `memaudit sweep --show` read about natural-memorization sweeps (no SQL in pages)."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store
from auditor.experiments.sweep import TRANSIENT_COLUMNS, GapCorrelation, gap_correlation, memorized_sets_compare, transient

SUMMARY_COLUMNS = ["sweep_id", "variant", "arch", "width", "epochs", "train_acc", "test_acc", "gap", "gap_low",
                   "gap_high", "n_seeds", "n_memorized", "n_memorized_low", "n_memorized_high", "n_null",
                   "n_models", "trained_to_max", "check_gain", "converged_share", "method", "run_id", "seconds"]
# How transient memorization is measured: a `ploo` sweep reads the same shadow models at checkpoints of one run;
# the other methods compare variants trained separately for different numbers of epochs.
WITHIN_RUN, ACROSS_RUNS = "checkpoints of one run", "separate runs per training length"


def sweeps(store: Store) -> pd.DataFrame:
    """Every stored sweep, newest first: id, status, method, number of variants, created and finished times."""
    if "sweeps" not in store.tables():
        return pd.DataFrame(columns=["sweep_id", "status", "method", "n_variants", "created_at", "finished_at"])
    return store.query("SELECT sweep_id, status, spec_json->>'$.method' AS method, "
                       "json_array_length(spec_json->'$.variants') AS n_variants, created_at, finished_at "
                       "FROM sweeps ORDER BY created_at DESC, sweep_id")


def sweep_summary(store: Store, sweep_id: str) -> pd.DataFrame:
    """One row per finished variant of a sweep (arch, width, epochs order): accuracies, gap, memorized count."""
    known = sweeps(store)["sweep_id"].tolist()
    if sweep_id not in known:
        raise ValueError(f"no sweep {sweep_id!r} in {store.path}; known sweeps: {', '.join(known) or 'none'}")
    return store.query(f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM sweep_variants WHERE sweep_id = ? "
                       "ORDER BY arch, width, epochs", [sweep_id])


def memorized_sets(store: Store, sweep_id: str) -> dict[str, set[str]]:
    """The sample ids memorized by each finished variant of a sweep, in summary order (empty sets included)."""
    variants = sweep_summary(store, sweep_id)["variant"].tolist()
    hits = store.query("SELECT variant, sample_id FROM sweep_members WHERE sweep_id = ? AND memorized", [sweep_id])
    grouped = hits.groupby("variant")["sample_id"].agg(set)
    return {v: grouped.get(v, set()) for v in variants}


def sweep_set_differences(store: Store, sweep_id: str) -> pd.DataFrame:
    """For every ordered pair of variants: both memorized counts, the overlap, each set difference and Jaccard."""
    return memorized_sets_compare(memorized_sets(store, sweep_id))


def sweep_checkpoints(store: Store, sweep_id: str) -> pd.DataFrame:
    """A `ploo` sweep's checkpoints (variant, epoch order): shadow test accuracy and memorized count with interval."""
    return store.query("SELECT c.variant, c.epoch, c.shadow_test_acc, c.n_memorized, c.n_memorized_low, "
                       "c.n_memorized_high FROM sweep_checkpoints c JOIN sweep_variants v USING (sweep_id, variant) "
                       "WHERE c.sweep_id = ? ORDER BY v.arch, v.width, v.epochs, c.epoch", [sweep_id])


def sweep_transient(store: Store, sweep_id: str) -> pd.DataFrame:
    """Temporal transient memorization: points memorized at one epoch and not at a later one, within each variant's
    run (checkpoints, `ploo`), else per (arch, width) across the variants' training lengths; `compared` says which."""
    summary = sweep_summary(store, sweep_id)
    columns = ["compared", "variant", "arch", "width", *TRANSIENT_COLUMNS]
    checkpoints = store.query("SELECT variant, epoch, memorized_ids FROM sweep_checkpoints WHERE sweep_id = ?",
                              [sweep_id])
    if len(checkpoints):
        parts = [transient({e: set(ids) for e, ids in zip(group["epoch"], group["memorized_ids"])}).assign(
                     compared=WITHIN_RUN, variant=variant, arch=row.arch, width=row.width)
                 for variant, group in checkpoints.groupby("variant", sort=True)
                 for row in summary[summary["variant"] == variant].itertuples()]
    else:
        sets = memorized_sets(store, sweep_id)
        parts = [transient(dict(zip(group["epochs"], (sets[v] for v in group["variant"])))).assign(
                     compared=ACROSS_RUNS, variant=None, arch=arch, width=width)
                 for (arch, width), group in summary.groupby(["arch", "width"], sort=True)]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def sweep_correlation(store: Store, sweep_id: str) -> GapCorrelation:
    """Pearson r between train-test gap and memorized count across the sweep's variants, with its bootstrap interval
    (None with a reason)."""
    return gap_correlation(sweep_summary(store, sweep_id))
