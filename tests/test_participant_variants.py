"""End to end, other study designs: QSM only, maps from a derivative dataset, whole-brain crop."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.cli.run import main
from bids_qnet.demo import make_demo_dataset
from bids_qnet.outputs.derivatives import is_complete
from bids_qnet.outputs.names import ParticipantFiles

pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def qsm_only(tmp_path_factory):
    """One participant whose QSM lives in a QSMxT-like derivative dataset, with NaN voxels."""
    root = tmp_path_factory.mktemp("variants")
    demo = make_demo_dataset(root / "bids", n_participants=1, seed=11, resolution=2.0)
    qsmxt = root / "qsmxt"
    (qsmxt / "sub-01" / "anat").mkdir(parents=True)
    description = {
        "Name": "QSMxT",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "QSMxT"}],
    }
    (qsmxt / "dataset_description.json").write_text(json.dumps(description))
    source = demo.bids_dir / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32)
    inside = np.argwhere(data != 0)
    picked = inside[np.random.default_rng(0).choice(len(inside), 25, replace=False)]
    data[tuple(picked.T)] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), qsmxt / "sub-01" / "anat" / source.name)
    shutil.copy(source.with_suffix("").with_suffix(".json"), qsmxt / "sub-01" / "anat")
    source.unlink()
    source.with_suffix("").with_suffix(".json").unlink()
    out = root / "out"
    code = main(
        [
            str(demo.bids_dir),
            str(out),
            "participant",
            "-d",
            f"qsmxt={qsmxt}",
            "--channels",
            "Chimap",
            "--crop",
            "full",
            "--registration-profile",
            "fast",
            "--embedding-weights",
            "random",
            "--template-resolution",
            "2",
            "--image-size",
            "48",
            "-w",
            str(root / "work"),
        ]
    )
    return {"code": code, "out": out}


def test_qsm_only_from_derivatives_runs(qsm_only):
    assert qsm_only["code"] == 0
    files = ParticipantFiles(qsm_only["out"], "01", None, SPACE, 2.0, "full")
    for path in (files.registered("Chimap"), files.cropped("Chimap"), files.slices):
        assert is_complete(path), path
    assert is_complete(files.embeddings)
    assert not files.registered("T1w").exists()  # the one channel asked for, nothing else
    report = files.report.read_text()
    assert "Chimap" in report and report.count("<img") == 2


def test_single_channel_whole_brain_stack(qsm_only):
    anat = qsm_only["out"] / "sub-01" / "anat"
    stem = f"sub-01_space-{SPACE}_res-2_desc-brain"
    stack = np.load(anat / f"{stem}_slices.npy")
    vectors = np.load(anat / f"{stem}_embeddings.npy")
    assert stack.shape[1] == 1
    assert stack.shape[0] >= 60  # the whole brain at 2 mm, not the basal-ganglia box (~27)
    assert vectors.shape == (stack.shape[0], 512)
    meta = json.loads((anat / f"{stem}_slices.json").read_text())
    assert meta["Crop"] == "full" and meta["Regions"] == []


def test_nan_voxels_counted_in_sidecar(qsm_only):
    sidecar = qsm_only["out"] / "sub-01" / "anat" / f"sub-01_space-{SPACE}_res-2_Chimap.json"
    meta = json.loads(sidecar.read_text())
    assert meta["NonFiniteVoxelsSetToZero"] == 25
    assert meta["Sources"][0].startswith("bids:qsmxt:")  # a BIDS URI of the -d dataset
