"""Stage 1: ResNet18 classifier, augmentation, SWA training, prediction, embeddings, weights I/O.

Tiny synthetic data (class 1 carries a bright blob) and 32 x 32 inputs keep the file quick on
2 CPU cores; one training run is shared by most tests.
"""

import numpy as np
import pytest
import torch
from torch import nn

from bids_qnet.errors import InputDataError, MissingInputError, UsageError
from bids_qnet.models.embedding import IMAGENET_MEAN, IMAGENET_STD
from bids_qnet.models.resnet import build_classifier, features, load_classifier
from bids_qnet.outputs.atomic import write_checkpoint
from bids_qnet.training import augment
from bids_qnet.training.checkpoints import load_state
from bids_qnet.training.stage1 import (
    Stage1Config,
    embed_slices_with,
    predict_and_embed,
    predict_slices,
    slice_dataset,
    train_stage1,
)

SIZE = 32
OFF = {key: 0.0 for key in augment.DEFAULT_PROBABILITIES}


def _stacks(n_participants=12, n_slices=6, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    stacks, labels = [], []
    for p in range(n_participants):
        label = p % 2
        stack = rng.uniform(0.0, 0.3, (n_slices, 3, size, size)).astype(np.float32)
        if label:
            stack[:, :, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] += 0.6
        stacks.append(stack)
        labels.append(label)
    return stacks, labels


def _memmaps(stacks, folder):
    out = []
    for i, stack in enumerate(stacks):
        np.save(folder / f"stack{i}.npy", stack)
        out.append(np.load(folder / f"stack{i}.npy", mmap_mode="r"))
    return out


def _config(**changes):
    base = dict(epochs=3, batch_size=24, lr=1e-3, lr_min=3e-4, swa_start=0.5)
    base.update(image_size=SIZE, weights="random", seed=0, device="cpu")
    return Stage1Config(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    stacks, labels = _stacks()
    stacks = _memmaps(stacks, tmp_path_factory.mktemp("stacks"))
    records = []
    result = train_stage1(stacks, labels, 2, _config(), progress=records.append)
    return stacks, labels, result, records


# ------------------------------------------------------------------------------------ model


def test_build_classifier_and_features_share_weights():
    model, info = build_classifier(3, 4, "random", seed=3)
    assert info.source == "random" and not model.training
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 4
    again, _ = build_classifier(3, 4, "random", seed=3)
    assert torch.equal(model.fc.weight, again.fc.weight)
    trunk = features(model)
    assert isinstance(model.fc, nn.Linear) and isinstance(trunk.fc, nn.Identity)
    assert trunk.conv1.weight.data_ptr() == model.conv1.weight.data_ptr()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        embedding, logits, head = trunk(x), model(x), model.fc(trunk(x))
    assert embedding.shape == (2, 512) and logits.shape == (2, 4)
    torch.testing.assert_close(head, logits)
    with pytest.raises(UsageError):
        build_classifier(3, 1, "random", seed=0)


# ----------------------------------------------------------------------------- augmentation


def _denormalise(y, n_channels=3):
    mean = torch.tensor(IMAGENET_MEAN if n_channels == 3 else [np.mean(IMAGENET_MEAN)] * n_channels)
    std = torch.tensor(IMAGENET_STD if n_channels == 3 else [np.mean(IMAGENET_STD)] * n_channels)
    return y * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


@pytest.mark.parametrize("n_channels", [1, 3])
def test_augmentation_shape_range_and_seed(n_channels):
    x = torch.rand(6, n_channels, 20, 26)
    transform = augment.train_transform(24, n_channels, {k: 1.0 for k in OFF})
    torch.manual_seed(5)
    first = transform(x)
    torch.manual_seed(5)
    second = transform(x)
    assert first.shape == (6, n_channels, 24, 24) and torch.equal(first, second)
    images = _denormalise(first, n_channels)
    assert images.min() >= -1e-5 and images.max() <= 1 + 1e-5
    torch.manual_seed(6)
    assert not torch.equal(transform(x), first)


def test_test_transform_is_deterministic_and_draws_nothing():
    x = torch.rand(4, 3, 20, 26)
    transform = augment.test_transform(SIZE, 3)
    state = torch.get_rng_state()
    out = transform(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, transform(x)) and out.shape == (4, 3, SIZE, SIZE)
    # stretching: each channel of each image spans [0, 1] before the crop
    stretched = augment.HistogramStretch()(x)
    assert stretched.amin(dim=(2, 3)).max() == 0 and stretched.amax(dim=(2, 3)).min() == 1


def test_flips_really_flip_per_sample():
    x = torch.rand(64, 3, 8, 8)
    assert torch.equal(augment.RandomFlip(-1, p=1.0)(x), x.flip(-1))
    assert torch.equal(augment.RandomFlip(-2, p=1.0)(x), x.flip(-2))
    assert torch.equal(augment.RandomFlip(-1, p=0.0)(x), x)
    same = x[:1].expand(64, -1, -1, -1)
    out = augment.RandomFlip(-1, p=0.5)(same)
    flipped = (out == same.flip(-1)).flatten(1).all(1)
    assert 0 < int(flipped.sum()) < 64  # drawn per sample
    # through the whole pipeline: a bright left half ends up on the right
    image = torch.zeros(2, 3, 30, 30)
    image[..., :15] = 1.0
    image += 0.01 * torch.rand_like(image)
    out = augment.train_transform(SIZE, 3, {**OFF, "hflip": 1.0})(image)
    assert (out[..., SIZE // 2 :].mean() > out[..., : SIZE // 2].mean()).item()


def test_geometric_steps_identity_and_change():
    x = augment.PadToSquare()(torch.rand(5, 3, 20, 26))
    assert x.shape[-2:] == (26, 26)
    torch.testing.assert_close(augment.RandomGridDistortion(limit=0.0, p=1.0)(x), x)
    torch.testing.assert_close(augment.RandomShiftScaleRotate(0, 0, 0, p=1.0)(x), x)
    warped = augment.RandomGridDistortion(p=1.0)(x)
    assert warped.shape == x.shape and not torch.allclose(warped, x)
    assert warped.min() >= 0 and warped.max() <= 1


def test_augmentation_rejects_bad_input():
    with pytest.raises(InputDataError):
        augment.test_transform(SIZE, 3)(torch.rand(2, 1, 8, 8))
    with pytest.raises(UsageError):
        augment.train_transform(SIZE, 3, {"mixup": 0.5})
    with pytest.raises(UsageError):
        augment.train_transform(0, 3)


# ---------------------------------------------------------------------------------- training


def test_slice_dataset_reads_memmaps(trained):
    stacks, labels, _, _ = trained
    dataset = slice_dataset(stacks, labels)
    assert len(dataset) == 12 * 6
    image, label, participant, index = dataset[7]
    assert isinstance(stacks[1], np.memmap)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert (label, participant, index) == (1, 1, 1)
    assert np.array_equal(image.numpy(), stacks[1][1])
    with pytest.raises(InputDataError):
        slice_dataset(stacks, labels[:-1])


def test_training_learns(trained):
    _, _, result, records = trained
    history = result.history
    assert records == history and [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] > 0.8
    assert history[0]["lr"] == pytest.approx(1e-3) and history[-1]["lr"] < 1e-3
    assert [r["swa"] for r in history] == [False, True, True]
    assert all(r["seconds"] > 0 for r in history)
    assert result.weights.source == "random"


def test_swa_state_and_recomputed_batchnorm(trained):
    stacks, _, result, _ = trained
    last, swa = result.last_state, result.swa_state
    assert last.keys() == swa.keys() and "fc.weight" in swa
    assert not torch.equal(last["conv1.weight"], swa["conv1.weight"])
    # update_bn reset the counters and ran once over the 72 training slices (3 batches of 24)
    assert int(swa["bn1.num_batches_tracked"]) == 3
    assert int(last["bn1.num_batches_tracked"]) == 3 * 3
    assert not torch.allclose(last["bn1.running_mean"], swa["bn1.running_mean"])
    # ... on the test-transformed slices: bn1's mean is that of conv1's output on them
    model = load_classifier(swa, 3, 2)
    images = augment.test_transform(SIZE, 3)(torch.from_numpy(np.concatenate(stacks)))
    with torch.inference_mode():
        expected = model.conv1(images).mean(dim=(0, 2, 3))
    torch.testing.assert_close(swa["bn1.running_mean"], expected, rtol=1e-4, atol=1e-5)


def test_same_seed_same_logits():
    stacks, labels = _stacks(4, 3, seed=1)
    config = _config(epochs=2, batch_size=12, swa_start=0.5)
    before = torch.get_rng_state()
    first = train_stage1(stacks, labels, 2, config)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    second = train_stage1(stacks, labels, 2, config)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    assert all(torch.equal(v, second.swa_state[k]) for k, v in first.swa_state.items())
    logits = predict_slices(load_classifier(first.swa_state, 3, 2), stacks, SIZE, 5, "cpu")
    again = predict_slices(load_classifier(second.swa_state, 3, 2), stacks, SIZE, 5, "cpu")
    assert all(np.array_equal(x, y) for x, y in zip(logits, again, strict=True))


def test_predict_and_embed_shapes(trained):
    stacks, labels, result, _ = trained
    model = load_classifier(result.swa_state, 3, 2)
    model.train()
    logits = predict_slices(model, stacks, SIZE, 16, "cpu")
    assert model.training  # flag restored
    assert len(logits) == 12 and all(a.shape == (6, 2) and a.dtype == np.float32 for a in logits)
    accuracy = np.mean([(a.argmax(1) == y).mean() for a, y in zip(logits, labels, strict=True)])
    assert accuracy > 0.8
    uneven = [stacks[0][:2], stacks[1], stacks[2][:0]]
    embeddings = embed_slices_with(model, uneven, SIZE, 5, "cpu")
    assert [e.shape for e in embeddings] == [(2, 512), (6, 512), (0, 512)]
    batch_invariant = predict_slices(model, uneven, SIZE, 1, "cpu")[1]
    np.testing.assert_allclose(batch_invariant, logits[1], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputDataError):
        predict_slices(model, [np.zeros((2, 1, SIZE, SIZE), np.float32)], SIZE, 4, "cpu")


def test_one_pass_equals_two(trained):
    stacks, _, result, _ = trained
    model = load_classifier(result.swa_state, 3, 2)
    uneven = [stacks[0][:2], stacks[1], stacks[2][:0]]
    logits, embeddings = predict_and_embed(model, uneven, SIZE, 5, "cpu")
    expected_logits = predict_slices(model, uneven, SIZE, 5, "cpu")
    expected_embeddings = embed_slices_with(model, uneven, SIZE, 5, "cpu")
    assert [a.shape for a in logits] == [(2, 2), (6, 2), (0, 2)]
    for got, want in zip(logits + embeddings, expected_logits + expected_embeddings, strict=True):
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_save_load_round_trip(trained, tmp_path):
    _, _, result, _ = trained
    path = tmp_path / "sub" / "stage1_swa.pt"
    write_checkpoint(path, result.swa_state)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    loaded = load_state(path)
    assert loaded.keys() == result.swa_state.keys() == raw.keys()
    assert all(torch.equal(loaded[k], v) for k, v in result.swa_state.items())
    with pytest.raises(MissingInputError):
        load_state(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputDataError):
        load_state(tmp_path / "bad.pt")
    with pytest.raises(InputDataError):
        load_classifier(loaded, 3, 5)


def test_invalid_settings_and_labels():
    stacks, labels = _stacks(2, 2)
    with pytest.raises(UsageError):
        train_stage1(stacks, labels, 2, _config(lr_min=1.0))
    with pytest.raises(UsageError):
        train_stage1(stacks, labels, 2, _config(epochs=0))
    with pytest.raises(InputDataError):
        train_stage1(stacks, [0, 2], 2, _config())
    with pytest.raises(InputDataError):
        train_stage1([stacks[0], stacks[1][:, :, :10]], labels, 2, _config())


@pytest.mark.gpu
def test_stage1_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.rand(8, 3, 20, 26)
    transform = augment.train_transform(SIZE, 3, {k: 1.0 for k in OFF})
    torch.manual_seed(2)
    on_cpu = transform(x)
    torch.manual_seed(2)
    on_gpu = transform(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)
    stacks, labels = _stacks(4, 3)
    result = train_stage1(stacks, labels, 2, _config(epochs=2, batch_size=6, device="cuda"))
    assert all(v.device.type == "cpu" for v in result.swa_state.values())
    model = load_classifier(result.swa_state, 3, 2)
    logits = predict_slices(model, stacks, SIZE, 4, "cuda")
    assert all(np.isfinite(a).all() and a.shape == (3, 2) for a in logits)
