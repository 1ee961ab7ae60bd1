"""The detectors stage end to end at scale (issue 18): ingest and embed `--n` small synthetic images, then run the
detectors stage (`pipelines.detectors_stage.detectors_stage`) and report the time of each detector and peak memory.

Images: `--side` x `--side` grey images of 10 classes, each its class's smooth random pattern at a random offset
plus a smooth pattern of its own and pixel noise (so images are distinct), written as PNG files with a manifest
(`--train-fraction` train, the rest test), ingested by the real ingest stage (`memaudit run --stages ingest`, a
child process). Embeddings: the offline EfficientNet-Lite0 embedder embedded 9 images/s at its smallest input (32
px) on the loaded 2-core machine (7 h for 240,000), so the embeddings are instead the index benchmark's clustered
1,280-d mixture (`index_recall.Mixture`, the default embedder's dimension; each image in a cluster of its class),
written to `embedders` / `embeddings` as the embeddings stage writes them. The detectors stage then runs in this
process, its steps timed by wrapping the functions it calls (nothing in the stage changes; each step's time is
printed as it ends), and this process's peak RSS read from ru_maxrss. A `--workdir` whose database already holds
the n images' embeddings is reused without setup. With at least `detectors.exact_below` training images the shared kNN graph and the copy
matcher use the approximate index (`detectors.index`).

Usage: python benchmarks/detectors_scale.py [--n 240000] [--side 16] [--train-fraction 0.84] [--epochs 2]
       [--clusters 3000] [--exact-below 200000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table

from index_recall import Mixture

from auditor.config import load_config
from auditor.training.embedding_rows import save_embedder
from auditor.store.database import Store
from pipelines import detectors_stage as stage
from pipelines.progress import silent
from pipelines.runs import now

CLASSES = 10
EMBEDDER = "synthetic:mixture-1280"
DIM = 1280
# The stage's steps timed (functions the stage module calls by these names).
STEPS = ("knn", "pixel_pairs", "exact_duplicate_pairs", "near_duplicate_pairs", "leak_pairs", "load_training_arrays",
         "class_clusters", "local_density", "out_of_sample_probs", "confident_learning", "knn_label_disagreement",
         "label_issue_flags", "contract_detectors", "long_tail_flags", "graph_frame", "load_embeddings")


def write_images(root: Path, n: int, side: int, train_fraction: float, seed: int) -> Path:
    """n synthetic images (module docstring) under root and their manifest (path,label,split); returns the manifest."""
    rng = np.random.default_rng(seed)
    patterns = ndimage.gaussian_filter(rng.standard_normal((CLASSES, 2 * side, 2 * side)), (0, side / 6, side / 6))
    patterns /= patterns.std(axis=(1, 2), keepdims=True)
    labels = rng.integers(0, CLASSES, n)
    offsets = rng.integers(0, side, (n, 2))
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 4096):
        stop = min(start + 4096, n)
        own = ndimage.gaussian_filter(rng.standard_normal((stop - start, side, side)), (0, side / 8, side / 8))
        own /= own.std(axis=(1, 2), keepdims=True)
        for i in range(start, stop):
            y, x = offsets[i]
            image = (128 + 45 * patterns[labels[i], y:y + side, x:x + side] + 30 * own[i - start]
                     + rng.normal(0, 6, (side, side)))
            path = f"images/{i:07d}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / path)
            rows.append((path, f"c{labels[i]}", "train" if i < round(train_fraction * n) else "test"))
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    return manifest


def write_embeddings(store: Store, clusters: int, seed: int, chunk: int = 16_384) -> None:
    """The mixture's vectors for every sample (sample_id order), each in a cluster of its own class (module
    docstring), recorded as the embeddings stage records an embedder and its vectors."""
    samples = store.query("SELECT sample_id, label_index FROM samples ORDER BY sample_id")
    mixture = Mixture(len(samples), DIM, clusters, seed)
    mixture.cluster_of = mixture.cluster_of // CLASSES * CLASSES + samples["label_index"].to_numpy()
    save_embedder(store, {"embedder_id": EMBEDDER, "kind": "synthetic", "model_name": "index_recall.Mixture",
                          "weights": None, "dim": DIM, "input_size": 0, "fallback_reason": None,
                          "run_id": "embed-synthetic", "created_at": now()})
    ids = samples["sample_id"].to_numpy()
    for start in range(0, len(ids), chunk):
        stop = min(start + chunk, len(ids))
        store.append("embeddings", pd.DataFrame({"embedder_id": EMBEDDER, "sample_id": ids[start:stop],
                                                 "vector": list(mixture.rows(start, stop))}))


def _timed(fn: Callable, name: str, seconds: dict[str, float]) -> Callable:
    """fn, adding its wall time to seconds[name] on every call."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return wrapper


