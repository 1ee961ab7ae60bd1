"""Shard designs for shadow models: which training points each model sees, for pLOO (Feldman & Zhang 2020),
pLOO_improved (only the candidate points are sampled; everything else is in every shard) and exact leave-one-out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("ploo", "ploo_improved", "loo")
# Trades between model pairs are processed in blocks of about this many matrix cells, to bound temporary memory.
_TRADE_BLOCK_CELLS = 1 << 23


@dataclass(frozen=True, eq=False)
class ShardDesign:
    """Membership of every training point in every shadow model, plus which points are being scored.

    membership[m, i] is True when model m trains on point i. For LOO, groups[m] is -1 for the shared models
    trained on all data and otherwise the index into `candidates` of the point model m leaves out.
    fraction is the sampling ratio r (1.0 for LOO, where each model drops at most one point).
    """

    method: str
    membership: np.ndarray
    candidates: np.ndarray
    fraction: float
    seed: int
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.membership.ndim != 2 or self.membership.dtype != np.bool_:
            raise ValueError(f"membership must be a 2-D bool array, got {self.membership.dtype} "
                             f"of shape {self.membership.shape}")
        as_index_array(self.candidates, self.n_train, "candidates")
        if self.groups is not None and self.groups.shape != (self.n_models,):
            raise ValueError(f"groups must have shape ({self.n_models},), got {self.groups.shape}")

    @property
    def n_models(self) -> int:
        return self.membership.shape[0]

    @property
    def n_train(self) -> int:
        return self.membership.shape[1]

    def packed_rows(self) -> list[bytes]:
        """Each model's membership row as np.packbits bytes (n_train/8 bytes a model), for compact storage."""
        return [row.tobytes() for row in np.packbits(self.membership, axis=1)]


def unpack_rows(rows: list[bytes], n_train: int) -> np.ndarray:
    """Inverse of ShardDesign.packed_rows: a bool (len(rows), n_train) membership matrix."""
    width = (n_train + 7) // 8
    bad = [k for k, row in enumerate(rows) if len(row) != width]
    if bad:
        raise ValueError(f"rows {bad[:5]} are not {width} bytes long, as n_train={n_train} needs")
    packed = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), width)
    return np.unpackbits(packed, axis=1, count=n_train).astype(bool)


def as_index_array(values: np.ndarray | list[int], n: int, name: str) -> np.ndarray:
    """`values` as a 1-D int64 array of distinct indices into range(n); ValueError naming `name` otherwise."""
    idx = np.asarray(values)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of integer indices, got {idx.dtype} of shape {idx.shape}")
    idx = idx.astype(np.int64)
    out_of_range = idx[(idx < 0) | (idx >= n)]
    if out_of_range.size:
        raise ValueError(f"{name} index out of range [0, {n}): {out_of_range[:5].tolist()}")
    values_, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} contain duplicates: {values_[counts > 1][:5].tolist()}")
    return idx


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")


def _check_n_models(n_models: int) -> None:
    if n_models < 2:
        raise ValueError(f"n_models must be >= 2 (a point needs models with and without it), got {n_models}")


def models_per_point(n_models: int, fraction: float) -> int:
    """How many models each point joins: fraction * n_models rounded half up, kept in [1, n_models - 1]."""
    n_in = math.floor(fraction * n_models + 0.5)
    return min(max(n_in, 1), n_models - 1) if n_models >= 2 else n_in


def _trade(m: np.ndarray, ia: np.ndarray, ib: np.ndarray, rng: np.random.Generator) -> None:
    """Curveball trades between rows ia[k] and ib[k], in place: the points exactly one of the two models holds
    are pooled and re-dealt at random, keeping both row sums and every column sum."""
    a, b = m[ia], m[ib]
    both, diff = a & b, a ^ b
    k_a = (a & ~b).sum(axis=1)
    # Random keys made distinct by the column index in the low bits, so "the k_a smallest" is exact.
    shift = max(int(m.shape[1]).bit_length(), 1)
    keys = (rng.integers(0, 1 << (62 - shift), size=a.shape) << shift) | np.arange(m.shape[1])
    keys[~diff] = np.iinfo(np.int64).max
    kth = np.take_along_axis(np.sort(keys, axis=1), np.maximum(k_a - 1, 0)[:, None], axis=1)
    to_a = diff & (keys <= kth) & (k_a > 0)[:, None]
    m[ia] = both | to_a
    m[ib] = both | (diff & ~to_a)


