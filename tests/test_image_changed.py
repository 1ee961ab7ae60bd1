"""The dashboard shows an image only while its file still holds the bytes that were audited (`samples.file_hash`);
a file changed since the audit is shown as a placeholder saying so, never silently as if it were the audited one."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import common
from auditor.store.database import Store
from tests.conftest import memaudit

POINT_PAGE = Path(__file__).resolve().parent.parent / "app" / "views" / "point.py"


def _png(path: Path, value: int) -> Path:
    """A small uniform grayscale PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12), value, np.uint8), "L").save(path)
    return path


@pytest.fixture()
def ingested(tmp_path, data_home, monkeypatch) -> Path:
    """A private ImageFolder dataset ingested by `memaudit run --stages ingest`, named by MEMAUDIT_DB."""
    for k, cls in enumerate(("a", "b")):
        for i in range(3):
            _png(tmp_path / "data" / "train" / cls / f"{i}.png", 40 * i + k)
        _png(tmp_path / "data" / "test" / cls / "t.png", 200 + k)
    db = tmp_path / "audit.duckdb"
    done = memaudit("run", "--data", tmp_path / "data", "--db", db, "--stages", "ingest", "--profile", "quick")
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv(common.DB_ENV, str(db))
    return tmp_path / "data"


def test_a_changed_file_is_shown_as_changed_not_as_the_audited_image(ingested):
    path = str((ingested / "train" / "a" / "1.png").resolve())
    image, note = common.shown_image(path, 40)
    assert note == "" and np.asarray(Image.open(io.BytesIO(image))).max() == 40
    _png(ingested / "train" / "a" / "1.png", 99)  # replaced after the audit
    image, note = common.shown_image(path, 40)
    assert note == common.CHANGED and "re-run ingest" in note
    assert np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))[..., 0].max() == 235  # the placeholder
    assert common.thumbnail(path, 40) == image
    _png(ingested / "train" / "a" / "1.png", 40)  # the audited bytes are back
    assert common.shown_image(path, 40)[1] == ""


def test_a_path_not_in_samples_is_never_served(ingested, tmp_path):
    stranger = str(_png(tmp_path / "elsewhere.png", 7))
    assert common.shown_image(stranger, 40) == (None, common.UNREADABLE)


def test_point_detail_says_the_file_changed_since_the_audit(ingested):
    _png(ingested / "train" / "b" / "2.png", 3)
    at = AppTest.from_file(str(POINT_PAGE))
    at.session_state["reviewer"] = "tester"
    at.query_params["id"] = "train/b/2.png"
    at.run(timeout=60)
    assert not at.exception, at.exception
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert captions == [f"train/b/2.png (train, 12×10 L) ({common.CHANGED})"]




def test_the_embeddings_stage_stops_on_a_file_changed_since_ingest(ingested):
    db = os.environ[common.DB_ENV]
    done = memaudit("run", "--data", ingested, "--db", db, "--stages", "train,scores", "--profile", "quick")
    assert done.returncode == 0, done.stderr
    changed = _png(ingested / "train" / "b" / "0.png", 77)  # its pixels replaced after training
    done = memaudit("run", "--data", ingested, "--db", db, "--stages", "embeddings", "--profile", "quick")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    error = done.stderr.split("memaudit: error:")[1].splitlines()[0]
    assert f"{changed.resolve()} changed since ingest" in error and "re-run the ingest stage" in error
    assert Store(db).scalar("SELECT count(*) FROM embeddings") == 0  # nothing embedded from other pixels