def run(workdir: Path, n: int, side: int, train_fraction: float, epochs: int, clusters: int = 3000,
        exact_below: int = 200_000, seed: int = 0) -> dict:
    """Write and ingest the images (child process) and their embeddings, then run and time the detectors stage."""
    config = workdir / "config.toml"
    config.write_text(f"seed = {seed}\n[data]\nimage_size = {side}\n[train]\nepochs = {epochs}\n"
                      f"[detectors]\nexact_below = {exact_below}\n")
    db = workdir / "audit.duckdb"
    write_s = setup_s = 0.0
    if not (db.exists() and Store(db).scalar("SELECT count(*) FROM embeddings WHERE embedder_id = ?", [EMBEDDER])
            == n):
        t0 = time.perf_counter()
        manifest = write_images(workdir / "data", n, side, train_fraction, seed)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", str(manifest), "--db", str(db),
                        "--config", str(config), "--stages", "ingest"], check=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
        write_embeddings(Store(db), clusters, seed)
        setup_s = time.perf_counter() - t0
    seconds: dict[str, float] = {}
    for name in (name for name in STEPS if hasattr(stage, name)):
        setattr(stage, name, _timed(getattr(stage, name), name, seconds))
    cfg = load_config(config, "standard")
    t0 = time.perf_counter()
    report = stage.detectors_stage(Store(db), cfg, silent)
    stage_s = time.perf_counter() - t0
    store = Store(db)
    return {"n": n, "side": side, "n_train": int(store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")),
            "write_s": write_s, "setup_s": setup_s, "stage_s": stage_s, "steps": seconds, "report": report.facts,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "setup_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "exact_below": cfg.detectors.exact_below, "index": cfg.detectors.index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kind, default, text in (
            ("--n", int, 240_000, "images in all"), ("--side", int, 16, "image side in pixels"),
            ("--train-fraction", float, 0.84, "fraction of the images in train"),
            ("--epochs", int, 2, "epochs of the stage's k-fold label-issue models"),
            ("--clusters", int, 3000, "clusters of the embedding mixture"),
            ("--exact-below", int, 200_000, "detectors.exact_below for the run"), ("--seed", int, 0, "seed")):
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--workdir", type=Path, help="keep the images and database here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        r = run(workdir, args.n, args.side, args.train_fraction, args.epochs, args.clusters,
                args.exact_below, args.seed)
    gb = 1024 ** 3
    table(f"Detectors stage: {r['n']:,} images ({r['n_train']:,} train) of {r['side']} x {r['side']} px, "
          f"{os.cpu_count()} cores; exact_below {r['exact_below']:,}, index {r['index']}; graph {r['report']['graph']}",
          ["step", "seconds"],
          [["write images (setup)", f"{r['write_s']:.1f}"],
           ["ingest (child) + embeddings (setup)", f"{r['setup_s']:.1f}"]]
          + [[f"  {name}", f"{s:.1f}"] for name, s in sorted(r["steps"].items(), key=lambda x: -x[1])]
          + [["detectors stage (total)", f"{r['stage_s']:.1f}"]])
    table("Peak memory (ru_maxrss)", ["process", "GB"], [["detectors stage", f"{r['peak_rss'] / gb:.2f}"],
                                                          ["ingest (child)", f"{r['setup_peak_rss'] / gb:.2f}"]])
    table("Stage report", ["key", "value"], [[k, str(v)] for k, v in r["report"].items()])


if __name__ == "__main__":
    main()
