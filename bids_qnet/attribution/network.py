"""A differentiable path from a participant's stored slices to Q-Net's scan logits.

The group level predicts in two steps that cannot be differentiated through: slice
embeddings are computed under ``torch.inference_mode()`` (stage 1, or the participant level
with ``--stage1 frozen``), then Q-Net reads them. :class:`SliceToScan` chains the same steps as
one ``torch.nn.Module``, so attribution methods can follow the gradient from the scan logits
back to the pixels of every slice:

* ``--stage1 train``: the stage-1 test transform (:func:`bids_qnet.training.augment.test_transform`:
  per-image histogram stretch, pad to a square, centre crop, resize, ImageNet normalisation),
  the fold's ResNetSWA without its head, then the fold's Q-Net;
* ``--preset quantitative``: the slices as stored (no stretch, no resizing; the regional
  network standardises them itself), the fold's regional ResNetSWA without its head (it is told
  each slice's position), the fold's Q-Net, plus Q-Net's regional read-out of the same slices;
* ``--stage1 frozen``: the participant level's preprocessing
  (:func:`bids_qnet.models.embedding.embed_slices`: pad to a square, resize, normalisation), the
  participant level's backbone, then the fold's Q-Net.

The per-image histogram stretch is invariant to the scale and offset of its input, so a straight
path from a black image to the slice (Integrated Gradients with a zero baseline) would see a
constant network. :class:`SliceToScan` therefore applies it first, outside the attributed
function (:meth:`SliceToScan.to_input`): those attributions are relative to the stretched
slices, the image the network's geometric preprocessing starts from. :class:`StoredToScan`
differentiates through the stretch too, for paths between two structured images (the
class-reference attributions of :mod:`bids_qnet.attribution.contrast`). Both work on the stored
slice grid.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from bids_qnet.errors import InputDataError
from bids_qnet.models.embedding import channel_statistics, square_resize
from bids_qnet.models.qnet import QNet
from bids_qnet.training.augment import HistogramStretch, test_transform

LOGGER = logging.getLogger(__name__)


class SquareResize(nn.Module):
    """The participant level's geometry: zero-pad to a centred square, resize (antialiased)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return square_resize(x, self.size)


def normalisation(n_channels: int) -> v2.Normalize:
    """Return the ImageNet normalisation the embedding code uses for ``n_channels`` channels."""
    mean, std = channel_statistics(n_channels)
    return v2.Normalize(list(mean), list(std))


def stage1_geometry(image_size: int, n_channels: int) -> tuple[nn.Module, nn.Module]:
    """Split the stage-1 test transform into its geometric part and its normalisation.

    Returns
    -------
    geometry : torch.nn.Module
        Pad to a square, centre crop, resize: ``(N, C, H, W) -> (N, C, S, S)``, linear.
    normalise : torch.nn.Module
        The ImageNet normalisation.
    """
    steps = list(test_transform(int(image_size), int(n_channels)).transforms)
    if not isinstance(steps[0], HistogramStretch) or not isinstance(steps[-1], v2.Normalize):
        raise InputDataError("the stage-1 test transform changed: expected stretch ... normalise")
    return nn.Sequential(*steps[1:-1]), steps[-1]


def participant_geometry(image_size: int, n_channels: int) -> tuple[nn.Module, nn.Module]:
    """Return the participant level's geometric preprocessing and normalisation.

    See :func:`bids_qnet.models.embedding.embed_slices`; both parts as for :func:`stage1_geometry`.
    """
    return SquareResize(image_size), normalisation(n_channels)


