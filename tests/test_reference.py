import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.inputs.reference import (
    atlas_on_grid,
    load_reference,
    region_indices,
    template_on_grid,
)


def test_builtin_reference_has_the_basal_ganglia():
    reference = load_reference()
    assert reference.space == "MNI152NLin2009cAsym"
    assert reference.atlas_name == "Neuromorphometrics"
    names = [f"{s}_{n}" for s in ("Left", "Right") for n in ("Caudate", "Putamen", "Pallidum")]
    assert set(region_indices(reference, names)) == set(names)
    assert "Licence" in reference.template_source and "Licence" in reference.atlas_source
    with pytest.raises(InputDataError, match="Left_Caudatte"):
        region_indices(reference, ["Left_Caudatte"])


def test_user_atlas_with_label_table(tmp_path):
    builtin = load_reference()
    template = template_on_grid(builtin, 2.0)
    labels = atlas_on_grid(builtin, template).numpy()
    mine = np.where(labels == builtin.labels["Left_Putamen"], 7, 0).astype(np.int16)
    path = tmp_path / "atlas-Mine_dseg.nii.gz"
    nib.save(nib.Nifti1Image(mine, np.diag([2.0, 2.0, 2.0, 1.0]) @ np.eye(4)), path)
    with pytest.raises(MissingInputError, match="index"):
        load_reference(atlas=path)
    pd.DataFrame({"index": [7], "name": ["LeftPutamen"]}).to_csv(
        tmp_path / "atlas-Mine_dseg.tsv", sep="\t", index=False
    )
    reference = load_reference(atlas=path)
    assert reference.atlas_name == "Mine" and reference.labels == {"LeftPutamen": 7}
    assert region_indices(reference, ["LeftPutamen"]) == {"LeftPutamen": 7}


def test_non_ras_user_template_is_reoriented(tmp_path):
    builtin = load_reference()
    ras = nib.load(builtin.template_path)
    data = np.asarray(ras.dataobj)
    # Same brain stored left-right flipped in voxel order (LAS), with an affine that says so.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    las = nib.Nifti1Image(data[::-1], ras.affine @ flip)
    assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
    path = tmp_path / "tpl-Flipped_T1w.nii.gz"
    nib.save(las, path)
    reference = load_reference(template=path)
    assert reference.space == "Flipped"
    image = template_on_grid(reference, 1.0)
    np.testing.assert_array_equal(image.numpy(), data.astype(np.float32))


def test_missing_user_files(tmp_path):
    with pytest.raises(MissingInputError, match="--template"):
        load_reference(template=tmp_path / "nope.nii.gz")
    with pytest.raises(MissingInputError, match="--atlas"):
        load_reference(atlas=tmp_path / "nope.nii.gz")


def test_atlas_sidecars_say_which_space_the_labels_come_from(tmp_path):
    import dataclasses
    import json

    from bids_qnet.workflows.reference import write_atlas

    builtin = load_reference()
    atlas = tmp_path / "atlas.nii.gz"
    atlas.write_bytes(b"labels")
    write_atlas(tmp_path / "out", builtin, 2.0, atlas)
    sidecar = (
        tmp_path / "out" / ("space-MNI152NLin2009cAsym_atlas-Neuromorphometrics_res-2_dseg.json")
    )
    meta = json.loads(sidecar.read_text())
    assert (
        "SPM12's MNI space" in meta["SpaceNote"] and "without a registration" in meta["SpaceNote"]
    )
    assert meta["Resolution"].startswith("2 mm isotropic")
    mine = dataclasses.replace(builtin, atlas_source="user-supplied atlas /data/mine.nii.gz")
    write_atlas(tmp_path / "user", mine, 2.0, atlas)
    user = json.loads((tmp_path / "user" / sidecar.name).read_text())
    assert "SpaceNote" not in user
