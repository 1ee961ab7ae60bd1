"""Decode every listed image once: metadata and hashes for `samples`, every failure into `problems`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from auditor.images import ImageError, decode_image
from auditor.manifest import Listing, Problem, Row, check_rows

SAMPLE_COLUMNS = ["sample_id", "split", "label", "path", "width", "height", "mode", "file_hash", "pixel_hash",
                  "label_index", "source"]
PROBLEM_COLUMNS = ["source", "sample_id", "reason", "code", "severity", "action", "stage"]


@dataclass
class IngestResult:
    """What ingest produced: the usable samples, the class list and every problem met."""

    samples: pd.DataFrame
    classes: pd.DataFrame
    problems: pd.DataFrame


def class_order(labels: set[str]) -> list[str]:
    """Stable class order: numeric labels by value ("2" before "10"), others alphabetically."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _limit(rows: list[Row], per_class: int) -> list[Row]:
    """Keep the first `per_class` rows (by sample_id) of each (split, class); 0 keeps everything."""
    if per_class <= 0:
        return rows
    kept, counts = [], {}
    for row in sorted(rows, key=lambda r: r.sample_id):
        key = (row.split, row.label)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= per_class:
            kept.append(row)
    return kept


def _decode_row(row: Row) -> tuple[Row, dict | None, Problem | None]:
    try:
        img = decode_image(row.path)
    except ImageError as exc:
        return row, None, Problem(row.source, row.sample_id, f"{exc} ({row.path})")
    record = {"sample_id": row.sample_id, "split": row.split, "label": row.label, "path": str(row.path),
              "width": img.width, "height": img.height, "mode": img.mode, "file_hash": img.file_hash,
              "pixel_hash": img.pixel_hash, "source": row.source}
    note = None
    if img.conversion:
        note = Problem(row.source, row.sample_id, f"converted {img.conversion}", code="converted",
                       severity="warning", action="converted")
    return row, record, note


def ingest(listing: Listing, *, limit_per_class: int = 0, workers: int = 2,
           progress: Callable[[int], None] | None = None) -> IngestResult:
    """Check, decode and hash every row; a bad file becomes a problem row and the run goes on."""
    listing = check_rows(listing)
    rows = _limit(listing.rows, limit_per_class)
    problems = list(listing.problems)
    records = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _row, record, problem in pool.map(_decode_row, rows, chunksize=32):
            if record is not None:
                records.append(record)
            if problem is not None:
                problems.append(problem)
            if progress:
                progress(1)
    samples = pd.DataFrame.from_records(records, columns=[c for c in SAMPLE_COLUMNS if c != "label_index"])
    train_labels = set(samples.loc[samples["split"] == "train", "label"])
    order = class_order(train_labels)
    index = {label: i for i, label in enumerate(order)}
    # A test label whose every train image was unreadable has no class any more: report, do not guess.
    orphan = ~samples["label"].isin(index)
    for rec in samples[orphan].to_dict("records"):
        problems.append(Problem(rec["source"], rec["sample_id"],
                                f"label '{rec['label']}' has no readable train image; the model cannot predict it",
                                code="unknown_label"))
    samples = samples[~orphan].copy()
    samples["label_index"] = samples["label"].map(index).astype("int32")
    samples = samples[SAMPLE_COLUMNS].sort_values("sample_id", kind="stable").reset_index(drop=True)
    counts = samples[samples["split"] == "train"].groupby("label").size()
    classes = pd.DataFrame({"label_index": range(len(order)), "label": order,
                            "n_train": [int(counts.get(label, 0)) for label in order]})
    problem_frame = pd.DataFrame([p.__dict__ for p in problems], columns=PROBLEM_COLUMNS)
    return IngestResult(samples=samples, classes=classes, problems=problem_frame)
