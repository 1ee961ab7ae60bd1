"""Train one audit model and record per-example training dynamics (Algorithm 1 of the ApB paper).

In `batch` mode each example's correctness, loss, label probability and EL2N are read from the logits of its own
training batch *before* the weight update, exactly as Algorithm 1 does, so recording costs no extra forward pass.
`epoch_end` mode adds a full evaluation pass over the training set after every epoch.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from auditor.config import AuditConfig
from auditor.training.models import build_model

EVAL_BATCH = 512


@dataclass
class EpochLog:
    """One epoch's summary plus the dynamics recorded during it (None when recording is off)."""

    epoch: int
    train_acc: float          # running accuracy over the epoch's training batches
    train_loss: float
    test_acc: float | None
    test_loss: float | None
    seconds: float            # wall time of the epoch, evaluation included
    records: dict[str, np.ndarray] | None = None


@dataclass
class Predictions:
    """A final model's predictions for one split."""

    pred: np.ndarray
    p_label: np.ndarray
    p_pred: np.ndarray


@dataclass
class TrainOutcome:
    """Everything a training run produced, except the dynamics already handed to `on_epoch`."""

    epochs: list[EpochLog]
    train: Predictions
    test: Predictions | None
    train_acc: float
    test_acc: float | None
    seconds: float
    device: str
    model: torch.nn.Module = field(repr=False)
    input_mean: list[float] = field(default_factory=list)   # the standardisation the model expects
    input_std: list[float] = field(default_factory=list)


@functools.cache
def _cpu_fallback_notice() -> None:
    """Say once per process that `auto` fell back to the CPU, so a missing driver is never a silent slowdown."""
    print("memaudit: no CUDA device visible to torch; training and embedding run on the CPU "
          "(set device = 'cuda' to require a GPU)", file=sys.stderr)


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU with a one-time message; asking for CUDA without one is an
    error, not a silent fallback."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but no CUDA device is available; set device = 'auto' or 'cpu'")
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        _cpu_fallback_notice()
        return torch.device("cpu")
    return torch.device(setting)


