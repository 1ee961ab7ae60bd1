"""Edit-robust copy matching: finds a training image behind a test image (or another training image) after shifts,
crops, flips, small rotations, contrast, blur, noise and re-encoding, for the `pixel_leak` and `pixel_duplicate` pairs.

Each image is put in a canonical frame by its moments (Hu's normalisation): the foreground (pixels far from the
border's median grey, above a noise floor) is moved to the centre by its centre of mass and scaled to a fixed radius
of gyration, then lightly blurred and resampled to SIZE x SIZE. A shift, or a crop that keeps the object, moves the
centre of mass and changes the radius exactly as it moves and scales the object, so both drop out. A query is also
looked at mirrored and rotated by +-ROTATION degrees (VIEWS), against the base's frames as they are, blurred (a
blurred copy meets its source blurred alike) and stretched (each axis at its own radius: an uneven crop). A
candidate's frame similarity is the best cosine of the mean-centred frames over these MATCHES.

These frames, and a shift-invariant descriptor (the magnitude of the image's low-frequency spectrum, seen as it is
and mirrored), only propose candidates: where a shift or crop cut content off at the border, or the image is not an
object on a blank background, the frames no longer line up. Each query's candidates (CANDIDATES from the frames,
SPECTRUM_CANDIDATES from the spectrum) are verified by alignment on their overlap (copies_verify.py), and that
correlation is the pair's similarity; its match says how the copy lines up with its source.

Whether a pair is a copy is decided on its copy score (copy_scores: how much closer than the query's
REFERENCE_RANK-th verified neighbour). Synthetic copies of the user's own images give the null's tail and each edit's
recall (calibrate_copies); each query is then one test on its best copy score, and Benjamini-Hochberg over all the
queries sets the flag cut for a false discovery rate (discovery_threshold): thousands of images are tested at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from auditor.detectors import copies_verify
from auditor.detectors.edits import CALIBRATION_EDITS, edit_images
from auditor.detectors.thresholds import IDENTICAL_GAP, Threshold, exponential_tail_cut
from auditor.detectors.neighbors import KnnGraph, NeighborIndex
from auditor.intervals import jeffreys_interval
from auditor.multiple_testing import benjamini_hochberg, bh_adjusted

SIZE = 20
ROTATION = 9.0
# (mirrored, degrees) of each query view; the base is always seen in view 0.
VIEWS: tuple[tuple[bool, float], ...] = tuple((m, a) for m in (False, True) for a in (0.0, -ROTATION, ROTATION))
# Extra blur of the base's frames (pixels of a 28-px side): a blurred copy matches its source blurred alike.
# Each base index: (extra blur, stretched). Stretched frames scale each axis to its own radius, so a crop that cut
# the sides unevenly (a stretch) drops out too; they are searched with the unrotated views only.
BASES: tuple[tuple[float, bool], ...] = ((0.0, False), (1.0, False), (0.0, True))
# Every (base, query view) pair searched, in the order of a match's index.
MATCHES: tuple[tuple[int, int], ...] = tuple((b, v) for b, (_, stretched) in enumerate(BASES)
                                             for v in range(len(VIEWS)) if not (stretched and VIEWS[v][1]))
# Candidates per query from the frames and from the spectrum (each view), verified together.
CANDIDATES = 8
SPECTRUM_CANDIDATES = 4
# Extra blur (px) of the base a candidate is also correlated with, unaligned: a blurred copy meets its source so.
BLUR = 1.0
# The spectrum descriptor: an image blurred by _SPECTRUM_BLUR px, |FFT| on a _SPECTRUM_GRID grid, the
# (2 _SPECTRUM_KEEP + 1)^2 lowest frequencies, square-rooted.
_SPECTRUM_BLUR = 0.5
_SPECTRUM_GRID = 32
_SPECTRUM_KEEP = 8
# Threshold methods whose cut is on the copy score, set by Benjamini-Hochberg (discovery_threshold): on the copy
# matcher's verified graph, and on an embedding kNN graph (calibrate_neighbours).
DISCOVERY_METHODS = ("synthetic_copies", "nn_fdr")
# The neighbour (0-based rank) whose distance a copy score is relative to: below it, up to this many copies of one
# image can sit without raising the reference.
REFERENCE_RANK = 5
# The foreground's radius of gyration in the canonical frame, as a fraction of SIZE.
_RADIUS = 0.2
# Foreground: deviation from the border grey above this fraction of the image's 99th-percentile deviation.
_FLOOR = 0.25
_BLUR = 0.5
_MOMENT_BLUR = 1.0
# Images framed at a time (bounds the temporaries: ~30 kB per 28 x 28 image).
_BATCH = 4096


def match_name(match: int) -> str:
    """How a verified copy lines up with its source: 'aligned', 'mirrored', 'rotated +7, shifted (1, -2)'."""
    return copies_verify.warp_name(match)


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float32: the channel mean of (N, C, H, W) or (N, H, W) images."""
    images = np.asarray(images, dtype=np.float32)
    return images.mean(axis=1) if images.ndim == 4 else images


