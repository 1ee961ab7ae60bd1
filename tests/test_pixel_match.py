"""Shift-tolerant pixel matching finds edited copies that plain pixel (or embedding) cosine misses."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.detectors.pixel_match import centred_vectors, shift_knn, shifted
from auditor.neighbors import knn


def _blobs(n: int, seed: int = 0) -> np.ndarray:
    """n random sparse 'strokes' images of 20 x 20 (uint8), on a black background like digits."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 20, 20), dtype=np.float32)
    for img in images:
        for _ in range(4):
            y, x = rng.integers(4, 16, size=2)
            img[0, y - 2:y + 2, x - 1:x + 1] = rng.uniform(150, 255)
    return images.astype(np.uint8)


def test_shifted_moves_content_and_repeats_the_edge():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    down_right = shifted(img, 1, 1)[0]
    assert down_right[1:, 1:].tolist() == img[0, :3, :3].tolist()
    assert down_right[0].tolist() == [0, 0, 1, 2] and shifted(img, 0, 0) is img
    assert shifted(img, -1, 0)[0, :3].tolist() == img[0, 1:].tolist()


def test_centred_vectors_ignore_brightness_offsets():
    a = _blobs(1).astype(np.float32)
    v, w = centred_vectors(a), centred_vectors(a + 30)
    assert np.allclose(v, w)


def test_an_edited_copy_is_the_top_match_only_under_shifts():
    base = _blobs(200)
    rng = np.random.default_rng(1)
    source = 17
    copy = shifted(base[source:source + 1].astype(np.float32), 2, -1) * 0.9
    copy = np.clip(copy + rng.normal(0, 3, copy.shape), 0, 255).astype(np.uint8)
    plain = knn(centred_vectors(base), 1, query=centred_vectors(copy), exclude_self=False)
    matched = shift_knn(base, 3, query=copy, max_shift=2)
    assert matched.indices[0, 0] == source and matched.similarities[0, 0] > 0.99
    assert plain.similarities[0, 0] < 0.9  # without alignment the copy looks like a different image
    assert matched.similarities[0, 1] < matched.similarities[0, 0]


def test_the_self_graph_never_returns_the_image_itself_and_keeps_distinct_neighbours():
    base = _blobs(60, seed=3)
    base[5] = shifted(base[9], 1, 0)
    graph = shift_knn(base, 4, max_shift=1)
    rows = np.arange(len(base))[:, None]
    assert not (graph.indices == rows).any()
    assert all(len(set(r)) == len(r) for r in graph.indices)
    assert graph.indices[5, 0] == 9 and graph.indices[9, 0] == 5
    assert np.all(np.diff(graph.similarities, axis=1) <= 1e-6)
    assert graph.index_kind.endswith("shift<=1")


def test_bad_arguments_are_rejected():
    base = _blobs(10)
    with pytest.raises(ValueError, match="max_shift"):
        shift_knn(base, 2, max_shift=-1)
    with pytest.raises(ValueError, match="shape"):
        shift_knn(base, 2, query=np.zeros((1, 1, 8, 8), dtype=np.uint8))
