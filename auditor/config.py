"""Typed, validated run configuration: shipped defaults, then a profile, then the user's file."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    image_size: int
    channels: str | int
    limit_per_class: int
    workers: int
    # Added after the first release: defaults here too, so configs stored with older runs still load.
    max_file_mb: int = 100
    max_megapixels: int = 40
    allow_outside_root: bool = False


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    width: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    augment: bool
    seeds: int


@dataclass(frozen=True)
class DynamicsConfig:
    record: list
    every_n_batches: int
    el2n_epoch: int


@dataclass(frozen=True)
class ConvergenceConfig:
    window: int
    tolerance: float


@dataclass(frozen=True)
class CandidateConfig:
    fraction: float
    apb_cutoff: float
    max: int


@dataclass(frozen=True)
class MemorizationConfig:
    method: str
    fraction: float
    models: int
    per_candidate: float
    min_models: int
    threshold: float
    block: int
    stop_at_train_acc: float
    influence_min: float
    influence_top_k: int
    loo_points: list
    loo_models: int
    # Added after the first release: defaults here too, so configs stored with older runs still load.
    half_width: float = 0.17
    min_in: int = 10
    min_out: int = 10
    audit_fraction: float = 0.25
    audit_min_per_band: int = 10
    bands: int = 20
    rate_floor: float = 0.05
    max_sharded: float = 0.5
    loo_sample: int = 30
    influence_q: float = 0.05
    influence_min_models: int = 20
    max_models: int = 0


@dataclass(frozen=True)
class EmbeddingConfig:
    kind: str
    clip_model: str
    clip_pretrained: str
    clip_checkpoint: str
    imagenet_size: int
    batch_size: int
    chunk_size: int


@dataclass(frozen=True)
class DetectorConfig:
    k: int
    exact_below: int
    index: str
    duplicate_threshold: float
    leak_threshold: float
    kfold: int
    pixel_match: bool
    pixel_max_shift: int
    outlier_c: float = 4.0
    outlier_alpha: float = 0.005
    outlier_fdr: float = 0.05
    copy_fdr: float = 0.05
    image_quality_c: float = 5.0


@dataclass(frozen=True)
class ExecutorConfig:
    """Where shadow, LOO and experiment models train; never part of a model's identity (results do not change)."""

    kind: str = "local"
    address: str = ""
    threads: int = 0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    max_in_flight: int = 0
    local_cpus: int = 0


