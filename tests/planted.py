"""A small dataset with planted copies, audited by the real pipeline: the dashboard's evidence tests read what the
detectors wrote (pairs, flags and their JSON evidence, thresholds), not rows a test inserted.

Planted into 24 training and 12 test images per class of the default dataset:
- `dup_exact`: the same file as a training image, same label (an exact duplicate);
- `dup_shift`: a training image shifted by one pixel, same label (a pixel duplicate);
- `leak_exact`: the same file as a training image in the test split under another label (an exact, conflicting leak);
- `leak_shift`: a training image shifted by one pixel in the test split, same label (a pixel leak);
- `leak_dim`: a training image at 80 % contrast in the test split, same label (a near copy, not an exact one);
- `blank_test`: an all-black test image (an `image_quality` flag: dark, no contrast);
- `ghost_0001`: a file that is not an image (unreadable; it never reaches `samples`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

GHOST = "ghost_0001"
BLANK = "blank_test"
TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 12
STAGES = ("ingest", "train", "scores", "memorization", "embeddings", "detectors")
# What each planted copy must become in `pairs`: (pair kind, the source's id, the copy's id).
PLANTS = {"duplicate": ("exact_duplicate", "dup_exact"), "pixel_duplicate": ("pixel_duplicate", "dup_shift"),
          "leaked": ("exact_leak", "leak_exact"), "pixel_leak": ("pixel_leak", "leak_shift"),
          "leak": ("leak", "leak_dim")}


def _edited(source: Path, target: Path, edit) -> None:
    Image.fromarray(edit(np.asarray(Image.open(source)))).save(target)


def plant_manifest(default_manifest: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """Write the planted manifest (absolute paths) under `root`; returns it and {plant: id of its training source}."""
    base = pd.read_csv(default_manifest, dtype=str)
    base["path"] = [str((default_manifest.parent / p).resolve()) for p in base["path"]]
    train = base[base["split"] == "train"].groupby("label").head(TRAIN_PER_CLASS).reset_index(drop=True)
    test = base[base["split"] == "test"].groupby("label").head(TEST_PER_CLASS)
    sources = {"duplicate": train.iloc[3], "pixel_duplicate": train.iloc[30], "leaked": train.iloc[60],
               "pixel_leak": train.iloc[90], "leak": train.iloc[120]}
    shift = lambda pixels: np.roll(pixels, 1, axis=1)  # noqa: E731
    _edited(Path(sources["pixel_duplicate"]["path"]), root / "dup_shift.png", shift)
    _edited(Path(sources["pixel_leak"]["path"]), root / "leak_shift.png", shift)
    _edited(Path(sources["leak"]["path"]), root / "leak_dim.png", lambda pixels: (pixels * 0.8).astype(np.uint8))
    (root / "ghost.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.new("L", Image.open(sources["leak"]["path"]).size).save(root / "blank.png")
    leaked = sources["leaked"]
    other_label = "9" if leaked["label"] != "9" else "8"
    planted = pd.DataFrame([
        {**sources["duplicate"], "sample_id": "dup_exact"},
        {**sources["pixel_duplicate"], "sample_id": "dup_shift", "path": str(root / "dup_shift.png")},
        {**leaked, "sample_id": "leak_exact", "split": "test", "label": other_label},
        {**sources["pixel_leak"], "sample_id": "leak_shift", "split": "test", "path": str(root / "leak_shift.png")},
        {**sources["leak"], "sample_id": "leak_dim", "split": "test", "path": str(root / "leak_dim.png")},
        {"sample_id": GHOST, "path": str(root / "ghost.png"), "label": "1", "split": "train"},
        {"sample_id": BLANK, "path": str(root / "blank.png"), "label": "0", "split": "test"}])
    manifest = root / "manifest.csv"
    pd.concat([train, test, planted], ignore_index=True)[["sample_id", "path", "label", "split"]].to_csv(
        manifest, index=False)
    return manifest, {plant: str(row["sample_id"]) for plant, row in sources.items()}


def build_planted_db(default_manifest: Path, root: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """Audit the planted dataset with the real stages (quick profile, the small database's settings) into
    `root`/audit.duckdb; returns it and {plant: (source id, copy id)} (for leaks: (train id, test id))."""
    from auditor.config import load_config
    from auditor.store.database import Store
    from conftest import SMALL_OVERRIDES
    from pipelines.runner import run_pipeline

    manifest, sources = plant_manifest(default_manifest, root)
    path = root / "audit.duckdb"
    # The manifest names the default dataset's files by absolute path, outside its own folder.
    cfg = load_config(profile="quick", overrides={**SMALL_OVERRIDES,
                                                  "data": {"limit_per_class": 0, "allow_outside_root": True}})
    run_pipeline(Store(path), str(manifest), cfg, stages=STAGES)
    return path, {plant: (sources[plant], copy) for plant, (_, copy) in PLANTS.items()}
