"""Marginal-utility experiments: retrain the audit recipe without each arm's points and measure what it costs.

Every model of every arm trains the same number of SGD steps as a full-data model (a reduced training set wraps
around within each epoch), so an arm differs from the full data only in its points. Every model of a random control
removes its own class-matched draw. The full arm is also trained on a 2x longer schedule: if that gains test
accuracy, the recipe was not trained to its maximum and every drop is suspect (stored in `experiments.trained_to_max`).

The experiment's identity hashes its resolved arms, model count, seed, the training recipe and the data, so re-running
the same spec finds it. Its design (arms and their removed ids) is stored first; models are then trained in blocks
(memorization.block models of one arm at a time, arms interleaved) and each block is committed in one short
transaction, so a killed experiment re-run with the same spec trains only the missing models, with the same seeds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.experiments import experiment_rows
from auditor.config import AuditConfig
from auditor.training.dynamics_scores import dynamics_scores
from auditor.memorization.executor import BlockTask, make_executor
from auditor.detectors.detector_rows import cluster_sizes, pair_ids
from auditor.experiments.experiment_queries import (
    experiment_results, experiment_status, mean_accuracy, schedule_check_row, schedule_line)
from auditor.experiments.marginal_utility import (
    FULL, FULL_LONGER, SCHEDULE_FACTOR, Arm, arm_from_ids, control_name, format_results, influenced_test_points,
    leakage_bucket, leaked_test_points, memorized_remainder, memorized_share, model_control, model_converged,
    schedule_check, subpopulation_bucket, subset_accuracy)
from auditor.detectors.flags import memorized_candidates
from auditor.memorization.influence_rows import influence
from auditor.memorization.memorization_queries import estimate
from auditor.store.provenance import fingerprint
from auditor.review.reviews import removed_ids
from auditor.data.sample_rows import sample_ids
from auditor.training.score_rows import audit_memorized, flagged_ids
from auditor.store.database import Store
from auditor.training.trainer import train_model
from pipelines.arrays import TrainingArrays, TrainLabels, load_training_arrays, train_labels, training_fingerprint
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


# How the design trains: bumped when a change makes earlier experiments' models incomparable (part of the id).
DESIGN = "per-model controls, equal SGD steps, 2x schedule check"


def paper_buckets(store: Store, small_cluster_size: int) -> dict[str, np.ndarray]:
    """The audit's memorized set (scores.mem_state) and the paper's three buckets of it, from pairs, influence and
    clusters."""
    memorized = audit_memorized(store)
    leakage = leakage_bucket(memorized, pair_ids(store))
    subpop = subpopulation_bucket(memorized, influence(store), cluster_sizes(store), small_cluster_size)
    return {"memorized": memorized, "leakage": leakage, "subpopulation": subpop,
            "memorized_remainder": memorized_remainder(memorized, leakage, subpop)}


_BUCKET_SOURCES = {"memorized": "the audit's memorized set (scores.mem_state = 'memorized')",
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


def resolve_arms(store: Store, spec: ExperimentSpec, data: TrainingArrays | TrainLabels) -> list[Arm]:
    """The full-data arm, its longer-schedule twin, each requested arm (training ids only) and, for each non-empty
    one, its class-matched random control (drawn per model, see `model_control`)."""
    buckets = paper_buckets(store, spec.small_cluster_size)
    train = set(data.train_ids)
    arms = [arm_from_ids(FULL, [], "all training points"),
            arm_from_ids(FULL_LONGER, [], f"all training points, {SCHEDULE_FACTOR}x the epochs (convergence check)",
                         schedule=SCHEDULE_FACTOR)]
    for name in spec.arms:
        kind, _, arg = name.partition(":")
        if kind == "ids":
            name = f"ids:{Path(arg).stem}"  # the file's name, not its path: the arm (and its seeds) move with it
        if name in BUCKETS:
            ids, source = buckets[name], _BUCKET_SOURCES[name].format(size=spec.small_cluster_size)
        elif name == "decisions":
            ids = removed_ids(store)
            source = "review decisions 'remove'"
        elif kind == "flag":
            ids, source = flagged_ids(store, arg), f"flag {arg}"
        else:
            all_ids = set(sample_ids(store))
            ids, source = _ids_file(arg, data.train_ids, all_ids), f"ids from {arg}"
        if any(a.name == name for a in arms):
            raise ValueError(f"two arms are named {name!r}; give the ids files different names")
        arm = arm_from_ids(name, [i for i in ids if i in train], source)
        arms.append(arm)
        if arm.ids:
            model_control(arm.ids, data.train_ids, data.y_train, spec.seed, name, 0)  # fails early if impossible
            arms.append(arm_from_ids(control_name(name), [], f"random, class-matched to {name}, drawn per model",
                                     name))
    if not any(a.ids for a in arms):
        raise ValueError(f"every requested arm is empty ({', '.join(spec.arms)}): nothing to remove; run the "
                         "memorization and detectors stages first, or choose other arms")
    return arms


def experiment_id_for(spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays, cfg: AuditConfig) -> str:
    """Identity of an experiment's models: resolved arms, models, seed, recipe, convergence rule and data."""
    return "exp-" + fingerprint(training_fingerprint(cfg, data.data_hash),
                                [(a.name, a.ids, a.control_of, a.schedule) for a in arms], spec.models, spec.seed,
                                asdict(cfg.convergence), DESIGN)


