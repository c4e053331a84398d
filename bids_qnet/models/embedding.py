"""Slice embeddings with a ResNet18 backbone (the 512-d global-average-pooled feature).

Nothing here downloads anything: ImageNet weights must already be in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``), as the container bakes them in at build time.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from bids_qnet.errors import InputDataError, MissingInputError, UsageError
from bids_qnet.models.backbone import ResNet18  # torchvision's network, without its import

logger = logging.getLogger(__name__)

#: torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` file; the 8 hex digits start its SHA-256.
IMAGENET_FILENAME = "resnet18-f37072fd.pth"

#: ImageNet channel statistics (RGB); other channel counts use their means for every channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Size of the feature :func:`embed_slices` returns.
EMBEDDING_DIM = 512

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from.

    Attributes
    ----------
    source : str
        ``"imagenet"``, ``"random"`` or ``"file"``.
    path : str or None
        The weights file (None for random initialisation).
    sha256 : str or None
        SHA-256 of that file (None for random initialisation).
    """

    source: str
    path: str | None
    sha256: str | None


def load_backbone(weights: str, n_channels: int, seed: int) -> tuple[torch.nn.Module, WeightsInfo]:
    """Build a ResNet18 feature extractor (512-d output) in eval mode.

    Parameters
    ----------
    weights : str
        ``"imagenet"``: torchvision's ImageNet weights from the hub cache
        (``torch.hub.get_dir()/checkpoints/`` + :data:`IMAGENET_FILENAME`), never downloaded,
        checked against the SHA-256 prefix in the file name. ``"random"``: initialisation from
        ``seed`` (the global torch RNG state is left as it was). Anything else: the path of a
        state dict (``torch.load(weights_only=True)``; a ``state_dict`` or ``model`` wrapper and
        a ``module.`` prefix are accepted, an ``fc.`` head is dropped), either for 3 input
        channels or already adapted to ``n_channels``.
    n_channels : int
        Input channels. For 3-channel weights and ``n_channels != 3`` the first convolution is
        adapted: 1 channel takes the sum of the RGB filters; N channels take the mean RGB filter
        repeated N times and scaled by 3/N (so a uniform input gives the same response).
    seed : int
        Seed for ``"random"``.

    Returns
    -------
    model : torch.nn.Module
        ResNet18 with ``fc`` replaced by ``Identity``, on the CPU, in eval mode.
    info : WeightsInfo

    Raises
    ------
    MissingInputError
        If the ImageNet file or the given path does not exist.
    InputDataError
        If a weights file is corrupt, fails its hash check or does not fit ResNet18.
    UsageError
        If ``n_channels`` is below 1.
    """
    if int(n_channels) < 1:
        raise UsageError(f"n_channels must be at least 1, got {n_channels}")
    n_channels = int(n_channels)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = ResNet18()
            _adapt_conv1(model, n_channels)
        info = WeightsInfo("random", None, None)
    else:
        if weights == "imagenet":
            path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME
            if not path.is_file():
                raise MissingInputError(
                    f"ImageNet ResNet18 weights not found at {path} (TORCH_HOME="
                    f"{_torch_home_text()}); bids_qnet never downloads them: place "
                    f"{IMAGENET_FILENAME} there, or pass --embedding-weights random|PATH"
                )
            digest = _sha256(path)
            _check_name_hash(path, digest)
            source = "imagenet"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise MissingInputError(
                    f"--embedding-weights file {path} does not exist "
                    "(use imagenet, random or the path of a ResNet18 state dict)"
                )
            digest = _sha256(path)
            source = "file"
        state = _read_state_dict(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = ResNet18()
        _load_state(model, state, path, n_channels)
        info = WeightsInfo(source, str(path), digest)
    model.fc = torch.nn.Identity()
    model.eval()
    logger.debug("ResNet18 backbone: %s, %d input channel(s)", info, n_channels)
    return model, info


def embed_slices(
    model: torch.nn.Module,
    stack: np.ndarray,
    image_size: int,
    batch_size: int,
    device: torch.device | str,
) -> np.ndarray:
    """Embed each slice of a stack with the backbone.

    Each slice is zero-padded on its short side to a centred square (aspect ratio kept;
    0 is the stretched background), resized to ``image_size`` x ``image_size`` (bilinear,
    antialiased), normalised with the ImageNet mean and standard deviation (for C != 3 the
    means of the three values, for every channel) and passed through the model in batches
    under ``torch.inference_mode()``, channels-last (oneDNN's faster layout on the CPU, tensor
    cores on CUDA) and on CUDA in bfloat16 autocast. On the CPU results are deterministic and
    independent of ``batch_size`` up to float rounding.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`load_backbone`; moved to ``device`` and to the channels-last memory format
        (values unchanged). Run in eval mode, its training flag is restored afterwards.
    stack : numpy.ndarray
        ``(S, C, H, W)`` float32 slices in ``[0, 1]``
        (:func:`bids_qnet.preprocess.crop.slice_stack` after
        :func:`bids_qnet.preprocess.crop.stretch`).
    image_size : int
        Side of the square the slices are resized to.
    batch_size : int
        Slices per forward pass.
    device : torch.device or str
        Where to run (see :func:`resolve_device`).

    Returns
    -------
    numpy.ndarray
        ``(S, 512)`` float32 features.

    Raises
    ------
    InputDataError
        If ``stack`` is not 4D, holds non-finite values or has a channel count the model's
        first convolution does not take.
    UsageError
        For a non-positive ``image_size`` or ``batch_size``.
    """
    stack = np.asarray(stack)
    if stack.ndim != 4:
        raise InputDataError(f"slice stack must be (S, C, H, W), got shape {stack.shape}")
    if int(image_size) < 1 or int(batch_size) < 1:
        raise UsageError(f"image_size and batch_size must be positive ({image_size}, {batch_size})")
    if not np.isfinite(stack).all():
        raise InputDataError("slice stack holds NaN or infinite values; stretch it first")
    n_slices, n_channels = stack.shape[:2]
    conv1 = getattr(model, "conv1", None)
    if conv1 is not None and conv1.in_channels != n_channels:
        raise InputDataError(
            f"slice stack has {n_channels} channel(s) but the backbone takes {conv1.in_channels}"
        )
    if n_slices == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    device = torch.device(device)
    was_training = model.training
    # channels-last: tensor cores on CUDA; on the CPU oneDNN's convolutions take 0.7x the time
    model.to(device=device, memory_format=torch.channels_last)
    model.eval()
    try:
        features = _embed_batches(model, stack, int(image_size), int(batch_size), device)
    finally:
        model.train(was_training)
    result = features.numpy().astype(np.float32, copy=False)
    if result.shape[1] != EMBEDDING_DIM:
        raise InputDataError(f"backbone returned {result.shape[1]} features, not {EMBEDDING_DIM}")
    return result


def _embed_batches(model, stack, image_size: int, batch_size: int, device) -> torch.Tensor:
    """Pad, resize and normalise each batch of slices on the device; return the features.

    The stack goes to the device in one copy and the features come back in one: no batch waits
    for a transfer, so on CUDA the host queues the next batch while the device computes (a
    participant's stack is a few MB).
    """
    mean, std = channel_statistics(stack.shape[1])
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    use_cuda = device.type == "cuda"
    features = []
    with torch.inference_mode():
        slices = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
        if use_cuda:  # page-locked: one DMA copy, asynchronous (the CPU keeps the array as is)
            slices = slices.pin_memory().to(device, non_blocking=True)
        for start in range(0, len(slices), batch_size):
            batch = (square_resize(slices[start : start + batch_size], image_size) - mean_t) / std_t
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
                out = model(batch)
            features.append(out.float().reshape(out.shape[0], -1))
        return torch.cat(features).cpu()


def channel_statistics(n_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the per-channel mean and SD that normalise a network input.

    ImageNet's for three channels (RGB); for any other count, the means of those three values
    for every channel.
    """
    if int(n_channels) == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    n = int(n_channels)
    return (float(np.mean(IMAGENET_MEAN)),) * n, (float(np.mean(IMAGENET_STD)),) * n


# --------------------------------------------------------------------------------------------
# helpers


def square_resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) to a centred square, then resize to size x size.

    Bilinear and antialiased. Enlarging, the antialiased kernel is plain bilinear interpolation
    (equal to 1e-7), which CUDA computes faster: there it is used instead; on the CPU the
    antialiased kernel is the faster of the two.
    """
    height, width = batch.shape[-2:]
    side = max(height, width)
    pad_h, pad_w = side - height, side - width
    if pad_h or pad_w:
        batch = F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    if side != size:
        antialias = side > size or batch.device.type != "cuda"
        batch = F.interpolate(
            batch, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return batch


def _adapt_conv1(model: torch.nn.Module, n_channels: int) -> None:
    """Replace the first convolution's 3 input channels by ``n_channels`` (see load_backbone)."""
    conv = model.conv1
    if conv.in_channels == n_channels:
        return
    weight = conv.weight.detach()
    if n_channels == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        new_weight = weight.mean(dim=1, keepdim=True).repeat(1, n_channels, 1, 1)
        new_weight = new_weight * (3.0 / n_channels)
    new_conv = torch.nn.Conv2d(
        n_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new_conv.weight.copy_(new_weight)
    model.conv1 = new_conv


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise InputDataError(f"weights file {path} cannot be read as a state dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputDataError(f"weights file {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, n_channels: int
) -> None:
    """Load ``state`` into a fresh ResNet18, adapting conv1 before or after as it fits."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise InputDataError(f"weights file {path} has no ResNet18 conv1.weight")
    file_channels = int(conv1.shape[1])
    if file_channels not in (3, n_channels):
        raise InputDataError(
            f"weights file {path} is for {file_channels} input channels, "
            f"neither 3 nor the {n_channels} channel(s) in use"
        )
    if file_channels == n_channels:
        _adapt_conv1(model, n_channels)
    expected = {k for k in model.state_dict() if not k.startswith("fc.")}
    # Weights saved before torch 0.4.1 (torchvision's ImageNet file among them) lack the
    # BatchNorm counters; they are not used in eval mode.
    state = dict(state)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        raise InputDataError(
            f"weights file {path} does not fit ResNet18: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unknown keys {unknown[:5]}"
            f"{'...' if len(unknown) > 5 else ''}"
        )
    fc = {k: v for k, v in model.state_dict().items() if k.startswith("fc.")}
    try:
        model.load_state_dict({**state, **fc}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputDataError(f"weights file {path} does not fit ResNet18: {first}") from exc
    if file_channels != n_channels:
        _adapt_conv1(model, n_channels)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_name_hash(path: Path, digest: str) -> None:
    """Check torchvision's convention: the hex digits at the end of the name start the hash."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        raise InputDataError(f"weights file {path} carries no hash prefix in its name")
    if not digest.startswith(match.group(1)):
        raise InputDataError(
            f"weights file {path} is corrupt or not the expected file: its SHA-256 starts "
            f"{digest[:8]}, its name says {match.group(1)}; replace it"
        )


def _torch_home_text() -> str:
    import os

    value = os.environ.get("TORCH_HOME")
    return value if value else "unset"
