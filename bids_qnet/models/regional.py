"""The quantitative stage-1 network: convolutions at the crop's resolution, pooled per atlas region.

Iron changes the *level* of susceptibility and R2* inside a nucleus, or its pattern within the
nucleus. A network that only sees rescaled, resized images (ResNet18 behind a per-image stretch)
has to rediscover both from 40-100 participants; this one is told where the nuclei are:

1. the slice's channels are standardised with the training fold's mean and SD per channel
   (buffers), so a difference of 0.01 ppm stays a difference of 0.01 ppm;
2. a residual block of 3x3 convolutions (``width`` maps) computes local features at the crop's
   native resolution; the standardised channels are kept beside them;
3. every map is pooled inside each atlas region of the slice with the pooling weights of
   :func:`bids_qnet.preprocess.regions.slice_pooling_weights` (the region's mean and its
   anterior-posterior and left-right first moments): a slice embedding of
   ``regions x moments x (channels + width)`` numbers that keeps region levels and the shapes
   within them;
4. dropout and one linear layer give the slice's logits.

Slice ``t`` of every stack lies at the same template position, so the pooling weights are a
``(T, P, H, W)`` buffer indexed by the slice position, which :meth:`RegionalNet.forward` takes
beside the images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from bids_qnet.errors import InputDataError, UsageError


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch normalisation and an identity shortcut."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class RegionalNet(nn.Module):
    """Slice classifier with region-pooled features (module docstring).

    Parameters
    ----------
    n_channels : int
        Input channels C.
    n_classes : int
        Classes K.
    pooling : numpy.ndarray or Tensor
        ``(T, P, H, W)`` pooling weights per slice position.
    width : int
        Convolutional feature maps.
    dropout : float
        Dropout on the embedding before the head (training only).

    Attributes
    ----------
    embedding_dim : int
        ``P * (C + width)``; the embedding is region-major: feature ``p * (C + width) + j``
        is map ``j`` (the C standardised channels first) pooled with weights ``p``.
    """

    #: Marks networks whose forward pass takes the slice positions beside the images.
    uses_positions = True

    def __init__(
        self, n_channels: int, n_classes: int, pooling, width: int = 8, dropout: float = 0.3
    ) -> None:
        super().__init__()
        pooling = torch.as_tensor(np.asarray(pooling, dtype=np.float32))
        if pooling.ndim != 4 or min(int(n_channels), int(width)) < 1 or int(n_classes) < 2:
            raise UsageError(
                f"RegionalNet needs (T, P, H, W) pooling, channels, width >= 1 and 2+ classes; "
                f"got pooling {tuple(pooling.shape)}, {n_channels}, {width}, {n_classes}"
            )
        self.n_channels, self.width = int(n_channels), int(width)
        self.register_buffer("pooling", pooling)
        self.register_buffer("channel_mean", torch.zeros(self.n_channels))
        self.register_buffer("channel_scale", torch.ones(self.n_channels))
        self.stem = nn.Sequential(
            nn.Conv2d(self.n_channels, self.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.width),
            nn.ReLU(),
        )
        self.block = ResidualBlock(self.width)
        self.embedding_dim = int(pooling.shape[1]) * (self.n_channels + self.width)
        self.dropout = nn.Dropout(float(dropout))
        self.fc = nn.Linear(self.embedding_dim, int(n_classes))

    def set_standardisation(self, mean, scale) -> None:
        """Set the per-channel mean and SD the input is standardised with."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        scale = torch.as_tensor(np.asarray(scale, dtype=np.float32)).reshape(-1)
        if mean.shape != (self.n_channels,) or scale.shape != mean.shape:
            raise InputDataError(f"standardisation needs {self.n_channels} means and SDs")
        self.channel_mean.copy_(mean)
        self.channel_scale.copy_(scale.clamp_min(1e-6))

    def standardise(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / SD`` per channel."""
        return (x - self.channel_mean[:, None, None]) / self.channel_scale[:, None, None]

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Return the ``(N, embedding_dim)`` region-pooled embedding of ``(N, C, H, W)`` slices."""
        self._check(x, positions)
        z = self.standardise(x)
        maps = torch.cat([z, self.block(self.stem(z))], dim=1)
        weights = self.pooling[positions.to(self.pooling.device).long()]
        return torch.einsum("nchw,nphw->npc", maps, weights.to(maps.dtype)).flatten(1)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Return ``(N, K)`` logits of slices ``x`` at slice positions ``positions`` ``(N,)``."""
        return self.fc(self.dropout(self.embed(x, positions)))

    def trunk(self) -> nn.Module:
        """Return the network without its head: ``(x, positions) -> embedding`` (shared layers)."""
        return RegionalTrunk(self)

    def _check(self, x: Tensor, positions: Tensor) -> None:
        t, _, h, w = self.pooling.shape
        if x.ndim != 4 or x.shape[1] != self.n_channels or tuple(x.shape[2:]) != (h, w):
            raise InputDataError(
                f"RegionalNet takes (N, {self.n_channels}, {h}, {w}) slices, got {tuple(x.shape)}"
            )
        if positions.shape != (x.shape[0],):
            raise InputDataError(f"need one slice position per image, got {positions.shape}")
        if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= t):
            raise InputDataError(f"slice positions must lie in [0, {t}); the stacks differ")


class RegionalTrunk(nn.Module):
    """A :class:`RegionalNet` without its head (the slice embedding); layers are shared."""

    uses_positions = True

    def __init__(self, network: RegionalNet) -> None:
        super().__init__()
        self.network = network
        self.embedding_dim = network.embedding_dim

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:  # noqa: D102
        return self.network.embed(x, positions)


def load_regional(state: dict, n_channels: int, n_classes: int, width: int) -> RegionalNet:
    """Rebuild a :class:`RegionalNet` from its state dict (pooling weights included).

    Raises
    ------
    InputDataError
        If the state does not fit.
    """
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
    if "pooling" not in state:
        raise InputDataError("the state is not a regional network's (no pooling weights)")
    model = RegionalNet(n_channels, n_classes, state["pooling"].cpu().numpy(), width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[0]
        raise InputDataError(f"state does not fit the regional network: {message}") from exc
    return model.eval()
