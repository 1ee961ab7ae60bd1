"""The curation loop's bugs of issue 15 (Streamlit AppTest), each on a database the real pipeline wrote: the small
audited database, or one audited from planted edited copies (a shifted, dimmed duplicate and leak that only the
pixel matcher pairs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from auditor.store import Store

PAGES = Path(__file__).resolve().parent.parent / "app" / "views"


@pytest.fixture(scope="module")
def edited_db(tmp_path_factory, default_manifest) -> Path:
    """24 train and 24 test images per class of the default dataset plus an edited copy (shifted by two pixels,
    dimmed) of one training image in train and of another in test, audited by the pipeline."""
    from auditor.config import load_config
    from auditor.detectors.pixel_match import shifted
    from conftest import SMALL_OVERRIDES
    from pipelines.runner import run_pipeline

    root = tmp_path_factory.mktemp("edited")
    base = pd.read_csv(default_manifest, dtype=str)
    base["path"] = [str((default_manifest.parent / p).resolve()) for p in base["path"]]
    train = base[base["split"] == "train"].groupby("label").head(24)
    rows = [train, base[base["split"] == "test"].groupby("label").head(24)]
    for name, source, split in (("edited_dup", train.iloc[3], "train"), ("edited_leak", train.iloc[50], "test")):
        pixels = np.asarray(Image.open(source["path"]).convert("L")).astype(np.float32)
        Image.fromarray(np.clip(shifted(pixels[None], 2, -1)[0] * 0.8 + 20, 0, 255).astype(np.uint8)).save(
            root / f"{name}.png")
        rows.append(pd.DataFrame([{**source, "sample_id": name, "split": split, "path": str(root / f"{name}.png")}]))
    manifest = root / "manifest.csv"
    pd.concat(rows, ignore_index=True)[["sample_id", "path", "label", "split"]].to_csv(manifest, index=False)
    path = root / "audit.duckdb"
    run_pipeline(Store(path), str(manifest), load_config(profile="quick", overrides=SMALL_OVERRIDES))
    return path


def private(source: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of an audited database (pages write decisions), named by MEMAUDIT_DB."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(source, path)
    monkeypatch.setenv("MEMAUDIT_DB", str(path))
    return path


@pytest.fixture()
def db(small_db, tmp_path, monkeypatch) -> Path:
    return private(small_db, tmp_path, monkeypatch)


@pytest.fixture()
def edited(edited_db, tmp_path, monkeypatch) -> Path:
    return private(edited_db, tmp_path, monkeypatch)


def page(name: str, **state) -> AppTest:
    """One page run with `state` put in its session first."""
    at = AppTest.from_file(str(PAGES / f"{name}.py"))
    for key, value in state.items():
        at.session_state[key] = value
    return at.run(timeout=60)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.exception] + [str(e.value) for e in at.error]


def texts(at: AppTest) -> str:
    """Every markdown, caption and info text of the page, one per line."""
    return "\n".join(e.value for kind in (at.markdown, at.caption, at.info, at.warning) for e in kind)


# --- 1. the twins behind pixel-matched pairs -------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "sample_id"), [("duplicate", "edited_dup"), ("leaked", "edited_leak")])
def test_review_shows_the_twin_of_an_edited_copy(edited, kind, sample_id):
    store = Store(edited)
    pair_kind, twin = store.query("SELECT kind, CASE WHEN a_id = ? THEN b_id ELSE a_id END AS twin FROM pairs "
                                  "WHERE ? IN (a_id, b_id)", [sample_id, sample_id]).iloc[0]
    assert pair_kind.startswith("pixel_")  # only the pixel matcher paired the edited copy
    at = page("review", flag=kind, evidence=sample_id)
    assert not errors(at) and at.selectbox(key="evidence").value == sample_id
    assert "pairs behind this flag are gone" not in texts(at)
    assert f"twin {twin} (" in [c for image in at.image for c in image.captions][-1]
    assert at.button(key=f"judge_{kind}_{sample_id}_{twin}_yes")
