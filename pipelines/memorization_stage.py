"""Memorization scores from shadow models: pLOO, pLOO-improved and exact LOO, resumable block by block.

Each block of models is committed (its `shadow_models` rows and every prediction) in one short transaction as soon
as it is trained; a re-run skips committed blocks. Blocks and seeds are fixed by the design, so an interrupted and
resumed run trains exactly the models an uninterrupted one would and gives the same scores.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from auditor.config import AuditConfig
from auditor.memorization import cross_influence, flag_memorized, loo_scores, memorization_scores
from auditor.provenance import fingerprint
from auditor.executor import BlockTask, make_executor
from auditor.sharding import ShardDesign, default_shard_count, loo_design, ploo_design, ploo_improved_design
from auditor.store import Store
from pipelines.arrays import TrainingArrays, load_training_arrays, training_fingerprint
from pipelines.jobs import Job
from pipelines.progress import ProgressFactory, silent
from pipelines.runs import finish_run, now, start_run
from pipelines.stages import StageReport

NOT_A_CANDIDATE = "not a candidate (ApB above cut-off)"
METHOD_NAMES = {"ploo": "pLOO", "ploo_improved": "pLOO-improved", "loo": "exact LOO"}


def _model_seed(design_id: str, index: int) -> int:
    """Seed of one shadow model: fixed by the design, independent of blocks and of resumption."""
    return int(fingerprint(design_id, index), 16) % (2 ** 31)


def _candidates(store: Store, data: TrainingArrays) -> np.ndarray:
    """Indices (into the training arrays) of the `memorized_candidate` points, lowest ApB first."""
    ids = store.query("SELECT f.sample_id FROM flags f JOIN scores s USING (sample_id) "
                      "WHERE f.kind = 'memorized_candidate' ORDER BY s.apb, f.sample_id")["sample_id"]
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    found = position.reindex(ids.to_numpy()).dropna().astype(int).to_numpy()
    if not len(found):
        raise RuntimeError("no memorized candidates to shard: pLOO-improved needs the ApB candidates, so run the "
                           "train and scores stages first (or set memorization.method = 'ploo')")
    return found


def build_design(store: Store, data: TrainingArrays, cfg: AuditConfig) -> ShardDesign:
    """The configured pLOO or pLOO-improved design over this data."""
    mc, n = cfg.memorization, len(data.train_ids)
    if mc.method == "ploo_improved":
        candidates = _candidates(store, data)
        k = mc.models or default_shard_count(len(candidates), mc.per_candidate, mc.min_models)
        return ploo_improved_design(n, candidates, k, mc.fraction or 0.5, seed=cfg.seed)
    k = mc.models or default_shard_count(n, mc.per_candidate, mc.min_models)
    return ploo_design(n, k, mc.fraction or 0.7, seed=cfg.seed)


def _design_id(design: ShardDesign, data: TrainingArrays, cfg: AuditConfig) -> str:
    """Identity of a design's work: the training recipe and data, the exact memberships, early stopping."""
    members = fingerprint([row.hex() for row in design.packed_rows()])
    work = fingerprint(training_fingerprint(cfg, data.data_hash), members, design.seed,
                       cfg.memorization.stop_at_train_acc)
    return f"{design.method}-{work}"


