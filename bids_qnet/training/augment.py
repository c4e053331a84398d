"""The paper's stage-1 augmentation, batched on tensors on any device.

Training, with each step's probability: histogram stretching (1), horizontal flip (0.5),
vertical flip (0.5), brightness and contrast (0.7), gamma (0.3), grid distortion (0.25),
shift-scale-rotate (0.5), cropping (1); test: stretching and cropping only. The ranges are
albumentations' defaults, which the paper's pipeline appears to use: brightness and contrast
+-0.2, gamma 0.8-1.2, grid distortion 5 steps +-30 %, shift +-6.25 %, scale +-10 %, rotation
+-45 degrees. Stretching maps each image's 1st-99th percentile of each channel to [0, 1].

Every random choice (whether a step applies, and its parameters, crop position included) is made
**per sample** with torch's global generator on the CPU and then moved to the batch's device, so
a seed (``torch.manual_seed``) gives the same images on any device up to float rounding. Only
the crop size is fixed: ``CROP_SCALE`` of the side. After stretching, slices are zero-padded to
a centred square (0 is the background), so rotations are isotropic and the final resize keeps
the aspect ratio, as :func:`bids_qnet.models.embedding.embed_slices` does.

Grid distortion is albumentations' GridDistortion rather than v2's ElasticTransform: each axis
is cut into ``num_steps`` cells whose widths are scaled by ``1 + U(-limit, limit)`` and mapped
piecewise linearly (one ``grid_sample``); unlike albumentations the cells are rescaled to span
the whole axis, so nothing is pushed out of or pulled into the frame. Steps are
``torch.nn.Module`` objects in a ``torchvision.transforms.v2.Compose``; resizing (bilinear,
antialiased), centre cropping and normalisation are torchvision v2 functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.models.embedding import channel_statistics

logger = logging.getLogger(__name__)

#: The paper's probabilities of the random training steps (keys of ``probabilities``).
DEFAULT_PROBABILITIES = {
    "hflip": 0.5,
    "vflip": 0.5,
    "brightness_contrast": 0.7,
    "gamma": 0.3,
    "grid_distortion": 0.25,
    "shift_scale_rotate": 0.5,
}

#: Side of the crop as a fraction of the (square-padded) slice.
CROP_SCALE = 0.9


def _uniform(n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n)


def _per_sample(x: Tensor, values: Tensor, p: float, neutral: float) -> Tensor:
    """(B, k, 1, 1): ``values[i]`` if a per-sample Bernoulli(p) draw says so, else ``neutral``."""
    values = values.view(len(values), -1)
    values = torch.where(torch.rand(len(values), 1) < p, values, neutral)
    return values.to(x.device, x.dtype)[:, :, None, None]


def _warp_some(x: Tensor, p: float, grid: Callable[[int, int, int], Tensor], pad: str) -> Tensor:
    """``grid_sample`` a Bernoulli(p) subset of the batch with ``grid(n, h, w)`` (n, h, w, 2)."""
    idx = torch.nonzero(torch.rand(x.shape[0]) < p).flatten().to(x.device)
    if idx.numel() == 0:
        return x
    coords = grid(idx.numel(), *x.shape[-2:]).to(x.device, x.dtype)
    out = x.clone()
    out[idx] = F.grid_sample(x[idx], coords, "bilinear", pad, align_corners=False)
    return out


class HistogramStretch(nn.Module):
    """Map each image's ``low``-``high`` percentile window to [0, 1] per channel, clipping."""

    def __init__(self, low: float = 1.0, high: float = 99.0) -> None:
        super().__init__()
        self.low, self.high = float(low), float(high)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        flat = x.flatten(2)
        q = torch.tensor([self.low, self.high], device=x.device, dtype=x.dtype) / 100.0
        lo, hi = torch.quantile(flat, q, dim=2, keepdim=True)  # each (B, C, 1)
        ok = hi - lo > 1e-6  # a flat image (e.g. an empty channel) is left as it is
        out = torch.where(ok, (flat - lo) / torch.where(ok, hi - lo, 1.0), flat)
        return out.clamp(0.0, 1.0).view_as(x)


