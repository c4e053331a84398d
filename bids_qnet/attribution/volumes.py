"""Slice attributions back into template space, on the crop's grid.

:func:`bids_qnet.preprocess.crop.slice_stack` lays a box of template-space volumes out as axial
slices, ``out[s, c, r, k] = volume[c][x0 + k, y1 - 1 - r, z0 + s]``; :func:`unstack` undoes it
exactly, so a map on the slice grid becomes a ``(X, Y, Z)`` volume per channel on the grid of the
participant's ``desc-bgcrop`` (or ``desc-brain``) images, whose affine it takes. Attributions
need no inverse resize: they are computed on the stored slice grid (see
:mod:`bids_qnet.attribution.network`).
"""

from __future__ import annotations

import logging

import numpy as np

from bids_qnet.errors import InputDataError

LOGGER = logging.getLogger(__name__)


def unstack(stack: np.ndarray) -> np.ndarray:
    """Invert :func:`bids_qnet.preprocess.crop.slice_stack` on the box.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(S, C, H, W)`` (or ``(S, H, W)`` for a single map) in slice-stack layout.

    Returns
    -------
    numpy.ndarray
        ``(C, X, Y, Z)`` (or ``(X, Y, Z)``) with ``X = W``, ``Y = H``, ``Z = S``: the box's voxels
        in RAS order, ``out[c, k, H - 1 - r, s] = stack[s, c, r, k]``.
    """
    stack = np.asarray(stack)
    if stack.ndim == 3:
        return unstack(stack[:, None])[0]
    if stack.ndim != 4:
        raise InputDataError(f"a slice stack is (S, C, H, W) or (S, H, W), got {stack.shape}")
    return np.ascontiguousarray(stack[:, :, ::-1, :].transpose(1, 3, 2, 0))
