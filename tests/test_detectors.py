"""Detectors on planted answers: calibrated thresholds, exact and near duplicates, a train-test leak, a tiny
sub-population, influence sub-populations, and label issues against plain confident learning."""

import json

import numpy as np
import pandas as pd
import pytest

from auditor.detectors.duplicates import (
    EXACT_COLUMNS,
    PAIR_COLUMNS,
    duplicate_flags,
    exact_duplicate_pairs,
    leak_flags,
    leak_pairs,
    near_duplicate_pairs,
)
from auditor.detectors.label_issues import (
    CL_COLUMNS,
    confident_learning,
    knn_label_disagreement,
    label_issue_flags,
)
from auditor.detectors.long_tail import (
    CLUSTER_COLUMNS,
    class_clusters,
    local_density,
    long_tail_flags,
    subpopulations_from_influence,
)
from auditor.detectors.copies import calibrate_neighbours, copy_p_values, copy_scores
from auditor.detectors.thresholds import Threshold, calibrate_from_labels
from auditor.detectors.flags import FLAG_COLUMNS
from auditor.detectors.neighbors import knn


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i}" for i in range(n)])


def _embeddings(rng: np.random.Generator, n: int, d: int = 32, n_centres: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors (image-embedding-like) and their cluster as label."""
    labels = rng.integers(0, n_centres, n)
    centres = rng.standard_normal((n_centres, d)) * 2
    return centres[labels] + rng.standard_normal((n, d)), labels


# ---- thresholds


def test_discoveries_separate_planted_copies():
    """40 near copies and 30 identical copies among 5,000 clustered embeddings: Benjamini-Hochberg over the images
    finds every planted pair, with few false ones; identical neighbours are left out of the null's fit."""
    rng = np.random.default_rng(0)
    x, _ = _embeddings(rng, 5000)
    x[:40] = x[100:140] + 0.05 * rng.standard_normal((40, x.shape[1]))
    x[40:70] = x[200:230]
    graph = knn(x, 10)
    threshold = calibrate_neighbours(graph, 0.05)
    detail = threshold.detail
    assert threshold.method == "nn_fdr" and detail["n_identical"] == 60
    pairs = near_duplicate_pairs(graph, np.arange(5000), np.zeros(5000), threshold)
    found = set(zip(pairs["a_id"], pairs["b_id"]))
    planted = {(i, 100 + i) for i in range(40)} | {(40 + i, 200 + i) for i in range(30)}
    assert planted <= found and len(found - planted) <= 0.05 * len(found)
    assert detail["tested"] == 5000 and detail["discoveries"] == int(np.sum(copy_scores(graph)[:, 0] >= threshold.value))
    assert detail["p_cut"] == pytest.approx(0.05 * detail["discoveries"] / 5000)
    assert copy_p_values(np.array([threshold.value]), threshold)[0] <= detail["p_cut"] + 1e-12
    assert (pairs["similarity"] >= pairs["cut"] - 1e-9).all() and (pairs["q_value"] <= 0.05).all()


@pytest.mark.parametrize("seed", range(5))
def test_no_discoveries_on_clean_neighbours(seed):
    """Null test: the kNN graph of clustered Gaussian embeddings without copies (the signal shuffled away) gives no
    discovery and no pair."""
    rng = np.random.default_rng(seed)
    x, labels = _embeddings(rng, 5000)
    graph = knn(x, 10)
    threshold = calibrate_neighbours(graph, 0.05)
    assert threshold.detail["discoveries"] == 0
    assert near_duplicate_pairs(graph, np.arange(5000), labels, threshold).empty
    with pytest.raises(ValueError, match="copy_fdr"):
        calibrate_neighbours(graph, 0.0)


def test_label_threshold_maximises_f1_between_the_classes():
    sims = np.array([0.99, 0.97, 0.95, 0.93, 0.90, 0.88, 0.80])
    confirmed = np.array([True, True, True, False, True, False, False])
    threshold = calibrate_from_labels(sims, confirmed)
    assert threshold.value == pytest.approx(0.89)  # calling the top 5 duplicates: F1 = 8/9
    assert [threshold.detail[key] for key in ("tp", "fp", "fn", "tn")] == [4, 1, 0, 2]
    assert threshold.detail["f1"] == pytest.approx(8 / 9)
    balanced = calibrate_from_labels(sims, confirmed, criterion="balanced_accuracy")
    # Balanced accuracy prefers the top 3 (3/4 + 3/3) / 2 = 0.875 over the top 5 (4/4 + 2/3) / 2.
    assert balanced.method == "labels_balanced_accuracy" and balanced.value == pytest.approx(0.94)
    separable = calibrate_from_labels([0.9, 0.95, 0.5, 0.6], [True, True, False, False])
    assert separable.value == pytest.approx(0.75) and separable.detail["f1"] == 1.0
    with pytest.raises(ValueError, match="one confirmed and one rejected"):
        calibrate_from_labels([0.9, 0.8], [True, True])


# ---- duplicates and leaks


def test_exact_duplicates_and_leaks_with_hash_groups():
    ids = _ids("s", 8)
    splits = np.array(["train", "test", "train", "train", "test", "train", "test", "train"])
    labels = np.array(["cat", "cat", "dog", "dog", "cat", "dog", "dog", "cat"])
    file_hash = np.array(["f0", "f0", "f2", "f3", "f4", None, "f6", "f6"], dtype=object)
    pixel_hash = np.array(["p0", "p0", "p2", "p0", "p4", None, None, None], dtype=object)
    pairs = exact_duplicate_pairs(ids, splits, labels, file_hash, pixel_hash)
    assert list(pairs.columns) == EXACT_COLUMNS
    got = {(a, b): (kind, same, conflict) for a, b, kind, _, same, conflict in pairs.itertuples(index=False)}
    assert got == {("s0", "s3"): ("exact_duplicate", False, True),  # same pixels, other file, other label
                   ("s0", "s1"): ("exact_leak", True, False),
                   ("s3", "s1"): ("exact_leak", False, True),  # every training copy is paired with the test one
                   ("s7", "s6"): ("exact_leak", True, True)}  # undecodable: grouped by file hash
    assert (pairs["similarity"] == 1.0).all()
    leaked = leak_flags(pairs).set_index("sample_id")
    assert set(leaked.index) == {"s0", "s1", "s3", "s6", "s7"} and (leaked["kind"] == "leaked").all()
    s1 = json.loads(leaked.loc["s1", "detail"])
    assert s1["role"] == "test" and s1["twins"] == 2 and s1["conflicting_twins"] == 1 and s1["exact"]


def test_a_large_group_of_identical_images_gives_linear_pairs():
    n = 1000
    pairs = exact_duplicate_pairs(_ids("s", n), np.array(["train"] * (n - 1) + ["test"]), np.zeros(n),
                                  np.array([f"f{i}" for i in range(n)], dtype=object), np.full(n, "blank", object))
    assert len(pairs) == 2 * n - 3
    assert (pairs["kind"] == "exact_leak").sum() == n - 1 and (pairs["b_id"] == "s999").sum() == n - 1


def test_near_duplicates_and_a_planted_leak_with_known_answers():
    rng = np.random.default_rng(2)
    x, labels = _embeddings(rng, 2500)
    train, train_labels, test, test_labels = x[:2000], labels[:2000], x[2000:], labels[2000:]
    copies = np.array([5, 17, 300, 1200])
    train[1500:1504] = train[copies] + 0.02 * rng.standard_normal((4, train.shape[1]))
    train_labels[1500:1504] = train_labels[copies]
    train_labels[1503] = (train_labels[1503] + 1) % 20  # one near duplicate with a conflicting label
    leaked = np.array([40, 41, 900])
    test[:3] = train[leaked] + 0.02 * rng.standard_normal((3, train.shape[1]))
    test_labels[:3] = train_labels[leaked]
    train_ids, test_ids = _ids("tr", 2000), _ids("te", 500)

    self_graph = knn(train, 5)
    threshold = calibrate_neighbours(self_graph, 0.05)
    near = near_duplicate_pairs(self_graph, train_ids, train_labels, threshold)
    assert list(near.columns) == [*PAIR_COLUMNS, "cut", "q_value"]
    assert set(zip(near["a_id"], near["b_id"])) == {(f"tr{c}", f"tr{1500 + i}") for i, c in enumerate(copies)}
    assert near.set_index("b_id")["conflicting"].to_dict() == {"tr1500": False, "tr1501": False,
                                                                "tr1502": False, "tr1503": True}
    flags = duplicate_flags(near, threshold)
    assert list(flags.columns) == FLAG_COLUMNS and len(flags) == 8
    detail = json.loads(flags.set_index("sample_id").loc["tr1503", "detail"])
    assert detail["twin"] == "tr1200" and detail["conflicting"] and not detail["exact"]
    cut = near.set_index("b_id").loc["tr1503", "cut"]  # the cosine this image's edge needed
    assert detail["threshold"] == pytest.approx(cut, abs=1e-6) and cut <= detail["similarity"]
    assert "FDR 5 %" in detail["chance"] and detail["q_value"] <= 0.05

    cross = knn(train, 3, query=test)
    leak_threshold = calibrate_neighbours(cross, 0.05)
    leaks = leak_pairs(cross, test_ids, train_ids, test_labels, train_labels, leak_threshold)
    assert set(zip(leaks["a_id"], leaks["b_id"])) == {("tr40", "te0"), ("tr41", "te1"), ("tr900", "te2")}
    assert (leaks["kind"] == "leak").all() and not leaks["conflicting"].any()
    roles = leak_flags(leaks, leak_threshold).set_index("sample_id")["detail"].map(lambda d: json.loads(d)["role"])
    assert roles.to_dict() == {"tr40": "train", "tr41": "train", "tr900": "train", "te0": "test", "te1": "test",
                               "te2": "test"}


def test_a_sample_with_several_twins_gets_one_flag_naming_the_best():
    pairs = pd.DataFrame({"a_id": ["a", "a", "a", "x"], "b_id": ["b", "c", "d", "a"],
                          "kind": ["near_duplicate", "near_duplicate", "exact_duplicate", "leak"],
                          "similarity": [0.97, 0.99, 1.0, 0.98], "conflicting": [True, False, True, False]})
    flags = duplicate_flags(pairs, Threshold(0.95, "manual")).set_index("sample_id")
    assert sorted(flags.index) == ["a", "b", "c", "d"] and (flags["kind"] == "duplicate").all()
    detail = json.loads(flags.loc["a", "detail"])
    assert detail == {"twin": "d", "pair_kind": "exact_duplicate", "similarity": 1.0, "exact": True,
                      "conflicting": True, "twins": 3, "conflicting_twins": 2, "threshold": None,
                      "threshold_method": None}
    assert flags.loc["b", "score"] == pytest.approx(0.97)
    assert json.loads(flags.loc["b", "detail"])["threshold"] == 0.95


def test_each_pair_kind_reports_its_own_threshold():
    pairs = pd.DataFrame({"a_id": ["a", "c"], "b_id": ["b", "d"], "kind": ["near_duplicate", "pixel_duplicate"],
                          "similarity": [0.97, 0.999], "conflicting": [False, False]})
    flags = duplicate_flags(pairs, {"near_duplicate": Threshold(0.95, "nn_fdr"),
                                    "pixel_duplicate": Threshold(0.99, "nn_fdr")}).set_index("sample_id")
    details = flags["detail"].map(json.loads)
    assert details["a"]["threshold"] == 0.95 and details["a"]["pair_kind"] == "near_duplicate"
    assert details["d"]["threshold"] == 0.99 and details["d"]["pair_kind"] == "pixel_duplicate"


# ---- long tail


def test_a_tiny_far_cluster_is_flagged_as_long_tail():
    rng = np.random.default_rng(4)
    d = 16
    centres = rng.standard_normal((2, d)) * 3
    far = centres[0] + rng.standard_normal(d) * 3
    x = np.vstack([centres[0] + rng.standard_normal((200, d)), far + 0.3 * rng.standard_normal((3, d)),
                   centres[1] + rng.standard_normal((200, d))])
    labels = np.repeat([0, 0, 1], [200, 3, 200])
    clusters = class_clusters(x, labels, seed=0)
    assert list(clusters.columns) == CLUSTER_COLUMNS
    pd.testing.assert_frame_equal(clusters, class_clusters(x, labels, seed=0))
    planted = clusters.iloc[200:203]
    assert planted["cluster"].nunique() == 1 and (planted["cluster_size"] == 3).all()
    assert clusters.groupby("label")["cluster"].nunique().tolist() == [10, 10]  # round(sqrt(n / 2))
    density = local_density(knn(x, 10))
    flags = long_tail_flags(clusters, density, _ids("s", len(x))).set_index("sample_id")
    assert (flags["kind"] == "long_tail").all() and flags["score"].between(0, 1).all()
    for sample in ("s200", "s201", "s202"):
        detail = json.loads(flags.loc[sample, "detail"])
        assert detail["reasons"] == ["tiny_cluster", "low_density"] and detail["class_size"] == 203
        assert flags.loc[sample, "score"] > 0.5
    assert (flags["score"].drop(["s200", "s201", "s202"]) <= 0.5).all()  # one rule alone scores at most 0.5


def test_local_density_is_the_mean_neighbour_similarity():
    graph = knn(np.array([[1.0, 0], [1, 0.1], [0, 1]]), 2)
    expected = graph.similarities.mean(axis=1)
    np.testing.assert_allclose(local_density(graph), expected, rtol=1e-6)
    assert np.isnan(local_density(knn(np.ones((1, 2)), 1))).all()


def test_subpopulations_join_memorized_points_that_support_a_common_test_point():
    influence = pd.DataFrame({
        "train_id": ["m1", "m2", "m2", "m3", "m4", "m5", "plain", "m6"],
        "test_id": ["t1", "t1", "t2", "t2", "t3", "t4", "t3", "t5"],
        "score": [0.5, 0.3, 0.4, 0.6, 0.7, 0.9, 0.8, 0.1]})
    subpops = subpopulations_from_influence(influence, ["m1", "m2", "m3", "m4", "m5", "m6"])
    groups = {sid: (sorted(g.loc[g["source"] == "influence", "sample_id"]),
                    sorted(g.loc[g["source"] == "influenced_test", "sample_id"]))
              for sid, g in subpops.groupby("subpop_id")}
    # m2 supports t2 most (0.4 > 0.3), like m3: one group; m1 stays with t1 (no chaining through m2); m4 and m5
    # alone; "plain" is not memorized; m6's influence is too weak.
    assert groups == {0: (["m2", "m3"], ["t2"]), 1: (["m1"], ["t1"]), 2: (["m4"], ["t3"]), 3: (["m5"], ["t4"])}
    assert subpopulations_from_influence(influence, []).empty


# ---- label issues


def _gaussian_problem(seed: int, sep: float = 3.0, flip: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 Gaussian classes of 500 in 16-d, means `sep` from the origin; a `flip` share of labels changed."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((3, 16))
    means *= sep / np.linalg.norm(means, axis=1, keepdims=True)
    truth = np.repeat(np.arange(3), 500)
    x = means[truth] + rng.standard_normal((len(truth), 16))
    noisy = truth.copy()
    flipped = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    noisy[flipped] = (truth[flipped] + rng.integers(1, 3, len(flipped))) % 3
    return x, noisy, noisy != truth


def _out_of_fold_lda(x: np.ndarray, labels: np.ndarray, folds: int = 5) -> np.ndarray:
    """Out-of-sample class probabilities of linear discriminant analysis fitted on the (noisy) labels, 5-fold."""
    fold = np.random.default_rng(0).permutation(len(x)) % folds
    probs = np.empty((len(x), 3))
    for f in range(folds):
        fit = fold != f
        xf, yf = x[fit], labels[fit]
        means = np.stack([xf[yf == c].mean(axis=0) for c in range(3)])
        resid = xf - means[yf]
        precision = np.linalg.inv(resid.T @ resid / len(xf))
        logits = (x[~fit] @ precision @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, precision, means)
                  + np.log(np.bincount(yf, minlength=3) / len(yf)))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[~fit] = e / e.sum(axis=1, keepdims=True)
    return probs


def _scores(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = (flagged & truth).sum()
    precision, recall = tp / max(flagged.sum(), 1), tp / truth.sum()
    return precision, recall, 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(("seed", "view_noise"), [(1, 0.0), (2, 0.0), (5, 0.0), (1, 0.8), (2, 0.8)])
def test_combined_label_flags_beat_plain_confident_learning(seed, view_noise):
    """view_noise > 0: the model sees noisier features than the embedding the kNN graph is built on."""
    x, noisy, truth = _gaussian_problem(seed)
    view = x + view_noise * np.random.default_rng(100 + seed).standard_normal(x.shape)
    cl = confident_learning(_out_of_fold_lda(view, noisy), noisy)
    knn_frame = knn_label_disagreement(knn(x, 10), noisy, 3)
    ids = _ids("s", len(x))
    flags = label_issue_flags(cl, knn_frame, ids)
    cl_p, cl_r, cl_f1 = _scores(cl["is_issue"].to_numpy(), truth)
    p, r, f1 = _scores(np.isin(ids, flags["sample_id"]), truth)
    print(f"seed {seed} view noise {view_noise}: CL P/R/F1 {cl_p:.3f}/{cl_r:.3f}/{cl_f1:.3f}, "
          f"combined {p:.3f}/{r:.3f}/{f1:.3f}")
    assert r >= 0.8 and r >= cl_r - 0.02  # at most one of the 75 flipped labels lost
    assert f1 >= cl_f1 and p >= cl_p


def test_confident_learning_skips_rows_without_predictions_and_finds_a_planted_flip():
    x, noisy, truth = _gaussian_problem(0, sep=5.0, flip=0.0)
    probs = _out_of_fold_lda(x, noisy)
    noisy[7] = (noisy[7] + 1) % 3
    probs[[3, 9]] = np.nan
    cl = confident_learning(probs, noisy)
    assert list(cl.columns) == CL_COLUMNS and len(cl) == len(x) - 2 and not cl["index"].isin([3, 9]).any()
    row = cl.set_index("index").loc[7]
    assert row["is_issue"] and row["in_off_diagonal"] and row["suggested"] == truth[7] == (noisy[7] - 1) % 3
    assert row["rank_score"] == pytest.approx(1 - row["self_confidence"])
    assert cl["is_issue"].sum() <= 3


def test_knn_disagreement_is_similarity_weighted():
    base = np.array([[1.0, 0.0], [1.0, 0.2], [1.0, -0.2], [0.0, 1.0]])
    graph = knn(base, 2)
    frame = knn_label_disagreement(graph, np.array([0, 1, 1, 0]), 2).set_index("index")
    assert frame.loc[0, "disagreement"] == pytest.approx(1.0) and frame.loc[0, "knn_label"] == 1
    weights = graph.similarities[1]
    labels_of_1 = np.array([0, 1, 1, 0])[graph.indices[1]]
    assert frame.loc[1, "disagreement"] == pytest.approx(weights[labels_of_1 != 1].sum() / weights.sum())
    assert (frame["n_neighbors"] == 2).all() and frame.loc[0, "n_disagreeing"] == 2


def test_influence_separates_mislabeled_from_rare_but_useful():
    cl = pd.DataFrame({"index": [0, 1, 2], "given": [0, 0, 1], "suggested": [1, 1, 0],
                       "self_confidence": [0.1, 0.1, 0.1], "in_off_diagonal": True, "is_issue": True,
                       "rank_score": [0.9, 0.9, 0.9]})
    knn_frame = pd.DataFrame({"index": [0, 1, 2], "disagreement": [0.3, 0.9, 0.9], "knn_label": [0, 1, 0],
                              "n_disagreeing": [3, 9, 9], "n_neighbors": 10})
    ids = np.array(["a", "b", "c"])
    plain = label_issue_flags(cl, knn_frame, ids, class_names=["cat", "dog"])
    assert plain["sample_id"].tolist() == ["b", "c"]  # a: its neighbours mostly agree with its label
    assert json.loads(plain["detail"].iloc[0])["given"] == "cat"
    memorized = pd.Series({"a": 0.6, "b": 0.6, "c": 0.6})
    cross = pd.Series({"a": -0.3, "b": 0.4, "c": -0.2})
    flags = label_issue_flags(cl, knn_frame, ids, self_influence=memorized,
                              cross_influence=cross).set_index("sample_id")
    assert sorted(flags.index) == ["a", "b", "c"]  # a: harmful to similar test points, so flagged after all
    assert flags.loc["a", "score"] == pytest.approx((1 + 0.6) / 2)
    assert flags.loc["b", "score"] == pytest.approx(0.9 / 2)
    assert flags.loc["c", "score"] == pytest.approx((1 + 0.9) / 2)
    assert json.loads(flags.loc["b", "detail"])["influence_reading"] == "rare_but_useful"
    assert json.loads(flags.loc["a", "detail"])["influence_reading"] == "mislabeled"