def frames(images: np.ndarray, views: tuple[int, ...] = (0,), blur: float = 0.0, stretched: bool = False
           ) -> np.ndarray:
    """(len(views), N, SIZE * SIZE) float32 mean-centred canonical frames of the images (module docstring), blurred
    by `blur` more (in pixels of a 28-px side), each axis scaled to its own radius if `stretched`."""
    grey = _grey(images)
    out = np.zeros((len(views), len(grey), SIZE * SIZE), dtype=np.float32)
    for start in range(0, len(grey), _BATCH):
        out[:, start:start + _BATCH] = _frame_batch(grey[start:start + _BATCH], views, blur, stretched)
    return out


def _frame_batch(grey: np.ndarray, views: tuple[int, ...], blur: float, stretched: bool) -> np.ndarray:
    """frames() of one batch of (N, H, W) grey images, every step over the whole batch at once."""
    n, h, w = grey.shape
    side = max(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.median(np.concatenate([grey[:, 0], grey[:, -1], grey[:, :, 0], grey[:, :, -1]], axis=1),
                           axis=1).astype(np.float32)
    moment_sigma = _MOMENT_BLUR * side / 28
    dev = np.abs(ndimage.gaussian_filter(grey, (0, moment_sigma, moment_sigma), mode="nearest")
                 - background[:, None, None])
    floor = _FLOOR * np.quantile(dev.reshape(n, -1), 0.99, axis=1)
    weight = np.maximum(dev - floor[:, None, None].astype(np.float32), 0)
    total = weight.sum(axis=(1, 2))
    found = total > 0
    safe = np.where(found, total, 1)
    cy = np.where(found, (weight * yy).sum(axis=(1, 2)) / safe, (h - 1) / 2)
    cx = np.where(found, (weight * xx).sum(axis=(1, 2)) / safe, (w - 1) / 2)
    radii = np.sqrt(2 * np.stack([(weight * (yy - cy[:, None, None]) ** 2).sum(axis=(1, 2)),
                                  (weight * (xx - cx[:, None, None]) ** 2).sum(axis=(1, 2))], axis=1) / safe[:, None])
    radii = radii if stretched else np.repeat(np.sqrt(np.mean(radii ** 2, axis=1, keepdims=True)), 2, axis=1)
    radii = np.where(found[:, None], radii, _RADIUS * side)
    scale = np.clip(radii / (_RADIUS * SIZE), 0.25 * side / SIZE, 2 * side / SIZE)
    sigma = np.hypot(_BLUR * side / SIZE, blur * side / 28)
    # Background subtracted (and outside the image: 0), which the mean-centring removes again.
    smooth = ndimage.gaussian_filter(grey, (0, sigma, sigma), mode="nearest") - background[:, None, None]
    half = (SIZE - 1) / 2
    grid = np.stack(np.mgrid[0:SIZE, 0:SIZE].reshape(2, -1)).astype(np.float64) - half
    out = np.empty((len(views), n, SIZE * SIZE), dtype=np.float32)
    for v, view in enumerate(views):
        mirrored, angle = VIEWS[view]
        t = np.deg2rad(angle)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        # matrix_i = rot @ diag(scale_i (x mirrored)); input = matrix_i @ (output - half) + centre_i
        diag = scale * np.array([1.0, -1.0 if mirrored else 1.0])
        coords = (rot @ (diag[:, :, None] * grid[None]) + np.stack([cy, cx], axis=1)[:, :, None])
        image = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None], (n, SIZE * SIZE))
        frame = ndimage.map_coordinates(smooth, [image, coords[:, 0], coords[:, 1]], order=1, mode="constant",
                                        cval=0.0)
        out[v] = frame - frame.mean(axis=1, keepdims=True)
    return out


