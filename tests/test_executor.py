"""Executors: the local engine and Ray give bit-identical blocks at equal thread counts, a memorization run on a Ray
head bound to loopback survives a worker killed mid-task with every model committed exactly once, and an experiment
on the head equals the local one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auditor.config import ExecutorConfig, load_config
from auditor.memorization.executor import BlockTask, LocalExecutor, ShadowData, make_executor
from auditor.store.database import Store
from conftest import SMALL_OVERRIDES, memaudit
from test_experiments import CONFIG as EXPERIMENTS_CONFIG

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
TASK_TITLE = b"ray::_remote_train"


def _tasks(n_train: int, rng: np.random.Generator) -> list[BlockTask]:
    return [BlockTask(f"b{b}", (2 * b, 2 * b + 1), (10 + b, 20 + b), rng.random((2, n_train)) < 0.6)
            for b in range(3)]


def test_ray_blocks_equal_local_blocks():
    rng = np.random.default_rng(0)
    data = ShadowData(rng.integers(0, 255, (120, 1, 12, 12), dtype=np.uint8), rng.integers(0, 4, 120),
                      rng.integers(0, 255, (40, 1, 12, 12), dtype=np.uint8), rng.integers(0, 4, 40), 4)
    cfg = load_config(profile="quick", overrides={"train": {"epochs": 2, "width": 4, "arch": "mlp"},
                                                  "executor": {"kind": "ray", "threads": 1, "local_cpus": 2}})
    tasks = _tasks(120, rng)
    local = dict((t.key, r) for t, r in LocalExecutor().run(data, tasks, cfg))
    executor = make_executor(cfg.executor)
    try:
        assert executor.describe().startswith("ray (local: 2 CPUs")
        remote = list(executor.run(data, tasks, cfg))
    finally:
        ray.shutdown()
    assert sorted(t.key for t, _ in remote) == ["b0", "b1", "b2"]       # each task once
    for task, result in remote:
        for field in ("train_pred", "train_p_label", "test_pred", "epochs_run", "test_acc"):
            np.testing.assert_array_equal(getattr(result, field), getattr(local[task.key], field))


def test_ray_needs_the_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"pip install 'memaudit\[ray\]'"):
        make_executor(ExecutorConfig(kind="ray"))


def test_unreachable_cluster_is_a_clear_cli_error(small_db, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # nothing listens here once the socket is closed
    db = tmp_path / "a.duckdb"
    shutil.copy(small_db, db)
    proc = memaudit("run", "--db", db, "--profile", "quick", "--stages", "memorization",
                    "--ray-address", f"127.0.0.1:{port}")
    assert proc.returncode == 2 and "cannot start or reach the Ray cluster 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with 2 CPUs, started the way a cluster's head is (`ray start --head`, which turns
    on token authentication: drivers then need RAY_AUTH_MODE=token)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, capture_output=True, timeout=180)
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    os.environ.pop("RAY_AUTH_MODE")


def _task_processes() -> list[int]:
    """Pids of Ray workers executing a training task now (Ray titles a busy worker `ray::<function>`)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(TASK_TITLE):
                    found.append(int(entry))
            except OSError:
                continue
    return found


CONFIG = """
[memorization]
models = 8
block = 2
max_sharded = 0.0
[executor]
threads = 1
"""


def test_memorization_on_ray_survives_a_killed_worker(small_db, tmp_path, ray_head):
    cfg = tmp_path / "c.toml"
    sections = {**SMALL_OVERRIDES, "train": {**SMALL_OVERRIDES["train"], "epochs": 150}}  # tasks of seconds
    overrides = "\n".join(f"[{section}]\n" + "\n".join(f"{k} = {v}" for k, v in values.items())
                          for section, values in sections.items())
    cfg.write_text(CONFIG + overrides + "\n")  # max_sharded = 0: one design (no extension), tasks of seconds
    on_ray, local = tmp_path / "ray.duckdb", tmp_path / "local.duckdb"
    for target in (on_ray, local):
        shutil.copy(small_db, target)
    args = ("run", "--data", "default", "--profile", "quick", "--config", cfg, "--stages", "memorization")
    proc = memaudit(*args, "--db", on_ray, "--ray-address", ray_head, background=True)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        busy = _task_processes()
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.01)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert killed is not None, "no training task was seen running on the Ray workers"
    reference = memaudit(*args, "--db", local, "--executor", "local")
    assert reference.returncode == 0, reference.stderr
    a, b = Store(on_ray), Store(local)
    new = "design_id IN (SELECT design_id FROM shadow_designs WHERE n_models = 8)"
    models = f"SELECT model_id, seed, test_acc FROM shadow_models WHERE {new} ORDER BY model_id"
    assert len(a.query(models)) == 8 and a.query(models).equals(b.query(models))   # nothing lost or doubled
    per_model = ("SELECT model_id, count(*) AS n FROM shadow_predictions JOIN shadow_models USING (model_id) "
                 f"WHERE {new} GROUP BY model_id ORDER BY model_id")
    assert set(a.query(per_model)["n"]) == {a.scalar("SELECT count(*) FROM samples")}
    assert a.query(per_model).equals(b.query(per_model))
    scores = "SELECT sample_id, mem, mem_low, mem_high, mem_n_in, mem_n_out FROM scores ORDER BY sample_id"
    assert a.query(scores).equals(b.query(scores))
    jobs = a.query("SELECT status, done FROM jobs WHERE kind = 'ploo_improved' AND total = 8")
    assert jobs.values.tolist() == [["done", 8]]


EXPERIMENT_CONFIG = EXPERIMENTS_CONFIG + "[executor]\nthreads = 1\n"  # the experiment tests' small recipe


def test_experiment_on_ray_equals_the_local_experiment(small_db, tmp_path, ray_head):
    """Experiment arms go through the same executor: on the Ray head, every arm's models (seeds, accuracies,
    per-test-point correctness) equal the local run's, each committed once."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(EXPERIMENT_CONFIG)
    on_ray, local = tmp_path / "ray.duckdb", tmp_path / "local.duckdb"
    for target, executor in ((on_ray, ("--ray-address", ray_head)), (local, ("--executor", "local"))):
        shutil.copy(small_db, target)
        proc = memaudit("experiment", "--db", target, "--profile", "quick", "--config", cfg, "--arms", "memorized",
                        "--models", "2", *executor)
        assert proc.returncode == 0, proc.stderr[-2000:]
    models = ("SELECT arm, model_index, seed, test_acc, subpop_acc, leaked_acc, rest_acc, epochs_run, sgd_steps, "
              "removed_ids, test_correct FROM experiment_models ORDER BY arm, model_index")
    a, b = Store(on_ray).query(models), Store(local).query(models)
    assert len(a) == 4 * 2 and not a.duplicated(["arm", "model_index"]).any()  # full (1x, 2x), memorized, control
    pd.testing.assert_frame_equal(a, b)
    assert Store(on_ray).scalar("SELECT status FROM experiments") == "done"
    recorded = Store(on_ray).scalar("SELECT config_json FROM runs WHERE run_id = (SELECT run_id FROM experiments)")
    assert json.loads(recorded)["executor"] == {**json.loads(recorded)["executor"], "kind": "ray", "address": ray_head}