def _save_design(store: Store, design_id: str, design: ShardDesign, data: TrainingArrays, run_id: str,
                 cfg: AuditConfig) -> None:
    """Record the design once: its parameters, which point each bit is, and each model's packed membership."""
    if store.scalar("SELECT count(*) FROM shadow_designs WHERE design_id = ?", [design_id]):
        return
    candidate = np.zeros(len(data.train_ids), bool)
    candidate[design.candidates] = True
    group = np.full(len(data.train_ids), -1)
    if design.groups is not None:
        group[design.candidates] = np.arange(len(design.candidates))
    head = pd.DataFrame([{"design_id": design_id, "run_id": run_id, "method": design.method,
                          "n_models": design.n_models, "n_points": design.n_train,
                          "n_candidates": len(design.candidates), "fraction": design.fraction,
                          "shard_seed": design.seed, "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
                          "created_at": now()}])
    points = pd.DataFrame({"design_id": design_id, "point": np.arange(len(data.train_ids), dtype=np.int32),
                           "sample_id": data.train_ids, "candidate": candidate, "loo_group": group})
    rows = design.packed_rows()
    members = pd.DataFrame({"design_id": design_id, "model_index": np.arange(len(rows), dtype=np.int32),
                            "n_in": design.membership.sum(axis=1).astype(np.int32), "bits": rows})
    store.write([("shadow_designs", head), ("design_points", points), ("memberships", members)])


def _block_frames(design_id: str, design: ShardDesign, models: list[int], seeds: list[int], block_no: int,
                  result, data: TrainingArrays) -> list[tuple[str, pd.DataFrame]]:
    ids = [f"{design_id}-m{m:05d}" for m in models]
    head = pd.DataFrame({
        "model_id": ids, "design_id": design_id, "method": design.method, "model_index": models,
        "shard_seed": design.seed, "seed": seeds, "block": block_no,
        "n_in": design.membership[models].sum(axis=1), "epochs_run": result.epochs_run,
        "shard_train_acc": result.shard_train_acc, "test_acc": result.test_acc, "batched": result.batched,
        "seconds": result.seconds / len(models), "finished_at": now()})
    preds = []
    for row, model_id in enumerate(ids):
        in_shard = design.membership[models[row]]
        # Out-of-shard probabilities are out-of-sample predictions (label-issue detection uses them); in-shard: NULL.
        probs = [None] * len(data.train_ids)
        for i in np.flatnonzero(~in_shard):
            probs[i] = result.train_probs[row, i].astype(np.float32)
        preds.append(pd.DataFrame({"model_id": model_id, "sample_id": data.train_ids, "split": "train",
                                   "pred": result.train_pred[row], "p_label": result.train_p_label[row],
                                   "correct": result.train_pred[row] == data.y_train, "in_shard": in_shard,
                                   "probs": probs}))
        preds.append(pd.DataFrame({"model_id": model_id, "sample_id": data.test_ids, "split": "test",
                                   "pred": result.test_pred[row], "p_label": result.test_p_label[row],
                                   "correct": result.test_pred[row] == data.y_test, "in_shard": False}))
    return [("shadow_models", head), ("shadow_predictions", pd.concat(preds, ignore_index=True))]


def train_design(store: Store, design: ShardDesign, design_id: str, data: TrainingArrays, cfg: AuditConfig,
                 run_id: str, progress: ProgressFactory = silent) -> tuple[int, int]:
    """Train every model not yet committed, block by block on the configured executor; returns (trained now,
    reused). This process is the only writer: each finished block is committed in one short transaction."""
    mc = cfg.memorization
    done = set(store.query("SELECT model_index FROM shadow_models WHERE design_id = ?", [design_id])["model_index"])
    job = Job(store, f"job-{run_id}", design.method, run_id, design.n_models, "models")
    bar = progress(f"{METHOD_NAMES[design.method]} shadow models", design.n_models, "model")
    bar.update(len(done))
    job.update(len(done))
    tasks = []
    for block_no, start in enumerate(range(0, design.n_models, mc.block)):
        models = tuple(range(start, min(start + mc.block, design.n_models)))
        if not all(m in done for m in models):
            tasks.append(BlockTask(f"{design_id}-b{block_no:05d}", models, tuple(_model_seed(design_id, m)
                                                                                  for m in models),
                                   design.membership[list(models)], stop_at_train_acc=mc.stop_at_train_acc or None))
    trained = 0
    for task, result in make_executor(cfg.executor).run(data.shadow_data(), tasks, cfg):
        models, block_no = list(task.models), task.models[0] // mc.block
        ids = [f"{design_id}-m{m:05d}" for m in models]
        marks = ", ".join("?" * len(ids))
        store.write(_block_frames(design_id, design, models, list(task.seeds), block_no, result, data),
                    deletes=[(f"DELETE FROM shadow_models WHERE model_id IN ({marks})", ids),
                             (f"DELETE FROM shadow_predictions WHERE model_id IN ({marks})", ids)])
        done.update(models)
        trained += len(models)
        bar.update(len(models))
        job.update(len(done))
    bar.close()
    job.finish()
    return trained, design.n_models - trained


