"""Thumbnails made once per image and size and kept on disk, so the review grid never decodes a full image twice
(across reruns, pages, sessions and dashboard restarts)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from auditor.images import ImageError, decode_image


def cache_key(path: str, size: int) -> str:
    """A file name for the thumbnail of `path` at `size`: changes when the file is replaced (size or mtime)."""
    stat = os.stat(path)
    digest = hashlib.sha1(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}".encode()).hexdigest()
    return f"{digest}.png"


def render(path: str, size: int) -> bytes:
    """PNG bytes of the image at `path` fitted into size x size (pixelated when enlarged, Lanczos when reduced)."""
    img = Image.fromarray(decode_image(path).pixels)
    method = Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.LANCZOS
    out = io.BytesIO()
    ImageOps.contain(img, (size, size), method=method).save(out, format="PNG")
    return out.getvalue()


def thumbnail(path: str, size: int, cache_dir: Path | None) -> bytes | None:
    """The cached thumbnail of `path` (made and stored atomically on first use); None if the image is unreadable.
    Without a cache_dir (or when it is not writable) the thumbnail is rendered but not stored."""
    try:
        key = cache_key(path, size)
    except OSError:
        return None
    cached = None if cache_dir is None else cache_dir / key
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    try:
        data = render(path, size)
    except (ImageError, Image.DecompressionBombError, OSError):
        return None
    if cached is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only work directory: serve the thumbnail uncached
    return data
