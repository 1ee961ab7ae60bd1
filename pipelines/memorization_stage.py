"""Memorization scores from shadow models: pLOO, pLOO-improved and exact LOO, resumable block by block.

Each block of models is committed (its `shadow_models` rows and every prediction) in one short transaction as soon
as it is trained; a re-run skips committed blocks. Blocks and seeds are fixed by the design, so an interrupted and
resumed run trains exactly the models an uninterrupted one would and gives the same scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.memorization import shadow_rows
from auditor.config import AuditConfig
from auditor.memorization.audit_sample import (SHORTLIST, TotalEstimate, apb_bands, audit_sample, band_table, bands_to_extend,
                                  classification_noise, estimate_total, stratified_pick)
from auditor.memorization.estimates import (cross_influence, influence_tests, loo_scores,
                                  memorization_scores, memorization_states)
from auditor.multiple_testing import benjamini_hochberg
from auditor.memorization.memorization_rows import save_loo_scores, save_memorization
from auditor.store.provenance import fingerprint
from auditor.memorization.executor import BlockTask, make_executor
from auditor.memorization.proxy_calibration import proxy_calibration
from auditor.training.score_rows import candidates_by_apb, mem_scores, proxy_scores
from auditor.memorization.shadow_budget import DesignPlan, capped_models, half_width, models_for_half_width
from auditor.memorization.sharding import ShardDesign, default_shard_count, loo_design, ploo_design, ploo_improved_design
from auditor.store.database import Store
from pipelines.arrays import TrainingArrays, TrainLabels, load_training_arrays, train_labels, training_fingerprint
from pipelines.jobs import Job
from pipelines.progress import ProgressFactory, notice, silent
from pipelines.runs import finish_run, now, start_run
from pipelines.stages import StageReport

NOT_A_CANDIDATE = "not a candidate (ApB above cut-off)"
PHASE_1 = "phase 1 (ApB shortlist + audit sample)"
# When pLOO-improved's second phase runs (`_extension`): rate_floor is memorization.rate_floor.
PHASE_2_RULE = ("phase 2 runs only if phase 1's audit finds a memorized rate at or above memorization.rate_floor "
                "({rate_floor:g}) in the lowest-ApB band outside the shortlist")
METHOD_NAMES = {"ploo": "pLOO", "ploo_improved": "pLOO-improved", "loo": "exact LOO"}
# Up to this many classes each shadow model's out-of-shard class probabilities are stored (label-issue detection
# averages them); beyond, they would grow with models x points x classes: the detectors train k-fold models instead.
STORED_PROBS_MAX_CLASSES = 100


def _model_seed(design_id: str, index: int) -> int:
    """Seed of one shadow model: fixed by the design, independent of blocks and of resumption."""
    return int(fingerprint(design_id, index), 16) % (2 ** 31)


def _candidates(store: Store, data: TrainingArrays | TrainLabels) -> np.ndarray:
    """Indices (into the training arrays) of the `memorized_candidate` points, lowest ApB first."""
    ids = candidates_by_apb(store)
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    found = position.reindex(ids.to_numpy()).dropna().astype(int).to_numpy()
    if not len(found):
        raise RuntimeError("no memorized candidates to shard: pLOO-improved needs the ApB candidates, so run the "
                           "train and scores stages first (or set memorization.method = 'ploo')")
    return found


def _proxies(store: Store, data: TrainingArrays | TrainLabels) -> pd.DataFrame:
    """The training-dynamics scores (ApB and the other proxies) of every training point, in training-array order."""
    frame = proxy_scores(store).set_index("sample_id").reindex(data.train_ids)
    if frame["apb"].isna().any():
        missing = data.train_ids[frame["apb"].isna().to_numpy()][:5].tolist()
        raise RuntimeError(f"training samples without ApB (e.g. {missing}): run the train and scores stages first")
    return frame.reset_index(drop=True)


def _seconds_per_model(store: Store) -> float | None:
    """Median training time of one shadow model measured on this database so far (None before the first)."""
    value = shadow_rows.median_model_seconds(store)
    return None if value is None or not value > 0 else float(value)


def plan_design(store: Store, n_train: int, points: np.ndarray | None, cfg: AuditConfig, seed: int,
                phase: str) -> tuple[ShardDesign, DesignPlan]:
    """The design of one phase and what it will cost: pLOO over every point (points None) or pLOO-improved over
    `points`, with the model count from the target half-width, min_in/min_out and the floors (or `models`)."""
    plan = design_plan(store, n_train if points is None else len(points), points is None, cfg, phase)
    design = (ploo_design(n_train, plan.n_models, plan.fraction, seed=seed) if points is None
              else ploo_improved_design(n_train, points, plan.n_models, plan.fraction, seed=seed))
    return design, plan


def design_plan(store: Store, n_sharded: int, every_point: bool, cfg: AuditConfig, phase: str) -> DesignPlan:
    """What a design sharding `n_sharded` points (every training point for pLOO) will train: the model count from
    the target half-width, min_in/min_out and the floors, at most max_models (or exactly `models`), and the seconds
    per model measured here."""
    mc = cfg.memorization
    fraction = mc.fraction or (0.7 if every_point else 0.5)
    wanted = mc.models or max(models_for_half_width(mc.half_width, fraction, mc.min_in, mc.min_out),
                              default_shard_count(n_sharded, mc.per_candidate, mc.min_models))
    k = wanted if mc.models else capped_models(wanted, mc.max_models, fraction, mc.min_in, mc.min_out)
    return DesignPlan(phase, k, n_sharded, fraction, mc.half_width, half_width(k, fraction),
                      _seconds_per_model(store), wanted)


def _selection(store: Store, data: TrainingArrays | TrainLabels,
               cfg: AuditConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shortlist, band of every point, audit sample) of pLOO-improved's first phase."""
    mc = cfg.memorization
    shortlist = _candidates(store, data)
    bands = apb_bands(_proxies(store, data)["apb"].to_numpy(), shortlist, mc.bands)
    return shortlist, bands, audit_sample(bands, mc.audit_fraction, mc.audit_min_per_band, cfg.seed)


