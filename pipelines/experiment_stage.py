"""Marginal-utility experiments: retrain the audit recipe without each arm's points and measure what it costs.

The experiment's identity hashes its resolved arms, model count, seed, the training recipe and the data, so re-running
the same spec finds it. Its design (arms and their removed ids) is stored first; models are then trained in blocks
(memorization.block models of one arm at a time, arms interleaved) and each block is committed in one short
transaction, so a killed experiment re-run with the same spec trains only the missing models, with the same seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.config import AuditConfig
from auditor.dynamics_scores import dynamics_scores
from auditor.executor import BlockTask, make_executor
from auditor.experiment_queries import experiment_results
from auditor.experiments import (
    FULL, Arm, arm_from_ids, control_name, format_results, influenced_test_points, leakage_bucket, leaked_test_points,
    memorized_remainder, model_converged, random_control, subpopulation_bucket, subset_accuracy)
from auditor.flags import memorized_candidates
from auditor.provenance import fingerprint
from auditor.store import Store
from auditor.training import train_model
from pipelines.arrays import TrainingArrays, load_training_arrays, training_fingerprint
from pipelines.jobs import Job
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import finish_run, now, start_run
from pipelines.stage_names import BUCKETS, DEFAULT_ARMS, NAMED_ARMS, parse_arms  # noqa: F401 (re-exported)
from pipelines.stages import StageReport, dynamics_frame


@dataclass(frozen=True)
class ExperimentSpec:
    """What to compare: arms (see NAMED_ARMS, `flag:<kind>`, `ids:<file>`), models per arm, the seed of the models
    and controls, the cluster size up to which a memorized point counts as a sub-population, and whether to re-audit."""

    arms: tuple[str, ...] = DEFAULT_ARMS
    models: int = 20
    seed: int = 0
    small_cluster_size: int = 3
    reaudit: bool = False


def paper_buckets(store: Store, small_cluster_size: int) -> dict[str, np.ndarray]:
    """The memorized points and the paper's three buckets of them, from flags, pairs, influence and clusters."""
    memorized = store.query("SELECT DISTINCT sample_id FROM flags WHERE kind = 'memorized'")["sample_id"].to_numpy()
    leakage = leakage_bucket(memorized, store.query("SELECT a_id, b_id, kind FROM pairs"))
    subpop = subpopulation_bucket(memorized, store.query("SELECT train_id, test_id, score FROM influence"),
                                  store.query("SELECT sample_id, cluster_size FROM clusters"), small_cluster_size)
    return {"memorized": memorized, "leakage": leakage, "subpopulation": subpop,
            "memorized_remainder": memorized_remainder(memorized, leakage, subpop)}


_BUCKET_SOURCES = {"memorized": "flag memorized",
                   "leakage": "memorized with a copy in the test set (leak pairs)",
                   "subpopulation": "memorized sharing influenced test points, or in a cluster of <= {size}",
                   "memorized_remainder": "memorized minus leakage and subpopulation"}