def correctness(store: Store, design_id: str, data: TrainingArrays, n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """(models x train points, models x test points) correctness of the design's committed models."""
    frame = store.query("SELECT m.model_index, p.sample_id, p.split, p.correct FROM shadow_predictions p "
                        "JOIN shadow_models m USING (model_id) WHERE m.design_id = ?", [design_id])
    out = []
    for split, ids in (("train", data.train_ids), ("test", data.test_ids)):
        part = frame[frame["split"] == split]
        matrix = np.zeros((n_models, len(ids)), bool)
        column = pd.Categorical(part["sample_id"], categories=ids).codes
        matrix[part["model_index"].to_numpy(), column] = part["correct"].to_numpy()
        out.append(matrix)
    return out[0], out[1]


def _score_frame(scores: pd.DataFrame, data: TrainingArrays, method: str, run_id: str) -> pd.DataFrame:
    frame = scores.rename(columns={"point": "index"})
    frame["sample_id"] = data.train_ids[frame["index"].to_numpy()]
    frame["mem_method"], frame["mem_run_id"] = method, run_id
    return frame[["sample_id", "mem", "mem_low", "mem_high", "mem_n_in", "mem_n_out", "mem_method", "mem_run_id"]]


def _memorized_flags(frame: pd.DataFrame, threshold: float, run_id: str) -> pd.DataFrame:
    hit = frame[flag_memorized(frame, threshold).to_numpy()]
    detail = [json.dumps({
        "mem": round(float(r.mem), 6), "low": round(float(r.mem_low), 6), "high": round(float(r.mem_high), 6),
        "n_in": int(r.mem_n_in), "n_out": int(r.mem_n_out), "method": r.mem_method, "threshold": threshold,
        "summary": f"mem {r.mem:.2f} (95% CI {r.mem_low:.2f} to {r.mem_high:.2f}) from {r.mem_n_in} models with it "
                   f"and {r.mem_n_out} without ({METHOD_NAMES[r.mem_method]}); threshold {threshold:g}"})
        for r in hit.itertuples()]
    return pd.DataFrame({"sample_id": hit["sample_id"].to_numpy(), "kind": "memorized",
                         "score": hit["mem"].to_numpy(), "detail": detail, "run_id": run_id})


def run_design(store: Store, design: ShardDesign, data: TrainingArrays, cfg: AuditConfig, kind: str,
                progress: ProgressFactory) -> tuple[str, int, int, np.ndarray, np.ndarray]:
    """Record the run and design, train what is missing, and return (run_id, trained, reused, correctness...)."""
    design_id = _design_id(design, data, cfg)
    run_id = f"{'mem' if kind == 'memorization' else kind}-{design_id}"
    start_run(store, run_id, kind, cfg, seed=cfg.seed)
    _save_design(store, design_id, design, data, run_id, cfg)
    trained, reused = train_design(store, design, design_id, data, cfg, run_id, progress)
    return (run_id, trained, reused, *correctness(store, design_id, data, design.n_models))


def memorization_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Train the design's shadow models and write mem scores with intervals, `memorized` flags and `influence`."""
    t0 = time.perf_counter()
    store.init()
    data = load_training_arrays(store, cfg, progress)
    design = build_design(store, data, cfg)
    run_id, trained, reused, train_correct, test_correct = run_design(store, design, data, cfg, "memorization",
                                                                       progress)
    scores = _score_frame(memorization_scores(train_correct, design.membership, design.candidates), data,
                          design.method, run_id)
    flags = _memorized_flags(scores, cfg.memorization.threshold, run_id)
    influence = cross_influence(test_correct, design.membership, design.candidates,
                                min_abs_score=cfg.memorization.influence_min,
                                top_k_per_train=cfg.memorization.influence_top_k)
    influence = influence[(influence["low"] > 0) | (influence["high"] < 0)]  # keep pairs whose 95% CI excludes 0
    influence = pd.DataFrame({"train_id": data.train_ids[influence["train_index"].to_numpy()],
                              "test_id": data.test_ids[influence["test_index"].to_numpy()],
                              "score": influence["score"], "n_in": influence["n_in"], "n_out": influence["n_out"],
                              "low": influence["low"], "high": influence["high"], "run_id": run_id})
    note = NOT_A_CANDIDATE if design.method == "ploo_improved" else "not scored"
    store.write([("flags", flags), ("influence", influence)], frames={"_mem": scores}, deletes=[
        ("UPDATE scores SET mem = NULL, mem_low = NULL, mem_high = NULL, mem_n_in = NULL, mem_n_out = NULL, "
         "mem_method = ?, mem_note = ?, mem_run_id = ?", [design.method, note, run_id]),
        ("UPDATE scores SET mem = m.mem, mem_low = m.mem_low, mem_high = m.mem_high, mem_n_in = m.mem_n_in, "
         "mem_n_out = m.mem_n_out, mem_note = NULL FROM _mem m WHERE scores.sample_id = m.sample_id", []),
        ("DELETE FROM flags WHERE kind = 'memorized'", []),
        ("DELETE FROM influence", [])])
    test_accs = store.query("SELECT m.test_acc FROM shadow_models m JOIN shadow_designs d USING (design_id) "
                            "WHERE d.run_id = ?", [run_id])["test_acc"]
    seconds = time.perf_counter() - t0
    finish_run(store, run_id, seconds=seconds, test_acc=float(test_accs.mean()),
               message=f"{design.n_models} models ({trained} trained, {reused} reused), "
                       f"{len(design.candidates)} points scored, {len(flags)} memorized")
    return StageReport("memorization", seconds, {
        "method": METHOD_NAMES[design.method], "models": design.n_models, "trained": trained, "reused": reused,
        "scored": int(scores["mem"].notna().sum()), "candidates": len(design.candidates), "memorized": len(flags),
        "influence_pairs": len(influence), "shadow_test_acc": float(test_accs.mean())})


def loo_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Exact leave-one-out for memorization.loo_points: R models with every point, R without each; `loo_scores`."""
    t0 = time.perf_counter()
    mc = cfg.memorization
    if not mc.loo_points:
        raise ValueError("the loo stage needs sample ids in memorization.loo_points (config file)")
    data = load_training_arrays(store, cfg, progress)
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    missing = [p for p in mc.loo_points if p not in position.index]
    if missing:
        raise ValueError(f"memorization.loo_points names training samples that do not exist: {missing[:5]}")
    design = loo_design(len(data.train_ids), position[mc.loo_points].to_numpy(), mc.loo_models, seed=cfg.seed)
    run_id, trained, reused, train_correct, _ = run_design(store, design, data, cfg, "loo", progress)
    frame = _score_frame(loo_scores(train_correct, design), data, "loo", run_id)
    store.write([("loo_scores", frame.drop(columns=["mem_method", "mem_run_id"]).assign(run_id=run_id))],
                deletes=[("DELETE FROM loo_scores WHERE run_id = ?", [run_id])])
    seconds = time.perf_counter() - t0
    finish_run(store, run_id, seconds=seconds, message=f"{design.n_models} models for {len(mc.loo_points)} points")
    return StageReport("loo", seconds, {"points": len(mc.loo_points), "models": design.n_models, "trained": trained,
                                        "reused": reused})
