"""Verification of copy candidates by alignment on the overlap: for a (query, candidate) pair, the candidate is warped
by every transform of a small grid (WARPS: crop-and-resize zooms per axis of ZOOMS, rotations of +-ANGLES degrees,
horizontal flip) and shifted by up to SHIFT_FRACTION of the side, and the pair's score is the best normalised
correlation over the pixels the warped candidate still covers (what a shift or crop kept), where that overlap is at
least MIN_OVERLAP of the image. A copy matches its source almost exactly there, whatever was cut off at the border
and whatever the content (no foreground, centring or moments assumed); two different images do not.

Images are compared grey (the channel mean) at their own side, or area-resized to MAX_SIDE when larger (side()):
an integer shift of the source then stays an exact shift. Contrast and brightness cancel in the correlation. The
grid of one batch of pairs runs as tensor operations (torch, CPU or GPU): each distinct candidate is warped once,
each query placed at every shift once, and the products of a query with all its candidates' warps at every shift are
one matrix product; the window sums are matrix products too.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

MAX_SIDE = 32
# Largest shift searched, as a fraction of the side (4 px of 28).
SHIFT_FRACTION = 0.15
ANGLES = (7.0, 11.0)
ZOOMS = (1.0, 1.14, 1.27, 1.4)
# (mirrored, degrees, zoom y, zoom x) of each warp: every zoom pair and rotation as it is; mirrored, the even
# zooms and the rotations (a flip is rarely combined with an uneven crop).
WARPS: tuple[tuple[bool, float, float, float], ...] = (
    tuple((False, 0.0, zy, zx) for zy in ZOOMS for zx in ZOOMS)
    + tuple((True, 0.0, z, z) for z in ZOOMS)
    + tuple((m, s * a, 1.0, 1.0) for m in (False, True) for a in ANGLES for s in (-1, 1)))
# Smallest overlap (fraction of the image's pixels) a score may come from.
MIN_OVERLAP = 0.6
# Pixels at the candidate's edge left out of the overlap: an edit's resampling and the pre-blur blend them with a
# shift's or rotation's fill.
_MARGIN = 1.5
# Slots (queries x their most candidates) verified per tensor batch, x16 on a GPU. Bounds memory: at side 28 ~0.6 MB
# per slot (a candidate's warps, their squares and sums) and 0.4 MB per query (placed at every shift): ~70 MB at most.
_PAIRS = 64
# Both sides of a pair are blurred by this sigma (px) first: a blurred copy then stays close to its source, and
# JPEG blocks and noise weigh less.
_PREBLUR = 0.7
# Refinement of each query's REFINE best pairs (by their coarse score): zoom per axis and a sub-pixel offset per axis
# around the pair's best warp and shift, searched coarse to fine (_SWEEPS), to within _ZOOM_STEP and _OFFSET_STEP px.
# A crop-and-resize falls between the coarse zooms and off the integer shifts (an uneven crop moves the centre by
# half a pixel): refined, its 1 - r against its source drops ~10x (docs/benchmarks-detectors.md).
REFINE = 2
_ZOOM_STEP = 1.015
_OFFSET_STEP = 0.125
# Each sweep moves the axes it names ((zoom y, zoom x, offset y, offset x) = 0-3) by -step, 0 or +step units at once,
# and keeps the best: y and x apart, then the same a third as far.
_SWEEPS: tuple[tuple[int, tuple[int, ...]], ...] = ((3, (0, 2)), (3, (1, 3)), (1, (0, 2)), (1, (1, 3)))
# Units either way a refinement reaches (4: zooms x 1.015^-4..4, offsets -0.5..0.5 px).
_REACH = 4
# (zoom factor y, zoom factor x, offset y px, offset x px) of each refinement of a coarse warp and shift.
REFINEMENTS: tuple[tuple[float, float, float, float], ...] = tuple(
    (_ZOOM_STEP ** ky, _ZOOM_STEP ** kx, jy * _OFFSET_STEP, jx * _OFFSET_STEP)
    for ky in range(-_REACH, _REACH + 1) for kx in range(-_REACH, _REACH + 1)
    for jy in range(-_REACH, _REACH + 1) for jx in range(-_REACH, _REACH + 1))
# Refined pairs per tensor batch, x16 on a GPU: ~0.8 MB per pair at side 28 (81 samplings, their grids and masks).
_REFINED_PAIRS = 128
# A match packs (warp, dy, dx) as warp * _SLOT^2 + (dy + _SLOT // 2) * _SLOT + dx + _SLOT // 2, plus
# (1 + its index in REFINEMENTS) * _REFINED when a refinement of that warp and shift scored better.
_SLOT = 64
_REFINED = (len(WARPS) + 1) * _SLOT * _SLOT
# The match of a copy that correlate() found against its blurred source.
BLURRED = len(WARPS) * _SLOT * _SLOT + (_SLOT // 2) * _SLOT + _SLOT // 2


def side(shape: tuple[int, ...]) -> int:
    """The side images of this shape ((C,) H, W) are compared at."""
    return min(max(shape[-2:]), MAX_SIDE)


def max_shift(side_px: int) -> int:
    """The largest shift searched at a side, in pixels."""
    return max(1, round(SHIFT_FRACTION * side_px))


def alignment(match: int) -> tuple[bool, float, float, float, float, float]:
    """The warp and shift a (non-BLURRED) match stands for: (mirrored, degrees, zoom y, zoom x, dy, dx), the copy's
    content moved by (dy, dx) px from its source; refined matches with their refined zooms and sub-pixel shift."""
    fine, coarse = divmod(int(match), _REFINED)
    warp, rest = divmod(coarse, _SLOT * _SLOT)
    mirrored, angle, zy, zx = WARPS[warp]
    dy, dx = divmod(rest, _SLOT)
    fy, fx, oy, ox = REFINEMENTS[fine - 1] if fine else (1.0, 1.0, 0.0, 0.0)
    return mirrored, angle, zy * fy, zx * fx, dy - _SLOT // 2 + oy, dx - _SLOT // 2 + ox


def warp_name(match: int) -> str:
    """How a verified copy lines up with its source: 'mirrored, rotated +7, zoomed 1.27 x 1.14, shifted (1, -2)',
    refined: 'zoomed 1.21 x 1.08, shifted (1.25, -0.5)' (zooms to 2 decimals); BLURRED: 'blurred' (it matched its
    source blurred, correlate())."""
    if int(match) == BLURRED:
        return "blurred"
    mirrored, angle, zy, zx, dy, dx = alignment(match)
    zy, zx = round(zy, 2), round(zx, 2)
    parts = ["mirrored"] if mirrored else []
    parts += [f"rotated {angle:+g}"] if angle else []
    parts += [f"zoomed {zy:g} x {zx:g}"] if (zy, zx) != (1.0, 1.0) else []
    parts += [f"shifted ({dy:g}, {dx:g})"] if (dy, dx) != (0, 0) else []
    return ", ".join(parts) or "aligned"


def prepare(images: np.ndarray, blur: float = 0.0) -> torch.Tensor:
    """(N, side^2) float16 grey images at side() (area-resized when larger), blurred by _PREBLUR (and `blur` px
    more), each standardised: what verify() compares (half precision halves what a large base keeps resident)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    grey = torch.from_numpy(images.mean(axis=1) if images.ndim == 4 else images)
    small = F.adaptive_avg_pool2d(grey[:, None], side(images.shape))
    kernel = _gaussian(float(np.hypot(_PREBLUR, blur)))
    radius = kernel.shape[-1] // 2
    small = F.conv2d(F.pad(small, (radius,) * 4, mode="replicate"), kernel).reshape(len(grey), -1)
    small = small - small.mean(dim=1, keepdim=True)
    return (small / small.std(dim=1, keepdim=True).clamp(min=1e-6)).half()


