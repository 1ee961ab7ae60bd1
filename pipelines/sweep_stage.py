"""The natural-memorization sweep: the audit recipe trained and scored once per variant (architecture x width x
epochs) on the same data, each variant's memorized set kept in `sweep_members` and its accuracies in `sweep_variants`.

Method `ploo` measures memorization as the paper does: mem of every training point from plain pLOO shadow models of
the variant's recipe, the memorized count with its interval and its shuffled-membership null, the same models'
memorized sets at checkpoint epochs (`sweep_checkpoints`: transient memorization within one run), and the train-test
gap of >= 3 full-data seeds, checked against a 2x longer schedule (the experiments' convergence check). `apb` (the
cheap proxy) and `ploo_improved` read each variant's ApB from the audit's training stage.

A sweep never writes the main audit's `scores` or `flags`. Each variant is committed in one short transaction when it
is finished; a re-run of the same sweep skips finished variants. Under `apb` and `ploo_improved` the seed models and
shadow models underneath are reused by the training and memorization stages themselves (identified by config and data
hash); a `ploo` variant interrupted before it is committed is trained again from its start.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from auditor.experiments import variant_rows
from auditor.config import AuditConfig, config_from_dict
from auditor.training.dynamics_scores import dynamics_scores
from auditor.memorization.executor import BlockTask, make_executor
from auditor.experiments.marginal_utility import SCHEDULE_FACTOR, model_converged, schedule_check
from auditor.detectors.flags import memorized_candidates
from auditor.memorization.estimates import flag_memorized, memorization_scores
from auditor.store.provenance import fingerprint
from auditor.store.run_rows import done_runs, restore_run
from auditor.training.score_rows import dynamics_log
from auditor.memorization.shadow_engine import ShadowBlock
from auditor.memorization.sharding import default_shard_count, ploo_improved_design
from auditor.store.database import Store
from auditor.experiments.sweep import (SweepSpec, Variant, checkpoint_epochs, memorized_count, seed_interval,
                           shuffled_memberships)
from auditor.experiments.sweep_queries import (sweep_checkpoints, sweep_correlation, sweep_set_differences, sweep_summary,
                                   sweep_transient)
from auditor.training.trainer import resolve_device
from pipelines.arrays import TrainingArrays, load_training_arrays, training_fingerprint
from pipelines.jobs import Job
from pipelines.memorization_stage import plan_design, run_design
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import finish_run, now, run_status, start_run
from pipelines.stages import StageReport, train_stage


def variant_config(cfg: AuditConfig, variant: Variant) -> AuditConfig:
    """`cfg` with the variant's architecture, width and epochs (EL2N read no later than its last epoch), validated."""
    values = cfg.to_dict()
    values["train"].update(arch=variant.arch, width=variant.width, epochs=variant.epochs)
    values["dynamics"]["el2n_epoch"] = min(values["dynamics"]["el2n_epoch"], variant.epochs)
    return config_from_dict(values)


def variant_identity(vcfg: AuditConfig, data_hash: str, method: str) -> str:
    """What fixes a variant's results: its training recipe and data, its seeds, and the memorized rule's settings."""
    rule = {"candidates": asdict(vcfg.candidates)}
    if method in ("ploo_improved", "ploo"):
        rule["memorization"] = asdict(vcfg.memorization)
    if method == "ploo":
        rule["convergence"] = asdict(vcfg.convergence)
    return fingerprint(training_fingerprint(vcfg, data_hash), vcfg.train.seeds, method, rule)


