"""Reproduce the ApB / pLOO-improved paper's claims on the default dataset with one fixed recipe (the default mlp).

1. pLOO with --reference-models models (r = 0.7 over every point): the reference memorization scores.
2. Pearson and Spearman correlation of ApB (mean over the standard profile's seeds) with the reference
   (paper: Pearson < -0.95).
3. pLOO-improved with its default settings (candidates = lowest-ApB 5%, r = 0.5, ceil(0.04 m) models, floor 20):
   models, wall time, RMSE against the reference on the candidates; next to it pLOO with the same small number of
   models, and pLOO-improved with early stopping (a model stops once it fits its shard).
4. Exact LOO (--loo-models with, and without, each point) on the --loo-points candidates where the reference pLOO and
   pLOO-improved disagree most: RMSE of each against LOO (paper: 35.5 vs 12.19 on a 0-100 scale).
5. Engine throughput of every phase (models per minute); see benchmarks/shadow_throughput.py for batched vs one by one
   and the fraction of matmul peak.

Usage: python benchmarks/memorization.py [--reference-models 400] [--loo-points 100] [--loo-models 12]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pipeline_stages import _table
from scipy import stats

from auditor.config import AuditConfig, load_config
from auditor.memorization import loo_scores, memorization_scores
from auditor.shadow_engine import train_shadow_block
from auditor.sharding import ShardDesign, default_shard_count, loo_design, ploo_design, ploo_improved_design
from auditor.store import Store
from pipelines.arrays import TrainingArrays, load_training_arrays
from pipelines.runner import run_pipeline

BLOCK = 16


def train_all(design: ShardDesign, data: TrainingArrays, cfg: AuditConfig, seed: int,
              stop_at: float | None = None) -> tuple[np.ndarray, float]:
    """Correctness (models x train points) of every model of `design`, trained in batched blocks; and wall time."""
    t0 = time.perf_counter()
    correct = np.zeros((design.n_models, len(data.y_train)), bool)
    for start in range(0, design.n_models, BLOCK):
        rows = list(range(start, min(start + BLOCK, design.n_models)))
        out = train_shadow_block(data.x_train, data.y_train, data.x_test, data.y_test, len(data.labels),
                                 design.membership[rows], [seed * 100_003 + r for r in rows], cfg,
                                 stop_at_train_acc=stop_at)
        correct[rows] = out.train_pred == data.y_train
    return correct, time.perf_counter() - t0


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((np.asarray(a) - np.asarray(b)) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-models", type=int, default=400)
    parser.add_argument("--loo-points", type=int, default=100)
    parser.add_argument("--loo-models", type=int, default=12)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--stop-at", type=float, default=0.998,
                        help="early-stopping variant: a model stops once its epoch accuracy on its shard reaches this")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(profile=args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        run_pipeline(store, "default", cfg, stages=("ingest", "train", "scores"))
        data = load_training_arrays(store, cfg)
        scores = store.query("SELECT sample_id, apb FROM scores ORDER BY sample_id")
        cand_ids = store.query("SELECT f.sample_id FROM flags f JOIN scores s USING (sample_id) "
                               "WHERE kind = 'memorized_candidate' ORDER BY s.apb, f.sample_id")["sample_id"]
    assert (scores["sample_id"].to_numpy() == data.train_ids).all()
    apb = scores["apb"].to_numpy()
    index = {s: i for i, s in enumerate(data.train_ids)}
    candidates = np.array([index[s] for s in cand_ids])
    n = len(data.train_ids)
    phases = []

    ref_design = ploo_design(n, args.reference_models, 0.7, seed=1)
    ref_correct, ref_time = train_all(ref_design, data, cfg, seed=1)
    ref = memorization_scores(ref_correct, ref_design.membership)["mem"].to_numpy()
    phases.append(["pLOO reference (r 0.7, all points)", ref_design.n_models, f"{ref_time:.0f}",
                   f"{ref_design.n_models / ref_time * 60:.0f}", "-"])

    pearson = stats.pearsonr(apb, ref)[0]
    spearman = stats.spearmanr(apb, ref)[0]
    cand_pearson = stats.pearsonr(apb[candidates], ref[candidates])[0]
    _table("2. ApB vs reference memorization score (paper: Pearson < -0.95)",
           ["points", "n", "Pearson", "Spearman", "mean mem", "memorized (mem >= 0.25)"],
           [["all training points", n, f"{pearson:.3f}", f"{spearman:.3f}", f"{np.nanmean(ref):.3f}",
             int((ref >= 0.25).sum())],
            ["ApB candidates (lowest 5%)", len(candidates), f"{cand_pearson:.3f}",
             f"{stats.spearmanr(apb[candidates], ref[candidates])[0]:.3f}", f"{np.nanmean(ref[candidates]):.3f}",
             int((ref[candidates] >= 0.25).sum())]])

    k = default_shard_count(len(candidates), cfg.memorization.per_candidate, cfg.memorization.min_models)
    imp_design = ploo_improved_design(n, candidates, k, 0.5, seed=2)
    imp_correct, imp_time = train_all(imp_design, data, cfg, seed=2)
    imp = memorization_scores(imp_correct, imp_design.membership, candidates)["mem"].to_numpy()
    small_design = ploo_design(n, k, 0.7, seed=3)
    small_correct, small_time = train_all(small_design, data, cfg, seed=3)
    small = memorization_scores(small_correct, small_design.membership, candidates)["mem"].to_numpy()
    stop_correct, stop_time = train_all(imp_design, data, cfg, seed=2, stop_at=args.stop_at)
    stop = memorization_scores(stop_correct, imp_design.membership, candidates)["mem"].to_numpy()
    rows = []
    for name, values, models, seconds in (("pLOO-improved (default)", imp, k, imp_time),
                                          (f"pLOO with the same {k} models", small, k, small_time),
                                          (f"pLOO-improved, early stop at {args.stop_at:.1%} shard acc", stop, k,
                                           stop_time)):
        rows.append([name, models, f"{seconds:.1f}", f"{rmse(values, ref[candidates]):.3f}",
                     f"{np.nanmean(np.abs(values - ref[candidates])):.3f}",
                     f"{stats.pearsonr(values, ref[candidates])[0]:.3f}"])
        phases.append([name, models, f"{seconds:.1f}", f"{models / seconds * 60:.0f}", "-"])
    _table(f"3. on the {len(candidates)} candidates, against the {args.reference_models}-model pLOO reference",
           ["estimator", "models", "seconds", "RMSE", "mean |error|", "Pearson"], rows)

    disagreement = np.abs(imp - ref[candidates])
    chosen = candidates[np.argsort(-disagreement, kind="stable")[:args.loo_points]]
    loo = loo_design(n, chosen, args.loo_models, seed=4)
    loo_correct, loo_time = train_all(loo, data, cfg, seed=4)
    exact = loo_scores(loo_correct, loo)["mem"].to_numpy()
    pos = {c: i for i, c in enumerate(candidates)}
    imp_on = imp[[pos[c] for c in chosen]]
    phases.append([f"exact LOO ({args.loo_models} with + {args.loo_models} without each)", loo.n_models,
                   f"{loo_time:.0f}", f"{loo.n_models / loo_time * 60:.0f}", "-"])
    _table(f"4. exact LOO on the {len(chosen)} points where pLOO and pLOO-improved disagree most "
           "(paper: RMSE 35.5 pLOO vs 12.19 pLOO-improved, 0-100 scale)",
           ["estimator", "models", "RMSE vs LOO", "RMSE x100", "Pearson vs LOO"],
           [[f"pLOO ({args.reference_models} models, all points)", args.reference_models,
             f"{rmse(ref[chosen], exact):.3f}", f"{100 * rmse(ref[chosen], exact):.1f}",
             f"{stats.pearsonr(ref[chosen], exact)[0]:.3f}"],
            [f"pLOO-improved ({k} models)", k, f"{rmse(imp_on, exact):.3f}", f"{100 * rmse(imp_on, exact):.1f}",
             f"{stats.pearsonr(imp_on, exact)[0]:.3f}"]])
    _table("5. engine throughput per phase (batched mlp blocks of 16, 2 CPU cores)",
           ["phase", "models", "seconds", "models/min", ""], phases)


if __name__ == "__main__":
    main()
