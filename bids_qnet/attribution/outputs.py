"""Names and writers of the attribution derivatives (NIfTI maps, sidecars, the region table).

Per scan, under ``<output_dir>/attribution/``:
``sub-<label>[_ses-<label>]_space-<space>_res-<res>_desc-IG_attribution.nii.gz`` (4D, channels
on the 4th axis in the sidecar's ``Channels`` order) and ``..._desc-GradCAM_attribution.nii.gz``
(3D); group averages beside them without ``sub-``, e.g.
``space-<space>_res-<res>_desc-IGclassHH_attribution.nii.gz``. The region table
``desc-attribution_regions.tsv`` sits at the root. No BIDS standard covers attribution maps yet:
the folder and the ``desc-`` files are in ``.bidsignore``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_qnet.attribution.regions import MIN_VOLUME_MM3
from bids_qnet.outputs.atomic import write_atomic, write_json, write_table
from bids_qnet.outputs.derivatives import sidecar_path, write_sidecar
from bids_qnet.outputs.names import GroupFiles


def label_value(text: str) -> str:
    """Turn a class name into a BIDS label value (letters and digits only)."""
    value = re.sub(r"[^A-Za-z0-9]", "", str(text))
    return value or "x"


def map_path(output_dir: Path, entities: dict[str, str | None], desc: str) -> Path:
    """Return ``<output_dir>/attribution/<entities>_desc-<desc>_attribution.nii.gz``."""
    return GroupFiles(Path(output_dir)).attribution_map(entities, desc)


def write_map(path: Path, data: np.ndarray, affine: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Write a float32 NIfTI map (channels ``(C, X, Y, Z)`` go to the 4th axis) and its sidecar.

    Parameters
    ----------
    path : Path
        Destination ``.nii.gz``.
    data : numpy.ndarray
        ``(X, Y, Z)`` or ``(C, X, Y, Z)``.
    affine : numpy.ndarray
        4x4 voxel-to-world affine (the crop's).
    metadata : dict
        Sidecar content; ``"Complete": true`` is added, and the sidecar is written last.

    Returns
    -------
    Path
        ``path``.
    """
    import nibabel as nib

    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    image = nib.Nifti1Image(np.ascontiguousarray(array), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"bids_qnet attribution"
    write_atomic(path, lambda tmp: nib.save(image, str(tmp)))
    write_sidecar(path, metadata)
    return path


def read_map(path: Path) -> np.ndarray:
    """Read a map written by :func:`write_map` back as ``(C, X, Y, Z)`` or ``(X, Y, Z)``."""
    import nibabel as nib

    array = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return np.moveaxis(array, -1, 0) if array.ndim == 4 else array


def write_region_table(output_dir: Path, table: pd.DataFrame, metadata: dict[str, Any]) -> Path:
    """Write ``desc-attribution_regions.tsv`` at the root and its sidecar (columns described)."""
    path = GroupFiles(Path(output_dir)).attribution_regions
    write_table(path, table, float_format="%.6g")
    write_json(sidecar_path(path), {**column_descriptions(table), **metadata})
    return path


def column_descriptions(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """BIDS-style descriptions of the region table's columns."""
    fixed = {
        "rank": "Rank of the region by density_contrast (1 = most relevant).",
        "region": "Atlas region name.",
        "index": "Atlas label index.",
        "voxels": "Voxels of the region inside the crop.",
        "volume_mm3": "Volume of the region inside the crop (mm^3).",
        "small": f"True for regions under {MIN_VOLUME_MM3:g} mm^3 inside the crop: ranked "
        "after all others.",
        "density_contrast": (
            "Ranking statistic: mean relevance per voxel (channels summed, maps oriented toward "
            "the positive class) averaged over the positive class minus the same average over "
            "the other class; with more than two classes the mean over all participants of "
            "the density toward the true class (class-reference maps)."
        ),
        "mass_contrast": "Share of the positive relevance of the class-contrast map in the region.",
    }
    out: dict[str, dict[str, str]] = {}
    for column in table.columns:
        if column in fixed:
            out[column] = {"Description": fixed[column]}
        elif column.startswith("density_contrast_"):
            channel = column.removeprefix("density_contrast_")
            out[column] = {"Description": f"density_contrast from the {channel} channel alone."}
        elif column.startswith("share_"):
            channel = column.removeprefix("share_")
            out[column] = {
                "Description": f"|{channel} contrast| / sum over channels of |contrast|: the "
                "channel's share of the region's contrast."
            }
        elif column.startswith("density_"):
            name = column.removeprefix("density_")
            out[column] = {"Description": f"Mean relevance per voxel, averaged over class {name}."}
        elif column.startswith("mass_"):
            name = column.removeprefix("mass_")
            out[column] = {
                "Description": f"Positive relevance mass fraction of the class {name} average map "
                "in the region (positive relevance inside / positive relevance in the crop)."
            }
    return out


def model_config(settings, plan, networks, models: dict[str, str]) -> dict[str, Any]:
    """Return what every attribution map of ``plan``'s scan depends on besides its method.

    The IG steps (first pass and most), the stage-1 mode, the image size, the fold and repeat
    whose model explains the scan, and that model's checkpoint digests; the sidecar records
    them and :func:`reusable` compares them.
    """
    return {
        "Steps": int(settings.attribution.ig_steps),
        "MaxSteps": settings.attribution.max_steps,
        "Stage1": settings.training.stage1,
        "ImageSize": int(networks.image_size),
        "Fold": plan.fold,
        "Repeat": plan.repeat,
        "ModelSHA256": models,
    }


def reusable(path: Path, config: dict[str, Any]) -> bool:
    """Whether ``path`` is complete and its sidecar's ``Config`` equals ``config`` (resume)."""
    import json

    from bids_qnet.outputs.derivatives import is_complete

    if not is_complete(path):
        return False
    try:
        return json.loads(sidecar_path(path).read_text()).get("Config") == config
    except (OSError, json.JSONDecodeError):
        return False


def scan_entities(scan) -> dict[str, str | None]:
    """Return the ``sub``, ``ses``, ``space`` and ``res`` entities of a scan's outputs."""
    from bids_qnet.preprocess.crop_grid import space_entities

    entities = {"sub": scan.participant_id.removeprefix("sub-"), "ses": scan.session}
    return {**entities, **space_entities(scan.slices)}
