"""Three datasets of bids-standard/bids-examples, rebuilt from their file lists and sidecars.

bids-examples ships every image as a 0-byte file; so do these (read from the repository at
commit ca54a02e55548090fced87f38a28bae13a1f692d; no network at test time).
"""

from __future__ import annotations

import json
from pathlib import Path

QMRI_QSM_T1W = {
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
    "ManufacturerModelName": "TrioTim",
    "PulseSequenceType": "GR",
    "MRAcquisitionType": "3D",
    "EchoTime": 0.0081,
    "AcquisitionVoxelSize": ["0.6", "0.6", "0.6"],
}


def _write(root: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content, indent=2))
    return root


def qmri_qsm(root: Path) -> Path:
    """bids-examples ``qmri_qsm``: GRE magnitude/phase as ``part-`` T1w, Chimap in derivatives."""
    qmrlab = "derivatives/qMRLab"
    return _write(
        root,
        {
            "README": b"",
            "dataset_description.json": {
                "Name": "Example QSM dataset",
                "BIDSVersion": "1.5.0",
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "qMRLab", "Version": "2.4.1"}],
            },
            f"{qmrlab}/README": b"",
            f"{qmrlab}/dataset_description.json": {
                "Name": "BEP001 example dataset 0X (Fast Quantitative Susceptibility Mapping)",
                "BIDSVersion": "1.5.0",
                "DatasetType": "derivative",
                "SourceDatasets": ["../../"],
                "GeneratedBy": [{"Name": "Manual"}],
            },
            f"{qmrlab}/sub-01/anat/sub-01_Chimap.json": {
                "RawSources": [
                    "anat/sub-01_part-mag_T1w.nii.gz",
                    "anat/sub-01_part-phase_T1w.nii.gz",
                ],
                "EstimationAlgorithm": "qsm_sb",
                "EstimationSoftwareName": "qMRLab",
            },
            f"{qmrlab}/sub-01/anat/sub-01_Chimap.nii.gz": b"",
            "sub-01/anat/sub-01_part-mag_T1w.json": QMRI_QSM_T1W,
            "sub-01/anat/sub-01_part-mag_T1w.nii": b"",
            "sub-01/anat/sub-01_part-phase_T1w.json": {**QMRI_QSM_T1W, "Units": "arbitrary"},
            "sub-01/anat/sub-01_part-phase_T1w.nii": b"",
        },
    )


def qmri_megre(root: Path) -> Path:
    """bids-examples ``qmri_megre``: eight echoes of a multi-echo GRE, no computed maps."""
    files: dict[str, object] = {
        "README": b"",
        "MEGRE.json": {
            "MagneticFieldStrength": 3,
            "Manufacturer": "Siemens",
            "ManufacturerModelName": "TrioTim",
            "PulseSequenceType": "GR",
        },
        "dataset_description.json": {
            "Name": "BEP001 example dataset 0X (Multi-Echo Gradient-Echo)",
            "BIDSVersion": "1.5.0",
            "DatasetType": "raw",
        },
    }
    for echo in range(1, 9):
        stem = f"sub-01/anat/sub-01_echo-{echo:02d}_MEGRE"
        files[f"{stem}.json"] = {"EchoTime": round(0.02 * echo, 2)}
        files[f"{stem}.nii.gz"] = b""
    return _write(root, files)


def empty_files(root: Path) -> Path:
    """bids-examples ``ds001`` (anatomical part): 0-byte T1w and inplaneT2 images."""
    files: dict[str, object] = {
        "README": "Balloon Analog Risk-taking Task\n",
        "dataset_description.json": {
            "BIDSVersion": "1.0.0",
            "Name": "Balloon Analog Risk-taking Task",
            "DatasetDOI": "10.18112/openneuro.ds000001.v1.0.0",
        },
        "participants.tsv": "participant_id\tsex\tage\nsub-01\tF\t26\nsub-02\tM\t24\n",
    }
    for sub in ("01", "02"):
        for suffix in ("T1w", "inplaneT2"):
            files[f"sub-{sub}/anat/sub-{sub}_{suffix}.nii.gz"] = b""
    return _write(root, files)
