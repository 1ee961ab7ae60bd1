"""Every error is one line with the cause and the fix, exit 2: an empty test split, a full disk (the path and its free
space), a read-only folder (the dashboard: "Could not save"), a semicolon CSV (the delimiter), `app` on a folder."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from auditor.data.manifest import ManifestError, list_inputs
from auditor.store.database import Store, StoreUnwritable
from pipelines import cli
from tests.conftest import memaudit


def _png(path: Path, value: int) -> Path:
    """A small uniform grayscale PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12), value, np.uint8), "L").save(path)
    return path


def _folder(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """An ImageFolder tree of two classes with four images per class in each of `splits`."""
    for split in splits:
        for k, cls in enumerate(("a", "b")):
            for i in range(4):
                _png(root / split / cls / f"{i}.png", 25 * i + 120 * k + (7 if split == "test" else 0))
    return root


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single `memaudit: error:` line of a failed command (exit 2, no traceback)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("memaudit: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only for this user: its mode for a normal user; for root (whom modes do not stop) a read-only
    bind mount over it. Skips the test where neither can be had."""
    if os.geteuid() != 0:
        files = [p for p in folder.iterdir() if p.is_file()]
        for path in files:
            path.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
            for path in files:
                path.chmod(0o644)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_empty_test_split_is_one_line_naming_the_fix(tmp_path, data_home):
    data = _folder(tmp_path / "data", ("train",))
    db = tmp_path / "audit.duckdb"
    line = _one_line_error(memaudit("run", "--data", data, "--db", db, "--profile", "quick"))
    assert f"{data} has no usable test images (no test split)" in line and "add images under test/<class>/" in line
    runs = Store(db).query("SELECT kind, status FROM runs").values.tolist()
    assert runs == [["ingest", "failed"]]  # stopped at ingest, not after training; no 'running' row left


def test_unreadable_test_images_are_named_as_the_reason(tmp_path, data_home):
    data = _folder(tmp_path / "data", ("train",))
    (data / "test" / "a").mkdir(parents=True)
    (data / "test" / "a" / "0.png").write_bytes(b"\x89PNG broken")
    line = _one_line_error(memaudit("run", "--data", data, "--db", tmp_path / "a.duckdb", "--stages", "ingest"))
    assert "none of its 1 test images could be read" in line


def test_a_semicolon_csv_gets_the_delimiter_named(tmp_path, capsys):
    _folder(tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("path;label;split\ntrain/a/0.png;a;train\ntest/a/0.png;a;test\n")
    with pytest.raises(ManifestError, match="header looks ';'-separated: save the file with commas"):
        list_inputs(manifest)
    assert cli.main(["run", "--data", str(manifest), "--db", str(tmp_path / "a.duckdb"), "--stages", "ingest"]) == 2
    assert "';'-separated" in capsys.readouterr().err


def test_app_on_a_folder_says_it_is_a_folder(tmp_path, capsys, monkeypatch):
    assert cli.main(["app", "--db", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path} is a folder, not an audit database" in err
    monkeypatch.setenv("MEMAUDIT_DB", str(tmp_path))
    at = AppTest.from_file(str(Path(cli.APP_ENTRY).parent / "views" / "overview.py")).run(timeout=60)
    assert any("is a folder, not an audit database" in e.value for e in at.error), [e.value for e in at.error]


class _FullDisk:
    """A DuckDB connection whose COMMIT fails as on a full disk: the transaction ends, then DuckDB's error."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            self._con.execute("ROLLBACK")
            raise duckdb.TransactionException('TransactionContext Error: Failed to commit: Could not write file '
                                              '"audit.duckdb.wal": No space left on device')
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._con, name)


def test_a_full_disk_at_commit_names_the_path_and_free_space(tmp_path, monkeypatch):
    store = Store(tmp_path / "audit.duckdb")
    store.init()
    real = duckdb.connect
    monkeypatch.setattr("auditor.store.database.duckdb.connect", lambda *a, **k: _FullDisk(real(*a, **k)))
    with pytest.raises(StoreUnwritable, match=r"no space left on the device holding .*audit\.duckdb "
                                              r"\(\d+\.\d MiB free\)") as caught:
        store.write([("meta", pd.DataFrame({"key": ["k"], "value": ["v"]}))])
    assert "cannot rollback" not in str(caught.value)


def test_torch_short_write_is_reported_as_a_full_disk(tmp_path, data_home, monkeypatch, capsys):
    import torch

    def short_write(*args, **kwargs) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1216 vs 1110")

    monkeypatch.setattr(torch, "save", short_write)
    db = tmp_path / "audit.duckdb"
    argv = ["run", "--data", str(_folder(tmp_path / "data")), "--db", str(db), "--profile", "quick",
            "--stages", "ingest,train"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"memaudit: error: no space left on the device holding {db} (") and "MiB free" in err


def test_a_full_tmpfs_ends_in_one_line(tmp_path, data_home):
    disk = tmp_path / "small"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        line = _one_line_error(memaudit("run", "--data", _folder(tmp_path / "data"), "--db", disk / "audit.duckdb",
                                        "--profile", "quick"))
        assert f"no space left on the device holding {disk / 'audit.duckdb'}" in line and "MiB free" in line
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_read_only_folder_is_one_line_in_the_cli(tmp_path, data_home):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        line = _one_line_error(memaudit("run", "--data", _folder(tmp_path / "data"), "--db", folder / "a.duckdb",
                                        "--stages", "ingest"))
    assert f"cannot write {folder}" in line and "writable folder" in line
    assert ("file system is read-only" if os.geteuid() == 0 else "permission denied") in line


def test_the_dashboard_says_could_not_save_for_a_read_only_database(tmp_path, data_home, monkeypatch):
    folder = tmp_path / "ro"
    done = memaudit("run", "--data", _folder(tmp_path / "data"), "--db", folder / "a.duckdb", "--stages", "ingest")
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MEMAUDIT_DB", str(folder / "a.duckdb"))

    def page() -> None:
        from app.common import run_page

        run_page("Writes", lambda store: store.execute("INSERT INTO meta VALUES ('note', 'x')"))

    with read_only(folder):
        at = AppTest.from_function(page).run(timeout=60)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"Could not save: cannot write {folder}")


def test_a_decision_on_a_read_only_database_is_not_saved_with_the_reason(tmp_path, data_home, monkeypatch):
    folder = tmp_path / "ro"
    done = memaudit("run", "--data", _folder(tmp_path / "data"), "--db", folder / "a.duckdb", "--stages", "ingest")
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("MEMAUDIT_DB", str(folder / "a.duckdb"))
    at = AppTest.from_file(str(Path(cli.APP_ENTRY).parent / "views" / "point.py"))
    at.session_state["reviewer"] = "tester"
    at.query_params["id"] = "train/a/1.png"
    at.run(timeout=60)
    with read_only(folder):
        at.button(key="point_keep").click().run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"Not saved: cannot write {folder}")
