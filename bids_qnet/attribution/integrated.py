"""Integrated Gradients through the whole Q-Net, and Grad-CAM on the stage-1 network.

Pure computation on tensors: no file is read or written here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from bids_qnet.attribution.network import CentredLogit, SliceClassifier, pull_back
from bids_qnet.errors import UsageError

LOGGER = logging.getLogger(__name__)

BASELINES = ("zero", "blur")
#: Standard deviation (mm) of the Gaussian that makes the blurred baseline.
BLUR_SIGMA_MM = 8.0
#: Network-input pixels held in one forward/backward pass (about 64 images of 224 x 224 on a
#: CPU, 8 times more on a GPU): bounds the memory of the Integrated Gradients steps.
PIXEL_BUDGET = {"cpu": 64 * 224 * 224, "cuda": 512 * 224 * 224}


@dataclass(frozen=True)
class IGResult:
    """Integrated Gradients of one scan.

    Attributes
    ----------
    attribution : numpy.ndarray
        ``(T, C, H, W)`` float32 attributions on the attributed input (stretched slices).
    output, baseline_output : float
        The explained output (target's centred logit) at the input and at the baseline.
    delta : float
        Convergence delta: sum of attributions minus (output - baseline_output).
    """

    attribution: np.ndarray
    output: float
    baseline_output: float
    delta: float

    @property
    def relative_delta(self) -> float:
        """``|delta| / |output - baseline_output|`` (inf when the outputs are equal)."""
        gap = abs(self.output - self.baseline_output)
        return abs(self.delta) / gap if gap > 0 else float("inf")


def make_baseline(x: Tensor, kind: str, sigma_vox: tuple[float, float, float]) -> Tensor:
    """Return the Integrated Gradients baseline of attributed slices ``x`` ``(1, T, C, H, W)``.

    Parameters
    ----------
    x : Tensor
        The attributed input of one scan.
    kind : {"zero", "blur"}
        ``zero``: a black image. ``blur``: a copy of ``x`` blurred in 3D, per channel, with a
        Gaussian of ``sigma_vox`` voxels along (slice, row, column).
    sigma_vox : tuple of float
        Standard deviations in voxels along the slice, row and column axes.

    Returns
    -------
    Tensor
        Same shape, device and dtype as ``x``.
    """
    if kind == "zero":
        return torch.zeros_like(x)
    if kind != "blur":
        raise UsageError(f"--ig-baseline {kind!r} is not one of {', '.join(BASELINES)}")
    array = x.detach().cpu().numpy()
    sigma = (0.0, float(sigma_vox[0]), 0.0, float(sigma_vox[1]), float(sigma_vox[2]))
    blurred = ndimage.gaussian_filter(array, sigma=sigma, mode="nearest")
    return torch.from_numpy(blurred.astype(np.float32)).to(x.device, x.dtype)


def internal_batch_size(n_slices: int, image_size: int, n_steps: int, device: torch.device) -> int:
    """Sequences (of ``n_slices`` images each) per Integrated Gradients pass, within budget."""
    budget = PIXEL_BUDGET["cuda" if device.type == "cuda" else "cpu"]
    per_sequence = max(1, int(n_slices)) * int(image_size) ** 2
    return int(max(1, min(int(n_steps), budget // per_sequence)))


def lstm_backward_context(device: torch.device):
    """Return a context without cuDNN on CUDA (it refuses the LSTM backward in eval mode)."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    baseline: Tensor,
    target: int,
    n_steps: int,
    batch_size: int | None = None,
) -> IGResult:
    """Integrated Gradients of the target class's centred logit of one scan.

    Parameters
    ----------
    model : torch.nn.Module
        ``(B, T, C, H, W) -> (B, K)`` logits, e.g.
        :class:`~bids_qnet.attribution.network.SliceToScan` (the mean logit over classes is
        subtracted, see
        :class:`~bids_qnet.attribution.network.CentredLogit`).
    x, baseline : Tensor
        ``(1, T, C, H, W)`` attributed input and baseline, on the model's device.
    target : int
        Class whose centred logit is explained.
    n_steps : int
        Gauss-Legendre steps along the straight path.
    batch_size : int, optional
        captum's ``internal_batch_size`` (sequences per pass); default from
        :func:`internal_batch_size`.

    Returns
    -------
    IGResult
    """
    from captum.attr import IntegratedGradients

    if x.ndim != 5 or x.shape[0] != 1 or baseline.shape != x.shape:
        raise UsageError(
            f"one scan (1, T, C, H, W) and a baseline of its shape, got {tuple(x.shape)}"
        )
    if int(n_steps) < 1:
        raise UsageError(f"--ig-steps must be at least 1, got {n_steps}")
    wrapped = CentredLogit(model).eval()
    if batch_size is None:
        size = _net_side(model, x) if hasattr(model, "geometry") else int(x.shape[-1])
        batch_size = internal_batch_size(x.shape[1], size, n_steps, x.device)
    with lstm_backward_context(x.device):
        attribution, delta = IntegratedGradients(wrapped).attribute(
            x,
            baselines=baseline,
            target=int(target),
            n_steps=int(n_steps),
            internal_batch_size=int(batch_size),
            return_convergence_delta=True,
        )
    with torch.no_grad():
        outputs = wrapped(torch.cat([x, baseline]))[:, int(target)].float().cpu()
    return IGResult(
        attribution[0].detach().float().cpu().numpy(),
        float(outputs[0]),
        float(outputs[1]),
        float(delta.reshape(-1)[0]),
    )


def grad_cam(slice_model: SliceClassifier, x: Tensor, target: int, image_size: int) -> np.ndarray:
    """Grad-CAM of the stage-1 classifier's ``layer4`` for every slice, on the slice grid.

    Parameters
    ----------
    slice_model : SliceClassifier
        The stage-1 classifier behind its preprocessing.
    x : Tensor
        ``(T, C, H, W)`` attributed (stretched) slices on the model's device.
    target : int
        Class whose logit is explained.
    image_size : int
        Side of the network input; the ``layer4`` map is upsampled (bilinear) to it, then
        carried back onto the slice grid (:func:`~bids_qnet.attribution.network.pull_back`).

    Returns
    -------
    numpy.ndarray
        ``(T, H, W)`` float32, non-negative (ReLU of the gradient-weighted activations).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    layer = slice_model.classifier.layer4
    inputs = x.detach().clone().requires_grad_(True)
    cam = LayerGradCam(slice_model, layer).attribute(
        inputs, target=int(target), relu_attributions=True
    )
    cam = LayerAttribution.interpolate(cam.detach(), (int(image_size), int(image_size)), "bilinear")
    back = pull_back(slice_model.geometry, cam.float().cpu(), tuple(x.shape[-2:]))
    return back[:, 0].numpy().astype(np.float32)


def _net_side(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        probe = model.geometry(torch.zeros(1, *x.shape[2:], device=x.device, dtype=x.dtype))
    return int(probe.shape[-1])
