"""Tests of the synthetic demo dataset (resolution 2 mm, few participants: seconds each)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.demo import main, make_demo_dataset
from bids_qnet.errors import UsageError

SUFFIXES = ("Chimap", "R2starmap", "T1w")
PALLIDUM_MM = {"Left_Pallidum": (-19.5, -3.5, -2.0), "Right_Pallidum": (20.0, -3.0, -2.0)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(root / "bids", n_participants=4, seed=0, resolution=2.0)


@pytest.fixture(scope="module")
def truth(demo):
    return json.loads(demo.truth_path.read_text())


def _image(bids_dir: Path, sub: str, suffix: str, session: str | None = None):
    folder = bids_dir / sub / (session or "") / "anat"
    stem = "_".join(filter(None, [sub, session]))
    return nib.load(folder / f"{stem}_{suffix}.nii.gz")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_only_bids_files_with_bids_names(demo):
    expected = {"dataset_description.json", "README", "participants.tsv", "participants.json"}
    for sub in demo.participants["participant_id"]:
        for suffix in SUFFIXES:
            expected |= {f"{sub}/anat/{sub}_{suffix}.nii.gz", f"{sub}/anat/{sub}_{suffix}.json"}
    assert _files(demo.bids_dir) == expected
    description = json.loads((demo.bids_dir / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0"
    assert description["DatasetType"] == "raw"
    assert description["License"] == "CC-BY-NC-4.0"  # the atlas behind the phantom is CC BY-NC
    for credit in (
        "ICBM 2009c",
        "McConnell Brain Imaging Centre",
        "McGill University",
        "Neuromorphometrics atlas",
        "OASIS",
        "Neuromorphometrics, Inc.",
    ):
        assert credit in description["HowToAcknowledge"]
    readme = (demo.bids_dir / "README").read_text(encoding="utf-8")
    assert description["HowToAcknowledge"] in readme and "CC-BY-NC-4.0" in readme
    assert "\N{COPYRIGHT SIGN} McConnell" in readme and "Copyright (C) 1993-2004" in readme
    assert "synthetic" in description["Name"]
    sidecar = json.loads((demo.bids_dir / "sub-01/anat/sub-01_Chimap.json").read_text())
    assert sidecar["Units"] == "ppm" and sidecar["MagneticFieldStrength"] == 3
    sidecar = json.loads((demo.bids_dir / "sub-01/anat/sub-01_R2starmap.json").read_text())
    assert sidecar["Units"] == "1/s"


def test_participants_table(demo):
    table = pd.read_csv(demo.bids_dir / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "group", "age", "sex"]
    pd.testing.assert_frame_equal(table, demo.participants, check_dtype=False)
    assert sorted(table["group"]) == ["HC", "HC", "HH", "HH"]
    assert table["age"].between(30, 75).all()
    assert set(table["sex"]) <= {"M", "F"}
    columns = json.loads((demo.bids_dir / "participants.json").read_text())
    assert set(columns["group"]["Levels"]) == {"HC", "HH"}


def test_truth_is_outside_the_bids_folder(demo, truth):
    assert demo.truth_path == demo.bids_dir.with_name("bids_truth") / "truth.json"
    assert demo.bids_dir not in demo.truth_path.parents
    assert truth["settings"]["seed"] == 0
    assert truth["settings"]["planted_regions"][0] == "Left_Pallidum"
    groups = [(p["participant_id"], p["group"]) for p in truth["participants"]]
    assert groups == list(demo.participants[["participant_id", "group"]].itertuples(index=False))
    for record in truth["participants"]:
        assert (record["effect_factor"] > 1.25) == (record["group"] == "HH")
        assert set(record["scans"][0]) >= {"rotation_deg", "translation_mm", "warp_mm"}


def test_maps_share_an_oblique_anisotropic_grid(demo):
    for sub in demo.participants["participant_id"]:
        chi, r2s = _image(demo.bids_dir, sub, "Chimap"), _image(demo.bids_dir, sub, "R2starmap")
        assert chi.shape == r2s.shape
        np.testing.assert_array_equal(chi.affine, r2s.affine)
        np.testing.assert_allclose(chi.header.get_zooms(), (0.9, 0.9, 2.0), atol=1e-5)
        assert chi.get_data_dtype() == np.float32
        assert int(chi.header["qform_code"]) == 1 and int(chi.header["sform_code"]) == 1
        assert chi.header.get_xyzt_units()[0] == "mm"
        slice_axis = chi.affine[:3, 2] / 2.0
        tilt = np.degrees(np.arccos(abs(slice_axis[2])))
        assert 9.0 < tilt < 21.0  # tilted about left-right, like an AC-PC slab


def test_maps_are_brain_masked_and_cover_the_brain(demo):
    chi = _image(demo.bids_dir, "sub-01", "Chimap")
    r2s = np.asarray(_image(demo.bids_dir, "sub-01", "R2starmap").dataobj)
    data = np.asarray(chi.dataobj)
    np.testing.assert_array_equal(data != 0, r2s != 0)
    volume_ml = (data != 0).sum() * np.prod(chi.header.get_zooms()) / 1000
    assert 1100 < volume_ml < 2000
    for axis in range(3):  # nothing cut at the edges of the slab
        assert not np.take(data, [0, -1], axis=axis).any()
    assert 15 < np.median(r2s[r2s > 0]) < 22  # mostly grey and white matter


def test_t1w_grids_alternate_when_mixed(demo, truth):
    kinds = [record["t1w_grid"] for record in truth["participants"]]
    assert kinds == ["gre", "separate", "gre", "separate"]
    for sub, kind in zip(demo.participants["participant_id"], kinds, strict=True):
        chi, t1w = _image(demo.bids_dir, sub, "Chimap"), _image(demo.bids_dir, sub, "T1w")
        if kind == "gre":
            assert t1w.shape == chi.shape
            np.testing.assert_array_equal(t1w.affine, chi.affine)
        else:
            np.testing.assert_allclose(t1w.header.get_zooms(), (1.0, 1.0, 1.0))
            np.testing.assert_allclose(t1w.affine[:3, :3], np.eye(3), atol=1e-9)


@pytest.mark.parametrize("grid", ["gre", "separate"])
def test_t1w_grid_setting(tmp_path, grid):
    info = make_demo_dataset(tmp_path / "bids", n_participants=1, resolution=2.0, t1w_grid=grid)
    chi, t1w = _image(info.bids_dir, "sub-01", "Chimap"), _image(info.bids_dir, "sub-01", "T1w")
    assert (t1w.shape == chi.shape) == (grid == "gre")
    assert np.allclose(t1w.header.get_zooms(), 1.0) == (grid == "separate")


def test_t1w_has_scalp_and_skull_outside_the_brain(demo):
    t1w = np.asarray(_image(demo.bids_dir, "sub-01", "T1w").dataobj)  # on the GRE grid
    brain = np.asarray(_image(demo.bids_dir, "sub-01", "Chimap").dataobj) != 0
    white = np.percentile(t1w[brain], 90)
    assert np.percentile(t1w[~brain], 99) > 0.6 * white  # bright scalp
    assert np.median(t1w[~brain]) < 0.1 * white  # dark background and skull


def test_patients_have_more_iron(demo):
    top = {}
    table = demo.participants
    for sub, group in zip(table["participant_id"], table["group"], strict=True):
        chi = np.asarray(_image(demo.bids_dir, sub, "Chimap").dataobj)
        values = chi[chi != 0]  # the top 0.25 % of the brain is mostly pallidum
        top.setdefault(group, []).append(values[values >= np.percentile(values, 99.75)].mean())
    assert min(top["HH"]) > max(top["HC"])


def _cosines(points, coef, box):
    u = (points - box[0]) / (box[1] - box[0])
    k = np.arange(coef.shape[-1])
    cx, cy, cz = (np.cos(np.pi * k * u[a]) for a in range(3))
    return np.einsum("cxyz,x,y,z->c", coef, cx, cy, cz)


def test_truth_pose_locates_the_pallidum(demo, truth):
    """Follow the documented conventions from template mm to a scan voxel."""
    box = np.array(truth["warp_box_mm"])
    for record in truth["participants"]:
        pose = record["scans"][0]
        sub = record["participant_id"]
        image = _image(demo.bids_dir, sub, "Chimap")
        data = np.asarray(image.dataobj)
        rx, ry, rz = np.radians(pose["rotation_deg"])
        rotation = (
            np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
            @ np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
            @ np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
        )
        for region, centre in PALLIDUM_MM.items():
            point = np.array(centre)
            for _ in range(5):  # invert p + d(p) = centre
                point = centre - _cosines(point, np.array(pose["warp_mm"]), box)
            scanner = rotation @ (np.array(pose["scale"]) * point) + pose["translation_mm"]
            ijk = np.round(np.linalg.inv(image.affine) @ [*scanner, 1])[:3].astype(int)
            patch = data[tuple(slice(i - 1, i + 2) for i in ijk)]
            assert patch.mean() > 0.09, (sub, region, patch.mean())
            if record["group"] == "HC":
                expected = record["regional_values"][region][0]
                assert abs(np.median(patch) - expected) < 0.03


def test_template_points_shown_follow_the_truth(demo, truth):
    """Each scan voxel's template point, by the public helper, shows the phantom's labels."""
    from bids_qnet.demo.acquisition import template_points_shown
    from bids_qnet.demo.phantom import SEGMENTS, build_phantom

    phantom = build_phantom(2.0)
    to_voxel = np.linalg.inv(phantom.affine)
    pallidum = np.isin(phantom.seg, [SEGMENTS.index(f"{s}_Pallidum") for s in ("Left", "Right")])
    for record in truth["participants"]:
        image = _image(demo.bids_dir, record["participant_id"], "Chimap")
        data = np.asarray(image.dataobj)
        index = np.argwhere(data != 0)[::7]
        scanner = index @ image.affine[:3, :3].T + image.affine[:3, 3]
        shown = template_points_shown(record["scans"][0], scanner, truth["warp_box_mm"])
        ijk = np.rint(shown @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)
        ijk = np.clip(ijk, 0, np.array(phantom.seg.shape) - 1)
        in_pallidum = pallidum[tuple(ijk.T)]
        values = data[tuple(index.T)]
        assert in_pallidum.sum() > 50
        assert values[in_pallidum].mean() > 0.09  # iron-rich
        assert (
            abs(np.median(values[phantom.seg[tuple(ijk.T)] == SEGMENTS.index("WM")]) + 0.03) < 0.02
        )


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", n_participants=2, seed=0, resolution=2.0)
    pd.testing.assert_frame_equal(again.participants, demo.participants.iloc[:2])
    names = [n for n in _files(again.bids_dir) if not n.startswith("participants.tsv")]
    assert {*names, "participants.tsv"} == _files(again.bids_dir)
    for name in names:  # participants keep their bytes in a larger dataset
        assert (again.bids_dir / name).read_bytes() == (demo.bids_dir / name).read_bytes(), name
    other = make_demo_dataset(tmp_path / "other", n_participants=1, seed=1, resolution=2.0)
    first = np.asarray(_image(demo.bids_dir, "sub-01", "Chimap").dataobj)
    second = np.asarray(_image(other.bids_dir, "sub-01", "Chimap").dataobj)
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_sessions(tmp_path):
    info = make_demo_dataset(tmp_path / "bids", n_participants=1, resolution=2.0, sessions=2)
    for session in ("ses-01", "ses-02"):
        for suffix in SUFFIXES:
            assert _image(info.bids_dir, "sub-01", suffix, session).ndim == 3
    truth = json.loads(info.truth_path.read_text())
    assert [scan["session"] for scan in truth["participants"][0]["scans"]] == ["ses-01", "ses-02"]


def test_bids_validator_finds_no_error(demo):
    validator = shutil.which("bids-validator-deno") or Path(sys.executable).with_name(
        "bids-validator-deno"
    )
    if not Path(validator).exists():
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run(
        [str(validator), "--format", "json", str(demo.bids_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    issues = json.loads(result.stdout)["issues"]["issues"]
    assert not [issue for issue in issues if issue["severity"] == "error"]


def test_bad_settings_raise_usage_error(tmp_path):
    with pytest.raises(UsageError):
        make_demo_dataset(tmp_path / "a", n_participants=0)
    with pytest.raises(UsageError, match="not in the atlas"):
        make_demo_dataset(tmp_path / "b", planted_regions=["Nowhere"])
    with pytest.raises(UsageError, match="outside"):
        make_demo_dataset(tmp_path / "c", truth_dir=tmp_path / "c" / "truth")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["OUT", "--participants", "many"],
        ["OUT", "--t1w-grid", "bogus"],
        ["OUT", "--planted-regions", "Nowhere"],
        ["OUT", "--resolution", "0"],
        ["OUT", "--no-such-option"],
    ],
)
def test_main_bad_arguments_return_64(tmp_path, capsys, argv):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 64
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_main_writes_and_overwrites_only_a_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [str(out), "--participants", "1", "--resolution", "2"]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    assert main(args) == 64  # not empty
    assert main([*args, "--overwrite"]) == 0
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.txt").write_text("keep me")
    assert main([str(other), "--overwrite", "--resolution", "2"]) == 73
    assert (other / "data.txt").read_text() == "keep me"


def test_python_m_runs_the_demo_command():
    result = subprocess.run(
        [sys.executable, "-m", "bids_qnet.demo", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("bids_qnet ")