def spectrum(images: np.ndarray, mirrored: bool = False) -> np.ndarray:
    """(N, (2 _SPECTRUM_KEEP + 1)^2) float32 shift-invariant descriptors: the square-rooted magnitude of the lowest
    frequencies of each grey image (mean removed), mirrored first if asked."""
    grey = _grey(images)
    grey = grey[..., ::-1] if mirrored else grey
    grey = ndimage.gaussian_filter(grey, (0, _SPECTRUM_BLUR, _SPECTRUM_BLUR), mode="nearest")
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    grid, keep = _SPECTRUM_GRID, _SPECTRUM_KEEP
    magnitude = np.fft.fftshift(np.abs(np.fft.fft2(grey, s=(grid, grid))), axes=(1, 2))
    low = magnitude[:, grid // 2 - keep:grid // 2 + keep + 1, grid // 2 - keep:grid // 2 + keep + 1]
    return np.sqrt(low).reshape(len(grey), -1).astype(np.float32)


def _merge(parts: list[KnnGraph], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best distinct base rows per query over all views: indices, similarities and the winning view."""
    n = len(parts[0].indices)
    frame = pd.DataFrame({"q": np.concatenate([np.repeat(np.arange(n), p.indices.shape[1]) for p in parts]),
                          "b": np.concatenate([p.indices.ravel() for p in parts]),
                          "s": np.concatenate([p.similarities.ravel() for p in parts]),
                          "v": np.concatenate([np.full(p.indices.size, v) for v, p in enumerate(parts)])})
    frame = frame[frame["b"].to_numpy() >= 0]
    frame = (frame.sort_values(["q", "s", "b", "v"], ascending=[True, False, True, True], kind="stable")
             .drop_duplicates(["q", "b"]))
    rank = frame.groupby("q").cumcount().to_numpy()
    frame, rank = frame[rank < k], rank[rank < k]
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    views = np.full((n, k), -1, dtype=np.int8)
    q = frame["q"].to_numpy()
    indices[q, rank], sims[q, rank], views[q, rank] = frame["b"], frame["s"], frame["v"]
    return indices, sims, views


class CopyIndex:
    """A base set of images: the canonical frames (one index per BASES entry) and the spectra that propose
    candidates, and the images as copies_verify compares them."""

    def __init__(self, base: np.ndarray, k: int, *, exact_below: int = 200_000, index: str = "ivf") -> None:
        self.shape = np.shape(base)[1:]
        self.indices = [NeighborIndex(frames(base, blur=b, stretched=st)[0], k, exact_below=exact_below,
                                      index=index) for b, st in BASES]
        self.spectra = NeighborIndex(spectrum(base), k, exact_below=exact_below, index=index)
        self.prepared = copies_verify.prepare(base)
        self.blurred = copies_verify.prepare(base, blur=BLUR)

    def search(self, query: np.ndarray, k: int, *, own_rows: np.ndarray | None = None
               ) -> tuple[KnnGraph, np.ndarray]:
        """The k base images that best verify as each query's source, best first, with the verified correlation as
        similarity and the match (match_name) per neighbour; own_rows[q] (a base row) is left out of query q's (the
        self-graph: the query is the base)."""
        queries = np.asarray(query)
        if queries.shape[1:] != self.shape:
            raise ValueError(f"query images {queries.shape[1:]} must have the base images' shape {self.shape}")
        own = None if own_rows is None else np.asarray(own_rows)
        first = self.indices[0]
        room = len(first.base) - (0 if own is None else 1)
        views = {st: frames(queries, tuple(range(len(VIEWS))), stretched=st) for st in {st for _, st in BASES}}
        parts = [self.indices[b].search(views[BASES[b][1]][v], min(CANDIDATES, room), own_rows=own)
                 for b, v in MATCHES]
        framed, _, _ = _merge(parts, min(CANDIDATES, room))
        spectral, _, _ = _merge([self.spectra.search(spectrum(queries, m), min(SPECTRUM_CANDIDATES, room),
                                                     own_rows=own) for m in (False, True)],
                                min(SPECTRUM_CANDIDATES, room))
        indices, sims, matches = _verified(np.concatenate([framed, spectral], axis=1), copies_verify.prepare(queries),
                                           (self.prepared, self.blurred), min(k, room))
        return KnnGraph(indices=indices, similarities=sims, exact=first.exact,
                        index_kind=f"{first.kind},copy candidates={CANDIDATES}+{SPECTRUM_CANDIDATES},verified"), matches


def _verified(candidates: np.ndarray, queries, base: tuple, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's distinct candidates (-1: none) verified against it (copies_verify.verify on the base as it is,
    correlate on the base blurred), the k best kept: base rows, verified correlations (NaN where none), matches."""
    sharp, blurred = base
    n, width = candidates.shape
    ordered = np.sort(candidates, axis=1)
    fresh = np.ones_like(ordered, dtype=bool)
    fresh[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    score = np.full((n, width), -np.inf)
    match = np.zeros((n, width), dtype=np.int64)
    for start in range(0, n, _BATCH):  # the pairs' images are gathered a batch of queries at a time
        rows, cols = np.nonzero(fresh[start:start + _BATCH] & (ordered[start:start + _BATCH] >= 0))
        rows = rows + start
        scores, matches = copies_verify.verify(queries, sharp, rows, ordered[rows, cols])
        soft = copies_verify.correlate(queries[rows], blurred[ordered[rows, cols]])
        matches[soft > scores] = copies_verify.BLURRED
        score[rows, cols], match[rows, cols] = torch.maximum(scores, soft).numpy(), matches.numpy()
    best = np.argsort(-score, axis=1, kind="stable")[:, :k]
    indices = np.take_along_axis(ordered, best, axis=1)
    sims = np.take_along_axis(score, best, axis=1)
    found = np.isfinite(sims)
    return (np.where(found, indices, -1), np.where(found, sims, np.nan).astype(np.float32),
            np.take_along_axis(match, best, axis=1))


def copy_knn(base: np.ndarray, k: int, *, query: np.ndarray | None = None, exact_below: int = 200_000,
             index: str = "ivf") -> tuple[KnnGraph, np.ndarray]:
    """The k best copy matches per query image (query=None: the base against itself, own rows left out) and the
    match (MATCHES) of each."""
    built = CopyIndex(base, k, exact_below=exact_below, index=index)
    if query is None:
        return built.search(base, k, own_rows=np.arange(len(base)))
    return built.search(query, k)


def copy_scores(graph: KnnGraph) -> np.ndarray:
    """Each edge's copy score, log((1 - s_ref) / (1 - s)): how many times closer (in cosine distance) the neighbour
    is than the query's REFERENCE_RANK-th neighbour, so a look-alike in a dense class (a 1 among 1s) needs more."""
    sims = np.asarray(graph.similarities, dtype=np.float64)
    ref = sims[:, min(REFERENCE_RANK, sims.shape[1] - 1)]
    ref_gap = np.where(np.isfinite(ref), np.maximum(1.0 - ref, IDENTICAL_GAP), 1.0)
    return np.log(ref_gap[:, None] / np.maximum(1.0 - sims, IDENTICAL_GAP))


def cosine_cuts(graph: KnnGraph, score: float) -> np.ndarray:
    """Per query, the cosine at which an edge reaches copy score `score` (compare with its similarity)."""
    ref = np.asarray(graph.similarities, dtype=np.float64)[:, min(REFERENCE_RANK, graph.similarities.shape[1] - 1)]
    ref_gap = np.where(np.isfinite(ref), np.maximum(1.0 - ref, IDENTICAL_GAP), 1.0)
    return 1.0 - ref_gap * np.exp(-score)


def calibrate_copies(index: CopyIndex, base: np.ndarray, *, sample: int = 1000, alpha: float = 0.005,
                     seed: int = 0, edits: tuple[str, ...] = CALIBRATION_EDITS) -> Threshold:
    """The copy-score cut for a false-positive rate alpha per image, with the recall it buys on synthetic copies of
    the user's own images: `sample` base images are edited (`edits` in turn) and searched against the base (each
    copy's score against its source is kept in detail, so discovery_threshold can give the recall at its own cut).

    The null is the unedited images' nearest-neighbour score (their nearest non-copy). Its upper tail is modelled as
    exponential, scale (q75 - q50) / ln 2, and the cut is q50 + scale * ln(0.5 / alpha): read from the median and
    upper quartile, it is not raised by real copies in the data (up to ~20 % of the images), which an empirical
    (1 - alpha) quantile would sit on. Detail records the sample's own rate at the cut (real copies included, so an
    upper bound) and each edit's recall, with 95 % Jeffreys intervals."""
    if not 0 < alpha < 1 or sample < 2:
        raise ValueError(f"need 0 < alpha < 1 and sample >= 2, got alpha={alpha}, sample={sample}")
    base = np.asarray(base)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(base), min(sample, len(base)), replace=False))
    names = np.asarray(edits)[rng.permutation(len(rows)) % len(edits)]
    k = max(2 * REFERENCE_RANK, 2)
    graph, _ = index.search(edit_images(base[rows], list(names), seed), k)
    source = graph.indices == rows[:, None]
    copy_score = np.where(source, copy_scores(graph), -np.inf).max(axis=1)
    own, _ = index.search(base[rows], k, own_rows=rows)
    null = copy_scores(own)[:, 0]
    null = null[np.isfinite(null)]
    median, q75, scale, value = exponential_tail_cut(null, alpha)
    false_pos = int(np.sum(null >= value))
    fp_low, fp_high = jeffreys_interval(false_pos, len(null))
    edit_scores = {name: np.sort(copy_score[names == name]) for name in edits}
    return Threshold(value=value, method="synthetic_copies", detail={
        "alpha": alpha, "sample": len(rows), "seed": seed, "edits": list(edits), "reference_rank": REFERENCE_RANK,
        "candidates": [CANDIDATES, SPECTRUM_CANDIDATES],
        "verification": {"warps": len(copies_verify.WARPS), "shift_fraction": copies_verify.SHIFT_FRACTION,
                         "min_overlap": copies_verify.MIN_OVERLAP}, "null_median": float(median),
        "null_q75": float(q75), "tail_scale": scale, "false_positives": false_pos,
        "false_positive_rate": false_pos / len(null), "false_positive_interval": [float(fp_low), float(fp_high)],
        "recall": _recall(edit_scores, value),
        "edit_scores": {n: np.round(np.maximum(s, np.log(IDENTICAL_GAP)), 4).tolist() for n, s in edit_scores.items()},
        "source_in_top_k": float(np.isfinite(copy_score).mean()),
        "copy_score_quantiles": np.quantile(np.maximum(copy_score, np.log(IDENTICAL_GAP)),
                                            [0.05, 0.25, 0.5]).tolist()})