def _ids_file(path: str, train_ids: np.ndarray, all_ids: set[str]) -> list[str]:
    """Sample ids listed one per line in `path` ('#' comments and blank lines ignored); all must be training ids."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ids file {path} does not exist; list one training sample id per line")
    ids = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    ids = [i for i in ids if i]
    unknown = [i for i in ids if i not in all_ids]
    if unknown:
        raise ValueError(f"{path} names unknown sample id(s): {', '.join(unknown[:5])}")
    test = sorted(set(ids) - set(train_ids))
    if test:
        raise ValueError(f"{path} names test samples ({', '.join(test[:5])}); only training points can be removed")
    return ids


def resolve_arms(store: Store, spec: ExperimentSpec, data: TrainingArrays) -> list[Arm]:
    """The full-data arm, each requested arm (training ids only) and, for each non-empty one, its class-matched
    random control (seeded by spec.seed and the arm's name)."""
    buckets = paper_buckets(store, spec.small_cluster_size)
    train = set(data.train_ids)
    arms = [arm_from_ids(FULL, [], "all training points")]
    for name in spec.arms:
        kind, _, arg = name.partition(":")
        if kind == "ids":
            name = f"ids:{Path(arg).stem}"  # the file's name, not its path: the arm (and its seeds) move with it
        if name in BUCKETS:
            ids, source = buckets[name], _BUCKET_SOURCES[name].format(size=spec.small_cluster_size)
        elif name == "decisions":
            ids = store.query("SELECT sample_id FROM current_reviews WHERE action = 'remove'")["sample_id"]
            source = "review decisions 'remove'"
        elif kind == "flag":
            ids, source = store.query("SELECT sample_id FROM flags WHERE kind = ?", [arg])["sample_id"], f"flag {arg}"
        else:
            all_ids = set(store.query("SELECT sample_id FROM samples")["sample_id"])
            ids, source = _ids_file(arg, data.train_ids, all_ids), f"ids from {arg}"
        if any(a.name == name for a in arms):
            raise ValueError(f"two arms are named {name!r}; give the ids files different names")
        arm = arm_from_ids(name, [i for i in ids if i in train], source)
        arms.append(arm)
        if arm.ids:
            rng = np.random.default_rng(int(fingerprint(spec.seed, name), 16))
            control = random_control(list(arm.ids), data.train_ids, data.y_train, rng)
            arms.append(arm_from_ids(control_name(name), control, f"random, class-matched to {name}", name))
    if not any(a.ids for a in arms):
        raise ValueError(f"every requested arm is empty ({', '.join(spec.arms)}): nothing to remove; run the "
                         "memorization and detectors stages first, or choose other arms")
    return arms


def experiment_id_for(spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays, cfg: AuditConfig) -> str:
    """Identity of an experiment's models: resolved arms, models, seed, recipe, convergence rule and data."""
    return "exp-" + fingerprint(training_fingerprint(cfg, data.data_hash), [(a.name, a.ids) for a in arms],
                                spec.models, spec.seed, asdict(cfg.convergence))


def _model_seed(seed: int, arm: str, index: int) -> int:
    """Seed of one model: fixed by the spec's seed, the arm and the index (arms get independent seeds)."""
    return int(fingerprint(seed, arm, index), 16) % (2 ** 31)


def _test_sets(store: Store, arms: list[Arm]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per arm, the (influenced, leaked) test points of its removed ids; a control is measured on its arm's sets."""
    influence = store.query("SELECT train_id, test_id, score FROM influence")
    pairs = store.query("SELECT a_id, b_id, kind FROM pairs")
    own = {a.name: (influenced_test_points(a.ids, influence), leaked_test_points(a.ids, pairs)) for a in arms}
    return {a.name: own[a.control_of or a.name] for a in arms}


def _save_design(store: Store, experiment_id: str, spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays,
                 cfg: AuditConfig, run_id: str, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Record the experiment and its arms once (a re-run only marks it running again)."""
    if store.scalar("SELECT count(*) FROM experiments WHERE experiment_id = ?", [experiment_id]):
        store.execute("UPDATE experiments SET status = 'running', finished_at = NULL WHERE experiment_id = ?",
                      [experiment_id])
        return
    spec_json = json.dumps({"arms": list(spec.arms), "models": spec.models, "seed": spec.seed,
                            "small_cluster_size": spec.small_cluster_size, "data_hash": data.data_hash,
                            "train": asdict(cfg.train), "convergence": asdict(cfg.convergence)}, sort_keys=True)
    head = pd.DataFrame([{"experiment_id": experiment_id, "spec_json": spec_json, "status": "running",
                          "created_at": now(), "finished_at": None, "run_id": run_id,
                          "test_ids": list(data.test_ids)}])
    rows = pd.DataFrame([{"experiment_id": experiment_id, "position": i, "arm": a.name, "source": a.source,
                          "control_of": a.control_of, "n_removed": len(a.ids), "removed_ids": list(a.ids),
                          "subpop_test_ids": list(sets[a.name][0]), "leaked_test_ids": list(sets[a.name][1])}
                         for i, a in enumerate(arms)])
    store.write([("experiments", head), ("experiment_arms", rows)])


def _model_rows(experiment_id: str, arm: Arm, models: list[int], seeds: list[int], result, data: TrainingArrays,
                sets: tuple[np.ndarray, np.ndarray], cfg: AuditConfig) -> pd.DataFrame:
    """One experiment_models row per trained model: overall, influenced, leaked and remaining test accuracy."""
    correct = result.test_pred == data.y_test[None, :]
    rest = np.setdiff1d(data.test_ids, np.union1d(*sets))
    cc = cfg.convergence
    return pd.DataFrame({
        "experiment_id": experiment_id, "arm": arm.name, "model_index": models, "seed": seeds,
        "test_acc": result.test_acc, "subpop_acc": subset_accuracy(correct, data.test_ids, sets[0]),
        "leaked_acc": subset_accuracy(correct, data.test_ids, sets[1]),
        "rest_acc": subset_accuracy(correct, data.test_ids, rest), "epochs_run": result.epochs_run,
        "converged": [model_converged(c, cc.window, cc.tolerance) for c in result.epoch_test_acc],
        "test_curve": list(result.epoch_test_acc), "test_correct": list(correct),
        "seconds": result.seconds / len(models), "finished_at": now()})


def train_arms(store: Store, experiment_id: str, spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays,
               cfg: AuditConfig, run_id: str, sets: dict[str, tuple[np.ndarray, np.ndarray]],
               progress: ProgressFactory = silent) -> tuple[int, int]:
    """Train every model not yet committed (arms with nothing removed, but the full arm, are skipped); returns
    (trained now, reused)."""
    trainable = [a for a in arms if a.ids or a.name == FULL]
    done = set(store.query("SELECT arm, model_index FROM experiment_models WHERE experiment_id = ?",
                           [experiment_id]).itertuples(index=False, name=None))
    total = len(trainable) * spec.models
    job = Job(store, f"job-{run_id}", "experiment", run_id, total, "models")
    bar = progress("experiment models", total, "model")
    bar.update(len(done))
    job.update(len(done))
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    arm_of, block, tasks = {}, cfg.memorization.block, []
    for start in range(0, spec.models, block):
        for arm in trainable:
            models = tuple(m for m in range(start, min(start + block, spec.models)) if (arm.name, m) not in done)
            if not models:
                continue
            membership = np.ones((len(models), len(data.train_ids)), bool)
            membership[:, position[list(arm.ids)].to_numpy()] = False
            seeds = tuple(_model_seed(spec.seed, arm.name, m) for m in models)
            tasks.append(BlockTask(f"{experiment_id}-{arm.name}-m{models[0]:05d}", models, seeds, membership,
                                   test_curve=True))
            arm_of[tasks[-1].key] = arm
    trained = 0
    for task, result in make_executor(cfg.executor).run(data.shadow_data(), tasks, cfg):
        arm, models = arm_of[task.key], list(task.models)
        marks = ", ".join("?" * len(models))
        store.write([("experiment_models", _model_rows(experiment_id, arm, models, list(task.seeds), result, data,
                                                       sets[arm.name], cfg))],
                    deletes=[("DELETE FROM experiment_models WHERE experiment_id = ? AND arm = ? AND model_index "
                              f"IN ({marks})", [experiment_id, arm.name, *models])])
        done.update((arm.name, m) for m in models)
        trained += len(models)
        bar.update(len(models))
        job.update(len(done))
    bar.close()
    job.finish()
    return trained, total - trained


def _reaudit_log(data: TrainingArrays, keep: np.ndarray, cfg: AuditConfig, run_prefix: str) -> pd.DataFrame:
    """The dynamics log of cfg.train.seeds audit models trained on the training points `keep`."""
    ids, logs = data.train_ids[keep], []
    for s in range(cfg.train.seeds):
        run = f"{run_prefix}-s{cfg.seed + s}"
        train_model(data.x_train[keep], data.y_train[keep], None, None, len(data.labels), cfg, cfg.seed + s,
                    on_epoch=lambda log, run=run: logs.append(dynamics_frame(run, ids, log.records)))
    return pd.concat(logs, ignore_index=True)


def reaudit(store: Store, experiment_id: str, arms: list[Arm], data: TrainingArrays, cfg: AuditConfig,
            progress: ProgressFactory = silent) -> int:
    """Re-run ApB (cfg.train.seeds audit models with dynamics) on each arm's reduced training set and store its
    memorized candidates, marking those not flagged before; arms already re-audited are skipped. Returns arms done."""
    before = set(store.query("SELECT sample_id FROM flags WHERE kind = 'memorized_candidate'")["sample_id"])
    stored = set(store.query("SELECT DISTINCT arm FROM experiment_reaudit WHERE experiment_id = ?",
                             [experiment_id])["arm"])
    todo = [a for a in arms if a.ids and a.name not in stored]
    bar = progress("re-audit", len(todo), "arm")
    phase = "batch" if "batch" in cfg.dynamics.record else "epoch_end"
    for arm in todo:
        log = _reaudit_log(data, ~np.isin(data.train_ids, arm.ids), cfg, f"{experiment_id}-{arm.name}")
        candidates = memorized_candidates(dynamics_scores(log[log["phase"] == phase], cfg.dynamics.el2n_epoch),
                                          cfg.candidates)
        rows = pd.DataFrame({"experiment_id": experiment_id, "arm": arm.name, "sample_id": candidates["sample_id"],
                             "apb": 1.0 - candidates["score"], "newly_flagged": ~candidates["sample_id"].isin(before)})
        store.write([("experiment_reaudit", rows)], deletes=[
            ("DELETE FROM experiment_reaudit WHERE experiment_id = ? AND arm = ?", [experiment_id, arm.name])])
        bar.update(1)
    bar.close()
    return len(todo)


def run_experiment(store: Store, spec: ExperimentSpec, cfg: AuditConfig,
                   progress: ProgressFactory = silent) -> StageReport:
    """Resolve the arms, record the design, train the missing models (and re-audit when asked); the report's facts
    hold the experiment id and what was trained or reused."""
    t0 = time.perf_counter()
    if spec.models < 2:
        raise ValueError(f"--models {spec.models}: an arm needs at least 2 models for a standard deviation")
    store.init()
    data = load_training_arrays(store, cfg, progress)
    arms = resolve_arms(store, spec, data)
    experiment_id = experiment_id_for(spec, arms, data, cfg)
    run_id = experiment_id
    start_run(store, run_id, "experiment", cfg, seed=spec.seed)
    sets = _test_sets(store, arms)
    _save_design(store, experiment_id, spec, arms, data, cfg, run_id, sets)
    try:
        trained, reused = train_arms(store, experiment_id, spec, arms, data, cfg, run_id, sets, progress)
        reaudited = reaudit(store, experiment_id, arms, data, cfg, progress) if spec.reaudit else 0
    except BaseException:
        store.execute("UPDATE experiments SET status = 'failed' WHERE experiment_id = ?", [experiment_id])
        finish_run(store, run_id, status="failed", seconds=time.perf_counter() - t0)
        raise
    seconds = time.perf_counter() - t0
    store.execute("UPDATE experiments SET status = 'done', finished_at = ? WHERE experiment_id = ?",
                  [now(), experiment_id])
    full_acc = store.scalar("SELECT avg(test_acc) FROM experiment_models WHERE experiment_id = ? AND arm = ?",
                            [experiment_id, FULL])
    finish_run(store, run_id, seconds=seconds, test_acc=full_acc,
               message=f"{len(arms)} arms x {spec.models} models ({trained} trained, {reused} reused)")
    return StageReport("experiment", seconds, {"experiment_id": experiment_id, "arms": len(arms),
                                               "trained": trained, "reused": reused, "reaudited_arms": reaudited})


def experiment_text(store: Store, experiment_id: str) -> str:
    """The `memaudit experiment` report: the experiment's id and status, then its results table."""
    table = experiment_results(store, experiment_id)
    status = store.scalar("SELECT status FROM experiments WHERE experiment_id = ?", [experiment_id])
    lines = [f"experiment {experiment_id} ({status}); drop = full-data accuracy minus the arm's, positive = worse",
             format_results(table)]
    if table["newly_flagged"].notna().any():
        lines.append("re-audit, newly flagged memorized candidates: " + ", ".join(
            f"{r.arm} {int(r.newly_flagged)}" for r in table.itertuples() if pd.notna(r.newly_flagged)))
    return "\n".join(lines)
