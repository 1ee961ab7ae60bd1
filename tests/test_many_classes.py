"""Many classes: shadow blocks keep class probabilities only as asked, so memory beyond one batch's logits does not
grow with models x points x classes; out-of-shard means equal the full arrays' means; the detectors warn when classes
have fewer than k training images; the detectors stage writes `oof_probs` in bounded chunks; the quick profile caps the
memorization plan, which 10,000 classes x 1 image would otherwise put at 115 models a design, and records the cap
(benchmarks/many_classes.py times the whole quick profile, benchmarks/oof_write.py the oof_probs write alone)."""

from __future__ import annotations

import shutil
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from auditor.detectors import detector_rows
from auditor.config import load_config
from auditor.detectors.label_issues import confident_learning, knn_label_disagreement
from auditor.detectors.neighbors import KnnGraph
from auditor.memorization.shadow_budget import half_width
from auditor.memorization.shadow_engine import train_shadow_block
from auditor.store.database import Store
from pipelines.memorization_stage import design_plan
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


def _traced(fn, *args):
    """fn(*args) and its peak numpy/Python memory in MiB (tracemalloc)."""
    tracemalloc.start()
    try:
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_confident_learning_builds_nothing_of_classes_squared():
    # 20,000 classes: a dense (classes x classes) confident joint alone would be 3.2 GB of float64.
    n, classes = 300, 20_000
    rng = np.random.default_rng(0)
    given = rng.choice(classes, n, replace=False)
    truth = given.copy()
    flipped, hosts = np.split(rng.choice(n, 30, replace=False), 2)
    truth[flipped] = given[hosts]  # each really belongs to the class of a correctly labelled point
    probs = np.full((n, classes), 0.2 / classes, np.float32)
    probs[np.arange(n), truth] += 0.8
    cl, peak = _traced(confident_learning, probs, given)
    assert peak < 64  # MiB: the (n x classes) input is 23 MiB; chunked passes, sparse joint
    assert set(np.flatnonzero(cl["is_issue"])) == set(flipped)
    assert (cl["suggested"].to_numpy()[flipped] == truth[flipped]).all()


def test_knn_votes_are_kept_per_neighbour_not_per_class():
    # 1,000 points x 1,000,000 classes of dense votes would be 8 GB; the votes are (points x k).
    n, k, classes = 1_000, 5, 1_000_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    graph = KnnGraph(indices=(np.arange(n)[:, None] + np.arange(1, k + 1)) % n,
                     similarities=rng.uniform(0.1, 1, (n, k)).astype(np.float32), exact=True, index_kind="exact")
    labels[graph.indices[:10, :3]] = 7  # three of the first ten points' five neighbours say 7
    frame, peak = _traced(knn_label_disagreement, graph, labels, classes)
    assert peak < 16
    assert (frame["knn_label"].to_numpy()[:10] == 7).all() and (frame["n_neighbors"] == k).all()
    sims = graph.similarities.astype(np.float64)
    own = (labels[graph.indices] == labels[:, None])
    np.testing.assert_allclose(frame["disagreement"], 1 - (sims * own).sum(1) / sims.sum(1))


