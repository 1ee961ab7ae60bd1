"""How complete and how right the memorization stage's flags are, against references it never sees.

On one dataset (the default, or --data), with the standard recipe:
1. Reference: plain pLOO over every training point (--reference-models, r = 0.7); its mem >= 0.25 set.
2. The real `memorization` stage (ApB shortlist + stratified audit sample + band extension, model counts from the
   half-width target), timed: precision and recall of its `memorized` flags against the reference set (Jeffreys 95%
   intervals), its uncertain count, and its estimated total against the reference count.
3. Exact LOO on --loo-points points drawn at random from the stage's scored points, stratified by reference mem (never
   chosen by disagreement): noise-corrected RMSE (the binomial variance of the LOO estimate subtracted) and mean
   signed error of pLOO (the reference) and of the stage's pLOO-improved, with bootstrap intervals over points.
4. RMSE against the reference over 20 / 50 / 100 models and the stage's own count, for pLOO and pLOO-improved (the
   stage's phase-1 models) on the same points (the phase-1 points), the reference's own noise subtracted.

Models are cached (benchmarks/mem_reference.py), so a re-run after a change that does not touch training is quick.
Usage: python benchmarks/memorization.py [--data default|noisy|PATH] [--reference-models 480] [--loo-points 30]
       [--loo-models 25] [--parts 2,3,4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mem_reference import audited, dataset, reference_design, train_correct
from pipeline_stages import _table

from auditor.audit_sample import jeffreys_interval
from auditor.config import load_config
from auditor.memorization import loo_scores, memorization_scores
from auditor.sharding import loo_design, ploo_design, unpack_rows
from pipelines.memorization_stage import correctness, memorization_stage

THRESHOLD = 0.25
MEM_STRATA = (-1.01, 0.05, 0.25, 0.5, 0.75, 1.01)  # reference mem strata for the LOO sample


def _rate(hits: int, n: int) -> str:
    """'0.91 [0.87, 0.94] (203/223)' with a Jeffreys 95% interval."""
    low, high = jeffreys_interval(hits, n)
    return f"{hits / n:.2f} [{float(low):.2f}, {float(high):.2f}] ({hits}/{n})" if n else "–"


def _variance(scores: pd.DataFrame) -> np.ndarray:
    """Binomial variance of each mem estimate: p_in(1-p_in)/n_in + p_out(1-p_out)/n_out."""
    return (scores["p_in"] * (1 - scores["p_in"]) / scores["mem_n_in"]
            + scores["p_out"] * (1 - scores["p_out"]) / scores["mem_n_out"]).to_numpy()


def _bootstrap(values: np.ndarray, statistic, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """statistic(values) and its 95% percentile bootstrap interval over the rows of `values`."""
    rng = np.random.default_rng(seed)
    boot = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(resamples)]
    return statistic(values), *np.percentile(boot, [2.5, 97.5])


def _corrected_rmse(rows: np.ndarray) -> float:
    """sqrt(mean(err^2 - var)) over rows (err, var): the RMSE with the estimates' own binomial noise taken out."""
    return float(np.sqrt(max(np.mean(rows[:, 0] ** 2 - rows[:, 1]), 0.0)))


