"""Detectors over one shared kNN graph: duplicates, leaks, long tail, sub-populations and label issues, then every
contract detector of the flag-kind registry (auditor.detectors.contract: outliers, image quality).

Every flag carries JSON evidence; thresholds are calibrated on this dataset and embedder (or taken from reviewer
judgements of pairs) and recorded in `thresholds`.
"""

from __future__ import annotations

import functools
import importlib
import json
import time

import numpy as np
import pandas as pd

from auditor.data import sample_rows
from auditor.detectors import detector_rows
from auditor.review import queries
from auditor.config import AuditConfig
from auditor.detectors.duplicates import (
    COPY_EVIDENCE, copy_pairs, duplicate_flags, exact_duplicate_pairs, leak_flags, leak_pairs, near_duplicate_pairs)
from auditor.detectors.contract import DetectorContext, DetectorResult
from auditor.detectors.copies import (REFERENCE_RANK, CopyIndex, calibrate_copies, calibrate_neighbours,
                                      discovery_threshold)
from auditor.detectors.label_issues import confident_learning, knn_label_disagreement, label_issue_flags
from auditor.detectors.long_tail import class_clusters, local_density, long_tail_flags, subpopulations_from_influence
from auditor.detectors.thresholds import Threshold, calibrate_from_labels
from auditor.training.embedding_rows import latest_embedder, load_embeddings
from auditor.detectors.flag_kinds import detector_modules, kinds_of_stage, threshold_kinds
from auditor.memorization.influence_rows import influence, mean_influence
from auditor.detectors.neighbors import KnnGraph, graph_frame, knn
from auditor.store.provenance import fingerprint
from auditor.training.score_rows import flagged_ids, mem_run_id, mem_scores
from auditor.memorization.shadow_engine import train_shadow_block
from auditor.store.database import Store
from pipelines.arrays import TrainingArrays, load_training_arrays, training_fingerprint
from pipelines.progress import ProgressFactory, notice, silent
from pipelines.runs import finish_run, start_run
from pipelines.stages import StageReport

DETECTOR_KINDS = kinds_of_stage("detectors")
# The `thresholds` row kind of each thresholded pair kind (the embedding ones keep their flag names).
THRESHOLD_KINDS = threshold_kinds()


def _shadow_oof(store: Store, train_ids: np.ndarray) -> np.ndarray | None:
    """Mean out-of-shard class probabilities of the current memorization run, if they cover every training point."""
    frame = detector_rows.shadow_out_of_shard_probs(store)
    if frame.empty or frame["sample_id"].nunique() < len(train_ids):
        return None
    probs = np.stack(frame["probs"].to_numpy())
    mean = pd.DataFrame(probs).groupby(frame["sample_id"].to_numpy()).mean()
    return mean.reindex(train_ids).to_numpy(dtype=np.float32)


def out_of_sample_probs(store: Store, cfg: AuditConfig, progress: ProgressFactory,
                        data: TrainingArrays | None = None) -> tuple[np.ndarray, str]:
    """Out-of-sample class probabilities for every training point: the shadow models' out-of-shard predictions when
    they cover every point (pLOO), else K-fold models of the audit recipe (stored in `oof_probs`, reused)."""
    data = data or load_training_arrays(store, cfg)
    shadow = _shadow_oof(store, data.train_ids)
    if shadow is not None:
        return shadow, "shadow models (out of shard)"
    k = cfg.detectors.kfold
    few = int((np.bincount(data.y_train, minlength=len(data.labels)) < k).sum())
    if few:
        notice(progress, f"warning: {few} of {len(data.labels)} classes have fewer than {k} training images; the "
                         f"{k}-fold models behind their label-issue flags saw few or none of their class")
    run_id = f"oof-{fingerprint(training_fingerprint(cfg, data.data_hash), k, cfg.seed)}"
    stored = detector_rows.oof_probs(store, run_id)
    if len(stored) == len(data.train_ids):
        order = pd.Series(np.arange(len(stored)), index=stored["sample_id"].to_numpy()).reindex(data.train_ids)
        return np.stack(stored["probs"].to_numpy()[order.to_numpy()]).astype(np.float32), f"{k}-fold (reused)"
    folds = np.random.default_rng(cfg.seed).permutation(len(data.train_ids)) % k
    membership = np.stack([folds != f for f in range(k)])
    bar = progress(f"{k}-fold out-of-sample models", 1, "block")
    block = train_shadow_block(data.x_train, data.y_train, data.x_test, data.y_test, len(data.labels), membership,
                               [int(fingerprint(run_id, f), 16) % 2 ** 31 for f in range(k)], cfg,
                               probs="out_of_shard")
    bar.update(1)
    bar.close()
    probs = block.train_probs  # each point is out of exactly one fold's shard: that model's probabilities
    detector_rows.save_oof_probs(store, run_id, data.train_ids, probs, f"{k}-fold")
    return probs, f"{k}-fold"


