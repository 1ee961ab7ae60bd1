"""Decode a split's images into one uint8 array in the model's input size and channel count."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from auditor.data.images import ImageError, check_unchanged, decode_image, to_model_input

GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


def resolve_channels(setting: str | int, modes: Sequence[str]) -> int:
    """`auto` means 1 channel when every image is grayscale, else 3."""
    if setting == "auto":
        return 1 if all(m in GRAYSCALE_MODES for m in modes) else 3
    return int(setting)


def load_images(paths: Sequence[str], size: int, channels: int, *, workers: int = 2,
                progress: Callable[[int], None] | None = None,
                pixel_hashes: Sequence[str] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Decode and resize every path into an (N, C, size, size) uint8 array, in the order given.

    Files that became unreadable since ingest are returned as {index: reason} (their slot stays zero) so the
    caller can report and exclude them instead of aborting the run. With `pixel_hashes` (recorded at ingest), a file
    whose decoded pixels hash otherwise raises RuntimeError naming it: it changed since ingest.
    """
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    failed: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            decoded = decode_image(paths[i])
            out[i] = to_model_input(decoded.pixels, size, channels)
        except ImageError as exc:
            failed[i] = f"{exc} ({paths[i]})"
            return
        if pixel_hashes is not None:
            check_unchanged(paths[i], decoded, pixel_hashes[i])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=64):
            if progress:
                progress(1)
    return out, failed