class SliceToScan(nn.Module):
    """``(B, T, C, H, W)`` slices -> ``(B, K)`` Q-Net scan logits, differentiable end to end.

    Parameters
    ----------
    backbone : torch.nn.Module
        ``(N, C, S, S) -> (N, 512)``: ResNetSWA without its head, or the participant level's
        ResNet18 feature extractor.
    qnet : QNet
        The fold's stage-2 model.
    geometry, normalise : torch.nn.Module
        Preprocessing of the network input (see :func:`stage1_geometry` and
        :func:`participant_geometry`).
    stretch : bool
        Whether the stage-1 per-image histogram stretch comes first (``--stage1 train``); it is
        applied by :meth:`to_input`, not by :meth:`forward`.
    readout : torch.nn.Module, optional
        Q-Net's regional read-out (:class:`bids_qnet.models.readout.RegionalReadout`), whose
        logits of the attributed input are added to the Bi-LSTM's.

    Notes
    -----
    Every sequence of a batch has all ``T`` slices (scans attributed together have stacks of one
    shape); the model is put in eval mode (dropout off, BatchNorm statistics fixed), so the
    sequences of a batch do not interact.
    """

    def __init__(
        self,
        backbone: nn.Module,
        qnet: QNet,
        geometry: nn.Module,
        normalise: nn.Module,
        stretch: bool,
        readout: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.readout = readout
        self.qnet = qnet
        self.geometry = geometry
        self.normalise = normalise
        self.stretch = HistogramStretch() if stretch else None
        self.eval()

    def to_input(self, slices: Tensor) -> Tensor:
        """Map stored slices ``(B, T, C, H, W)`` to the attributed input (detached)."""
        self._check(slices)
        if self.stretch is None:
            return slices.detach().float()
        b, t = slices.shape[:2]
        with torch.no_grad():
            flat = self.stretch(slices.detach().float().flatten(0, 1))
        return flat.view(b, t, *flat.shape[1:])

    def features(self, x: Tensor) -> Tensor:
        """Return the ``(B, T, 512)`` slice embeddings of attributed inputs ``x``."""
        self._check(x)
        b, t = x.shape[:2]
        images = self.normalise(self.geometry(x.flatten(0, 1)))
        if getattr(self.backbone, "uses_positions", False):
            positions = torch.arange(t, device=x.device).repeat(b)
            return self.backbone(images, positions).reshape(b, t, -1)
        return self.backbone(images).reshape(b, t, -1)

    def forward(self, x: Tensor) -> Tensor:
        """Return the ``(B, K)`` scan logits of attributed inputs ``x`` (see :meth:`to_input`)."""
        _, scan_logits = self.qnet(self.features(x))
        if self.readout is not None:
            scan_logits = scan_logits + self.readout(x)
        return scan_logits

    def scan_logits(self, slices: Tensor) -> Tensor:
        """Return the scan logits of stored slices (stretch, then :meth:`forward`)."""
        return self(self.to_input(slices))

    @staticmethod
    def _check(x: Tensor) -> None:
        if x.ndim != 5:
            raise InputDataError(f"expected slices of shape (B, T, C, H, W), got {tuple(x.shape)}")


class StoredToScan(nn.Module):
    """``(B, T, C, H, W)`` stored slices -> scan logits, with the per-image stretch inside.

    Unlike :meth:`SliceToScan.forward`, the stage-1 histogram stretch is differentiated
    (through its percentiles), so attributions land on the stored slices and see how one
    region's intensity rescales every other: what the network sees when a bright region gets
    brighter. A straight path from a constant image is degenerate here (the stretch ignores
    scale and offset); use a structured baseline such as another class's mean slices.
    """

    def __init__(self, model: SliceToScan) -> None:
        super().__init__()
        self.model = model

    def forward(self, slices: Tensor) -> Tensor:  # noqa: D102
        if self.model.stretch is None:
            return self.model(slices)
        b, t = slices.shape[:2]
        flat = self.model.stretch(slices.flatten(0, 1))
        return self.model(flat.view(b, t, *flat.shape[1:]))


class CentredLogit(nn.Module):
    """Wrap a logit model: subtract the mean over classes (the softmax is unchanged).

    For two classes the centred logit of class 1 is half the log-odds and that of class 0 its
    negative, so an attribution toward one class is exactly minus the one toward the other.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        logits = self.model(x)
        return logits - logits.mean(dim=1, keepdim=True)


class SliceClassifier(nn.Module):
    """The stage-1 classifier behind its test preprocessing, for Grad-CAM on attributed input.

    ``(N, C, H, W)`` stretched slices -> ``(N, K)`` logits.
    """

    def __init__(self, classifier: nn.Module, geometry: nn.Module, normalise: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.geometry = geometry
        self.normalise = normalise
        self.eval()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.classifier(self.normalise(self.geometry(x)))


def pull_back(geometry: nn.Module, maps: Tensor, slice_shape: tuple[int, int]) -> Tensor:
    """Carry maps on the network-input grid back onto the slice grid.

    The geometric preprocessing ``G`` (pad, crop, resize) is linear; a map ``m`` on its output
    grid is carried back with its adjoint and normalised by the adjoint of ones,
    ``G^T m / G^T 1``, i.e. each slice pixel gets the weighted mean of the network pixels it
    feeds. Pixels the network never sees (cut by the centre crop) get 0.

    Parameters
    ----------
    geometry : torch.nn.Module
        From :func:`stage1_geometry` or :func:`participant_geometry`.
    maps : Tensor
        ``(N, M, S, S)`` maps on the network-input grid.
    slice_shape : tuple of int
        ``(H, W)`` of the stored slices.

    Returns
    -------
    Tensor
        ``(N, M, H, W)``.
    """
    n, m = maps.shape[:2]
    with torch.enable_grad():
        probe = torch.zeros(n * m, 1, *slice_shape, dtype=maps.dtype, requires_grad=True)
        out = geometry(probe)
        if tuple(out.shape[-2:]) != tuple(maps.shape[-2:]):
            raise InputDataError(f"maps {tuple(maps.shape)} do not fit the network input")
        (back,) = torch.autograd.grad(out, probe, maps.detach().reshape(out.shape))
        ones = torch.zeros(1, 1, *slice_shape, dtype=maps.dtype, requires_grad=True)
        (weight,) = torch.autograd.grad(geometry(ones), ones, torch.ones_like(out[:1]))
    weight = weight.reshape(1, 1, *slice_shape)
    back = back.reshape(n, m, *slice_shape)
    return torch.where(weight > 1e-8, back / weight.clamp_min(1e-8), torch.zeros_like(back))