def balanced_membership(n_models: int, n_points: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (n_models, n_points): every point in exactly models_per_point(n_models, fraction) models and model
    sizes within 1 of each other, otherwise random, so each model trains on a like-sized shard.

    Starts from a cyclic deal (points in random order fill models round-robin) and randomises it with global
    curveball trades (Carstens et al. 2018), which keep both margins; ceil(log2 n_models) + 4 rounds make pairwise
    co-membership match that of independent random subsets (the cyclic deal alone would put neighbouring points
    in the same or complementary models, confounding one point's effect with another's).
    """
    _check_fraction(fraction)
    if n_models < 1 or n_points < 0:
        raise ValueError(f"need n_models >= 1 and n_points >= 0, got n_models={n_models}, n_points={n_points}")
    n_in = models_per_point(n_models, fraction)
    slots = rng.permutation(n_points)[:, None] * n_in + np.arange(n_in)
    m = np.zeros((n_models, n_points), dtype=bool)
    m[rng.permutation(n_models)[slots % n_models], np.arange(n_points)[:, None]] = True
    pairs_per_block = max(_TRADE_BLOCK_CELLS // max(n_points, 1), 1)
    for _ in range(math.ceil(math.log2(n_models)) + 4 if n_points else 0):
        order = rng.permutation(n_models)
        ia, ib = order[0:n_models - 1:2], order[1::2]
        for start in range(0, len(ia), pairs_per_block):
            _trade(m, ia[start:start + pairs_per_block], ib[start:start + pairs_per_block], rng)
    return m


def ploo_design(n_train: int, n_models: int, fraction: float = 0.7, seed: int = 0) -> ShardDesign:
    """pLOO: every training point is a candidate and is sampled into a `fraction` of the models."""
    _check_n_models(n_models)
    rng = np.random.default_rng(seed)
    membership = balanced_membership(n_models, n_train, fraction, rng)
    return ShardDesign("ploo", membership, np.arange(n_train, dtype=np.int64), fraction, seed)


def ploo_improved_design(n_train: int, candidates: np.ndarray | list[int], n_models: int, fraction: float = 0.5,
                         seed: int = 0) -> ShardDesign:
    """pLOO_improved: only the candidates (e.g. lowest ApB) are sampled; every other point is in every model,
    so each shard drops far fewer points and is closer to leave-one-out."""
    _check_n_models(n_models)
    candidates = as_index_array(candidates, n_train, "candidates")
    rng = np.random.default_rng(seed)
    membership = np.ones((n_models, n_train), dtype=bool)
    membership[:, candidates] = balanced_membership(n_models, len(candidates), fraction, rng)
    return ShardDesign("ploo_improved", membership, candidates, fraction, seed)


def default_shard_count(n_candidates: int, per_candidate: float = 0.04, floor: int = 20) -> int:
    """ceil(per_candidate * n_candidates) shards (the 2,000 per 50,000 points of Feldman & Zhang), at least
    `floor` so that each point still has about floor * r models with it and floor * (1 - r) without."""
    if n_candidates < 0 or per_candidate <= 0:
        raise ValueError(f"need n_candidates >= 0 and per_candidate > 0, got {n_candidates}, {per_candidate}")
    # The tolerance keeps float noise (0.07 * 100 == 7.000000000000001) from adding a shard.
    return max(floor, math.ceil(per_candidate * n_candidates - 1e-9))


def loo_design(n_train: int, points: np.ndarray | list[int], n_models_per_arm: int, seed: int = 0) -> ShardDesign:
    """Exact leave-one-out for `points`: n_models_per_arm models on all data (groups -1, shared by every point),
    then for each point k, n_models_per_arm models on all data but points[k] (groups k)."""
    if n_models_per_arm < 1:
        raise ValueError(f"n_models_per_arm must be >= 1, got {n_models_per_arm}")
    points = as_index_array(points, n_train, "points")
    groups = np.repeat(np.arange(-1, len(points)), n_models_per_arm)
    membership = np.ones((len(groups), n_train), dtype=bool)
    without = groups >= 0
    membership[np.flatnonzero(without), points[groups[without]]] = False
    return ShardDesign("loo", membership, points, 1.0, seed, groups)
