"""The differentiable slices -> scan module reproduces the group level's prediction path."""

import numpy as np
import pytest
import torch

from bids_qnet.attribution.network import (
    SliceToScan,
    participant_geometry,
    pull_back,
    stage1_geometry,
)
from bids_qnet.models.embedding import embed_slices, load_backbone
from bids_qnet.models.resnet import build_classifier, features
from bids_qnet.training.stage1 import embed_slices_with, predict_slices
from bids_qnet.training.stage2 import Stage2Config, build_qnet, predict_stage2

SIZE = 32


def _stacks(seed, shapes):
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def _qnet(seed, n_classes=2):
    torch.manual_seed(seed)
    model = build_qnet(n_classes, Stage2Config(hidden=16))
    # give the LSTM outputs some spread so that the logits differ between scans
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    return model.eval()


def test_trained_stage1_path_matches_predict_stage2():
    classifier, _ = build_classifier(3, 2, "random", seed=3)
    qnet = _qnet(4)
    stacks = _stacks(0, [(6, 3, 17, 23), (6, 3, 17, 23), (6, 3, 17, 23)])
    embeddings = embed_slices_with(classifier, stacks, SIZE, 4, "cpu")
    config = Stage2Config(hidden=16)
    expected = predict_stage2(qnet.state_dict(), embeddings, 2, config)
    geometry, normalise = stage1_geometry(SIZE, 3)
    model = SliceToScan(features(classifier), qnet, geometry, normalise, stretch=True)
    with torch.no_grad():
        for stack, (_, scan_logits) in zip(stacks, expected, strict=True):
            got = model.scan_logits(torch.from_numpy(stack)[None])[0].numpy()
            np.testing.assert_allclose(got, scan_logits, atol=1e-4)
    # the scans differ, so the comparison is not between constants
    assert np.ptp([e[1][1] for e in expected]) > 1e-3


def test_frozen_path_matches_participant_embeddings():
    backbone, _ = load_backbone("random", 3, seed=11)
    qnet = _qnet(5)
    stack = _stacks(1, [(5, 3, 20, 14)])[0]
    stored = embed_slices(backbone, stack, SIZE, 2, "cpu")
    geometry, normalise = participant_geometry(SIZE, 3)
    model = SliceToScan(backbone, qnet, geometry, normalise, stretch=False)
    x = torch.from_numpy(stack)[None]
    with torch.no_grad():
        rebuilt = model.features(model.to_input(x))[0].numpy()
        got = model.scan_logits(x)[0].numpy()
    np.testing.assert_allclose(rebuilt, stored, atol=1e-4, rtol=1e-4)
    ((_, expected),) = predict_stage2(qnet.state_dict(), [stored], 2, Stage2Config(hidden=16))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_stretch_stays_outside_the_attributed_function():
    classifier, _ = build_classifier(3, 2, "random", seed=3)
    geometry, normalise = stage1_geometry(SIZE, 3)
    model = SliceToScan(features(classifier), _qnet(1), geometry, normalise, stretch=True)
    x = torch.from_numpy(_stacks(2, [(4, 3, 16, 16)])[0])[None]
    stretched = model.to_input(x * 5.0 + 2.0)
    np.testing.assert_allclose(stretched.numpy(), model.to_input(x).numpy(), atol=1e-5)
    assert not stretched.requires_grad


def test_slice_classifier_matches_predict_slices():
    from bids_qnet.attribution.network import SliceClassifier

    classifier, _ = build_classifier(3, 2, "random", seed=8)
    stack = _stacks(3, [(5, 3, 18, 21)])[0]
    (expected,) = predict_slices(classifier, [stack], SIZE, 8, "cpu")
    geometry, normalise = stage1_geometry(SIZE, 3)
    scan_model = SliceToScan(features(classifier), _qnet(1), geometry, normalise, stretch=True)
    slice_model = SliceClassifier(classifier, geometry, normalise)
    with torch.no_grad():
        got = slice_model(scan_model.to_input(torch.from_numpy(stack)[None])[0]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("which", ["stage1", "participant"])
def test_pull_back_carries_maps_to_the_slice_grid(which):
    make = stage1_geometry if which == "stage1" else participant_geometry
    geometry, _ = make(SIZE, 3)
    shape = (18, 30)
    ones = pull_back(geometry, torch.ones(1, 1, SIZE, SIZE), shape)[0, 0]
    seen = ones > 0
    np.testing.assert_allclose(ones[seen].numpy(), 1.0, atol=1e-5)  # a weighted mean of ones
    if which == "stage1":  # the centre crop hides the outer columns
        assert not seen[:, 0].any() and seen[:, shape[1] // 2].all()
    else:
        assert seen.all()
    # a map varying left to right on the network grid keeps its direction on the slice grid
    ramp = torch.linspace(0, 1, SIZE).expand(1, 1, SIZE, SIZE)
    back = pull_back(geometry, ramp, shape)[0, 0].numpy()
    row = back[shape[0] // 2][seen[shape[0] // 2].numpy()]
    assert np.all(np.diff(row) > 0)


def test_stored_to_scan_differentiates_the_stretch():
    from bids_qnet.attribution.network import StoredToScan

    classifier, _ = build_classifier(3, 2, "random", seed=3)
    geometry, normalise = stage1_geometry(SIZE, 3)
    model = SliceToScan(features(classifier), _qnet(1), geometry, normalise, stretch=True)
    x = torch.from_numpy(_stacks(4, [(3, 3, 16, 20)])[0])[None]
    through = StoredToScan(model)
    with torch.no_grad():
        np.testing.assert_allclose(through(x).numpy(), model.scan_logits(x).numpy(), atol=1e-6)
    probe = x.clone().requires_grad_(True)
    through(probe)[0, 1].backward()
    assert probe.grad.abs().sum() > 0
    # the stretch ignores scale and offset: the gradient is orthogonal to x and to a constant
    assert float((probe.grad * x).sum()) == pytest.approx(0.0, abs=1e-4)
    assert float(probe.grad.sum()) == pytest.approx(0.0, abs=1e-4)
