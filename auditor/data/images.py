"""Decode any image file into a canonical 8-bit L or RGB picture, with content hashes and conversion notes."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Modes kept as they are; everything else is converted and the conversion is reported.
_CANONICAL = {"L", "RGB"}
# Caps applied when the caller gives none: the defaults of data.max_file_mb and data.max_megapixels.
DEFAULT_MAX_BYTES = 100 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


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
    frames: int = 1           # frames in the file (animated GIF/PNG/WebP, multi-page TIFF); only the first is used


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


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _refusal(info: os.stat_result, max_bytes: int) -> str | None:
    """Why a file with this stat is not read (not a regular file, over the size cap), or None to read it."""
    if not stat.S_ISREG(info.st_mode):
        return f"path is {_kind(info.st_mode)}, not an image file; only regular files are read"
    if info.st_size > max_bytes:
        return (f"file is {info.st_size / 2**20:.1f} MiB, over data.max_file_mb ({max_bytes / 2**20:g}); "
                "raise it to read this file")
    return None


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    refusal = _refusal(os.fstat(fd), max_bytes)
    if refusal:
        os.close(fd)
        raise ImageError(refusal)
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file grew past data.max_file_mb ({max_bytes / 2**20:g}) while being read")
    return data


def _decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, str, str | None, int]:
    """Pixels, original mode, conversion note and frame count of an image file's bytes; any failure is an ImageError."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"decompression bomb: {img.width}x{img.height} = {img.width * img.height:,} pixels, "
                                 f"over data.max_megapixels ({max_pixels / 1e6:g}); raise it to read this image")
            img.load()
            original_mode, frames = img.mode, int(getattr(img, "n_frames", 1))
            img = ImageOps.exif_transpose(img)
            canonical, conversion = _to_canonical(img)
            return np.asarray(canonical, dtype=np.uint8).copy(), original_mode, conversion, frames
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused by Pillow: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # decoders raise many types (struct.error, IndexError, MemoryError ...)
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from None


def decode_image(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read, fully decode and canonicalise one image; raise ImageError with the reason for unusable files."""
    data = _read_regular_file(Path(path), max_bytes)
    if not data:
        raise ImageError("zero-byte file")
    pixels, original_mode, conversion, frames = _decode(data, max_pixels)
    if pixels.size == 0:
        raise ImageError("image has zero width or height")
    shape = ",".join(map(str, pixels.shape)).encode()
    return DecodedImage(
        pixels=pixels, width=int(pixels.shape[1]), height=int(pixels.shape[0]), mode=original_mode,
        file_hash=_hash(data), pixel_hash=_hash(shape + b"|" + pixels.tobytes()), conversion=conversion,
        frames=frames)


def check_unchanged(path: str, decoded: DecodedImage, pixel_hash: str) -> None:
    """Raise RuntimeError naming `path` when its decoded pixels no longer hash to the `pixel_hash` recorded at ingest:
    a stage must not audit other pixels than the ones the runs' data identity was built from."""
    if decoded.pixel_hash != pixel_hash:
        raise RuntimeError(f"{path} changed since ingest (its pixels no longer match the pixel_hash recorded then); "
                           "re-run the ingest stage (memaudit run --stages ingest,...) to audit the files as they "
                           "are now")


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
