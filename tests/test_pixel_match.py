"""Integer shifts move the content and repeat the edge (the copy matcher itself: test_copies.py)."""

from __future__ import annotations

import numpy as np

from auditor.detectors.pixel_match import shifted


def test_shifted_moves_content_and_repeats_the_edge():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    down_right = shifted(img, 1, 1)[0]
    assert down_right[1:, 1:].tolist() == img[0, :3, :3].tolist()
    assert down_right[0].tolist() == [0, 0, 1, 2] and shifted(img, 0, 0) is img
    assert shifted(img, -1, 0)[0, :3].tolist() == img[0, 1:].tolist()
