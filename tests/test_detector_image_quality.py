"""The image-quality detector: on i.i.d. images (no planted problem) it flags at most its promised rate; planted
blank, dark, bright and blurred images are found with the right issue named, their value against the dataset's range."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditor.detectors.image_quality import image_statistics, quality_flags


def _textured(n: int, seed: int, channels: int = 3, size: int = 24) -> np.ndarray:
    """Smooth random textures (a low-pass of noise) at random mid brightness: no two alike, none extreme."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, 1, size + 2, size + 2))
    smooth = sum(noise[:, :, i:i + size, j:j + size] for i in range(3) for j in range(3)) / 3
    level = rng.uniform(90, 160, (n, 1, 1, 1))
    return np.clip(level + 25 * smooth + rng.normal(0, 3, (n, channels, size, size)), 0, 255).astype(np.uint8)


def _blur(images: np.ndarray) -> np.ndarray:
    """A 5x5 box blur (edges replicated)."""
    padded = np.pad(images.astype(np.float32), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    h, w = images.shape[2:]
    return (sum(padded[:, :, i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_iid_images_flag_at_most_the_promised_rate(seed):
    images = _textured(1500, seed)
    flags, thresholds = quality_flags(image_statistics(images), np.arange(len(images)).astype(str))
    # The promise: the robust cuts (c = 5) flag well under the 1% per property that the floor caps them at.
    assert len(flags) <= 0.003 * len(images), [t.detail for t in thresholds.values()]
    assert {t.detail["binding"] for t in thresholds.values()} == {"mad"}


def test_planted_blank_dark_bright_and_blurred_images_are_found():
    images = _textured(1200, 5)
    planted = {"blank": range(0, 5), "dark": range(100, 105), "bright": range(200, 205), "blurry": range(300, 305)}
    images[list(planted["blank"])] = 128
    images[list(planted["dark"])] //= 12
    images[list(planted["bright"])] = 255 - (255 - images[list(planted["bright"])]) // 12
    images[list(planted["blurry"])] = _blur(_blur(images[list(planted["blurry"])]))
    ids = np.array([f"img{i:04d}" for i in range(len(images))])
    flags, thresholds = quality_flags(image_statistics(images), ids)
    issues = {row.sample_id: json.loads(row.detail) for row in flags.itertuples()}
    expected = {"blank": "low_contrast", "dark": "dark", "bright": "bright", "blurry": "blurry"}
    for what, rows in planted.items():
        for i in rows:
            assert expected[what] in issues.get(ids[i], {}).get("issues", {}), (what, issues.get(ids[i]))
    assert len(flags) <= 20 + 0.003 * len(images)
    dark = issues[ids[100]]["issues"]["dark"]
    assert dark["value"] < dark["cut"] < dark["typical"][0] <= dark["typical"][1]
    assert "dark: mean brightness" in issues[ids[100]]["summary"] and "dataset 5–95%" in issues[ids[100]]["summary"]
    assert set(thresholds) == {"image_quality_dark", "image_quality_bright", "image_quality_low_contrast",
                               "image_quality_blurry"}
    assert flags["score"].between(0, 1).all()


def test_statistics_of_known_images():
    flat = np.full((1, 1, 8, 8), 51, dtype=np.uint8)
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[None, None].repeat(3, axis=1)
    stats = image_statistics(np.concatenate([flat.repeat(3, axis=1), checker]))
    assert stats["brightness"].tolist() == pytest.approx([0.2, 0.5])
    assert stats["contrast"].tolist() == pytest.approx([0.0, 127.5])
    assert stats["sharpness"][0] == 0 and stats["sharpness"][1] > 10
    with pytest.raises(ValueError, match="at least 3x3"):
        image_statistics(np.zeros((2, 1, 2, 2), dtype=np.uint8))
