"""Accelerator throughput: shadow models per minute and embedding images per second, with and without mixed precision.

Runs on CUDA when torch sees a GPU, else on the CPU (the same script; float32 only there). Prints:
1. shadow models per minute on the default dataset (4,000 train / 1,000 test digits, r = 0.5 shards): the `mlp`
   trained as vmapped blocks of K models and the `small_cnn` one by one, in float32 and (CUDA) bfloat16 autocast,
   with achieved GFLOP/s against a large matmul of the same precision on the same device;
2. embedding throughput in images per second (224 px inputs already decoded; host-to-device copies included) for
   the shipped EfficientNet-Lite0 embedder and a CLIP ViT-B-32 image tower (random weights: speed only), float32
   and (CUDA) bfloat16;
3. which faiss build is installed and whether it sees a GPU.

Usage: python benchmarks/gpu.py [--epochs 12] [--ks 64 256] [--cnn-models 4] [--images 2048] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import torch
from report import table
from shadow_throughput import _data, _flops_per_model, _halves

from auditor.config import load_config
from auditor.training.embeddings import Embedder, clip_embedder, imagenet_embedder
from auditor.memorization.shadow_engine import train_shadow_block
from auditor.training.trainer import resolve_device


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10) -> float:
    """Best-of-3 GFLOP/s of an n x n matmul in `dtype`: the device's reference peak for that precision."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(3):
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * reps / best / 1e9


def _shadow_rows(device: torch.device, precisions: list[bool], args: argparse.Namespace,
                 peaks: dict[bool, float]) -> list[list[str]]:
    train = {"epochs": args.epochs} if args.epochs else {}
    x, y, xt, yt = _data()
    rows = []
    runs = [("mlp", k, True) for k in args.ks] + [("small_cnn", args.cnn_models, False)]
    for arch, k, batched in runs:
        cfg = load_config(overrides={"train": {"arch": arch, **train}, "dynamics": {"el2n_epoch": 1},
                                     "device": device.type})
        flops = _flops_per_model(cfg, len(x) // 2, len(x) + len(xt))
        train_shadow_block(x, y, xt, yt, 10, _halves(min(k, 2), len(x)), range(min(k, 2)), cfg, batched=batched)
        for amp in precisions:
            block = train_shadow_block(x, y, xt, yt, 10, _halves(k, len(x)), range(k), cfg, batched=batched, amp=amp)
            achieved = flops * k / block.seconds / 1e9
            rows.append([arch, "vmap block" if batched else "one by one", str(k), "bf16" if amp else "fp32",
                         f"{block.seconds:.1f}", f"{k / block.seconds * 60:.1f}", f"{block.test_acc.mean():.2%}",
                         f"{achieved:,.1f}", f"{achieved / peaks[amp]:.2%}"])
    return rows


def _embed_rate(embedder: Embedder, images: torch.Tensor, batch: int) -> float:
    """Images per second through `embed_prepared` (pinned host batches copied to the device, as the stage does)."""
    embedder.embed_prepared(images[:batch])
    _sync()
    t0 = time.perf_counter()
    for start in range(0, len(images), batch):
        embedder.embed_prepared(images[start:start + batch])
    _sync()
    return len(images) / (time.perf_counter() - t0)


def _embedding_rows(device: torch.device, precisions: list[bool], args: argparse.Namespace) -> list[list[str]]:
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "vit-b-32-random.pt")
        torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
        makers: list[tuple[str, Callable[[], Embedder]]] = [
            ("EfficientNet-Lite0 (shipped)", lambda: imagenet_embedder(device.type, 224)),
            ("CLIP ViT-B-32 (random weights)", lambda: clip_embedder("ViT-B-32", None, checkpoint, device.type))]
        rows = []
        for name, make in makers:
            embedder = make()
            images = torch.randn(args.images, 3, 224, 224)
            images = images.pin_memory() if device.type == "cuda" else images
            for amp in precisions:
                embedder.amp = amp
                rate = _embed_rate(embedder, images, args.batch)
                rows.append([name, "bf16" if amp else "fp32", str(args.batch), f"{rate:,.0f}",
                             f"{1e6 / rate:.0f}"])
    return rows


def _faiss_line() -> str:
    try:
        import faiss
    except ImportError:
        return "faiss: not installed"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"faiss {faiss.__version__}: {'GPU build, ' + str(gpus) + ' GPU(s)' if gpus else 'CPU build'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the default recipe's epochs")
    parser.add_argument("--ks", type=int, nargs="+", default=[64, 256], help="mlp block sizes K")
    parser.add_argument("--cnn-models", type=int, default=4, help="small_cnn models trained one by one")
    parser.add_argument("--images", type=int, default=2048, help="images per embedding measurement")
    parser.add_argument("--batch", type=int, default=256, help="embedding batch size")
    args = parser.parse_args()
    device = resolve_device("auto")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precisions = [False, True] if device.type == "cuda" else [False]
    peaks = {amp: _matmul_gflops(device, torch.bfloat16 if amp else torch.float32) for amp in precisions}
    print(f"torch {torch.__version__} on {name}; matmul peak "
          + ", ".join(f"{'bf16' if amp else 'fp32'} {gf:,.0f} GFLOP/s" for amp, gf in peaks.items()))
    table("1. shadow models (default dataset, shards of 2,000, final evaluation on all 5,000 points included)",
          ["arch", "path", "K", "precision", "seconds", "models/min", "test acc", "GFLOP/s", "of matmul peak"],
          _shadow_rows(device, precisions, args, peaks))
    table("2. embedding throughput (224 px, decoded; host-to-device copy included)",
          ["embedder", "precision", "batch", "images/s", "us/image"], _embedding_rows(device, precisions, args))
    print(f"\n3. {_faiss_line()}")


if __name__ == "__main__":
    main()
