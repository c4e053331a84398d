"""Integrated Gradients through the whole Q-Net, Grad-CAM, baselines and batch sizes."""

import warnings

import numpy as np
import pytest
import torch

from bids_qnet.attribution.integrated import (
    PIXEL_BUDGET,
    IGJob,
    cudnn_off_in_rnns,
    grad_cam,
    integrated_gradients,
    integrated_gradients_many,
    internal_batch_size,
    make_baseline,
)
from bids_qnet.attribution.network import SliceClassifier, SliceToScan, stage1_geometry
from bids_qnet.errors import UsageError
from bids_qnet.models.resnet import build_classifier, features
from bids_qnet.training.stage2 import Stage2Config, build_qnet

from .attribution_models import smooth_model

SIZE = 32
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(seed=0):
    classifier, _ = build_classifier(3, 2, "random", seed=seed)
    torch.manual_seed(seed)
    qnet = build_qnet(2, Stage2Config(hidden=8))
    with torch.no_grad():  # spread the logits of the random model
        for parameter in qnet.parameters():
            parameter.mul_(4.0)
    geometry, normalise = stage1_geometry(SIZE, 3)
    scan_model = SliceToScan(features(classifier), qnet, geometry, normalise, stretch=True)
    return scan_model, SliceClassifier(classifier, geometry, normalise)


def _smooth_model(seed=0):
    return smooth_model(seed, SIZE)


def _input(model, seed=1, shape=(1, 4, 3, 14, 18)):
    rng = np.random.default_rng(seed)
    return model.to_input(torch.from_numpy(rng.random(shape, dtype=np.float32)))


def _centred(model, x, target):
    with torch.no_grad():
        logits = model(x)
    return float((logits - logits.mean(dim=1, keepdim=True))[0, target])


@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_completeness_and_small_delta(baseline):
    model = _smooth_model()
    x = _input(model)
    b = make_baseline(x, baseline, (1.0, 2.0, 2.0))
    result = integrated_gradients(model, x, b, target=1, n_steps=64, batch_size=7)
    assert result.attribution.shape == tuple(x.shape[1:])
    gap = _centred(model, x, 1) - _centred(model, b, 1)
    assert result.output - result.baseline_output == pytest.approx(gap, abs=1e-5)
    assert abs(gap) > 0.05
    total = float(result.attribution.sum())
    assert total - gap == pytest.approx(result.delta, abs=1e-4)
    assert abs(result.delta) < 0.01 * abs(gap)
    assert np.abs(result.attribution).max() > 0
    coarse = integrated_gradients(model, x, b, target=1, n_steps=2, batch_size=2)
    assert abs(coarse.delta) > abs(result.delta)  # the delta measures convergence


def test_two_class_attributions_are_opposite_and_batching_does_not_matter():
    model = _smooth_model(seed=2)
    x = _input(model, seed=3)
    b = torch.zeros_like(x)
    toward_1 = integrated_gradients(model, x, b, target=1, n_steps=16, batch_size=16)
    toward_0 = integrated_gradients(model, x, b, target=0, n_steps=16, batch_size=3)
    np.testing.assert_allclose(toward_0.attribution, -toward_1.attribution, atol=1e-5)


def test_several_scans_in_one_call_equal_one_by_one():
    model, _ = _model(seed=8)  # ResNet (BatchNorm in eval mode) and Bi-LSTM
    x = torch.cat([_input(model, seed=s) for s in (9, 10, 11)])
    b = make_baseline(x, "blur", (1.0, 2.0, 2.0))
    together = integrated_gradients(model, x, b, target=[1, 0, 1], n_steps=8, batch_size=6)
    assert isinstance(together, list) and len(together) == 3
    for i, target in enumerate((1, 0, 1)):
        alone = integrated_gradients(model, x[i : i + 1], b[i : i + 1], target, n_steps=8)
        np.testing.assert_allclose(together[i].attribution, alone.attribution, atol=1e-6, rtol=1e-4)
        assert together[i].output == pytest.approx(alone.output, abs=1e-5)
        assert together[i].baseline_output == pytest.approx(alone.baseline_output, abs=1e-5)
        assert together[i].delta == pytest.approx(alone.delta, abs=1e-5)
    one_target = integrated_gradients(model, x[:2], b[:2], target=1, n_steps=8)
    assert isinstance(one_target, list) and len(one_target) == 2
    with pytest.raises(UsageError, match="targets"):
        integrated_gradients(model, x, b, target=[1, 0], n_steps=8)