class PadToSquare(nn.Module):
    """Zero-pad the short side to a centred square."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        ph, pw = max(x.shape[-2:]) - x.shape[-2], max(x.shape[-2:]) - x.shape[-1]
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)) if ph or pw else x


class RandomFlip(nn.Module):
    """Flip a sample along ``dim`` (-1 horizontal, -2 vertical) with probability ``p``."""

    def __init__(self, dim: int, p: float = 0.5) -> None:
        super().__init__()
        self.dim, self.p = int(dim), float(p)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        flip = _per_sample(x, torch.ones(x.shape[0]), self.p, 0.0) > 0
        return torch.where(flip, x.flip(self.dim), x)


class RandomBrightnessContrast(nn.Module):
    """``x * (1 + U(-contrast, contrast)) + U(-brightness, brightness)``, clipped to [0, 1]."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.7) -> None:
        super().__init__()
        self.brightness, self.contrast, self.p = float(brightness), float(contrast), float(p)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        n = x.shape[0]
        change = torch.stack((_uniform(n, -1, 1) * self.contrast, _uniform(n, -1, 1)), dim=1)
        change = _per_sample(x, change, self.p, 0.0)
        return (x * (1.0 + change[:, :1]) + change[:, 1:] * self.brightness).clamp(0.0, 1.0)


class RandomGamma(nn.Module):
    """``x ** U(low, high)`` per sample with probability ``p`` (x in [0, 1])."""

    def __init__(self, low: float = 0.8, high: float = 1.2, p: float = 0.3) -> None:
        super().__init__()
        self.low, self.high, self.p = float(low), float(high), float(p)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        gamma = _per_sample(x, _uniform(x.shape[0], self.low, self.high), self.p, 1.0)
        return x.clamp_min(0.0).pow(gamma)


