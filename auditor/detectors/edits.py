"""The edits a copied image goes through (shift, crop-and-resize, flip, rotation, contrast, brightness, blur, JPEG,
noise), as seeded functions of uint8 images (N, C, H, W) or (N, H, W). The copy detector calibrates its threshold on
synthetic copies made with some of them (CALIBRATION_EDITS); the copy benchmark plants all of them."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# The edits the detector's own calibration uses; every other edit in EDITS is held out of it.
CALIBRATION_EDITS = ("shift", "crop")
# Largest shift and crop, as a fraction of the image side.
MAX_SHIFT_FRACTION = 0.15
MAX_CROP_FRACTION = 0.15


def _planes(image: np.ndarray) -> np.ndarray:
    """One image (C, H, W) or (H, W) as (C, H, W)."""
    return image[None] if image.ndim == 2 else image


def _per_plane(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """fn applied to each (H, W) plane of one image, clipped back to uint8 in the image's shape."""
    out = np.stack([fn(plane.astype(np.float32)) for plane in _planes(image)])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


def shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move the content by up to MAX_SHIFT_FRACTION of the side in each direction (at least 1 px); the uncovered
    strip takes the border's median grey (the background)."""
    side = image.shape[-1]
    most = max(1, round(MAX_SHIFT_FRACTION * side))
    dy, dx = rng.integers(-most, most + 1, size=2)
    if dy == dx == 0:
        dx = most
    return _per_plane(image, lambda p: ndimage.shift(p, (dy, dx), order=0, mode="constant", cval=_background(p)))


def _background(plane: np.ndarray) -> float:
    """The median grey of a plane's outermost pixels."""
    return float(np.median(np.concatenate([plane[0], plane[-1], plane[:, 0], plane[:, -1]])))


def crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut 5 % to MAX_CROP_FRACTION of the side off each side (independently) and resize back."""
    h, w = image.shape[-2:]
    cut = [int(rng.integers(max(1, round(0.05 * s)), max(1, round(MAX_CROP_FRACTION * s)) + 1))
           for s in (h, w, h, w)]
    top, left, bottom, right = cut

    def resized(p: np.ndarray) -> np.ndarray:
        box = Image.fromarray(p).crop((left, top, w - right, h - bottom))
        return np.asarray(box.resize((w, h), Image.BILINEAR), dtype=np.float32)
    return _per_plane(image, lambda p: resized(p.astype(np.uint8)))


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left to right."""
    return np.ascontiguousarray(image[..., ::-1])


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 6 to 12 degrees either way about the centre; the corners take the background grey."""
    angle = float(rng.uniform(6, 12) * rng.choice([-1, 1]))
    return _per_plane(image, lambda p: ndimage.rotate(p, angle, reshape=False, order=1, mode="constant",
                                                      cval=_background(p)))


def contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale the contrast about the mean by 0.55 to 0.8."""
    factor = rng.uniform(0.55, 0.8)
    return _per_plane(image, lambda p: p.mean() + factor * (p - p.mean()))


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 20 to 40 grey levels, either way."""
    offset = rng.uniform(20, 40) * rng.choice([-1, 1])
    return _per_plane(image, lambda p: p + offset)


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of radius 0.8 to 1.2 px."""
    radius = float(rng.uniform(0.8, 1.2))
    return _per_plane(image, lambda p: ndimage.gaussian_filter(p, radius, mode="nearest"))


def jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-encode as JPEG at quality 20 to 35."""
    quality = int(rng.integers(20, 36))

    def encoded(p: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(p.astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer), dtype=np.float32)
    return _per_plane(image, encoded)


def noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of sigma 8 to 14 grey levels."""
    sigma = rng.uniform(8, 14)
    return _per_plane(image, lambda p: p + rng.normal(0, sigma, p.shape))


EDITS: dict[str, Edit] = {"shift": shift, "crop": crop, "flip": flip, "rotate": rotate, "contrast": contrast,
                          "brightness": brightness, "blur": blur, "jpeg": jpeg, "noise": noise}


def edit_images(images: np.ndarray, names: list[str] | np.ndarray, seed: int) -> np.ndarray:
    """Image i edited by EDITS[names[i]] (uint8, same shape), reproducibly from `seed`."""
    images = np.asarray(images)
    if len(names) != len(images):
        raise ValueError(f"need one edit name per image, got {len(names)} names for {len(images)} images")
    unknown = sorted(set(names) - set(EDITS))
    if unknown:
        raise ValueError(f"unknown edit(s) {unknown}; use {', '.join(EDITS)}")
    rngs = np.random.default_rng(seed).spawn(len(images))
    return np.stack([EDITS[name](img, rng) for img, name, rng in zip(images, names, rngs)]) if len(images) else images
