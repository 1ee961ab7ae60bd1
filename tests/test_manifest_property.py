"""Property-based: any manifest (random columns, encodings, unicode and `..` paths, spaces, empty and large files) ends
in a listing with per-row problems or in one clear ManifestError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from auditor.data.ingest import ingest
from auditor.data.manifest import ManifestError, list_inputs

COLUMNS = ["path", "label", "split", "sample_id", "extra", "Path ", "LABEL", ""]
CELLS = st.one_of(st.text(max_size=12), st.sampled_from(["train", "test", "val", "dev", "TRAIN", "", "../x.png",
                                                          "a b.png", "ünï çødé.png", "img.png", "/etc/passwd"]),
                  st.integers(-3, 3).map(str), st.none())
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _image(folder: Path) -> None:
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / "img.png")


def _check(path: Path) -> None:
    """Listing and ingesting `path` either works (problems name their row) or raises one ManifestError."""
    try:
        listing = list_inputs(path)
    except ManifestError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    result = ingest(listing, workers=1)
    for problem in result.problems.itertuples():
        assert problem.reason and problem.source


@SETTINGS
@given(columns=st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=5),
       rows=st.lists(st.lists(CELLS, min_size=5, max_size=5), max_size=8), suffix=st.sampled_from([".csv", ".jsonl"]),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_manifests_end_in_a_result_or_a_clear_error(tmp_path_factory, columns, rows, suffix, encoding):
    folder = tmp_path_factory.mktemp("m")
    _image(folder)
    path = folder / f"manifest{suffix}"
    if suffix == ".csv":
        header = ",".join(columns)
        body = "\n".join(",".join("" if c is None else json.dumps(c) for c in r[:len(columns)]) for r in rows)
        text = header + ("\n" + body if body else "")
    else:
        text = "\n".join(json.dumps(dict(zip(columns, r)), ensure_ascii=False) for r in rows)
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", errors="replace"))
    _check(path)


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_arbitrary_bytes_end_in_a_result_or_a_clear_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("b") / f"manifest{suffix}"
    path.write_bytes(data)
    _check(path)


def test_a_large_manifest_of_missing_files_is_listed_with_a_problem_per_row(tmp_path):
    rows = pd.DataFrame({"path": [f"missing dir/ü{i}.png" for i in range(20_000)], "label": "a", "split": "train"})
    path = tmp_path / "big.csv"
    rows.to_csv(path, index=False)
    listing = list_inputs(path)
    assert len(listing.rows) == 20_000
    result = ingest(listing, workers=2)
    assert result.samples.empty and len(result.problems) == 20_000
    assert result.problems["source"].iloc[0] == "big.csv:2"