def _train(store: Store, vcfg: AuditConfig, progress: ProgressFactory) -> StageReport:
    """`train_stage` for one variant. An audit's finished ApB run that the variant shares keeps its record; an ApB
    run the sweep started is closed here (its scores go to `sweep_members`, never to `scores`)."""
    audits = done_runs(store, "apb")
    report = train_stage(store, vcfg, progress)
    facts, parent = report.facts, report.facts["parent_run_id"]
    kept = audits[audits["run_id"] == parent]
    if len(kept):
        restore_run(store, parent, kept)
    else:
        finish_run(store, parent, converged=facts["converged"], train_acc=float(np.mean(facts["train_acc"])),
                   test_acc=float(np.mean(facts["test_acc"])) if facts["test_acc"] else None,
                   seconds=report.seconds, message="trained by a sweep; its ApB is in sweep_members")
    return report


def _apb(store: Store, vcfg: AuditConfig, seed_runs: list[str]) -> pd.DataFrame:
    """ApB (and the other dynamics scores) of every training point from the variant's seed runs."""
    phase = "batch" if "batch" in vcfg.dynamics.record else "epoch_end"
    return dynamics_scores(dynamics_log(store, phase, seed_runs), vcfg.dynamics.el2n_epoch)


def _ploo_improved(store: Store, data: TrainingArrays, vcfg: AuditConfig, candidate_ids: np.ndarray,
                   progress: ProgressFactory) -> tuple[str, pd.DataFrame]:
    """pLOO-improved mem of the variant's ApB candidates, from shadow models of the variant's own recipe."""
    if not len(candidate_ids):
        raise RuntimeError(f"no memorized candidates for {vcfg.train.arch} width {vcfg.train.width} epochs "
                           f"{vcfg.train.epochs}: pLOO-improved shards only candidates; raise candidates.fraction")
    mc = vcfg.memorization
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    candidates = position[candidate_ids].to_numpy()
    k = mc.models or default_shard_count(len(candidates), mc.per_candidate, mc.min_models)
    design = ploo_improved_design(len(data.train_ids), candidates, k, mc.fraction or 0.5, seed=vcfg.seed)
    run_id, trained, reused, train_correct, _ = run_design(store, design, data, vcfg, "sweep_mem", progress)
    scores = memorization_scores(train_correct, design.membership, design.candidates)
    scores["sample_id"] = data.train_ids[scores["point"].to_numpy()]
    finish_run(store, run_id, message=f"{design.n_models} shadow models ({trained} trained, {reused} reused) for "
                                      f"{len(candidates)} candidates of a sweep variant")
    return run_id, scores


# Full-data models per variant (each schedule) for the train-test gap and the convergence check.
MIN_GAP_SEEDS = 3


def _model_seed(run_id: str, role: str, index: int) -> int:
    """Seed of one model of a `ploo` variant: fixed by the variant's identity, its role and index."""
    return int(fingerprint(run_id, role, index), 16) % (2 ** 31)


def _train_blocks(tasks: list[BlockTask], data: TrainingArrays, vcfg: AuditConfig, bar) -> dict[str, ShadowBlock]:
    """Every task's result by key, trained on the configured executor."""
    results = {}
    for task, result in make_executor(vcfg.executor).run(data.shadow_data(), tasks, vcfg):
        results[task.key] = result
        bar.update(len(task.models))
    return results


def _full_models(data: TrainingArrays, vcfg: AuditConfig, run_id: str, bar) -> dict:
    """Train-test gap of MIN_GAP_SEEDS (or train.seeds) full-data models with its interval over seeds, their
    convergence, and the 2x-schedule check of the experiments (more epochs must not gain test accuracy)."""
    n = max(vcfg.train.seeds, MIN_GAP_SEEDS)
    everything = np.ones((n, len(data.train_ids)), bool)
    longer = variant_config(vcfg, Variant(vcfg.train.arch, vcfg.train.width, SCHEDULE_FACTOR * vcfg.train.epochs))
    out = {}
    for role, cfg in (("full", vcfg), ("full_longer", longer)):
        task = BlockTask(f"{run_id}-{role}", tuple(range(n)), tuple(_model_seed(run_id, role, m) for m in range(n)),
                         everything, test_curve=True)
        out[role] = _train_blocks([task], data, cfg, bar)[task.key]
    full = out["full"]
    train_acc = (full.train_pred == data.y_train).mean(axis=1)
    gap, gap_low, gap_high = seed_interval(train_acc - full.test_acc)
    check = schedule_check(full.test_acc, out["full_longer"].test_acc, vcfg.convergence.tolerance)
    cc = vcfg.convergence
    return {"train_acc": float(train_acc.mean()), "test_acc": float(full.test_acc.mean()), "gap": gap,
            "gap_low": gap_low, "gap_high": gap_high, "n_seeds": n,
            "converged_share": float(np.mean([model_converged(c, cc.window, cc.tolerance)
                                              for c in full.epoch_test_acc])),
            "check_gain": check.gain, "check_low": check.low, "check_high": check.high,
            "trained_to_max": check.trained_to_max}


