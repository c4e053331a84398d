import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.errors import InputDataError, MissingInputError, NothingSelectedError, UsageError
from bids_qnet.inputs import bids_dataset as bids_io
from bids_qnet.inputs.selection import clean_labels, load_filters


def _image(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), path
    )
    return path


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    for sub in ("01", "02"):
        for suffix in ("Chimap", "R2starmap", "T1w"):
            if sub == "02" and suffix == "R2starmap":
                continue
            _image(root / f"sub-{sub}" / "anat" / f"sub-{sub}_{suffix}.nii.gz", np.ones((4, 5, 6)))
    return root


def test_clean_labels_strips_prefix_and_reads_files(tmp_path):
    assert clean_labels(["sub-01", "02", "01"], "sub") == ["01", "02"]
    label_file = tmp_path / "labels.txt"
    label_file.write_text("sub-03\n\n04\n")
    assert clean_labels([str(label_file)], "sub") == ["03", "04"]
    assert clean_labels(None, "sub") is None


@pytest.mark.parametrize("label", ["../01", "a/b", "01_ses-1", "x y;z"])
def test_clean_labels_refuses_unsafe(label):
    with pytest.raises(UsageError):
        clean_labels([label], "sub")


def test_select_subjects_unknown(dataset):
    layout = bids_io.load_layout(dataset)
    assert bids_io.select_subjects(layout, ["01", "99"]) == (["01"], ["99"])
    with pytest.raises(NothingSelectedError, match="99"):
        bids_io.select_subjects(layout, ["99"])


def test_find_channels_names_missing_suffix(dataset):
    layout = bids_io.load_layout(dataset)
    found = bids_io.find_channels(layout, "01", None, ["Chimap", "R2starmap", "T1w"], {})
    assert list(found.channels) == ["Chimap", "R2starmap", "T1w"]
    with pytest.raises(MissingInputError, match="R2starmap"):
        bids_io.find_channels(layout, "02", None, ["Chimap", "R2starmap", "T1w"], {})


def test_find_channels_ambiguous_then_filtered(dataset):
    anat = dataset / "sub-01" / "anat"
    _image(anat / "sub-01_run-2_Chimap.nii.gz", np.ones((4, 5, 6)))
    (anat / "sub-01_Chimap.nii.gz").rename(anat / "sub-01_run-1_Chimap.nii.gz")
    layout = bids_io.load_layout(dataset)
    with pytest.raises(InputDataError, match="bids-filter-file"):
        bids_io.find_channels(layout, "01", None, ["Chimap"], {})
    found = bids_io.find_channels(layout, "01", None, ["Chimap"], {"Chimap": {"run": 2}})
    assert found.channels["Chimap"].name == "sub-01_run-2_Chimap.nii.gz"


def test_channels_from_a_derivative_dataset(dataset, tmp_path):
    qsmxt = tmp_path / "qsmxt"
    (qsmxt).mkdir()
    (qsmxt / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "qsmxt",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "QSMxT"}],
            }
        )
    )
    _image(qsmxt / "sub-02" / "anat" / "sub-02_R2starmap.nii.gz", np.ones((4, 5, 6)))
    layout = bids_io.load_layout(dataset, {"qsmxt": qsmxt})
    found = bids_io.find_channels(layout, "02", None, ["Chimap", "R2starmap", "T1w"], {})
    assert found.channels["R2starmap"].is_relative_to(qsmxt)


def test_check_image_reports_grid_and_nonfinite(tmp_path):
    data = np.ones((6, 7, 8))
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    info = bids_io.check_image(_image(tmp_path / "a.nii.gz", data, affine))
    assert info["shape"] == [6, 7, 8] and info["nonfinite"] == 2
    assert info["zooms"] == [0.9, 0.9, 2.0] and info["obliquity"] == 0


def test_check_image_errors(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(InputDataError, match="empty"):
        bids_io.check_image(empty)
    four_d = _image(tmp_path / "4d.nii.gz", np.ones((4, 4, 4, 3)))
    with pytest.raises(InputDataError, match="4D"):
        bids_io.check_image(four_d)
    good = _image(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputDataError, match="is truncated: its header describes 32000 bytes"):
        bids_io.check_image(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti at all" * 40))
    with pytest.raises(InputDataError, match="cannot be read"):
        bids_io.check_image(garbage)
    nan = _image(tmp_path / "nan.nii.gz", np.full((4, 4, 4), np.nan))
    with pytest.raises(InputDataError, match="no finite voxel"):
        bids_io.check_image(nan)


def test_filters_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"Chimap": {"acq": "qsm"}}))
    assert load_filters(path) == {"Chimap": {"acq": "qsm"}}
    path.write_text("[1, 2]")
    with pytest.raises(UsageError):
        load_filters(path)


def test_sessions_are_selected_and_found(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    for ses in ("pre", "post"):
        for suffix in ("Chimap", "T1w"):
            _image(
                root / "sub-01" / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_{suffix}.nii.gz",
                np.ones((4, 5, 6)),
            )
    layout = bids_io.load_layout(root)
    assert bids_io.select_sessions(layout, "01", None) == ["post", "pre"]
    assert bids_io.select_sessions(layout, "01", clean_labels(["ses-pre"], "ses")) == ["pre"]
    found = bids_io.find_channels(layout, "01", "pre", ["Chimap", "T1w"], {})
    assert found.name == "sub-01_ses-pre"
    assert found.channels["T1w"].name == "sub-01_ses-pre_T1w.nii.gz"


@pytest.mark.parametrize("parent", ["perf", "sourcedata", "anat"])
def test_find_channels_ignores_folder_names_above_the_dataset(tmp_path, parent):
    # pybids matches ``datatype`` anywhere in the absolute path; a dataset kept under a folder
    # named like a datatype (or "sourcedata") must still be found, and only its anat images.
    root = tmp_path / parent / "bids"
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    _image(root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz", np.ones((4, 5, 6)))
    _image(root / "sub-01" / "perf" / "sub-01_T1w.nii.gz", np.ones((4, 5, 6)))
    _image(root / "sourcedata" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", np.ones((4, 5, 6)))
    layout = bids_io.load_layout(root)
    found = bids_io.find_channels(layout, "01", None, ["Chimap"], {})
    assert found.channels["Chimap"] == root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    with pytest.raises(MissingInputError, match="T1w"):
        bids_io.find_channels(layout, "01", None, ["T1w"], {})
