"""Many classes: shadow blocks keep class probabilities only as asked, so memory beyond one batch's logits does not
grow with models x points x classes; out-of-shard means equal the full arrays' means; the detectors warn when classes
have fewer than k training images (benchmarks/many_classes.py times the whole quick profile)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from auditor.config import load_config
from auditor.shadow_engine import train_shadow_block
from tests.test_shadow_engine import _cfg, _halves

CLASSES = 3000


def _many(n: int = 96, classes: int = CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` random 1x12x12 images, each its own class out of `classes` (one image per class)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 1, 12, 12), dtype=np.uint8), np.arange(n) % classes


def _peak_mib(**kwargs) -> tuple[float, object]:
    """Peak numpy/Python memory (MiB, tracemalloc) of one block of 8 models on 96 points of CLASSES classes."""
    (x, y), (xt, yt) = _many(), _many(16, seed=1)
    tracemalloc.start()
    try:
        block = train_shadow_block(x, y, xt, yt, CLASSES, _halves(8), range(8), _cfg(epochs=2), **kwargs)
        return tracemalloc.get_traced_memory()[1] / 2**20, block
    finally:
        tracemalloc.stop()


def test_probabilities_are_kept_only_when_asked():
    full = 8 * 96 * CLASSES * 2 / 2**20  # the (models, points, classes) float16 array: 4.4 MiB
    none_mib, block = _peak_mib()
    assert block.train_probs is None and none_mib < full / 2
    oof_mib, oof = _peak_mib(probs="out_of_shard")
    assert oof.train_probs.shape == (96, CLASSES) and oof_mib < full
    _, every = _peak_mib(probs="all")
    assert every.train_probs.shape == (8, 96, CLASSES)
    out = ~_halves(8)
    mean = (every.train_probs.astype(np.float32) * out[..., None]).sum(0) / np.maximum(out.sum(0), 1)[:, None]
    np.testing.assert_allclose(oof.train_probs, mean, atol=2e-3)  # float16 rounding of the full array only
    np.testing.assert_array_equal(block.train_pred, every.train_pred)


def test_an_unknown_probs_mode_is_refused():
    (x, y) = _many()
    with pytest.raises(ValueError, match="probs must be one of none, out_of_shard, all"):
        train_shadow_block(x, y, x[:8], y[:8], CLASSES, _halves(1), [1], _cfg(epochs=2), probs="some")


def test_the_detectors_warn_about_classes_smaller_than_k(tmp_path, data_home):
    from benchmarks.many_classes import write_dataset
    from tests.conftest import memaudit

    data = write_dataset(tmp_path / "data", 40)
    config = tmp_path / "small.toml"
    config.write_text("[train]\nepochs = 2\n[memorization]\nmodels = 4\n")
    done = memaudit("run", "--data", data, "--db", tmp_path / "audit.duckdb", "--profile", "quick",
                    "--config", config, "--stages", "ingest,train,scores,embeddings,detectors")
    assert done.returncode == 0, done.stderr
    k = load_config(profile="quick").detectors.kfold
    assert (f"warning: 40 of 40 classes have fewer than {k} training images; the {k}-fold models behind their "
            "label-issue flags saw few or none of their class") in done.stderr