class RandomGridDistortion(nn.Module):
    """albumentations-like GridDistortion (see the module docstring), probability ``p``."""

    def __init__(self, num_steps: int = 5, limit: float = 0.3, p: float = 0.25) -> None:
        super().__init__()
        if int(num_steps) < 1 or not 0.0 <= limit < 1.0:
            raise UsageError(f"grid distortion needs num_steps >= 1, 0 <= limit < 1 ({limit})")
        self.num_steps, self.limit, self.p = int(num_steps), float(limit), float(p)

    def _axis(self, n: int, length: int) -> Tensor:
        """(n, length) source coordinates in [-1, 1] of the pixel centres along one axis."""
        cells = 1.0 + _uniform(n * self.num_steps, -self.limit, self.limit).view(n, -1)
        knots = F.pad(torch.cumsum(cells, dim=1), (1, 0))
        knots = knots / knots[:, -1:]  # the cells span the whole axis
        t = (torch.arange(length) + 0.5) / length * self.num_steps
        k = t.floor().long().clamp(max=self.num_steps - 1)
        return 2.0 * (knots[:, k] + (t - k) * (knots[:, k + 1] - knots[:, k])) - 1.0

    def _grid(self, n: int, h: int, w: int) -> Tensor:
        gx = self._axis(n, w).view(n, 1, w).expand(n, h, w)
        return torch.stack((gx, self._axis(n, h).view(n, h, 1).expand(n, h, w)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return _warp_some(x, self.p, self._grid, "border")


class RandomShiftScaleRotate(nn.Module):
    """Per-sample shift, scale and rotation about the centre (zeros outside), probability ``p``.

    ``shift`` is a fraction of the side, ``scale`` a relative change, ``rotate`` in degrees.
    Expects square images (see :class:`PadToSquare`).
    """

    def __init__(
        self, shift: float = 0.0625, scale: float = 0.1, rotate: float = 45.0, p: float = 0.5
    ) -> None:
        super().__init__()
        self.shift, self.scale, self.rotate, self.p = map(float, (shift, scale, rotate, p))

    def _grid(self, n: int, h: int, w: int) -> Tensor:
        angle = _uniform(n, -self.rotate, self.rotate) * (math.pi / 180.0)
        scale = 1.0 + _uniform(n, -self.scale, self.scale)
        shift = 2.0 * _uniform(2 * n, -self.shift, self.shift).view(n, 2, 1)  # [-1, 1] units
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        inv = torch.stack((torch.stack((cos, sin), 1), torch.stack((-sin, cos), 1)), 1)
        theta = torch.cat((inv, -(inv @ shift)), dim=2)  # output -> input: inv (out - shift)
        return F.affine_grid(theta, [n, 1, h, w], align_corners=False)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return _warp_some(x, self.p, self._grid, "zeros")


class CropResize(nn.Module):
    """Crop a square of ``scale`` x the side (random position, or centred), resize to ``size``."""

    def __init__(self, size: int, scale: float = CROP_SCALE, random: bool = True) -> None:
        super().__init__()
        self.size, self.scale, self.random = int(size), float(scale), bool(random)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        (n, _, h, w), device = x.shape, x.device
        ch, cw = max(1, round(self.scale * h)), max(1, round(self.scale * w))
        if self.random:  # gather per-sample windows: (n, ch, cw, C) -> (n, C, ch, cw)
            rows = (torch.randint(0, h - ch + 1, (n, 1)) + torch.arange(ch)).to(device)
            cols = (torch.randint(0, w - cw + 1, (n, 1)) + torch.arange(cw)).to(device)
            batch = torch.arange(n, device=device).view(-1, 1, 1)
            x = x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        else:
            x = TF.center_crop(x, [ch, cw])
        if (ch, cw) != (self.size, self.size):
            x = TF.resize(x.contiguous(), [self.size, self.size], antialias=True)
        return x


class Pipeline(v2.Compose):
    """``v2.Compose`` of the steps that checks its ``(B, C, H, W)`` input (made float)."""

    def __init__(self, transforms: list[nn.Module], n_channels: int) -> None:
        super().__init__(transforms)
        self.n_channels = int(n_channels)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.ndim != 4 or x.shape[1] != self.n_channels:
            want = f"(B, {self.n_channels}, H, W)"
            raise InputDataError(f"augmentation expects {want} images, got {tuple(x.shape)}")
        return super().forward(x if x.is_floating_point() else x.float())


def _pipeline(image_size: int, n_channels: int, middle: list[nn.Module], random: bool):
    if int(image_size) < 1 or int(n_channels) < 1:
        raise UsageError(f"image_size and n_channels must be positive ({image_size}, {n_channels})")
    mean, std = (list(values) for values in channel_statistics(n_channels))
    steps = [HistogramStretch(), PadToSquare(), *middle, CropResize(image_size, random=random)]
    return Pipeline([*steps, v2.Normalize(mean, std)], n_channels)


def train_transform(
    image_size: int, n_channels: int, probabilities: Mapping[str, float] | None = None
) -> Pipeline:
    """Build the paper's training augmentation.

    Parameters
    ----------
    image_size : int
        Side of the square output.
    n_channels : int
        Channels C; the ImageNet normalisation uses the RGB values for 3 channels, else the mean
        of the three means and of the three standard deviations for every channel.
    probabilities : mapping, optional
        Overrides of :data:`DEFAULT_PROBABILITIES` by key (e.g. ``{"hflip": 1.0}``).

    Returns
    -------
    Pipeline
        ``(B, C, H, W)`` float in [0, 1] on any device -> ``(B, C, image_size, image_size)``
        normalised, same device; random draws from torch's global generator.

    Raises
    ------
    UsageError
        For a non-positive size, an unknown key or a probability outside [0, 1].
    """
    p = dict(DEFAULT_PROBABILITIES)
    for key, value in (probabilities or {}).items():
        if key not in p or not 0.0 <= float(value) <= 1.0:
            raise UsageError(f"augmentation probability {key}={value}: keys {sorted(p)}, [0, 1]")
        p[key] = float(value)
    middle = [
        RandomFlip(-1, p["hflip"]),
        RandomFlip(-2, p["vflip"]),
        RandomBrightnessContrast(p=p["brightness_contrast"]),
        RandomGamma(p=p["gamma"]),
        RandomGridDistortion(p=p["grid_distortion"]),
        RandomShiftScaleRotate(p=p["shift_scale_rotate"]),
    ]
    return _pipeline(image_size, n_channels, middle, random=True)


def test_transform(image_size: int, n_channels: int) -> Pipeline:
    """Build the deterministic test-time pipeline: stretching, centre crop, resize, normalise.

    Parameters
    ----------
    image_size, n_channels : int
        As for :func:`train_transform`.

    Returns
    -------
    Pipeline
        Input and output as :func:`train_transform`'s; draws no random numbers.
    """
    return _pipeline(image_size, n_channels, [], random=False)


test_transform.__test__ = False  # not a pytest test when imported into a test module


class RandomShift(nn.Module):
    """Shift every image of a batch by the same whole number of voxels (up to ``max_shift``).

    The quantitative preset's only augmentation: it mimics registration jitter against the
    fixed atlas regions and leaves every value, hence every physical unit, as it was. The
    shift (one per batch, wrapped around the border) is drawn with torch's global generator.
    """

    def __init__(self, max_shift: int = 1) -> None:
        super().__init__()
        self.max_shift = int(max_shift)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.max_shift < 1:
            return x
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(x, (int(dy), int(dx)), dims=(-2, -1))
