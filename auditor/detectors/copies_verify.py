"""Verification of copy candidates by alignment on the overlap: for a (query, candidate) pair, the candidate is warped
by every transform of a small grid (WARPS: crop-and-resize zooms per axis of ZOOMS, rotations of +-ANGLES degrees,
horizontal flip) and shifted by up to SHIFT_FRACTION of the side, and the pair's score is the best normalised
correlation over the pixels the warped candidate still covers (what a shift or crop kept), where that overlap is at
least MIN_OVERLAP of the image. A copy matches its source almost exactly there, whatever was cut off at the border
and whatever the content (no foreground, centring or moments assumed); two different images do not.

Images are compared grey (the channel mean) at their own side, or area-resized to MAX_SIDE when larger (side()):
an integer shift of the source then stays an exact shift. Contrast and brightness cancel in the correlation. The
grid of one batch of pairs runs as tensor operations (torch, CPU or GPU): each warp is sampled once, the shifts are
a grouped convolution with the query, the window sums matrix products.
"""

from __future__ import annotations

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
# Pairs verified per tensor batch (bounds memory: ~0.5 MB per pair at side 28).
_PAIRS = 64
# Both sides of a pair are blurred by this sigma (px) first: a blurred copy then stays close to its source, and
# JPEG blocks and noise weigh less.
_PREBLUR = 0.7
# A match packs (warp, dy, dx) as warp * _SLOT^2 + (dy + _SLOT // 2) * _SLOT + dx + _SLOT // 2.
_SLOT = 64
# The match of a copy that correlate() found against its blurred source.
BLURRED = len(WARPS) * _SLOT * _SLOT + (_SLOT // 2) * _SLOT + _SLOT // 2


def side(shape: tuple[int, ...]) -> int:
    """The side images of this shape ((C,) H, W) are compared at."""
    return min(max(shape[-2:]), MAX_SIDE)


def max_shift(side_px: int) -> int:
    """The largest shift searched at a side, in pixels."""
    return max(1, round(SHIFT_FRACTION * side_px))


def warp_name(match: int) -> str:
    """How a verified copy lines up with its source: 'mirrored, rotated +7, zoomed 1.27 x 1.14, shifted (1, -2)';
    BLURRED: 'blurred' (it matched its source blurred, correlate())."""
    warp, rest = divmod(int(match), _SLOT * _SLOT)
    if warp == len(WARPS):
        return "blurred"
    dy, dx = divmod(rest, _SLOT)
    dy, dx = dy - _SLOT // 2, dx - _SLOT // 2
    mirrored, angle, zy, zx = WARPS[warp]
    parts = ["mirrored"] if mirrored else []
    parts += [f"rotated {angle:+g}"] if angle else []
    parts += [f"zoomed {zy:g} x {zx:g}"] if (zy, zx) != (1.0, 1.0) else []
    parts += [f"shifted ({dy}, {dx})"] if (dy, dx) != (0, 0) else []
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


def _thetas(side_px: int, shift: int, device: torch.device) -> torch.Tensor:
    """(len(WARPS), 2, 3) affine_grid matrices: canvas (side + 2 shift wide) to candidate coordinates."""
    out = []
    for mirrored, angle, zy, zx in WARPS:
        t = np.deg2rad(angle)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # (x, y) order, as affine_grid
        matrix = rot @ np.diag([(-1.0 if mirrored else 1.0) / zx, 1.0 / zy]) * (side_px + 2 * shift) / side_px
        out.append(np.concatenate([matrix, np.zeros((2, 1))], axis=1))
    return torch.tensor(np.stack(out), dtype=torch.float32, device=device)


def verify(queries: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair (row i of both, prepare()d), the best correlation over the overlap of the query with the candidate
    under every warp and shift, and which (a match for warp_name); -1 where no alignment kept MIN_OVERLAP. Runs on
    the GPU when torch sees one (in larger batches), results on the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = _PAIRS * (16 if device.type == "cuda" else 1)
    best = torch.full((len(queries),), -1.0)
    which = torch.zeros(len(queries), dtype=torch.int64)
    for start in range(0, len(queries), step):
        score, match = _verify_batch(queries[start:start + step].to(device).float(),
                                     candidates[start:start + step].to(device).float())
        best[start:start + step], which[start:start + step] = score.cpu(), match.cpu()
    return best, which


def _window_sums(x: torch.Tensor, side: int) -> torch.Tensor:
    """(..., shifts, shifts) sums of x (..., canvas, canvas) over every side x side window: band @ x @ band.T."""
    canvas = x.shape[-1]
    start = torch.arange(canvas - side + 1, device=x.device)[:, None]
    band = ((torch.arange(canvas, device=x.device) >= start) & (torch.arange(canvas, device=x.device) < start + side))
    band = band.to(x.dtype)
    return band @ x @ band.T


def _verify_batch(q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verify() of one batch of pairs."""
    n, warps = len(q), len(WARPS)
    side_px = int(round(q.shape[1] ** 0.5))
    shift = max_shift(side_px)
    canvas, area, shifts = side_px + 2 * shift, side_px * side_px, 2 * shift + 1
    grids = F.affine_grid(_thetas(side_px, shift, q.device), [warps, 1, canvas, canvas], align_corners=False)
    inside = (grids.abs() <= 1.0 - 2 * _MARGIN / side_px).all(dim=-1).float()  # (warps, canvas, canvas)
    # warps as the batch and pairs as channels: each warp's grid is used once for every pair
    warped = F.grid_sample(c.reshape(1, n, side_px, side_px).expand(warps, -1, -1, -1), grids, mode="bilinear",
                           padding_mode="border", align_corners=False)
    warped = warped.transpose(0, 1) * inside  # (n, warps, canvas, canvas), 0 outside the candidate
    # Sums over each shift's window: of the mask (shared), the candidate and its square, and against the query:
    # q x mask and q^2 x mask (one matrix product), q x candidate (a grouped convolution).
    mask_windows = F.unfold(inside[:, None], side_px).permute(1, 0, 2).reshape(area, -1)  # (area, warps x shifts)
    s_m = mask_windows.sum(dim=0).reshape(warps, -1)
    box = _window_sums(torch.stack([warped, warped * warped], dim=2), side_px).reshape(n, warps, 2, -1)
    s_c, s_c2 = box[:, :, 0], box[:, :, 1]
    s_q = (q @ mask_windows).reshape(n, warps, -1)
    s_q2 = (q * q @ mask_windows).reshape(n, warps, -1)
    s_qc = F.conv2d(warped.reshape(1, n * warps, canvas, canvas),
                    q.reshape(n, 1, side_px, side_px).repeat_interleave(warps, dim=0),
                    groups=n * warps).reshape(n, warps, -1)
    safe = s_m.clamp(min=1.0)
    cov = s_qc - s_q * s_c / safe
    var_q = (s_q2 - s_q * s_q / safe).clamp(min=0)
    var_c = (s_c2 - s_c * s_c / safe).clamp(min=0)
    ncc = cov / torch.sqrt(var_q * var_c).clamp(min=1e-6)
    ncc = torch.where(s_m >= MIN_OVERLAP * area, ncc, torch.full_like(ncc, -1.0))
    best, flat = ncc.reshape(n, -1).max(dim=1)
    warp, at = flat // (shifts * shifts), flat % (shifts * shifts)
    dy, dx = shift - at // shifts, shift - at % shifts  # the copy's content moved by (dy, dx) from its source
    return best, warp * _SLOT * _SLOT + (dy + _SLOT // 2) * _SLOT + dx + _SLOT // 2
