"""Shadow-model blocks: the batched (vmap) path equals one-by-one training, models learn only from their shards."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.config import load_config
from auditor.memorization.shadow_engine import can_batch, train_shadow_block
from auditor.training.trainer import train_model


def _toy(n: int = 96, seed: int = 0, contrast: int = 100):
    """Two classes told apart by brightness (by `contrast` grey levels), plus noise: 1x12x12 uint8 images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 120, (n, 1, 12, 12)) + contrast * y[:, None, None, None]
    return x.astype(np.uint8), y


def _cfg(arch: str = "mlp", **train):
    return load_config(overrides={"data": {"image_size": 12},
                                  "train": {"arch": arch, "epochs": 4, "width": 4, "batch_size": 16, **train}})


def _halves(k: int, n: int = 96, seed: int = 0) -> np.ndarray:
    """Each model's shard is a random half of the training set."""
    rng = np.random.default_rng(seed)
    membership = np.zeros((k, n), dtype=bool)
    for row in membership:
        row[rng.permutation(n)[:n // 2]] = True
    return membership


def _block(cfg, membership, seeds, contrast: int = 8, **kwargs):
    (x, y), (xt, yt) = _toy(contrast=contrast), _toy(32, seed=1, contrast=contrast)
    return train_shadow_block(x, y, xt, yt, 2, membership, seeds, cfg, **kwargs)


def _assert_same(a, b, atol: float) -> None:
    np.testing.assert_allclose(a.train_p_label, b.train_p_label, rtol=0, atol=atol)
    np.testing.assert_allclose(a.test_p_label, b.test_p_label, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.epochs_run, b.epochs_run)


def test_can_batch_only_architectures_without_batchnorm():
    assert can_batch("mlp")
    assert not can_batch("small_cnn") and not can_batch("resnet18")


@pytest.mark.parametrize("train", [{"optimizer": "sgd", "augment": True},
                                   {"optimizer": "adam", "lr": 0.01, "schedule": "constant"}])
def test_batched_mlp_equals_one_by_one(train):
    cfg, membership = _cfg(**train), _halves(5)
    batched = _block(cfg, membership, range(5), batched=True)
    single = _block(cfg, membership, range(5), batched=False)
    assert batched.batched and not single.batched
    _assert_same(batched, single, atol=1e-4)
    np.testing.assert_array_equal(batched.test_acc, single.test_acc)
    assert batched.train_pred.dtype == np.int16 and batched.train_pred.shape == (5, 96)
    assert batched.test_p_label.dtype == np.float32 and batched.test_p_label.shape == (5, 32)
    assert 0.05 < batched.train_p_label.std()  # not saturated, so the comparison means something


def test_one_by_one_small_cnn_reproduces_train_model_on_a_full_shard():
    cfg = _cfg("small_cnn", epochs=2)
    (x, y), (xt, yt) = _toy(contrast=8), _toy(32, seed=1, contrast=8)
    block = train_shadow_block(x, y, xt, yt, 2, np.ones((1, 96), dtype=bool), [7], cfg)
    alone = train_model(x, y, xt, yt, 2, cfg, 7, record=False)
    assert not block.batched
    np.testing.assert_allclose(block.train_p_label[0], alone.train.p_label, rtol=0, atol=1e-6)
    np.testing.assert_allclose(block.test_p_label[0], alone.test.p_label, rtol=0, atol=1e-6)
    assert block.test_acc[0] == pytest.approx(alone.test_acc)


@pytest.mark.parametrize("batched", [True, False])
def test_each_model_learns_only_from_its_shard(batched):
    (x, y), (xt, yt) = _toy(), _toy(32, seed=1)
    y = y.copy()
    y[0] = 1 - y[0]  # a mislabelled point: only models trained on it can fit it
    membership = _halves(4)
    membership[:2, 0], membership[2:, 0] = True, False
    block = train_shadow_block(x, y, xt, yt, 2, membership, range(4), _cfg(epochs=30, schedule="constant"),
                               batched=batched)
    assert (block.train_pred[:2, 0] == y[0]).all()
    assert (block.train_pred[2:, 0] != y[0]).all()
    assert (block.shard_train_acc == 1).all()


def test_early_stopping_drops_models_and_still_predicts_them():
    cfg, membership = _cfg(epochs=8, lr=0.01, schedule="constant"), _halves(6)
    done: list[int] = []
    block = _block(cfg, membership, range(6), stop_at_train_acc=0.8, on_model_done=done.append)
    assert sorted(done) == list(range(6))
    assert (block.epochs_run < 8).all() and len(set(block.epochs_run)) > 1  # models left the stack at different epochs
    assert (block.shard_train_acc >= 0.8).all() and (block.train_p_label > 0).all()
    _assert_same(block, _block(cfg, membership, range(6), stop_at_train_acc=0.8, batched=False), atol=1e-4)


def test_unequal_shards_wrap_around_in_the_batched_path():
    membership = _halves(3)
    membership[1, np.flatnonzero(membership[1])[0]] = False  # 47 points instead of 48
    cfg = _cfg(batch_size=32)
    batched = _block(cfg, membership, range(3), batched=True)
    single = _block(cfg, membership, range(3), batched=False)
    full = [0, 2]  # shards of the maximal size train exactly as they would alone
    np.testing.assert_allclose(batched.train_p_label[full], single.train_p_label[full], rtol=0, atol=1e-4)
    assert (batched.epochs_run == 4).all()


def test_deterministic_per_seed_and_single_model_blocks():
    cfg, membership = _cfg(augment=True), _halves(3)
    first, again = _block(cfg, membership, [3, 4, 5]), _block(cfg, membership, [3, 4, 5])
    np.testing.assert_array_equal(first.train_p_label, again.train_p_label)
    np.testing.assert_array_equal(first.test_pred, again.test_pred)
    other = _block(cfg, membership, [3, 4, 6])
    np.testing.assert_array_equal(first.train_p_label[:2], other.train_p_label[:2])  # models are independent
    assert not np.array_equal(first.train_p_label[2], other.train_p_label[2])
    one = _block(cfg, membership[2:], [5])
    np.testing.assert_allclose(one.train_p_label[0], first.train_p_label[2], rtol=0, atol=1e-4)
    assert one.train_pred.shape == (1, 96) and one.batched


def test_invalid_blocks_are_rejected():
    with pytest.raises(ValueError, match="BatchNorm"):
        _block(_cfg("small_cnn"), _halves(2), [0, 1], batched=True)
    with pytest.raises(ValueError, match="expected"):
        _block(_cfg(), _halves(2), [0])
    with pytest.raises(ValueError, match="non-empty shard"):
        _block(_cfg(), np.zeros((1, 96), dtype=bool), [0])


def test_checkpoints_predict_the_same_models_mid_training():
    # A constant schedule makes epoch e of an 8-epoch run the same model as a run of e epochs.
    cfg, membership = _cfg(epochs=8, lr=0.01, schedule="constant"), _halves(4)
    long = _block(cfg, membership, range(4), checkpoints=[2, 5, 8])
    assert long.checkpoint_pred.shape == (3, 4, 96) and long.checkpoint_pred.dtype == np.int16
    np.testing.assert_array_equal(long.checkpoint_pred[2], long.train_pred)
    for c, epochs in enumerate((2, 5)):
        short = _block(_cfg(epochs=epochs, lr=0.01, schedule="constant"), membership, range(4))
        np.testing.assert_array_equal(long.checkpoint_pred[c], short.train_pred)
    assert not np.array_equal(long.checkpoint_pred[0], long.train_pred)  # the model changed after epoch 2
    plain = _block(cfg, membership, range(4))
    np.testing.assert_array_equal(plain.train_p_label, long.train_p_label)  # checkpoints leave training unchanged
    assert plain.checkpoint_pred is None
    stopped = _block(cfg, membership, range(4), stop_at_train_acc=0.8, checkpoints=[8])
    np.testing.assert_array_equal(stopped.checkpoint_pred[0], stopped.train_pred)  # a stopped model keeps its last
    with pytest.raises(ValueError, match="checkpoints"):
        _block(cfg, membership, range(4), checkpoints=[9])
