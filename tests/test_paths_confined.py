"""Paths are confined to the dataset root: '..', absolute paths and symlinks (to files or folders) that lead outside
it are `outside_root` problem rows naming the row and the fix, unless data.allow_outside_root; nothing inside the
root is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from auditor.data.ingest import ingest
from auditor.data.manifest import Listing, list_inputs
from auditor.store.database import Store
from tests.conftest import memaudit

FIX = "data.allow_outside_root = true"


def _png(path: Path, value: int) -> Path:
    """A small uniform grayscale PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12), value, np.uint8), "L").save(path)
    return path


def _dataset(root: Path) -> list[Path]:
    """Two classes of three train images and one test image each under `root`."""
    return [_png(root / split / cls / f"{i}.png", 20 * i + k + (100 if split == "test" else 0))
            for k, cls in enumerate(("a", "b")) for split, n in (("train", 3), ("test", 1)) for i in range(n)]


def _outside(listing: Listing) -> pd.DataFrame:
    """The `outside_root` problems of `listing` (source, sample_id, reason)."""
    rows = [(p.source, p.sample_id, p.reason) for p in listing.problems if p.code == "outside_root"]
    return pd.DataFrame(rows, columns=["source", "sample_id", "reason"])


def _manifest(root: Path, inside: list[Path], extra: list[str]) -> Path:
    """root/manifest.csv: the `inside` images by relative path, then `extra` paths as train rows of class 'a'."""
    rows = [{"path": p.relative_to(root).as_posix(), "label": p.parent.name, "split": p.parent.parent.name}
            for p in inside]
    rows += [{"path": p, "label": "a", "split": "train"} for p in extra]
    target = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(target, index=False)
    return target


def test_manifest_dotdot_absolute_and_symlinked_files_are_problems(tmp_path):
    root, secret = tmp_path / "data", _png(tmp_path / "private" / "secret.png", 7)
    inside = _dataset(root)
    (root / "train" / "a" / "link.png").symlink_to(secret)
    manifest = _manifest(root, inside, ["../private/secret.png", str(secret), "train/a/link.png"])
    listing = list_inputs(manifest)
    problems = _outside(listing)
    n = len(inside)
    assert problems["source"].tolist() == [f"manifest.csv:{n + 2}", f"manifest.csv:{n + 3}", f"manifest.csv:{n + 4}"]
    assert problems["sample_id"].tolist() == ["../private/secret.png", str(secret), "train/a/link.png"]
    reasons = problems["reason"].tolist()
    assert "'..' in ../private/secret.png" in reasons[0]
    assert f"absolute path {secret}" in reasons[1]
    assert "train/a/link.png is (or passes through) a symlink" in reasons[2]
    assert all(str(root.resolve()) in r and FIX in r and "move the file under the root" in r for r in reasons)
    assert sorted(row.path for row in listing.rows) == sorted(p.resolve() for p in inside)  # nothing inside lost
    assert all(p.code != "outside_root" for p in list_inputs(manifest, allow_outside_root=True).problems)
    assert len(list_inputs(manifest, allow_outside_root=True).rows) == n + 3


def test_folder_symlinks_out_of_the_root_are_problems_and_allowed_by_config(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    inside = _dataset(root)
    _png(elsewhere / "c" / "0.png", 50)
    _png(elsewhere / "c" / "1.png", 51)
    (root / "train" / "c").symlink_to(elsewhere / "c", target_is_directory=True)  # a folder outside
    (root / "train" / "b" / "away.png").symlink_to(_png(elsewhere / "away.png", 60))  # a file outside
    (root / "train" / "b" / "twin.png").symlink_to(root / "train" / "a" / "0.png")  # a link that stays inside
    listing = list_inputs(root)
    problems = _outside(listing)
    assert problems["sample_id"].tolist() == ["train/b/away.png", "train/c/0.png", "train/c/1.png"]
    assert problems["source"].tolist() == [str(root / "train" / "b" / "away.png"), str(root / "train" / "c" / "0.png"),
                                           str(root / "train" / "c" / "1.png")]
    assert all("symlink" in r and FIX in r for r in problems["reason"])
    kept = sorted(row.sample_id for row in listing.rows)
    assert kept == sorted([p.relative_to(root).as_posix() for p in inside] + ["train/b/twin.png"])
    allowed = ingest(list_inputs(root, allow_outside_root=True))
    assert allowed.classes["label"].tolist() == ["a", "b", "c"]
    assert "outside_root" not in set(allowed.problems["code"])


def test_paths_that_stay_inside_the_root_are_kept(tmp_path):
    root = tmp_path / "data"
    inside = _dataset(root)
    absolute_inside = str((root / "train" / "a" / "0.png").resolve())
    manifest = _manifest(root, inside, ["train/b/../a/1.png", absolute_inside])
    listing = list_inputs(manifest)
    assert _outside(listing).empty
    assert len(listing.rows) == len(inside) + 2


def test_memaudit_run_records_outside_root_rows_and_the_config_key_allows_them(tmp_path, data_home):
    root, secret = tmp_path / "data", _png(tmp_path / "private" / "secret.png", 7)
    inside = _dataset(root)
    manifest = _manifest(root, inside, ["../private/secret.png"])
    db = tmp_path / "audit.duckdb"
    done = memaudit("run", "--data", manifest, "--db", db, "--stages", "ingest", "--profile", "quick")
    assert done.returncode == 0, done.stderr
    store = Store(db)
    rows = store.query("SELECT source, sample_id, code, severity FROM problems WHERE code = 'outside_root'")
    assert rows.values.tolist() == [[f"manifest.csv:{len(inside) + 2}", "../private/secret.png", "outside_root",
                                     "error"]]
    assert str(secret.resolve()) not in set(store.query("SELECT path FROM samples")["path"])
    config = tmp_path / "trust.toml"
    config.write_text("[data]\nallow_outside_root = true\n")
    allowed_db = tmp_path / "allowed.duckdb"
    done = memaudit("run", "--data", manifest, "--db", allowed_db, "--stages", "ingest", "--profile", "quick",
                    "--config", config)
    assert done.returncode == 0, done.stderr
    assert str(secret.resolve()) in set(Store(allowed_db).query("SELECT path FROM samples")["path"])
