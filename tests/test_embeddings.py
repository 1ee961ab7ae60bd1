"""Embedders (imagenet, clip, model), streamed embedding of files and the 2-D PCA map."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from auditor.training.embeddings import (EmbedderInfo, build_embedder, embed_paths, map_in_order, pca_2d,
                                save_model_checkpoint)
from auditor.data.images import decode_image, to_model_input
from auditor.training.models import build_model
from auditor.store.database import Store
from pipelines.embeddings_stage import load_embeddings, stream_embeddings

TINY_CLIP = "memaudit-test-tiny-clip"


@pytest.fixture(scope="module")
def imagenet():
    return build_embedder("imagenet", device="cpu")


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8), rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
            rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)]


def _check_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_imagenet_shapes_normalisation_and_determinism(imagenet):
    assert imagenet.info == EmbedderInfo(
        embedder_id="imagenet:efficientnet_lite0", kind="imagenet", model_name="efficientnet_lite0",
        weights=imagenet.info.weights, dim=1280, input_size=224, fallback_reason=None)
    images = _images()
    first = imagenet.embed(images)
    _check_rows(first, 3, 1280)
    np.testing.assert_array_equal(first, imagenet.embed(images))
    np.testing.assert_allclose(imagenet.embed(images[1:2])[0], first[1], atol=1e-5)  # independent of the batch
    assert imagenet.embed([]).shape == (0, 1280)


def test_imagenet_weights_separate_mnist_classes(imagenet, default_manifest):
    """Real ImageNet features put same-digit pairs closer than different-digit pairs (random weights do not:
    their within/between cosine gap is ~0.001, the real weights' 0.07-0.10 at 3 digits per class)."""
    with open(default_manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    picked = [r for c in range(10) for r in [r for r in rows if r["label"] == str(c)][:3]]
    labels = np.array([int(r["label"]) for r in picked])
    chunks: list[np.ndarray] = []
    failed = embed_paths(imagenet, [str(default_manifest.parent / r["path"]) for r in picked],
                         on_chunk=lambda start, v: chunks.append(v))
    assert failed == {}
    vectors = np.concatenate(chunks)
    sim = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    gap = sim[same].mean() - sim[labels[:, None] != labels[None, :]].mean()
    assert gap > 0.03, gap


def test_map_in_order_renames_and_checks_shapes():
    source = {"_conv.weight": torch.ones(2, 3), "_bn.bias": torch.zeros(2)}
    mapped = map_in_order(source, {"conv.weight": torch.empty(2, 3), "bn.bias": torch.empty(2)}, "ckpt.pth")
    assert list(mapped) == ["conv.weight", "bn.bias"] and mapped["conv.weight"] is source["_conv.weight"]
    with pytest.raises(RuntimeError, match=r"'_bn.bias' \(2,\) does not match the model's 'bn.bias' \(3,\)"):
        map_in_order(source, {"conv.weight": torch.empty(2, 3), "bn.bias": torch.empty(3)}, "ckpt.pth")
    with pytest.raises(RuntimeError, match="has 2 tensors but the model has 1"):
        map_in_order(source, {"conv.weight": torch.empty(2, 3)}, "ckpt.pth")


def test_clip_without_cached_weights_falls_back_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    t0 = time.perf_counter()
    embedder = build_embedder("clip", device="cpu", clip_model="ViT-B-32", clip_pretrained="openai")
    assert time.perf_counter() - t0 < 20  # no network attempt (a hub timeout alone would take longer)
    info = embedder.info
    assert info.kind == "imagenet" and info.embedder_id == "imagenet:efficientnet_lite0"
    assert "ViT-B-32/openai" in info.fallback_reason and "embeddings.clip_checkpoint" in info.fallback_reason
    _check_rows(embedder.embed(_images()[:1]), 1, 1280)


@pytest.fixture
def tiny_clip(tmp_path):
    """A randomly initialised, very small open_clip model saved as a local checkpoint file."""
    import open_clip

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / f"{TINY_CLIP}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), preprocess, path


def test_clip_local_checkpoint(tiny_clip):
    model, preprocess, path = tiny_clip
    embedder = build_embedder("clip", device="cpu", clip_model=TINY_CLIP, clip_checkpoint=str(path))
    assert embedder.info.embedder_id == f"clip:{TINY_CLIP}:tiny_clip.pt"
    assert (embedder.info.kind, embedder.info.dim, embedder.info.input_size) == ("clip", 32, 32)
    assert embedder.info.fallback_reason is None
    images = _images()
    vectors = embedder.embed(images)
    _check_rows(vectors, 3, 32)
    with torch.inference_mode():  # the checkpoint's weights were loaded, not a fresh random init
        x = torch.stack([preprocess(Image.fromarray(p).convert("RGB")) for p in images])
        expected = model.encode_image(x, normalize=True).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_clip_errors(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        build_embedder("clip", clip_checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        build_embedder("clip", clip_pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_embedder("clip", clip_model="no-such-model")


@pytest.mark.parametrize("arch, channels, size, dim", [("mlp", 1, 28, 64), ("small_cnn", 3, 32, 16)])
def test_model_embedder_from_checkpoint(tmp_path, arch, channels, size, dim):
    torch.manual_seed(0)
    model = build_model(arch, channels, 10, 4, size).eval()
    mean, std = [0.3] * channels, [0.2] * channels
    path = save_model_checkpoint(model, tmp_path / "model.pt", arch=arch, in_channels=channels, num_classes=10,
                                 width=4, image_size=size, mean=torch.tensor(mean).view(1, -1, 1, 1), std=std,
                                 run_id="run42")
    embedder = build_embedder("model", device="cpu", model_checkpoint=path)
    assert embedder.info == EmbedderInfo(embedder_id="model:run42", kind="model", model_name=arch,
                                         weights=str(path.resolve()), dim=dim, input_size=size)
    images = _images()
    vectors = embedder.embed(images)
    _check_rows(vectors, 3, dim)
    x = torch.from_numpy(np.stack([to_model_input(p, size, channels) for p in images])).float() / 255
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model.features((x - 0.3) / 0.2), dim=1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_build_embedder_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown embedder kind"):
        build_embedder("sift")
    with pytest.raises(ValueError, match="run the train stage first"):
        build_embedder("model", model_checkpoint="")
    with pytest.raises(ValueError, match="run the train stage first"):
        build_embedder("model", model_checkpoint=tmp_path / "absent.pt")
    torch.save({"arch": "mlp"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a memaudit model checkpoint"):
        build_embedder("model", model_checkpoint=tmp_path / "other.pt")


def test_embed_paths_streams_chunks_and_reports_failures(tmp_path):
    model = build_model("mlp", 1, 10, 4, 16)
    embedder = build_embedder("model", device="cpu", model_checkpoint=save_model_checkpoint(
        model, tmp_path / "m.pt", arch="mlp", in_channels=1, num_classes=10, width=4, image_size=16,
        mean=[0.5], std=[0.25]))
    rng = np.random.default_rng(1)
    paths = []
    for i in range(9):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "img3.png").write_bytes(b"not an image")
    paths.append(str(tmp_path / "missing.png"))
    chunks: list[tuple[int, np.ndarray]] = []
    done: list[int] = []
    failed = embed_paths(embedder, paths, batch_size=3, chunk_size=4, workers=2,
                         on_chunk=lambda start, v: chunks.append((start, v.copy())), progress=done.append)
    assert [s for s, _ in chunks] == [0, 4, 8] and [len(v) for _, v in chunks] == [4, 4, 2]
    assert sum(done) == len(paths)
    assert set(failed) == {3, 9} and "missing.png" in failed[9]
    vectors = np.concatenate([v for _, v in chunks])
    assert np.isnan(vectors[[3, 9]]).all()
    good = [i for i in range(len(paths)) if i not in failed]
    expected = embedder.embed([decode_image(paths[i]).pixels for i in good])
    np.testing.assert_allclose(vectors[good], expected, atol=1e-6)
    assert embed_paths(embedder, [], on_chunk=lambda s, v: pytest.fail("no chunk for no paths")) == {}


def test_pca_2d_deterministic_and_sampled():
    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(500, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])).astype(np.float32)
    vectors[7] = np.nan
    xy = pca_2d(vectors)
    assert xy.shape == (500, 2) and xy.dtype == np.float32
    assert np.isnan(xy[7]).all() and np.isfinite(np.delete(xy, 7, axis=0)).all()
    np.testing.assert_array_equal(xy, pca_2d(vectors))
    ok = np.delete(xy, 7, axis=0)
    assert ok[:, 0].var() > ok[:, 1].var() > 4  # the two high-variance axes, in order
    np.testing.assert_allclose(ok.mean(axis=0), 0, atol=1e-4)
    sampled = pca_2d(vectors, max_fit=200)
    np.testing.assert_array_equal(sampled, pca_2d(vectors, max_fit=200))
    assert abs(np.corrcoef(sampled[~np.isnan(sampled[:, 0]), 0], ok[:, 0])[0, 1]) > 0.99
    assert pca_2d(np.zeros((0, 4), np.float32)).shape == (0, 2)
    assert pca_2d(np.ones((1, 1), np.float32)).tolist() == [[0.0, 0.0]]


def test_load_embeddings_streams_chunks_into_the_asked_order(tmp_path):
    """Vectors come back in the order of the ids asked for, whatever the storage order and chunking; other embedders'
    rows and ids not asked for are ignored; a missing id is a clear error."""
    store = Store(tmp_path / "audit.duckdb")
    store.init()
    rng = np.random.default_rng(0)
    ids = np.array([f"s{i:04d}" for i in range(300)], dtype=object)
    vectors = rng.normal(size=(300, 7)).astype(np.float32)
    stored = rng.permutation(300)
    for part in np.array_split(stored, 4):  # committed in chunks, as the embeddings stage does
        store.append("embeddings", pd.DataFrame({"embedder_id": "e", "sample_id": ids[part],
                                                 "vector": list(vectors[part])}))
    store.append("embeddings", pd.DataFrame({"embedder_id": "other", "sample_id": ids[:5],
                                             "vector": list(np.zeros((5, 3), np.float32))}))
    chunks = list(stream_embeddings(store, "e", chunk=64))
    assert len(chunks) >= 5 and sum(len(c[0]) for c in chunks) == 300
    asked = ids[rng.permutation(300)[:200]]
    np.testing.assert_array_equal(load_embeddings(store, "e", asked), vectors[[int(i[1:]) for i in asked]])
    assert load_embeddings(store, "e", asked).dtype == np.float32
    with pytest.raises(RuntimeError, match="no vectors for \\['ghost'\\]"):
        load_embeddings(store, "e", np.array(["s0001", "ghost"], dtype=object))
