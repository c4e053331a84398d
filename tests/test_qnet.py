"""Tests of the stage-2 Q-Net model (Bi-LSTM) and its training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.models.qnet import QNet, qnet_loss
from bids_qnet.training.stage2 import (
    Stage2Config,
    build_qnet,
    collate,
    predict_stage2,
    train_stage2,
)

F_DIM = 512


def _model(seed: int = 0, in_features: int = 16, hidden: int = 8, n_classes: int = 3) -> QNet:
    torch.manual_seed(seed)
    return QNet(in_features=in_features, hidden=hidden, n_classes=n_classes, dropout=0.3).eval()


def _cohort(n: int = 30, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Participants with 8-15 slices; class 1 shifts a few features on a few middle slices."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    embeddings = []
    for label in labels:
        slices = int(rng.integers(8, 16))
        emb = rng.normal(0.0, 1.0, (slices, F_DIM)).astype(np.float32)
        if label == 1:
            emb[3:6, :8] += 1.5
        embeddings.append(emb)
    return embeddings, [int(v) for v in labels]


def _quick(**kwargs) -> Stage2Config:
    base = {"epochs": 8, "batch_size": 8, "lr": 1e-3, "hidden": 32, "seed": 7}
    base.update(kwargs)
    return Stage2Config(**base)


def test_padding_invariance():
    model = _model()
    rng = np.random.default_rng(1)
    short = rng.normal(size=(4, 16)).astype(np.float32)
    longer = [rng.normal(size=(s, 16)).astype(np.float32) for s in (9, 6)]
    with torch.no_grad():
        alone_img, alone_scan = model(torch.from_numpy(short)[None])
        x, lengths = collate([longer[0], short, longer[1]])
        img, scan = model(x, lengths)
        # garbage in the padding must not matter either
        x_noisy = x.clone()
        x_noisy[1, 4:] = 1e3
        img_noisy, scan_noisy = model(x_noisy, lengths)
    assert img.shape == (3, 9, 3) and scan.shape == (3, 3)
    torch.testing.assert_close(img[1, :4], alone_img[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(scan[1], alone_scan[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(scan_noisy, scan, atol=1e-6, rtol=0)
    assert torch.all(img[1, 4:] == 0) and torch.all(img_noisy[1, 4:] == 0)


def test_loss_ignores_padded_steps():
    model = _model()
    x, lengths = collate([np.ones((5, 16), np.float32), np.ones((2, 16), np.float32)])
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        img, scan = model(x, lengths)
        base = qnet_loss(img, scan, labels, lengths, 0.5)
        img[1, 2:] = 50.0  # what a padded step says must not count
        assert float(qnet_loss(img, scan, labels, lengths, 0.5)) == pytest.approx(float(base))


def test_input_gradients_in_eval_mode():
    model = _model()
    x, lengths = collate([np.ones((6, 16), np.float32), np.full((3, 16), 0.5, np.float32)])
    x.requires_grad_(True)
    _, scan = model(x, lengths)
    scan[:, 1].sum().backward()
    assert not model.training
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum(dim=1).min() > 0  # every real slice gets a gradient
    assert x.grad[1, :3].abs().sum(dim=1).min() > 0
    assert torch.all(x.grad[1, 3:] == 0)  # padded steps get none


def test_shape_and_lengths_errors():
    model = _model()
    with pytest.raises(InputDataError):
        model(torch.zeros(2, 5, 15))
    with pytest.raises(InputDataError):
        model(torch.zeros(2, 5, 16), torch.tensor([5, 6]))
    with pytest.raises(InputDataError):
        model(torch.zeros(2, 5, 16), torch.tensor([0, 5]))
    with pytest.raises(InputDataError):
        collate([np.zeros((3, 4)), np.zeros((3, 5))])
    with pytest.raises(UsageError):
        QNet(dropout=1.0)


def test_collate_pads_with_zeros():
    x, lengths = collate([np.ones((2, 3)), np.full((4, 3), 2.0)])
    assert x.dtype == torch.float32 and x.shape == (2, 4, 3)
    assert lengths.tolist() == [2, 4] and lengths.dtype == torch.int64
    assert torch.all(x[0, 2:] == 0) and torch.all(x[1] == 2)


def test_training_learns_synthetic_signal():
    embeddings, labels = _cohort()
    seen = []
    result = train_stage2(embeddings, labels, 2, _quick(), progress=seen.append)
    assert [r["epoch"] for r in result.history] == list(range(1, 9)) and seen == result.history
    assert set(result.history[0]) == {"epoch", "loss", "scan_accuracy", "seconds"}
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["scan_accuracy"] > 0.9
    preds = predict_stage2(result.state, embeddings, 2, _quick())
    accuracy = np.mean(
        [int(np.argmax(scan)) == y for (_, scan), y in zip(preds, labels, strict=True)]
    )
    assert accuracy > 0.9


def test_same_seed_same_state_and_rng_untouched():
    embeddings, labels = _cohort(n=10, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_stage2(embeddings, labels, 2, _quick(epochs=2))
    after = torch.rand(1)
    second = train_stage2(embeddings, labels, 2, _quick(epochs=2))
    other = train_stage2(embeddings, labels, 2, _quick(epochs=2, seed=8))
    assert torch.equal(before, after)  # the caller's random state is left alone
    assert first.state.keys() == second.state.keys()
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    assert not all(torch.equal(first.state[k], other.state[k]) for k in first.state)


def test_prediction_shapes_and_order():
    embeddings, labels = _cohort(n=7, seed=5)
    config = _quick(epochs=1, batch_size=3)
    result = train_stage2(embeddings, labels, 2, config)
    assert all(v.device.type == "cpu" for v in result.state.values())
    preds = predict_stage2(result.state, embeddings, 2, config)
    assert len(preds) == 7
    for emb, (image, scan) in zip(embeddings, preds, strict=True):
        assert image.shape == (emb.shape[0], 2) and scan.shape == (2,)
        assert image.dtype == np.float32 and np.all(np.isfinite(image))
    # batching does not change the answer
    single = predict_stage2(result.state, embeddings[2:3], 2, config)
    np.testing.assert_allclose(single[0][1], preds[2][1], atol=1e-5)
    np.testing.assert_allclose(single[0][0], preds[2][0], atol=1e-5)
    assert predict_stage2(result.state, [], 2, config) == []


def test_prediction_rejects_mismatches():
    embeddings, labels = _cohort(n=4, seed=6)
    config = _quick(epochs=1)
    state = train_stage2(embeddings, labels, 2, config).state
    with pytest.raises(UsageError):
        predict_stage2(state, embeddings, 3, config)
    # the hidden size comes from the state, not the config: a saved model predicts alike
    same = predict_stage2(state, embeddings, 2, _quick(hidden=16))
    for (image, scan), (image2, scan2) in zip(
        same, predict_stage2(state, embeddings, 2, config), strict=True
    ):
        np.testing.assert_allclose(scan, scan2)
        np.testing.assert_allclose(image, image2)
    with pytest.raises(InputDataError):
        predict_stage2(state, [e[:, :100] for e in embeddings], 2, config)


def test_training_rejects_bad_inputs():
    embeddings, labels = _cohort(n=4, seed=6)
    with pytest.raises(InputDataError):
        train_stage2(embeddings, labels[:3], 2, _quick())
    with pytest.raises(InputDataError):
        train_stage2(embeddings, [0, 1, 2, 0], 2, _quick())
    with pytest.raises(UsageError):
        train_stage2(embeddings, labels, 2, _quick(epochs=0))
    with pytest.raises(UsageError):
        train_stage2(embeddings, labels, 1, _quick())


def test_build_qnet_uses_config():
    model = build_qnet(4, Stage2Config(hidden=16, dropout=0.1), in_features=32)
    assert model.lstm.hidden_size == 16 and model.lstm.bidirectional
    assert model.image_head.out_features == 4 and model.scan_head.in_features == 64
    assert model.dropout.p == 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_gives_eval_gradients():
    embeddings, labels = _cohort(n=6, seed=9)
    cpu_config = _quick(epochs=1)
    state = train_stage2(embeddings, labels, 2, cpu_config).state
    cpu = predict_stage2(state, embeddings, 2, cpu_config)
    gpu = predict_stage2(state, embeddings, 2, _quick(epochs=1, device="cuda"))
    for (ci, cs), (gi, gs) in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(gi, ci, atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(gs, cs, atol=1e-3, rtol=1e-3)
    model = build_qnet(2, cpu_config)
    model.load_state_dict(state)
    model = model.cuda().eval()
    x, lengths = collate(embeddings)
    x = x.cuda().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=False):
        _, scan = model(x, lengths)
        scan[:, 1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # training on the GPU works too
    result = train_stage2(embeddings, labels, 2, _quick(epochs=1, device="cuda"))
    assert all(v.device.type == "cpu" for v in result.state.values())
