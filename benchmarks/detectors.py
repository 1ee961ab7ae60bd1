"""Detector quality on the default dataset with planted corruptions, against cleanlab, and kNN speed vs baselines.

The script plants, with a fixed seed: 5% label flips in train; 2% of the test set replaced by lightly augmented
copies of training images (1-2 px shift, +-10% brightness, mild noise); a few exact duplicates. It runs the standard
pipeline on that data and reports precision, recall and F1 per flag kind, plus cleanlab's `find_label_issues` on the
same out-of-sample probabilities and Datalab's near-duplicate check on the same embeddings (benchmark-only
dependency: pip install memaudit[bench]). Then it times faiss against brute-force numpy and scikit-learn neighbours
at 10k, 100k and 1M random 512-d vectors (1,000 queries, k = 10).

Usage: python benchmarks/detectors.py [--sizes 10000 100000 1000000] [--skip-quality] [--skip-knn]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pipeline_stages import _table

from auditor.config import load_config
from auditor.data.default_dataset import materialise_default
from auditor.detectors.neighbors import knn
from auditor.store.database import Store
from pipelines.embeddings_stage import load_embeddings
from pipelines.runner import run_pipeline

SEED = 7


def default_frame() -> pd.DataFrame:
    """The default dataset's manifest rows with absolute paths (to be rewritten elsewhere with planted changes)."""
    manifest = materialise_default()
    frame = pd.read_csv(manifest, dtype=str)
    frame["path"] = [str((manifest.parent / p).resolve()) for p in frame["path"]]
    return frame


def plant_leaks(frame: pd.DataFrame, rows: np.ndarray, sources: np.ndarray, root: Path,
                rng: np.random.Generator) -> None:
    """Replace the test rows `rows` (in place) by lightly augmented copies of the training rows `sources` (1-2 px
    shift, +-10% brightness, mild noise) written under `root`, with the sources' labels."""
    for row, src in zip(rows, sources):
        pixels = np.asarray(Image.open(frame.at[src, "path"]), dtype=np.float32)
        dy, dx = rng.integers(-2, 3, size=2)
        pixels = np.roll(pixels, (int(dy), int(dx)), axis=(0, 1)) * rng.uniform(0.9, 1.1)
        pixels = np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8)
        path = root / f"leak_{frame.at[row, 'sample_id']}.png"
        Image.fromarray(pixels).save(path)
        frame.loc[row, ["path", "label"]] = [str(path), frame.at[src, "label"]]


def plant_flips(frame: pd.DataFrame, rng: np.random.Generator, fraction: float = 0.05) -> np.ndarray:
    """Move `fraction` of the training labels (in place) to another digit at random; return the flipped rows."""
    train = frame.index[frame["split"] == "train"].to_numpy()
    flip = rng.choice(train, size=int(fraction * len(train)), replace=False)
    frame.loc[flip, "label"] = [str((int(v) + rng.integers(1, 10)) % 10) for v in frame.loc[flip, "label"]]
    return flip


def plant(root: Path) -> tuple[Path, dict[str, set[str]]]:
    """Write a manifest of the default dataset with planted flips, leaks and duplicates; return it and the truth."""
    frame = default_frame()
    rng = np.random.default_rng(SEED)
    train = frame.index[frame["split"] == "train"].to_numpy()
    test = frame.index[frame["split"] == "test"].to_numpy()
    flip = plant_flips(frame, rng)
    leak_rows = rng.choice(test, size=int(0.02 * len(test)), replace=False)
    sources = rng.choice(np.setdiff1d(train, flip), size=len(leak_rows), replace=False)
    plant_leaks(frame, leak_rows, sources, root, rng)
    dup_src = rng.choice(np.setdiff1d(train, flip), size=5, replace=False)
    dups = frame.loc[dup_src].assign(sample_id=[f"dup_{i}" for i in range(5)])
    out = root / "planted.csv"
    pd.concat([frame, dups], ignore_index=True).to_csv(out, index=False)
    truth = {"mislabeled": set(frame.loc[flip, "sample_id"]), "leaked": set(frame.loc[leak_rows, "sample_id"]),
             "duplicate": set(dups["sample_id"]) | set(frame.loc[dup_src, "sample_id"])}
    return out, truth


def prf(found: set[str], truth: set[str]) -> list[str]:
    tp = len(found & truth)
    p = tp / len(found) if found else 0.0
    r = tp / len(truth) if truth else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return [len(found), len(truth), tp, f"{p:.3f}", f"{r:.3f}", f"{f1:.3f}"]


