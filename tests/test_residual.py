"""Q-Net's Bi-LSTM beside its regional read-out: the weight it earns on held-out participants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_qnet.models.roi import RegionalLogistic
from bids_qnet.preprocess.regions import MOMENTS, pooling_weights
from bids_qnet.training.residual import (
    RESIDUAL_SCALES,
    choose_residual_scale,
    one_standard_error_choice,
)
from bids_qnet.training.stage2 import Stage2Config, predict_stage2, qnet_from_state, train_stage2

# (T, H, W) = (4, 8, 9): two regions
LABELS = np.zeros((4, 8, 9), np.int32)
LABELS[0:3, 2:6, 1:4] = 7
LABELS[2:4, 1:7, 5:8] = 9
CONFIG = Stage2Config(epochs=40, batch_size=8, hidden=8, lr=3e-3, seed=0, standardise=True)


def _data(n, level_in_maps: bool, level_in_embeddings: bool, seed=0, ppm=0.012):
    """Scans whose maps (``ppm``, 3 SD by default) and/or embeddings (3 SD) separate the classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    stacks, embeddings = [], []
    for label in labels:
        stack = rng.normal(0.02, 0.004, (4, 2, 8, 9)).astype(np.float32)
        stack[:, 0][LABELS == 7] += rng.normal(0, 0.004) + ppm * label * level_in_maps
        stacks.append(stack)
        embedding = rng.normal(0, 1, (4, 6)).astype(np.float32)
        embedding[:, 0] += 3.0 * label * level_in_embeddings
        embeddings.append(embedding)
    return stacks, embeddings, labels.tolist()


@pytest.mark.parametrize("ppm", [0.006, 0.012])
def test_noise_in_the_bilstm_earns_it_no_weight(ppm):
    stacks, embeddings, labels = _data(36, True, level_in_embeddings=False, ppm=ppm)
    weights = pooling_weights(LABELS, [7, 9], MOMENTS)
    choice = choose_residual_scale(stacks, embeddings, labels, 2, weights, CONFIG, folds=3)
    assert set(choice.log_loss) == set(RESIDUAL_SCALES)
    assert choice.scale == 0.0, choice.log_loss


def test_a_bilstm_that_sees_what_the_read_out_misses_keeps_its_weight():
    stacks, embeddings, labels = _data(36, level_in_maps=False, level_in_embeddings=True)
    weights = pooling_weights(LABELS, [7, 9], MOMENTS)
    choice = choose_residual_scale(stacks, embeddings, labels, 2, weights, CONFIG, folds=3)
    assert choice.scale >= 0.5, choice.log_loss
    assert choice.log_loss[choice.scale] < choice.log_loss[0.0] - 0.1


def test_too_few_participants_leave_the_weight_untuned():
    stacks, embeddings, labels = _data(3, level_in_maps=True, level_in_embeddings=False)
    weights = pooling_weights(LABELS, [7, 9], MOMENTS)
    choice = choose_residual_scale(stacks, embeddings, labels, 2, weights, CONFIG, folds=3)
    assert choice.scale == 1.0 and choice.log_loss == {}


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_the_weight_scales_the_scan_logits_and_survives_the_checkpoint(scale):
    _, embeddings, labels = _data(8, level_in_maps=False, level_in_embeddings=True)
    config = Stage2Config(epochs=2, batch_size=4, hidden=8, seed=0)
    state = train_stage2(embeddings, labels, 2, config).state
    full = predict_stage2(state, embeddings, 2, config)
    weighted = predict_stage2(
        {**state, "residual_scale": torch.tensor(scale)}, embeddings, 2, config
    )
    for (image_a, scan_a), (image_b, scan_b) in zip(full, weighted, strict=True):
        np.testing.assert_allclose(scan_b, scale * scan_a, atol=1e-6)
        np.testing.assert_array_equal(image_a, image_b)  # the image head is untouched
    # a checkpoint written before the weight existed loads with weight 1
    old = {k: v for k, v in state.items() if k != "residual_scale"}
    assert float(qnet_from_state(old, 2).residual_scale) == 1.0


def test_one_standard_error_rule_keeps_the_smallest_weight_within_the_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, 50)
    noisy = {0.0: base, 0.5: base - 0.01 + rng.normal(0, 0.2, 50), 1.0: base + 0.05}
    assert one_standard_error_choice(noisy) == 0.0  # 0.5 is lower, but within one SE
    clear = {0.0: base, 0.5: base - 0.1 + rng.normal(0, 0.01, 50), 1.0: base + 0.05}
    assert one_standard_error_choice(clear) == 0.5


def test_read_out_penalty_by_log_loss_gives_no_weights_to_noise():
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(40, 10)), np.arange(40) % 2
    model = RegionalLogistic(seed=0, penalty="l1", scoring="neg_log_loss").fit(features, labels, 2)
    assert np.count_nonzero(model.coef_) == 0
    assert np.ptp(model.logits(features)[:, 1]) == 0  # every scan the same score: AUC 0.5
    features[:, 0] += 2 * labels  # a real effect keeps its weight
    model = RegionalLogistic(seed=0, penalty="l1", scoring="neg_log_loss").fit(features, labels, 2)
    assert model.coef_[0, 0] > 0