class _Normaliser:
    """uint8 NCHW -> float, standardised with the training set's per-channel mean and std."""

    def __init__(self, x_train: torch.Tensor):
        flat = x_train.transpose(0, 1).reshape(x_train.shape[1], -1).float() / 255.0
        self.mean = flat.mean(dim=1).view(1, -1, 1, 1)
        self.std = flat.std(dim=1).clamp_min(1e-3).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorised over the batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _record(logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example dynamics from logits: correct, loss, p(label) and EL2N = ||softmax - onehot||_2."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    p_label = probs.gather(1, y[:, None]).squeeze(1)
    el2n = (probs.square().sum(1) - 2 * p_label + 1).clamp_min(0).sqrt()
    return {"correct": logits.argmax(1) == y, "loss": loss.detach().float(), "p_label": p_label, "el2n": el2n}


@torch.inference_mode()
def _evaluate(model, x, y, norm, device, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on CPU) and per-example losses for a whole split, in eval mode."""
    model.eval()
    logits = []
    for start in range(0, len(x), EVAL_BATCH):
        xb = norm(x[start:start + EVAL_BATCH].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits.append(model(xb).float().cpu())
    out = torch.cat(logits) if logits else torch.empty(0, 0)
    losses = F.cross_entropy(out, y.cpu(), reduction="none") if len(out) else torch.empty(0)
    return out, losses


def _predictions(logits: torch.Tensor, y: torch.Tensor) -> Predictions:
    probs = torch.softmax(logits, dim=1)
    p_pred, pred = probs.max(dim=1)
    return Predictions(pred=pred.numpy().astype(np.int32), p_label=probs.gather(1, y[:, None]).squeeze(1).numpy(),
                       p_pred=p_pred.numpy())


def train_model(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None,
                num_classes: int, cfg: AuditConfig, seed: int, *, record: bool = True,
                on_epoch: Callable[[EpochLog], None] | None = None,
                on_batch: Callable[[int], None] | None = None) -> TrainOutcome:
    """Train cfg.train.arch on uint8 NCHW arrays with a fixed seed; call `on_epoch` after every epoch.

    With `record=False` the loop is identical minus the dynamics bookkeeping: the plain-training baseline.
    """
    tc, dc = cfg.train, cfg.dynamics
    device = resolve_device(cfg.device)
    amp = device.type == "cuda"
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x_train).to(device)
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(device)
    xs = torch.from_numpy(x_test) if x_test is not None and len(x_test) else None
    ys = torch.from_numpy(np.asarray(y_test, dtype=np.int64)) if xs is not None else None
    norm = _Normaliser(xt)
    model = build_model(tc.arch, x_train.shape[1], num_classes, tc.width, x_train.shape[-1]).to(device)
    if tc.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0,
                              weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = len(xt)
    batches_per_epoch = math.ceil(n / tc.batch_size)
    total_steps = tc.epochs * batches_per_epoch
    record_batch = record and "batch" in dc.record
    record_epoch_end = record and "epoch_end" in dc.record
    step = 0
    logs: list[EpochLog] = []
    started = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        chunks: dict[str, list[torch.Tensor]] = {k: [] for k in ("index", "step", "correct", "loss", "p_label", "el2n")}
        n_correct = torch.zeros((), device=device)
        loss_sum = torch.zeros((), device=device)
        for b in range(batches_per_epoch):
            idx = order[b * tc.batch_size:(b + 1) * tc.batch_size]
            xb = xt[idx]
            if tc.augment:
                xb = _augment(xb, gen)
            yb = yt[idx]
            if tc.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = tc.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(norm(xb))
            losses = F.cross_entropy(logits.float(), yb, reduction="none")
            if record_batch and b % dc.every_n_batches == 0:
                rec = _record(logits, yb, losses)
                for key, value in rec.items():
                    chunks[key].append(value)
                chunks["index"].append(idx)
                chunks["step"].append(torch.full_like(idx, step))
            n_correct += (logits.detach().argmax(1) == yb).sum()
            loss_sum += losses.detach().sum()
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            opt.step()
            step += 1
            if on_batch:
                on_batch(1)
        records = None
        if record_batch:
            records = {k: torch.cat(v).cpu().numpy() for k, v in chunks.items()}
            records["phase"] = np.full(len(records["index"]), "batch", dtype=object)
        if record_epoch_end:
            logits, losses = _evaluate(model, xt, yt, norm, device, amp)
            rec = {k: v.cpu().numpy() for k, v in _record(logits, yt.cpu(), losses).items()}
            rec["index"] = np.arange(n)
            rec["step"] = np.full(n, step)
            rec["phase"] = np.full(n, "epoch_end", dtype=object)
            records = rec if records is None else {k: np.concatenate([records[k], rec[k]]) for k in records}
        if records is not None:
            records["epoch"] = np.full(len(records["index"]), epoch, dtype=np.int32)
        test_acc = test_loss = None
        if xs is not None:
            test_logits, losses = _evaluate(model, xs, ys, norm, device, amp)
            test_acc = float((test_logits.argmax(1) == ys).float().mean())
            test_loss = float(losses.mean())
        log = EpochLog(epoch=epoch, train_acc=float(n_correct) / n, train_loss=float(loss_sum) / n,
                       test_acc=test_acc, test_loss=test_loss, seconds=time.perf_counter() - t0, records=records)
        if on_epoch:
            on_epoch(log)
        log.records = None  # handed over; do not keep examples x checkpoints in memory
        logs.append(log)
    train_logits, _ = _evaluate(model, xt, yt, norm, device, amp)
    train_pred = _predictions(train_logits, yt.cpu())
    test_pred = _predictions(test_logits, ys) if xs is not None else None
    return TrainOutcome(
        epochs=logs, train=train_pred, test=test_pred,
        train_acc=float((train_pred.pred == y_train).mean()),
        test_acc=float((test_pred.pred == y_test).mean()) if test_pred is not None else None,
        seconds=time.perf_counter() - started, device=str(device), model=model,
        input_mean=norm.mean.flatten().tolist(), input_std=norm.std.flatten().tolist())
