"""An end-to-end quick run on a small dataset with planted problems fills `flags` with every kind, with evidence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.store.database import Store

pytestmark = pytest.mark.slow
KINDS = {"memorized_candidate", "memorized", "unreadable", "duplicate", "leaked", "long_tail", "mislabeled"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory, default_manifest) -> tuple[Path, dict]:
    """40 train / 10 test images per class from the default dataset plus planted duplicates, leaks, label flips and
    a corrupt file; returns the manifest and what was planted."""
    root = tmp_path_factory.mktemp("planted")
    base = pd.read_csv(default_manifest, dtype=str)
    base["path"] = [str((default_manifest.parent / p).resolve()) for p in base["path"]]
    train = base[base["split"] == "train"].groupby("label").head(40)
    test = base[base["split"] == "test"].groupby("label").head(10)
    rows = [train, test]
    src = train.iloc[0]
    rows.append(pd.DataFrame([{**src, "sample_id": "dup_exact"},                       # same file, same label
                              {**train.iloc[1], "sample_id": "dup_conflict", "label": "9" if train.iloc[1]["label"]
                               != "9" else "8"}]))
    leak_src = train.iloc[45]
    pixels = np.asarray(Image.open(leak_src["path"]))
    shifted = np.roll(pixels, 1, axis=1)
    Image.fromarray(shifted).save(root / "near_leak.png")
    rows.append(pd.DataFrame([{**leak_src, "sample_id": "leak_exact", "split": "test"},
                              {**leak_src, "sample_id": "leak_near", "split": "test", "path": str(root / "near_leak.png")}]))
    flipped = train.iloc[[100, 180, 260]].copy()
    flips = {sid: str((int(lbl) + 3) % 10) for sid, lbl in zip(flipped["sample_id"], flipped["label"])}
    rows[0] = train.assign(label=[flips.get(s, lbl) for s, lbl in zip(train["sample_id"], train["label"])])
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows.append(pd.DataFrame([{"sample_id": "broken", "path": str(root / "broken.png"), "label": "1",
                               "split": "train"}]))
    manifest = root / "manifest.csv"
    pd.concat(rows, ignore_index=True)[["sample_id", "path", "label", "split"]].to_csv(manifest, index=False)
    return manifest, {"flips": flips, "duplicate_of": src["sample_id"], "leak_of": leak_src["sample_id"]}


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    manifest, truth = planted
    db = tmp_path_factory.mktemp("planted-db") / "audit.duckdb"
    cfg = db.with_name("c.toml")
    cfg.write_text("[data]\nallow_outside_root = true\n"  # the manifest names files by absolute path
                   "[train]\nepochs = 12\n[memorization]\nmodels = 12\n"
                   # the pretrained embedder at the standard profile's size: 28-pixel digits lose nothing at 128
                   "[embeddings]\nkind = \"imagenet\"\nimagenet_size = 128\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", str(manifest), "--db", str(db),
                           "--profile", "quick", "--config", str(cfg)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return Store(db), truth, proc


def test_every_flag_kind_is_filled(audited):
    store, _, proc = audited
    kinds = set(store.query("SELECT DISTINCT kind FROM flags")["kind"])
    assert KINDS <= kinds, f"missing {KINDS - kinds}"
    assert "flags:" in proc.stdout and "label issues from" in proc.stdout


def test_planted_duplicates_and_leaks_are_found_with_evidence(audited):
    store, truth, _ = audited
    pairs = store.query("SELECT a_id, b_id, kind, conflicting FROM pairs")
    exact = pairs[pairs["kind"] == "exact_duplicate"]
    assert {truth["duplicate_of"], "dup_exact"} in [set(p) for p in exact[["a_id", "b_id"]].to_numpy()]
    leak = pairs[pairs["kind"].isin(["exact_leak", "leak"])]
    assert {(truth["leak_of"], "leak_exact"), (truth["leak_of"], "leak_near")} <= set(map(tuple, leak[["a_id", "b_id"]]
                                                                                         .to_numpy()))
    assert pairs["conflicting"].any()  # dup_conflict: same pixels, another label
    flag = store.query("SELECT detail FROM flags WHERE kind = 'leaked' AND sample_id = 'leak_near'")
    detail = json.loads(flag["detail"].iloc[0])
    assert detail["twin"] == truth["leak_of"] and detail["threshold"] > 0 and "threshold_method" in detail
    pixel = pairs[pairs["kind"] == "pixel_leak"]
    assert (truth["leak_of"], "leak_near") in set(map(tuple, pixel[["a_id", "b_id"]].to_numpy()))
    thresholds = store.query("SELECT kind, value, method FROM thresholds")
    pair_cuts = {"duplicate", "leaked", "pixel_duplicate", "pixel_leak"}
    assert set(thresholds["kind"]) == pair_cuts | {"outlier", "image_quality_dark", "image_quality_bright",
                                                   "image_quality_low_contrast", "image_quality_blurry"}
    assert (thresholds[thresholds["kind"].isin(pair_cuts)]["value"] > 0).all()
    # the pixel cuts are Benjamini-Hochberg over the training (duplicates) or test (leaks) images
    tested = {kind: json.loads(d) for kind, d in store.query(
        "SELECT kind, detail FROM thresholds WHERE kind LIKE 'pixel_%'").itertuples(index=False)}
    n = store.query("SELECT split, count(*) AS n FROM samples GROUP BY split").set_index("split")["n"]
    for kind, split in (("pixel_duplicate", "train"), ("pixel_leak", "test")):
        detail = tested[kind]
        assert (detail["fdr"], detail["tested"]) == (0.05, n[split]) and detail["discoveries"] >= 1, kind
        assert detail["p_cut"] == pytest.approx(0.05 * detail["discoveries"] / detail["tested"]), kind


def test_label_flips_are_flagged_mislabeled_with_a_suggestion(audited):
    store, truth, _ = audited
    flagged = store.query("SELECT sample_id, detail FROM flags WHERE kind = 'mislabeled'").set_index("sample_id")
    found = [s for s in truth["flips"] if s in flagged.index]
    assert len(found) >= 2, f"only {found} of {list(truth['flips'])} flagged"
    detail = json.loads(flagged.loc[found[0], "detail"])
    assert detail["given"] == truth["flips"][found[0]] and detail["suggested"] != detail["given"]


def test_evidence_tables_and_triage(audited):
    store, _, _ = audited
    assert store.scalar("SELECT count(*) FROM neighbors") > 0
    assert store.scalar("SELECT count(DISTINCT sample_id) FROM embedding_map") == store.scalar(
        "SELECT count(*) FROM samples")
    assert store.scalar("SELECT count(*) FROM clusters") == store.scalar(
        "SELECT count(*) FROM samples WHERE split = 'train'")
    triage = store.query("SELECT triage FROM audit WHERE sample_id = 'leak_exact'")["triage"].iloc[0]
    assert triage.startswith("leaked")
    assert store.query("SELECT fallback_reason FROM embedders")["fallback_reason"].isna().all()
