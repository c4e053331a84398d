"""Real antspyx registrations on the built-in template at 2 mm (about half a minute on 2 cores)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ants
import ants.config
import numpy as np
import pytest

from bids_qnet.data import registration_profile
from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.inputs.reference import brain_mask
from bids_qnet.preprocess import quality as rq
from bids_qnet.preprocess import registration as reg
from bids_qnet.preprocess.ants_calls import registration_kwargs

BASAL_GANGLIA = [
    f"{side}_{region}"
    for region in ("Caudate", "Putamen", "Pallidum")
    for side in ("Left", "Right")
]
ROTATION = (0.06, -0.05, 0.07)  # radians about x, y, z (3-4 degrees)
TRANSLATION = (6.0, -5.0, 4.0)  # mm


# ---------------------------------------------------------------------------- synthetic data


def _rotation(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _centre(image):
    index = (np.array(image.shape) - 1) / 2.0
    return np.asarray(image.origin) + np.asarray(image.direction) @ (
        index * np.array(image.spacing)
    )


def _oblique_grid(ref, spacing, angles, pad_mm=20.0):
    """An empty image covering ``ref`` with another spacing and tilted axes."""
    direction = _rotation(*angles) @ np.asarray(ref.direction)
    extent = np.array(ref.shape) * np.array(ref.spacing) + pad_mm
    shape = np.ceil(extent / np.array(spacing)).astype(int)
    origin = _centre(ref) - direction @ ((shape - 1) / 2.0 * np.array(spacing))
    return ants.make_image(
        tuple(int(s) for s in shape),
        voxval=0.0,
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=direction,
        pixeltype="float",
    )


def _rigid(ref, angles, translation, path):
    tx = ants.create_ants_transform(transform_type="Euler3DTransform", center=tuple(_centre(ref)))
    tx.set_parameters(np.array([*angles, *translation], dtype=float))
    ants.write_transform(tx, str(path))
    return tx


def _smooth_warp(ref, amplitude_mm, seed, path, spacing=8.0):
    """A smooth displacement field (six Gaussian bumps of 30 mm width) as an ANTs warp file."""
    rng = np.random.default_rng(seed)
    grid = ants.resample_image(ref, (spacing,) * 3, use_voxels=False, interp_type=0)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    field = np.zeros(grid.shape + (3,), np.float32)
    width = 30.0 / spacing
    for _ in range(6):
        centre = rng.uniform(0.25, 0.75, 3) * np.array(grid.shape)
        bump = np.exp(-((index - centre) ** 2).sum(-1) / (2 * width**2))
        field += (bump[..., None] * rng.normal(0, 1, 3) * amplitude_mm / 2).astype(np.float32)
    warp = ants.from_numpy(
        field,
        origin=grid.origin,
        spacing=grid.spacing,
        direction=grid.direction,
        has_components=True,
    )
    ants.image_write(warp, str(path))


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _brain_points(template, n=400, seed=0):
    mask = template.numpy() > 0
    index = np.argwhere(mask)
    index = index[np.random.default_rng(seed).choice(len(index), n, replace=False)]
    direction, spacing = np.asarray(template.direction), np.array(template.spacing)
    return np.asarray(template.origin) + (direction @ (index * spacing).T).T


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mask(template):
    return brain_mask(template)


@pytest.fixture(scope="module")
def fast():
    return registration_profile("fast")


@pytest.fixture(scope="module")
def subject(template, atlas, tmp_path_factory):
    """Template and atlas under a rigid motion and a smooth warp, on an oblique 2x2x3 mm grid."""
    tmp = tmp_path_factory.mktemp("subject")
    _rigid(template, ROTATION, TRANSLATION, tmp / "rigid.mat")
    _smooth_warp(template, 4.0, 0, tmp / "warp.nii.gz")
    truth = [str(tmp / "rigid.mat"), str(tmp / "warp.nii.gz")]  # subject point -> template
    grid = _oblique_grid(template, (2.0, 2.0, 3.0), (0.1, 0.05, -0.08))
    image = ants.apply_transforms(grid, template, truth, interpolator="linear")
    labels = ants.apply_transforms(grid, atlas, truth, interpolator="genericLabel")
    return {"image": image, "labels": labels, "truth": truth}


@pytest.fixture(scope="module")
def normalised(subject, template, mask, fast, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("norm") / "sub-01_from-T1w_to-MNI_")
    return reg.normalise(subject["image"], template, mask, fast["normalisation"], prefix, seed=7)


# ---------------------------------------------------------------------------- grids, channels


def test_same_grid_and_group_by_grid(template):
    copy = template.clone()
    coarse = ants.resample_image(template, (3.0, 3.0, 3.0), use_voxels=False, interp_type=0)
    shifted = template.clone()
    shifted.set_origin(tuple(np.array(template.origin) + 0.5))
    nudged = template.clone()
    nudged.set_origin(tuple(np.array(template.origin) + 1e-5))
    assert reg.same_grid(template, copy) and reg.same_grid(template, nudged)
    assert not reg.same_grid(template, coarse)
    assert not reg.same_grid(template, shifted)
    assert reg.same_grid(template, shifted, atol_mm=1.0)
    images = {"Chimap": template, "T1w": coarse, "R2starmap": copy, "T2starmap": shifted}
    assert reg.group_by_grid(images) == [["Chimap", "R2starmap"], ["T1w"], ["T2starmap"]]
    assert reg.group_by_grid({}) == []


def test_pick_coregistration_channel():
    assert reg.pick_coregistration_channel(["T1w", "Chimap", "R2starmap"]) == "R2starmap"
    assert reg.pick_coregistration_channel(["Chimap", "T2starmap"]) == "T2starmap"
    assert reg.pick_coregistration_channel(["T1w", "Chimap"]) == "Chimap"
    assert reg.pick_coregistration_channel(["FLAIR", "T1w"]) == "T1w"
    assert reg.pick_coregistration_channel(["FLAIR", "PDw"]) == "FLAIR"  # tie: first
    with pytest.raises(UsageError):
        reg.pick_coregistration_channel([])


# ---------------------------------------------------------------------------- profiles


def test_profile_keys_are_checked(fast):
    kwargs = registration_kwargs(fast["normalisation"], "normalisation")
    # JSON lists become tuples (a tuple never equals a list)
    assert kwargs["aff_iterations"] == tuple(fast["normalisation"]["aff_iterations"])
    assert all(not isinstance(v, list) for v in kwargs.values())
    with pytest.raises(UsageError, match="aff_iteration"):
        registration_kwargs({"type_of_transform": "Rigid", "aff_iteration": [1]}, "x")
    with pytest.raises(UsageError, match="random_seed"):
        registration_kwargs({"random_seed": 1}, "x")
    with pytest.raises(UsageError, match="one entry per level"):
        registration_kwargs(
            {"aff_iterations": [1, 2], "aff_shrink_factors": [2, 1], "aff_smoothing_sigmas": [0]},
            "x",
        )


def test_coregister_rejects_misspelled_key_before_running(template, tmp_path):
    params = {"type_of_transform": "Rigid", "metric": "mattes"}
    with pytest.raises(UsageError, match="metric"):
        reg.coregister(template, template, params, str(tmp_path / "x_"), seed=1)
    with pytest.raises(UsageError, match="SyN"):
        reg.coregister(template, template, {"type_of_transform": "SyN"}, str(tmp_path / "x_"), 1)


# ---------------------------------------------------------------------------- co-registration


def test_coregister_recovers_rigid_motion(template, fast, tmp_path):
    truth = _rigid(template, ROTATION, TRANSLATION, tmp_path / "truth.mat")
    grid = _oblique_grid(template, (2.0, 2.0, 3.0), (-0.07, 0.1, 0.05))
    moving = ants.apply_transforms(grid, template, [str(tmp_path / "truth.mat")])
    data = moving.numpy()
    data[:3] = np.nan  # NaN (outside a QSM mask, say) must not stop ANTs
    moving = moving.new_image_like(data)
    before = ants.config._random_seed
    prefix = str(tmp_path / "out" / "sub-01_from-Chimap_to-R2starmap_")
    forward = reg.coregister(template, moving, fast["coregistration"], prefix, seed=11)
    assert ants.config._random_seed == before  # the seed is not left behind
    assert forward == [prefix + "0GenericAffine.mat"] and Path(forward[0]).is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(forward[0]).name]
    # forward maps template points into the moving image; the truth maps them back
    recovered = ants.read_transform(forward[0])
    points = _brain_points(template)
    errors = [
        np.linalg.norm(np.array(truth.apply_to_point(recovered.apply_to_point(tuple(p)))) - p)
        for p in points
    ]
    assert np.max(errors) < 1.5, f"max error {np.max(errors):.2f} mm"
    assert np.mean(errors) < 0.75


def test_registration_seed_repeats_single_threaded(tmp_path):
    """Same seed, one ITK thread: identical transforms; another seed: a different one."""
    script = textwrap.dedent(
        f"""
        import ants, numpy as np
        from bids_qnet.preprocess import registration as reg
        from bids_qnet.data import registration_profile
        from bids_qnet.inputs.reference import load_reference, template_on_grid
        fixed = template_on_grid(load_reference(), 4.0)
        tx = ants.create_ants_transform(transform_type="Euler3DTransform")
        tx.set_parameters(np.array([0.05, 0.0, -0.04, 5.0, -3.0, 2.0]))
        moving = tx.apply_to_image(fixed, reference=fixed)
        params = registration_profile("fast")["coregistration"]
        out = []
        for i, seed in enumerate([3, 3, 4]):
            f = reg.coregister(fixed, moving, params, r"{tmp_path}/r%d_" % i, seed)
            out.append(ants.read_transform(f[0]).parameters)
        print(np.array_equal(out[0], out[1]), np.array_equal(out[0], out[2]))
        """
    )
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(reg.__file__).parents[1]), *sys.path])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


# ---------------------------------------------------------------------------- normalisation


def test_normalise_outputs(normalised, fast):
    transforms = normalised.transforms
    assert transforms.type_of_transform == "SyN"
    assert transforms.stages == ("Affine", "SyNOnly")
    assert transforms.forward == [transforms.composite]
    assert transforms.inverse == [transforms.inverse_composite]
    for path in (transforms.composite, transforms.inverse_composite, transforms.affine):
        assert Path(path).is_file()
    assert transforms.composite.endswith("sub-01_from-T1w_to-MNI_Composite.h5")
    folder = Path(transforms.composite).parent
    assert not [p for p in folder.iterdir() if p.name.startswith(".ants-")]


def test_normalise_returns_the_reference_warped_once(normalised, subject, template, mask):
    """antsRegistration's own warped output is the reference channel through the composite."""
    warped = normalised.warped
    again = reg.to_template(subject["image"], template, normalised.transforms.forward)
    assert reg.same_grid(warped, template) and warped.pixeltype == again.pixeltype
    inside = mask.numpy() > 0
    difference = np.abs(warped.numpy() - again.numpy())[inside]
    scale = np.abs(again.numpy()[inside]).max()
    assert np.percentile(difference, 99.9) <= 1e-5 * scale  # float rounding
    assert difference.max() <= 0.05 * scale  # a voxel at the edge of the subject's grid at most