@dataclass(frozen=True)
class AuditConfig:
    seed: int
    device: str
    data: DataConfig
    train: TrainConfig
    dynamics: DynamicsConfig
    convergence: ConvergenceConfig
    candidates: CandidateConfig
    memorization: MemorizationConfig
    embeddings: EmbeddingConfig
    detectors: DetectorConfig
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)
    profile: str = "default"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable), as stored with every run."""
        return dataclasses.asdict(self)


# Allowed values for enumerated keys and numeric lower bounds; checked after merging.
_CHOICES = {
    "device": {"auto", "cpu", "cuda"},
    "data.channels": {"auto", 1, 3},
    "train.arch": {"small_cnn", "resnet18", "mlp"},
    "train.optimizer": {"sgd", "adam"},
    "train.schedule": {"cosine", "constant"},
    "memorization.method": {"ploo_improved", "ploo"},
    "embeddings.kind": {"imagenet", "clip", "model"},
    "detectors.index": {"hnsw", "ivf"},
    "executor.kind": {"local", "ray"},
}
_MINIMUM = {
    "data.image_size": 8, "data.limit_per_class": 0, "data.workers": 1, "data.max_file_mb": 1,
    "data.max_megapixels": 1,
    "train.width": 4, "train.epochs": 1, "train.batch_size": 1, "train.lr": 1e-12,
    "train.momentum": 0.0, "train.weight_decay": 0.0, "train.seeds": 1,
    "dynamics.every_n_batches": 1, "dynamics.el2n_epoch": 1,
    "convergence.window": 1, "convergence.tolerance": 0.0,
    "candidates.fraction": 0.0, "candidates.max": 0,
    "memorization.fraction": 0.0, "memorization.models": 0, "memorization.per_candidate": 0.0,
    "memorization.min_models": 2, "memorization.block": 1, "memorization.stop_at_train_acc": 0.0,
    "memorization.influence_min": 0.0, "memorization.influence_top_k": 1, "memorization.loo_models": 1,
    "memorization.half_width": 0.001, "memorization.min_in": 1, "memorization.min_out": 1,
    "memorization.audit_fraction": 0.0, "memorization.audit_min_per_band": 0, "memorization.bands": 1,
    "memorization.rate_floor": 0.0, "memorization.max_sharded": 0.0, "memorization.loo_sample": 1,
    "memorization.influence_q": 0.0, "memorization.influence_min_models": 2,
    "memorization.max_models": 0,
    "embeddings.batch_size": 1, "embeddings.imagenet_size": 32, "embeddings.chunk_size": 1, "detectors.k": 1, "detectors.exact_below": 0,
    "detectors.duplicate_threshold": 0.0, "detectors.leak_threshold": 0.0, "detectors.kfold": 2,
    "detectors.pixel_max_shift": 0, "detectors.outlier_c": 0.5, "detectors.outlier_alpha": 1e-6, "detectors.image_quality_c": 0.5,
    "detectors.outlier_fdr": 1e-6, "detectors.copy_fdr": 1e-6,
    "executor.threads": 0, "executor.gpus_per_task": 0.0,
    "executor.max_retries": 0, "executor.max_in_flight": 0, "executor.local_cpus": 0,
}
_RECORD_MODES = {"batch", "epoch_end"}


def _defaults() -> dict[str, Any]:
    return tomllib.loads(resources.files("assets").joinpath("default.toml").read_text())


def _merge(base: dict[str, Any], override: dict[str, Any], where: str) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`; unknown keys are errors (typos must not pass silently)."""
    out = dict(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in base:
            known = ", ".join(sorted(k for k in base if k != "profiles"))
            raise ConfigError(f"unknown config key '{path}'; known keys here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a table, got {value!r}")
            out[key] = _merge(base[key], value, f"{path}.")
        else:
            out[key] = value
    return out


def _coerce(path: str, value: Any, kind: Any) -> Any:
    """Check one leaf value against its declared type (ints are accepted where floats are expected)."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
        return float(value)
    if kind is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        return list(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"config key '{where}{f.name}' is missing")
        kind = hints[f.name]
        value = values[f.name]
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, value, f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{where}{f.name}", value, kind)
    return cls(**kwargs)


def _validate(cfg: AuditConfig) -> None:
    flat = cfg.to_dict()
    for path, allowed in _CHOICES.items():
        value = _lookup(flat, path)
        if value not in allowed:
            shown = " | ".join(sorted(map(str, allowed)))
            raise ConfigError(f"config key '{path}' = {value!r} is not allowed; use one of: {shown}")
    for path, low in _MINIMUM.items():
        value = _lookup(flat, path)
        if value < low:
            raise ConfigError(f"config key '{path}' = {value!r} is too small; it must be >= {low}")
    if not 0.0 <= cfg.candidates.fraction <= 1.0:
        raise ConfigError(f"config key 'candidates.fraction' = {cfg.candidates.fraction} must be between 0 and 1")
    modes = set(cfg.dynamics.record)
    if not modes or not modes <= _RECORD_MODES:
        raise ConfigError(
            f"config key 'dynamics.record' = {cfg.dynamics.record!r}; use a non-empty list of: batch, epoch_end")
    if not 0.0 <= cfg.memorization.fraction < 1.0:
        raise ConfigError(f"config key 'memorization.fraction' = {cfg.memorization.fraction} must be in (0, 1), "
                          "or 0 for the method's default (pLOO 0.7, pLOO-improved 0.5)")
    for key in ("audit_fraction", "rate_floor", "max_sharded", "influence_q"):
        if getattr(cfg.memorization, key) > 1.0:
            raise ConfigError(f"config key 'memorization.{key}' = {getattr(cfg.memorization, key)} must be at most 1")
    for key in ("outlier_fdr", "copy_fdr"):
        if getattr(cfg.detectors, key) >= 1.0:
            raise ConfigError(f"config key 'detectors.{key}' = {getattr(cfg.detectors, key)} must be below 1 "
                              "(a false discovery rate, e.g. 0.05)")
    if cfg.memorization.stop_at_train_acc > 1.0:
        raise ConfigError("config key 'memorization.stop_at_train_acc' must be at most 1 (0 disables early stopping)")
    if cfg.dynamics.el2n_epoch > cfg.train.epochs:
        raise ConfigError(
            f"config key 'dynamics.el2n_epoch' = {cfg.dynamics.el2n_epoch} is after the last epoch "
            f"({cfg.train.epochs}); choose an early epoch such as 1 or 2")


def _lookup(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def load_config(path: str | Path | None = None, profile: str | None = None,
                overrides: dict[str, Any] | None = None) -> AuditConfig:
    """Resolve defaults <- profile <- user TOML file <- explicit overrides, and validate every value.

    A profile is a preset; the user's file refines it, so a key the user sets always wins."""
    raw = _defaults()
    profiles = raw.pop("profiles")
    if profile is not None and profile != "default":
        if profile not in profiles:
            raise ConfigError(f"unknown profile '{profile}'; use one of: {', '.join(sorted(profiles))}")
        raw = _merge(raw, profiles[profile], "")
    if path is not None:
        path = Path(path)
        try:
            user = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file to --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        user.pop("profiles", None)
        raw = _merge(raw, user, "")
    if overrides:
        raw = _merge(raw, overrides, "")
    raw["profile"] = profile or "default"
    cfg = _build(AuditConfig, raw, "")
    _validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> AuditConfig:
    """Rebuild a config stored with a run (inverse of AuditConfig.to_dict)."""
    cfg = _build(AuditConfig, values, "")
    _validate(cfg)
    return cfg