def _model_seed(seed: int, arm: str, index: int) -> int:
    """Seed of one model: fixed by the spec's seed, the arm and the index (arms get independent seeds)."""
    return int(fingerprint(seed, arm, index), 16) % (2 ** 31)


def _test_sets(store: Store, arms: list[Arm]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per arm, the (influenced, leaked) test points of its removed ids; a control is measured on its arm's sets."""
    scores, pairs = influence(store), pair_ids(store)
    own = {a.name: (influenced_test_points(a.ids, scores), leaked_test_points(a.ids, pairs)) for a in arms}
    return {a.name: own[a.control_of or a.name] for a in arms}


def _removed(arm: Arm, arms: dict[str, Arm], data: TrainingArrays, seed: int, index: int) -> np.ndarray:
    """The training ids model `index` of `arm` trains without: the arm's own, or for a control its own fresh draw."""
    if arm.control_of is None:
        return np.asarray(arm.ids, dtype=str)
    return model_control(arms[arm.control_of].ids, data.train_ids, data.y_train, seed, arm.control_of, index)


def _arm_cfg(cfg: AuditConfig, arm: Arm) -> AuditConfig:
    """The recipe of one arm: the audit's, with `arm.schedule` times the epochs."""
    return replace(cfg, train=replace(cfg.train, epochs=cfg.train.epochs * arm.schedule))


def sgd_steps(cfg: AuditConfig, n_train: int, epochs: int) -> int:
    """SGD steps of a model trained `epochs` epochs of `n_train` points each (every arm draws the full set's
    count per epoch, see train_arms)."""
    return epochs * math.ceil(n_train / cfg.train.batch_size)


def _memorized_columns(store: Store, arms: list[Arm]) -> tuple[dict, list[dict]]:
    """The estimate of the memorized total (memorization_estimates) and, per arm, how many of the audit's memorized
    points it removes and what share of the estimated total that is (a control's varies per model: NULL)."""
    row = estimate(store) or {}
    est = {k: row.get(v) for k, v in (("est_memorized", "est_total"), ("est_memorized_low", "est_low"),
                                       ("est_memorized_high", "est_high"))}
    memorized = set(audit_memorized(store))
    per_arm = []
    for a in arms:
        if a.control_of is not None:
            per_arm.append({"n_memorized_removed": None, "mem_share": None, "mem_share_low": None,
                            "mem_share_high": None})
            continue
        n = len(memorized.intersection(a.ids))
        share = memorized_share(n, est["est_memorized"], est["est_memorized_low"], est["est_memorized_high"])
        per_arm.append({"n_memorized_removed": n, **dict(zip(("mem_share", "mem_share_low", "mem_share_high"),
                                                             share))})
    return est, per_arm


def _save_design(store: Store, experiment_id: str, spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays,
                 cfg: AuditConfig, run_id: str, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Record the experiment and its arms once (a re-run only marks it running again)."""
    if experiment_rows.reopen(store, experiment_id):
        return
    spec_json = json.dumps({"arms": list(spec.arms), "models": spec.models, "seed": spec.seed,
                            "small_cluster_size": spec.small_cluster_size, "data_hash": data.data_hash,
                            "train": asdict(cfg.train), "convergence": asdict(cfg.convergence), "design": DESIGN},
                           sort_keys=True)
    est, per_arm = _memorized_columns(store, arms)
    head = pd.DataFrame([{"experiment_id": experiment_id, "spec_json": spec_json, "status": "running",
                          "created_at": now(), "finished_at": None, "run_id": run_id,
                          "test_ids": list(data.test_ids), **est}])
    by_name = {a.name: a for a in arms}
    rows = pd.DataFrame([{"experiment_id": experiment_id, "position": i, "arm": a.name, "source": a.source,
                          "control_of": a.control_of, "n_removed": len(by_name[a.control_of or a.name].ids),
                          "removed_ids": list(a.ids), "subpop_test_ids": list(sets[a.name][0]),
                          "leaked_test_ids": list(sets[a.name][1]), "epochs": cfg.train.epochs * a.schedule,
                          "per_model_control": a.control_of is not None, **mem}
                         for i, (a, mem) in enumerate(zip(arms, per_arm))])
    store.write([("experiments", head), ("experiment_arms", rows)])


def _model_rows(experiment_id: str, arm: Arm, task: BlockTask, result, data: TrainingArrays,
                sets: tuple[np.ndarray, np.ndarray], cfg: AuditConfig, removed: list[np.ndarray]) -> pd.DataFrame:
    """One experiment_models row per trained model: overall, influenced, leaked and remaining test accuracy, SGD
    steps and, for a control's model, the ids it removed."""
    correct = result.test_pred == data.y_test[None, :]
    rest = np.setdiff1d(data.test_ids, np.union1d(*sets))
    cc = cfg.convergence
    models = list(task.models)
    return pd.DataFrame({
        "experiment_id": experiment_id, "arm": arm.name, "model_index": models, "seed": list(task.seeds),
        "test_acc": result.test_acc, "subpop_acc": subset_accuracy(correct, data.test_ids, sets[0]),
        "leaked_acc": subset_accuracy(correct, data.test_ids, sets[1]),
        "rest_acc": subset_accuracy(correct, data.test_ids, rest), "epochs_run": result.epochs_run,
        "converged": [model_converged(c, cc.window, cc.tolerance) for c in result.epoch_test_acc],
        "test_curve": list(result.epoch_test_acc), "test_correct": list(correct),
        "sgd_steps": [sgd_steps(cfg, max(task.epoch_points, len(data.train_ids)), int(e)) for e in result.epochs_run],
        "removed_ids": [list(r) if arm.control_of else None for r in removed],
        "seconds": result.seconds / len(models), "finished_at": now()})


def trainable_arms(arms: list[Arm]) -> list[Arm]:
    """The arms that train models: the full arms, the controls and every arm that removes something."""
    return [a for a in arms if a.ids or a.schedule != 1 or a.name == FULL or a.control_of is not None]


def planned_arms(store: Store, spec: ExperimentSpec) -> list[Arm]:
    """The arms `run_experiment` would train `spec.models` models each for on `store` now, resolved without decoding
    an image; ValueError or FileNotFoundError as `resolve_arms` raises them."""
    return trainable_arms(resolve_arms(store, spec, train_labels(store)))


def train_arms(store: Store, experiment_id: str, spec: ExperimentSpec, arms: list[Arm], data: TrainingArrays,
               cfg: AuditConfig, run_id: str, sets: dict[str, tuple[np.ndarray, np.ndarray]],
               progress: ProgressFactory = silent) -> tuple[int, int]:
    """Train every model not yet committed (arms with nothing removed, but the full arms and controls, are skipped);
    every model draws the full training set's count of points per epoch, so all arms train the same SGD steps as
    the full arm on their schedule. Returns (trained now, reused)."""
    by_name = {a.name: a for a in arms}
    trainable = trainable_arms(arms)
    done = experiment_rows.trained_models(store, experiment_id)
    total = len(trainable) * spec.models
    job = Job(store, f"job-{run_id}", "experiment", run_id, total, "models")
    bar = progress("experiment models", total, "model")
    bar.update(len(done))
    job.update(len(done))
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    arm_of, block, tasks = {}, cfg.memorization.block, {}
    for start in range(0, spec.models, block):
        for arm in trainable:
            models = tuple(m for m in range(start, min(start + block, spec.models)) if (arm.name, m) not in done)
            if not models:
                continue
            removed = [_removed(arm, by_name, data, spec.seed, m) for m in models]
            membership = np.ones((len(models), len(data.train_ids)), bool)
            for row, ids in enumerate(removed):
                membership[row, position[list(ids)].to_numpy()] = False
            seeds = tuple(_model_seed(spec.seed, arm.name, m) for m in models)
            task = BlockTask(f"{experiment_id}-{arm.name}-m{models[0]:05d}", models, seeds, membership,
                             test_curve=True, epoch_points=len(data.train_ids))
            tasks.setdefault(arm.schedule, []).append(task)
            arm_of[task.key] = arm, removed
    trained = 0
    for group in tasks.values():
        arm_cfg = _arm_cfg(cfg, arm_of[group[0].key][0])
        for task, result in make_executor(cfg.executor).run(data.shadow_data(), group, arm_cfg):
            (arm, removed), models = arm_of[task.key], list(task.models)
            experiment_rows.save_models(store, experiment_id, arm.name, models, _model_rows(
                experiment_id, arm, task, result, data, sets[arm.name], arm_cfg, removed))
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


def reaudit(store: Store, experiment_id: str, arms: list[Arm], data: TrainingArrays, cfg: AuditConfig, seed: int,
            progress: ProgressFactory = silent) -> int:
    """Re-run ApB (cfg.train.seeds audit models with dynamics) on each arm's reduced training set (a control's: its
    model 0's draw) and store its memorized candidates, marking those not flagged before; arms already re-audited
    are skipped. Returns arms done."""
    before = set(flagged_ids(store, "memorized_candidate"))
    stored = experiment_rows.reaudited_arms(store, experiment_id)
    by_name = {a.name: a for a in arms}
    todo = [a for a in arms if (a.ids or a.control_of) and a.name not in stored]
    bar = progress("re-audit", len(todo), "arm")
    phase = "batch" if "batch" in cfg.dynamics.record else "epoch_end"
    for arm in todo:
        removed = _removed(arm, by_name, data, seed, 0)
        log = _reaudit_log(data, ~np.isin(data.train_ids, removed), cfg, f"{experiment_id}-{arm.name}")
        candidates = memorized_candidates(dynamics_scores(log[log["phase"] == phase], cfg.dynamics.el2n_epoch),
                                          cfg.candidates)
        rows = pd.DataFrame({"experiment_id": experiment_id, "arm": arm.name, "sample_id": candidates["sample_id"],
                             "apb": 1.0 - candidates["score"], "newly_flagged": ~candidates["sample_id"].isin(before)})
        experiment_rows.save_reaudit(store, experiment_id, arm.name, rows)
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
        reaudited = reaudit(store, experiment_id, arms, data, cfg, spec.seed, progress) if spec.reaudit else 0
    except BaseException:
        experiment_rows.mark_failed(store, experiment_id)
        finish_run(store, run_id, status="failed", seconds=time.perf_counter() - t0)
        raise
    seconds = time.perf_counter() - t0
    accs = experiment_rows.arm_accuracies(store, experiment_id, [FULL, FULL_LONGER])
    check = schedule_check(accs.loc[accs["arm"] == FULL, "test_acc"], accs.loc[accs["arm"] == FULL_LONGER, "test_acc"],
                           cfg.convergence.tolerance)
    experiment_rows.finish(store, experiment_id, now(), [None if np.isnan(v) else float(v) for v in (
        check.gain, check.low, check.high, check.p_value)], check.trained_to_max)
    full_acc = mean_accuracy(store, experiment_id, FULL)
    finish_run(store, run_id, seconds=seconds, test_acc=full_acc,
               message=f"{len(arms)} arms x {spec.models} models ({trained} trained, {reused} reused)")
    return StageReport("experiment", seconds, {"experiment_id": experiment_id, "arms": len(arms),
                                               "trained": trained, "reused": reused, "reaudited_arms": reaudited})


def experiment_text(store: Store, experiment_id: str) -> str:
    """The `memaudit experiment` report: the experiment's id and status, then its results table."""
    table = experiment_results(store, experiment_id)
    status = experiment_status(store, experiment_id)
    lines = [f"experiment {experiment_id} ({status}); drop = full-data accuracy minus the arm's, positive = worse",
             format_results(table), schedule_line(schedule_check_row(store, experiment_id))]
    share = table[table["mem_share"].notna() & (table["n_memorized_removed"] > 0)]
    if len(share):
        lines.append("memorized points removed, share of the estimated memorized total: " + ", ".join(
            f"{r.arm} {int(r.n_memorized_removed)} = {r.mem_share:.0%} [{r.mem_share_low:.0%}, {r.mem_share_high:.0%}]"
            for r in share.itertuples()))
    if table["newly_flagged"].notna().any():
        lines.append("re-audit, newly flagged memorized candidates: " + ", ".join(
            f"{r.arm} {int(r.newly_flagged)}" for r in table.itertuples() if pd.notna(r.newly_flagged)))
    return "\n".join(lines)
