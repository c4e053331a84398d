import gzip
import json
import multiprocessing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qnet import __version__
from bids_qnet.errors import WriteError
from bids_qnet.outputs.atomic import atomic_path, copy_file
from bids_qnet.outputs.derivatives import (
    container_info,
    init_derivatives,
    is_complete,
    raw_source,
    sidecar_path,
    source_datasets,
    source_uri,
    write_sidecar,
)
from bids_qnet.outputs.integrity import check_nifti_whole
from bids_qnet.outputs.names import build_path


def test_build_path_orders_entities():
    path = build_path(
        {"desc": "bgcrop", "res": "1", "space": "MNI152NLin2009cAsym", "ses": "a", "sub": "01"},
        "Chimap",
        ".nii.gz",
    )
    assert path == Path(
        "sub-01/ses-a/anat/sub-01_ses-a_space-MNI152NLin2009cAsym_res-1_desc-bgcrop_Chimap.nii.gz"
    )


def test_build_path_transform_and_unknown_entity():
    xfm = build_path({"sub": "01", "from": "T1w", "to": "MNI", "mode": "image"}, "xfm", ".h5")
    assert xfm.name == "sub-01_from-T1w_to-MNI_mode-image_xfm.h5"
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        build_path({"sub": "01", "colour": "red"}, "T1w", ".nii.gz")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_complete_only_with_sidecar(tmp_path):
    data = tmp_path / "sub-01_x_slices.npy"
    data.write_bytes(b"123")
    assert not is_complete(data)
    sidecar_path(data).write_text("{not json")
    assert not is_complete(data)
    write_sidecar(data, {"Sources": []})
    assert is_complete(data)
    assert json.loads(sidecar_path(data).read_text())["Complete"] is True


def test_raw_source_is_a_bids_uri(tmp_path):
    file = tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert raw_source(tmp_path, file) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"


def _init(args):
    init_derivatives(Path(args[0]), Path(args[1]))
    return True


def test_concurrent_init_leaves_one_valid_description(tmp_path):
    out, bids = tmp_path / "out", tmp_path / "bids"
    bids.mkdir()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert all(pool.map(_init, [(str(out), str(bids))] * 8))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_qnet"
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp")] == []
    assert "*_embeddings.npy" in (out / ".bidsignore").read_text()


def test_copy_file_compresses_a_nifti_reproducibly(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    source = tmp_path / "step.nii"
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 2.0, 1.0])), source)
    first, second = tmp_path / "a_T1w.nii.gz", tmp_path / "b_T1w.nii.gz"
    copy_file(source, first)
    copy_file(source, second)
    assert gzip.decompress(first.read_bytes()) == source.read_bytes()
    assert first.read_bytes() == second.read_bytes()  # no name, no time in the gzip header
    np.testing.assert_array_equal(np.asarray(nib.load(first).dataobj), data)
    plain = tmp_path / "c.nii"
    copy_file(source, plain)  # same extension: a plain copy
    assert plain.read_bytes() == source.read_bytes()
    unpacked = tmp_path / "d.nii"
    copy_file(first, unpacked)  # and back
    assert unpacked.read_bytes() == source.read_bytes()


def test_truncated_nifti_is_caught(tmp_path):
    path = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), path)
    check_nifti_whole(path)  # whole: no error
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(WriteError, match=r"x.nii was written incompletely \(4351 of 4352 bytes\)"):
        check_nifti_whole(path)
    path.write_bytes(b"")
    with pytest.raises(WriteError, match="written incompletely"):
        check_nifti_whole(path)


def test_source_uri_names_the_dataset_that_holds_the_file(tmp_path):
    raw, qsmxt = tmp_path / "bids", tmp_path / "derivatives" / "qsmxt"
    datasets = {"raw": raw, "qsmxt": qsmxt}
    assert source_uri(raw / "sub-01/anat/a.nii.gz", datasets) == "bids:raw:sub-01/anat/a.nii.gz"
    assert source_uri(qsmxt / "sub-01/anat/c.nii.gz", datasets) == "bids:qsmxt:sub-01/anat/c.nii.gz"
    assert source_uri(tmp_path / "x.nii.gz", datasets).startswith("file://")


def test_source_datasets_by_doi_or_relative_link_never_a_machine_path(tmp_path):
    raw, out = tmp_path / "bids", tmp_path / "bids" / ".." / "derivatives" / "qnet"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "Iron study", "DatasetDOI": "10.18112/openneuro.ds000001.v1.0.0"})
    )
    other = tmp_path / "qsmxt"
    other.mkdir()
    sources, links = source_datasets({"raw": raw, "qsmxt": other}, out)
    assert sources[0] == {
        "URL": "bids:raw:",
        "DOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
        "Name": "Iron study",
    }
    assert links == {"raw": "doi:10.18112/openneuro.ds000001.v1.0.0", "qsmxt": "../../qsmxt"}
    assert sources[1] == {"URL": "bids:qsmxt:"}
    assert str(tmp_path) not in json.dumps([sources, links])


@pytest.mark.parametrize(
    ("files", "environ", "expected"),
    [
        ({}, {}, None),
        ({".dockerenv": ""}, {}, {"Type": "docker"}),
        (
            {".dockerenv": "", "version": "x"},
            {},
            {"Type": "docker", "Tag": f"bidsqnet/bids_qnet:{__version__}"},
        ),
        (
            {},
            {"APPTAINER_CONTAINER": "/images/bids_qnet-0.3.sif"},
            {"Type": "apptainer", "Tag": "bids_qnet-0.3.sif"},
        ),
        ({}, {"SINGULARITY_CONTAINER": "/i/q.sif"}, {"Type": "singularity", "Tag": "q.sif"}),
        (
            {"run/.containerenv": 'engine="podman-4.3.1"\nimage="localhost/qnet:1"\n'},
            {},
            {"Type": "podman", "Tag": "localhost/qnet:1"},
        ),
    ],
)
def test_container_is_detected_not_assumed(tmp_path, files, environ, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert container_info(tmp_path, environ) == expected