def _judged(store: Store, pair_kind: str) -> Threshold | None:
    """The threshold reviewer judgements of this kind's pairs give, when both answers exist."""
    judged = detector_rows.judged_pairs(store, pair_kind)
    if judged["is_duplicate"].nunique() < 2:
        return None
    return calibrate_from_labels(judged["similarity"].to_numpy(), judged["is_duplicate"].to_numpy(bool))


def _threshold(store: Store, fixed: float, graph: KnnGraph, pair_kind: str, fdr: float) -> Threshold:
    """A configured value, else reviewer judgements of this kind's pairs, else Benjamini-Hochberg at `fdr` over the
    graph's queries, each tested on how much closer its nearest neighbour is than its others (copies.py)."""
    if fixed > 0:
        return Threshold(fixed, "configured", {})
    return _judged(store, pair_kind) or calibrate_neighbours(graph, fdr)


def pixel_pairs(store: Store, data: TrainingArrays, cfg: AuditConfig) -> tuple[pd.DataFrame, dict[str, Threshold]]:
    """Duplicate and leak pairs of the edit-robust copy matcher (copies.py), with their thresholds: reviewer
    judgements where both answers exist, else Benjamini-Hochberg at `detectors.copy_fdr` over the training images
    (duplicates) or the test images (leaks), on the null calibrated on synthetic copies of the training images."""
    dc = cfg.detectors
    k = max(dc.k, 2 * REFERENCE_RANK)
    index = CopyIndex(data.x_train, k, exact_below=dc.exact_below, index=dc.index)
    self_graph, self_matches = index.search(data.x_train, k, own_rows=np.arange(len(data.x_train)))
    to_train, test_matches = index.search(data.x_test, k)
    calibrated = calibrate_copies(index, data.x_train, seed=cfg.seed)
    thresholds = {kind: _judged(store, kind) or discovery_threshold(graph, calibrated, dc.copy_fdr)
                  for kind, graph in (("pixel_duplicate", self_graph), ("pixel_leak", to_train))}
    pairs = pd.concat([
        copy_pairs(self_graph, self_matches, data.train_ids, data.y_train, thresholds["pixel_duplicate"],
                   "pixel_duplicate"),
        copy_pairs(to_train, test_matches, data.train_ids, data.y_train, thresholds["pixel_leak"], "pixel_leak",
                   query_ids=data.test_ids, query_labels=data.y_test)], ignore_index=True)
    return pairs, thresholds


def _embedder(store: Store) -> str:
    """The most recently computed embedder."""
    embedder_id = latest_embedder(store)
    if embedder_id is None:
        raise RuntimeError("no embeddings yet: run the embeddings stage first (memaudit run --stages embeddings)")
    return embedder_id


def _run_id(store: Store, cfg: AuditConfig, embedder_id: str, samples: pd.DataFrame) -> str:
    """The run id of the detectors on their inputs: the embedder, the config, the `samples`, the memorization run and
    the reviewers' pair judgements; a re-run on the same inputs replaces its own rows."""
    mem_run = mem_run_id(store)
    judged = detector_rows.pair_judgements(store)
    spec = {k: v for k, v in cfg.to_dict().items() if k not in ("profile", "executor")}
    return f"detect-{fingerprint(embedder_id, spec, samples.to_numpy().tolist(), mem_run, judged.to_numpy().tolist())}"


def contract_detectors(context: DetectorContext) -> dict[str, DetectorResult]:
    """The result of every detector that the flag-kind registry names, by flag kind."""
    return {kind: importlib.import_module(module).detect(context) for kind, module in detector_modules().items()}


