"""The template and atlas that define the output space and the basal-ganglia box."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_qnet.data import load_json, package_file
from bids_qnet.errors import InputDataError, MissingInputError


@dataclass(frozen=True)
class Reference:
    """A template (output space) and a label atlas aligned to it.

    Attributes
    ----------
    space : str
        BIDS ``space-`` label of the template.
    template_path : Path
        Brain-extracted T1w template image.
    atlas_name : str
        BIDS ``atlas-`` label.
    atlas_path : Path
        Integer label image (any grid in template space; resampled onto the template grid).
    labels : dict of str to int
        Region name to label index.
    template_source, atlas_source : str
        Where the files come from and under which licence.
    """

    space: str
    template_path: Path
    atlas_name: str
    atlas_path: Path
    labels: dict[str, int]
    template_source: str
    atlas_source: str


@dataclass(frozen=True)
class ReferenceGrid:
    """The template, its brain mask and the atlas on the output grid, as files steps read.

    Attributes
    ----------
    space, atlas_name : str
        The ``space-`` and ``atlas-`` labels.
    resolution : float
        Voxel size of the output grid in mm.
    template_file, mask_file, atlas_file : str
        The three images on the output grid.
    susceptibility_file : str
        The susceptibility template on the output grid (QSM maps registered without a T1w).
    region_indices : dict of str to int
        The crop regions' atlas labels (empty for ``--crop full``).
    """

    space: str
    atlas_name: str
    resolution: float
    template_file: str
    mask_file: str
    atlas_file: str
    susceptibility_file: str
    region_indices: dict[str, int]


def load_reference(template: Path | None = None, atlas: Path | None = None) -> Reference:
    """Return the built-in reference, or user-supplied template and/or atlas.

    Parameters
    ----------
    template : Path, optional
        A T1w brain template NIfTI. Its space label comes from a ``tpl-<label>`` in the file name,
        else ``custom``.
    atlas : Path, optional
        A label NIfTI with a ``.tsv`` beside it (same stem, columns ``index`` and ``name``), as in
        BIDS ``atlas-<label>_dseg.tsv``.

    Returns
    -------
    Reference
    """
    resources = load_json("resources.json")
    tpl, atl = resources["template"], resources["atlas"]
    if template is None:
        template_path = package_file(tpl["package"], tpl["path"])
        space, template_source = tpl["space"], f"{tpl['source']}. Licence: {tpl['licence']}"
    else:
        template_path = _existing(template, "--template")
        match = re.search(r"tpl-([A-Za-z0-9]+)", template_path.name)
        space = match.group(1) if match else "custom"
        template_source = f"user-supplied template {template_path}"
    if atlas is None:
        atlas_path = package_file(atl["package"], atl["path"])
        labels_frame = pd.read_csv(package_file(atl["package"], atl["labels"]))
        atlas_name, atlas_source = atl["name"], f"{atl['source']}. Licence: {atl['licence']}"
    else:
        atlas_path = _existing(atlas, "--atlas")
        labels_frame = _read_user_labels(atlas_path)
        match = re.search(r"atlas-([A-Za-z0-9]+)", atlas_path.name)
        atlas_name = match.group(1) if match else "custom"
        atlas_source = f"user-supplied atlas {atlas_path}"
    labels = {
        str(n): int(i) for i, n in zip(labels_frame["index"], labels_frame["name"], strict=True)
    }
    return Reference(
        space, template_path, atlas_name, atlas_path, labels, template_source, atlas_source
    )


def region_indices(reference: Reference, regions: list[str]) -> dict[str, int]:
    """Map region names to atlas indices, failing with the list of known names."""
    unknown = [r for r in regions if r not in reference.labels]
    if unknown:
        known = ", ".join(sorted(reference.labels))
        raise InputDataError(
            f"region(s) {unknown} are not in atlas {reference.atlas_name}; known names: {known}"
        )
    return {r: reference.labels[r] for r in regions}


def template_on_grid(reference: Reference, resolution: float):
    """Return the template as an ANTs image at ``resolution`` mm (resampled when not native)."""
    import ants
    import nibabel as nib

    path = reference.template_path
    loaded = nib.load(str(path))
    if nib.aff2axcodes(loaded.affine) != ("R", "A", "S"):
        # The crop and the slice orientation assume RAS voxel order: reorient a user template.
        canonical = nib.as_closest_canonical(loaded)
        with tempfile.TemporaryDirectory() as tmp:
            nib.save(canonical, f"{tmp}/template_ras.nii.gz")
            image = ants.image_read(f"{tmp}/template_ras.nii.gz", pixeltype="float")
    else:
        image = ants.image_read(str(path), pixeltype="float")
    if not np.allclose(image.spacing, resolution, atol=1e-3):
        image = ants.resample_image(image, (resolution,) * 3, use_voxels=False, interp_type=4)
        image = ants.threshold_image(image, 0, None, 1, 0) * image  # no negative ringing
    return image


def atlas_on_grid(reference: Reference, template_image):
    """Return the atlas labels resampled (nearest neighbour) onto ``template_image``'s grid."""
    import ants

    atlas = ants.image_read(str(reference.atlas_path))
    if atlas.dimension != 3:
        raise InputDataError(f"atlas {reference.atlas_path} is not a 3D label image")
    return ants.resample_image_to_target(atlas, template_image, interp_type="genericLabel")


def brain_mask(template_image):
    """Return the template's brain mask (voxels above zero) as an ANTs image."""
    import ants

    return ants.threshold_image(template_image, 1e-6, None, 1, 0)


def _existing(path: Path, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{option} file {path} does not exist")
    return path


def _read_user_labels(atlas_path: Path) -> pd.DataFrame:
    stem = atlas_path.name.split(".nii")[0]
    tsv = atlas_path.with_name(f"{stem}.tsv")
    if not tsv.is_file():
        raise MissingInputError(
            f"atlas labels {tsv} are missing: put a TSV with columns 'index' and 'name' "
            f"beside {atlas_path}"
        )
    frame = pd.read_csv(tsv, sep="\t")
    if not {"index", "name"} <= set(frame.columns):
        raise InputDataError(f"atlas labels {tsv} need columns 'index' and 'name'")
    return frame