def _ploo(store: Store, sweep_id: str, variant: Variant, data: TrainingArrays, vcfg: AuditConfig, run_id: str,
          progress: ProgressFactory) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Plain pLOO over every training point with the variant's recipe: (members, checkpoints, row facts). The same
    shadow models are read at checkpoint epochs; the memorized count carries its 95% interval, and `n_null` is the
    count with memberships shuffled (what noise alone marks)."""
    threshold = vcfg.memorization.threshold
    design, _ = plan_design(store, len(data.train_ids), None, vcfg, vcfg.seed, "sweep pLOO")
    epochs = checkpoint_epochs(vcfg.train.epochs)
    block = vcfg.memorization.block
    tasks = [BlockTask(f"{run_id}-ploo-{start}", models, tuple(_model_seed(run_id, "ploo", m) for m in models),
                       design.membership[list(models)], test_curve=True, checkpoints=epochs)
             for start in range(0, design.n_models, block)
             for models in [tuple(range(start, min(start + block, design.n_models)))]]
    gap_seeds = max(vcfg.train.seeds, MIN_GAP_SEEDS)
    bar = progress(f"sweep {variant.name} models", design.n_models + 2 * gap_seeds, "model")
    results = _train_blocks(tasks, data, vcfg, bar)
    facts = _full_models(data, vcfg, run_id, bar)
    bar.close()
    preds = np.concatenate([results[t.key].checkpoint_pred for t in tasks], axis=1)   # (checkpoints, K, n_train)
    curves = np.concatenate([results[t.key].epoch_test_acc for t in tasks])             # (K, epochs)
    correct = preds == data.y_train[None, None, :]
    membership = design.membership
    scores = memorization_scores(correct[-1], membership)
    members = pd.DataFrame({"sweep_id": sweep_id, "variant": variant.name, "sample_id": data.train_ids,
                            "apb": np.nan, "mem": scores["mem"], "mem_low": scores["mem_low"],
                            "mem_high": scores["mem_high"],
                            "memorized": flag_memorized(scores, threshold).to_numpy()})
    rows = []
    for c, epoch in enumerate(epochs):
        count = memorized_count(correct[c], membership, threshold)
        hit = flag_memorized(memorization_scores(correct[c], membership), threshold).to_numpy()
        rows.append({"sweep_id": sweep_id, "variant": variant.name, "epoch": epoch,
                     "shadow_test_acc": float(np.nanmean(curves[:, epoch - 1])), "n_memorized": count.count,
                     "n_memorized_low": count.low, "n_memorized_high": count.high,
                     "memorized_ids": list(data.train_ids[hit])})
    final = memorized_count(correct[-1], membership, threshold)
    null = memorized_count(correct[-1], shuffled_memberships(membership, vcfg.seed), threshold)
    facts.update(n_memorized_low=final.low, n_memorized_high=final.high, n_null=null.count, n_null_high=null.high,
                 n_models=design.n_models, mem_fraction=design.fraction)
    return members, pd.DataFrame(rows), facts


def _apb_variant(store: Store, sweep_id: str, variant: Variant, vcfg: AuditConfig, run_id: str, method: str,
                 data: TrainingArrays, progress: ProgressFactory) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """ApB from the variant's audit training runs, and under `ploo_improved` mem of its ApB candidates:
    (members, run inputs, row facts)."""
    train = _train(store, vcfg, progress)
    seed_runs = train.facts["seed_runs"]
    scores = _apb(store, vcfg, seed_runs)
    candidate_ids = memorized_candidates(scores, vcfg.candidates)["sample_id"].to_numpy()
    members = pd.DataFrame({"sweep_id": sweep_id, "variant": variant.name, "sample_id": scores["sample_id"],
                            "apb": scores["apb"], "mem": np.nan, "mem_low": np.nan, "mem_high": np.nan,
                            "memorized": scores["sample_id"].isin(candidate_ids)})
    inputs = pd.DataFrame({"run_id": run_id, "input_run_id": seed_runs, "role": "seed"})
    if method == "ploo_improved":
        mem_run, mem = _ploo_improved(store, data, vcfg, candidate_ids, progress)
        hit = mem["sample_id"][flag_memorized(mem, vcfg.memorization.threshold).to_numpy()]
        for column in ("mem", "mem_low", "mem_high"):
            members[column] = members["sample_id"].map(mem.set_index("sample_id")[column])
        members["memorized"] = members["sample_id"].isin(hit)
        inputs.loc[len(inputs)] = [run_id, mem_run, "memorization"]
    facts = train.facts
    train_acc = float(np.mean(facts["train_acc"]))
    test_acc = float(np.mean(facts["test_acc"])) if facts["test_acc"] else None
    gap = (None, None, None) if test_acc is None else seed_interval(np.subtract(facts["train_acc"], facts["test_acc"]))
    return members, inputs, {"train_acc": train_acc, "test_acc": test_acc, "gap": gap[0], "gap_low": gap[1],
                             "gap_high": gap[2], "n_seeds": len(facts["train_acc"]),
                             "converged_share": float(bool(facts["converged"]))}


def _run_variant(store: Store, sweep_id: str, variant: Variant, vcfg: AuditConfig, run_id: str, method: str,
                 data: TrainingArrays, progress: ProgressFactory) -> None:
    """Train, score and decide the memorized set of one variant; commit its row, members and checkpoints in one
    transaction."""
    t0 = time.perf_counter()
    start_run(store, run_id, "sweep", vcfg, seed=vcfg.seed, device=str(resolve_device(vcfg.device)))
    checkpoints = inputs = pd.DataFrame()
    if method == "ploo":
        members, checkpoints, facts = _ploo(store, sweep_id, variant, data, vcfg, run_id, progress)
    else:
        members, inputs, facts = _apb_variant(store, sweep_id, variant, vcfg, run_id, method, data, progress)
    n_memorized = int(members["memorized"].sum())
    seconds = time.perf_counter() - t0
    row = pd.DataFrame([{"sweep_id": sweep_id, "variant": variant.name, "arch": variant.arch, "width": variant.width,
                         "epochs": variant.epochs, "n_memorized": n_memorized, "method": method, "run_id": run_id,
                         "seconds": seconds, **facts}])
    variant_rows.save_variant(store, sweep_id, variant.name, run_id, row, members, checkpoints, inputs)
    finish_run(store, run_id, converged=facts["converged_share"] >= 0.5, train_acc=facts["train_acc"],
               test_acc=facts["test_acc"], seconds=seconds,
               message=f"sweep {sweep_id} variant {variant.name}: {n_memorized} memorized ({method})")


def _copy_variant(store: Store, sweep_id: str, run_id: str) -> bool:
    """Copy a variant another sweep finished with the same identity (`run_id`) into this sweep; False when none."""
    other = variant_rows.variant_of_run(store, run_id, sweep_id)
    if not len(other) or run_status(store, run_id) != "done":
        return False
    variant_rows.copy_variant(store, other["sweep_id"].iloc[0], other["variant"].iloc[0], sweep_id)
    return True


def run_sweep(store: Store, spec: SweepSpec, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Run every variant of `spec` not yet finished in this sweep (id = hash of the variants' identities); a variant
    another sweep finished with the same identity is copied, not retrained. The `sweeps` row and a `jobs` row
    (variants done / total) show its progress."""
    t0 = time.perf_counter()
    store.init()
    data = load_training_arrays(store, cfg, progress)
    configs = {v: variant_config(cfg, v) for v in spec.variants}
    runs = {v: f"sweep-variant-{variant_identity(configs[v], data.data_hash, spec.method)}" for v in spec.variants}
    sweep_id = f"sweep-{fingerprint(spec.method, list(runs.values()))}"
    spec_json = json.dumps({"variants": [asdict(v) for v in spec.variants], "method": spec.method,
                            "profile": cfg.profile, "seed": cfg.seed, "seeds": cfg.train.seeds,
                            "data_hash": data.data_hash}, sort_keys=True)
    variant_rows.start_sweep(store, sweep_id, spec_json, now())
    stored = variant_rows.variant_runs(store, sweep_id)
    finished = {v for v, r in zip(stored["variant"], stored["run_id"]) if run_status(store, r) == "done"}
    job = Job(store, f"job-{sweep_id}", "sweep", sweep_id, len(spec.variants), "variants")
    reused = 0
    try:
        for done, variant in enumerate(spec.variants, start=1):
            if variant.name in finished or _copy_variant(store, sweep_id, runs[variant]):
                reused += 1
            else:
                _run_variant(store, sweep_id, variant, configs[variant], runs[variant], spec.method, data, progress)
            job.update(done, variant.name)
    except BaseException as exc:
        variant_rows.fail_sweep(store, sweep_id)
        job.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    variant_rows.finish_sweep(store, sweep_id, now())
    job.finish("done", f"{len(spec.variants)} variants ({reused} reused)")
    return StageReport("sweep", time.perf_counter() - t0, {"sweep_id": sweep_id, "variants": len(spec.variants),
                                                           "reused_variants": reused, "method": spec.method})


