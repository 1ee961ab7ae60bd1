"""The training loop: Algorithm 1 recording is exact, free of side effects on training, and deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.config import load_config
from auditor.training.models import build_model
from auditor.training.trainer import _augment, resolve_device, train_model


def _toy(n: int = 96, channels: int = 1, size: int = 12, seed: int = 0):
    """Two classes told apart by brightness, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 120, (n, channels, size, size)) + 100 * y[:, None, None, None]
    return x.astype(np.uint8), y


def _cfg(**dynamics):
    return load_config(overrides={"data": {"image_size": 12}, "train": {"epochs": 3, "width": 4, "batch_size": 32},
                                  "dynamics": {"el2n_epoch": 1, **dynamics}})


def _collect(cfg, record=True, seed=0):
    x, y = _toy()
    xt, yt = _toy(32, seed=1)
    logs = []
    out = train_model(x, y, xt, yt, 2, cfg, seed, record=record, on_epoch=lambda log: logs.append(log.records))
    return out, logs


def test_batch_mode_records_each_example_once_per_epoch_from_its_own_batch():
    out, logs = _collect(_cfg())
    assert len(logs) == 3
    for epoch, rec in enumerate(logs, start=1):
        assert sorted(rec["index"]) == list(range(96))
        assert set(rec["epoch"]) == {epoch} and set(rec["phase"]) == {"batch"}
        assert set(np.unique(rec["step"])) == set(range((epoch - 1) * 3, epoch * 3))
        assert ((rec["p_label"] >= 0) & (rec["p_label"] <= 1)).all()
        assert ((rec["el2n"] >= 0) & (rec["el2n"] <= np.sqrt(2) + 1e-6)).all()
        # a label probability above one half is always the argmax
        assert rec["correct"][rec["p_label"] > 0.5].all()
    assert out.train_acc > 0.9


def test_every_n_batches_and_epoch_end_mode():
    _, logs = _collect(_cfg(every_n_batches=2))
    assert all(len(rec["index"]) == 64 for rec in logs)  # batches 0 and 2 of 3
    _, logs = _collect(_cfg(record=["epoch_end"]))
    for epoch, rec in enumerate(logs, start=1):
        assert sorted(rec["index"]) == list(range(96)) and set(rec["step"]) == {epoch * 3}
        assert set(rec["phase"]) == {"epoch_end"}
    _, logs = _collect(_cfg(record=["batch", "epoch_end"]))
    assert all(len(rec["index"]) == 192 for rec in logs)


def test_recording_does_not_change_training_and_runs_are_deterministic():
    plain, none_logs = _collect(_cfg(), record=False)
    recorded, _ = _collect(_cfg())
    again, _ = _collect(_cfg())
    assert none_logs == [None, None, None]
    np.testing.assert_array_equal(plain.train.pred, recorded.train.pred)
    np.testing.assert_allclose(plain.train.p_label, recorded.train.p_label, rtol=0, atol=0)
    np.testing.assert_array_equal(recorded.test.p_pred, again.test.p_pred)
    assert [e.test_acc for e in plain.epochs] == [e.test_acc for e in recorded.epochs]
    other, _ = _collect(_cfg(), seed=1)
    assert not np.array_equal(other.train.p_label, recorded.train.p_label)


@pytest.mark.parametrize("arch, channels", [("small_cnn", 1), ("resnet18", 3)])
def test_architectures_give_logits_and_features(arch, channels):
    model = build_model(arch, channels, 5, 4)
    x = torch.randn(2, channels, 16, 16)
    assert model(x).shape == (2, 5)
    assert model.features(x).shape[0] == 2 and model.features(x).ndim == 2


def test_resnet18_trains_through_the_loop():
    cfg = load_config(overrides={"data": {"image_size": 12}, "train": {"arch": "resnet18", "epochs": 1, "width": 4,
                                                                        "batch_size": 48, "augment": True},
                                 "dynamics": {"el2n_epoch": 1}})
    x, y = _toy(channels=3)
    out = train_model(x, y, None, None, 2, cfg, 0)
    assert out.test is None and len(out.train.pred) == 96


def test_augment_keeps_shape_and_is_seeded():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    a = _augment(x, torch.Generator().manual_seed(3))
    b = _augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)


def test_unknown_arch_and_missing_cuda_are_clear():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg", 1, 2, 4)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_auto_device_falls_back_to_the_cpu_with_one_message(monkeypatch, capsys):
    from auditor.training import trainer as training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    training._cpu_fallback_notice.cache_clear()
    assert [resolve_device("auto").type for _ in range(3)] == ["cpu"] * 3
    assert capsys.readouterr().err.count("no CUDA device visible to torch") == 1
