"""The quantitative preset: regional network, Q-Net's regional read-out, their attribution path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_qnet.attribution.loading import trained_networks
from bids_qnet.errors import InputDataError
from bids_qnet.inputs.scans import Scan
from bids_qnet.models.presets import PRESETS, get_preset
from bids_qnet.models.readout import RegionalReadout, regional_features
from bids_qnet.models.regional import RegionalNet
from bids_qnet.models.roi import RegionalLogistic
from bids_qnet.outputs.names import ModelFiles
from bids_qnet.preprocess.regions import MOMENTS, pooling_weights, slice_pooling_weights
from bids_qnet.stats.metrics import auc_mann_whitney
from bids_qnet.training.base import Cohort, FitParams, GroupContext
from bids_qnet.training.estimators import QNetEstimator, ResNetEstimator
from bids_qnet.training.stage2 import Stage2Config, predict_stage2, train_stage2

from .grids import grid_from_slice_labels

# (T, H, W) = (4, 8, 9): region 7 spans slices 0-2, region 9 slices 2-3.
LABELS = np.zeros((4, 8, 9), np.int32)
LABELS[0:3, 2:6, 1:4] = 7
LABELS[2:4, 1:7, 5:8] = 9


def _grid():
    return grid_from_slice_labels(LABELS, {7: "Left_Putamen", 9: "Right_Caudate"})


def _cohort(tmp_path, n=32, offset=0.0, gradient=0.0, seed=0):
    """Scans in physical units; patients get an offset or an A-P ramp in region 7, channel 0."""
    rng = np.random.default_rng(seed)
    rows = np.arange(LABELS.shape[1], dtype=np.float32)[None, :, None]
    ramp = np.broadcast_to(rows - 3.5, LABELS.shape)  # zero mean over region 7's rows 2-5
    scans, labels = [], []
    for i in range(n):
        label = i % 2
        stack = np.zeros((4, 2, 8, 9), np.float32)
        stack[:, 0] = 0.02 + rng.normal(0, 0.004, LABELS.shape)  # ppm
        stack[:, 1] = 20 + rng.normal(0, 0.8, LABELS.shape)  # 1/s
        inside = LABELS == 7
        stack[:, 0][inside] += rng.normal(0, 0.004) + label * offset
        stack[:, 0][inside] += label * gradient * ramp[inside]
        path = tmp_path / f"sub-{i:02d}_slices.npy"
        np.save(path, stack)
        scans.append(Scan(f"sub-{i:02d}", None, path, path, "fp"))
        labels.append(label)
    return scans, labels


def _params(**changes) -> FitParams:
    base = FitParams(8, 40, 16, 8, "random", "train", 3, "cpu", PRESETS["quantitative"])
    return FitParams(**{**base.__dict__, **changes})


def test_presets_are_named_and_unknown_names_refused():
    assert get_preset("paper").network == "resnet18" and not get_preset("paper").readout
    quantitative = get_preset("quantitative")
    assert quantitative.regional and quantitative.readout and quantitative.augment == "shift"
    with pytest.raises(Exception, match="unknown preset"):
        get_preset("fancy")


def test_slice_pooling_weights_are_normalised_within_each_slice():
    weights = slice_pooling_weights(LABELS, [7, 9], MOMENTS)
    assert weights.shape == (4, 6, 8, 9)
    np.testing.assert_allclose(weights[:, 0].sum(axis=(1, 2)), [1, 1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(weights[:, 3].sum(axis=(1, 2)), [0, 0, 1, 1], atol=1e-6)
    norms = (weights[:, 1] ** 2).sum(axis=(1, 2))  # the A-P moment of region 7
    np.testing.assert_allclose(norms, [1, 1, 1, 0], atol=1e-5)


def test_regional_net_pools_standardised_channels_per_region():
    pooling = slice_pooling_weights(LABELS, [7, 9], ("mean",))
    net = RegionalNet(2, 2, pooling, width=4).eval()
    net.set_standardisation([0.02, 20.0], [0.01, 1.0])
    x = torch.zeros(2, 2, 8, 9)
    x[:, 0][:, torch.from_numpy(LABELS[1] == 7)] = 0.05  # 3 SD above the mean in region 7
    x[:, 0][:, torch.from_numpy(LABELS[1] != 7)] = 0.02
    x[:, 1] = 20.0
    embedding = net.embed(x, torch.tensor([1, 1]))
    assert embedding.shape == (2, net.embedding_dim) == (2, 2 * (2 + 4))
    np.testing.assert_allclose(embedding[:, 0].detach(), [3.0, 3.0], rtol=1e-5)  # region 7
    assert net(x, torch.tensor([1, 1])).shape == (2, 2)
    with pytest.raises(InputDataError, match="positions"):
        net(x, torch.tensor([0, 4]))
    with pytest.raises(InputDataError, match="slices"):
        net(torch.zeros(2, 2, 8, 8), torch.tensor([0, 1]))


def test_read_out_folds_the_logistic_regression_into_maps():
    rng = np.random.default_rng(1)
    stacks = [rng.normal(0, 1, (4, 2, 8, 9)).astype(np.float32) for _ in range(20)]
    labels = [i % 2 for i in range(20)]
    for stack, label in zip(stacks, labels, strict=True):
        stack[:, 0][LABELS == 9] += label
    weights = pooling_weights(LABELS, [7, 9], MOMENTS)
    features = regional_features(stacks, weights)
    assert features.shape == (20, 6 * 2)
    logistic = RegionalLogistic(seed=0, penalty="l1").fit(features, labels, 2)
    readout = RegionalReadout.from_logistic(logistic, weights)
    np.testing.assert_allclose(readout.logits(stacks), logistic.logits(features), atol=1e-4)
    # what the read-out looks at: region 9's mean of channel 0, nothing outside the regions
    template = np.moveaxis(readout.template[0].numpy(), 1, 0)  # (C, T, H, W)
    assert np.abs(template[:, LABELS == 0]).max() == 0
    assert np.abs(template[0][LABELS == 9]).sum() > np.abs(template[0][LABELS == 7]).sum()


def test_stage2_offsets_are_added_and_standardisation_is_stored():
    rng = np.random.default_rng(2)
    embeddings = [rng.normal(5, 3, (4, 6)).astype(np.float32) for _ in range(10)]
    labels = [i % 2 for i in range(10)]
    config = Stage2Config(epochs=2, batch_size=4, hidden=8, seed=0, standardise=True)
    offsets = np.tile([[-1.0, 1.0]], (10, 1))
    result = train_stage2(embeddings, labels, 2, config, offsets=offsets)
    assert "input_mean" in result.state
    np.testing.assert_allclose(result.state["input_mean"], np.concatenate(embeddings).mean(0), 1e-5)
    plain = predict_stage2(result.state, embeddings, 2, config)
    shifted = predict_stage2(result.state, embeddings, 2, config, offsets)
    for (_, a), (_, b) in zip(plain, shifted, strict=True):
        np.testing.assert_allclose(b - a, [-1.0, 1.0], atol=1e-5)
    with pytest.raises(InputDataError, match="offsets"):
        predict_stage2(result.state, embeddings, 2, config, offsets[:3])


@pytest.mark.parametrize(("offset", "gradient"), [(0.012, 0.0), (0.0, 0.006)])
def test_quantitative_families_learn_a_level_and_a_pattern(tmp_path, offset, gradient):
    """An offset of 3 between-participant SDs, or a zero-mean ramp, in one nucleus."""
    scans, labels = _cohort(tmp_path, n=48, offset=offset, gradient=gradient)
    context = GroupContext(_grid(), ("Left_Putamen", "Right_Caudate"))
    train, test = Cohort(scans[:32], context=context), Cohort(scans[32:], context=context)
    params = _params()
    stage1 = ResNetEstimator(params, 2).fit(train, labels[:32])
    train.features = stage1.features(train)
    prediction = stage1.predict(test)
    test.features = prediction.features
    assert train.features[0].shape == (4, 6 * (2 + 8))
    qnet = QNetEstimator(params, 2).fit(train, labels[:32])
    assert qnet.readout_ is not None
    scores = {
        name: [p.scan[1] - p.scan[0] for p in logits]
        for name, logits in {**prediction.logits, **qnet.predict(test).logits}.items()
    }
    auc = {name: auc_mann_whitney(labels[32:], s) for name, s in scores.items()}
    assert auc["QNet"] >= 0.9, auc


def test_quantitative_checkpoints_reload_for_prediction_and_attribution(tmp_path):
    scans, labels = _cohort(tmp_path, n=24, offset=0.012)
    context = GroupContext(_grid(), ("Left_Putamen", "Right_Caudate"))
    cohort = Cohort(scans, context=context)
    params = _params(epochs=2, qnet_epochs=3)
    stage1 = ResNetEstimator(params, 2).fit(cohort, labels)
    cohort.features = stage1.features(cohort)
    qnet = QNetEstimator(params, 2).fit(cohort, labels)
    files = ModelFiles(tmp_path / "fold")
    files.folder.mkdir()
    sums = {**stage1.save(files), **qnet.save(files)}
    again = QNetEstimator.load(files, sums, params, 2, 2).predict(Cohort(scans, cohort.features))
    before = qnet.predict(Cohort(scans, cohort.features))
    np.testing.assert_allclose(
        [p.scan for p in again.logits["QNet"]], [p.scan for p in before.logits["QNet"]], atol=1e-5
    )
    networks = trained_networks(files.folder, 2, 2, 8, sums)
    assert networks.slice_model is None  # no Grad-CAM for the regional network
    slices = torch.from_numpy(np.stack([np.load(scans[0].slices)]))
    with torch.no_grad():
        logits = networks.scan_model.scan_logits(slices)[0].numpy()
    np.testing.assert_allclose(logits, before.logits["QNet"][0].scan, atol=1e-4)
