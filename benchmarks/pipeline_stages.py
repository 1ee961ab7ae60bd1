"""Time `memaudit run --profile standard` on the default dataset stage by stage, and the cost of recording dynamics.

Prints three tables:
1. stage times of one full standard run (ingest, image loading, training per seed, scores);
2. plain training vs training with dynamics recording, same seed and recipe, alternated in this process
   (the baseline is the identical loop with recording switched off, not a weakened one);
3. achieved GFLOP/s of the training step vs a large float32 matmul on the same cores (fraction of peak).

Usage: python benchmarks/pipeline_stages.py [--profile standard] [--repeats 2] [--db PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import table as _table
from torch.utils.flop_counter import FlopCounterMode

from auditor.config import load_config
from auditor.training.models import build_model
from auditor.store.database import Store
from auditor.training.trainer import train_model
from pipelines.arrays import load_training_arrays
from pipelines.progress import silent
from pipelines.runner import run_pipeline
from pipelines.stages import epoch_writer


def stage_times(db: Path, profile: str) -> tuple[list[list[str]], float]:
    cfg = load_config(profile=profile)
    t0 = time.perf_counter()
    reports = run_pipeline(Store(db), "default", cfg, stages=("ingest", "train", "scores", "memorization"),
                           progress=silent)
    total = time.perf_counter() - t0
    rows = [[r.stage, f"{r.seconds:.1f}"] for r in reports]
    foundation = sum(r.seconds for r in reports if r.stage in ("ingest", "train", "scores"))
    seeds = Store(db).query("SELECT seed, seconds, train_acc, test_acc, converged FROM runs WHERE kind = 'train' "
                            "ORDER BY seed")
    for s in seeds.itertuples():
        rows.append([f"  train seed {s.seed} (loop only)", f"{s.seconds:.1f}",
                     f"train {s.train_acc:.2%} test {s.test_acc:.2%} converged={s.converged}"])
    rows.append(["ingest + train + ApB", f"{foundation:.1f}",
                 f"target < 180 s: {'met' if foundation < 180 else 'MISSED'}"])
    rows.append(["with memorization (pLOO-improved)", f"{total:.1f}", ""])
    return rows, total


def recording_overhead(db: Path, profile: str, repeats: int) -> tuple[list[list[str]], dict]:
    cfg = load_config(profile=profile)
    data = load_training_arrays(Store(db), cfg)
    xtr, ytr, xte, yte, channels = data.x_train, data.y_train, data.x_test, data.y_test, data.channels
    both = load_config(profile=profile, overrides={"dynamics": {"record": ["batch", "epoch_end"]}})
    scratch = Store(db.with_name("overhead.duckdb"))
    scratch.init()
    ids = np.array([f"s{i}" for i in range(len(xtr))], dtype=object)
    variants = (("plain (no recording)", cfg, False, None),
                ("dynamics (batch), kept in memory", cfg, True, None),
                ("dynamics (batch), committed to DuckDB per epoch", cfg, True, epoch_writer(scratch, "bench", ids)),
                ("dynamics (batch + epoch_end), in memory", both, True, None))
    times = {name: [] for name, *_ in variants}
    train_model(xtr, ytr, xte, yte, 10, cfg, cfg.seed, record=False)  # warm-up: first-call costs hit no variant
    for _ in range(repeats):
        for name, config, record, writer in variants:
            out = train_model(xtr, ytr, xte, yte, 10, config, cfg.seed, record=record, on_epoch=writer)
            times[name].append(out.seconds)
    base = statistics.median(times["plain (no recording)"])
    rows = [[name, f"{statistics.median(v):.1f}", f"{statistics.median(v) / base:.3f}",
             f"{(statistics.median(v) / base - 1):+.1%}"] for name, v in times.items()]
    return rows, {"xtr": xtr, "channels": channels, "plain_seconds": base, "cfg": cfg}


def peak_fraction(ctx: dict) -> list[list[str]]:
    cfg, xtr = ctx["cfg"], ctx["xtr"]
    model = build_model(cfg.train.arch, ctx["channels"], 10, cfg.train.width, cfg.data.image_size)
    x = torch.randn(cfg.train.batch_size, ctx["channels"], cfg.data.image_size, cfg.data.image_size)
    y = torch.randint(0, 10, (cfg.train.batch_size,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    step_flops = counter.get_total_flops()
    epoch_flops = step_flops * len(xtr) / cfg.train.batch_size * cfg.train.epochs
    achieved = epoch_flops / ctx["plain_seconds"] / 1e9
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    matmul = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
    return [["training step (fwd+bwd, counted FLOPs)", f"{achieved:.1f}", f"{achieved / matmul:.1%}"],
            [f"float32 matmul {n}x{n} (reference peak)", f"{matmul:.1f}", "100%"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.duckdb"
        rows, _ = stage_times(db, args.profile)
        _table(f"1. memaudit run --profile {args.profile} on the default dataset (seconds)",
               ["stage", "seconds", "notes"], [r + [""] * (3 - len(r)) for r in rows])
        rows, ctx = recording_overhead(db, args.profile, args.repeats)
        _table(f"2. one seed's training (final evaluation included), median of {args.repeats} (seconds; ratio vs plain)",
               ["variant", "seconds", "ratio", "overhead"], rows)
        _table("3. achieved throughput vs the machine's matmul peak (GFLOP/s)",
               ["kernel", "GFLOP/s", "fraction of peak"], peak_fraction(ctx))


if __name__ == "__main__":
    main()
