"""The natural-memorization sweep: the audit recipe trained and scored once per variant (architecture x width x
epochs) on the same data, each variant's memorized set kept in `sweep_members` and its accuracies in `sweep_variants`.

A sweep never writes the main audit's `scores` or `flags`. Each variant is committed in one short transaction when it
is finished; a re-run of the same sweep skips finished variants, and the seed models and shadow models underneath are
reused by the training and memorization stages themselves (identified by config and data hash).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from auditor.config import AuditConfig, config_from_dict
from auditor.dynamics_scores import dynamics_scores
from auditor.flags import memorized_candidates
from auditor.memorization import flag_memorized, memorization_scores
from auditor.provenance import fingerprint
from auditor.sharding import default_shard_count, ploo_improved_design
from auditor.store import Store
from auditor.sweep import SweepSpec, Variant
from auditor.sweep_queries import sweep_correlation, sweep_set_differences, sweep_summary
from auditor.training import resolve_device
from pipelines.arrays import TrainingArrays, load_training_arrays, training_fingerprint
from pipelines.jobs import Job
from pipelines.memorization_stage import run_design
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
    if method == "ploo_improved":
        rule["memorization"] = asdict(vcfg.memorization)
    return fingerprint(training_fingerprint(vcfg, data_hash), vcfg.train.seeds, method, rule)


def _train(store: Store, vcfg: AuditConfig, progress: ProgressFactory) -> StageReport:
    """`train_stage` for one variant. An audit's finished ApB run that the variant shares keeps its record; an ApB
    run the sweep started is closed here (its scores go to `sweep_members`, never to `scores`)."""
    audits = store.query("SELECT * FROM runs WHERE kind = 'apb' AND status = 'done'")
    report = train_stage(store, vcfg, progress)
    facts, parent = report.facts, report.facts["parent_run_id"]
    kept = audits[audits["run_id"] == parent]
    if len(kept):
        store.write([("runs", kept)], deletes=[("DELETE FROM runs WHERE run_id = ?", [parent])])
    else:
        finish_run(store, parent, converged=facts["converged"], train_acc=float(np.mean(facts["train_acc"])),
                   test_acc=float(np.mean(facts["test_acc"])) if facts["test_acc"] else None,
                   seconds=report.seconds, message="trained by a sweep; its ApB is in sweep_members")
    return report


def _apb(store: Store, vcfg: AuditConfig, seed_runs: list[str]) -> pd.DataFrame:
    """ApB (and the other dynamics scores) of every training point from the variant's seed runs."""
    phase = "batch" if "batch" in vcfg.dynamics.record else "epoch_end"
    log = store.query("SELECT run_id, sample_id, step, epoch, correct, p_label, el2n FROM dynamics WHERE phase = ? "
                      f"AND run_id IN ({', '.join('?' * len(seed_runs))})", [phase, *seed_runs])
    return dynamics_scores(log, vcfg.dynamics.el2n_epoch)


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


def _run_variant(store: Store, sweep_id: str, variant: Variant, vcfg: AuditConfig, run_id: str, method: str,
                 data: TrainingArrays, progress: ProgressFactory) -> None:
    """Train, score and decide the memorized set of one variant; commit its row and members in one transaction."""
    t0 = time.perf_counter()
    start_run(store, run_id, "sweep", vcfg, seed=vcfg.seed, device=str(resolve_device(vcfg.device)))
    train = _train(store, vcfg, progress)
    seed_runs = train.facts["seed_runs"]
    scores = _apb(store, vcfg, seed_runs)
    candidate_ids = memorized_candidates(scores, vcfg.candidates)["sample_id"].to_numpy()
    members = pd.DataFrame({"sweep_id": sweep_id, "variant": variant.name, "sample_id": scores["sample_id"],
                            "apb": scores["apb"], "mem": np.nan,
                            "memorized": scores["sample_id"].isin(candidate_ids)})
    inputs = pd.DataFrame({"run_id": run_id, "input_run_id": seed_runs, "role": "seed"})
    if method == "ploo_improved":
        mem_run, mem = _ploo_improved(store, data, vcfg, candidate_ids, progress)
        hit = mem["sample_id"][flag_memorized(mem, vcfg.memorization.threshold).to_numpy()]
        members["mem"] = members["sample_id"].map(mem.set_index("sample_id")["mem"])
        members["memorized"] = members["sample_id"].isin(hit)
        inputs.loc[len(inputs)] = [run_id, mem_run, "memorization"]
    facts = train.facts
    train_acc = float(np.mean(facts["train_acc"]))
    test_acc = float(np.mean(facts["test_acc"])) if facts["test_acc"] else None
    n_memorized = int(members["memorized"].sum())
    seconds = time.perf_counter() - t0
    row = pd.DataFrame([{"sweep_id": sweep_id, "variant": variant.name, "arch": variant.arch, "width": variant.width,
                         "epochs": variant.epochs, "train_acc": train_acc, "test_acc": test_acc,
                         "gap": None if test_acc is None else train_acc - test_acc, "n_memorized": n_memorized,
                         "method": method, "run_id": run_id, "seconds": seconds}])
    key = [sweep_id, variant.name]
    store.write([("sweep_variants", row), ("sweep_members", members), ("run_inputs", inputs)],
                deletes=[("DELETE FROM sweep_variants WHERE sweep_id = ? AND variant = ?", key),
                         ("DELETE FROM sweep_members WHERE sweep_id = ? AND variant = ?", key),
                         ("DELETE FROM run_inputs WHERE run_id = ?", [run_id])])
    finish_run(store, run_id, converged=facts["converged"], train_acc=train_acc, test_acc=test_acc, seconds=seconds,
               message=f"sweep {sweep_id} variant {variant.name}: {n_memorized} memorized ({method})")


