"""Q-Net's regional read-out: scan logits that are linear in the regional statistics of the slices.

In the quantitative preset Q-Net's scan logits are the sum of the Bi-LSTM's and of this read-out,
an L1-penalised logistic regression (:class:`bids_qnet.models.roi.RegionalLogistic`) on the
regional statistics of the raw channels (each atlas region's mean and first moments,
:func:`bids_qnet.preprocess.regions.pooling_weights`). It carries the level of each nucleus in
physical units straight to the decision, which a network trained on 40-100 participants does not
learn reliably; the Bi-LSTM then learns what the read-out misses.

The statistics, the standardisation and the coefficients are all linear, so the read-out folds
into one map per class on the slice grid: ``logit = sum(template * slices) + bias``. That keeps
it differentiable for attribution (Integrated Gradients of it is ``(x - baseline) * template``)
and shows what it looks at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bids_qnet.errors import InputDataError
from bids_qnet.models.roi import RegionalLogistic


def regional_features(stacks: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Return the ``(N, P * C)`` regional statistics of each stack (pooling-map-major).

    Parameters
    ----------
    stacks : sequence of numpy.ndarray
        ``(T, C, H, W)`` slices per scan.
    weights : numpy.ndarray
        ``(P, T, H, W)`` pooling weights.
    """
    weights = np.asarray(weights, dtype=np.float64)
    rows = []
    for stack in stacks:
        values = np.asarray(stack, dtype=np.float64)
        if values.ndim != 4 or values.shape[:1] + values.shape[2:] != weights.shape[1:]:
            raise InputDataError(
                f"slices {values.shape} do not match the region weights {weights.shape[1:]}"
            )
        rows.append(np.einsum("tchw,pthw->pc", values, weights, optimize=True).reshape(-1))
    return np.asarray(rows)


class RegionalReadout(nn.Module):
    """Scan logits from one linear map per class over the slices (module docstring).

    Parameters
    ----------
    template : numpy.ndarray or Tensor
        ``(L, T, C, H, W)``: one map per logit, ``L = 1`` for two classes (the log-odds).
    bias : numpy.ndarray or Tensor
        ``(L,)``.
    """

    def __init__(self, template, bias) -> None:
        super().__init__()
        template = torch.as_tensor(np.asarray(template, dtype=np.float32))
        bias = torch.as_tensor(np.asarray(bias, dtype=np.float32)).reshape(-1)
        if template.ndim != 5 or bias.shape != template.shape[:1]:
            raise InputDataError(
                f"a read-out needs (L, T, C, H, W) maps and L biases, got "
                f"{tuple(template.shape)} and {tuple(bias.shape)}"
            )
        self.register_buffer("template", template)
        self.register_buffer("bias", bias)

    @classmethod
    def from_logistic(cls, logistic: RegionalLogistic, weights: np.ndarray) -> RegionalReadout:
        """Fold a logistic regression on :func:`regional_features` into maps.

        Parameters
        ----------
        logistic : RegionalLogistic
            Fitted on the features of :func:`regional_features` with these ``weights``.
        weights : numpy.ndarray
            ``(P, T, H, W)`` pooling weights.
        """
        weights = np.asarray(weights, dtype=np.float64)
        n_maps = weights.shape[0]
        coef = logistic.coef_ / logistic.scale_  # on the raw statistics
        if coef.shape[1] % n_maps:
            raise InputDataError("the read-out's coefficients do not fit the pooling weights")
        per_map = coef.reshape(len(coef), n_maps, -1)  # (L, P, C)
        template = np.einsum("lpc,pthw->ltchw", per_map, weights, optimize=True)
        bias = logistic.intercept_ - coef @ logistic.mean_
        return cls(template, bias)

    def forward(self, slices: Tensor) -> Tensor:
        """Return ``(B, K)`` logits of ``(B, T, C, H, W)`` slices (2 classes: ``[-d/2, d/2]``)."""
        if slices.ndim != 5 or tuple(slices.shape[1:]) != tuple(self.template.shape[1:]):
            raise InputDataError(
                f"the read-out takes slices of shape (B, {tuple(self.template.shape[1:])}), "
                f"got {tuple(slices.shape)}"
            )
        template = self.template.to(slices.dtype)
        decision = torch.einsum("btchw,ltchw->bl", slices, template) + self.bias.to(slices.dtype)
        if decision.shape[1] == 1:
            return torch.cat([-decision / 2, decision / 2], dim=1)
        return decision

    def logits(self, stacks: Sequence[np.ndarray]) -> np.ndarray:
        """Return ``(N, K)`` float32 logits of NumPy stacks (CPU, no gradient)."""
        with torch.inference_mode():
            batch = torch.as_tensor(np.stack([np.asarray(s, np.float32) for s in stacks]))
            return self(batch).numpy().astype(np.float32)