def detectors_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Build the kNN graph once and run every detector on it; replaces their flags, pairs and evidence tables."""
    t0 = time.perf_counter()
    dc = cfg.detectors
    embedder_id = _embedder(store)
    samples = sample_rows.labelled_samples(store)
    run_id = _run_id(store, cfg, embedder_id, samples)
    start_run(store, run_id, "detectors", cfg, seed=cfg.seed)
    labels = queries.class_labels(store)
    train, test = samples[samples["split"] == "train"], samples[samples["split"] == "test"]
    train_ids, test_ids = train["sample_id"].to_numpy(), test["sample_id"].to_numpy()
    x_train = load_embeddings(store, embedder_id, train_ids)
    x_test = load_embeddings(store, embedder_id, test_ids)
    graph = knn(x_train, dc.k, exact_below=dc.exact_below, index=dc.index)
    to_train = knn(x_train, dc.k, query=x_test, exclude_self=False, exact_below=dc.exact_below, index=dc.index)

    thresholds = {"near_duplicate": _threshold(store, dc.duplicate_threshold, graph, "near_duplicate", dc.copy_fdr),
                  "leak": _threshold(store, dc.leak_threshold, to_train, "leak", dc.copy_fdr)}
    exact = exact_duplicate_pairs(samples["sample_id"].to_numpy(), samples["split"].to_numpy(),
                                  samples["label"].to_numpy(), samples["file_hash"].to_numpy(),
                                  samples["pixel_hash"].to_numpy())
    y_train, y_test = train["label_index"].to_numpy(), test["label_index"].to_numpy()
    near = near_duplicate_pairs(graph, train_ids, y_train, thresholds["near_duplicate"])
    leaks = leak_pairs(to_train, test_ids, train_ids, y_test, y_train, thresholds["leak"])
    arrays = functools.cache(lambda: load_training_arrays(store, cfg, progress))
    data = arrays() if dc.pixel_match else None
    pixel, pixel_thresholds = pixel_pairs(store, data, cfg) if data is not None else (None, {})
    thresholds.update(pixel_thresholds)
    pairs = pd.concat([exact.drop(columns=["same_file"]), near, leaks, pixel], ignore_index=True)
    evidence_columns = [c for c in COPY_EVIDENCE if c in pairs]

    clusters = class_clusters(x_train, y_train, seed=cfg.seed)
    density = local_density(graph)
    subpops = subpopulations_from_influence(influence(store), flagged_ids(store, "memorized"))

    probs, prob_source = out_of_sample_probs(store, cfg, progress, arrays())
    mem = mem_scores(store)
    cross = mean_influence(store)
    mislabeled = label_issue_flags(confident_learning(probs, y_train), knn_label_disagreement(graph, y_train,
                                                                                             len(labels)),
                                   train_ids, class_names=labels, self_influence=mem, cross_influence=cross)
    context = DetectorContext(train_ids, y_train, graph, x_train,
                              lambda: [(arrays().train_ids, arrays().x_train), (arrays().test_ids, arrays().x_test)],
                              dc, cfg.seed)
    contract = contract_detectors(context)
    flags = pd.concat([duplicate_flags(pairs, thresholds), leak_flags(pairs, thresholds),
                       long_tail_flags(clusters, density, train_ids), mislabeled,
                       *(result.flags for result in contract.values())], ignore_index=True)
    flags["run_id"] = run_id
    cluster_frame = pd.DataFrame({"sample_id": train_ids[clusters["index"].to_numpy()], "embedder_id": embedder_id,
                                  "label": np.asarray(labels, dtype=object)[clusters["label"].to_numpy()],
                                  "cluster": clusters["cluster"], "cluster_size": clusters["cluster_size"],
                                  "density": density[clusters["index"].to_numpy()].astype(np.float32)})
    neighbors = pd.concat([graph_frame(graph, train_ids, train_ids), graph_frame(to_train, test_ids, train_ids)],
                          ignore_index=True).assign(embedder_id=embedder_id)
    threshold_rows = pd.DataFrame([{"run_id": run_id, "kind": kind, "embedder_id": embedder_id, "value": t.value,
                                "method": t.method, "detail": json.dumps(t.detail, default=float)}
                               for kind, t in [*((THRESHOLD_KINDS[k], t) for k, t in thresholds.items()),
                                               *(i for r in contract.values() for i in r.thresholds.items())]])
    detector_rows.save_detections(store, run_id, embedder_id, DETECTOR_KINDS, {
        "flags": flags, "pairs": pairs.drop(columns=evidence_columns).assign(embedder_id=embedder_id, run_id=run_id),
        "thresholds": threshold_rows, "clusters": cluster_frame, "neighbors": neighbors,
        "subpopulations": subpops.assign(run_id=run_id)})
    counts = flags["kind"].value_counts().to_dict()
    seconds = time.perf_counter() - t0
    finish_run(store, run_id, seconds=seconds, message=json.dumps(counts))
    return StageReport("detectors", seconds, {
        "embedder": embedder_id, "graph": graph.index_kind, "flags": counts, "probabilities": prob_source,
        **{f"{kind}_threshold": f"{t.value:.4f} ({t.method})" for kind, t in thresholds.items()},
        "pairs": pairs["kind"].value_counts().to_dict(), "subpopulations": int(subpops["subpop_id"].nunique())})