def test_prefix_may_be_a_new_folder(template, fast, tmp_path):
    small = ants.resample_image(template, (4.0, 4.0, 4.0), use_voxels=False, interp_type=0)
    prefix = str(tmp_path / "new" / "folder") + os.sep
    forward = reg.coregister(small, small, fast["coregistration"], prefix, seed=1)
    assert forward == [str(tmp_path / "new" / "folder" / "0GenericAffine.mat")]
    assert Path(forward[0]).is_file()


def test_normalise_maps_basal_ganglia(normalised, subject, template, atlas, mask, fast, reference):
    registered = reg.to_template(subject["image"], template, normalised.transforms.forward)
    assert reg.same_grid(registered, template)
    metrics = rq.quality(registered, template, mask)
    assert metrics["brain_correlation"] > 0.8
    assert metrics["mask_overlap"] > 0.8 and metrics["coverage"] > 0.99
    rq.check_quality(metrics, fast["quality"], "sub-01 T1w")  # passes
    # subject-space truth labels brought to the template overlap the atlas
    forward, inverse = normalised.transforms.forward, normalised.transforms.inverse
    back = reg.to_template(subject["labels"], template, forward, "genericLabel")
    atlas_data, back_data = atlas.numpy(), back.numpy()
    dice = {
        n: _dice(back_data == reference.labels[n], atlas_data == reference.labels[n])
        for n in BASAL_GANGLIA
    }
    assert min(dice.values()) > 0.7, dice
    assert dice["Left_Putamen"] > 0.8 and dice["Right_Putamen"] > 0.8, dice
    # and the inverse takes the atlas into subject space
    into_subject = reg.to_template(atlas, subject["labels"], inverse, "genericLabel")
    truth = subject["labels"].numpy()
    for name in ("Left_Putamen", "Right_Putamen"):
        index = reference.labels[name]
        assert _dice(into_subject.numpy() == index, truth == index) > 0.7


