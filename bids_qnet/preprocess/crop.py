"""Boxes, intensity windows and axial slice stacks: pure NumPy on template-space arrays.

Arrays are in the template's voxel order, which for the built-in template is RAS: axis 0 runs
from the subject's left to right, axis 1 from posterior to anterior, axis 2 from inferior to
superior. A user-supplied template in another voxel order must be reoriented to RAS (e.g. with
``nibabel.as_closest_canonical``) before its arrays reach :func:`slice_stack`, or the displayed
orientation below will not hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_qnet.errors import InputDataError, UsageError

logger = logging.getLogger(__name__)

#: Display convention of each slice returned by :func:`slice_stack` (neurological): rows run
#: from anterior (row 0, top) to posterior, columns from the subject's left (column 0, image
#: left) to the subject's right; slices run from inferior (index 0) to superior.
ORIENTATION = {
    "convention": "neurological",
    "rows": "anterior->posterior",
    "columns": "left->right",
    "slices": "inferior->superior",
}

#: Intensity window methods understood by :func:`intensity_window`.
WINDOW_METHODS = ("fixed", "percentile")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of voxels.

    Attributes
    ----------
    lower : tuple of int
        First voxel index along each axis (inclusive).
    upper : tuple of int
        Index past the last voxel along each axis (exclusive).
    """

    lower: tuple[int, int, int]
    upper: tuple[int, int, int]

    def __post_init__(self) -> None:
        lower = tuple(int(v) for v in self.lower)
        upper = tuple(int(v) for v in self.upper)
        if len(lower) != 3 or len(upper) != 3:
            raise UsageError(f"a box needs 3 lower and 3 upper indices, got {lower}, {upper}")
        if any(lo < 0 or up <= lo for lo, up in zip(lower, upper, strict=True)):
            raise UsageError(f"invalid box: lower {lower}, upper {upper}")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index a 3D array with ``array[box.slices]``."""
        return tuple(slice(lo, up) for lo, up in zip(self.lower, self.upper, strict=True))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of voxels along each axis."""
        return tuple(up - lo for lo, up in zip(self.lower, self.upper, strict=True))

    def to_dict(self) -> dict[str, list[int]]:
        """Return a JSON-ready ``{"lower": [...], "upper": [...], "shape": [...]}``."""
        return {"lower": list(self.lower), "upper": list(self.upper), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Box:
        """Rebuild a box from :meth:`to_dict`'s output."""
        return cls(tuple(data["lower"]), tuple(data["upper"]))


def region_box(labels: np.ndarray, indices: Sequence[int], margin_vox: Sequence[int]) -> Box:
    """Return the tight box around some labels, grown by a margin and clipped to the array.

    Parameters
    ----------
    labels : numpy.ndarray
        3D integer label image.
    indices : sequence of int
        Label values to enclose (all of them together).
    margin_vox : sequence of int
        Voxels added on both sides along each axis (three non-negative values).

    Returns
    -------
    Box

    Raises
    ------
    InputDataError
        If no voxel carries any of ``indices``.
    """
    labels = np.asarray(labels)
    _check_3d(labels, "label image")
    found = np.isin(labels, np.asarray(list(indices)))
    if not found.any():
        raise InputDataError(f"no voxel of the atlas carries label(s) {list(indices)}")
    return _bounding_box(found, margin_vox)


def mask_box(mask: np.ndarray, margin_vox: Sequence[int] = (0, 0, 0)) -> Box:
    """Return the bounding box of a mask's non-zero voxels (e.g. the brain, for ``--crop full``).

    Parameters
    ----------
    mask : numpy.ndarray
        3D mask; non-zero (and non-NaN) voxels are inside.
    margin_vox : sequence of int, optional
        Voxels added on both sides along each axis.

    Returns
    -------
    Box

    Raises
    ------
    InputDataError
        If the mask is empty.
    """
    mask = np.asarray(mask)
    _check_3d(mask, "mask")
    inside = np.nan_to_num(mask) != 0
    if not inside.any():
        raise InputDataError("the mask is empty: no bounding box")
    return _bounding_box(inside, margin_vox)


def intensity_window(
    data: np.ndarray,
    mask: np.ndarray | None,
    method: str,
    value_range: tuple[float, float],
) -> tuple[float, float]:
    """Return the ``(low, high)`` intensities that :func:`stretch` maps to 0 and 1.

    Parameters
    ----------
    data : numpy.ndarray
        The image.
    mask : numpy.ndarray or None
        Voxels that count for ``percentile`` (non-zero inside); None uses every voxel.
    method : {"fixed", "percentile"}
        ``fixed`` returns ``value_range`` as given (physical units, e.g. ppm); ``percentile``
        returns the two percentiles ``value_range`` of the finite values of ``data[mask]``.
    value_range : tuple of float
        Two values, low first.

    Returns
    -------
    tuple of float

    Raises
    ------
    UsageError
        For an unknown method or a range whose low end is not below its high end.
    InputDataError
        If ``percentile`` finds no finite voxel in the mask, or a constant image there.
    """
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise UsageError(f"intensity range {value_range} must have low < high")
    if method == "fixed":
        return low, high
    if method != "percentile":
        raise UsageError(f"intensity method {method!r} is not one of {', '.join(WINDOW_METHODS)}")
    if not 0.0 <= low < high <= 100.0:
        raise UsageError(f"percentiles {value_range} must lie within [0, 100]")
    data = np.asarray(data)
    if mask is None:
        values = data.ravel()
    else:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise InputDataError(f"mask shape {mask.shape} differs from image shape {data.shape}")
        values = data[np.nan_to_num(mask) != 0]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputDataError("no finite voxel inside the mask to compute an intensity window")
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not lo < hi:
        raise InputDataError(
            f"percentile window {value_range} is empty ({lo:g} to {hi:g}): the image is "
            "constant inside the mask"
        )
    return lo, hi


def stretch(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``[0, 1]``, clipping outside (histogram stretching).

    Parameters
    ----------
    data : numpy.ndarray
        Any array.
    low, high : float
        The window; ``low < high``.

    Returns
    -------
    numpy.ndarray
        float32 array of ``data``'s shape; NaN becomes 0, +inf 1 and -inf 0.
    """
    if not float(low) < float(high):
        raise UsageError(f"stretch window needs low < high, got {low}, {high}")
    data = np.asarray(data, dtype=np.float64)
    out = np.clip((data - float(low)) / (float(high) - float(low)), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def slice_stack(volumes: Sequence[np.ndarray], box: Box) -> np.ndarray:
    """Cut a box out of co-registered volumes and lay it out as axial slices for display.

    Parameters
    ----------
    volumes : sequence of numpy.ndarray
        One 3D array per channel, all the same shape, in RAS voxel order (see the module
        docstring).
    box : Box
        The region to cut; must lie inside the arrays.

    Returns
    -------
    numpy.ndarray
        float32 of shape ``(S, C, H, W)``: ``S = box.shape[2]`` axial slices from inferior to
        superior, ``C`` channels in the given order, ``H = box.shape[1]`` rows from anterior
        (row 0, top) to posterior and ``W = box.shape[0]`` columns from the subject's left
        (column 0) to right: the neurological convention of :data:`ORIENTATION`. In index
        terms ``out[s, c, r, k] = volumes[c][x0 + k, y1 - 1 - r, z0 + s]``.

    Raises
    ------
    InputDataError
        If no volume is given, the volumes are not 3D or differ in shape, or the box does not
        fit inside them.
    """
    if len(volumes) == 0:
        raise InputDataError("slice_stack needs at least one volume")
    arrays = [np.asarray(v) for v in volumes]
    shape = arrays[0].shape
    for array in arrays:
        _check_3d(array, "volume")
        if array.shape != shape:
            raise InputDataError(f"volumes differ in shape: {shape} and {array.shape}")
    if any(up > n for up, n in zip(box.upper, shape, strict=True)):
        raise InputDataError(f"box {box.to_dict()} does not fit in volumes of shape {shape}")
    # (C, X, Y, Z) -> (Z, C, Y, X), then flip Y so that anterior is at the top.
    cube = np.stack([a[box.slices] for a in arrays]).astype(np.float32, copy=False)
    return np.ascontiguousarray(cube.transpose(3, 0, 2, 1)[:, :, ::-1, :])


def slice_positions(box: Box, affine: np.ndarray) -> list[float]:
    """Return the world z coordinate (mm) of each slice's centre, inferior to superior.

    Parameters
    ----------
    box : Box
        The box given to :func:`slice_stack`.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, NIfTI) affine of the arrays, e.g. ``nibabel`` ``img.affine``.

    Returns
    -------
    list of float
        One value per slice of the stack: the z of the point at the centre of the box's
        in-plane extent on that slice.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise UsageError(f"affine must be 4x4, got shape {affine.shape}")
    cx = (box.lower[0] + box.upper[0] - 1) / 2.0
    cy = (box.lower[1] + box.upper[1] - 1) / 2.0
    ks = np.arange(box.lower[2], box.upper[2], dtype=float)
    points = np.stack([np.full_like(ks, cx), np.full_like(ks, cy), ks, np.ones_like(ks)])
    return [float(z) for z in (affine @ points)[2]]


def _check_3d(array: np.ndarray, what: str) -> None:
    if array.ndim != 3:
        raise InputDataError(f"{what} must be 3D, got shape {array.shape}")


def _bounding_box(inside: np.ndarray, margin_vox: Sequence[int]) -> Box:
    margin = [int(m) for m in margin_vox]
    if len(margin) != 3 or any(m < 0 for m in margin):
        raise UsageError(f"margin must be three non-negative voxel counts, got {margin_vox}")
    lower, upper = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(inside.any(axis=other))
        lower.append(max(int(hits[0]) - margin[axis], 0))
        upper.append(min(int(hits[-1]) + 1 + margin[axis], inside.shape[axis]))
    return Box(tuple(lower), tuple(upper))
