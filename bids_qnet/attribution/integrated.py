"""Integrated Gradients through the whole Q-Net, and Grad-CAM on the stage-1 network.

Pure computation on tensors: no file is read or written here.
"""

from __future__ import annotations

import contextlib
import logging
import time
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


#: Largest relative convergence delta (``|delta| / |output - baseline output|``) of a map that
#: is trusted: above it the path integral is too coarse (raise ``--ig-steps``).
CONVERGENCE_TOLERANCE = 0.05
#: Convergence delta below which attributions of a constant output count as complete.
EXACT_DELTA = 1e-6
#: A scan whose Integrated Gradients did not converge is computed again with this many times
#: the steps, until it converges or reaches ``--ig-max-steps`` (16 x ``--ig-steps`` by
#: default). Paths from a class reference through the quantitative network need 200-800
#: Gauss-Legendre steps for some scans (measured: relative delta 0.85 / 0.30 / 0.04 at
#: 32 / 128 / 512 steps) and 32 for most, so the steps are spent only where they are needed.
REFINE_FACTOR = 4


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
    n_steps : int, optional
        Gauss-Legendre steps of the path integral.
    """

    attribution: np.ndarray
    output: float
    baseline_output: float
    delta: float
    n_steps: int | None = None

    @property
    def relative_delta(self) -> float:
        """``|delta| / |output - baseline_output|``.

        When the outputs are equal (a model that gives every input the same score, such as a
        read-out with no weights), 0 if the attributions sum to zero too, else inf.
        """
        gap = abs(self.output - self.baseline_output)
        if gap > 0:
            return abs(self.delta) / gap
        return 0.0 if abs(self.delta) <= EXACT_DELTA else float("inf")

    @property
    def converged(self) -> bool:
        """Whether the relative delta is within :data:`CONVERGENCE_TOLERANCE`."""
        return bool(self.relative_delta <= CONVERGENCE_TOLERANCE)

    def record(self) -> dict[str, float]:
        """Return what a map's sidecar says of it: the outputs and the completeness check."""
        record = {
            "OutputAtInput": self.output,
            "OutputAtBaseline": self.baseline_output,
            "ConvergenceDelta": self.delta,
            "RelativeDelta": self.relative_delta,
            "Converged": self.converged,
            "ConvergenceTolerance": CONVERGENCE_TOLERANCE,
        }
        if self.n_steps is not None:
            record["StepsUsed"] = int(self.n_steps)
        return record


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


@contextlib.contextmanager
def lstm_backward_context(device: torch.device, model: nn.Module | None = None):
    """Keep cuDNN out of the recurrent layers only, on CUDA (a no-op on the CPU).

    cuDNN refuses an LSTM's backward pass in eval mode. Switched off for the whole model it also
    leaves the convolutions (ResNet18, nearly all of the work) to PyTorch's fallback kernels,
    many times slower. Inside this context cuDNN runs the convolutions, in full float32 precision
    (no TF32, so that the attributions match the CPU's), and is switched off only while each
    ``nn.RNNBase`` module of ``model`` runs its forward pass: such a module then takes PyTorch's
    own implementation, whose backward needs no cuDNN. Without ``model``, cuDNN is off throughout
    (as before).

    Parameters
    ----------
    device : torch.device
        Where the model runs.
    model : torch.nn.Module, optional
        The network whose recurrent layers must avoid cuDNN.

    Yields
    ------
    None
    """
    if device.type != "cuda":
        yield
        return
    if model is None:
        with torch.backends.cudnn.flags(enabled=False):
            yield
        return
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), cudnn_off_in_rnns(model):
        yield


@contextlib.contextmanager
def cudnn_off_in_rnns(model: nn.Module):
    """Switch cuDNN off during the forward pass of each recurrent module of ``model``.

    Forward pre- and post-hooks on every ``nn.RNNBase`` submodule save, clear and restore
    ``torch.backends.cudnn.enabled``; they are removed on exit.
    """
    saved: list[bool] = []

    def before(module, args):
        saved.append(torch.backends.cudnn.enabled)
        torch.backends.cudnn.enabled = False

    def after(module, args, output):
        torch.backends.cudnn.enabled = saved.pop()

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, nn.RNNBase):
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()
        if saved:  # a forward pass that raised inside a recurrent module
            torch.backends.cudnn.enabled = saved[0]


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    baseline: Tensor,
    target: int | list[int],
    n_steps: int,
    batch_size: int | None = None,
) -> IGResult | list[IGResult]:
    """Integrated Gradients of the target class's centred logit of one scan or of several.

    Parameters
    ----------
    model : torch.nn.Module
        ``(B, T, C, H, W) -> (B, K)`` logits, e.g.
        :class:`~bids_qnet.attribution.network.SliceToScan` (the mean logit over classes is
        subtracted, see
        :class:`~bids_qnet.attribution.network.CentredLogit`).
    x, baseline : Tensor
        ``(B, T, C, H, W)`` attributed inputs and baselines, on the model's device: one scan
        (``B = 1``) or several of one shape, attributed in the same passes (each scan's path is
        its own: the model, in eval mode, treats the sequences of a batch apart).
    target : int or list of int
        Class whose centred logit is explained: one for all scans, or one per scan.
    n_steps : int
        Gauss-Legendre steps along the straight path.
    batch_size : int, optional
        captum's ``internal_batch_size`` (sequences per pass, a multiple of ``B`` is best);
        default from :func:`internal_batch_size`, for all ``B`` scans together.

    Returns
    -------
    IGResult or list of IGResult
        One result for an ``int`` target and ``B = 1`` (as before), else a list, one per scan.
    """
    from captum.attr import IntegratedGradients

    if x.ndim != 5 or x.shape[0] < 1 or baseline.shape != x.shape:
        raise UsageError(
            f"scans (B, T, C, H, W) and baselines of their shape, got {tuple(x.shape)} and "
            f"{tuple(baseline.shape)}"
        )
    if int(n_steps) < 1:
        raise UsageError(f"--ig-steps must be at least 1, got {n_steps}")
    n_scans = int(x.shape[0])
    single = isinstance(target, int | np.integer) and n_scans == 1
    targets = [int(target)] * n_scans if isinstance(target, int | np.integer) else list(target)
    if len(targets) != n_scans:
        raise UsageError(f"{len(targets)} targets for {n_scans} scans")
    wrapped = CentredLogit(model).eval()
    if batch_size is None:
        size = _net_side(model, x) if hasattr(model, "geometry") else int(x.shape[-1])
        batch_size = internal_batch_size(x.shape[1], size, n_steps * n_scans, x.device)
    with lstm_backward_context(x.device, wrapped):
        attribution, delta = IntegratedGradients(wrapped).attribute(
            x,
            baselines=baseline,
            target=[int(t) for t in targets],
            n_steps=int(n_steps),
            internal_batch_size=int(batch_size),
            return_convergence_delta=True,
        )
    with torch.no_grad():
        outputs = wrapped(torch.cat([x, baseline])).float().cpu()
    attribution = attribution.detach().float().cpu().numpy()
    delta = delta.detach().float().cpu().reshape(-1)
    results = [
        IGResult(
            attribution[i],
            float(outputs[i, targets[i]]),
            float(outputs[n_scans + i, targets[i]]),
            float(delta[i]),
            int(n_steps),
        )
        for i in range(n_scans)
    ]
    return results[0] if single else results


