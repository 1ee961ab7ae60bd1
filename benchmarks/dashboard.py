"""Dashboard speed on a synthetic audit database of 100,000 samples (scores, flags of every kind, dynamics, neighbours,
pairs, clusters, influence, decisions), page by page.

`build_synthetic` writes a realistic database with numpy/pandas in bulk (one DuckDB connection, one INSERT per
table) plus a folder of 200 small PNG files beside it that the samples' paths reuse round-robin. `measure` times, for
each page, (a) the page's main queries called directly and (b) a first render with Streamlit's AppTest (wall time of
`AppTest.from_file(...).run()`, which includes Streamlit's script overhead and decoding the thumbnails: the thumbnail
cache is cleared before every render), median of 3 runs after one warm-up, and prints them against the targets
(Review < 1 s, Point detail < 1 s, Overview < 2 s).

`--clicks` times Review in headless chromium instead (Playwright, /usr/bin/chromium): tick a tile (from the click to
its box and the pick count showing it: a tick runs no script, app.picks), next page, a filter change and Apply (from
the click to the end of the rerun it caused), against the targets 0.3 / 1 / 1 / 1 s.

Usage: python benchmarks/dashboard.py [--n 100000] [--keep DB] [--repeats 3] [--clicks [--clicks-db AUDIT.duckdb]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_stages import _table

from auditor.memorization import memorization_queries
from auditor.review import point_queries, queries
from auditor.store import job_queries
from auditor.config import load_config
from auditor.review.export import plan_export
from auditor.review.queries import ReviewFilter
from auditor.review.reviews import current_decisions, decision_counts, decision_history
from auditor.store.database import Store

PAGES = Path(__file__).resolve().parent.parent / "app" / "views"
N_IMAGES = 200
IMAGE_SIZE = 32
SEEDS = 3            # seed runs behind the ApB scores (the standard profile trains 3)
EPOCHS = 15          # epochs per seed run (standard profile): one 'batch' dynamics record per sample and epoch
BATCH = 128
N_MODELS = 64        # shadow models of the memorization design
MEM_THRESHOLD = 0.25
EMBEDDER = "model:train-syn-s0"
APB_RUN, MEM_RUN, DETECT_RUN, EMBED_RUN, INGEST_RUN = ("apb-syn", "mem-ploo_improved-syn", "detect-syn",
                                                       "embed-model:train-syn-s0", "ingest-syn")
DESIGN = "ploo_improved-syn"


# --------------------------------------------------------------------------------------------------- the generator


def _images(folder: Path, rng: np.random.Generator) -> list[str]:
    """N_IMAGES random 32x32 RGB PNG files (smooth blobs plus noise, so PNG has something to compress), written once;
    plus one corrupt file for the unreadable samples (last in the list)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for i in range(N_IMAGES):
        path = folder / f"img_{i:03d}.png"
        if not path.exists():
            cx, cy, r = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(4, 12)
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2)[..., None] * rng.integers(0, 256, 3)
            noise = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3))
            Image.fromarray(np.clip(blob + noise, 0, 255).astype(np.uint8), "RGB").save(path)
        paths.append(str(path))
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return [*paths, str(corrupt)]


