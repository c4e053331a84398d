#!/usr/bin/env python
r"""Manual check of QSM-only registration on a real QSM map (docs/robustness.md).

Puts one brain-masked QSM map (and, optionally, a label image of regions on the same grid)
into a one-participant BIDS dataset, runs the participant level with ``--channels Chimap``
and reports the registration's quality metrics; with ``--rois``, also where each labelled
region lands in template space: the share of its voxels inside the atlas' caudate, putamen
and pallidum (a region that lands elsewhere scores 0).

Real data are not shipped with bids_qnet. The QSM reconstruction challenge 2016 map used in
docs/robustness.md (``chi_33.nii.gz`` and ``evaluation_mask.nii.gz``, 160^3, 1.06 mm) is in
the ``Example`` folder of https://github.com/SNU-LIST/QSMnet (academic use only); its header
claims RAS but its rows run posterior and its columns to the left, so pass ``--lps`` to
rewrite the header as LPS (the map as distributed is refused by the quality gate).

Example::

    python scripts/qsm_only_check.py chi_33.nii.gz --rois evaluation_mask.nii.gz --lps \
        --rois-map 1=Caudate 2=Putamen 3=Pallidum --work /tmp/qsm_check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def lps_header(image):
    """Return the image with an LPS affine of the same voxel sizes, centred on the origin."""
    zooms = nib.affines.voxel_sizes(image.affine)
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    centre = (np.array(image.shape[:3]) - 1) / 2
    affine[:3, 3] = -affine[:3, :3] @ centre
    out = nib.Nifti1Image(np.asarray(image.dataobj), affine)
    out.header.set_qform(affine, code=1)
    return out


def make_dataset(chi: Path, root: Path, lps: bool) -> Path:
    """Write a one-participant BIDS dataset holding ``chi`` as ``sub-01_Chimap.nii.gz``."""
    bids = root / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "QSM-only check", "BIDSVersion": "1.10.0"})
    )
    image = nib.load(chi)
    image = lps_header(image) if lps else nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    nib.save(image, anat / "sub-01_Chimap.nii.gz")
    return bids


def region_shares(out: Path, rois: Path, names: dict[int, str], lps: bool, resolution: str):
    """Return, per labelled region, the share of its voxels inside the named atlas region."""
    import ants

    from bids_qnet.inputs.reference import load_reference

    anat = out / "sub-01" / "anat"
    space = "MNI152NLin2009cAsym"
    transform = anat / f"sub-01_from-Chimap_to-{space}_mode-image_xfm.h5"
    atlas_file = next(out.glob(f"space-{space}_atlas-*_res-{resolution}_dseg.nii.gz"))
    atlas = np.asarray(nib.load(atlas_file).dataobj)
    labels = load_reference().labels
    image = nib.load(rois)
    if lps:
        image = lps_header(image)
    roi_path = out.parent / "rois.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32), image.affine), roi_path)
    moved = ants.apply_transforms(
        ants.image_read(str(atlas_file)),
        ants.image_read(str(roi_path)),
        [str(transform)],
        interpolator="genericLabel",
    ).numpy()
    shares = {}
    for value, name in names.items():
        inside = np.round(moved) == value
        wanted = [labels[f"{side}_{name}"] for side in ("Left", "Right")]
        shares[name] = (
            round(float(np.isin(atlas[inside], wanted).mean()), 3) if inside.any() else None
        )
    return shares


def main() -> int:
    """Run the check and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chimap", type=Path, help="brain-masked QSM map (ppm)")
    parser.add_argument("--rois", type=Path, help="label image on the QSM map's grid")
    parser.add_argument("--rois-map", nargs="+", default=[], metavar="VALUE=REGION")
    parser.add_argument("--lps", action="store_true", help="rewrite the header as LPS")
    parser.add_argument("--work", type=Path, required=True, help="a new folder for the run")
    parser.add_argument("--profile", default="precise")
    parser.add_argument("--resolution", default="1")
    args = parser.parse_args()
    bids = make_dataset(args.chimap, args.work, args.lps)
    out = args.work / "out"
    command = [
        sys.executable,
        "-m",
        "bids_qnet.cli.run",
        str(bids),
        str(out),
        "participant",
        "--channels",
        "Chimap",
        "--skip-bids-validation",
        "--embedding-weights",
        "random",
        "--registration-profile",
        args.profile,
        "--template-resolution",
        args.resolution,
        "-w",
        str(args.work / "work"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    summary: dict = {
        "exit_code": result.returncode,
        "errors": [
            line for line in result.stderr.splitlines() if line.startswith("bids_qnet: error")
        ],
    }
    sidecars = list((out / "sub-01" / "anat").glob("*_from-Chimap_to-*_xfm.json"))
    if sidecars:
        meta = json.loads(sidecars[0].read_text())
        summary["quality"] = meta.get("Quality")
        summary["template"] = meta.get("Template")
    if args.rois and result.returncode == 0:
        names = {int(v): n for v, n in (item.split("=") for item in args.rois_map)}
        summary["region_shares"] = region_shares(out, args.rois, names, args.lps, args.resolution)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
