"""SIGKILL at a random point of each stage, then re-run: the database (every table) and the model files end identical
to an uninterrupted run's, with nothing duplicated or lost."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from auditor.config import load_config
from auditor.store.database import Store
from conftest import kill_at_fraction, memaudit
from pipelines.experiment_stage import ExperimentSpec, parse_arms, run_experiment
from pipelines.runner import run_pipeline

pytestmark = pytest.mark.slow

SMALL = """
[data]
limit_per_class = 24
[train]
epochs = 3
width = 8
seeds = 2
[dynamics]
el2n_epoch = 1
[convergence]
window = 1
[memorization]
models = 8
block = 1
[embeddings]
batch_size = 16
chunk_size = 64
"""
# Ingest decodes the whole default set (5,000 images): long enough to be killed anywhere in it.
ALL_IMAGES = "[data]\nlimit_per_class = 0\n"
MODELS = 3  # experiment models per arm


@dataclass(frozen=True)
class Stage:
    """What a stage builds on (another stage's reference database), the pipeline stages it runs, the progress bars
    a kill aims at and the kind of its `runs` row, 'running' until the stage ends."""

    after: str | None
    pipeline: tuple[str, ...]
    bars: tuple[bytes, ...]
    kind: str
    config: str = SMALL


STAGES = {
    "ingest": Stage(None, ("ingest",), (rb"ingest",), "ingest", ALL_IMAGES),
    "train": Stage(None, ("ingest", "train", "scores"), (rb"train seed 1/2", rb"train seed 2/2"), "apb"),
    "memorization": Stage("train", ("memorization",), (rb"shadow models",), "memorization"),
    "embeddings": Stage("train", ("embeddings",), (rb"embed \(",), "embeddings"),
    "experiment": Stage("train", (), (rb"experiment models",), "experiment"),
}
# Columns that tell when and by which process, not what was computed (wall clock, pid, "N trained, M reused").
VOLATILE = {"started_at", "finished_at", "created_at", "updated_at", "decided_at", "seconds", "eta_s", "pid",
            "message"}
KEYS = {"samples": ["sample_id"], "classes": ["label_index"], "meta": ["key"], "runs": ["run_id"],
        "run_inputs": ["run_id", "input_run_id"], "epochs": ["run_id", "epoch"],
        "dynamics": ["run_id", "phase", "step", "sample_id"], "predictions": ["run_id", "sample_id"],
        "scores": ["sample_id"], "flags": ["kind", "sample_id"], "jobs": ["job_id"], "audit": ["sample_id"],
        "shadow_designs": ["design_id"], "design_points": ["design_id", "point"],
        "memberships": ["design_id", "model_index"], "shadow_models": ["model_id"],
        "shadow_predictions": ["model_id", "split", "sample_id"], "influence": ["run_id", "train_id", "test_id"],
        "embedders": ["embedder_id"], "embeddings": ["embedder_id", "sample_id"],
        "embedding_map": ["embedder_id", "sample_id"], "experiments": ["experiment_id"],
        "experiment_arms": ["experiment_id", "position"], "experiment_models": ["experiment_id", "arm", "model_index"]}


def _copy(db: Path, to: Path) -> Path:
    """A copy of an audit database with its WAL and its model files."""
    for suffix in ("", ".wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", f"{to}{suffix}")
    if Path(f"{db}.artifacts").exists():
        shutil.copytree(f"{db}.artifacts", f"{to}.artifacts")
    return to


def _arms(root: Path) -> str:
    """The experiment's arm: hand-picked points (with the full-data arm and a random control, 3 arms)."""
    return f"ids:{root / 'picked.txt'}"


def _run(db: Path, name: str, cfg_path: Path) -> None:
    """Run stage `name` to completion in this process, as `memaudit` would."""
    cfg = load_config(cfg_path, "quick")
    if name == "experiment":
        run_experiment(Store(db), ExperimentSpec(parse_arms(_arms(cfg_path.parent)), MODELS, cfg.seed), cfg)
    else:
        run_pipeline(Store(db), "default", cfg, stages=STAGES[name].pipeline)


def _start(db: Path, name: str, cfg_path: Path):
    """Stage `name` as a background `memaudit` command (its progress on a stderr pipe), to be killed."""
    what = (("experiment", "--arms", _arms(cfg_path.parent), "--models", MODELS) if name == "experiment" else
            ("run", "--data", "default", "--stages", ",".join(STAGES[name].pipeline)))
    return memaudit(*what, "--db", db, "--profile", "quick", "--config", cfg_path, background=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, default_manifest):
    """(root, build): build(stage) is the database after an uninterrupted run of the stage on top of build(after)."""
    root = tmp_path_factory.mktemp("kill-resume")
    for name, stage in STAGES.items():
        (root / f"{name}.toml").write_text(stage.config)
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            db, after = root / f"{name}.duckdb", STAGES[name].after
            if after:
                _copy(build(after), db)
            if name == "experiment":
                picked = Store(db).query("SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id "
                                         "LIMIT 6")["sample_id"]
                (root / "picked.txt").write_text("\n".join(picked) + "\n")
            _run(db, name, root / f"{name}.toml")
            built[name] = db
        return built[name]

    return root, build


def dump(store: Store, table: str) -> pd.DataFrame:
    """`table` without its volatile columns, sorted by its key (by every column where it has none); asserts the key
    is unique. List columns become their repr, so that frames compare exactly; the database's own path (model files
    lie next to it) becomes `<db>`."""
    columns = store.query("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                          "ORDER BY ordinal_position", [table])["column_name"]
    kept = [c for c in columns if c not in VOLATILE]
    key = KEYS.get(table, kept)
    frame = store.query(f"SELECT {', '.join(kept)} FROM {table} ORDER BY {', '.join(key)}")
    for column in frame.columns[[pd.api.types.is_string_dtype(dtype) for dtype in frame.dtypes]]:
        frame[column] = frame[column].map(lambda v: repr(v.tolist()) if hasattr(v, "tolist") else
                                          v.replace(str(store.path), "<db>") if isinstance(v, str) else v)
    assert not frame.duplicated(key).any(), f"{table}: duplicated {key}"
    return frame


def assert_same_results(killed: Path, clean: Path) -> None:
    """Every table (row counts, unique keys, content but volatile columns) and every model file equal."""
    a, b = Store(killed), Store(clean)
    with a.reading(), b.reading():  # one connection per file for all the reads
        tables = b.tables()
        assert a.tables() == tables
        for table in sorted(tables):
            pd.testing.assert_frame_equal(dump(a, table), dump(b, table), check_exact=True, obj=table)
    files = {path: {f.name: f.read_bytes() for f in Path(f"{path}.artifacts").glob("*")} for path in (killed, clean)}
    assert files[killed] == files[clean]


# Two kill points where they lead to different states (which seed, how many chunks); one where another test has
# more (memorization, experiment) or every point leaves the same (ingest commits once, at its end).
@pytest.mark.parametrize("name, seed", [("ingest", 0), ("train", 0), ("train", 1), ("memorization", 0),
                                        ("embeddings", 0), ("embeddings", 1), ("experiment", 0)])
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_results(name, seed, reference, monkeypatch):
    root, build = reference
    stage, cfg_path = STAGES[name], root / f"{name}.toml"
    clean = build(name)
    killed = root / f"{name}-killed-{seed}.duckdb"
    if stage.after:
        _copy(build(stage.after), killed)
    rng = random.Random(f"{name}:{seed}")
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    proc = _start(killed, name, cfg_path)
    kill_at_fraction(proc, rng.choice(stage.bars), rng.uniform(0, 0.9))
    # killed mid-stage: it had started, and not finished
    assert Store(killed).scalar("SELECT count(*) FROM runs WHERE kind = ? AND status = 'running'", [stage.kind]) == 1
    _run(killed, name, cfg_path)
    assert_same_results(killed, clean)
