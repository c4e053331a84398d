"""The crop's grid in template space, with the atlas cut to it (read from the derivatives).

The group level reads, for any scan, where its crop sits (the slice stack's sidecar ``Box``), the
grid of its ``desc-bgcrop`` (or ``desc-brain``) images, and the root atlas
(``space-<space>_atlas-<atlas>_res-<res>_dseg.nii.gz`` with ``atlas-<atlas>_dseg.tsv``) cut by
the box: the regions the models pool over and the attribution tables summarise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.names import DatasetFiles, name_entities, sibling
from bids_qnet.preprocess.crop import Box, slice_stack

LOGGER = logging.getLogger(__name__)


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
    regions : tuple of str
        The regions the participant level cropped around (empty for ``--crop full``).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    box: Box
    channels: list[str]
    atlas_name: str
    labels: np.ndarray
    names: dict[int, str]
    regions: tuple[str, ...] = ()

    def slice_labels(self) -> np.ndarray:
        """Return the atlas labels in the slice stacks' layout, ``(S, H, W)`` int32."""
        whole = Box((0, 0, 0), self.shape)
        return np.rint(slice_stack([self.labels.astype(np.float32)], whole)[:, 0]).astype(np.int32)

    def region_index(self, name: str) -> int:
        """Return the atlas label of a region name."""
        for index, region in self.names.items():
            if region == name:
                return index
        raise InputDataError(f"atlas {self.atlas_name} has no region named {name!r}")

    def same_grid(self, other: CropGrid) -> bool:
        """Whether two scans' crops share a grid (so their maps can be averaged)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=1e-4)


def crop_grid(slices: Path, output_dir: Path) -> CropGrid:
    """Read a scan's crop grid and cut the root atlas to it, checking that they line up.

    Parameters
    ----------
    slices : Path
        A scan's ``_slices.npy``.
    output_dir : Path
        The derivative dataset root.

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

    meta = json.loads(sidecar_path(slices).read_text())
    box, channels = Box.from_dict(meta["Box"]), list(meta["Channels"])
    atlas_name = meta.get("Atlas")
    crop_path = sibling(slices, channels[0], ".nii.gz")
    if not crop_path.is_file():
        raise MissingInputError(
            f"{crop_path} is missing: rerun the participant level for {slices.name}"
        )
    crop = nib.load(crop_path)
    entities = name_entities(crop_path)
    root = DatasetFiles(Path(output_dir))
    atlas_path = root.atlas_image(entities.get("space"), atlas_name, entities.get("res"))
    table_path = root.atlas_labels(atlas_name)
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
        raise InputDataError(f"{sidecar_path(slices)}: Box and Shape disagree")
    return CropGrid(
        affine=np.asarray(crop.affine, dtype=float),
        shape=tuple(int(v) for v in crop.shape[:3]),
        zooms=tuple(float(v) for v in crop.header.get_zooms()[:3]),
        box=box,
        channels=channels,
        atlas_name=str(atlas_name),
        labels=labels,
        names=read_label_table(table_path),
        regions=tuple(str(r) for r in meta.get("Regions") or ()),
    )


def read_label_table(path: Path) -> dict[int, str]:
    """Read a BIDS ``_dseg.tsv`` (``index``, ``name``) as index -> name."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise InputDataError(f"{path} needs the columns index and name")
    return {int(i): str(n) for i, n in zip(table["index"], table["name"], strict=True)}


def space_entities(slices: Path) -> dict[str, str]:
    """Return the ``space`` and ``res`` entities of a scan's slice stack (for output names)."""
    parts = name_entities(slices)
    return {k: parts[k] for k in ("space", "res") if k in parts}