def _recall(edit_scores: dict[str, np.ndarray], cut: float) -> dict[str, dict]:
    """Per edit, how many synthetic copies score at or above `cut` against their source, with a 95 % Jeffreys
    interval."""
    recall = {}
    for name, scores in edit_scores.items():
        scores = np.asarray(scores, dtype=np.float64)
        hits = int(np.sum(scores >= cut))
        low, high = jeffreys_interval(hits, len(scores))
        recall[name] = {"n": len(scores), "found": hits, "recall": hits / max(len(scores), 1),
                        "interval": [float(low), float(high)]}
    return recall


def copy_p_values(scores: np.ndarray, calibrated: Threshold) -> np.ndarray:
    """The chance that an image without a copy has a best copy score at least this large: the calibration null's
    exponential tail, 0.5 exp(-(s - median) / scale), capped at 1 (NaN stays NaN)."""
    detail = calibrated.detail
    scores = np.asarray(scores, dtype=np.float64)
    return np.minimum(0.5 * np.exp(-(scores - detail["null_median"]) / detail["tail_scale"]), 1.0)


def best_copy_scores(graph: KnnGraph) -> np.ndarray:
    """Each query's test statistic: the copy score of its best verified neighbour (NaN where it has none)."""
    return copy_scores(graph)[:, 0]


