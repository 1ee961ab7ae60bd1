"""How complete and how right the memorization stage's flags are, against references it never sees.

On one dataset (the default, or --data), with the standard recipe:
1. Reference: plain pLOO over every training point (--reference-models, r = 0.7); its mem >= 0.25 set.
2. The real `memorization` stage (ApB shortlist + stratified audit sample + band extension, model counts from the
   half-width target), timed: precision and recall of its `memorized` flags against the reference set (Jeffreys 95%
   intervals), its uncertain count, and its estimated total against the reference count.
3. Exact LOO on --loo-points points drawn at random from the stage's scored points, stratified by reference mem (never
   chosen by disagreement): noise-corrected RMSE (the binomial variance of the LOO estimate subtracted) and mean
   signed error of pLOO (the reference) and of the stage's pLOO-improved, with bootstrap intervals over points.
4. RMSE against each reference over 20 / 50 / 100 / 200 models, for pLOO (r = 0.7) and pLOO-improved (r = 0.5 on
   the stage's phase-1 points) on the same points (the phase-1 points), the reference's own noise subtracted.
5. A matched-fraction reference: plain pLOO over every point with models that train on the same fraction of the data
   as the stage's models (pLOO overestimates mem against LOO by an amount that shrinks as r grows); part 1-2's
   measures against it, and its own error against the exact LOO of part 3, so the reference the flags should match
   is chosen by LOO, not by agreement.

Models are cached (benchmarks/mem_reference.py), so a re-run after a change that does not touch training is quick.
Usage: python benchmarks/memorization.py [--data default|noisy|PATH] [--reference-models 480] [--loo-points 30]
       [--loo-models 25] [--parts 2,3,4,5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm
from mem_reference import audited, dataset, reference_design, train_correct
from pipeline_stages import _table

from auditor.intervals import jeffreys_interval
from auditor.config import load_config
from auditor.memorization.estimates import loo_scores, memorization_scores
from auditor.memorization.sharding import loo_design, ploo_design, ploo_improved_design, unpack_rows
from pipelines.memorization_stage import memorization_stage

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


def _flags_rows(reference: pd.DataFrame, scores: pd.DataFrame, estimate: pd.Series) -> list[list[str]]:
    """Precision, recall, never-scored count and the estimated total of the stage's flags against one reference, also
    where the reference is decisive (its own 95% interval excludes the threshold), and the count's difference with
    the reference's own threshold noise added to the stage's interval."""
    ref_mem, ref_sd = reference["mem"].to_numpy(), np.sqrt(_variance(reference))
    truth = ref_mem >= THRESHOLD
    decisive = np.abs(ref_mem - THRESHOLD) > 1.96 * ref_sd
    flagged = (scores["mem_state"] == "memorized").to_numpy()
    uncertain = (scores["mem_state"] == "uncertain").to_numpy()
    scored = scores["mem"].notna().to_numpy()
    hit, count = int((flagged & truth).sum()), int(truth.sum())
    inside = estimate["est_low"] <= count <= estimate["est_high"]
    miss = "" if inside else \
        f" (misses by {min(abs(count - estimate['est_low']), abs(count - estimate['est_high'])):.1f})"
    # The reference count's own noise: each point counts as memorized with chance P(true mem >= threshold).
    chance = 1 - norm.cdf((THRESHOLD - ref_mem) / np.maximum(ref_sd, 1e-9))
    diff = estimate["est_total"] - count
    diff_sd = np.hypot((estimate["est_high"] - estimate["est_low"]) / (2 * 1.96), np.sqrt((chance * (1 - chance)).sum()))
    return [["precision of `memorized`", _rate(hit, int(flagged.sum())), ">= 0.9"],
            ["recall of `memorized`", _rate(hit, count), ">= 0.8"],
            ["recall of `memorized` + `uncertain`", _rate(int(((flagged | uncertain) & truth).sum()), count), "-"],
            ["precision where the reference is decisive",
             _rate(int((flagged & truth & decisive).sum()), int((flagged & decisive).sum())), "-"],
            ["recall where the reference is decisive",
             _rate(int((flagged & truth & decisive).sum()), int((truth & decisive).sum())), "-"],
            ["reference points within its own noise of the threshold", f"{int((~decisive).sum())}", "-"],
            ["reference-memorized never scored", f"{int((truth & ~scored).sum())}", "-"],
            ["estimated total (stage)", f"{estimate['est_total']:.0f} [{estimate['est_low']:.0f}, "
                                        f"{estimate['est_high']:.0f}]", f"within 15% of {count}"],
            ["estimated total / reference count", f"{estimate['est_total'] / count:.3f}", "0.85-1.15"],
            ["reference count inside the interval", f"{inside}{miss}", "True"],
            ["stage - reference count, both noises (95%)",
             f"{diff:+.0f} [{diff - 1.96 * diff_sd:+.0f}, {diff + 1.96 * diff_sd:+.0f}]", "holds 0"],
            ["mean signed mem difference, stage - reference, on scored points",
             f"{np.nanmean(scores['mem'].to_numpy()[scored] - ref_mem[scored]):+.3f}", "-"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-models", type=int, default=480)
    parser.add_argument("--loo-points", type=int, default=30)
    parser.add_argument("--loo-models", type=int, default=25)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--data", default="default", help="default, noisy (8%% of training labels flipped), or a path")
    parser.add_argument("--curve", default="20,50,100,200", help="model counts of the RMSE curve")
    parser.add_argument("--parts", default="2,3,4,5",
                        help="which of parts 3 (LOO), 4 (RMSE curve) and 5 (matched reference) to run too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(profile=args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        store, data = audited(cfg, Path(tmp) / "bench.duckdb", dataset(args.data, Path(tmp)))
        n = len(data.train_ids)
        ref_design = reference_design(n, args.reference_models)
        ref_correct, ref_seconds = train_correct(ref_design, data, cfg, seed=1)
        ref = memorization_scores(ref_correct, ref_design.membership)
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
        memberships = [unpack_rows([bytes(b) for b in store.query(
            "SELECT bits FROM memberships WHERE design_id = ? ORDER BY model_index", [d])["bits"]], n)
            for d in designs["design_id"]]
    # The share of the data a stage model trains on, weighted by the points each design scores.
    stage_fraction = float(np.average([m.mean() for m in memberships], weights=designs["n_candidates"]))

    references = {"pLOO r = 0.7": ref}
    if "5" in args.parts:
        matched = ploo_design(n, args.reference_models, round(stage_fraction, 2), seed=2)
        references[f"pLOO r = {matched.fraction:.2f} (matched)"] = memorization_scores(
            train_correct(matched, data, cfg, seed=2)[0], matched.membership)
    ref_mem = ref["mem"].to_numpy()
    _table(f"1-2. the standard stage's flags against the {args.reference_models}-model pLOO reference "
           f"(r = 0.7, every point; {int((ref_mem >= THRESHOLD).sum())} of {n} with mem >= {THRESHOLD})",
           ["measure", "value (95% interval)", "target"],
           _flags_rows(ref, scores, estimate)
           + [["estimated recall of the flags (stage)", f"{estimate['recall']:.2f} [{estimate['recall_low']:.2f}, "
                                                        f"{estimate['recall_high']:.2f}]", "-"],
              ["states: memorized / uncertain / not / not scored",
               f"{estimate['n_memorized']} / {estimate['n_uncertain']} / {estimate['n_not_memorized']} / "
               f"{estimate['n_not_scored']}", "-"],
              ["share of the training data a stage model trains on", f"{stage_fraction:.3f}", "-"],
              ["memorization stage wall time", f"{stage_seconds:.0f} s ({report.facts['models']} models)",
               "<= 300 s on 2 CPU cores"]])
    if "3" in args.parts:
        _loo_validation(args, data, cfg, references, scores, n)
    if "4" in args.parts:
        _rmse_curve(args, data, cfg, references, phase1, n)
    for name, reference in list(references.items())[1:]:
        other = reference["mem"].to_numpy()
        _table(f"5. the same flags against the {args.reference_models}-model {name} reference "
               f"({int((other >= THRESHOLD).sum())} of {n} with mem >= {THRESHOLD})",
               ["measure", "value (95% interval)", "target"], _flags_rows(reference, scores, estimate))
    print(f"\nreference {args.reference_models} models {ref_seconds:.0f} s (cached runs report the time of their "
          "first training)")


def _loo_validation(args: argparse.Namespace, data, cfg, references: dict[str, pd.DataFrame],
                    scores: pd.DataFrame, n: int) -> None:
    """Part 3: every reference and the stage against exact LOO on a mem-stratified random sample of the scored
    points (stratified by the r = 0.7 reference, the same points whatever other references are added)."""
    scored = scores["mem"].notna().to_numpy()
    first = next(iter(references.values()))
    loo_points = _stratified_by_value(first["mem"].to_numpy(), np.flatnonzero(scored), args.loo_points, seed=5)
    loo = loo_design(n, loo_points, args.loo_models, seed=4)
    loo_correct, loo_seconds = train_correct(loo, data, cfg, seed=4)
    exact = loo_scores(loo_correct, loo)
    # Variance of (estimate - LOO): the references and the stage's scores are independent of the LOO models.
    stage_var = ((scores["mem_high"] - scores["mem_low"]).to_numpy()[loo_points] / (2 * 1.96)) ** 2
    estimators = [(f"{name} (reference)", reference["mem"].to_numpy()[loo_points], _variance(reference.iloc[loo_points]))
                  for name, reference in references.items()]
    estimators.append(("pLOO-improved (the stage)", scores["mem"].to_numpy()[loo_points], stage_var))
    rows = []
    for name, estimate_mem, variance in estimators:
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


def _rmse_curve(args: argparse.Namespace, data, cfg, references: dict[str, pd.DataFrame], phase1: np.ndarray,
                n: int) -> None:
    """Part 4: RMSE against each reference as the number of models grows, pLOO and pLOO-improved on equal points."""
    counts = [int(c) for c in args.curve.split(",")]
    ploo = ploo_design(n, max(counts), 0.7, seed=3)
    improved = ploo_improved_design(n, phase1, max(counts), 0.5, seed=6)
    estimators = {"pLOO (r = 0.7)": (train_correct(ploo, data, cfg, seed=3)[0], ploo.membership),
                  "pLOO-improved (r = 0.5, phase-1 points)": (train_correct(improved, data, cfg, seed=6)[0],
                                                              improved.membership)}
    curve = []
    for k in counts:
        line = [k]
        for reference in references.values():
            ref_mem, ref_var = reference["mem"].to_numpy()[phase1], _variance(reference.iloc[phase1])
            # The first k models of each design.
            for correct, membership in estimators.values():
                est = memorization_scores(correct[:k], membership[:k], phase1)
                ok = est["mem"].notna().to_numpy()
                err2 = (est["mem"].to_numpy()[ok] - ref_mem[ok]) ** 2 - ref_var[ok]
                line.append(f"{np.sqrt(max(err2.mean(), 0)):.3f}")
        curve.append(line)
    _table(f"4. RMSE against each reference on the {len(phase1)} phase-1 points (reference noise subtracted)",
           ["models"] + [f"{est} vs {ref}" for ref in references for est in estimators], curve)


if __name__ == "__main__":
    main()
