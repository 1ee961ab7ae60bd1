"""Decode every listed image once: metadata and hashes for `samples`, every failure into `problems`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pandas as pd

from auditor.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodedImage, ImageError, decode_image
from auditor.data.manifest import Listing, Problem, Row, check_rows
from auditor.data.tensors import GRAYSCALE_MODES

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


def _notes(row: Row, img: DecodedImage) -> list[Problem]:
    """Warnings for a usable image: a mode conversion, frames beyond the first of an animated file."""
    notes = []
    if img.conversion:
        notes.append(Problem(row.source, row.sample_id, f"converted {img.conversion}", code="converted",
                             severity="warning", action="converted"))
    if img.frames > 1:
        notes.append(Problem(row.source, row.sample_id, f"animated or multi-frame image ({img.frames} frames); only "
                             "the first frame is audited", code="animated", severity="warning", action="first_frame"))
    return notes


def _decode_row(row: Row, max_bytes: int, max_pixels: int) -> tuple[Row, dict | None, list[Problem]]:
    try:
        img = decode_image(row.path, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageError as exc:
        return row, None, [Problem(row.source, row.sample_id, f"{exc} ({row.path})")]
    record = {"sample_id": row.sample_id, "split": row.split, "label": row.label, "path": str(row.path),
              "width": img.width, "height": img.height, "mode": img.mode, "file_hash": img.file_hash,
              "pixel_hash": img.pixel_hash, "source": row.source}
    return row, record, _notes(row, img)


def _channel_warnings(records: list[dict], channels: str | int) -> list[Problem]:
    """With `channels = "auto"`, a minority of colour images among grayscale ones turns the whole dataset into 3
    channels: one warning per colour image, so the change is never silent."""
    colour = [rec for rec in records if rec["mode"] not in GRAYSCALE_MODES]
    n_gray = len(records) - len(colour)
    if channels != "auto" or not colour or len(colour) >= n_gray:
        return []
    return [Problem(rec["source"], rec["sample_id"],
                    f"colour image (mode {rec['mode']}) among {n_gray} grayscale ones: with data.channels = auto it "
                    "makes every image 3-channel; set data.channels = 1 to keep the dataset grayscale, or remove it",
                    code="channels", severity="warning", action="kept") for rec in colour]


def ingest(listing: Listing, *, limit_per_class: int = 0, workers: int = 2, max_file_mb: int = DEFAULT_MAX_BYTES >> 20,
           max_megapixels: int = DEFAULT_MAX_PIXELS // 10**6, channels: str | int = "auto",
           progress: Callable[[int], None] | None = None) -> IngestResult:
    """Check, decode and hash every row; a bad file (too big, not a regular file, undecodable) becomes a problem row
    and the run goes on."""
    listing = check_rows(listing)
    rows = _limit(listing.rows, limit_per_class)
    problems = list(listing.problems)
    records = []
    decode = partial(_decode_row, max_bytes=max_file_mb << 20, max_pixels=max_megapixels * 10**6)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _row, record, notes in pool.map(decode, rows, chunksize=32):
            if record is not None:
                records.append(record)
            problems.extend(notes)
            if progress:
                progress(1)
    problems.extend(_channel_warnings(records, channels))
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
