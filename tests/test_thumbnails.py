"""Thumbnails are made once per image and size, kept on disk, and remade when the file changes."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from auditor.data import thumbnails
from auditor.data.images import decode_image


def _png(path, value: int) -> str:
    Image.fromarray(np.full((20, 10), value, dtype=np.uint8)).save(path)
    return str(path)


def test_a_thumbnail_is_rendered_once_then_read_from_disk(tmp_path, monkeypatch):
    image, cache = _png(tmp_path / "a.png", 200), tmp_path / "thumbs"
    first = thumbnails.thumbnail(image, 40, cache)
    assert Image.open(io.BytesIO(first)).size == (20, 40)  # fitted, aspect kept, enlarged pixelated
    assert len(list(cache.glob("*.png"))) == 1 and not list(cache.glob("*.tmp"))
    monkeypatch.setattr(thumbnails, "render", lambda *a: (_ for _ in ()).throw(AssertionError("rendered again")))
    assert thumbnails.thumbnail(image, 40, cache) == first


def test_a_changed_file_or_size_gets_a_new_thumbnail(tmp_path):
    image, cache = _png(tmp_path / "a.png", 200), tmp_path / "thumbs"
    before = thumbnails.thumbnail(image, 40, cache)
    _png(tmp_path / "a.png", 10)
    os.utime(image, ns=(1, 1))
    after = thumbnails.thumbnail(image, 40, cache)
    assert after != before and np.asarray(Image.open(io.BytesIO(after))).max() == 10
    assert thumbnails.thumbnail(image, 16, cache) != after
    assert len(list(cache.glob("*.png"))) == 3


def test_unreadable_or_missing_images_give_none_and_cache_nothing(tmp_path):
    broken, cache = tmp_path / "b.png", tmp_path / "thumbs"
    broken.write_bytes(b"\x89PNG broken")
    assert thumbnails.thumbnail(str(broken), 40, cache) is None
    assert thumbnails.thumbnail(str(tmp_path / "missing.png"), 40, cache) is None
    assert not cache.exists() or not list(cache.iterdir())


def test_without_a_cache_dir_the_thumbnail_is_still_made(tmp_path):
    assert thumbnails.thumbnail(_png(tmp_path / "a.png", 5), 8, None)


def test_a_file_that_no_longer_hashes_to_the_recorded_file_hash_is_refused(tmp_path):
    image, cache = _png(tmp_path / "a.png", 200), tmp_path / "thumbs"
    recorded = decode_image(image).file_hash
    audited = thumbnails.thumbnail(image, 40, cache, recorded)
    assert audited == thumbnails.thumbnail(image, 40, None)
    _png(tmp_path / "a.png", 10)  # replaced after the audit
    os.utime(image, ns=(1, 1))
    with pytest.raises(thumbnails.FileChanged, match="changed since the audit.*re-run ingest"):
        thumbnails.thumbnail(image, 40, cache, recorded)
    assert [p.read_bytes() for p in cache.glob("*.png")] == [audited]  # nothing cached for the changed file
    _png(tmp_path / "a.png", 200)  # the audited bytes are back: shown again
    assert thumbnails.thumbnail(image, 40, cache, recorded) == audited


def test_a_thumbnail_cached_unchecked_is_not_served_as_checked(tmp_path):
    image, cache = _png(tmp_path / "a.png", 200), tmp_path / "thumbs"
    assert thumbnails.thumbnail(image, 40, cache) is not None  # cached without a hash to check
    with pytest.raises(thumbnails.FileChanged):
        thumbnails.thumbnail(image, 40, cache, "0" * 32)
