"""Train a block of K shadow models, each on its own shard of the training set, and predict every point with each.

Every model follows cfg.train's recipe exactly as `train_model` would on its shard: the same initialisation
(`torch.manual_seed(seed)`), its own generator for shard order and augmentation, the same optimizer and schedule.
Inputs are standardised with the statistics of the *full* training set, shared by all models, so a shard changes
only what a model trains on. Architectures without buffers (the `mlp`) are trained together: their parameters are
stacked and one vmapped step updates all K models, each on its own minibatch with its own optimizer state, so the
models stay exactly independent. Architectures with BatchNorm go through the same loop one model at a time.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from auditor.config import AuditConfig, TrainConfig
from auditor.training.models import MLP, build_model
from auditor.training.trainer import EVAL_BATCH, _augment, _Normaliser, resolve_device


# What train_shadow_block can keep of the training points' class probabilities (ShadowBlock.train_probs).
PROBS_KEPT = ("none", "out_of_shard", "all")


@dataclass
class ShadowBlock:
    """Predictions of K shadow models on every training and test point, plus how each model's training went."""

    train_pred: np.ndarray        # int16 (K, n_train) predicted class
    train_p_label: np.ndarray     # float32 (K, n_train) probability of the true label
    train_probs: np.ndarray | None  # as asked (`probs`): float16 (K, n_train, classes) ('all'), float32 (n_train,
    #                                 classes) mean over the models a point is out of shard of ('out_of_shard'), or None
    test_pred: np.ndarray         # int16 (K, n_test)
    test_p_label: np.ndarray      # float32 (K, n_test)
    epochs_run: np.ndarray        # int (K,) epochs actually trained (fewer when stopped early)
    shard_train_acc: np.ndarray   # float (K,) final accuracy on the model's own shard
    test_acc: np.ndarray          # float (K,)
    seconds: float
    batched: bool
    epoch_test_acc: np.ndarray | None = None  # float (K, epochs) test accuracy after each epoch (NaN once stopped);
                                              # filled only when asked (`test_curve`), for convergence checks
    checkpoint_pred: np.ndarray | None = None  # int16 (C, K, n_train) predicted class of every training point after
                                               # each epoch of `checkpoints` (a model stopped early: its final one)


@functools.cache
def can_batch(arch: str) -> bool:
    """True when the architecture has no buffers: BatchNorm's running statistics cannot be updated under vmap."""
    return not any(True for _ in build_model(arch, 1, 2, 4).buffers())


class _Stack:
    """K models of one architecture as stacked (K, ...) parameters and buffers, run through one module template.

    Vectorised stacks run all K at once with vmap; otherwise K is 1 and the module is called directly, which lets
    BatchNorm update its (stacked) running statistics in place.
    """

    def __init__(self, modules: list[nn.Module], vectorised: bool):
        self.params, self.buffers = stack_module_state(modules)
        self.module = modules[0]
        self.vectorised = vectorised

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (k, n, classes) for per-model inputs x (k, n, ...), or one input (n, ...) shared by the models."""
        params, buffers = self.params, self.buffers
        shared = x.dim() == 4
        if self.vectorised and isinstance(self.module, MLP):
            return self._mlp(x.flatten(-3).expand(len(params["head.bias"]), -1, -1) if shared else x.flatten(-3))
        if self.vectorised:
            return vmap(self._call, in_dims=(0, 0, None if shared else 0))(params, buffers, x)
        one = {k: v[0] for k, v in params.items()}, {k: v[0] for k, v in buffers.items()}
        return self._call(*one, x if shared else x[0]).unsqueeze(0)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked MLPs on flat inputs (k, n, pixels) as two batched matmuls with the bias fused in: vmap of
        its linear layers adds the bias in a separate pass over the (k, n, classes) logits, forward and backward."""
        p = self.params
        hidden = torch.baddbmm(p["body.1.bias"].unsqueeze(1), x, p["body.1.weight"].transpose(1, 2)).relu()
        return torch.baddbmm(p["head.bias"].unsqueeze(1), hidden, p["head.weight"].transpose(1, 2))

    def subset(self, index: torch.Tensor) -> _Stack:
        """The models at `index` as a stack of their own (parameters copied once, not once per batch)."""
        part = object.__new__(_Stack)
        part.params = {k: v.detach()[index] for k, v in self.params.items()}
        part.buffers = {k: v[index] for k, v in self.buffers.items()}
        part.module, part.vectorised = self.module, self.vectorised
        return part

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the models at `index` (in that order), freeing the others' memory and compute."""
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}