def plans_ahead(store: Store, cfg: AuditConfig) -> tuple[DesignPlan, DesignPlan | None]:
    """The designs the memorization stage would train on `store` now, without decoding an image: pLOO, or
    pLOO-improved's phase 1 (ApB shortlist + audit sample) and the largest phase 2 its audit can call for (every ApB
    band the max_sharded cap allows; None when it allows none). RuntimeError when train and scores have not run."""
    labels = train_labels(store)
    if cfg.memorization.method == "ploo":
        return design_plan(store, len(labels.train_ids), True, cfg, "pLOO"), None
    shortlist, bands, audit = _selection(store, labels, cfg)
    first = design_plan(store, len(np.union1d(shortlist, audit)), False, cfg, PHASE_1)
    extended, most = _capped_extension(bands, audit, int(bands.max()) + 1, cfg)
    return first, design_plan(store, len(most), False, cfg, _phase_2_name(extended)) if len(most) else None


def _design_id(design: ShardDesign, data: TrainingArrays, cfg: AuditConfig) -> str:
    """Identity of a design's work: the training recipe and data, the exact memberships, early stopping."""
    members = fingerprint([row.hex() for row in design.packed_rows()])
    work = fingerprint(training_fingerprint(cfg, data.data_hash), members, design.seed,
                       cfg.memorization.stop_at_train_acc)
    return f"{design.method}-{work}"


def _save_design(store: Store, design_id: str, design: ShardDesign, data: TrainingArrays, run_id: str,
                 cfg: AuditConfig) -> None:
    """Record the design once: its parameters, which point each bit is, and each model's packed membership."""
    if shadow_rows.design_saved(store, design_id):
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
        # A block trained without them (many classes) stores none.
        probs = [None] * len(data.train_ids)
        if result.train_probs is not None:
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
    done = shadow_rows.committed_models(store, design_id)
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
                                   design.membership[list(models)], stop_at_train_acc=mc.stop_at_train_acc or None,
                                   probs="all" if len(data.labels) <= STORED_PROBS_MAX_CLASSES else "none"))
    trained = 0
    for task, result in make_executor(cfg.executor).run(data.shadow_data(), tasks, cfg):
        models, block_no = list(task.models), task.models[0] // mc.block
        shadow_rows.save_block(store, [f"{design_id}-m{m:05d}" for m in models],
                               _block_frames(design_id, design, models, list(task.seeds), block_no, result, data))
        done.update(models)
        trained += len(models)
        bar.update(len(models))
        job.update(len(done))
    bar.close()
    job.finish()
    return trained, design.n_models - trained