def test_coregistered_channel_reaches_template_in_one_resampling(
    subject, normalised, template, atlas, reference, fast, tmp_path
):
    """A second channel on its own grid, moved and with another contrast: [composite, coreg]."""
    _rigid(template, (-0.04, 0.03, 0.05), (-3.0, 4.0, 2.0), tmp_path / "head_motion.mat")
    chain = [str(tmp_path / "head_motion.mat"), *subject["truth"]]  # channel point -> template
    grid = _oblique_grid(template, (2.5, 2.5, 2.5), (-0.05, 0.08, 0.12))
    channel = ants.apply_transforms(grid, template, chain, interpolator="linear")
    channel = channel.new_image_like(np.sqrt(np.clip(channel.numpy(), 0, None)) * 7.0)
    labels = ants.apply_transforms(grid, atlas, chain, interpolator="genericLabel")
    prefix = str(tmp_path / "sub-01_from-Chimap_to-T1w_")
    coreg = reg.coregister(subject["image"], channel, fast["coregistration"], prefix, seed=3)
    transforms = normalised.transforms.forward + coreg
    back = reg.to_template(labels, template, transforms, "genericLabel").numpy()
    for name in ("Left_Putamen", "Right_Putamen", "Left_Caudate", "Right_Caudate"):
        index = reference.labels[name]
        assert _dice(back == index, atlas.numpy() == index) > 0.7, name


