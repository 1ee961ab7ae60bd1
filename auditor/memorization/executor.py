"""Where blocks of shadow models are trained: in this process, or as tasks on a Ray cluster.

A `BlockTask` is the idempotent unit of work: the models of one block with their seeds and shard memberships.
Its result depends only on the task, the data and the recipe, so a task that Ray retries after its worker died
returns the same predictions. Executors only train; the caller is the single writer that commits each result
(keyed by model id) to DuckDB, in completion order.
"""

from __future__ import annotations

import contextlib
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from auditor.config import AuditConfig, ExecutorConfig
from auditor.memorization.shadow_engine import ShadowBlock, train_shadow_block


@dataclass(frozen=True)
class ShadowData:
    """The arrays every task trains and predicts on (uint8 NCHW images, label indices)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class BlockTask:
    """Train models `models` (seeds `seeds`) on the shards `membership` (len(models) x n_train, bool)."""

    key: str
    models: tuple[int, ...]
    seeds: tuple[int, ...]
    membership: np.ndarray
    stop_at_train_acc: float | None = None
    test_curve: bool = False
    epoch_points: int = 0      # > 0: points drawn per epoch by every model (equal SGD steps across shard sizes)
    probs: str = "none"        # the training points' class probabilities to keep (shadow_engine.PROBS_KEPT)
    checkpoints: tuple[int, ...] = ()  # epochs after which every training point is also predicted (same models)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with `n` torch threads (0: leave torch's default); results are bit-identical only at equal counts."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_task(data: ShadowData, task: BlockTask, cfg: AuditConfig) -> ShadowBlock:
    """Train one block task with the configured thread count (the same function runs locally and on Ray)."""
    with _threads(cfg.executor.threads):
        return train_shadow_block(data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes,
                                  task.membership, list(task.seeds), cfg, stop_at_train_acc=task.stop_at_train_acc,
                                  test_curve=task.test_curve, epoch_points=task.epoch_points, probs=task.probs,
                                  checkpoints=task.checkpoints)


class Executor(ABC):
    """Trains block tasks and yields (task, result) pairs as they finish; each task's result is yielded once."""

    name: str

    @abstractmethod
    def run(self, data: ShadowData, tasks: Iterable[BlockTask], cfg: AuditConfig) -> Iterator[tuple[BlockTask,
                                                                                                     ShadowBlock]]:
        """Train every task; yield each as it completes (order may differ from `tasks`)."""

    def describe(self) -> str:
        """One line for logs and run records."""
        return self.name


class LocalExecutor(Executor):
    """The batched engine in this process, one task after another."""

    name = "local"

    def run(self, data: ShadowData, tasks: Iterable[BlockTask], cfg: AuditConfig) -> Iterator[tuple[BlockTask,
                                                                                                     ShadowBlock]]:
        for task in tasks:
            yield task, train_task(data, task, cfg)


def _remote_train(data: ShadowData, task: BlockTask, cfg: AuditConfig) -> ShadowBlock:
    """Body of the Ray task: arrays arrive read-only from the object store, so copy before torch shares them."""
    own = ShadowData(*(np.array(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)), data.num_classes)
    return train_task(own, task, cfg)


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry for minutes); other forms pass through."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"cannot start or reach the Ray cluster {address}: nothing answers there ({exc}). "
                           "Check the address (`ray status` on the head node prints it)") from None


class RayExecutor(Executor):
    """Tasks on a Ray cluster: an existing one by address, or a local one started on loopback.

    The data goes to the object store once; at most `max_in_flight` tasks are queued at a time, so the driver's
    memory stays bounded. A task whose worker dies is retried by Ray (`max_retries`); an exception inside a task
    is not retried (training is deterministic, so it would fail again) and stops the run with its message.
    """

    name = "ray"

    def __init__(self, ec: ExecutorConfig):
        try:
            import ray
        except ImportError:
            raise RuntimeError("executor 'ray' needs the ray package: pip install 'memaudit[ray]'") from None
        self.ray, self.ec = ray, ec
        if not ray.is_initialized():
            _probe(ec.address)
            try:
                if ec.address:
                    ray.init(address=ec.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=ec.local_cpus or None, include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:
                raise RuntimeError(
                    f"cannot start or reach the Ray cluster {ec.address or '(local)'}: {str(exc).splitlines()[0]}. "
                    "Check the address (`ray status` on the head node); a cluster with token authentication "
                    "also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
        self._train = ray.remote(_remote_train)

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        return (f"ray ({self.ec.address or 'local'}: {int(resources.get('CPU', 0))} CPUs, "
                f"{int(resources.get('GPU', 0))} GPUs)")

    def _in_flight_limit(self) -> int:
        if self.ec.max_in_flight:
            return self.ec.max_in_flight
        per_task = max(self.ec.threads, 1)
        return max(2, 2 * int(self.ray.cluster_resources().get("CPU", 1)) // per_task)

    def run(self, data: ShadowData, tasks: Iterable[BlockTask], cfg: AuditConfig) -> Iterator[tuple[BlockTask,
                                                                                                     ShadowBlock]]:
        ray, ec = self.ray, self.ec
        data_ref = ray.put(data)
        options = {"num_cpus": max(ec.threads, 1), "num_gpus": ec.gpus_per_task, "max_retries": ec.max_retries,
                   "retry_exceptions": False}
        pending: dict = {}
        queue, limit = iter(tasks), self._in_flight_limit()
        try:
            while True:
                for task in queue:
                    pending[self._train.options(**options).remote(data_ref, task, cfg)] = task
                    if len(pending) >= limit:
                        break
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    raise RuntimeError(f"block {task.key} failed on Ray ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0]}); re-run the same command to resume, finished "
                                       "blocks are kept") from exc
                yield task, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def make_executor(ec: ExecutorConfig) -> Executor:
    """The executor the config names."""
    return RayExecutor(ec) if ec.kind == "ray" else LocalExecutor()

