"""Thumbnails made once per image and size and kept on disk, so the review grid never decodes a full image twice
(across reruns, pages, sessions and dashboard restarts); given the `file_hash` recorded at ingest, only of the file
that was audited."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from auditor.data.images import ImageError, decode_image


class FileChanged(ImageError):
    """The file at an audited path no longer holds the bytes that were audited."""


def cache_key(path: str, size: int, file_hash: str | None = None) -> str:
    """A file name for the thumbnail of `path` at `size` (checked against `file_hash`): changes when the file is
    replaced (size or mtime) or the expected hash differs."""
    stat = os.stat(path)
    text = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{file_hash or ''}"
    return f"{hashlib.sha1(text.encode()).hexdigest()}.png"


def render(path: str, size: int, file_hash: str | None = None) -> bytes:
    """PNG bytes of the image at `path` fitted into size x size (pixelated when enlarged, Lanczos when reduced); raise
    FileChanged when `file_hash` is given and the bytes decoded hash otherwise."""
    decoded = decode_image(path)
    if file_hash is not None and decoded.file_hash != file_hash:
        raise FileChanged(f"{path} changed since the audit (its bytes no longer match the file_hash recorded at "
                          "ingest), so it is not shown; re-run ingest to audit the file as it is now")
    img = Image.fromarray(decoded.pixels)
    method = Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.LANCZOS
    out = io.BytesIO()
    ImageOps.contain(img, (size, size), method=method).save(out, format="PNG")
    return out.getvalue()


def thumbnail(path: str, size: int, cache_dir: Path | None, file_hash: str | None = None) -> bytes | None:
    """The cached thumbnail of `path` (made and stored atomically on first use); None if the image is unreadable.
    With `file_hash` (recorded at ingest) raise FileChanged unless the file's bytes hash to it: checked whenever the
    file's size or mtime differs from the cached thumbnail's. Without a cache_dir (or when it is not writable) the
    thumbnail is rendered but not stored."""
    try:
        key = cache_key(path, size, file_hash)
    except OSError:
        return None
    cached = None if cache_dir is None else cache_dir / key
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    try:
        data = render(path, size, file_hash)
    except FileChanged:
        raise
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