def discovery_threshold(graph: KnnGraph, calibrated: Threshold, fdr: float) -> Threshold:
    """The flag cut for the graph's queries: each query is one test on its best copy score (p from copy_p_values on
    the `calibrated` null), and the cut is the lowest score Benjamini-Hochberg discovers at false discovery rate
    `fdr` (with none discovered, the score the first discovery would need). Detail adds the tests, the discoveries,
    the p-value cut and, for a calibrate_copies null, the per-image cut and its recall (`alpha_cut`,
    `recall_at_alpha`) and each edit's recall at this cut."""
    if not 0 < fdr < 1:
        raise ValueError(f"need 0 < fdr < 1 (detectors.copy_fdr), got {fdr}")
    best = best_copy_scores(graph)
    best = best[np.isfinite(best)]
    p = copy_p_values(best, calibrated)
    found = benjamini_hochberg(p, len(best), fdr)
    p_cut = fdr * max(int(found.sum()), 1) / max(len(best), 1)
    detail = calibrated.detail
    value = (float(best[found].min()) if found.any()
             else detail["null_median"] + detail["tail_scale"] * float(np.log(0.5 / p_cut)))
    recall = ({"alpha_cut": calibrated.value, "recall_at_alpha": detail["recall"],
               "recall": _recall(detail["edit_scores"], value)} if "edit_scores" in detail else {})
    return Threshold(value=value, method=calibrated.method, detail={
        **detail, "fdr": fdr, "tested": len(best), "discoveries": int(found.sum()), "p_cut": p_cut,
        "expected_false": round(fdr * int(found.sum()), 2), **recall})


