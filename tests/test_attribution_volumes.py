"""Back to template space: the inverse of the slice stack and the crop grid."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.attribution.outputs import map_path, read_map, write_map
from bids_qnet.attribution.volumes import unstack
from bids_qnet.errors import InputDataError
from bids_qnet.inputs.scans import Scan
from bids_qnet.outputs.derivatives import sidecar_path, write_sidecar
from bids_qnet.preprocess.crop import Box, slice_stack
from bids_qnet.preprocess.crop_grid import crop_grid


def test_unstack_inverts_slice_stack_exactly():
    rng = np.random.default_rng(0)
    volumes = [rng.random((12, 10, 9)).astype(np.float32) for _ in range(3)]
    box = Box((2, 1, 3), (11, 8, 9))
    stack = slice_stack(volumes, box)
    back = unstack(stack)
    assert back.shape == (3, *box.shape)
    for c, volume in enumerate(volumes):
        np.testing.assert_array_equal(back[c], volume[box.slices])
    np.testing.assert_array_equal(unstack(stack[:, 1]), volumes[1][box.slices])
    # slice_stack: out[s, c, r, k] = volume[c][x0 + k, y1 - 1 - r, z0 + s]
    s, c, r, k = 4, 2, 0, 5
    assert back[c, k, box.shape[1] - 1 - r, s] == stack[s, c, r, k]
    with pytest.raises(InputDataError):
        unstack(np.zeros((2, 3)))


def _participant(tmp_path, affine, box, shift_crop=False):
    """A derivative tree with one scan: slices + sidecar, a crop image, the root atlas."""
    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    stem = "sub-01_space-MNI152NLin2009cAsym_res-2_desc-bgcrop"
    labels = np.zeros((20, 18, 16), np.int16)
    labels[5:9, 6:10, 4:8] = 37
    labels[10:14, 6:10, 4:8] = 36
    atlas = out / "space-MNI152NLin2009cAsym_atlas-Test_res-2_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), atlas)
    pd.DataFrame({"index": [36, 37], "name": ["Right_Caudate", "Left_Caudate"]}).to_csv(
        out / "atlas-Test_dseg.tsv", sep="\t", index=False
    )
    volume = np.zeros((20, 18, 16), np.float32)
    crop = nib.Nifti1Image(volume, affine).slicer[box.slices]
    if shift_crop:
        shifted = crop.affine.copy()
        shifted[0, 3] += 2.0  # one voxel off along x
        crop = nib.Nifti1Image(np.asarray(crop.dataobj), shifted)
    nib.save(crop, anat / f"{stem}_Chimap.nii.gz")
    stack = slice_stack([volume, volume], box)
    np.save(anat / f"{stem}_slices.npy", stack)
    meta = {
        "Box": box.to_dict(),
        "Channels": ["Chimap", "T1w"],
        "Atlas": "Test",
        "Shape": list(stack.shape),
    }
    write_sidecar(anat / f"{stem}_slices.npy", meta)
    scan = Scan("sub-01", None, anat / f"{stem}_slices.npy", anat / f"{stem}_embeddings.npy", "")
    return out, scan, labels


def test_crop_grid_cuts_the_atlas_with_the_box(tmp_path):
    affine = np.array([[2.0, 0, 0, -20], [0, 2, 0, -18], [0, 0, 2, -16], [0, 0, 0, 1]])
    box = Box((3, 4, 2), (16, 12, 10))
    out, scan, labels = _participant(tmp_path, affine, box)
    grid = crop_grid(scan.slices, out)
    np.testing.assert_array_equal(grid.labels, labels[box.slices])
    assert grid.shape == box.shape and grid.zooms == (2.0, 2.0, 2.0)
    assert grid.names == {36: "Right_Caudate", 37: "Left_Caudate"}
    assert grid.channels == ["Chimap", "T1w"]
    np.testing.assert_allclose(grid.affine[:3, 3], affine[:3, 3] + 2.0 * np.array(box.lower))
    # a map written on the grid lands where the atlas says
    path = map_path(out, {"sub": "01", "space": "MNI152NLin2009cAsym", "res": "2"}, "IG")
    assert path.name == "sub-01_space-MNI152NLin2009cAsym_res-2_desc-IG_attribution.nii.gz"
    maps = np.stack([grid.labels == 37, grid.labels == 36]).astype(np.float32)
    write_map(path, maps, grid.affine, {"Channels": grid.channels})
    image = nib.load(path)
    assert image.shape == (*box.shape, 2)
    np.testing.assert_array_equal(read_map(path), maps)
    assert json.loads(sidecar_path(path).read_text())["Complete"] is True
    world = image.affine @ np.array([*np.argwhere(maps[0] > 0)[0], 1.0])
    voxel = np.linalg.solve(affine, world)[:3].round().astype(int)
    assert labels[tuple(voxel)] == 37


def test_crop_grid_refuses_a_crop_that_does_not_line_up(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    box = Box((3, 4, 2), (16, 12, 10))
    out, scan, _ = _participant(tmp_path, affine, box, shift_crop=True)
    with pytest.raises(InputDataError, match="does not line up"):
        crop_grid(scan.slices, out)
