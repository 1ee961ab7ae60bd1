"""The foundation's stages: ingest -> train (dynamics) -> scores -> flags, each writing its results to DuckDB.

Stages hold no database connection while they compute: they buffer results and commit them in short
transactions (one per epoch during training), so the dashboard can read between writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.config import AuditConfig
from auditor.training.convergence import has_plateaued
from auditor.data.default_dataset import materialise_default
from auditor.training.dynamics_scores import dynamics_scores
from auditor.training.embeddings import save_model_checkpoint
from auditor.detectors.flags import memorized_candidates, unreadable_flags
from auditor.data.ingest import ingest
from auditor.data.manifest import ManifestError, list_inputs
from auditor.store.provenance import fingerprint
from auditor.store.run_rows import problem_reasons, run_results, save_run_inputs
from auditor.data.sample_rows import save_ingest
from auditor.training.score_rows import dynamics_log, save_scores
from auditor.store.database import Store
from auditor.training.trainer import EpochLog, resolve_device, train_model
from pipelines.arrays import load_training_arrays, training_fingerprint
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import artifact_path, finish_run, run_status, start_run


@dataclass
class StageReport:
    """What a stage did, for the CLI summary and the benchmark."""

    stage: str
    seconds: float
    facts: dict = field(default_factory=dict)


def resolve_data(data: str) -> Path:
    """`default` is the embedded MNIST subset (materialised on first use); anything else is a path."""
    return materialise_default() if data == "default" else Path(data)


def ingest_stage(store: Store, data: str, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """List and decode every input image; replace `samples`, `classes` and the ingest `problems`."""
    t0 = time.perf_counter()
    store.init()
    source = resolve_data(data)
    listing = list_inputs(source, allow_outside_root=cfg.data.allow_outside_root)
    # Named by what it ingests, like every run: a re-run (after a kill) replaces the attempt's 'running' row.
    run_id = f"ingest-{fingerprint(str(source.resolve()), cfg.data.limit_per_class)}"
    start_run(store, run_id, "ingest", cfg)
    bar = progress("ingest", len(listing.rows), "img")
    result = ingest(listing, limit_per_class=cfg.data.limit_per_class, workers=cfg.data.workers,
                    max_file_mb=cfg.data.max_file_mb, max_megapixels=cfg.data.max_megapixels,
                    channels=cfg.data.channels, progress=bar.update)
    bar.close()
    save_ingest(store, result.samples, result.classes, result.problems, str(source.resolve()))
    seconds = time.perf_counter() - t0
    listed_test = sum(row.split == "test" for row in listing.rows)
    if not (result.samples["split"] == "test").any():
        why = ("no test split" if not listed_test else
               f"none of its {listed_test} test images could be read (their reasons are in `problems`)")
        finish_run(store, run_id, status="failed", seconds=seconds, message=f"no usable test images: {why}")
        raise ManifestError(f"{source} has no usable test images ({why}); add images under test/<class>/ (or manifest "
                            "rows with split 'test'): test accuracy, leaks and memorization are measured on them")
    finish_run(store, run_id, seconds=seconds, message=f"{len(result.samples)} samples, "
                                                       f"{len(result.problems)} problems from {source}")
    splits = result.samples["split"].value_counts().to_dict()
    return StageReport("ingest", seconds, {"source": str(source), "samples": len(result.samples), "splits": splits,
                                           "classes": len(result.classes),
                                           "problems": result.problems["code"].value_counts().to_dict()})


def dynamics_frame(run_id: str, ids: np.ndarray, records: dict[str, np.ndarray]) -> pd.DataFrame:
    """One training run's per-batch dynamics records as `dynamics` rows (record indices mapped to sample ids)."""
    return pd.DataFrame({
        "run_id": run_id, "sample_id": ids[records["index"]], "step": records["step"].astype(np.int32),
        "epoch": records["epoch"], "phase": records["phase"], "correct": records["correct"].astype(bool),
        "loss": records["loss"].astype(np.float32), "p_label": records["p_label"].astype(np.float32),
        "el2n": records["el2n"].astype(np.float32)})


def epoch_writer(store: Store, run_id: str, train_ids: np.ndarray) -> Callable[[EpochLog], None]:
    """Callback that commits one epoch's summary and dynamics in one short transaction."""

    def write(log: EpochLog) -> None:
        row = pd.DataFrame([{"run_id": run_id, "epoch": log.epoch, "train_acc": log.train_acc,
                             "test_acc": log.test_acc, "train_loss": log.train_loss, "test_loss": log.test_loss,
                             "seconds": log.seconds}])
        inserts = [("epochs", row)]
        if log.records is not None:
            inserts.append(("dynamics", dynamics_frame(run_id, train_ids, log.records)))
        store.write(inserts)

    return write


