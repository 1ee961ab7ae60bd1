"""The training and test images of the audit database as model-ready arrays, shared by every training stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.data import sample_rows
from auditor.review import queries
from auditor.config import AuditConfig
from auditor.memorization.executor import ShadowData
from auditor.data.ingest import PROBLEM_COLUMNS
from auditor.store.provenance import fingerprint
from auditor.store.run_rows import record_problems
from auditor.store.database import Store
from auditor.data.tensors import load_images, resolve_channels
from pipelines.progress import ProgressFactory, silent


@dataclass
class TrainingArrays:
    """uint8 NCHW images with label indices and sample ids, in sample_id order, plus a hash of exactly this data."""

    train_ids: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    test_ids: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    channels: int
    data_hash: str

    def shadow_data(self) -> ShadowData:
        """The arrays an executor's tasks train and predict on."""
        return ShadowData(self.x_train, self.y_train, self.x_test, self.y_test, len(self.labels))


@dataclass(frozen=True)
class TrainLabels:
    """The training sample ids and label indices in sample_id order, as `TrainingArrays` has them (but for files that
    vanished since ingest), read without decoding an image: enough to plan a stage."""

    train_ids: np.ndarray
    y_train: np.ndarray


def train_labels(store: Store) -> TrainLabels:
    """The ingested training samples' ids and label indices, in sample_id order."""
    frame = sample_rows.train_samples(store)
    if frame.empty:
        raise RuntimeError("no training images in the database; run the ingest stage on a dataset with a train "
                           "split first")
    return TrainLabels(frame["sample_id"].to_numpy(), frame["label_index"].to_numpy())


def _load_split(store: Store, frame: pd.DataFrame, cfg: AuditConfig, channels: int, split: str,
                progress: ProgressFactory) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode a split for training; files that vanished since ingest become `problems` and are left out."""
    bar = progress(f"load {split}", len(frame), "img")
    pixels, failed = load_images(frame["path"].tolist(), cfg.data.image_size, channels,
                                 workers=cfg.data.workers, progress=bar.update,
                                 pixel_hashes=frame["pixel_hash"].tolist())
    bar.close()
    if failed:
        rows = [{"source": frame["path"].iloc[i], "sample_id": frame["sample_id"].iloc[i], "reason": reason,
                 "code": "unreadable", "severity": "error", "action": "skipped", "stage": "train"}
                for i, reason in failed.items()]
        record_problems(store, pd.DataFrame(rows, columns=PROBLEM_COLUMNS))
        keep = np.setdiff1d(np.arange(len(frame)), list(failed))
        frame, pixels = frame.iloc[keep].reset_index(drop=True), pixels[keep]
    return frame, pixels


def load_training_arrays(store: Store, cfg: AuditConfig, progress: ProgressFactory = silent) -> TrainingArrays:
    """Decode train and test images at the configured size and channel count."""
    samples = sample_rows.decodable_samples(store)
    if not (samples["split"] == "train").any():
        raise RuntimeError("no readable training images in the database; run the ingest stage on a dataset "
                           "with a train split first")
    labels = queries.class_labels(store)
    channels = resolve_channels(cfg.data.channels, samples["mode"].tolist())
    train, x_train = _load_split(store, samples[samples["split"] == "train"], cfg, channels, "train", progress)
    test, x_test = _load_split(store, samples[samples["split"] == "test"], cfg, channels, "test", progress)
    data_hash = fingerprint(train["sample_id"].tolist(), train["pixel_hash"].tolist(), train["label_index"].tolist(),
                            test["pixel_hash"].tolist(), channels)
    return TrainingArrays(train_ids=train["sample_id"].to_numpy(), x_train=x_train,
                          y_train=train["label_index"].to_numpy(), test_ids=test["sample_id"].to_numpy(),
                          x_test=x_test, y_test=test["label_index"].to_numpy(), labels=labels, channels=channels,
                          data_hash=data_hash)


def training_fingerprint(cfg: AuditConfig, data_hash: str) -> str:
    """Identity of one seed's training: everything that changes the model, not how many seeds or flags."""
    spec = cfg.to_dict()
    for key in ("profile", "candidates", "convergence", "memorization", "embeddings", "detectors", "executor"):
        spec.pop(key)
    spec["train"] = {k: v for k, v in spec["train"].items() if k != "seeds"}
    # Ingest-only keys (decoding threads, caps and confinement of what is read) never change what a model trains on.
    spec["data"] = {k: v for k, v in spec["data"].items() if k not in ("workers", "max_file_mb", "max_megapixels",
                                                                  "allow_outside_root")}
    return fingerprint(spec, data_hash)
