import json

import numpy as np
import pytest

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.preprocess.crop import (
    ORIENTATION,
    Box,
    intensity_window,
    mask_box,
    region_box,
    slice_positions,
    slice_stack,
    stretch,
)


def test_box_properties_and_round_trip():
    box = Box((1, 2, 3), (4, 6, 9))
    assert box.shape == (3, 4, 6)
    assert box.slices == (slice(1, 4), slice(2, 6), slice(3, 9))
    assert np.zeros((10, 10, 10))[box.slices].shape == box.shape
    as_dict = json.loads(json.dumps(box.to_dict()))
    assert as_dict == {"lower": [1, 2, 3], "upper": [4, 6, 9], "shape": [3, 4, 6]}
    assert Box.from_dict(as_dict) == box
    with pytest.raises(UsageError):
        Box((0, 0, 0), (0, 1, 1))


def test_region_box_tight_margin_and_clipping():
    labels = np.zeros((20, 30, 40), dtype=np.int16)
    labels[5:8, 10:12, 20:25] = 57
    labels[9, 13, 26] = 58
    labels[0:2, 0:2, 0:2] = 99  # not asked for
    assert region_box(labels, [57], (0, 0, 0)) == Box((5, 10, 20), (8, 12, 25))
    assert region_box(labels, [57, 58], (0, 0, 0)) == Box((5, 10, 20), (10, 14, 27))
    assert region_box(labels, [57, 58], (2, 3, 4)) == Box((3, 7, 16), (12, 17, 31))
    # margins larger than the room left are clipped to the array
    assert region_box(labels, [57], (10, 20, 30)) == Box((0, 0, 0), (18, 30, 40))
    with pytest.raises(InputDataError, match="12"):
        region_box(labels, [12], (0, 0, 0))
    with pytest.raises(UsageError):
        region_box(labels, [57], (-1, 0, 0))


def test_mask_box():
    mask = np.zeros((10, 11, 12), dtype=bool)
    mask[2:5, 3:9, 1:12] = True
    assert mask_box(mask) == Box((2, 3, 1), (5, 9, 12))
    assert mask_box(mask, (1, 1, 1)) == Box((1, 2, 0), (6, 10, 12))
    with pytest.raises(InputDataError):
        mask_box(np.zeros((3, 3, 3)))


def test_intensity_window_fixed_and_percentile():
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 100, (10, 10, 10))
    data[0, 0, 0] = np.nan
    data[0, 0, 1] = np.inf
    mask = np.zeros(data.shape, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    mask[0, 0, :2] = True  # non-finite voxels inside the mask are ignored
    assert intensity_window(data, mask, "fixed", (-0.15, 0.35)) == (-0.15, 0.35)
    low, high = intensity_window(data, mask, "percentile", (1.0, 99.0))
    inside = data[2:8, 2:8, 2:8].ravel()
    assert np.isclose(low, np.percentile(inside, 1)) and np.isclose(high, np.percentile(inside, 99))
    assert all(np.isfinite([low, high]))
    # no mask: every finite voxel
    low_all, _ = intensity_window(data, None, "percentile", (0.0, 100.0))
    assert low_all == np.nanmin(np.where(np.isfinite(data), data, np.nan))
    with pytest.raises(UsageError):
        intensity_window(data, mask, "zscore", (1, 99))
    with pytest.raises(UsageError):
        intensity_window(data, mask, "fixed", (1, 1))
    with pytest.raises(InputDataError):
        intensity_window(np.ones((4, 4, 4)), None, "percentile", (1, 99))
    with pytest.raises(InputDataError):
        intensity_window(np.full((4, 4, 4), np.nan), None, "percentile", (1, 99))


def test_stretch_clips_and_zeroes_nan():
    data = np.array([np.nan, -1.0, 0.0, 0.5, 1.0, 2.0, np.inf, -np.inf])
    out = stretch(data, 0.0, 1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0, 0, 0, 0.5, 1, 1, 1, 0])
    np.testing.assert_allclose(stretch(np.array([-0.15, 0.1, 0.35]), -0.15, 0.35), [0, 0.5, 1])
    with pytest.raises(UsageError):
        stretch(data, 1.0, 1.0)


def test_slice_stack_orientation_with_markers():
    # RAS voxel order: axis 0 left->right, axis 1 posterior->anterior, axis 2 inferior->superior
    shape = (12, 14, 10)
    vol = np.zeros(shape, dtype=np.float32)
    box = Box((2, 3, 1), (10, 13, 7))  # W = 8 columns, H = 10 rows, S = 6 slices
    left, anterior, inferior = box.lower[0], box.upper[1] - 1, box.lower[2]
    vol[left, anterior, inferior] = 1.0  # left-anterior-inferior corner of the box
    vol[box.upper[0] - 1, box.lower[1], box.upper[2] - 1] = 2.0  # right-posterior-superior
    other = np.zeros(shape, dtype=np.float32)
    other[5, 6, 3] = 3.0
    stack = slice_stack([vol, other], box)
    assert stack.shape == (6, 2, 10, 8) and stack.dtype == np.float32
    assert stack.flags["C_CONTIGUOUS"]
    # slice 0 is inferior; row 0 anterior (top); column 0 subject's left (neurological)
    assert stack[0, 0, 0, 0] == 1.0
    assert stack[-1, 0, -1, -1] == 2.0
    assert stack[:, 0].sum() == 3.0
    # channel order kept; documented index formula holds
    s, r, k = 3 - box.lower[2], box.upper[1] - 1 - 6, 5 - box.lower[0]
    assert stack[s, 1, r, k] == 3.0 and stack[:, 1].sum() == 3.0
    assert ORIENTATION["rows"] == "anterior->posterior"
    assert ORIENTATION["columns"] == "left->right"
    assert ORIENTATION["slices"] == "inferior->superior"


def test_slice_stack_rejects_bad_input():
    box = Box((0, 0, 0), (3, 3, 3))
    with pytest.raises(InputDataError):
        slice_stack([], box)
    with pytest.raises(InputDataError):
        slice_stack([np.zeros((4, 4, 4)), np.zeros((4, 4, 5))], box)
    with pytest.raises(InputDataError):
        slice_stack([np.zeros((2, 4, 4))], box)
    with pytest.raises(InputDataError):
        slice_stack([np.zeros((4, 4))], box)


def test_slice_positions_follow_affine():
    # the built-in template: 1 mm, RAS, origin at (-96, -132, -78)
    affine = np.array([[1.0, 0, 0, -96], [0, 1.0, 0, -132], [0, 0, 1.0, -78], [0, 0, 0, 1]])
    box = Box((10, 20, 60), (30, 40, 64))
    assert slice_positions(box, affine) == [-18.0, -17.0, -16.0, -15.0]
    oblique = affine.copy()
    oblique[2, 1] = 0.5  # z depends on y: the in-plane centre y (29.5) contributes 14.75
    assert slice_positions(box, oblique) == pytest.approx([-3.25, -2.25, -1.25, -0.25])
    with pytest.raises(UsageError):
        slice_positions(box, np.eye(3))
