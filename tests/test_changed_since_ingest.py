"""Training reads the images again from disk: a file whose pixels changed since ingest stops it with one line naming
the file and the fix (re-run ingest); a file re-encoded with the same pixels trains as ingested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from auditor.data.images import decode_image
from auditor.data.tensors import load_images
from tests.conftest import memaudit


def _png(path: Path, value: int, compress_level: int = 6) -> Path:
    """A 10x10 grayscale PNG of a ramp starting at `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(100, dtype=np.uint8).reshape(10, 10) + value).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path, compress_level=compress_level)
    return path


def test_load_images_checks_the_pixels_recorded_at_ingest(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", 10 * i) for i in range(3)]
    recorded = [decode_image(p).pixel_hash for p in paths]
    _png(paths[1], 10, compress_level=0)  # other bytes, the same pixels: trains as ingested
    pixels, failed = load_images([str(p) for p in paths], 10, 1, pixel_hashes=recorded)
    assert not failed and pixels[1, 0, 0, 0] == 10
    _png(paths[2], 99)
    try:
        load_images([str(p) for p in paths], 10, 1, pixel_hashes=recorded)
    except RuntimeError as exc:
        assert f"{paths[2]} changed since ingest" in str(exc) and "re-run the ingest stage" in str(exc)
    else:
        raise AssertionError("a changed file was trained on")


def test_training_on_a_file_changed_since_ingest_fails_in_one_line(tmp_path, data_home):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for c in range(3):
            for i in range(2):
                _png(data / split / f"c{c}" / f"{i}.png", 40 * c + 7 * i + (split == "test"))
    db = tmp_path / "audit.duckdb"
    done = memaudit("run", "--data", data, "--db", db, "--profile", "quick", "--stages", "ingest")
    assert done.returncode == 0, done.stderr
    changed = _png(data / "train" / "c1" / "0.png", 200)
    done = memaudit("run", "--data", data, "--db", db, "--profile", "quick", "--stages", "train")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("memaudit: error:") == 1, done.stderr  # after the progress bar, on its line
    error = done.stderr.split("memaudit: error:")[1].splitlines()[0]
    assert str(changed) in error and "changed since ingest" in error, done.stderr
    assert "re-run the ingest stage" in error