def _hex(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([f"{v:032x}" for v in rng.integers(0, 2 ** 63, n, dtype=np.int64)], dtype=object)


def _config_json(n_train: int, candidates: int) -> str:
    cfg = load_config(profile="standard").to_dict()
    cfg["train"].update(seeds=SEEDS, epochs=EPOCHS)
    cfg["data"]["image_size"] = IMAGE_SIZE
    cfg["candidates"].update(fraction=round(candidates / max(n_train, 1), 4), max=candidates)
    cfg["memorization"]["threshold"] = MEM_THRESHOLD
    return json.dumps(cfg, sort_keys=True)


def _twin_details(a: np.ndarray, b: np.ndarray, kinds: np.ndarray, sim: np.ndarray, conflicting: np.ndarray,
                  flag_kind: str, threshold: float, roles: tuple[str, str] | None) -> pd.DataFrame:
    """Flags on both sides of disjoint pairs, with the JSON detail duplicates.py writes (one twin each)."""
    rows = []
    for me, other, role in ((a, b, None if roles is None else roles[0]), (b, a, None if roles is None else roles[1])):
        for sid, twin, kind, s, c in zip(me, other, kinds, sim, conflicting):
            exact = kind.startswith("exact")
            detail = {**({"role": role} if roles else {}), "twin": twin, "pair_kind": kind,
                      "similarity": round(float(s), 6), "exact": exact, "conflicting": bool(c), "twins": 1,
                      "conflicting_twins": int(c), "threshold": None if exact else round(threshold, 6),
                      "threshold_method": None if exact else "nn_fdr"}
            rows.append((sid, flag_kind, float(s), json.dumps(detail)))
    return pd.DataFrame(rows, columns=["sample_id", "kind", "score", "detail"])


def _oddities(rng: np.random.Generator, ids: np.ndarray, train_ids: np.ndarray) -> pd.DataFrame:
    """`outlier` flags on 0.5% of the training images and `image_quality` flags on 0.5% of all images, with the
    summaries the detectors write (their own generator, so the other frames draw what they drew before)."""
    far = rng.choice(train_ids, size=max(1, len(train_ids) // 200), replace=False)
    distance = rng.uniform(0.93, 1.2, len(far))
    poor = rng.choice(ids, size=max(1, len(ids) // 200), replace=False)
    issue = rng.choice(["dark", "bright", "low_contrast", "blurry"], len(poor))
    return pd.concat([
        pd.DataFrame({"sample_id": far, "kind": "outlier", "score": distance,
                      "detail": [json.dumps({"summary": f"mean cosine distance {d:.3f} to its 10 nearest neighbours; "
                                                        "typical 0.41 to 0.78, cut 0.926"}) for d in distance]}),
        pd.DataFrame({"sample_id": poor, "kind": "image_quality", "score": 1.0,
                      "detail": [json.dumps({"issues": [i], "summary": f"{i.replace('_', ' ')}: beyond the "
                                                                        "dataset's 5-95% range"}) for i in issue]})],
        ignore_index=True)


def _frames(path: Path, n: int, seed: int, n_classes: int, train_fraction: float) -> dict[str, pd.DataFrame]:
    """Every table of the synthetic audit, as DataFrames keyed by table name."""
    rng = np.random.default_rng(seed)
    files = _images(path.parent / f"{path.stem}_images", rng)
    t0 = datetime(2026, 1, 5, 9, 0, 0)
    labels = np.array([f"class_{k:02d}" for k in range(n_classes)], dtype=object)

    # samples: ids in manifest order, train_fraction train / the rest test at random, mildly imbalanced classes
    ids = np.array([f"syn_{i:06d}" for i in range(n)], dtype=object)
    is_train = np.zeros(n, bool)
    is_train[rng.permutation(n)[: int(round(train_fraction * n))]] = True
    weights = 1.0 / (1.0 + np.arange(n_classes) / n_classes)
    label_index = rng.choice(n_classes, n, p=weights / weights.sum())
    path_index = np.arange(n) % N_IMAGES
    unreadable = rng.choice(n, min(5, n), replace=False)
    path_index[unreadable] = N_IMAGES  # the corrupt file
    split = np.where(is_train, "train", "test").astype(object)
    samples = pd.DataFrame({
        "sample_id": ids, "split": split, "label": labels[label_index],
        "path": np.asarray(files, dtype=object)[path_index], "width": IMAGE_SIZE, "height": IMAGE_SIZE, "mode": "RGB",
        "file_hash": _hex(rng, n), "pixel_hash": _hex(rng, n), "label_index": label_index.astype(np.int32),
        "source": [f"manifest.csv:{i + 2}" for i in range(n)]})
    train_idx, test_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    train_ids, test_ids = ids[train_idx], ids[test_idx]
    n_train = len(train_idx)
    classes = pd.DataFrame({"label_index": np.arange(n_classes, dtype=np.int32), "label": labels,
                            "n_train": np.bincount(label_index[train_idx], minlength=n_classes).astype(np.int32)})
    problems = pd.DataFrame({"source": samples["source"].to_numpy()[unreadable], "sample_id": ids[unreadable],
                             "reason": "cannot identify image file (truncated or not an image)", "code": "unreadable",
                             "severity": "error", "action": "flagged unreadable, left out of training",
                             "stage": "ingest"})

    # runs: ingest, the ApB run with SEEDS seed runs, memorization, embeddings, detectors
    n_candidates = int(round(0.10 * n))
    config = _config_json(n_train, n_candidates)
    seed_runs = [f"train-syn-s{s}" for s in range(SEEDS)]
    run_rows = [(INGEST_RUN, "ingest", None, None, t0, 30.0, f"{n} samples, {len(unreadable)} problems from "
                 f"{path.parent}/manifest.csv", None, None, None)]
    start = t0 + timedelta(minutes=1)
    for s, run_id in enumerate(seed_runs):
        run_rows.append((run_id, "train", APB_RUN, s, start + timedelta(minutes=10 * s), 600.0, None, True,
                         0.97 - 0.01 * s, 0.71 + 0.005 * s))
    run_rows += [(APB_RUN, "apb", None, 0, start, 1900.0, f"{n_train} scored, {n_candidates} memorized candidates",
                  True, 0.97, 0.71),
                 (MEM_RUN, "memorization", None, 0, start + timedelta(hours=1), 7200.0,
                  f"{N_MODELS} shadow models", None, None, None),
                 (EMBED_RUN, "embeddings", None, 0, start + timedelta(hours=3), 120.0, None, None, None, None),
                 (DETECT_RUN, "detectors", None, 0, start + timedelta(hours=3, minutes=5), 60.0, None, None, None,
                  None)]
    runs = pd.DataFrame(run_rows, columns=["run_id", "kind", "parent_run_id", "seed", "started_at", "seconds",
                                           "message", "converged", "train_acc", "test_acc"])
    runs = runs.assign(config_json=config, versions_json=json.dumps({"memaudit": "synthetic"}),
                       code_version="synthetic", device="cpu", status="done",
                       finished_at=runs["started_at"] + pd.to_timedelta(runs["seconds"], unit="s"))
    runs["seed"] = runs["seed"].astype("Int64")
    run_inputs = pd.DataFrame({"run_id": APB_RUN, "input_run_id": seed_runs, "role": "seed"})
    epoch = np.arange(1, EPOCHS + 1)
    epochs = pd.concat([pd.DataFrame({
        "run_id": run_id, "epoch": epoch.astype(np.int32), "train_acc": 0.97 - 0.6 * np.exp(-epoch / 3) - 0.01 * s,
        "test_acc": 0.71 - 0.4 * np.exp(-epoch / 3), "train_loss": 2.3 * np.exp(-epoch / 4),
        "test_loss": 1.0 + 1.3 * np.exp(-epoch / 4), "seconds": 40.0}) for s, run_id in enumerate(seed_runs)])

    # scores of the training images: ApB on a grid of SEEDS * EPOCHS records, mostly learned early
    records = SEEDS * EPOCHS
    apb = np.round(rng.beta(5.0, 1.2, n_train) * records) / records
    first_learned = np.where(apb > 0.15, np.clip(np.round((1 - apb) * EPOCHS + rng.normal(0, 1, n_train)), 1, EPOCHS),
                             np.nan)
    confidence = np.clip(apb * 0.9 + rng.normal(0, 0.05, n_train), 0, 1)
    order = np.lexsort((train_ids, apb))
    candidate = np.zeros(n_train, bool)
    candidate[order[:n_candidates]] = True
    mem = np.where(candidate, np.clip(np.round(rng.normal(0.1, 0.25, n_train) * 32) / 32, -1, 1), np.nan)
    half = 0.15 + 0.1 * rng.random(n_train)
    n_in = rng.integers(N_MODELS // 2 - 4, N_MODELS // 2 + 5, n_train)
    scores = pd.DataFrame({
        "sample_id": train_ids, "run_id": APB_RUN, "apb": apb, "first_learned": first_learned,
        "forgetting_events": rng.poisson(1.5 * (1 - apb)).astype(float), "confidence": confidence,
        "variability": np.clip(rng.normal(0.15, 0.05, n_train), 0, 0.5), "el2n": np.clip(1.2 * (1 - confidence), 0, 2),
        "n_records": records, "n_seeds": SEEDS, "converged": True, "mem": mem,
        "mem_low": np.where(candidate, np.clip(mem - half, -1, 1), np.nan),
        "mem_high": np.where(candidate, np.clip(mem + half, -1, 1), np.nan),
        "mem_n_in": pd.Series(n_in, dtype="Int32").where(candidate),
        "mem_n_out": pd.Series(N_MODELS - n_in, dtype="Int32").where(candidate),
        "mem_method": "ploo_improved",
        "mem_note": np.where(candidate, None, "not a candidate (ApB above cut-off)").astype(object),
        "mem_run_id": MEM_RUN})
    memorized = candidate & (mem >= MEM_THRESHOLD) & (scores["mem_low"].to_numpy() > 0)
    uncertain = candidate & ~memorized & ~(scores["mem_high"].to_numpy() < MEM_THRESHOLD)
    scores["mem_state"] = np.select([memorized, uncertain, candidate], ["memorized", "uncertain", "not_memorized"],
                                    None)

    # dynamics: one 'batch' record per training image, seed run and epoch, written in step order (as training does)
    steps = -(-n_train // BATCH)
    dyn = []
    for s, run_id in enumerate(seed_runs):
        for e in range(EPOCHS):
            perm = rng.permutation(n_train)
            p = np.clip(apb[perm] * (0.5 + 0.5 * (e + 1) / EPOCHS) + rng.normal(0, 0.1, n_train), 0.001, 0.999)
            dyn.append(pd.DataFrame({
                "run_id": run_id, "sample_id": train_ids[perm],
                "step": (e * steps + np.arange(n_train) // BATCH).astype(np.int32), "epoch": np.int32(e + 1),
                "phase": "batch", "correct": p > 0.5, "loss": (-np.log(p)).astype(np.float32),
                "p_label": p.astype(np.float32), "el2n": (1.2 * (1 - p)).astype(np.float32)}))
    dynamics = pd.concat(dyn, ignore_index=True)

    # predictions of the first seed run on every image
    p_label = np.clip(np.where(is_train, 0.9, 0.65) + rng.normal(0, 0.2, n), 0.01, 0.99)
    wrong = rng.random(n) > np.where(is_train, 0.97, 0.71)
    pred_index = np.where(wrong, (label_index + rng.integers(1, n_classes, n)) % n_classes, label_index)
    predictions = pd.DataFrame({
        "run_id": seed_runs[0], "sample_id": ids, "split": split, "pred_index": pred_index.astype(np.int32),
        "pred_label": labels[pred_index], "p_label": np.where(wrong, p_label / 3, p_label).astype(np.float32),
        "p_pred": np.where(wrong, 1 - p_label / 2, p_label).astype(np.float32)})

    # memorization design and shadow models
    shadow_designs = pd.DataFrame([{
        "design_id": DESIGN, "run_id": MEM_RUN, "method": "ploo_improved", "n_models": N_MODELS, "n_points": n_train,
        "n_candidates": n_candidates, "fraction": 0.5, "shard_seed": 0, "config_json": config,
        "created_at": t0 + timedelta(hours=1)}])
    shadow_models = pd.DataFrame({
        "model_id": [f"{DESIGN}-m{i:05d}" for i in range(N_MODELS)], "design_id": DESIGN, "method": "ploo_improved",
        "model_index": np.arange(N_MODELS, dtype=np.int32), "shard_seed": 0,
        "seed": rng.integers(0, 2 ** 31, N_MODELS), "block": (np.arange(N_MODELS) // 8).astype(np.int32),
        "n_in": np.int32(n_train // 2), "epochs_run": np.int32(EPOCHS), "shard_train_acc": rng.uniform(0.9, 0.98, N_MODELS),
        "test_acc": rng.uniform(0.62, 0.7, N_MODELS), "batched": True, "seconds": 110.0,
        "finished_at": t0 + timedelta(hours=2)})

    # influence: the strongest test points of every memorized image (about 8 each)
    mem_ids = train_ids[memorized]
    per = rng.integers(4, 13, len(mem_ids))
    infl_score = np.round(rng.choice([-1, 1], per.sum()) * rng.uniform(0.2, 1, per.sum()) * 32) / 32
    influence = pd.DataFrame({"train_id": np.repeat(mem_ids, per), "test_id": rng.choice(test_ids, per.sum()),
                              "score": infl_score, "n_in": np.int32(N_MODELS // 2), "n_out": np.int32(N_MODELS // 2),
                              "low": infl_score - 0.2, "high": infl_score + 0.2, "run_id": MEM_RUN})

    # embedder, map, neighbours (k = 10 training images per image, mostly of its class), clusters
    embedders = pd.DataFrame([{"embedder_id": EMBEDDER, "kind": "model", "model_name": "mlp", "weights": "synthetic",
                               "dim": 128, "input_size": IMAGE_SIZE, "fallback_reason": None, "run_id": EMBED_RUN,
                               "created_at": t0 + timedelta(hours=3)}]).astype({"fallback_reason": object})
    centers = rng.normal(0, 3, (n_classes, 2))
    xy = centers[label_index] + rng.normal(0, 1, (n, 2))
    embedding_map = pd.DataFrame({"embedder_id": EMBEDDER, "sample_id": ids, "x": xy[:, 0].astype(np.float32),
                                  "y": xy[:, 1].astype(np.float32)})
    k = 10
    train_by_class = [train_idx[label_index[train_idx] == c] for c in range(n_classes)]
    query = np.concatenate([train_idx, test_idx])  # training images first, then test images (as the stage writes)
    neighbor = rng.choice(train_idx, (len(query), k))
    same = rng.random((len(query), k)) < 0.9
    for c, members in enumerate(train_by_class):
        rows = np.flatnonzero(label_index[query] == c)
        if len(members) and len(rows):
            pick = same[rows]
            neighbor[rows[:, None].repeat(k, 1)[pick], np.nonzero(pick)[1]] = rng.choice(members, pick.sum())
    similarity = np.sort(rng.uniform(0.7, 0.99, (len(query), k)), axis=1)[:, ::-1]
    neighbors = pd.DataFrame({"embedder_id": EMBEDDER, "sample_id": np.repeat(ids[query], k),
                              "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(query)),
                              "neighbor_id": ids[neighbor.ravel()],
                              "similarity": similarity.ravel().astype(np.float32)})

    # long tail (~3% of all images): training images in tiny clusters of their class
    n_tail = int(round(0.03 * n))
    tail = np.zeros(n_train, bool)
    tail[rng.choice(n_train, min(n_tail, n_train), replace=False)] = True
    cluster = rng.integers(0, 8, n_train)
    tail_rank = pd.Series(tail).groupby(label_index[train_idx]).cumsum().to_numpy()
    cluster = np.where(tail, 100 + tail_rank // 3, cluster)
    density = np.where(tail, rng.uniform(0.4, 0.7, n_train), rng.uniform(0.7, 0.98, n_train))
    clusters = pd.DataFrame({"sample_id": train_ids, "embedder_id": EMBEDDER,
                             "label": labels[label_index[train_idx]], "cluster": cluster.astype(np.int32),
                             "density": density.astype(np.float32)})
    clusters["cluster_size"] = clusters.groupby(["label", "cluster"])["sample_id"].transform("size").astype(np.int32)
    class_size = classes["n_train"].to_numpy()[label_index[train_idx]]
    tail_rows = clusters[tail]
    long_tail = pd.DataFrame({
        "sample_id": tail_rows["sample_id"].to_numpy(), "kind": "long_tail",
        "score": rng.uniform(0.1, 0.9, tail.sum()),
        "detail": [json.dumps({"reasons": ["tiny_cluster", "low_density"] if size <= 2 else ["tiny_cluster"],
                               "cluster": int(c), "cluster_size": int(size), "class_size": int(cs),
                               "density": round(float(d), 6), "density_percentile": round(float(d) / 10, 4)})
                   for c, size, cs, d in zip(tail_rows["cluster"], tail_rows["cluster_size"], class_size[tail],
                                             tail_rows["density"])]})

    # duplicates (~1% of images: disjoint pairs of training images) and leaks (~1%: training/test pairs)
    n_pairs = max(1, int(round(0.005 * n)))
    shuffled = rng.permutation(train_ids)
    dup_a, dup_b = shuffled[:n_pairs], shuffled[n_pairs:2 * n_pairs]
    leak_a, leak_b = shuffled[2 * n_pairs:3 * n_pairs], rng.permutation(test_ids)[:n_pairs]
    label_of = dict(zip(ids, samples["label"]))
    pair_frames, twin_flags = [], []
    for a, b, exact_kind, near_kind, flag_kind, threshold, roles in (
            (dup_a, dup_b, "exact_duplicate", "near_duplicate", "duplicate", 0.991764, None),
            (leak_a, leak_b, "exact_leak", "leak", "leaked", 0.988431, ("train", "test"))):
        exact = rng.random(len(a)) < 0.2
        kind = np.where(exact, exact_kind, near_kind).astype(object)
        sim = np.where(exact, 1.0, rng.uniform(threshold, 0.9999, len(a)))
        conflicting = np.array([label_of[x] != label_of[y] for x, y in zip(a, b)]) & (rng.random(len(a)) < 0.9)
        pair_frames.append(pd.DataFrame({"a_id": a, "b_id": b, "kind": kind, "similarity": sim,
                                         "conflicting": conflicting, "embedder_id": EMBEDDER, "run_id": DETECT_RUN}))
        twin_flags.append(_twin_details(a, b, kind, sim, conflicting, flag_kind, threshold, roles))
    pairs = pd.concat(pair_frames, ignore_index=True)
    thresholds = pd.DataFrame({
        "run_id": DETECT_RUN, "kind": ["duplicate", "leaked", "pixel_duplicate", "pixel_leak"],
        "embedder_id": EMBEDDER, "value": [0.991764, 0.988431, 0.991186, 0.989663], "method": "nn_fdr",
        "detail": json.dumps({"c": 4.0, "floor_quantile": 0.99, "binding": "mad", "n": n_train})})

    # mislabeled (~5% of images): training images, half of them among the low-ApB candidates
    n_mis = min(int(round(0.05 * n)), n_train)
    pool = np.concatenate([rng.permutation(np.flatnonzero(candidate))[: n_mis // 2],
                           rng.permutation(np.flatnonzero(~candidate))[: n_mis - n_mis // 2]])
    suggested = (label_index[train_idx[pool]] + rng.integers(1, n_classes, len(pool))) % n_classes
    mis_details = []
    for i, sug in zip(pool, suggested):
        detail = {"given": labels[label_index[train_idx[i]]], "suggested": labels[sug],
                  "self_confidence": round(float(rng.uniform(0, 0.3)), 4),
                  "knn_disagreement": round(float(rng.uniform(0.5, 1)), 4), "knn_label": labels[sug],
                  "disagreeing_neighbors": int(rng.integers(5, 11)), "neighbors": k}
        if candidate[i]:
            cross = round(float(rng.uniform(-0.5, 0.5)), 4)
            detail |= {"memorization": round(float(mem[i]), 4), "cross_influence": cross,
                       "influence_reading": ("mislabeled" if cross < 0 else "rare_but_useful") if memorized[i]
                       else None}
        mis_details.append(json.dumps(detail))
    mislabeled = pd.DataFrame({"sample_id": train_ids[pool], "kind": "mislabeled",
                               "score": rng.uniform(0.3, 1, len(pool)), "detail": mis_details})
    oddities = _oddities(np.random.default_rng(seed + 1), ids, train_ids)

    cand_rank = np.empty(n_train, int)
    cand_rank[order] = np.arange(1, n_train + 1)
    cand = np.flatnonzero(candidate)
    flags = pd.concat([
        pd.DataFrame({"sample_id": train_ids[cand], "kind": "memorized_candidate", "score": 1 - apb[cand],
                      "detail": [f"ApB {apb[i]:.2f} (rank {cand_rank[i]} of {n_train}, among the lowest "
                                 f"{n_candidates / n_train:.0%} by ApB); "
                                 + ("never learned" if np.isnan(first_learned[i]) else
                                    f"learned for good at epoch {first_learned[i]:g}")
                                 + f"; {scores['forgetting_events'].iat[i]:g} forgetting events" for i in cand],
                      "run_id": APB_RUN}),
        pd.DataFrame({"sample_id": train_ids[memorized], "kind": "memorized", "score": mem[memorized],
                      "detail": [f"mem {m:.2f} (95% CI {lo:.2f} to {hi:.2f}) from {a} models with it and {b} without "
                                 f"(pLOO-improved); threshold {MEM_THRESHOLD:g}"
                                 for m, lo, hi, a, b in scores.loc[memorized, ["mem", "mem_low", "mem_high",
                                                                              "mem_n_in", "mem_n_out"]].itertuples(
                                     index=False)],
                      "run_id": MEM_RUN}),
        pd.DataFrame({"sample_id": train_ids[uncertain], "kind": "memorized_uncertain", "score": mem[uncertain],
                      "detail": "the interval straddles the threshold: more shadow models would decide",
                      "run_id": MEM_RUN}),
        pd.concat([*twin_flags, long_tail, mislabeled, oddities], ignore_index=True).assign(run_id=DETECT_RUN),
        pd.DataFrame({"sample_id": ids[unreadable], "kind": "unreadable", "score": 1.0,
                      "detail": "cannot identify image file (truncated or not an image)", "run_id": INGEST_RUN})],
        ignore_index=True)

    # reviews: a few thousand decisions on flagged images (2% of images), some re-decided, some undone
    flagged_ids = flags.loc[flags["kind"] != "memorized_candidate", "sample_id"].unique()
    n_dec = min(int(round(0.02 * n)), len(flagged_ids))
    decided = rng.choice(flagged_ids, n_dec, replace=False)
    redecided = rng.choice(decided, n_dec // 10, replace=False)
    targets = np.concatenate([decided, redecided])
    action = rng.choice(["keep", "remove", "relabel"], len(targets), p=[0.5, 0.3, 0.2]).astype(object)
    when = t0 + timedelta(days=1) + pd.to_timedelta(np.sort(rng.uniform(0, 3 * 86400, len(targets))), unit="s")
    reviews = pd.DataFrame({"decision_id": _hex(rng, len(targets)), "sample_id": targets, "action": action,
                            "new_label": np.where(action == "relabel", labels[rng.integers(0, n_classes, len(targets))],
                                                  None).astype(object),
                            "note": np.where(rng.random(len(targets)) < 0.3, "checked by eye", None).astype(object),
                            "reviewer": rng.choice(["ana", "ben", "chen"], len(targets)), "decided_at": when,
                            "undoes": None}).astype({"undoes": object})
    undone = reviews.sample(frac=0.05, random_state=seed)
    undos = pd.DataFrame({"decision_id": _hex(rng, len(undone)), "sample_id": undone["sample_id"].to_numpy(),
                          "action": "undo", "new_label": None, "note": None, "reviewer": "ana",
                          "decided_at": reviews["decided_at"].max() + pd.to_timedelta(np.arange(1, len(undone) + 1),
                                                                                      unit="s"),
                          "undoes": undone["decision_id"].to_numpy()}).astype(
        {"new_label": object, "note": object})
    reviews = pd.concat([reviews, undos], ignore_index=True)
    jobs = pd.DataFrame([{"job_id": "job-syn-1", "kind": "run", "run_id": DETECT_RUN, "status": "done", "done": 5,
                          "total": 5, "unit": "stages", "eta_s": 0.0, "started_at": t0, "updated_at": t0,
                          "finished_at": t0 + timedelta(hours=3, minutes=6), "message": "finished", "pid": 1}])
    return {"samples": samples, "classes": classes, "problems": problems, "runs": runs, "run_inputs": run_inputs,
            "epochs": epochs, "dynamics": dynamics, "predictions": predictions, "scores": scores, "flags": flags,
            "shadow_designs": shadow_designs, "shadow_models": shadow_models, "influence": influence,
            "embedders": embedders, "embedding_map": embedding_map, "neighbors": neighbors, "pairs": pairs,
            "thresholds": thresholds, "clusters": clusters, "reviews": reviews, "jobs": jobs}


def build_synthetic(path: str | Path, n: int = 100_000, seed: int = 0, n_classes: int | None = None, *,
                    train_fraction: float = 0.8, skip: Collection[str] = ()) -> dict[str, int]:
    """Write a fresh synthetic audit database of `n` samples at `path` (100 classes, 10 below 5,000 samples) with
    its PNG files in `<stem>_images/` beside it, leaving out the `skip` tables (for a caller that computes them);
    returns the rows written per table."""
    path = Path(path)
    if path.exists():
        path.unlink()
    n_classes = n_classes or (100 if n >= 5000 else 10)
    frames = {table: frame for table, frame in _frames(path, n, seed, n_classes, train_fraction).items()
              if table not in skip}
    store = Store(path)
    store.init()
    with store.connect() as con:
        con.execute("SET enable_progress_bar = false")
        con.execute("BEGIN TRANSACTION")
        for table, frame in frames.items():
            con.register("_incoming", frame)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
            con.unregister("_incoming")
        con.execute("COMMIT")
    store.refresh_summaries()  # as the stages' writes of flags and samples do
    with store.connect() as con:
        con.execute("CHECKPOINT")
    return {table: len(frame) for table, frame in frames.items()}


# ----------------------------------------------------------------------------------------------------- measuring


def page_queries(store: Store, point_id: str) -> dict[str, list[tuple[str, Callable[[], object]]]]:
    """The queries each page makes on its first render, in order (the main ones; evidence strips included)."""
    embedder = lambda: queries.map_embedder(store)["embedder_id"]

    def review(where: ReviewFilter, sort: str, offset: int) -> list[tuple[str, Callable[[], object]]]:
        return [("flag_kinds", lambda: queries.flag_kinds(store)),
                ("review_count (all)", lambda: queries.review_count(store)),
                ("flag_counts", lambda: queries.flag_counts(store)),
                ("class_labels", lambda: queries.class_labels(store)),
                ("review_count (filter)", lambda: queries.review_count(store, where=where)),
                ("review_page", lambda: queries.review_page(store, sort=sort, limit=24, offset=offset, where=where)),
                ("detector_thresholds", lambda: queries.detector_thresholds(store))]

    return {
        "Overview": [("running_jobs", lambda: job_queries.running_jobs(store)),
                     ("dataset_counts", lambda: queries.dataset_counts(store)),
                     ("score_run", lambda: queries.score_run(store)),
                     ("problem_count", lambda: queries.problem_count(store)),
                     ("problems", lambda: queries.problems(store, 500)),
                     ("accuracy_curves", lambda: queries.accuracy_curves(store)),
                     ("apb_histogram", lambda: queries.apb_histogram(store)),
                     ("memorization_run", lambda: memorization_queries.memorization_run(store)),
                     ("mem_histogram", lambda: memorization_queries.mem_histogram(store)),
                     ("mem_scatter", lambda: memorization_queries.mem_scatter(store, 5000)),
                     ("flag_counts", lambda: queries.flag_counts(store)),
                     ("flag_class_counts", lambda: queries.flag_class_counts(store)),
                     ("triage_counts", lambda: queries.triage_counts(store)),
                     ("detector_thresholds", lambda: queries.detector_thresholds(store)),
                     ("map_embedder", lambda: queries.map_embedder(store)),
                     ("embedding_map", lambda: queries.embedding_map(store, embedder(), 5000))],
        "Review": review(ReviewFilter(), "apb_asc", 0),
        "Review flag=mislabeled": review(ReviewFilter(flag="mislabeled"), "score_desc", 0),
        "Review page 100": review(ReviewFilter(), "apb_asc", 99 * 24),
        "Point detail": [("sample_detail", lambda: queries.sample_detail(store, point_id)),
                         ("sample_loo", lambda: point_queries.sample_loo(store, point_id)),
                         ("class_labels", lambda: queries.class_labels(store)),
                         ("decision_history", lambda: decision_history(store, point_id)),
                         ("sample_dynamics", lambda: point_queries.sample_dynamics(store, point_id)),
                         ("influenced_tests", lambda: point_queries.influenced_tests(store, point_id)),
                         ("sample_neighbors", lambda: queries.sample_neighbors(store, point_id)),
                         ("detector_thresholds", lambda: queries.detector_thresholds(store)),
                         ("cluster_members", lambda: queries.cluster_members(store, point_id))],
        "Decisions": [("decision_counts", lambda: decision_counts(store)),
                      ("current_decisions", lambda: current_decisions(store, limit=50)),
                      ("decision_history", lambda: decision_history(store, point_id))],
        "Export": [("flag_kinds", lambda: queries.flag_kinds(store)),
                   ("plan_export", lambda: plan_export(store))],
    }


# scenario -> (page file, session state before the first run ('point': the sample of `point_sample`), target s)
SCENARIOS = {"Overview": ("overview", {}, 2.0), "Review": ("review", {}, 1.0),
             "Review flag=mislabeled": ("review", {"flag": "mislabeled", "sort": "score_desc"}, 1.0),
             "Review page 100": ("review", {"page": 100}, 1.0), "Point detail": ("point", {"point": None}, 1.0),
             "Decisions": ("decisions", {}, None), "Export": ("export", {}, None)}


def point_sample(store: Store) -> str:
    """A memorized training image with the most other flags (the busiest Point detail page)."""
    return store.scalar("SELECT sample_id FROM flags WHERE sample_id IN (SELECT sample_id FROM flags "
                        "WHERE kind = 'memorized') GROUP BY sample_id ORDER BY count(*) DESC, sample_id LIMIT 1")


def render(name: str, state: dict, timeout: float = 120.0):
    """One AppTest first render of page `name` with `state` in its session (returns the AppTest)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run(timeout=timeout)


def page_errors(at) -> list[str]:
    """Exceptions and st.error messages of a rendered page."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def _median_time(fn: Callable[[], object], repeats: int, before: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(path: str | Path, repeats: int = 3) -> list[dict]:
    """Per scenario: median seconds of its queries called directly (total and the slowest) and of an AppTest first
    render (thumbnail cache cleared each time); rows also carry the target and any page errors."""
    from streamlit.logger import set_log_level

    from app.common import clear_image_cache

    set_log_level("error")  # quiet streamlit's warnings about running outside a server
    path = Path(path)
    os.environ["MEMAUDIT_DB"] = str(path)
    store = Store(path)
    point_id = point_sample(store)
    per_page = page_queries(store, point_id)
    results = []
    for scenario, (page, state, target) in SCENARIOS.items():
        state = {k: (point_id if k == "point" else v) for k, v in state.items()}
        each = {name: _median_time(fn, repeats) for name, fn in per_page[scenario]}
        total = _median_time(lambda calls=per_page[scenario]: [fn() for _, fn in calls], repeats)
        errors = page_errors(render(page, state))
        rendered = _median_time(lambda page=page, state=state: render(page, state), repeats,
                                before=clear_image_cache)
        slowest = max(each, key=each.get)
        results.append({"scenario": scenario, "queries_s": total, "slowest": slowest, "slowest_s": each[slowest],
                        "each": each, "render_s": rendered, "target_s": target,
                        "errors": errors})
    return results


def print_results(results: list[dict], n: int, build_s: float | None, counts: dict[str, int] | None,
                  repeats: int = 3) -> None:
    if counts:
        _table(f"Synthetic database: {n:,} samples" + ("" if build_s is None else f", built in {build_s:.1f} s"),
               ["table", "rows"], [[t, f"{c:,}"] for t, c in counts.items()])
    rows = []
    for r in results:
        target = r["target_s"]
        met = "–" if target is None else ("met" if r["render_s"] < target else "MISSED")
        rows.append([r["scenario"], f"{r['queries_s']:.3f}", f"{r['slowest']} {r['slowest_s']:.3f}",
                     f"{r['render_s']:.3f}", "–" if target is None else f"< {target:g}", met,
                     "; ".join(r["errors"])[:60] or "none"])
    _table(f"Dashboard pages on {n:,} samples (seconds, median of {repeats} after a warm-up; {os.cpu_count()} cores)",
           ["page", "queries", "slowest query", "AppTest render", "target", "render", "errors"], rows)
    for r in results:
        _table(f"{r['scenario']}: each query (seconds)", ["query", "seconds"],
               [[q, f"{s:.3f}"] for q, s in sorted(r["each"].items(), key=lambda x: -x[1])])


# Review clicks in chromium (--clicks) and their targets in seconds (issue 15).
CLICK_TARGETS = {"tick a tile": 0.3, "next page": 1.0, "filter change": 1.0, "apply": 1.0}
CLICK_VIEW = "sort=apb_asc&page_size=12"  # every scored training image, 12 a page (the browser tests' pager)


def _tick(page, sample_id: str, picked_now: int) -> None:
    """Tick one tile's pick box and wait (polling every frame) until the box shows it ticked and the decision bar
    counts `picked_now` picks: the whole tick as the reviewer sees it, whether or not it reruns anything."""
    page.locator(f".st-key-pick_{sample_id} label").click()
    page.wait_for_function("([id, n]) => document.querySelector(`.st-key-pick_${id} input`)?.checked && [...document"
                           ".querySelectorAll('[data-testid=stMarkdownContainer] strong')]"
                           ".some(e => e.textContent === `${n} picked`)", arg=[sample_id, picked_now], polling="raf")


def click_times(path: str | Path, repeats: int = 5) -> dict[str, list[float]]:
    """Seconds from a click on Review to the end of the rerun it caused (for a tick, which causes none, to its box and
    the pick count showing it), `repeats` times per action of CLICK_TARGETS, in headless chromium against `memaudit
    app` on `path` (which receives the decisions)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the browser tests' helpers
    from playwright.sync_api import expect, sync_playwright

    from conftest import CHROMIUM, CHROMIUM_ARGS, IDLE, dashboard
    from test_browser import RUN_COUNTER, _apply, _choose, _pick, _rerun
    from test_review_browser import _open, _shown, _turn

    labels = queries.class_labels(Store(path))[:2]
    times: dict[str, list[float]] = {action: [] for action in CLICK_TARGETS}

    def timed(action: str, click: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        click()
        times[action].append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as logs, dashboard(Path(path), Path(logs) / "server.log") as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(RUN_COUNTER)
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        _open(page, url, CLICK_VIEW)
        for n, sample_id in enumerate(_shown(page)[:repeats], start=1):
            timed("tick a tile", lambda: _tick(page, sample_id, n))
            page.wait_for_timeout(300)  # untimed: where a tick reruns, its run ends before the next click
            page.wait_for_function(IDLE)
        with _rerun(page):
            page.get_by_role("button", name="Clear all", exact=True).click()
        for number in range(2, repeats + 2):
            timed("next page", lambda: _turn(page, number))
        for i in range(repeats):
            timed("filter change", lambda: _choose(page, "Class", labels[i % 2]))
        _choose(page, "Decision", "remove")
        for sample_id in _shown(page)[:repeats]:
            _pick(page, sample_id, 1)
            timed("apply", lambda: _apply(page, "remove recorded for 1 image"))
        browser.close()
    return times


def print_clicks(times: dict[str, list[float]], where: str) -> None:
    rows = [[action, f"{statistics.median(ts) * 1000:.0f}", f"{max(ts) * 1000:.0f}", f"< {CLICK_TARGETS[action]:g}",
             "met" if statistics.median(ts) < CLICK_TARGETS[action] else "MISSED"] for action, ts in times.items()]
    _table(f"Review clicks in chromium on {where} (ms, click to end of its rerun, a tick to it shown; "
           f"{os.cpu_count()} cores)",
           ["action", "median", "max", "target (s)", "median"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the database here and keep it (reused when it exists)")
    parser.add_argument("--clicks", action="store_true",
                        help="time Review's clicks in chromium instead of the pages (the database gets decisions)")
    parser.add_argument("--clicks-db", type=Path,
                        help="with --clicks: this audit database (a copy is used) instead of a synthetic one")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        if args.clicks and args.clicks_db:
            db = shutil.copy(args.clicks_db, Path(tmp) / args.clicks_db.name)
            print_clicks(click_times(db, args.repeats), str(args.clicks_db))
            return
        db = args.keep or Path(tmp) / "synthetic.duckdb"
        counts, build_s = None, None
        if not (args.keep and db.exists()):
            t0 = time.perf_counter()
            counts = build_synthetic(db, args.n, args.seed)
            build_s = time.perf_counter() - t0
        if args.clicks:
            print_clicks(click_times(db, args.repeats), f"{args.n:,} synthetic samples")
            return
        results = measure(db, args.repeats)
        print_results(results, args.n, build_s, counts, args.repeats)


if __name__ == "__main__":
    main()
