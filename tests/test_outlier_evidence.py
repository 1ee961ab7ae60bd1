"""The outlier flag end to end: three far-away images (noise, a checkerboard, stripes) planted among the digits of a
small dataset are flagged `outlier` by the real detectors stage at a false discovery rate of 5 %, as the old
per-image cut flagged them, and no digit is; the Review and Point detail pages show the flag with its evidence (the
distance, what is typical on this dataset, the calibrated cut and how many of the flags may be ordinary images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.common import DB_ENV
from auditor.intervals import jeffreys_interval
from auditor.store.database import Store
from test_app import review_with_flag, show_evidence, shown_ids

POINT = str(Path(__file__).resolve().parent.parent / "app" / "views" / "point.py")
TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 12
STAGES = ("ingest", "train", "scores", "embeddings", "detectors")


def far_images(width: int, height: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Grayscale images unlike any digit and unlike each other, by sample id."""
    yy, xx = np.mgrid[:height, :width]
    return {"far_noise": np.random.default_rng(seed).integers(0, 256, (height, width)).astype(np.uint8),
            "far_checker": (((yy // 4 + xx // 4) % 2) * 255).astype(np.uint8),
            "far_stripes": ((yy // 2 % 2) * 255).astype(np.uint8)}


@pytest.fixture(scope="module")
def outlier_db(default_manifest, tmp_path_factory) -> tuple[Path, set[str]]:
    """24 training and 12 test digits per class of the default dataset plus the far-away training images, audited by
    the real stages with the ImageNet embedder at the standard profile's 128 pixels (the quick profile's 3-epoch
    audit model does not set them apart, and its thresholds say so); returns the database and the far images' ids."""
    from auditor.config import load_config
    from conftest import SMALL_OVERRIDES
    from pipelines.runner import run_pipeline

    root = tmp_path_factory.mktemp("outlier-db")
    base = pd.read_csv(default_manifest, dtype=str)
    base["path"] = [str((default_manifest.parent / p).resolve()) for p in base["path"]]
    train = base[base["split"] == "train"].groupby("label").head(TRAIN_PER_CLASS)
    test = base[base["split"] == "test"].groupby("label").head(TEST_PER_CLASS)
    far = far_images(*Image.open(train["path"].iloc[0]).size)
    for sample_id, pixels in far.items():
        Image.fromarray(pixels, "L").save(root / f"{sample_id}.png")
    planted = pd.DataFrame([{"sample_id": sample_id, "path": str(root / f"{sample_id}.png"), "label": str(i),
                             "split": "train"} for i, sample_id in enumerate(far)])
    manifest = root / "manifest.csv"
    pd.concat([train, test, planted], ignore_index=True)[["sample_id", "path", "label", "split"]].to_csv(
        manifest, index=False)
    cfg = load_config(profile="quick", overrides={
        **SMALL_OVERRIDES, "data": {"limit_per_class": 0, "allow_outside_root": True},
        "embeddings": {"kind": "imagenet", "imagenet_size": 128}})
    path = root / "audit.duckdb"
    run_pipeline(Store(path), str(manifest), cfg, stages=STAGES)
    return path, set(far)


def outliers(store: Store) -> dict[str, dict]:
    """The evidence of every `outlier` flag, by sample id."""
    frame = store.query("SELECT sample_id, detail FROM flags WHERE kind = 'outlier'")
    return {row.sample_id: json.loads(row.detail) for row in frame.itertuples()}


def test_the_far_images_and_no_digit_are_outliers(outlier_db):
    path, far = outlier_db
    store = Store(path)
    found = outliers(store)
    assert set(found) == far
    cut = store.scalar("SELECT value FROM thresholds WHERE kind = 'outlier'")
    assert all(e["distance"] > e["cut"] == pytest.approx(cut, abs=1e-6) for e in found.values())
    assert all(e["distance"] > 2 * e["median"] for e in found.values())
    detail = json.loads(store.scalar("SELECT detail FROM thresholds WHERE kind = 'outlier'"))
    # The cut separates synthetic outliers made from these digits; of the data only the three far images lie beyond.
    assert detail["separable"] and detail["flagged"] == len(far) and detail["fdr"] == 0.05
    assert detail["tested"] == store.scalar("SELECT count(*) FROM samples WHERE split = 'train'")
    assert all(r["at_flag_cut"]["recall"] == 1.0 for name, r in detail["recall"].items()
               if name in detail["calibration_types"])
    # Recall of the planted far images before (one test per image at alpha, no control) and after (Benjamini-
    # Hochberg): 3 of 3 both, Jeffreys [0.46, 1]; the old rule flagged nothing else either (null_above).
    before = sum(e["distance"] > detail["alpha_cut"] for e in found.values())
    assert before == len(found) == detail["null_above"] == len(far)
    assert jeffreys_interval(len(found), len(far))[0] > 0.46
    assert all(e["q_value"] <= 0.05 and e["flagged"] == len(far) and e["tested"] == detail["tested"]
               for e in found.values())


def test_review_shows_each_outlier_with_its_evidence(outlier_db, monkeypatch):
    path, far = outlier_db
    evidence = outliers(Store(path))
    at = review_with_flag(path, monkeypatch, "outlier")
    assert set(shown_ids(at)) == far
    for sample_id in sorted(far):
        text = "\n".join(show_evidence(at, sample_id))
        assert "#### Outlier" in text and evidence[sample_id]["summary"] in text
        assert "FDR 5 %: of 3 flagged, about 0.15 may be ordinary images" in text


def test_point_detail_shows_the_outlier_flag_with_its_evidence(outlier_db, monkeypatch):
    path, far = outlier_db
    sample_id = min(far)
    evidence = outliers(Store(path))[sample_id]
    monkeypatch.setenv(DB_ENV, str(path))
    at = AppTest.from_file(POINT)
    at.query_params["id"] = sample_id
    at.run(timeout=60)
    assert not at.exception, at.exception
    text = "\n".join(m.value.replace("\u00a0", " ").replace("\\", "") for m in at.markdown)
    score = Store(path).scalar("SELECT score FROM flags WHERE kind = 'outlier' AND sample_id = ?", [sample_id])
    assert f"#### Outlier :gray[(score {score:.2f})]" in text
    assert evidence["summary"] in text
