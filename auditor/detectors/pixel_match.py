"""Integer image shifts (the edit a lightly moved copy went through); the copy matcher that finds such copies is
copies.py."""

from __future__ import annotations

import numpy as np


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The images moved dy rows down and dx columns right (negative: up / left); uncovered pixels repeat the edge."""
    images = np.asarray(images)
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return images
    widths = [(0, 0)] * (images.ndim - 2) + [(pad, pad), (pad, pad)]
    padded = np.pad(images, widths, mode="edge")
    h, w = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]