def quality(profile: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        manifest, truth = plant(Path(tmp))
        store = Store(Path(tmp) / "planted.duckdb")
        cfg = load_config(profile=profile, overrides={"data": {"allow_outside_root": True}})  # absolute paths
        t0 = time.perf_counter()
        reports = run_pipeline(store, str(manifest), cfg)
        seconds = time.perf_counter() - t0
        flags = store.query("SELECT sample_id, kind, detail FROM flags")
        rows = []
        for kind in ("mislabeled", "leaked", "duplicate"):
            found = flags[flags["kind"] == kind]
            if kind == "leaked":  # score the held-out side: the planted test images
                found = found[np.array([json.loads(d).get("role") == "test" for d in found["detail"]], dtype=bool)]
            rows.append([f"memaudit {kind}", *prf(set(found["sample_id"]), truth[kind])])
        samples = store.query("SELECT sample_id, label_index FROM samples WHERE split = 'train' ORDER BY sample_id")
        oof = store.query("SELECT sample_id, probs FROM oof_probs")
        probs = np.stack(oof.set_index("sample_id").reindex(samples["sample_id"])["probs"].to_numpy())
        embedder = store.scalar("SELECT embedder_id FROM embedders ORDER BY created_at DESC LIMIT 1")
        emb = load_embeddings(store, embedder, samples["sample_id"].to_numpy())
        try:
            from cleanlab.filter import find_label_issues

            issues = find_label_issues(samples["label_index"].to_numpy(), probs)
            rows.append(["cleanlab find_label_issues", *prf(set(samples["sample_id"][issues]), truth["mislabeled"])])
            from cleanlab import Datalab

            lab = Datalab(data={"label": samples["label_index"].to_numpy()}, label_name="label", verbosity=0)
            lab.find_issues(features=emb, issue_types={"near_duplicate": {}})
            near = lab.get_issues("near_duplicate")["is_near_duplicate_issue"].to_numpy()
            rows.append(["cleanlab Datalab near_duplicate", *prf(set(samples["sample_id"][near]),
                                                                 truth["duplicate"])])
        except ImportError:
            rows.append(["cleanlab (not installed: pip install memaudit[bench])", "-", "-", "-", "-", "-", "-"])
        thresholds = store.query("SELECT kind, value, method FROM thresholds")
    _table(f"1. planted corruptions on the default dataset (pipeline {seconds:.0f} s, embedder {embedder}, "
           f"label issues from {reports[-1].facts['probabilities']} probabilities)",
           ["detector", "flagged", "planted", "hits", "precision", "recall", "F1"], rows)
    _table("   thresholds used", ["kind", "value", "method"], thresholds.astype(str).values.tolist())


def knn_speed(sizes: list[int], dim: int = 512, n_query: int = 1000, k: int = 10) -> None:
    from sklearn.neighbors import NearestNeighbors

    rows = []
    rng = np.random.default_rng(SEED)
    for n in sizes:
        base = rng.standard_normal((n, dim), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        query = base[rng.choice(n, n_query, replace=False)] + 0.01 * rng.standard_normal((n_query, dim),
                                                                                           dtype=np.float32)
        timings = {}
        t0 = time.perf_counter()
        sims = query @ base.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        timings["numpy brute force"] = time.perf_counter() - t0
        del sims
        t0 = time.perf_counter()
        NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(base).kneighbors(query)
        timings["scikit-learn brute (cosine)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact = knn(base, k, query=query, exclude_self=False, exact_below=n + 1)
        timings["faiss exact (IndexFlatIP)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = knn(base, k, query=query, exclude_self=False, exact_below=0, index="ivf")
        timings["faiss IVF (train + add + search)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hnsw = knn(base, k, query=query, exclude_self=False, exact_below=0, index="hnsw")
        timings["faiss HNSW (build + search)"] = time.perf_counter() - t0
        recalls = {name: np.mean([len(set(a) & set(b)) / k for a, b in zip(graph.indices, exact.indices)])
                   for name, graph in (("IVF", approx), ("HNSW", hnsw))}
        agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(top, exact.indices)])
        base_time = timings["numpy brute force"]
        for name, t in timings.items():
            approximate = next((kind for kind in recalls if kind in name), None)
            note = (f"recall@10 {recalls[approximate]:.3f}" if approximate else
                    f"agrees with faiss {agree:.3f}" if "numpy" in name else "")
            rows.append([f"{n:,}", name, f"{t:.3f}", f"{base_time / t:.2f}x", note])
        del base
    _table(f"2. kNN of {n_query:,} queries, k = {k}, 512-d, 2 CPU cores (speed-up vs numpy brute force)",
           ["base vectors", "method", "seconds", "vs numpy", "notes"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-knn", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.skip_quality:
        quality(args.profile)
    if not args.skip_knn:
        knn_speed(args.sizes)


if __name__ == "__main__":
    main()