def _predictions_frame(run_id: str, split: str, ids: np.ndarray, preds, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"run_id": run_id, "sample_id": ids, "split": split, "pred_index": preds.pred,
                         "pred_label": np.asarray(labels, dtype=object)[preds.pred],
                         "p_label": preds.p_label.astype(np.float32), "p_pred": preds.p_pred.astype(np.float32)})


def train_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Train cfg.train.seeds audit models with dynamics recording; finished seeds are reused on re-runs."""
    t0 = time.perf_counter()
    data = load_training_arrays(store, cfg, progress)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    train_ids, test_ids, labels = data.train_ids, data.test_ids, data.labels
    seed_fp = training_fingerprint(cfg, data.data_hash)
    parent = f"apb-{fingerprint(seed_fp, cfg.train.seeds)}"
    device = str(resolve_device(cfg.device))
    start_run(store, parent, "apb", cfg, seed=cfg.seed, device=device)
    seed_runs, reused = [], 0
    for s in range(cfg.train.seeds):
        seed = cfg.seed + s
        run_id = f"train-{seed_fp}-s{seed}"
        seed_runs.append(run_id)
        if run_status(store, run_id) == "done":
            reused += 1
            continue
        start_run(store, run_id, "train", cfg, seed=seed, parent_run_id=parent, device=device)
        bar = progress(f"train seed {s + 1}/{cfg.train.seeds}",
                       cfg.train.epochs * -(-len(x_train) // cfg.train.batch_size), "batch")

        outcome = train_model(x_train, y_train, x_test, y_test, len(labels), cfg, seed,
                              on_epoch=epoch_writer(store, run_id, train_ids),
                              on_batch=bar.update)
        bar.close()
        preds = [_predictions_frame(run_id, "train", train_ids, outcome.train, labels)]
        if outcome.test is not None:
            preds.append(_predictions_frame(run_id, "test", test_ids, outcome.test, labels))
        store.append("predictions", pd.concat(preds, ignore_index=True))
        save_model_checkpoint(outcome.model, artifact_path(store, run_id), arch=cfg.train.arch,
                              in_channels=data.channels, num_classes=len(labels), width=cfg.train.width,
                              image_size=cfg.data.image_size, mean=outcome.input_mean, std=outcome.input_std,
                              run_id=run_id)
        curve = [e.test_acc for e in outcome.epochs if e.test_acc is not None]
        finish_run(store, run_id, converged=has_plateaued(curve, cfg.convergence.window, cfg.convergence.tolerance),
                   train_acc=outcome.train_acc, test_acc=outcome.test_acc, seconds=outcome.seconds)
    # A reused seed keeps the parent it was first trained for; run_inputs records every run this one is built on.
    save_run_inputs(store, parent, seed_runs, "seed")
    runs = run_results(store, seed_runs)
    report = StageReport("train", time.perf_counter() - t0, {
        "seeds": cfg.train.seeds, "reused_seeds": reused, "device": device, "channels": data.channels,
        "train_acc": runs["train_acc"].tolist(), "test_acc": runs["test_acc"].tolist(),
        "converged": bool(runs["converged"].fillna(False).all())})
    report.facts["parent_run_id"], report.facts["seed_runs"] = parent, seed_runs
    return report


def scores_stage(store: Store, cfg: AuditConfig, train_report: StageReport) -> StageReport:
    """ApB and the other dynamics scores from the seed runs' logs; replaces `scores` and the foundation's flags."""
    t0 = time.perf_counter()
    parent, seed_runs = train_report.facts["parent_run_id"], train_report.facts["seed_runs"]
    phase = "batch" if "batch" in cfg.dynamics.record else "epoch_end"
    log = dynamics_log(store, phase, seed_runs)
    scores = dynamics_scores(log, cfg.dynamics.el2n_epoch)
    converged = train_report.facts["converged"]
    scores["run_id"], scores["converged"] = parent, converged
    candidates = memorized_candidates(scores, cfg.candidates)
    problems = problem_reasons(store)
    flags = pd.concat([candidates, unreadable_flags(problems)], ignore_index=True)
    flags["run_id"] = parent
    save_scores(store, scores, flags)
    seconds = time.perf_counter() - t0
    accs = train_report.facts
    finish_run(store, parent, converged=converged, train_acc=float(np.mean(accs["train_acc"])),
               test_acc=float(np.mean(accs["test_acc"])) if accs["test_acc"] else None,
               seconds=seconds + train_report.seconds,
               message=f"{len(scores)} scored, {len(candidates)} memorized candidates")
    return StageReport("scores", seconds, {"scored": len(scores), "memorized_candidates": len(candidates),
                                           "unreadable": int((flags["kind"] == "unreadable").sum()),
                                           "apb_median": float(scores["apb"].median()) if len(scores) else None})