def run_sweep(store: Store, spec: SweepSpec, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Run every variant of `spec` not yet finished in this sweep (id = hash of the variants' identities); the
    `sweeps` row and a `jobs` row (variants done / total) show its progress."""
    t0 = time.perf_counter()
    store.init()
    data = load_training_arrays(store, cfg, progress)
    configs = {v: variant_config(cfg, v) for v in spec.variants}
    runs = {v: f"sweep-variant-{variant_identity(configs[v], data.data_hash, spec.method)}" for v in spec.variants}
    sweep_id = f"sweep-{fingerprint(spec.method, list(runs.values()))}"
    spec_json = json.dumps({"variants": [asdict(v) for v in spec.variants], "method": spec.method,
                            "profile": cfg.profile, "seed": cfg.seed, "seeds": cfg.train.seeds,
                            "data_hash": data.data_hash}, sort_keys=True)
    store.execute("INSERT INTO sweeps VALUES (?, ?, 'running', ?, NULL) ON CONFLICT (sweep_id) "
                  "DO UPDATE SET status = 'running', finished_at = NULL", [sweep_id, spec_json, now()])
    stored = store.query("SELECT variant, run_id FROM sweep_variants WHERE sweep_id = ?", [sweep_id])
    finished = {v for v, r in zip(stored["variant"], stored["run_id"]) if run_status(store, r) == "done"}
    job = Job(store, f"job-{sweep_id}", "sweep", sweep_id, len(spec.variants), "variants")
    reused = 0
    try:
        for done, variant in enumerate(spec.variants, start=1):
            if variant.name in finished:
                reused += 1
            else:
                _run_variant(store, sweep_id, variant, configs[variant], runs[variant], spec.method, data, progress)
            job.update(done, variant.name)
    except BaseException as exc:
        store.execute("UPDATE sweeps SET status = 'failed' WHERE sweep_id = ?", [sweep_id])
        job.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    store.execute("UPDATE sweeps SET status = 'done', finished_at = ? WHERE sweep_id = ?", [now(), sweep_id])
    job.finish("done", f"{len(spec.variants)} variants ({reused} reused)")
    return StageReport("sweep", time.perf_counter() - t0, {"sweep_id": sweep_id, "variants": len(spec.variants),
                                                           "reused_variants": reused, "method": spec.method})


def sweep_text(store: Store, sweep_id: str) -> str:
    """The per-variant table, the memorized-set differences and the gap-memorized correlation of a stored sweep."""
    summary = sweep_summary(store, sweep_id)
    shown = summary.drop(columns=["sweep_id", "run_id"])
    lines = [f"sweep {sweep_id}", shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"), "",
             "memorized sets (only_a = memorized by a and not by b)"]
    differences = sweep_set_differences(store, sweep_id)
    lines.append(differences.to_string(index=False, float_format=lambda x: f"{x:.3f}") if len(differences)
                 else "  (one variant: nothing to compare)")
    corr = sweep_correlation(store, sweep_id)
    lines.append("")
    lines.append(f"train-test gap vs memorized count: Pearson r = {corr.r:.3f} (p = {corr.p:.3g}, n = {corr.n})"
                 if corr.r is not None else f"train-test gap vs memorized count: not computed ({corr.reason})")
    return "\n".join(lines)