def test_oof_probs_are_written_in_chunks_with_the_same_rows(small_db, tmp_path, monkeypatch):
    """On a pipeline-written database, a budget of 7 rows' cells per insert stores exactly the rows one insert stores
    (the default budget on 10 classes), in several inserts of one write."""
    path = tmp_path / "audit.duckdb"
    shutil.copy(small_db, path)
    store = Store(path)
    ids = store.query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id")["sample_id"].to_numpy()
    probs = np.random.default_rng(0).dirichlet(np.ones(10), len(ids)).astype(np.float32)
    inserts: list[int] = []
    write = store.write
    monkeypatch.setattr(store, "write", lambda tables, **kw: (inserts.append(len(tables)), write(tables, **kw))[1])

    def stored() -> pd.DataFrame:
        return store.query("SELECT sample_id, probs, source, run_id FROM oof_probs WHERE run_id = 'oof-t' ORDER BY rowid")

    detector_rows.save_oof_probs(store, "oof-t", ids, probs, "5-fold")
    whole = stored()
    monkeypatch.setattr(detector_rows, "OOF_CHUNK_CELLS", 7 * 10)
    detector_rows.save_oof_probs(store, "oof-t", ids, probs, "5-fold")  # replaces the run's rows
    chunked = stored()
    assert inserts == [1, -(-len(ids) // 7)] and inserts[1] > 1
    pd.testing.assert_frame_equal(chunked, whole)
    assert list(chunked["sample_id"]) == list(ids) and set(chunked["source"]) == {"5-fold"}
    np.testing.assert_array_equal(np.stack(chunked["probs"].to_numpy()), probs)


def test_oof_probs_memory_limit_fits_one_commit_vector_of_wide_rows(tmp_path, monkeypatch):
    """With a 1 MiB floor, 300 rows of 20,000 classes (23 MiB) are still written whole: the limit grows to two
    DuckDB commit vectors of rows."""
    store = Store(tmp_path / "wide.duckdb")
    store.init()
    monkeypatch.setattr(detector_rows, "OOF_MEMORY_MIB", 1)
    probs = np.random.default_rng(0).random((300, 20_000), dtype=np.float32)
    detector_rows.save_oof_probs(store, "oof-w", np.array([f"s{i}" for i in range(300)]), probs, "5-fold")
    np.testing.assert_array_equal(np.stack(detector_rows.oof_probs(store, "oof-w")["probs"].to_numpy()), probs)


def test_the_quick_profile_caps_the_plan_and_says_what_the_cap_costs(tmp_path):
    # 10,000 classes x 1 image: phase 1 shards 2,875 points; the per_candidate floor alone asks for 115 models.
    store = Store(tmp_path / "plan.duckdb")
    store.init()
    quick = load_config(profile="quick")
    plan = design_plan(store, 2875, False, quick, "phase 1")
    assert (plan.n_models, plan.wanted) == (quick.memorization.max_models, 115) == (8, 115)
    assert plan.expected_half_width == half_width(8, 0.5) > half_width(115, 0.5)
    assert ("capped by memorization.max_models: the target and floors asked for 115 models (half-width <= 0.183)"
            in plan.describe(timed=False))
    # A cap below what min_in and min_out need is raised to it: no point is decided on fewer models.
    tight = load_config(profile="quick", overrides={"memorization": {"max_models": 2}})
    assert design_plan(store, 2875, False, tight, "phase 1").n_models == 2 * quick.memorization.min_in == 6
    # The default and standard profiles have no cap; an explicit `models` is exact.
    for profile in ("default", "standard"):
        full = design_plan(store, 2875, False, load_config(profile=profile), "phase 1")
        assert full.n_models == full.wanted == 133 and "capped" not in full.describe(timed=False)
    exact = load_config(profile="quick", overrides={"memorization": {"models": 20}})
    assert design_plan(store, 2875, False, exact, "phase 1").n_models == 20


def test_two_thousand_classes_of_one_image_finish_with_the_cap_recorded(tmp_path, data_home):
    from benchmarks.many_classes import write_dataset
    from tests.conftest import memaudit

    data = write_dataset(tmp_path / "data", 2000)
    config = tmp_path / "tiny.toml"
    config.write_text("[data]\nimage_size = 8\n[train]\nepochs = 1\nwidth = 4\n")
    db = tmp_path / "audit.duckdb"
    done = memaudit("run", "--data", data, "--db", db, "--profile", "quick", "--config", config,
                    "--stages", "ingest,train,scores,memorization")
    assert done.returncode == 0, done.stderr
    store = Store(db)
    row = store.query("SELECT n_models, max_models, models_wanted, plan FROM memorization_estimates").iloc[0]
    assert row["max_models"] == 8 and row["models_wanted"] > row["n_models"] and "capped" in row["plan"]
    assert "capped by memorization.max_models" in done.stdout
    scores = store.query("SELECT mem, mem_n_in, mem_n_out, mem_state FROM scores WHERE mem IS NOT NULL")
    cfg = load_config(profile="quick")
    few = (scores["mem_n_in"] < cfg.memorization.min_in) | (scores["mem_n_out"] < cfg.memorization.min_out)
    assert len(scores) and not few.any()  # every scored point has the models its decision needs
    assert set(scores["mem_state"]) <= {"memorized", "uncertain", "not_memorized"}
    # One image per class: a model that did not train on a point never saw its class, so it is never right on it.
    out_right = store.scalar("SELECT avg(correct::INT) FROM shadow_predictions WHERE split = 'train' AND NOT in_shard")
    assert out_right < 0.01
