"""Writing the demo's BIDS files: NIfTI images, JSON sidecars and the dataset-level files."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_qnet import CODE_URL, __version__
from bids_qnet.inputs.reference import load_reference

DEMO_NAME = "bids_qnet synthetic demo (simulated data, no real participants)"
LICENSE = "CC-BY-NC-4.0"  # the Neuromorphometrics atlas the phantom derives from is CC BY-NC
ACKNOWLEDGEMENT = (
    "The phantom of this synthetic dataset derives from the ICBM 2009c template "
    "(\N{COPYRIGHT SIGN} McConnell Brain Imaging Centre, MNI, McGill University) and the "
    "Neuromorphometrics atlas (OASIS; Neuromorphometrics, Inc.)."
)
_SCANNER = {"MagneticFieldStrength": 3, "Manufacturer": "simulated", "MRAcquisitionType": "3D"}
SIDECARS = {"Chimap": {"Units": "ppm", **_SCANNER}, "R2starmap": {"Units": "1/s", **_SCANNER}}
SIDECARS["T1w"] = _SCANNER


def scan_files(out_dir: Path, row, scans: dict) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """Yield each image of one participant, writing its folders and JSON sidecars on the way.

    Parameters
    ----------
    out_dir : Path
        BIDS dataset root.
    row : namedtuple
        The participant's row of the participants table.
    scans : dict
        ``{session: {suffix: (array, affine)}}``; session ``""`` means no session folder.

    Yields
    ------
    path : Path
        Where the ``.nii.gz`` goes.
    array, affine : numpy.ndarray
        The image and its voxel-to-scanner affine.
    """
    for session, images in scans.items():
        folder = out_dir / row.participant_id / session / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        stem = "_".join(filter(None, [row.participant_id, session]))
        for suffix, (array, affine) in images.items():
            write_json(folder / f"{stem}_{suffix}.json", SIDECARS[suffix])
            yield folder / f"{stem}_{suffix}.nii.gz", array, affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a float32 NIfTI with scanner qform and sform, gzipped without a time stamp.

    Parameters
    ----------
    path : Path
        Output ``.nii.gz``.
    array : numpy.ndarray
        Image data.
    affine : numpy.ndarray
        Voxel to scanner mm, 4 x 4.

    Notes
    -----
    No time stamp in the gzip header: the same image gives the same bytes on each run.
    """
    image = nib.Nifti1Image(np.asarray(array, np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def write_json(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON with a final newline.

    Parameters
    ----------
    path : Path
        Output file.
    content : dict
        JSON-serialisable content.
    """
    path.write_text(json.dumps(content, indent=2) + "\n")


def write_dataset_files(out_dir: Path, table: pd.DataFrame) -> None:
    """Write ``dataset_description.json``, ``participants.tsv`` and ``.json``, and ``README``.

    Parameters
    ----------
    out_dir : Path
        BIDS dataset root.
    table : pandas.DataFrame
        The participants table.
    """
    write_json(
        out_dir / "dataset_description.json",
        {
            "Name": DEMO_NAME,
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": LICENSE,
            "Authors": ["bids_qnet developers"],
            "HowToAcknowledge": ACKNOWLEDGEMENT,
            "GeneratedBy": [
                {"Name": "bids_qnet-demo", "Version": __version__, "CodeURL": CODE_URL}
            ],
        },
    )
    hh = "hereditary haemochromatosis (simulated brain iron excess)"
    write_json(
        out_dir / "participants.json",
        {
            "participant_id": {"Description": "Participant label"},
            "group": {"Description": "Diagnosis", "Levels": {"HC": "healthy control", "HH": hh}},
            "age": {"Description": "Age at the scan", "Units": "year"},
            "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
        },
    )
    table.to_csv(out_dir / "participants.tsv", sep="\t", index=False, lineterminator="\n")
    reference = load_reference()
    (out_dir / "README").write_text(
        "bids_qnet synthetic demo\n\nSimulated data, no one was scanned: QSM (Chimap), R2* "
        "(R2starmap) and T1w made by bids_qnet-demo. Patients (HH) have more iron in deep grey "
        f"nuclei than controls (HC).\n\n{ACKNOWLEDGEMENT} Like the atlas, this dataset is for "
        f"non-commercial use: licence {LICENSE}.\n\nMade from:\n- {reference.template_source}\n"
        f"- {reference.atlas_source}\n",
        encoding="utf-8",
    )