def correlate(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per pair (row i of both, prepare()d), the correlation as they lie: no warp, no shift (a blurred copy against
    its source blurred alike)."""
    return ((queries.float() * candidates.float()).sum(dim=1) / (queries.shape[1] - 1)).clamp(max=1.0)


def _gaussian(sigma: float) -> torch.Tensor:
    """(1, 1, K, K) normalised Gaussian kernel of `sigma` px, K = 2 ceil(2.5 sigma) + 1."""
    x = torch.arange(-int(np.ceil(2.5 * sigma)), int(np.ceil(2.5 * sigma)) + 1, dtype=torch.float32)
    g = torch.exp(-x * x / (2 * sigma ** 2))
    return (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]


def _linear(mirrored: bool, angle: float, zy: float, zx: float) -> np.ndarray:
    """(2, 2) map, (x, y) order as affine_grid, from the copy's pixel offsets (from the centre) to its source's."""
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return rot @ np.diag([(-1.0 if mirrored else 1.0) / zx, 1.0 / zy])


def _thetas(side_px: int, shift: int, device: torch.device) -> torch.Tensor:
    """(len(WARPS), 2, 3) affine_grid matrices: canvas (side + 2 shift wide) to candidate coordinates."""
    out = [np.concatenate([_linear(*w) * (side_px + 2 * shift) / side_px, np.zeros((2, 1))], axis=1) for w in WARPS]
    return torch.tensor(np.stack(out), dtype=torch.float32, device=device)


def verify(queries: torch.Tensor, candidates: torch.Tensor, query_rows: np.ndarray | None = None,
           candidate_rows: np.ndarray | None = None, refine: int = REFINE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair (query_rows[i], candidate_rows[i]) of prepare()d images (default: row i of both), the best
    correlation over the overlap of the query with the candidate under every warp and shift, each query's `refine`
    best pairs refined (REFINEMENTS), and which (a match for warp_name); -1 where no alignment kept MIN_OVERLAP. A
    query's pairs are worked on together (its shifted copies made once). Runs on the GPU when torch sees one (in
    larger batches), results on the CPU."""
    q_rows = np.arange(len(queries)) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    c_rows = np.arange(len(candidates)) if candidate_rows is None else np.asarray(candidate_rows, dtype=np.int64)
    if len(q_rows) != len(c_rows):
        raise ValueError(f"need one candidate per query: got {len(q_rows)} query rows, {len(c_rows)} candidates")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    best = torch.full((len(q_rows),), -1.0)
    which = torch.zeros(len(q_rows), dtype=torch.int64)
    for pairs, slots, width in _batches(q_rows, _PAIRS * (16 if device.type == "cuda" else 1)):
        # each query's candidates side by side (width slots), unused slots repeat its first (results unread)
        grid = np.repeat(c_rows[pairs[slots[:, 0]]][:, None], width, axis=1)
        filled = slots >= 0
        grid[filled] = c_rows[pairs[slots[filled]]]
        distinct, slot_of = np.unique(grid.reshape(-1), return_inverse=True)
        score, match = _verify_batch(queries[q_rows[pairs[slots[:, 0]]]].to(device).float(),
                                     candidates[distinct].to(device).float(),
                                     torch.from_numpy(slot_of.reshape(grid.shape)).to(device))
        done = torch.from_numpy(filled)
        best[pairs[slots[filled]]], which[pairs[slots[filled]]] = score.cpu()[done], match.cpu()[done]
    chosen = _leading(q_rows, best.numpy(), refine)
    for start in range(0, len(chosen), _REFINED_PAIRS * (16 if device.type == "cuda" else 1)):
        rows = chosen[start:start + _REFINED_PAIRS * (16 if device.type == "cuda" else 1)]
        score, fine = _refine(queries[q_rows[rows]].to(device).float(), candidates[c_rows[rows]].to(device).float(),
                              which[rows].numpy())
        better = score.cpu() > best[rows]
        best[rows] = torch.where(better, score.cpu(), best[rows])
        which[rows] += better * (fine.cpu() + 1) * _REFINED
    return best, which


def _leading(q_rows: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """The pairs (positions in q_rows) among each query's `count` best scores that kept an overlap."""
    order = np.lexsort((np.arange(len(q_rows)), -scores, q_rows))
    grouped = q_rows[order]
    first = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    keep = order[(rank < count) & (scores[order] > -1.0)]
    return np.sort(keep)


def _refine(q: torch.Tensor, c: torch.Tensor, matches: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair (row i of q and of c) correlated again around its coarse match, zoom and sub-pixel offset per axis
    refined coarse to fine (_SWEEPS; each sweep keeps its start among what it tries, so scores never drop): the
    best correlation over the overlap found and its index in REFINEMENTS."""
    n = len(q)
    warp, rest = np.divmod(matches, _SLOT * _SLOT)
    shift = np.stack(np.divmod(rest, _SLOT), axis=1) - _SLOT // 2
    units = np.zeros((n, 4), dtype=np.int64)  # (zoom y, zoom x, offset y, offset x) in the finest steps
    warps, side_px = np.asarray(WARPS)[warp], round(q.shape[1] ** 0.5)
    for step, axes in _SWEEPS:
        moves = np.zeros((3 ** len(axes), 4), dtype=np.int64)  # the first is no move
        moves[:, list(axes)] = step * np.stack(np.meshgrid(*[[0, -1, 1]] * len(axes), indexing="ij"),
                                               axis=-1).reshape(-1, len(axes))
        tried = units[:, None, :] + moves[None]
        best, at = _correlations(q, c, _refined_thetas(warps, shift, tried, side_px, q.device)).max(dim=1)
        units = tried[np.arange(n), at.cpu().numpy()]
    index = np.ravel_multi_index(tuple((units + _REACH).T), (2 * _REACH + 1,) * 4)
    return best, torch.from_numpy(index)


def _refined_thetas(warps: np.ndarray, shift: np.ndarray, units: np.ndarray, side_px: int, device: torch.device
                    ) -> torch.Tensor:
    """(pairs, tried, 2, 3) affine_grid matrices, query to candidate coordinates, of each pair's coarse warp (rows of
    WARPS values) and shift (dy, dx) with zooms and offsets changed by `units` (pairs, tried, 4) finest steps:
    _linear() of the refined warp, applied to the copy's offsets less the refined shift."""
    mirrored, angle, zy, zx = (warps[:, i, None] for i in range(4))
    cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    scale_x = np.where(mirrored > 0, -1.0, 1.0) / (zx * _ZOOM_STEP ** units[..., 1])
    scale_y = 1.0 / (zy * _ZOOM_STEP ** units[..., 0])
    linear = np.stack([np.stack([cos * scale_x, -sin * scale_y], axis=-1),
                       np.stack([sin * scale_x, cos * scale_y], axis=-1)], axis=-2)  # rot @ diag(scale_x, scale_y)
    moved = np.stack([shift[:, 1, None] + units[..., 3] * _OFFSET_STEP,
                      shift[:, 0, None] + units[..., 2] * _OFFSET_STEP], axis=-1)
    move = -np.einsum("ptij,ptj->pti", linear, moved) * 2 / side_px
    return torch.tensor(np.concatenate([linear, move[..., None]], axis=-1), dtype=torch.float32, device=device)


def _correlations(q: torch.Tensor, c: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """(pairs, tried) correlations over the overlap of each query with its candidate under each of its affine maps
    (pairs, tried, 2, 3), -1 where the overlap is under MIN_OVERLAP; sampled and masked as warp() does (the grid
    written out: x' = a x + b y + e, y' = c x + d y + f, over the pixel centres)."""
    (n, tried), side_px = thetas.shape[:2], round(q.shape[1] ** 0.5)
    th = thetas.reshape(n * tried, 2, 3)
    axis = (2 * torch.arange(side_px, dtype=torch.float32, device=q.device) + 1) / side_px - 1
    gx, gy = (th[:, i, 0, None, None] * axis + (th[:, i, 1, None] * axis + th[:, i, 2, None])[:, :, None]
              for i in (0, 1))
    edge = 1.0 - 2 * _MARGIN / side_px
    mask = ((gx.abs() <= edge) & (gy.abs() <= edge)).reshape(n, tried, -1).float()
    # points inside are >= 1 px from the edge pixels' centres (never read the padding); outside, masked to 0
    sampled = F.grid_sample(c.reshape(n, 1, side_px, side_px),
                            torch.stack([gx, gy], dim=-1).reshape(n, tried * side_px, side_px, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False).reshape(n, tried, -1) * mask
    s_m = mask.sum(dim=2)
    s_q, s_q2 = torch.bmm(mask, torch.stack([q, q * q], dim=2)).unbind(dim=2)
    s_c, s_c2 = sampled.sum(dim=2), (sampled * sampled).sum(dim=2)
    s_qc = torch.bmm(sampled, q[:, :, None])[..., 0]
    safe = s_m.clamp(min=1.0)
    cov = s_qc - s_q * s_c / safe
    var_q = (s_q2 - s_q * s_q / safe).clamp(min=0)
    var_c = (s_c2 - s_c * s_c / safe).clamp(min=0)
    ncc = cov / torch.sqrt(var_q * var_c).clamp(min=1e-6)
    return torch.where(s_m >= MIN_OVERLAP * side_px * side_px, ncc, torch.full_like(ncc, -1.0))


def _batches(q_rows: np.ndarray, budget: int):
    """Pairs grouped by query, queries with as many pairs next to each other, in batches of at most `budget` slots
    (queries x the most pairs of one): (pairs as an order of q_rows, (queries, width) index into it or -1, width)."""
    _, group, count = np.unique(q_rows, return_inverse=True, return_counts=True)
    order = np.lexsort((np.arange(len(q_rows)), group, count[group]))
    starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1, len(order)]
    widths = np.diff(starts)
    first = 0
    while first < len(widths):
        last = first + 1  # widths ascend: a batch's width is its last query's
        while last < len(widths) and (last + 1 - first) * widths[last] <= budget:
            last += 1
        width = int(widths[last - 1])
        slots = np.full((last - first, width), -1, dtype=np.int64)
        offset = np.arange(width)[None, :]
        valid = offset < widths[first:last, None]
        slots[valid] = (starts[first:last, None] + offset)[valid] - starts[first]
        yield order[starts[first]:starts[last]], slots, width
        first = last


@functools.lru_cache(maxsize=8)
def _geometry(side_px: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The warps' sampling grids (points where a warp no longer covers the candidate, less _MARGIN, sent outside it,
    so they sample 0: (warps, canvas, canvas, 2)), where each covers it ((warps, canvas, canvas) 0/1), and that
    mask's windows at every shift ((area, warps x shifts^2), the same for every pair)."""
    shift = max_shift(side_px)
    canvas = side_px + 2 * shift
    grids = F.affine_grid(_thetas(side_px, shift, device), [len(WARPS), 1, canvas, canvas], align_corners=False)
    inside = (grids.abs() <= 1.0 - 2 * _MARGIN / side_px).all(dim=-1)
    # inside points are >= 1 px from the edge pixels' centres, so their bilinear samples never read the padding
    grids = torch.where(inside[..., None], grids, torch.full_like(grids, 4.0))
    windows = F.unfold(inside.float()[:, None], side_px).permute(1, 0, 2).reshape(side_px * side_px, -1)
    return grids, inside.float(), windows


def warp(candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, WARPS, canvas, canvas) prepare()d candidates under every warp on a canvas side + 2 max_shift wide, 0
    outside the candidate (less _MARGIN), and (WARPS, canvas, canvas) where each warp covers it (1)."""
    n, warps = len(candidates), len(WARPS)
    side_px = round(candidates.shape[1] ** 0.5)
    grids, inside, _ = _geometry(side_px, candidates.device)
    # warps as the batch and candidates as channels: each warp's grid is used once for every candidate
    warped = F.grid_sample(candidates.reshape(1, n, side_px, side_px).expand(warps, -1, -1, -1), grids,
                           mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.transpose(0, 1).contiguous(), inside


def _window_sums(x: torch.Tensor, side: int) -> torch.Tensor:
    """(..., shifts, shifts) sums of x (..., canvas, canvas) over every side x side window: band @ x @ band.T."""
    canvas = x.shape[-1]
    start = torch.arange(canvas - side + 1, device=x.device)[:, None]
    band = ((torch.arange(canvas, device=x.device) >= start) & (torch.arange(canvas, device=x.device) < start + side))
    band = band.to(x.dtype)
    return band @ x @ band.T


def _verify_batch(q: torch.Tensor, c: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verify() of one batch: each of the Q queries against its candidates, rows slots[i] (Q x width) of c (each
    distinct candidate warped once): (Q, width) scores and matches."""
    warps, (n, width) = len(WARPS), slots.shape
    side_px = round(q.shape[1] ** 0.5)
    shift = max_shift(side_px)
    canvas, area, shifts = side_px + 2 * shift, side_px * side_px, 2 * shift + 1
    warped, _ = warp(c)
    # Sums over each shift's window: of the mask (shared), each candidate and its square, each query x mask and
    # query^2 x mask (matrix products), and query x candidate: each query placed at every shift on the canvas,
    # times the warps of all its candidates (one matrix product per query).
    _, _, mask_windows = _geometry(side_px, q.device)
    s_m = mask_windows.sum(dim=0).reshape(warps, -1)
    s_c = _window_sums(warped, side_px).reshape(len(c), warps, -1)[slots]
    s_c2 = _window_sums(warped * warped, side_px).reshape(len(c), warps, -1)[slots]
    s_q, s_q2 = (torch.cat([q, q * q]) @ mask_windows).reshape(2, n, 1, warps, -1)
    across = torch.stack([F.pad(q.reshape(n, side_px, side_px), (dx, shifts - 1 - dx)) for dx in range(shifts)],
                         dim=1)  # (queries, dx, side, canvas)
    placed = torch.stack([F.pad(across, (0, 0, dy, shifts - 1 - dy)) for dy in range(shifts)], dim=1)
    s_qc = torch.bmm(warped.reshape(len(c), warps, canvas * canvas)[slots].reshape(n, width * warps, -1),
                     placed.reshape(n, shifts * shifts, canvas * canvas).transpose(1, 2)).reshape(n, width, warps, -1)
    safe = s_m.clamp(min=1.0)
    cov = s_qc - s_q * s_c / safe
    var_q = (s_q2 - s_q * s_q / safe).clamp(min=0)
    var_c = (s_c2 - s_c * s_c / safe).clamp(min=0)
    ncc = cov / torch.sqrt(var_q * var_c).clamp(min=1e-6)
    ncc = torch.where(s_m >= MIN_OVERLAP * area, ncc, torch.full_like(ncc, -1.0))
    best, flat = ncc.reshape(n, width, -1).max(dim=2)
    warp_of, at = flat // (shifts * shifts), flat % (shifts * shifts)
    dy, dx = shift - at // shifts, shift - at % shifts  # the copy's content moved by (dy, dx) from its source
    return best, warp_of * _SLOT * _SLOT + (dy + _SLOT // 2) * _SLOT + dx + _SLOT // 2
