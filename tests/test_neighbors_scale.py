"""The bounded-memory path of the kNN graph: an index built from streamed chunks and searched chunk by chunk gives the
same neighbours as the in-memory path (exact and IVF), and IVF keeps a good recall on clustered vectors."""

import numpy as np
import pytest

from auditor.detectors.neighbors import NeighborIndex, knn


def _chunks(vectors: np.ndarray, sizes: list[int]):
    """A callable yielding `vectors` in chunks of the given sizes (the last one takes the rest), each call anew."""
    bounds = np.cumsum([0, *sizes, len(vectors)])
    bounds = np.minimum(bounds, len(vectors))
    return lambda: (vectors[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]))


def _clustered(seed: int, n: int, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim))
    return centres[rng.integers(0, 60, n)] + 0.3 * rng.standard_normal((n, dim))


def _self_queries(vectors: np.ndarray, is_base: np.ndarray, size: int):
    """(query, own_rows) chunks of every row: own_rows is the row's base position, -1 for rows outside the base."""
    own = np.where(is_base, np.cumsum(is_base) - 1, -1)
    return ((vectors[i:i + size], own[i:i + size]) for i in range(0, len(vectors), size))


def test_chunked_exact_index_gives_the_in_memory_neighbours():
    data = _clustered(0, 3000)
    is_base = np.random.default_rng(1).random(3000) < 0.8
    base, held_out = data[is_base], data[~is_base]
    chunked = NeighborIndex.from_chunks(_chunks(base, [500, 1, 900]), base.shape, 6)
    assert chunked.base is None and chunked.exact and chunked.kind == "Flat"
    graph = chunked.search_chunks(_self_queries(data, is_base, 700), 6)
    self_graph, to_base = knn(base, 6), knn(base, 6, query=held_out)
    np.testing.assert_array_equal(graph.indices[is_base], self_graph.indices)
    np.testing.assert_array_equal(graph.indices[~is_base], to_base.indices)
    np.testing.assert_allclose(graph.similarities[is_base], self_graph.similarities, atol=1e-6)
    np.testing.assert_allclose(graph.similarities[~is_base], to_base.similarities, atol=1e-6)


def test_chunked_ivf_index_gives_the_in_memory_neighbours_with_good_recall():
    base = _clustered(2, 20_000)
    query = _clustered(3, 500)
    chunked = NeighborIndex.from_chunks(_chunks(base, [4096] * 4), base.shape, 10, exact_below=0, index="ivf")
    graph = chunked.search_chunks(((query[i:i + 128], None) for i in range(0, 500, 128)), 10)
    in_memory = knn(base, 10, query=query, exact_below=0, index="ivf")
    assert graph.index_kind == in_memory.index_kind == "IVF512,Flat,nprobe=16" and not graph.exact
    np.testing.assert_array_equal(graph.indices, in_memory.indices)
    exact = knn(base, 10, query=query)
    recall = (graph.indices[:, :, None] == exact.indices[:, None, :]).any(axis=2).mean()
    assert recall >= 0.9


def test_chunks_that_do_not_add_up_to_the_shape_are_rejected():
    base = _clustered(4, 100)
    with pytest.raises(ValueError, match="held 100 rows, not the 120"):
        NeighborIndex.from_chunks(_chunks(base, [40]), (120, base.shape[1]), 3)
    with pytest.raises(ValueError, match="columns"):
        NeighborIndex.from_chunks(_chunks(base, [40]), base.shape, 3).search(np.ones((2, 5)), 3)