@dataclass(frozen=True)
class IGJob:
    """One scan's Integrated Gradients to compute: input, baseline, target.

    Attributes
    ----------
    x, baseline : Tensor
        ``(1, T, C, H, W)`` attributed input and baseline, on the model's device.
    target : int
        Class whose centred logit is explained.
    """

    x: Tensor
    baseline: Tensor
    target: int


def integrated_gradients_many(
    model: nn.Module,
    jobs: list[IGJob],
    n_steps: int,
    image_size: int,
    device: torch.device,
    max_steps: int | None = None,
) -> list[tuple[IGResult, int, float]]:
    """Integrated Gradients of several scans through one network, scans of one shape together.

    The scans whose stacks have the same shape go through :func:`integrated_gradients`
    together, as many in one call as one pass within :func:`internal_batch_size`'s budget holds
    (a pass holds whole steps: one sequence of each scan of the call a step), instead of one
    call per scan. Each scan's result equals its own call's up to float rounding (the model, in eval
    mode, treats the sequences of a batch apart). A scan whose result has not converged is
    computed again with :data:`REFINE_FACTOR` times the steps, up to ``max_steps`` (its result
    then records the steps it took).

    Parameters
    ----------
    model : torch.nn.Module
        ``(B, T, C, H, W) -> (B, K)`` logits, in eval mode.
    jobs : list of IGJob
        The scans.
    n_steps : int
        Gauss-Legendre steps of the first pass.
    image_size : int
        Side of the network's input images (sets the pass size).
    device : torch.device
        Where the model runs.
    max_steps : int, optional
        Most steps of a scan that has not converged; default ``n_steps`` (one pass).

    Returns
    -------
    list of tuple
        Per job, in order: its :class:`IGResult`, the pass size (sequences) of its call and its
        share of the seconds its calls took.
    """
    out = _attribute_jobs(model, jobs, list(range(len(jobs))), n_steps, image_size, device)
    steps, limit = int(n_steps), max(int(n_steps), int(max_steps or n_steps))
    pending = [i for i, (result, _, _) in enumerate(out) if not result.converged]
    while pending and steps < limit:
        steps = min(steps * REFINE_FACTOR, limit)
        LOGGER.debug(
            "Integrated Gradients: %d scan(s) not converged, again with %d steps",
            len(pending),
            steps,
        )
        again = _attribute_jobs(model, jobs, pending, steps, image_size, device)
        for index in pending:
            result, batch, share = again[index]
            out[index] = (result, batch, out[index][2] + share)
        pending = [i for i in pending if not out[i][0].converged]
    return out  # type: ignore[return-value]


def _attribute_jobs(model, jobs, chosen, n_steps, image_size, device) -> list:
    """One pass of ``n_steps`` over ``jobs[i]`` for ``i`` in ``chosen``; None elsewhere."""
    out: list[tuple[IGResult, int, float] | None] = [None] * len(jobs)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for index in chosen:
        shapes.setdefault(tuple(jobs[index].x.shape), []).append(index)
    # a call's passes hold at least one step of each of its scans: no more scans than fit
    groups = []
    for shape, indices in shapes.items():
        most = internal_batch_size(shape[1], image_size, len(indices), device)
        groups += [(shape, indices[i : i + most]) for i in range(0, len(indices), most)]
    for shape, indices in groups:
        began = time.perf_counter()
        batch = internal_batch_size(shape[1], image_size, int(n_steps) * len(indices), device)
        batch -= batch % len(indices)  # whole steps: captum passes batch // scans steps
        results = integrated_gradients(
            model,
            torch.cat([jobs[i].x for i in indices]),
            torch.cat([jobs[i].baseline for i in indices]),
            [int(jobs[i].target) for i in indices],
            n_steps,
            batch,
        )
        share = (time.perf_counter() - began) / len(indices)
        for index, result in zip(indices, results, strict=True):
            out[index] = (result, batch, share)
    return out


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
