"""Ingest of every input form, including corrupt, zero-byte, odd-mode and misplaced files and bad manifests."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.data.images import ImageError, decode_image
from auditor.data.ingest import ingest
from auditor.data.manifest import ManifestError, list_inputs


def _png(path: Path, value: int, mode: str = "L", size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode in {"L", "P"}:
        img = Image.fromarray(np.full(size[::-1], value, np.uint8), "L").convert(mode)
    elif mode == "RGBA":
        arr = np.zeros((*size[::-1], 4), np.uint8)
        arr[..., 0] = value
        arr[..., 3] = 0  # fully transparent: must come out white
        img = Image.fromarray(arr, "RGBA")
    elif mode == "I;16":
        img = Image.fromarray((np.arange(size[0] * size[1]).reshape(size[::-1]) * 300).astype(np.uint16))
    else:
        img = Image.new(mode, size)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = path.with_suffix(suffix)
    img.save(path)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(root / "train" / cls / f"{i}.png", 40 * i + (cls == "dog") * 7)
        _png(root / "test" / cls / "t.png", 90 + (cls == "dog"))
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "cat" / "truncated.png")
    good = (root / "train" / "cat" / "truncated.png").read_bytes()
    (root / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    _png(root / "train" / "dog" / "cmyk", 0, "CMYK")
    _png(root / "train" / "dog" / "rgba", 200, "RGBA")
    _png(root / "train" / "dog" / "deep", 0, "I;16")
    _png(root / "train" / "cat" / "palette", 77, "P")
    _png(root / "train" / "stray.png", 5)            # not inside a class folder
    _png(root / "test" / "bird" / "b.png", 3)        # label unseen in train
    (root / "README").write_text("hello")            # not a split folder
    return root


def test_image_folder_with_bad_files_loses_nothing(messy_folder: Path):
    listing = list_inputs(messy_folder)
    result = ingest(listing)
    samples, problems = result.samples, result.problems
    ids = set(samples["sample_id"])
    assert {"train/cat/0.png", "train/dog/cmyk.jpg", "train/dog/rgba.png", "train/dog/deep.png",
            "train/cat/palette.png", "test/dog/t.png"} <= ids
    assert len(samples) == 6 + 2 + 4  # good train + good test + four converted
    by_id = problems.set_index("sample_id")
    assert by_id.loc["train/cat/empty.png", "reason"].startswith("zero-byte file")
    assert "corrupt or truncated" in by_id.loc["train/cat/truncated.png", "reason"]
    assert "not an image" in by_id.loc["train/dog/notes.txt", "reason"]
    assert by_id.loc["train/stray.png", "code"] == "layout"
    assert by_id.loc["test/bird/b.png", "code"] == "unknown_label"
    converted = problems[problems["code"] == "converted"].set_index("sample_id")["reason"]
    assert "CMYK -> RGB" in converted["train/dog/cmyk.jpg"]
    assert "RGBA -> RGB (alpha on white)" in converted["train/dog/rgba.png"]
    assert "I;16 -> L" in converted["train/dog/deep.png"]
    assert "P -> L" in converted["train/cat/palette.png"] or "P -> RGB" in converted["train/cat/palette.png"]
    assert (problems["source"].str.endswith("README")).any()
    # every listed file ended up either in samples or in problems
    files = [p for p in messy_folder.rglob("*") if p.is_file() and p.name != "README"]
    accounted = ids | set(problems["sample_id"].dropna())
    assert {p.relative_to(messy_folder).as_posix() for p in files} <= accounted
    assert list(result.classes["label"]) == ["cat", "dog"]
    assert samples.loc[samples["sample_id"] == "train/dog/rgba.png", "mode"].item() == "RGBA"


def test_alpha_is_composited_on_white_and_hashes_are_stable(messy_folder: Path):
    img = decode_image(messy_folder / "train" / "dog" / "rgba.png")
    assert img.pixels.shape == (10, 12, 3) and (img.pixels == 255).all()
    again = decode_image(messy_folder / "train" / "dog" / "rgba.png")
    assert (img.file_hash, img.pixel_hash) == (again.file_hash, again.pixel_hash)


def test_same_pixels_in_different_files_share_pixel_hash(tmp_path: Path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "b.png", optimize=True, compress_level=9)
    Image.fromarray(arr).save(tmp_path / "c.bmp")
    a, b, c = (decode_image(tmp_path / n) for n in ("a.png", "b.png", "c.bmp"))
    assert a.pixel_hash == b.pixel_hash == c.pixel_hash
    assert len({a.file_hash, b.file_hash, c.file_hash}) == 3


def test_missing_file_is_an_image_error(tmp_path: Path):
    with pytest.raises(ImageError, match="file not found"):
        decode_image(tmp_path / "nope.png")


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_forms(tmp_path: Path, suffix: str):
    _png(tmp_path / "imgs" / "a.png", 10)
    _png(tmp_path / "imgs" / "b.png", 20)
    _png(tmp_path / "imgs" / "c.png", 30)
    rows = [{"path": "imgs/a.png", "label": "x", "split": "train", "sample_id": "A"},
            {"path": "imgs/b.png", "label": "y", "split": "train", "sample_id": "B"},
            {"path": "imgs/c.png", "label": "x", "split": "Test", "sample_id": "C"},
            {"path": "imgs/missing.png", "label": "x", "split": "train", "sample_id": "D"},
            {"path": "imgs/a.png", "label": "x", "split": "train", "sample_id": "A"},      # duplicate id
            {"path": "imgs/b.png", "label": "", "split": "train", "sample_id": "E"},       # missing label
            {"path": "imgs/b.png", "label": "x", "split": "holdout", "sample_id": "F"}]    # bad split
    manifest = _write_manifest(tmp_path / f"manifest{suffix}", rows)
    result = ingest(list_inputs(manifest))
    assert list(result.samples["sample_id"]) == ["A", "B", "C"]
    assert result.samples.set_index("sample_id").loc["C", "split"] == "test"
    codes = result.problems.set_index("sample_id")["code"].to_dict()
    assert codes == {"D": "unreadable", "A": "duplicate_id", "E": "missing_label", "F": "bad_split"}
    first_line = 2 if suffix == ".csv" else 1
    assert result.problems.set_index("sample_id").loc["A", "source"] == f"manifest{suffix}:{first_line + 4}"


def test_manifest_without_sample_id_uses_the_path(tmp_path: Path):
    _png(tmp_path / "a.png", 10)
    manifest = _write_manifest(tmp_path / "m.csv", [{"path": "a.png", "label": 3, "split": "train"}])
    result = ingest(list_inputs(manifest))
    assert list(result.samples["sample_id"]) == ["a.png"] and list(result.samples["label"]) == ["3"]


def test_manifest_with_wrong_columns_names_the_missing_one(tmp_path: Path):
    manifest = _write_manifest(tmp_path / "m.csv", [{"file": "a.png", "label": "x", "split": "train"}])
    with pytest.raises(ManifestError, match="missing the column 'path'"):
        list_inputs(manifest)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"path,label,split\n\xff\xfe\xfa,x,train\n", "not UTF-8"),
])
def test_unreadable_manifests_get_clear_errors(tmp_path: Path, content: bytes, message: str):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        list_inputs(manifest)


def test_bad_jsonl_line_is_named(tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": "x", "split": "train"}\n{oops\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2"):
        list_inputs(manifest)


def test_unknown_data_argument(tmp_path: Path):
    with pytest.raises(ManifestError, match="neither 'default'"):
        list_inputs(tmp_path / "nothing-here")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ManifestError, match="not a folder and not a manifest"):
        list_inputs(tmp_path / "data.txt")


def test_folder_without_train_split(tmp_path: Path):
    _png(tmp_path / "test" / "a" / "x.png", 1)
    with pytest.raises(ManifestError, match="no train/ folder"):
        list_inputs(tmp_path)


def test_limit_per_class_keeps_a_stable_subset(messy_folder: Path):
    result = ingest(list_inputs(messy_folder), limit_per_class=1)
    train = result.samples[result.samples["split"] == "train"]
    assert train.groupby("label").size().to_dict() == {"cat": 1, "dog": 1}


def test_a_file_vanished_after_ingest_is_one_problem_however_often_training_loads(tmp_path: Path):
    from auditor.config import load_config
    from auditor.store.database import Store
    from pipelines.arrays import load_training_arrays
    from pipelines.stages import ingest_stage

    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                _png(root / split / cls / f"{i}.png", 40 * i + (cls == "dog") * 7)
    store, cfg = Store(tmp_path / "a.duckdb"), load_config(profile="quick")
    ingest_stage(store, str(root), cfg)
    (root / "train" / "dog" / "1.png").unlink()
    for _ in range(2):   # a re-run, or a resume after a kill, loads again
        data = load_training_arrays(store, cfg)
        assert len(data.train_ids) == 5
    problems = store.query("SELECT sample_id, code, stage FROM problems")
    assert problems.values.tolist() == [["train/dog/1.png", "unreadable", "train"]]