def calibrate_neighbours(graph: KnnGraph, fdr: float) -> Threshold:
    """The flag cut on a kNN graph of embeddings (method 'nn_fdr'): discovery_threshold with the null read from the
    queries' own best copy scores (median and upper quartile of those not identical to their neighbour, so real
    copies up to ~20 % of the queries do not raise it)."""
    best = best_copy_scores(graph)
    own = np.asarray(graph.similarities, dtype=np.float64)[:, 0]
    fitted = best[np.isfinite(best) & (1.0 - own >= IDENTICAL_GAP)]
    if len(fitted) < 2:
        raise ValueError(f"need at least 2 queries with a non-identical nearest neighbour, got {len(fitted)}")
    median, q75, scale, _ = exponential_tail_cut(fitted, 0.5)
    null = Threshold(np.nan, "nn_fdr", {"null_median": median, "null_q75": q75, "tail_scale": scale,
                                        "reference_rank": REFERENCE_RANK, "n_identical": int(np.sum(1.0 - own
                                                                                                   < IDENTICAL_GAP))})
    return discovery_threshold(graph, null, fdr)


def query_q_values(graph: KnnGraph, calibrated: Threshold) -> np.ndarray:
    """Each query's Benjamini-Hochberg adjusted p-value (q-value) over every query tested (NaN where untested)."""
    best = best_copy_scores(graph)
    tested = np.isfinite(best)
    out = np.full(len(best), np.nan)
    out[tested] = bh_adjusted(copy_p_values(best[tested], calibrated), int(tested.sum()))
    return out
