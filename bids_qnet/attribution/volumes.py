"""Slice attributions back into template space, on the crop's grid.

:func:`bids_qnet.crop.slice_stack` lays a box of template-space volumes out as axial slices,
``out[s, c, r, k] = volume[c][x0 + k, y1 - 1 - r, z0 + s]``; :func:`unstack` undoes it exactly,
so a map on the slice grid becomes a ``(X, Y, Z)`` volume per channel on the grid of the
participant's ``desc-bgcrop`` (or ``desc-brain``) images, whose affine it takes. Attributions
need no inverse resize: they are computed on the stored slice grid (see
:mod:`bids_qnet.attribution.network`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qnet.crop import Box
from bids_qnet.derivatives import sidecar_path
from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.group_inputs import Scan

LOGGER = logging.getLogger(__name__)


def unstack(stack: np.ndarray) -> np.ndarray:
    """Invert :func:`bids_qnet.crop.slice_stack` on the box.

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


@dataclass(frozen=True)
class CropGrid:
    """The grid a scan's crop lives on, with the atlas labels cut to it.

    Attributes
    ----------
    affine : numpy.ndarray
        4x4 voxel-to-world affine of the crop (from the ``desc-bgcrop`` image).
    shape : tuple of int
        ``(X, Y, Z)``.
    zooms : tuple of float
        Voxel size in mm.
    box : Box
        Where the crop sits in the template grid.
    channels : list of str
        Channel order of the slice stack.
    atlas_name : str
        The atlas label.
    labels : numpy.ndarray
        ``(X, Y, Z)`` integer atlas labels on the crop.
    names : dict of int to str
        Label index to region name.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    box: Box
    channels: list[str]
    atlas_name: str
    labels: np.ndarray
    names: dict[int, str]

    def same_grid(self, other: CropGrid) -> bool:
        """Whether two scans' crops share a grid (so their maps can be averaged)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=1e-4)


def crop_grid(scan: Scan, output_dir: Path) -> CropGrid:
    """Read a scan's crop grid and cut the root atlas to it, checking that they line up.

    The slice stack's sidecar gives the box, channels and atlas; the first channel's crop image
    (``<stem>_<channel>.nii.gz`` beside the stack) gives the affine; the atlas is the root
    ``space-<space>_atlas-<atlas>_res-<res>_dseg.nii.gz`` with its ``atlas-<atlas>_dseg.tsv``.

    Raises
    ------
    MissingInputError
        If the crop image, the atlas or its label table is missing.
    InputDataError
        If the crop and the atlas cut by the box do not share a grid.
    """
    import nibabel as nib

    meta = json.loads(sidecar_path(scan.slices).read_text())
    box, channels = Box.from_dict(meta["Box"]), list(meta["Channels"])
    atlas_name = meta.get("Atlas")
    crop_path = scan.slices.with_name(
        scan.slices.name.replace("_slices.npy", f"_{channels[0]}.nii.gz")
    )
    if not crop_path.is_file():
        raise MissingInputError(
            f"{crop_path} is missing: rerun the participant level for {scan.scan_id}"
        )
    crop = nib.load(crop_path)
    entities = dict(part.split("-", 1) for part in crop_path.name.split("_") if "-" in part)
    stem = f"space-{entities.get('space')}_atlas-{atlas_name}"
    if entities.get("res"):
        stem += f"_res-{entities['res']}"
    atlas_path = output_dir / f"{stem}_dseg.nii.gz"
    table_path = output_dir / f"atlas-{atlas_name}_dseg.tsv"
    for path in (atlas_path, table_path):
        if not path.is_file():
            raise MissingInputError(f"{path} is missing: the participant level writes it; rerun it")
    atlas = nib.load(atlas_path)
    labels = np.asarray(atlas.dataobj)[box.slices].astype(np.int32)
    shift = np.eye(4)
    shift[:3, 3] = box.lower
    expected = atlas.affine @ shift
    if labels.shape != crop.shape[:3] or not np.allclose(expected, crop.affine, atol=1e-3):
        raise InputDataError(
            f"{crop_path} does not line up with {atlas_path} cut by the box {box.to_dict()}: "
            "rerun the participant level with the same template and atlas"
        )
    if tuple(box.shape) != tuple(meta["Shape"][i] for i in (3, 2, 0)):
        raise InputDataError(f"{sidecar_path(scan.slices)}: Box and Shape disagree")
    return CropGrid(
        affine=np.asarray(crop.affine, dtype=float),
        shape=tuple(int(v) for v in crop.shape[:3]),
        zooms=tuple(float(v) for v in crop.header.get_zooms()[:3]),
        box=box,
        channels=channels,
        atlas_name=str(atlas_name),
        labels=labels,
        names=read_label_table(table_path),
    )


def read_label_table(path: Path) -> dict[int, str]:
    """Read a BIDS ``_dseg.tsv`` (``index``, ``name``) as index -> name."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise InputDataError(f"{path} needs the columns index and name")
    return {int(i): str(n) for i, n in zip(table["index"], table["name"], strict=True)}


def space_entities(scan: Scan) -> dict[str, str]:
    """Return the ``space`` and ``res`` entities of a scan's slice stack (for output names)."""
    parts = dict(p.split("-", 1) for p in scan.slices.name.split("_") if "-" in p)
    return {k: parts[k] for k in ("space", "res") if k in parts}
