"""The focused registration profile and the ground-truth Dice of the registration benchmark.

A 2 mm demo participant (pose and warp known) registered with the ``focused`` profile: SyN on the
template cut to the crop box with a margin, the affine alone outside it (seconds on 2 cores).
"""

import json
import sys
from pathlib import Path

import ants
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_qnet.data import registration_profile
from bids_qnet.demo import make_demo_dataset
from bids_qnet.demo.acquisition import template_points_shown
from bids_qnet.errors import UsageError
from bids_qnet.inputs.reference import brain_mask
from bids_qnet.preprocess import registration as reg
from bids_qnet.preprocess.crop import Box
from bids_qnet.workflows.steps import focus_box

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _truth import BG_LABELS, dice_through, scanner_points_on_template  # noqa: E402

LPS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("focus")
    info = make_demo_dataset(
        root / "bids", n_participants=1, seed=5, resolution=2.0, variability="realistic"
    )
    truth = json.loads(info.truth_path.read_text())
    t1w = ants.image_read(str(info.bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    return {"t1w": t1w, "pose": truth["participants"][0]["scans"][0], "box": truth["warp_box_mm"]}


@pytest.fixture(scope="module")
def focus(template, atlas, reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "atlas.nii"
    ants.image_write(atlas, str(path))
    spec = {
        "crop_mode": "bg",
        "atlas": str(path),
        "labels": [reference.labels[n] for n in BG_LABELS],
        "margin_mm": 21.0,
    }
    return focus_box(spec, brain_mask(template))


@pytest.fixture(scope="module")
def focused(demo, template, focus, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("norm") / "sub-01_")
    profile = registration_profile("focused")
    mask = brain_mask(template)
    return reg.normalise(demo["t1w"], template, mask, profile["normalisation"], prefix, 3, focus)


def _true_field(demo, template, path):
    """The exact template -> scanner map of the demo scan as an ANTs displacement field."""
    pose = demo["pose"]
    linear = Rotation.from_euler("xyz", pose["rotation_deg"], degrees=True).as_matrix()
    linear = linear @ np.diag(pose["scale"])
    index = np.indices(template.shape).reshape(3, -1).T
    matrix = np.asarray(template.direction) @ np.diag(template.spacing)
    q = (index @ matrix.T + template.origin) * LPS  # template RAS mm
    y = q @ linear.T + pose["translation_mm"]
    for _ in range(8):  # solve T(y) = q: T is the pose's inverse plus a smooth warp
        y += (q - template_points_shown(pose, y, demo["box"])) @ linear.T
    field = ((y - q) * LPS).reshape(*template.shape, 3).astype(np.float32)
    warp = ants.from_numpy(
        field, template.origin, template.spacing, template.direction, has_components=True
    )
    ants.image_write(warp, str(path))
    return str(path)


def test_dice_through_the_true_transform_is_one(demo, template, atlas, reference, tmp_path):
    field = _true_field(demo, template, tmp_path / "truth_warp.nii.gz")
    args = (demo["pose"], demo["box"], reference.labels)
    exact = dice_through(demo["t1w"], template, atlas, [field], *args)
    assert min(exact.values()) > 0.97, exact
    shift = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    shift.set_parameters([1, 0, 0, 0, 1, 0, 0, 0, 1, 3.0, 0, 0])  # 3 mm off
    ants.write_transform(shift, str(tmp_path / "shift.mat"))
    off = dice_through(demo["t1w"], template, atlas, [field, str(tmp_path / "shift.mat")], *args)
    assert max(off.values()) < 0.8 and np.mean(list(off.values())) < 0.6, off


def test_focused_profile_is_built_in():
    profile = registration_profile("focused")
    assert profile["focus"] == {"margin_mm": 15}
    assert profile["normalisation"]["type_of_transform"] == "SyN"


def test_focus_box_is_the_crop_box_with_a_margin(focus, atlas, reference, template):
    labels = atlas.numpy()
    found = np.argwhere(np.isin(labels, [reference.labels[n] for n in BG_LABELS]))
    assert focus.lower == tuple(int(v) for v in found.min(0) - 11)  # ceil(21 / 2)
    assert focus.upper == tuple(int(v) for v in found.max(0) + 12)
    whole = focus_box({"crop_mode": "full", "margin_mm": 4.0}, brain_mask(template))
    assert whole.shape[0] > focus.shape[0] and all(lo >= 0 for lo in whole.lower)


def test_focused_registration_is_the_affine_outside_the_box(focused, demo, template, focus):
    transforms = focused.transforms
    assert transforms.stages == ("Affine", "SyNOnly") and Path(transforms.affine).is_file()
    composite, _ = scanner_points_on_template(demo["t1w"], template, transforms.forward)
    linear, covered = scanner_points_on_template(demo["t1w"], template, [transforms.affine])
    moved = np.linalg.norm(composite - linear, axis=-1)
    inside = np.zeros(template.shape, bool)
    inside[focus.slices] = True
    assert moved[~inside & covered].max() < 1e-3  # the affine alone
    assert np.percentile(moved[inside], 90) > 0.5  # SyN moved points inside the box
    # the field is zero on the box's faces: no step where the two parts meet
    faces = inside.copy()
    faces[tuple(slice(lo + 1, up - 1) for lo, up in zip(focus.lower, focus.upper, strict=True))] = 0
    assert moved[faces].max() < 1e-3


def test_focused_warped_reference_is_the_composite_resampling(focused, demo, template):
    again = reg.to_template(demo["t1w"], template, focused.transforms.forward)
    assert reg.same_grid(focused.warped, template)
    warped, resampled = focused.warped.numpy(), again.numpy()
    difference = np.abs(warped - resampled)
    # A template point that lands on the edge of the T1w's field of view, within rounding, is
    # inside for one path and outside (0) for the other: the two ways of composing the same
    # transforms round differently from one CPU to another (a 1e-4 mm shift makes 3 such voxels
    # differ by up to 37 here). Everywhere else the two images are the same resampling.
    edge_tie = (warped == 0) ^ (resampled == 0)
    assert edge_tie.sum() <= 1e-5 * edge_tie.size
    assert difference[~edge_tie].max() <= 1e-4 * np.abs(resampled).max()


def test_focused_registration_maps_the_basal_ganglia(focused, demo, template, atlas, reference):
    args = (demo["pose"], demo["box"], reference.labels)
    dice = dice_through(demo["t1w"], template, atlas, focused.transforms.forward, *args)
    assert min(dice.values()) > 0.85 and np.mean(list(dice.values())) > 0.93, dice


def test_focus_needs_a_staged_transform_inside_the_grid(demo, template, tmp_path):
    mask = brain_mask(template)
    params = {**registration_profile("fast")["normalisation"], "type_of_transform": "Affine"}
    box = Box((10, 10, 10), (40, 40, 40))
    with pytest.raises(UsageError, match="focus"):
        reg.normalise(demo["t1w"], template, mask, params, str(tmp_path / "a_"), 1, box)
    params["type_of_transform"] = "SyN"
    with pytest.raises(UsageError, match="exceeds"):
        reg.normalise(
            demo["t1w"], template, mask, params, str(tmp_path / "b_"), 1, Box((0,) * 3, (999,) * 3)
        )


@pytest.mark.parametrize(
    "focus", [{"margin_mm": -1}, {"margin_mm": "5"}, {"margin": 5}, [5], {"margin_mm": True}]
)
def test_profile_focus_is_checked(tmp_path, focus):
    profile = {**registration_profile("fast"), "focus": focus}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(UsageError, match="focus"):
        registration_profile(str(path))
