"""The detector contract: a detector is one module of auditor/detectors/ named by its flag kind's `detector` entry in
auditor.detectors.flag_kinds; its `detect(context)` reads the shared context (the kNN graph, the pixels) and returns a uniform
result (flags in FLAG_COLUMNS, each detail a JSON object with a human `summary`, and the thresholds it calibrated),
which the detectors stage writes to `flags` and `thresholds`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from auditor.config import DetectorConfig
from auditor.detectors.thresholds import Threshold
from auditor.detectors.neighbors import KnnGraph


@dataclass(frozen=True)
class DetectorContext:
    """What every detector may read: the training points' ids and label indices, their embeddings and kNN graph
    over them (row i of `graph` and `embeddings` is train_ids[i]), and `images()`: (ids, uint8 NCHW pixels) of each
    split's readable images, decoded on first call and shared."""

    train_ids: np.ndarray
    labels: np.ndarray
    graph: KnnGraph
    embeddings: np.ndarray
    images: Callable[[], list[tuple[np.ndarray, np.ndarray]]]
    config: DetectorConfig
    seed: int


@dataclass(frozen=True)
class DetectorResult:
    """A detector's flags (FLAG_COLUMNS) and its thresholds by `thresholds` row kind."""

    flags: pd.DataFrame
    thresholds: dict[str, Threshold] = field(default_factory=dict)