def sweep_text(store: Store, sweep_id: str) -> str:
    """The per-variant table, the memorized-set differences and the gap-memorized correlation of a stored sweep."""
    summary = sweep_summary(store, sweep_id)
    shown = summary.drop(columns=["sweep_id", "run_id"]).dropna(axis=1, how="all")
    lines = [f"sweep {sweep_id}", shown.to_string(index=False, float_format=lambda x: f"{x:.4f}")]
    if set(summary["method"]) == {"apb"}:
        lines.append("(method apb: memorized = ApB below the cut-off, a cheap proxy for late learning, not mem)")
    checkpoints = sweep_checkpoints(store, sweep_id)
    if len(checkpoints):
        lines += ["", "memorized count at checkpoints of each variant's own shadow models (95% interval)",
                  checkpoints.to_string(index=False, float_format=lambda x: f"{x:.3f}")]
    moved = sweep_transient(store, sweep_id)
    lines += ["", f"transient memorization: {len(moved)} points memorized and later not"
                  + (f" ({moved['compared'].iloc[0]})" if len(moved) else ""),
              "", "memorized sets (only_a = memorized by a and not by b)"]
    differences = sweep_set_differences(store, sweep_id)
    lines.append(differences.to_string(index=False, float_format=lambda x: f"{x:.3f}") if len(differences)
                 else "  (one variant: nothing to compare)")
    corr = sweep_correlation(store, sweep_id)
    lines.append("")
    interval = "" if corr.low is None else f", bootstrap 95% interval {corr.low:.3f} to {corr.high:.3f}"
    lines.append(f"train-test gap vs memorized count: Pearson r = {corr.r:.3f} (p = {corr.p:.3g}, n = {corr.n}"
                 f"{interval})" if corr.r is not None
                 else f"train-test gap vs memorized count: not computed ({corr.reason})")
    return "\n".join(lines)