def correctness(store: Store, design_id: str, data: TrainingArrays, n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """(models x train points, models x test points) correctness of the design's committed models."""
    frame = shadow_rows.design_correctness(store, design_id)
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
    return frame[["index", "sample_id", "mem", "mem_low", "mem_high", "mem_n_in", "mem_n_out", "mem_method",
                  "mem_run_id"]]


def _state_flags(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """`memorized` and `memorized_uncertain` flags of the scored points (by mem_state), with their evidence."""
    hit = frame[frame["mem_state"].isin(["memorized", "uncertain"]).to_numpy()]
    reasons = {"memorized": "mem at or above the threshold and the interval above 0",
               "uncertain": "the interval straddles the threshold: more shadow models would decide"}
    detail = [json.dumps({
        "mem": round(float(r.mem), 6), "low": round(float(r.mem_low), 6), "high": round(float(r.mem_high), 6),
        "n_in": int(r.mem_n_in), "n_out": int(r.mem_n_out), "method": r.mem_method, "threshold": threshold,
        "state": r.mem_state, "sampled": r.mem_sampled,
        "summary": f"mem {r.mem:.2f} (95% CI {r.mem_low:.2f} to {r.mem_high:.2f}) from {r.mem_n_in} models with it "
                   f"and {r.mem_n_out} without ({METHOD_NAMES[r.mem_method]}); threshold {threshold:g}: "
                   f"{reasons[r.mem_state]}"})
        for r in hit.itertuples()]
    kind = np.where(hit["mem_state"] == "memorized", "memorized", "memorized_uncertain")
    return pd.DataFrame({"sample_id": hit["sample_id"].to_numpy(), "kind": kind,
                         "score": hit["mem"].to_numpy(), "detail": detail, "run_id": hit["mem_run_id"].to_numpy()})


def run_design(store: Store, design: ShardDesign, data: TrainingArrays, cfg: AuditConfig, kind: str,
                progress: ProgressFactory) -> tuple[str, int, int, np.ndarray, np.ndarray]:
    """Record the run and design, train what is missing, and return (run_id, trained, reused, correctness...)."""
    design_id = _design_id(design, data, cfg)
    run_id = f"{'mem' if kind == 'memorization' else kind}-{design_id}"
    start_run(store, run_id, kind, cfg, seed=cfg.seed)
    _save_design(store, design_id, design, data, run_id, cfg)
    trained, reused = train_design(store, design, design_id, data, cfg, run_id, progress)
    return (run_id, trained, reused, *correctness(store, design_id, data, design.n_models))


@dataclass(frozen=True)
class _Phase:
    """One trained design of the stage: its run, plan, scores of its sharded points, and its influence pairs with
    p <= influence_q out of `tested` pairs (Benjamini-Hochberg runs over every phase's tests together)."""

    run_id: str
    design: ShardDesign
    plan: DesignPlan
    trained: int
    reused: int
    scores: pd.DataFrame
    influence: pd.DataFrame
    tested: int


def _run_phase(store: Store, data: TrainingArrays, cfg: AuditConfig, points: np.ndarray | None, seed: int,
               phase: str, progress: ProgressFactory) -> _Phase:
    """Plan (and say) one design, train what is missing, and score its sharded points."""
    design, plan = plan_design(store, len(data.train_ids), points, cfg, seed, phase)
    notice(progress, f"memorization {plan.describe()}")
    run_id, trained, reused, train_correct, test_correct = run_design(store, design, data, cfg, "memorization",
                                                                       progress)
    scores = _score_frame(memorization_scores(train_correct, design.membership, design.candidates), data,
                          design.method, run_id)
    mc = cfg.memorization
    enough = design.n_models >= mc.influence_min_models
    influence = cross_influence(test_correct, design.membership, design.candidates, min_abs_score=0.0,
                                top_k_per_train=None, max_p=mc.influence_q if enough else 0.0)
    tested = influence_tests(test_correct, design.membership, design.candidates) if enough else 0
    influence = pd.DataFrame({"train_id": data.train_ids[influence["train_index"].to_numpy()],
                              "test_id": data.test_ids[influence["test_index"].to_numpy()],
                              "score": influence["score"], "n_in": influence["n_in"], "n_out": influence["n_out"],
                              "low": influence["low"], "high": influence["high"], "p_value": influence["p_value"],
                              "run_id": run_id})
    return _Phase(run_id, design, plan, trained, reused, scores, influence, tested)


def _significant_influence(phases: list[_Phase], cfg: AuditConfig) -> tuple[pd.DataFrame, int, str]:
    """(pairs kept, pairs tested, note): Benjamini-Hochberg at influence_q over every tested (candidate, test point)
    pair of every phase, then the effect floor influence_min and at most influence_top_k pairs per candidate (the
    strongest). Designs under influence_min_models models test nothing, and the note says so."""
    mc = cfg.memorization
    tested = sum(p.tested for p in phases)
    pairs = pd.concat([p.influence for p in phases], ignore_index=True)
    pairs = pairs[benjamini_hochberg(pairs["p_value"].to_numpy(), tested, mc.influence_q)]
    pairs = pairs[pairs["score"].abs() >= mc.influence_min]
    pairs = (pairs.assign(strength=-pairs["score"].abs()).sort_values(["train_id", "strength", "test_id"])
             .groupby("train_id", sort=False).head(mc.influence_top_k).drop(columns="strength"))
    small = [p.design.n_models for p in phases if p.design.n_models < mc.influence_min_models]
    note = (f"no influence from designs of {', '.join(map(str, small))} models: it needs at least "
            f"{mc.influence_min_models} (memorization.influence_min_models)" if small else "")
    return pairs.reset_index(drop=True), tested, note


def _extension(bands: np.ndarray, audit: np.ndarray, scores: pd.DataFrame, cfg: AuditConfig) -> tuple[int, np.ndarray]:
    """(bands extended, their points still to score) after phase 1's `scores`: leading bands join while their audited
    memorized rate (mem at or above the threshold) stays at or above rate_floor, within the max_sharded cap."""
    mc = cfg.memorization
    mem = pd.Series(scores["mem"].to_numpy(), index=scores["index"].to_numpy())
    hit = (mem.reindex(audit).to_numpy() >= mc.threshold)
    audit_band = bands[audit]
    rates = [hit[audit_band == b].mean() if (audit_band == b).any() else np.nan for b in range(bands.max() + 1)]
    return _capped_extension(bands, audit, bands_to_extend(np.asarray(rates), mc.rate_floor), cfg)


def _capped_extension(bands: np.ndarray, audit: np.ndarray, extended: int, cfg: AuditConfig) -> tuple[int, np.ndarray]:
    """(bands, their points still to score): the `extended` leading bands, fewer while the second design would shard
    more than max_sharded of the training points."""
    unscored = ~np.isin(np.arange(len(bands)), audit)
    while extended and ((bands >= 0) & (bands < extended) & unscored).sum() > cfg.memorization.max_sharded * len(bands):
        extended -= 1
    return extended, np.flatnonzero((bands >= 0) & (bands < extended) & unscored)


def _phase_2_name(extended: int) -> str:
    """The name of pLOO-improved's second phase over `extended` ApB bands."""
    return f"phase 2 (shortlist extended by {extended} ApB bands)"


def _sampling(n_train: int, bands: np.ndarray | None, audit: np.ndarray, extended: int) -> pd.DataFrame:
    """Per training point: its ApB band, how it came to be scored (shortlist, audit, extension, all, or None) and its
    weight, the inverse of its chance of being scored (0 when not scored)."""
    if bands is None:  # pLOO: every point scored
        return pd.DataFrame({"apb_band": pd.array([None] * n_train, dtype="Int64"), "mem_sampled": "all",
                             "mem_weight": 1.0})
    in_audit = np.isin(np.arange(n_train), audit)
    sampled = np.where(bands == SHORTLIST, "shortlist", np.where(in_audit, "audit", np.where(
        bands < extended, "extension", None))).astype(object)
    weight = np.where(bands == SHORTLIST, 1.0, 0.0)
    for band in np.unique(bands[bands >= 0]):
        members = bands == band
        weight[members & (band < extended)] = 1.0
        if band >= extended:
            weight[members & in_audit] = members.sum() / (members & in_audit).sum()
    return pd.DataFrame({"apb_band": bands, "mem_sampled": sampled, "mem_weight": weight})


def _estimates(run_id: str, cfg: AuditConfig, scores: pd.DataFrame, sampling: pd.DataFrame, bands: pd.DataFrame,
               total: TotalEstimate, extended: int, plans: list[DesignPlan], method: str) -> pd.DataFrame:
    """The one-row `memorization_estimates` frame: the counts by state, the estimated total and the recall."""
    state = scores["mem_state"].value_counts()
    certain = int(((scores["mem_state"] == "memorized") & (scores["mem_low"] >= cfg.memorization.threshold)).sum())
    return pd.DataFrame([{
        "run_id": run_id, "method": method, "threshold": cfg.memorization.threshold, "n_train": len(sampling),
        "n_scored": int(scores["mem"].notna().sum()), "n_memorized": int(state.get("memorized", 0)),
        "n_memorized_certain": certain, "n_uncertain": int(state.get("uncertain", 0)),
        "n_not_memorized": int(state.get("not_memorized", 0)),
        "n_not_scored": int(len(sampling) - scores["mem"].notna().sum()),
        "est_total": total.total, "est_low": total.low, "est_high": total.high, "recall": total.recall,
        "recall_low": total.recall_low, "recall_high": total.recall_high,
        "n_shortlist": int((sampling["mem_sampled"] == "shortlist").sum()),
        "n_audit": int((sampling["mem_sampled"] == "audit").sum()),
        "n_extension": int((sampling["mem_sampled"] == "extension").sum()), "bands_extended": extended,
        "n_bands": int((bands["band"] >= 0).sum()), "audit_fraction": cfg.memorization.audit_fraction,
        "rate_floor": cfg.memorization.rate_floor, "n_models": sum(p.n_models for p in plans),
        "max_models": cfg.memorization.max_models, "models_wanted": sum(p.wanted for p in plans),
        "target_half_width": cfg.memorization.half_width,
        "expected_half_width": max(p.expected_half_width for p in plans),
        "plan": "\n".join(p.describe(timed=False) for p in plans), "created_at": now()}])


def memorization_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Train the shadow models and write mem scores with intervals and states, `memorized` and
    `memorized_uncertain` flags, `influence`, the estimated total of memorized images (with the recall of the
    flags), the per-band audit and the proxy-calibration report."""
    t0 = time.perf_counter()
    store.init()
    mc = cfg.memorization
    data = load_training_arrays(store, cfg, progress)
    proxies = _proxies(store, data)
    n = len(data.train_ids)
    if mc.method == "ploo":
        bands, audit, extended = None, np.zeros(0, np.int64), 0
        phases = [_run_phase(store, data, cfg, None, cfg.seed, "pLOO", progress)]
    else:
        shortlist, bands, audit = _selection(store, data, cfg)
        phases = [_run_phase(store, data, cfg, np.union1d(shortlist, audit), cfg.seed,
                             PHASE_1, progress)]
        extended, more = _extension(bands, audit, phases[0].scores, cfg)
        if len(more):
            phases.append(_run_phase(store, data, cfg, more, cfg.seed + 1, _phase_2_name(extended), progress))
    scores = pd.concat([p.scores for p in phases], ignore_index=True).sort_values("index", kind="stable")
    scores["mem_state"] = memorization_states(scores, mc.threshold).to_numpy()
    sampling = _sampling(n, bands, audit, extended)
    scores = scores.merge(sampling[["mem_sampled"]], left_on="index", right_index=True)
    scored = np.zeros(n, bool)
    scored[scores["index"].to_numpy()] = True
    mem = np.full(n, np.nan)
    mem[scores["index"].to_numpy()] = scores["mem"].to_numpy()
    at_threshold = np.nan_to_num(mem, nan=-np.inf) >= mc.threshold
    noise = np.zeros(n)
    noise[scores["index"].to_numpy()] = classification_noise(scores["mem"].to_numpy(), scores["mem_low"].to_numpy(),
                                                             scores["mem_high"].to_numpy(), mc.threshold)
    band_frame = band_table(proxies["apb"].to_numpy(), bands if bands is not None else np.zeros(n, np.int64), audit,
                            scored, at_threshold, extended, noise)
    flags = _state_flags(scores, mc.threshold)
    total = estimate_total(band_frame, flagged=int((flags["kind"] == "memorized").sum()))
    calibration = proxy_calibration(proxies, np.nan_to_num(mem), sampling["mem_weight"].to_numpy(), at_threshold,
                                    k=int(round(total.total)), seed=cfg.seed)
    run_id = phases[0].run_id
    estimates = _estimates(run_id, cfg, scores, sampling, band_frame, total, extended, [p.plan for p in phases],
                           phases[0].design.method)
    updates = pd.DataFrame({"sample_id": data.train_ids, **{c: sampling[c].to_numpy() for c in sampling.columns}})
    note = NOT_A_CANDIDATE if mc.method == "ploo_improved" else "not scored"
    influence, tested, influence_note = _significant_influence(phases, cfg)
    estimates = estimates.assign(influence_q=mc.influence_q, influence_tested=tested,
                                 influence_pairs=len(influence), influence_note=influence_note)
    save_memorization(store, mc.method, note, run_id, scores, updates, {
        "flags": flags, "influence": influence, "memorization_estimates": estimates,
        "memorization_bands": band_frame.assign(run_id=run_id), "proxy_calibration": calibration.assign(run_id=run_id)})
    seconds = time.perf_counter() - t0
    accs = []
    for phase in phases:
        test_accs = shadow_rows.run_test_accuracies(store, phase.run_id)
        accs.append(float(test_accs.mean()))
        finish_run(store, phase.run_id, seconds=seconds, test_acc=accs[-1],
                   message=f"{phase.design.n_models} models ({phase.trained} trained, {phase.reused} reused), "
                           f"{len(phase.design.candidates)} points scored")
    row = estimates.iloc[0]
    return StageReport("memorization", seconds, {
        "method": METHOD_NAMES[phases[0].design.method], "models": int(row["n_models"]),
        "models_wanted": int(row["models_wanted"]),
        "trained": sum(p.trained for p in phases), "reused": sum(p.reused for p in phases),
        "scored": int(row["n_scored"]), "candidates": int(row["n_shortlist"]), "audit": int(row["n_audit"]),
        "extension": int(row["n_extension"]), "bands_extended": extended, "memorized": int(row["n_memorized"]),
        "memorized_certain": int(row["n_memorized_certain"]), "uncertain": int(row["n_uncertain"]),
        "not_memorized": int(row["n_not_memorized"]), "not_scored": int(row["n_not_scored"]),
        "est_total": total.total, "est_low": total.low, "est_high": total.high, "recall": total.recall,
        "recall_low": total.recall_low, "recall_high": total.recall_high,
        "influence_pairs": len(influence), "influence_tested": tested, "influence_q": mc.influence_q,
        "influence_note": influence_note, "shadow_test_acc": float(np.mean(accs))})


def _loo_points(store: Store, data: TrainingArrays, cfg: AuditConfig) -> np.ndarray:
    """Indices of the LOO points: memorization.loo_points, or else loo_sample scored points drawn at random from five
    strata of mem (never chosen by disagreement, so the validation is not biased towards the estimator's errors)."""
    mc = cfg.memorization
    position = pd.Series(np.arange(len(data.train_ids)), index=data.train_ids)
    if mc.loo_points:
        missing = [p for p in mc.loo_points if p not in position.index]
        if missing:
            raise ValueError(f"memorization.loo_points names training samples that do not exist: {missing[:5]}")
        return position[mc.loo_points].to_numpy()
    mem = mem_scores(store).reindex(data.train_ids)
    if mem.isna().all():
        raise ValueError("the loo stage needs mem scores to draw its points from (run the memorization stage first), "
                         "or sample ids in memorization.loo_points")
    return stratified_pick(mem.to_numpy(dtype=np.float64), mc.loo_sample, 5, cfg.seed)


def loo_stage(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> StageReport:
    """Exact leave-one-out on memorization.loo_points (or a mem-stratified random sample): R models with every
    point, shared, and R without each; `loo_scores`."""
    t0 = time.perf_counter()
    data = load_training_arrays(store, cfg, progress)
    points = _loo_points(store, data, cfg)
    design = loo_design(len(data.train_ids), points, cfg.memorization.loo_models, seed=cfg.seed)
    notice(progress, f"exact LOO: {design.n_models} models ({cfg.memorization.loo_models} shared with every point, "
                     f"{cfg.memorization.loo_models} without each of {len(points)} points)")
    run_id, trained, reused, train_correct, _ = run_design(store, design, data, cfg, "loo", progress)
    frame = _score_frame(loo_scores(train_correct, design), data, "loo", run_id)
    save_loo_scores(store, run_id, frame.drop(columns=["index", "mem_method", "mem_run_id"]))
    seconds = time.perf_counter() - t0
    finish_run(store, run_id, seconds=seconds, message=f"{design.n_models} models for {len(points)} points")
    return StageReport("loo", seconds, {"points": len(points), "models": design.n_models, "trained": trained,
                                        "reused": reused})
