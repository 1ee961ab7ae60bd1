"""Ingest that no single file can stop: decompression bombs, oversized files, FIFOs and devices, decoders failing
with any exception type, symlinked class folders, animated images and one colour image among grayscale ones."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.data import images
from auditor.config import ConfigError, load_config
from auditor.data.ingest import IngestResult, ingest
from auditor.data.manifest import list_inputs
from auditor.store.database import Store
from tests.conftest import memaudit

HANG_LIMIT_S = 30.0


def _png(path: Path, value: int, mode: str = "L", size: tuple[int, int] = (12, 10)) -> Path:
    """A small uniform PNG (`mode` L, P or RGB) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8), "L").convert(mode).save(path)
    return path


def _bomb(path: Path, side: int = 30000) -> Path:
    """A PNG that declares `side` x `side` pixels in a few hundred bytes (the header is all Pillow reads first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = zlib.compress(b"\0" * (side + 1) * 4)  # a few rows; the rest is missing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
    """An ImageFolder tree with `per_class` grayscale train images and one test image per class."""
    for k, cls in enumerate(classes):
        for i in range(per_class):
            _png(root / "train" / cls / f"{i}.png", 30 * i + k)
        _png(root / "test" / cls / "t.png", 100 + k)
    return root


def _manifest(root: Path, paths: list[str | Path], label: str = "a") -> Path:
    """A manifest beside a small dataset: its images plus `paths` as extra train rows of class `label`."""
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "split": p.parent.parent.name}
            for p in sorted(root.rglob("*.png"))]
    rows += [{"path": str(p), "label": label, "split": "train"} for p in paths]
    target = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(target, index=False)
    return target


def _problem(result: IngestResult, needle: str) -> pd.Series:
    """The one problem row whose sample_id contains `needle`."""
    rows = result.problems[result.problems["sample_id"].fillna("").str.contains(needle, regex=False)]
    assert len(rows) == 1, result.problems.to_string()
    return rows.iloc[0]


def _ingest_within_limit(data: Path, **kwargs) -> IngestResult:
    """Ingest `data` in a thread and fail (not hang) when it does not finish within HANG_LIMIT_S. Rows outside the
    dataset root are allowed, so that the reader behind the confinement (tests/test_paths_confined.py) is tested."""
    out: list[IngestResult] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            out.append(ingest(list_inputs(data, allow_outside_root=True), **kwargs))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    assert not worker.is_alive(), f"ingest of {data} still running after {HANG_LIMIT_S} s"
    if errors:
        raise errors[0]
    return out[0]


def test_decompression_bomb_is_an_unreadable_row(tmp_path):
    root = _folder(tmp_path / "data")
    bomb = _bomb(root / "train" / "a" / "bomb.png")
    assert bomb.stat().st_size < 1000
    result = ingest(list_inputs(root))
    row = _problem(result, "bomb.png")
    assert (row["code"], row["severity"]) == ("unreadable", "error")
    assert "decompression bomb" in row["reason"] and "900000000" in row["reason"]
    assert len(result.samples) == 8 and "train/a/bomb.png" not in set(result.samples["sample_id"])


def test_pixel_and_size_caps_come_from_the_config(tmp_path):
    root = _folder(tmp_path / "data")
    _png(root / "train" / "a" / "wide.png", 9, size=(2000, 1000))  # 2 megapixels
    noise = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "b" / "heavy.png")  # ~1.9 MB, incompressible
    result = ingest(list_inputs(root), max_file_mb=1, max_megapixels=1)
    wide, heavy = _problem(result, "wide.png"), _problem(result, "heavy.png")
    assert wide["code"] == heavy["code"] == "unreadable"
    assert "2000x1000" in wide["reason"] and "data.max_megapixels (1)" in wide["reason"]
    assert "data.max_file_mb (1)" in heavy["reason"]
    relaxed = ingest(list_inputs(root), max_file_mb=5, max_megapixels=3)
    assert {"train/a/wide.png", "train/b/heavy.png"} <= set(relaxed.samples["sample_id"])


@pytest.mark.parametrize("key", ["max_file_mb", "max_megapixels"])
def test_caps_must_be_positive(key):
    assert getattr(load_config().data, key) >= 1
    with pytest.raises(ConfigError, match=f"data.{key}"):
        load_config(overrides={"data": {key: 0}})


def test_fifo_and_folder_in_a_manifest_are_rows_never_read(tmp_path):
    root = _folder(tmp_path / "data")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    try:
        result = _ingest_within_limit(_manifest(root, [fifo, folder]))
    finally:
        _release(fifo)
    assert "a FIFO (named pipe)" in _problem(result, "pipe.png")["reason"]
    assert "a directory" in _problem(result, "folder.png")["reason"]
    assert len(result.samples) == 8


def _release(fifo: Path) -> None:
    """Unblock a reader stuck opening `fifo` (the old ingest): open it for writing and close it (EOF)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # nobody is reading it


