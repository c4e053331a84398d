"""Atlas regions on the slice grid: label slices, pooling weights and regional statistics.

Everything here is NumPy on arrays laid out like :func:`bids_qnet.preprocess.crop.slice_stack`:
``(S, H, W)`` label slices (inferior to superior; rows anterior to posterior; columns left to
right) beside ``(S, C, H, W)`` slice stacks. A region's pooling weights are normalised over the
whole region (all its slices), so summing a slice-wise pooled quantity over the slices gives the
region's statistic over its volume; each slice alone carries its share.

Three statistics per region (:data:`MOMENTS`):

* ``mean``: the mean over the region's voxels (weights ``1 / N``);
* ``ap``: the anterior-posterior first moment, ``sum(x (a - a0)) / sqrt(sum((a - a0)^2))`` with
  ``a`` the anterior coordinate in voxels and ``a0`` the region's centroid: positive when the
  region's anterior part is brighter than its posterior part, zero for a uniform region; a
  linear ramp ``x = g a`` gives ``g * sqrt(sum((a - a0)^2))``;
* ``lr``: the same along the left-to-right axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.preprocess.crop import Box, slice_stack

#: The regional statistics :func:`pooling_weights` knows, in their order.
MOMENTS = ("mean", "ap", "lr")


def label_slices(atlas: np.ndarray, box: Box) -> np.ndarray:
    """Cut an atlas (template space, RAS voxel order) into label slices that match a crop.

    Parameters
    ----------
    atlas : numpy.ndarray
        3D integer label image on the grid the slice stacks were cut from.
    box : Box
        The crop box (the slices sidecar's ``Box``).

    Returns
    -------
    numpy.ndarray
        int32 ``(S, H, W)`` labels, voxel for voxel the layout of the slice stacks.
    """
    volume = np.asarray(atlas)
    if volume.ndim != 3:
        raise InputDataError(f"the atlas must be 3D, got shape {volume.shape}")
    stack = slice_stack([volume.astype(np.float32)], box)[:, 0]
    return np.rint(stack).astype(np.int32)


def pooling_weights(
    labels: np.ndarray,
    indices: Sequence[int],
    moments: Sequence[str] = ("mean",),
    empty_ok: bool = False,
) -> np.ndarray:
    """Return the weights that pool slices into each region's statistics.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(S, H, W)`` label slices (:func:`label_slices`).
    indices : sequence of int
        Atlas label of each region, in order.
    moments : sequence of str
        Statistics per region, from :data:`MOMENTS`.
    empty_ok : bool
        Give a region without voxels zero weights instead of refusing it.

    Returns
    -------
    numpy.ndarray
        float32 ``(R * M, S, H, W)``: region-major (``k = r * M + m``), normalised over the
        whole region (module docstring).

    Raises
    ------
    UsageError
        An unknown statistic.
    InputDataError
        A region without any voxel on the slices.
    """
    unknown = [m for m in moments if m not in MOMENTS]
    if unknown:
        raise UsageError(f"unknown regional statistic(s) {unknown}; known: {', '.join(MOMENTS)}")
    labels = np.asarray(labels)
    shape = labels.shape
    anterior = -np.arange(shape[1], dtype=np.float64)[None, :, None]  # row 0 is anterior
    right = np.arange(shape[2], dtype=np.float64)[None, None, :]
    weights = []
    for index in indices:
        inside = labels == int(index)
        count = int(inside.sum())
        if count == 0 and not empty_ok:
            raise InputDataError(f"atlas region {index} has no voxel in the crop")
        if count == 0:
            weights.extend(np.zeros(shape) for _ in moments)
            continue
        for moment in moments:
            if moment == "mean":
                weights.append(inside / count)
                continue
            coordinate = np.broadcast_to(anterior if moment == "ap" else right, shape)
            centred = np.where(inside, coordinate - coordinate[inside].mean(), 0.0)
            norm = float(np.sqrt((centred**2).sum()))
            weights.append(centred / norm if norm > 0 else centred)
    return np.stack(weights).astype(np.float32)


def regional_statistics(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pool one slice stack into regional statistics.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(S, C, H, W)`` slices.
    weights : numpy.ndarray
        ``(K, S, H, W)`` from :func:`pooling_weights`.

    Returns
    -------
    numpy.ndarray
        float64 ``(K, C)``.
    """
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 4 or stack.shape[:1] + stack.shape[2:] != weights.shape[1:]:
        raise InputDataError(
            f"slices {stack.shape} do not match the region weights {weights.shape[1:]}"
        )
    return np.einsum("schw,kshw->kc", stack, weights, optimize=True)


def region_voxels(labels: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Return the number of voxels of each region on the slices (int64, in order)."""
    labels = np.asarray(labels)
    return np.array([int((labels == int(i)).sum()) for i in indices], dtype=np.int64)


def slice_pooling_weights(
    labels: np.ndarray, indices: Sequence[int], moments: Sequence[str] = MOMENTS
) -> np.ndarray:
    """Return pooling weights normalised within each slice (what a slice network pools with).

    As :func:`pooling_weights`, but each slice's weights stand on their own: ``mean`` is the
    mean over the region's voxels *of that slice* and the moments are centred on, and scaled
    to unit norm over, the region's part of that slice. Slices without the region get zeros.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(S, H, W)`` label slices.
    indices : sequence of int
        Atlas label of each region, in order.
    moments : sequence of str
        Statistics per region, from :data:`MOMENTS`.

    Returns
    -------
    numpy.ndarray
        float32 ``(S, R * M, H, W)``, slice-major (indexed by the slice position),
        region-major within a slice (``k = r * M + m``).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputDataError(f"label slices must be (S, H, W), got {labels.shape}")
    per_slice = [
        pooling_weights(labels[s : s + 1], indices, moments, empty_ok=True)[:, 0]
        for s in range(labels.shape[0])
    ]
    return np.stack(per_slice).astype(np.float32)
