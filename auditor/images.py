"""Decode any image file into a canonical 8-bit L or RGB picture, with content hashes and conversion notes."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Modes kept as they are; everything else is converted and the conversion is reported.
_CANONICAL = {"L", "RGB"}


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image and what was learned about it while decoding."""

    pixels: np.ndarray        # HxW (L) or HxWx3 (RGB), uint8
    width: int
    height: int
    mode: str                 # the file's original PIL mode
    file_hash: str            # blake2b of the file's bytes
    pixel_hash: str           # blake2b of the canonical decoded pixels (shape included)
    conversion: str | None    # e.g. "CMYK -> RGB"; None when the file was already L or RGB 8-bit


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _to_canonical(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert odd modes: 16/32-bit and float grayscale are rescaled, alpha is composited on white."""
    mode = img.mode
    if mode in _CANONICAL:
        return img, None
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L"), f"{mode} -> L (rescaled to 8 bits)"
    has_alpha = mode in {"LA", "La", "RGBA", "RGBa", "PA"} or (mode == "P" and "transparency" in img.info)
    target = "L" if mode in {"1", "LA", "La"} else "RGB"
    if not has_alpha:  # 1, P, CMYK, YCbCr, LAB, HSV, RGBX ...
        return img.convert(target), f"{mode} -> {target}"
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert(target), f"{mode} -> {target} (alpha on white)"


def decode_image(path: str | Path) -> DecodedImage:
    """Read, fully decode and canonicalise one image; raise ImageError with the reason for unusable files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("path is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise ImageError("zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            original_mode = img.mode
            img = ImageOps.exif_transpose(img)
            canonical, conversion = _to_canonical(img)
            pixels = np.asarray(canonical, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    if pixels.size == 0:
        raise ImageError("image has zero width or height")
    shape = ",".join(map(str, pixels.shape)).encode()
    return DecodedImage(
        pixels=pixels, width=int(pixels.shape[1]), height=int(pixels.shape[0]), mode=original_mode,
        file_hash=_hash(data), pixel_hash=_hash(shape + b"|" + pixels.tobytes()), conversion=conversion)


def to_model_input(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize canonical pixels to size x size with `channels` channels; returns CxHxW uint8."""
    img = Image.fromarray(pixels)
    want = "L" if channels == 1 else "RGB"
    if img.mode != want:
        img = img.convert(want)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None, :, :] if channels == 1 else arr.transpose(2, 0, 1)