def test_many_scans_are_grouped_by_shape_within_the_pass_budget():
    model, _ = _model(seed=14)
    four, three = (1, 4, 3, 14, 18), (1, 3, 3, 14, 18)
    jobs = []
    for seed, shape in enumerate([four, three, four, four, four]):
        x = _input(model, seed=20 + seed, shape=shape)
        jobs.append(IGJob(x, make_baseline(x, "blur", (1.0, 2.0, 2.0)), seed % 2))
    # the pass size is set as for images of this side: 3 sequences of 4 slices, 4 of 3 slices
    size = int((PIXEL_BUDGET["cpu"] / 12) ** 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # captum warns when a pass cannot hold every scan
        found = integrated_gradients_many(model, jobs, 5, size, torch.device("cpu"))
    assert [batch for _, batch, _ in found] == [3, 4, 3, 3, 3]
    for job, (result, _, seconds) in zip(jobs, found, strict=True):
        alone = integrated_gradients(model, job.x, job.baseline, job.target, n_steps=5)
        np.testing.assert_allclose(result.attribution, alone.attribution, atol=1e-6, rtol=1e-4)
        assert result.delta == pytest.approx(alone.delta, abs=1e-5) and seconds > 0


def test_cudnn_is_off_only_inside_recurrent_layers():
    model, _ = _model(seed=12)
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = torch.backends.cudnn.enabled

        return hook

    conv = model.backbone.conv1 if hasattr(model.backbone, "conv1") else None
    conv = conv or next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    x = _input(model, seed=13)
    before = torch.backends.cudnn.enabled
    with cudnn_off_in_rnns(model):
        handles = [
            model.qnet.lstm.register_forward_pre_hook(record("lstm")),
            conv.register_forward_pre_hook(record("conv")),
        ]
        with torch.no_grad():
            model(x)
        for handle in handles:
            handle.remove()
        assert torch.backends.cudnn.enabled == before
    assert seen == {"lstm": False, "conv": before}
    assert not model.qnet.lstm._forward_pre_hooks and not model.qnet.lstm._forward_hooks


def test_blur_baseline_keeps_the_mean_and_smooths():
    x = torch.zeros(1, 9, 2, 32, 32)
    x[0, 4, :, 16, 16] = 1.0
    b = make_baseline(x, "blur", (1.0, 2.0, 2.0))
    assert b.shape == x.shape
    assert float(b.sum()) == pytest.approx(float(x.sum()), rel=1e-3)
    assert float(b.max()) < 0.1
    assert torch.equal(make_baseline(x, "zero", (1, 1, 1)), torch.zeros_like(x))
    with pytest.raises(UsageError):
        make_baseline(x, "noise", (1, 1, 1))


def test_internal_batch_size_is_bounded():
    cpu = torch.device("cpu")
    assert internal_batch_size(27, 64, 50, cpu) == 29
    assert internal_batch_size(27, 64, 10, cpu) == 10
    assert internal_batch_size(80, 224, 50, cpu) == 1  # one sequence at a time, never zero


def test_grad_cam_is_non_negative_on_the_slice_grid():
    scan_model, slice_model = _model(seed=4)
    x = _input(scan_model, seed=5, shape=(1, 3, 3, 20, 26))[0]
    cams = [grad_cam(slice_model, x, target=t, image_size=SIZE) for t in (0, 1)]
    for cam in cams:
        assert cam.shape == (3, 20, 26)
        assert (cam >= 0).all()
        assert (cam[:, :, 0] == 0).all()  # cut by the centre crop: never seen by the network
    assert max(cam.max() for cam in cams) > 0
    assert not np.allclose(cams[0], cams[1])


@pytest.mark.gpu
@cuda
def test_integrated_gradients_on_cuda_match_the_cpu():
    model, _ = _model(seed=6)  # ResNet18 and the Bi-LSTM: cuDNN must be kept out
    x = _input(model, seed=7)
    b = torch.zeros_like(x)
    on_cpu = integrated_gradients(model, x, b, target=1, n_steps=16)
    model.cuda()
    on_gpu = integrated_gradients(model, x.cuda(), b.cuda(), target=1, n_steps=16)
    np.testing.assert_allclose(on_gpu.attribution, on_cpu.attribution, atol=1e-3, rtol=1e-2)
    assert on_gpu.delta == pytest.approx(on_cpu.delta, abs=1e-3)
