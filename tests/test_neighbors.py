"""The shared kNN graph: exact search against brute-force numpy, self-exclusion among exact duplicates, and the
recall of the approximate indexes against exact search."""

import warnings

import faiss
import numpy as np
import pytest

from auditor.detectors.neighbors import NEIGHBOR_COLUMNS, graph_frame, knn, normalise


def _brute_force(base: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = normalise(query).astype(np.float64) @ normalise(base).astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


def test_exact_search_matches_brute_force_and_ignores_scale():
    rng = np.random.default_rng(0)
    base, query = rng.standard_normal((300, 16)), rng.standard_normal((40, 16))
    graph = knn(base, 7, query=query)
    indices, sims = _brute_force(base, query, 7)
    assert graph.exact and graph.index_kind == "Flat"
    assert graph.indices.dtype == np.int64 and graph.similarities.dtype == np.float32
    np.testing.assert_array_equal(graph.indices, indices)
    np.testing.assert_allclose(graph.similarities, sims, atol=1e-5)
    rescaled = knn(base * rng.uniform(0.1, 10, (300, 1)), 7, query=query * 3)
    np.testing.assert_array_equal(rescaled.indices, graph.indices)


def test_self_graph_matches_brute_force_without_self():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((200, 8))
    graph = knn(base, 5)
    indices, sims = _brute_force(base, base, 6)
    np.testing.assert_array_equal(graph.indices, indices[:, 1:])
    np.testing.assert_allclose(graph.similarities, sims[:, 1:], atol=1e-5)


def test_self_exclusion_drops_the_row_itself_among_exact_duplicates():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((100, 8)).astype(np.float32)
    base[[10, 11]] = base[3]
    base[50:60] = base[49]  # 11 copies, more than k + 1: the row itself may not even be returned
    graph = knn(base, 4)
    rows = np.arange(len(base))
    assert not (graph.indices == rows[:, None]).any()
    assert set(graph.indices[3, :2]) == {10, 11} and set(graph.indices[10, :2]) == {3, 11}
    np.testing.assert_allclose(graph.similarities[3, :2], 1.0, atol=1e-6)
    copies = set(range(49, 60))
    for row in range(49, 60):
        assert set(graph.indices[row]) <= copies - {row}
    np.testing.assert_allclose(graph.similarities[49:60], 1.0, atol=1e-6)


def test_missing_neighbours_are_padded_and_left_out_of_the_frame():
    base = np.eye(3, 4)
    graph = knn(base, 4)
    assert (graph.indices[:, 2:] == -1).all() and np.isnan(graph.similarities[:, 2:]).all()
    frame = graph_frame(graph, np.array(["a", "b", "c"]), np.array(["a", "b", "c"]))
    assert list(frame.columns) == NEIGHBOR_COLUMNS and len(frame) == 6
    assert frame.groupby("sample_id")["rank"].apply(list).to_dict() == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}
    assert set(frame.loc[frame["sample_id"] == "a", "neighbor_id"]) == {"b", "c"}


def test_graph_frame_maps_query_and_base_ids():
    rng = np.random.default_rng(3)
    base, query = rng.standard_normal((20, 4)), rng.standard_normal((5, 4))
    graph = knn(base, 3, query=query)
    frame = graph_frame(graph, np.array([f"q{i}" for i in range(5)]), np.array([f"b{i}" for i in range(20)]))
    assert frame["rank"].tolist() == [1, 2, 3] * 5
    assert frame["neighbor_id"].tolist() == [f"b{i}" for i in graph.indices.ravel()]
    np.testing.assert_allclose(frame["similarity"], graph.similarities.ravel())
    with pytest.raises(ValueError, match="query ids"):
        graph_frame(graph, np.array(["q0"]), np.array([f"b{i}" for i in range(20)]))


def test_hnsw_recall_on_unclustered_gaussians():
    rng = np.random.default_rng(4)
    base, query = rng.standard_normal((20_000, 64)), rng.standard_normal((500, 64))
    exact = knn(base, 10, query=query)
    graph = knn(base, 10, query=query, exact_below=0, index="hnsw")
    assert not graph.exact and graph.index_kind.startswith("HNSW32")
    assert _recall(graph.indices, exact.indices) >= 0.9


def test_ivf_recall_on_clustered_vectors():
    """IVF's default nprobe suits clustered data such as image embeddings (on unclustered Gaussians, the worst
    case, recall@10 is ~0.35)."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((100, 64))
    base = centres[rng.integers(0, 100, 20_000)] + rng.standard_normal((20_000, 64))
    query = centres[rng.integers(0, 100, 500)] + rng.standard_normal((500, 64))
    exact = knn(base, 10, query=query)
    graph = knn(base, 10, query=query, exact_below=0, index="ivf")
    assert graph.index_kind == "IVF512,Flat,nprobe=16"
    assert _recall(graph.indices, exact.indices) >= 0.9
    again = knn(base, 10, query=query, exact_below=0, index="ivf")
    np.testing.assert_array_equal(again.indices, graph.indices)


def test_the_configured_default_is_ivf_with_at_most_1024_lists_and_a_settable_breadth():
    """The default above exact_below (docs/scaling.md: recall@10 0.9999 at 200k clustered 1,280-d vectors) is IVF
    with 4 sqrt(n) lists capped at 1,024 (the old default, HNSW, fails), and its nprobe can be widened."""
    from auditor.config import load_config
    from auditor.detectors.neighbors import NeighborIndex

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((200, 16))
    base = centres[rng.integers(0, 200, 70_000)] + 0.3 * rng.standard_normal((70_000, 16))
    built = NeighborIndex(base, 10, exact_below=0, index=load_config().detectors.index)
    assert built.kind == "IVF1024,Flat,nprobe=16"
    rows = np.arange(0, 70_000, 350)
    exact = NeighborIndex(base, 10).search(base[rows], 10, own_rows=rows).indices
    narrow = _recall(built.search(base[rows], 10, own_rows=rows).indices, exact)
    built.set_search(64)
    assert built.kind == "IVF1024,Flat,nprobe=64"
    assert _recall(built.search(base[rows], 10, own_rows=rows).indices, exact) >= max(narrow, 0.95)
    with pytest.raises(ValueError, match="exact index"):
        NeighborIndex(base[:100], 3).set_search(8)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the fallback of CPU-only faiss")
def test_use_gpu_falls_back_to_the_cpu_with_a_warning():
    base = np.random.default_rng(6).standard_normal((50, 4))
    with pytest.warns(UserWarning, match="no GPU"):
        graph = knn(base, 3, use_gpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert knn(base, 3).index_kind == graph.index_kind == "Flat"


def test_bad_arguments_are_rejected():
    base = np.ones((5, 3))
    with pytest.raises(ValueError, match="k must be"):
        knn(base, 0)
    with pytest.raises(ValueError, match="index must be"):
        knn(base, 2, index="lsh")
    with pytest.raises(ValueError, match="columns"):
        knn(base, 2, query=np.ones((2, 4)))