def test_normalise_checks_mask(subject, template, fast, tmp_path):
    coarse = ants.resample_image(template, (4.0, 4.0, 4.0), use_voxels=False, interp_type=0)
    with pytest.raises(InputDataError, match="grid"):
        reg.normalise(subject["image"], template, coarse, fast["normalisation"], str(tmp_path), 1)
    empty = template * 0
    with pytest.raises(InputDataError, match="empty"):
        reg.normalise(subject["image"], template, empty, fast["normalisation"], str(tmp_path), 1)


def test_to_template_series_equals_one_by_one(subject, template, normalised, tmp_path):
    _rigid(subject["image"], (0.02, 0.0, -0.03), (1.0, 2.0, 0.0), tmp_path / "coreg.mat")
    transforms = [*normalised.transforms.forward, str(tmp_path / "coreg.mat")]  # a GRE channel
    data = subject["image"].numpy()
    data[10, 12, 8] = np.nan
    images = [subject["image"].new_image_like(data), subject["image"].new_image_like(data**2)]
    series = reg.to_template_series(images, template, transforms)
    for image, out in zip(images, series, strict=True):
        single = reg.to_template(image, template, transforms)
        assert reg.same_grid(out, template) and out.pixeltype == single.pixeltype
        assert np.array_equal(out.numpy(), single.numpy())
    with pytest.raises(UsageError, match="one grid"):
        reg.to_template_series([images[0], template], template, transforms)


def test_to_template_checks(template, tmp_path):
    with pytest.raises(UsageError):
        reg.to_template(template, template, [])
    with pytest.raises(RegistrationError, match="missing"):
        reg.to_template(template, template, [str(tmp_path / "none.mat")])
    identity = ants.create_ants_transform(transform_type="AffineTransform")
    ants.write_transform(identity, str(tmp_path / "id.mat"))
    with pytest.raises(UsageError, match="interpolator"):
        reg.to_template(template, template, [str(tmp_path / "id.mat")], interpolator="cubic")
    data = template.numpy()
    data[40, 50, 40] = np.nan
    out = reg.to_template(template.new_image_like(data), template, [str(tmp_path / "id.mat")])
    assert np.isfinite(out.numpy()).all()
    np.testing.assert_allclose(out.numpy(), np.nan_to_num(data), atol=1e-4)