class _Optimizer:
    """SGD (nesterov when momentum > 0) or Adam configured as `train_model` configures torch.optim, applied to
    stacked tensors with the same arithmetic (SGD with momentum: fused, as SGD(fused=True)); every update is
    elementwise, so each model sees only its own state."""

    def __init__(self, tc: TrainConfig):
        self.tc = tc
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], lr: float) -> None:
        """One update of every parameter in place from its gradient; the gradients are used as scratch space."""
        tc = self.tc
        self.steps += 1
        if tc.optimizer == "sgd" and tc.momentum:
            self._fused_sgd(params, grads, lr)
            return
        for (name, p), g in zip(params.items(), grads):
            if tc.weight_decay:
                g.add_(p, alpha=tc.weight_decay)
            state = self.state.setdefault(name, {})
            if tc.optimizer == "sgd":
                p.add_(g, alpha=-lr)
            else:
                beta1, beta2 = 0.9, 0.999
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = v.sqrt().div_((1 - beta2 ** self.steps) ** 0.5).add_(1e-8)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** self.steps))

    def _fused_sgd(self, params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], lr: float) -> None:
        """Nesterov SGD with weight decay in one pass over each tensor: the kernel torch.optim.SGD(fused=True) runs,
        equal to its separate add/mul/add steps up to float rounding, where those read and write the (width x
        classes) head five times a step. The kernel needs contiguous gradients (vmap's weight gradients are not)."""
        first = not self.state
        bufs = [self.state.setdefault(name, {}).setdefault("buf", torch.zeros_like(p)) for name, p in params.items()]
        torch._fused_sgd_(list(params.values()), [g.contiguous() for g in grads], bufs, weight_decay=self.tc.weight_decay,
                          momentum=self.tc.momentum, lr=lr, dampening=0.0, nesterov=True, maximize=False,
                          is_first_step=first)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the state of the models at `index`, matching `_Stack.keep`."""
        self.state = {name: {k: v[index] for k, v in s.items()} for name, s in self.state.items()}


def _validate(x_train: np.ndarray, membership: np.ndarray, seeds: Sequence[int], arch: str, batched: bool) -> None:
    if membership.shape != (len(seeds), len(x_train)):
        raise ValueError(f"membership has shape {membership.shape}; expected (len(seeds), n_train) = "
                         f"({len(seeds)}, {len(x_train)})")
    if len(seeds) == 0 or not membership.any(axis=1).all():
        raise ValueError("every shadow model needs a non-empty shard (a membership row with at least one True)")
    if batched and not can_batch(arch):
        raise ValueError(f"architecture '{arch}' has BatchNorm buffers and cannot be trained batched; "
                         "use batched=False (or None to choose automatically)")


def train_shadow_block(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                       num_classes: int, membership: np.ndarray, seeds: Sequence[int], cfg: AuditConfig, *,
                       batched: bool | None = None, stop_at_train_acc: float | None = None,
                       on_model_done: Callable[[int], None] | None = None, test_curve: bool = False,
                       amp: bool | None = None, epoch_points: int = 0, probs: str = "none",
                       checkpoints: Sequence[int] = ()) -> ShadowBlock:
    """Train model m on x_train[membership[m]] with seed seeds[m], then predict all training and test points.

    `batched` (default: whenever the architecture allows) trains all K models as one vmapped stack; the stack runs
    ceil(max shard size / batch_size) steps per epoch, so a model with a smaller shard wraps around its shard and
    sees a few points twice per epoch (shard sizes differ by at most 1 in a balanced design). With
    `stop_at_train_acc`, a model stops after the first epoch whose running train accuracy on its shard reaches it.
    `on_model_done(m)` is called as each model is evaluated. `test_curve` also measures every model's test accuracy
    after each epoch (`epoch_test_acc`), which leaves training unchanged. `amp` (default: on CUDA) runs forward
    passes under bfloat16 autocast; losses, gradients and optimizer state stay float32. `epoch_points` > the largest
    shard makes every epoch draw that many points per model (wrapping around its shard): a reduced training set then
    trains the same number of SGD steps as one of that size. `probs` keeps class probabilities of the training points
    (see ShadowBlock.train_probs): 'none' keeps memory independent of the class count beyond one batch's logits.
    `checkpoints` (epochs in 1..epochs) also predicts every training point with the same models after each of those
    epochs (`checkpoint_pred`), which leaves training unchanged: memorization within one run.
    """
    membership = np.asarray(membership, dtype=bool)
    if probs not in PROBS_KEPT:
        raise ValueError(f"probs must be one of {', '.join(PROBS_KEPT)}, got {probs!r}")
    checkpoints = [int(e) for e in checkpoints]
    if any(not 1 <= e <= cfg.train.epochs for e in checkpoints):
        raise ValueError(f"checkpoints {checkpoints} must be epochs in 1..{cfg.train.epochs} (train.epochs)")
    batched = can_batch(cfg.train.arch) if batched is None else batched
    _validate(x_train, membership, seeds, cfg.train.arch, batched)
    device = resolve_device(cfg.device)
    xt = torch.from_numpy(x_train).to(device)
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(device)
    xs = torch.from_numpy(x_test).to(device)
    ys = torch.from_numpy(np.asarray(y_test, dtype=np.int64)).to(device)
    k = len(seeds)
    block = ShadowBlock(
        train_pred=np.zeros((k, len(xt)), np.int16), train_p_label=np.zeros((k, len(xt)), np.float32),
        train_probs={"all": lambda: np.zeros((k, len(xt), num_classes), np.float16), "none": lambda: None,
                     "out_of_shard": lambda: np.zeros((len(xt), num_classes), np.float32)}[probs](),
        test_pred=np.zeros((k, len(xs)), np.int16), test_p_label=np.zeros((k, len(xs)), np.float32),
        epochs_run=np.zeros(k, np.int64), shard_train_acc=np.zeros(k), test_acc=np.zeros(k), seconds=0.0,
        batched=batched, epoch_test_acc=np.full((k, cfg.train.epochs), np.nan) if test_curve else None,
        checkpoint_pred=np.zeros((len(checkpoints), k, len(xt)), np.int16) if checkpoints else None)
    trainer = _Trainer(xt, yt, xs, ys, num_classes, cfg, device, block, membership, on_model_done,
                       device.type == "cuda" if amp is None else amp, epoch_points, checkpoints)
    started = time.perf_counter()
    for group in ([list(range(k))] if batched else [[m] for m in range(k)]):
        trainer.train(group, [seeds[m] for m in group], batched, stop_at_train_acc)
    block.seconds = time.perf_counter() - started
    if probs == "out_of_shard":  # sums -> means; a point in every shard keeps a row of zeros
        block.train_probs /= np.maximum((~membership).sum(axis=0), 1)[:, None]
    return block


class _Trainer:
    """The training loop shared by the batched and the one-by-one path; writes each model's results into `block`."""

    def __init__(self, xt: torch.Tensor, yt: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, num_classes: int,
                 cfg: AuditConfig, device: torch.device, block: ShadowBlock, membership: np.ndarray,
                 on_model_done: Callable[[int], None] | None, amp: bool, epoch_points: int = 0,
                 checkpoints: Sequence[int] = ()):
        self.xt, self.yt, self.xs, self.ys = xt, yt, xs, ys
        self.epoch_points, self.checkpoints = epoch_points, list(checkpoints)
        self.norm = _Normaliser(xt)
        self.num_classes, self.tc = num_classes, cfg.train
        self.device, self.amp = device, amp
        self.block, self.membership, self.on_model_done = block, membership, on_model_done

    def train(self, models: list[int], seeds: list[int], vectorised: bool, stop_at: float | None) -> None:
        """Train the block's models `models` (with `seeds`) as one stack, evaluating each as it finishes."""
        tc, device = self.tc, self.device
        modules = []
        for seed in seeds:
            torch.manual_seed(seed)
            modules.append(build_model(tc.arch, self.xt.shape[1], self.num_classes, tc.width,
                                       self.xt.shape[-1]).to(device))
        stack, opt = _Stack(modules, vectorised), _Optimizer(tc)
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        shards = [torch.from_numpy(np.flatnonzero(self.membership[m])).to(device) for m in models]
        n = max(self.epoch_points, *(len(s) for s in shards))
        steps_per_epoch = math.ceil(n / tc.batch_size)
        total_steps = tc.epochs * steps_per_epoch
        step = 0
        for epoch in range(1, tc.epochs + 1):
            stack.module.train()
            orders = torch.stack([s[torch.randperm(len(s), generator=g).to(device)][torch.arange(n, device=device) % len(s)]
                                  for s, g in zip(shards, gens)])
            correct = torch.zeros(len(models), device=device)
            for b in range(steps_per_epoch):
                idx = orders[:, b * tc.batch_size:(b + 1) * tc.batch_size]
                xb = self.xt[idx]
                if tc.augment:
                    xb = torch.stack([_augment(x, g) for x, g in zip(xb, gens)])
                yb = self.yt[idx]
                lr = tc.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps)) if tc.schedule == "cosine" else tc.lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                    logits = stack.forward(self.norm(xb))
                losses = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
                if stop_at is not None:  # the running accuracy: an argmax over every class, only when stopping
                    correct += (logits.detach().argmax(-1) == yb).sum(1)
                grads = torch.autograd.grad(losses.view_as(yb).mean(1).sum(), list(stack.params.values()))
                opt.step(stack.params, grads, lr)
                step += 1
            if self.block.epoch_test_acc is not None:
                self._test_accuracy(stack, models, epoch)
            for c, at in enumerate(self.checkpoints):
                if at == epoch < tc.epochs:  # the last epoch's predictions are the final ones (`_evaluate`)
                    self.block.checkpoint_pred[c, models] = self._predict(stack, self.xt).cpu().numpy()
            if epoch == tc.epochs:
                done = torch.ones(len(models), dtype=torch.bool, device=device)
            elif stop_at is not None:
                done = correct / n >= stop_at
            else:
                continue
            if not done.any():
                continue
            finished, remaining = done.nonzero().flatten(), (~done).nonzero().flatten()
            self._evaluate(stack, finished, [models[i] for i in finished.tolist()], epoch)
            if not len(remaining):
                return
            stack.keep(remaining)
            opt.keep(remaining)
            models, shards, gens = ([items[i] for i in remaining.tolist()] for items in (models, shards, gens))

    @torch.inference_mode()
    def _predict(self, stack: _Stack, x: torch.Tensor) -> torch.Tensor:
        """Predicted class (models in the stack, len(x)) of every row of `x`, in eval mode (the next epoch switches
        back to training mode, so training itself is unchanged)."""
        stack.module.eval()
        preds = []
        for start in range(0, len(x), EVAL_BATCH):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                preds.append(stack.forward(self.norm(x[start:start + EVAL_BATCH])).argmax(-1))
        return torch.cat(preds, dim=1)

    def _test_accuracy(self, stack: _Stack, models: list[int], epoch: int) -> None:
        """Record the test accuracy of every model still in the stack after `epoch`."""
        if not len(self.xs):
            return
        correct = (self._predict(stack, self.xs) == self.ys).float().mean(1)
        self.block.epoch_test_acc[models, epoch - 1] = correct.cpu().numpy()

    @torch.inference_mode()
    def _evaluate(self, stack: _Stack, index: torch.Tensor, models: list[int], epoch: int) -> None:
        """Predict every training and test point with the stacked models at `index` and store the results."""
        stack.module.eval()
        block, stack = self.block, stack.subset(index)
        for x, y, pred_out, p_out, probs_out in (
                (self.xt, self.yt, block.train_pred, block.train_p_label, block.train_probs),
                (self.xs, self.ys, block.test_pred, block.test_p_label, None)):
            for start in range(0, len(x), EVAL_BATCH):
                xb = self.norm(x[start:start + EVAL_BATCH])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    probs = torch.softmax(stack.forward(xb).float(), dim=-1).cpu()
                yb = y[start:start + EVAL_BATCH].cpu().expand(len(models), -1)
                pred_out[models, start:start + len(xb)] = probs.argmax(-1).numpy()
                p_out[models, start:start + len(xb)] = probs.gather(2, yb[..., None])[..., 0].numpy()
                if probs_out is not None and probs_out.ndim == 3:
                    probs_out[models, start:start + len(xb)] = probs.numpy()
                elif probs_out is not None:
                    for row, m in enumerate(models):
                        out = ~self.membership[m, start:start + len(xb)]
                        probs_out[start:start + len(xb)][out] += probs[row].numpy()[out]
        y_train, y_test = self.yt.cpu().numpy(), self.ys.cpu().numpy()
        for c, at in enumerate(self.checkpoints):
            if at >= epoch:
                block.checkpoint_pred[c, models] = block.train_pred[models]
        for m in models:
            shard = self.membership[m]
            block.epochs_run[m] = epoch
            block.shard_train_acc[m] = (block.train_pred[m, shard] == y_train[shard]).mean()
            block.test_acc[m] = (block.test_pred[m] == y_test).mean() if len(y_test) else float("nan")
            if self.on_model_done:
                self.on_model_done(m)
