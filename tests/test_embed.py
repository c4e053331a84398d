import hashlib

import numpy as np
import pytest
import torch

from bids_qnet.errors import InputDataError, MissingInputError, UsageError
from bids_qnet.models import embedding as embed
from bids_qnet.models.device import resolve_device
from bids_qnet.models.embedding import (
    IMAGENET_FILENAME,
    WeightsInfo,
    embed_slices,
    load_backbone,
)

SIZE = 64  # small images keep the CPU tests fast


def _stack(n_slices, n_channels, height=20, width=14, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n_slices, n_channels, height, width)).astype(np.float32)


@pytest.mark.parametrize("n_channels", [1, 3, 5])
def test_embed_shape_and_channels(n_channels):
    model, info = load_backbone("random", n_channels, seed=0)
    assert info == WeightsInfo("random", None, None)
    assert not model.training
    assert model.conv1.in_channels == n_channels
    assert isinstance(model.fc, torch.nn.Identity)
    out = embed_slices(model, _stack(4, n_channels), SIZE, batch_size=3, device="cpu")
    assert out.shape == (4, 512) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])  # different slices, different features


def test_batch_size_invariance_and_determinism():
    model, _ = load_backbone("random", 3, seed=1)
    stack = _stack(9, 3)
    one = embed_slices(model, stack, SIZE, batch_size=1, device="cpu")
    seven = embed_slices(model, stack, SIZE, batch_size=7, device="cpu")
    np.testing.assert_allclose(one, seven, atol=1e-5, rtol=0)
    again = embed_slices(model, stack, SIZE, batch_size=7, device="cpu")
    np.testing.assert_array_equal(seven, again)


def test_random_weights_follow_seed_and_leave_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = load_backbone("random", 1, seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    b, _ = load_backbone("random", 1, seed=5)
    c, _ = load_backbone("random", 1, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], sc["layer1.0.conv1.weight"])


def test_conv1_adaptation_rules():
    rgb, _ = load_backbone("random", 3, seed=2)
    one, _ = load_backbone("random", 1, seed=2)
    five, _ = load_backbone("random", 5, seed=2)
    w = rgb.conv1.weight.detach()
    torch.testing.assert_close(one.conv1.weight.detach(), w.sum(1, keepdim=True))
    expected = w.mean(1, keepdim=True).repeat(1, 5, 1, 1) * 3 / 5
    torch.testing.assert_close(five.conv1.weight.detach(), expected)


