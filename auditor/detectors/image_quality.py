"""Image quality (CleanVision's issue types): cheap per-image statistics of the decoded pixels, flagged when extreme
for this dataset (robust one-sided cut, thresholds.calibrate_tail): too dark or too bright (mean grey level), low
contrast or near-blank (grey-level standard deviation) and blurry (Laplacian variance relative to the grey-level
variance, so a dim but sharp image is not called blurry)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.detectors.contract import DetectorContext, DetectorResult
from auditor.detectors.thresholds import Threshold, calibrate_tail
from auditor.detectors.flags import FLAG_COLUMNS

KIND = "image_quality"
_CHUNK = 4096


@dataclass(frozen=True)
class Property:
    """One issue: the statistic it reads, the tail that is bad, and how to say it."""

    issue: str
    statistic: str
    side: str
    words: str


PROPERTIES = (Property("dark", "brightness", "lower", "mean brightness"),
              Property("bright", "brightness", "upper", "mean brightness"),
              Property("low_contrast", "contrast", "lower", "grey-level std"),
              Property("blurry", "sharpness", "lower", "Laplacian/grey variance"))


def image_statistics(pixels: np.ndarray) -> pd.DataFrame:
    """Per image of uint8 NCHW `pixels`: brightness (mean grey level in [0, 1]), contrast (grey-level std, 0-255)
    and sharpness (variance of the 4-neighbour Laplacian over the grey-level variance + 1)."""
    if pixels.ndim != 4 or min(pixels.shape[2:]) < 3:
        raise ValueError(f"need NCHW images of at least 3x3 pixels, got shape {pixels.shape}")
    parts = []
    for start in range(0, len(pixels), _CHUNK):
        grey = pixels[start:start + _CHUNK].astype(np.float32).mean(axis=1)
        lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
               - 4 * grey[:, 1:-1, 1:-1])
        variance = grey.var(axis=(1, 2), dtype=np.float64)
        parts.append(pd.DataFrame({"brightness": grey.mean(axis=(1, 2), dtype=np.float64) / 255.0,
                                   "contrast": np.sqrt(variance),
                                   "sharpness": lap.var(axis=(1, 2), dtype=np.float64) / (variance + 1.0)}))
    if not parts:
        raise ValueError("need at least one image")
    return pd.concat(parts, ignore_index=True)


# Brightness is calibrated as a logit, clipped half a grey level from black and white.
_EDGE = 0.5 / 255


def _scaled(statistic: str, values: np.ndarray) -> np.ndarray:
    """The scale a statistic is calibrated on, which spreads its bad tail: brightness as a logit (so 0.02 is as far
    below 0.5 as 0.98 is above), contrast and sharpness as log(1 + x)."""
    if statistic == "brightness":
        clipped = np.clip(values, _EDGE, 1 - _EDGE)
        return np.log(clipped / (1 - clipped))
    return np.log1p(values)


def _unscaled(statistic: str, value: float) -> float:
    """A cut back in the statistic's own units."""
    return float(1 / (1 + np.exp(-value))) if statistic == "brightness" else float(np.expm1(value))


def quality_flags(stats: pd.DataFrame, ids: np.ndarray, *, c: float = 5.0,
                  floor_quantile: float = 0.99) -> tuple[pd.DataFrame, dict[str, Threshold]]:
    """One 'image_quality' flag per image (row of image_statistics) beyond the cut of any property (its detail lists
    each with its value and the dataset's 5–95% range); score 1 - exp(-z / c) from the largest robust z. Thresholds
    by property."""
    stats = stats.reset_index(drop=True)
    if len(stats) != len(ids):
        raise ValueError(f"{len(stats)} images but {len(ids)} ids")
    thresholds, z, hits = {}, {}, {}
    for prop in PROPERTIES:
        values = _scaled(prop.statistic, stats[prop.statistic].to_numpy())
        cut = calibrate_tail(values, prop.side, c=c, floor_quantile=floor_quantile)
        sign = 1.0 if prop.side == "upper" else -1.0
        scale = cut.detail["tail_sd"]
        z[prop.issue] = sign * (values - cut.detail["median"]) / scale if scale > 0 else np.full(len(values), np.inf)
        hits[prop.issue] = sign * (values - cut.value) > 0
        thresholds[f"{KIND}_{prop.issue}"] = Threshold(_unscaled(prop.statistic, cut.value), cut.method,
                                                       {**cut.detail, "statistic": prop.statistic})
    ranges = {name: np.quantile(stats[name], [0.05, 0.95]) for name in stats}
    rows, scores, details = [], [], []
    for i in np.flatnonzero(np.any(np.stack(list(hits.values())), axis=0)):
        found = [prop for prop in PROPERTIES if hits[prop.issue][i]]
        worst = max(float(z[prop.issue][i]) for prop in found)
        issues = {prop.issue: {"statistic": prop.statistic, "value": round(float(stats[prop.statistic][i]), 4),
                               "cut": round(thresholds[f"{KIND}_{prop.issue}"].value, 4),
                               "typical": [round(float(q), 4) for q in ranges[prop.statistic]]} for prop in found}
        text = "; ".join(f"{prop.issue.replace('_', ' ')}: {prop.words} {stats[prop.statistic][i]:.3g} (dataset "
                         f"5–95%: {ranges[prop.statistic][0]:.3g}–{ranges[prop.statistic][1]:.3g}, cut "
                         f"{thresholds[f'{KIND}_{prop.issue}'].value:.3g})" for prop in found)
        rows.append(i)
        scores.append(1.0 - float(np.exp(-min(worst, 1e6) / c)))
        details.append(json.dumps({"issues": issues, "summary": text}))
    flags = pd.DataFrame({"sample_id": np.asarray(ids)[np.asarray(rows, dtype=np.int64)], "kind": KIND,
                          "score": np.asarray(scores, dtype=np.float64), "detail": details}, columns=FLAG_COLUMNS)
    return flags, thresholds


def detect(context: DetectorContext) -> DetectorResult:
    """The contract's entry point: quality issues of every readable image, train and test."""
    parts = [(ids, pixels) for ids, pixels in context.images() if len(ids)]
    stats = pd.concat([image_statistics(pixels) for _, pixels in parts], ignore_index=True)
    flags, thresholds = quality_flags(stats, np.concatenate([ids for ids, _ in parts]),
                                      c=context.config.image_quality_c)
    return DetectorResult(flags, thresholds)