def test_dev_zero_in_a_manifest_is_a_row_never_read(tmp_path):
    root = _folder(tmp_path / "data")
    result = _ingest_within_limit(_manifest(root, ["/dev/zero"]))
    row = _problem(result, "/dev/zero")
    assert row["code"] == "unreadable" and "a character device" in row["reason"]


@pytest.mark.parametrize("error", [KeyError("tile"), IndexError("palette"), struct.error("unpack"),
                                   RuntimeError("decoder"), MemoryError()])
def test_any_decoder_exception_is_a_problem_row(tmp_path, monkeypatch, error):
    root = _folder(tmp_path / "data")
    odd = _png(root / "train" / "a" / "odd.png", 5, "P")
    real = images._to_canonical

    def fail_on_palette(img):
        if img.mode == "P":
            raise error
        return real(img)

    monkeypatch.setattr(images, "_to_canonical", fail_on_palette)
    result = ingest(list_inputs(root))
    row = _problem(result, odd.name)
    assert row["code"] == "unreadable" and type(error).__name__ in row["reason"]
    assert len(result.samples) == 8


def test_symlinked_class_folder_is_walked_and_a_loop_reported(tmp_path):
    root = _folder(tmp_path / "data")
    elsewhere = _folder(tmp_path / "elsewhere", classes=("c",))
    (root / "train" / "c").symlink_to(elsewhere / "train" / "c", target_is_directory=True)
    (root / "test" / "c").symlink_to(elsewhere / "test" / "c", target_is_directory=True)
    (root / "train" / "a" / "loop").symlink_to(root / "train" / "a", target_is_directory=True)
    result = ingest(list_inputs(root, allow_outside_root=True))  # by default reported: test_paths_confined.py
    assert result.classes["label"].tolist() == ["a", "b", "c"]
    assert result.classes["n_train"].tolist() == [3, 3, 3]
    assert "test/c/t.png" in set(result.samples["sample_id"])
    loop = result.problems[result.problems["source"].str.endswith("loop")]
    assert loop[["code", "severity"]].values.tolist() == [["layout", "warning"]]
    assert "already walked" in loop["reason"].iloc[0]


def test_animated_image_is_a_warning_and_kept(tmp_path):
    root = _folder(tmp_path / "data")
    frames = [Image.fromarray(np.full((10, 12), v, np.uint8), "L") for v in (10, 200)]
    gif = root / "train" / "b" / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    result = ingest(list_inputs(root))
    row = result.problems[result.problems["code"] == "animated"]
    assert row[["sample_id", "severity", "action"]].values.tolist() == [["train/b/anim.gif", "warning", "first_frame"]]
    assert "2 frames" in row["reason"].iloc[0]
    assert "train/b/anim.gif" in set(result.samples["sample_id"])


def test_one_colour_image_never_changes_the_channels_silently(tmp_path):
    root = _folder(tmp_path / "data")
    _png(root / "train" / "a" / "palette.png", 77, "P")
    result = ingest(list_inputs(root))
    row = result.problems[result.problems["code"] == "channels"]
    assert row[["sample_id", "severity"]].values.tolist() == [["train/a/palette.png", "warning"]]
    assert "data.channels = 1" in row["reason"].iloc[0]
    assert not (ingest(list_inputs(root), channels=1).problems["code"] == "channels").any()
    for i in range(9):  # colour is no longer the odd one out: nothing to warn about
        _png(root / "train" / "b" / f"rgb{i}.png", 40, "RGB")
    assert not (ingest(list_inputs(root)).problems["code"] == "channels").any()


def test_memaudit_run_ingests_past_hostile_files(tmp_path, data_home):
    root = _folder(tmp_path / "data")
    _bomb(root / "train" / "a" / "bomb.png")
    os.mkfifo(root / "train" / "b" / "pipe.png")
    noise = np.random.default_rng(1).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "b" / "heavy.png")  # ~1.9 MB, over the 1 MB cap below
    config = tmp_path / "caps.toml"
    config.write_text("[data]\nmax_file_mb = 1\n")
    db = tmp_path / "audit.duckdb"
    done = memaudit("run", "--data", root, "--db", db, "--stages", "ingest", "--profile", "quick",
                    "--config", config)
    assert done.returncode == 0, done.stderr
    store = Store(db)
    problems = store.query("SELECT sample_id, code FROM problems ORDER BY sample_id").values.tolist()
    assert problems == [["train/a/bomb.png", "unreadable"], ["train/b/heavy.png", "unreadable"],
                        ["train/b/pipe.png", "unreadable"]]
    assert int(store.scalar("SELECT count(*) FROM samples")) == 8