def _stratified_by_value(values: np.ndarray, candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About n of `candidates`, at random, equally from each MEM_STRATA range of `values` (fewer where a stratum is
    smaller)."""
    rng = np.random.default_rng(seed)
    strata = [candidates[(values[candidates] >= lo) & (values[candidates] < hi)]
              for lo, hi in zip(MEM_STRATA[:-1], MEM_STRATA[1:])]
    per = -(-n // len(strata))
    return np.sort(np.concatenate([rng.choice(s, size=min(per, len(s)), replace=False) for s in strata if len(s)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-models", type=int, default=480)
    parser.add_argument("--loo-points", type=int, default=30)
    parser.add_argument("--loo-models", type=int, default=25)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--data", default="default", help="default, noisy (8%% of training labels flipped), or a path")
    parser.add_argument("--curve", default="20,50,100", help="model counts of the RMSE curve (plus the stage's)")
    parser.add_argument("--parts", default="2,3,4", help="which of parts 3 (LOO) and 4 (RMSE curve) to run too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(profile=args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        store, data = audited(cfg, Path(tmp) / "bench.duckdb", dataset(args.data, Path(tmp)))
        n = len(data.train_ids)
        ref_design = reference_design(n, args.reference_models)
        ref_correct, ref_seconds = train_correct(ref_design, data, cfg, seed=1)
        ref = memorization_scores(ref_correct, ref_design.membership)
        ref_mem = ref["mem"].to_numpy()
        t0 = time.perf_counter()
        report = memorization_stage(store, cfg)
        stage_seconds = time.perf_counter() - t0
        scores = store.query("SELECT sample_id, mem, mem_low, mem_high, mem_state, mem_sampled FROM scores")
        scores = scores.set_index("sample_id").reindex(data.train_ids).reset_index()
        estimate = store.query("SELECT * FROM memorization_estimates").iloc[0]
        designs = store.query("SELECT design_id, n_models, n_candidates FROM shadow_designs ORDER BY created_at")
        first = designs["design_id"].iat[0]
        phase1 = store.query("SELECT point FROM design_points WHERE design_id = ? AND candidate ORDER BY point",
                             [first])["point"].to_numpy()
        improved_correct = correctness(store, first, data, int(designs["n_models"].iat[0]))[0]
        bits = store.query("SELECT bits FROM memberships WHERE design_id = ? ORDER BY model_index", [first])["bits"]
        improved_membership = unpack_rows([bytes(b) for b in bits], n)

    truth = ref_mem >= THRESHOLD
    flagged = (scores["mem_state"] == "memorized").to_numpy()
    uncertain = (scores["mem_state"] == "uncertain").to_numpy()
    scored = scores["mem"].notna().to_numpy()
    hit = int((flagged & truth).sum())
    _table(f"1-2. the standard stage's flags against the {args.reference_models}-model pLOO reference "
           f"(r = 0.7, every point; {int(truth.sum())} of {n} with mem >= {THRESHOLD})",
           ["measure", "value (95% interval)", "target"],
           [["precision of `memorized`", _rate(hit, int(flagged.sum())), ">= 0.9"],
            ["recall of `memorized`", _rate(hit, int(truth.sum())), ">= 0.8"],
            ["recall of `memorized` + `uncertain`", _rate(int(((flagged | uncertain) & truth).sum()),
                                                         int(truth.sum())), "-"],
            ["reference-memorized never scored", f"{int((truth & ~scored).sum())}", "-"],
            ["estimated total (stage)", f"{estimate['est_total']:.0f} [{estimate['est_low']:.0f}, "
                                        f"{estimate['est_high']:.0f}]", f"within 15% of {int(truth.sum())}"],
            ["estimated total / reference count", f"{estimate['est_total'] / truth.sum():.3f}", "0.85-1.15"],
            ["reference count inside the interval",
             str(bool(estimate["est_low"] <= truth.sum() <= estimate["est_high"])), "True"],
            ["estimated recall of the flags (stage)", f"{estimate['recall']:.2f} [{estimate['recall_low']:.2f}, "
                                                      f"{estimate['recall_high']:.2f}]", "-"],
            ["states: memorized / uncertain / not / not scored",
             f"{estimate['n_memorized']} / {estimate['n_uncertain']} / {estimate['n_not_memorized']} / "
             f"{estimate['n_not_scored']}", "-"],
            ["mean signed mem difference, stage - reference, on scored points",
             f"{np.nanmean(scores['mem'].to_numpy()[scored] - ref_mem[scored]):+.3f}", "-"],
            ["memorization stage wall time", f"{stage_seconds:.0f} s ({report.facts['models']} models)",
             "<= 300 s on 2 CPU cores"]])

    if "3" in args.parts:
        _loo_validation(args, data, cfg, ref, ref_mem, scores, scored, n)
    if "4" in args.parts:
        _rmse_curve(args, data, cfg, ref, ref_mem, phase1, improved_correct, improved_membership, n)
    print(f"\nreference {args.reference_models} models {ref_seconds:.0f} s (cached runs report the time of their "
          "first training)")


def _loo_validation(args: argparse.Namespace, data, cfg, ref: pd.DataFrame, ref_mem: np.ndarray,
                    scores: pd.DataFrame, scored: np.ndarray, n: int) -> None:
    """Part 3: both estimators against exact LOO on a mem-stratified random sample of the scored points."""
    loo_points = _stratified_by_value(ref_mem, np.flatnonzero(scored), args.loo_points, seed=5)
    loo = loo_design(n, loo_points, args.loo_models, seed=4)
    loo_correct, loo_seconds = train_correct(loo, data, cfg, seed=4)
    exact = loo_scores(loo_correct, loo)
    stage_mem = scores["mem"].to_numpy()[loo_points]
    # Variance of (estimate - LOO): the reference and the stage's scores are independent of the LOO models.
    stage_var = ((scores["mem_high"] - scores["mem_low"]).to_numpy()[loo_points] / (2 * 1.96)) ** 2
    rows = []
    for name, estimate_mem, variance in (("pLOO (the reference)", ref_mem[loo_points],
                                          _variance(ref.iloc[loo_points])),
                                         ("pLOO-improved (the stage)", stage_mem, stage_var)):
        err = np.c_[estimate_mem - exact["mem"].to_numpy(), variance + _variance(exact)]
        rmse = _bootstrap(err, _corrected_rmse)
        bias = _bootstrap(err[:, 0], np.mean)
        rows.append([name, f"{100 * rmse[0]:.1f} [{100 * rmse[1]:.1f}, {100 * rmse[2]:.1f}]",
                     f"{100 * bias[0]:+.1f} [{100 * bias[1]:+.1f}, {100 * bias[2]:+.1f}]"])
    loo_sd = float(np.sqrt(_variance(exact)).max())
    _table(f"3. exact LOO ({args.loo_models} shared + {args.loo_models} without each) on {len(loo_points)} points drawn "
           f"at random from the scored points, stratified by reference mem (largest LOO sd {loo_sd:.3f}); x100 scale "
           "(paper: RMSE 35.5 pLOO vs 12.19 pLOO-improved)",
           ["estimator", "noise-corrected RMSE vs LOO", "mean signed error vs LOO"], rows)

    print(f"exact LOO: {loo.n_models} models, {loo_seconds:.0f} s")


def _rmse_curve(args: argparse.Namespace, data, cfg, ref: pd.DataFrame, ref_mem: np.ndarray, phase1: np.ndarray,
                improved_correct: np.ndarray, improved_membership: np.ndarray, n: int) -> None:
    """Part 4: RMSE against the reference as the number of models grows, pLOO and pLOO-improved on equal points."""
    curve = []
    counts = [int(c) for c in args.curve.split(",")]
    stage_models = len(improved_correct)
    ploo_big = ploo_design(n, stage_models, 0.7, seed=3)
    ploo_correct, _ = train_correct(ploo_big, data, cfg, seed=3)
    ref_var = _variance(ref.iloc[phase1])
    for k in [c for c in counts if c < stage_models] + [stage_models]:
        line = [k]
        # The first k models of a design (the stage's own phase-1 models for pLOO-improved).
        for correct, membership in ((ploo_correct, ploo_big.membership), (improved_correct, improved_membership)):
            est = memorization_scores(correct[:k], membership[:k], phase1)
            ok = est["mem"].notna().to_numpy()
            err2 = (est["mem"].to_numpy()[ok] - ref_mem[phase1][ok]) ** 2 - ref_var[ok]
            line.append(f"{np.sqrt(max(err2.mean(), 0)):.3f}")
        curve.append(line)
    _table(f"4. RMSE against the reference on the {len(phase1)} phase-1 points (reference noise subtracted)",
           ["models", "pLOO (r = 0.7)", "pLOO-improved (r = 0.5)"], curve)


if __name__ == "__main__":
    main()