def test_state_dict_path_round_trip(tmp_path):
    model, _ = load_backbone("random", 3, seed=3)
    path = tmp_path / "backbone.pt"
    torch.save(model.state_dict(), path)  # no fc keys (fc is Identity)
    loaded, info = load_backbone(str(path), 3, seed=99)
    assert info.source == "file" and info.path == str(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    stack = _stack(3, 3)
    np.testing.assert_array_equal(
        embed_slices(model, stack, SIZE, 2, "cpu"), embed_slices(loaded, stack, SIZE, 2, "cpu")
    )
    # a 1-channel backbone saved and reloaded for 1 channel
    mono, _ = load_backbone("random", 1, seed=3)
    torch.save({"state_dict": mono.state_dict()}, tmp_path / "mono.pt")
    mono2, _ = load_backbone(str(tmp_path / "mono.pt"), 1, seed=0)
    one = _stack(2, 1)
    np.testing.assert_array_equal(
        embed_slices(mono, one, SIZE, 2, "cpu"), embed_slices(mono2, one, SIZE, 2, "cpu")
    )
    # 3-channel file with a classification head, adapted to 5 channels on load
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    torch.save(full.state_dict(), tmp_path / "with_fc.pth")
    five, _ = load_backbone(str(tmp_path / "with_fc.pth"), 5, seed=0)
    torch.testing.assert_close(
        five.conv1.weight.detach(),
        full.conv1.weight.detach().mean(1, keepdim=True).repeat(1, 5, 1, 1) * 3 / 5,
    )


def test_state_dict_path_errors(tmp_path):
    with pytest.raises(MissingInputError):
        load_backbone(str(tmp_path / "nope.pt"), 3, seed=0)
    model, _ = load_backbone("random", 3, seed=0)
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer4.1.bn2.weight"]
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(InputDataError, match="bad.pt") as excinfo:
        load_backbone(str(bad), 3, seed=0)
    assert "layer4.1.bn2.weight" in str(excinfo.value) and "extra.weight" in str(excinfo.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputDataError, match="garbage.pt"):
        load_backbone(str(garbage), 3, seed=0)
    two = tmp_path / "two.pt"
    m2, _ = load_backbone("random", 2, seed=0)
    torch.save(m2.state_dict(), two)
    with pytest.raises(InputDataError, match="2 input channels"):
        load_backbone(str(two), 5, seed=0)


def test_imagenet_missing_is_reported_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(MissingInputError) as excinfo:
        load_backbone("imagenet", 3, seed=0)
    message = str(excinfo.value)
    assert "--embedding-weights" in message and str(tmp_path) in message
    assert IMAGENET_FILENAME in message and "\n" not in message
    assert not (tmp_path / "hub" / "checkpoints" / IMAGENET_FILENAME).exists()


def test_imagenet_file_with_wrong_content(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    model, _ = load_backbone("random", 3, seed=0)
    torch.save(model.state_dict(), checkpoints / IMAGENET_FILENAME)
    with pytest.raises(InputDataError, match="SHA-256"):
        load_backbone("imagenet", 3, seed=0)


def test_imagenet_path_loads_a_file_whose_hash_matches(tmp_path, monkeypatch):
    # the real file cannot be downloaded here: exercise the same path with a file named after
    # its own hash, in the torchvision convention (legacy file without BatchNorm counters).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in full.state_dict().items() if "num_batches_tracked" not in k}
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    staging = checkpoints / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    staging.rename(checkpoints / name)
    monkeypatch.setattr(embed, "IMAGENET_FILENAME", name)
    model, info = load_backbone("imagenet", 1, seed=0)
    assert info == WeightsInfo("imagenet", str(checkpoints / name), digest)
    torch.testing.assert_close(
        model.conv1.weight.detach(), full.conv1.weight.detach().sum(1, keepdim=True)
    )


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(UsageError):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="cuda") as excinfo:
        resolve_device("cuda")
    assert "\n" not in str(excinfo.value)
    assert resolve_device("auto") == torch.device("cpu")


def test_embed_input_checks():
    model, _ = load_backbone("random", 1, seed=0)
    with pytest.raises(InputDataError):
        embed_slices(model, np.zeros((2, 8, 8), np.float32), SIZE, 2, "cpu")
    nan = np.zeros((1, 1, 8, 8), np.float32)
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InputDataError):
        embed_slices(model, nan, SIZE, 2, "cpu")
    assert embed_slices(model, np.zeros((0, 1, 8, 8), np.float32), SIZE, 2, "cpu").shape == (0, 512)
    with pytest.raises(InputDataError, match="channel"):
        embed_slices(model, np.zeros((1, 3, 8, 8), np.float32), SIZE, 2, "cpu")
    model.train()
    embed_slices(model, np.zeros((1, 1, 8, 8), np.float32), SIZE, 2, "cpu")
    assert model.training  # the caller's mode is restored


def test_padding_keeps_aspect_ratio():
    # a wide slice is padded top and bottom; its content is not stretched vertically
    wide = torch.zeros(1, 1, 10, 20)
    wide[..., 4:6, :] = 1.0
    out = embed.square_resize(wide, 20)
    assert out.shape == (1, 1, 20, 20)
    rows = out[0, 0].sum(dim=1)
    assert torch.all(rows[:9] == 0) and torch.all(rows[11:] == 0) and rows[9:11].min() > 19


def test_enlarging_antialiased_is_plain_bilinear():
    # what lets square_resize skip the antialiased kernel when it enlarges on CUDA
    batch = torch.from_numpy(np.random.default_rng(5).random((2, 3, 58, 78), dtype=np.float32))
    square = torch.nn.functional.pad(batch, (0, 0, 10, 10))
    options = {"size": (224, 224), "mode": "bilinear", "align_corners": False}
    smooth = torch.nn.functional.interpolate(square, antialias=True, **options)
    plain = torch.nn.functional.interpolate(square, antialias=False, **options)
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(embed.square_resize(batch, 224), smooth, atol=0, rtol=0)
    shrunk = torch.nn.functional.interpolate(square, size=(32, 32), mode="bilinear")
    assert not torch.allclose(embed.square_resize(batch, 32), shrunk, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model, _ = load_backbone("random", 3, seed=4)
    stack = _stack(6, 3, 48, 40)
    cpu = embed_slices(model, stack, 112, 4, "cpu")
    gpu = embed_slices(model, stack, 112, 4, resolve_device("cuda"))
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    scale = np.abs(cpu).max()
    np.testing.assert_allclose(gpu, cpu, atol=0.05 * scale, rtol=0)  # bf16 autocast
    cos = (gpu * cpu).sum(1) / np.linalg.norm(gpu, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cos.min() > 0.99
