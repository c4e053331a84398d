"""End to end: the participant level on a small demo cohort, two participants broken on purpose."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.cli.run import main
from bids_qnet.inputs.reference import atlas_on_grid, load_reference, template_on_grid
from bids_qnet.inputs.validation import run_validator

from .conftest import OPTIONS, SPACE, STEM, snapshot, writable_copy
from .images import assert_drawn

pytestmark = pytest.mark.slow


def test_failures_reported_and_others_processed(run, capsys):
    assert run["code"] == 66  # the first failure: sub-05 lacks its R2starmap
    for sub in ("01", "02", "03", "04"):
        report = (run["out"] / f"sub-{sub}.html").read_text()
        assert f"sub-{sub}" in report and report.count("<img") == 2
    assert not (run["out"] / "sub-05" / "anat").exists()
    assert not (run["out"] / "sub-06" / "anat").exists()


def test_error_lines_name_participant_and_fix(tmp_path, run, capsys):
    code = main(
        [
            str(run["bids"]),
            str(writable_copy(run["out"], tmp_path / "out")),
            "participant",
            "-w",
            str(tmp_path / "work"),
            "--participant-label",
            "05",
            "06",
            *OPTIONS,
        ]
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bids_qnet: error")]
    assert code == 66
    assert len(lines) == 2
    assert "sub-05" in lines[0] and "R2starmap" in lines[0] and "--channels" in lines[0]
    assert "sub-06" in lines[1] and "sub-06_Chimap.nii.gz" in lines[1]


def test_input_dataset_untouched(run):
    assert snapshot(run["bids"]) == run["before"]


def test_expected_files(run):
    anat = run["out"] / "sub-01" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    expected = {
        f"sub-01_from-{SPACE}_to-T1w_mode-image_xfm.h5",
        f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5",
    }
    for suffix in ("Chimap", "R2starmap", "T1w"):
        expected |= {f"sub-01_{STEM}_{suffix}.nii.gz", f"sub-01_{STEM}_desc-bgcrop_{suffix}.nii.gz"}
    expected |= {
        f"sub-01_{STEM}_desc-bgcrop_slices.npy",
        f"sub-01_{STEM}_desc-bgcrop_embeddings.npy",
    }
    sidecars = {n.split(".")[0] + ".json" for n in expected}
    coreg = {n for n in names if n.endswith("_xfm.mat")}  # present when T1w has its own grid
    assert set(names) == expected | sidecars | coreg | {n.replace(".mat", ".json") for n in coreg}
    for name in sidecars:
        meta = json.loads((anat / name).read_text())
        assert meta["Complete"] is True and meta["Sources"]
    folder = run["out"] / "sub-01" / "figures"
    figures = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
    assert figures == [
        "sub-01_desc-bgcrop_slices.png",
        f"sub-01_space-{SPACE}_desc-registration_qc.png",
    ]
    assert (folder / "sub-01_report.json").is_file()  # the report's data (--reports-only)
    for name in figures:
        assert_drawn(folder / name, min_colours=16)
    qc = assert_drawn(folder / figures[1])
    assert qc.shape[1] > qc.shape[0]  # five views side by side, one row per channel
    assert not [p for p in run["out"].rglob(".tmp-*")]


def test_one_participant_has_a_separate_t1w_grid(run):
    coreg = list(run["out"].glob("sub-*/anat/*_from-R2starmap_to-T1w_mode-image_xfm.mat"))
    assert len(coreg) == 2  # t1w_grid="mixed": two on the GRE grid, two on their own grid


def test_stack_and_embeddings(run):
    anat = run["out"] / "sub-02" / "anat"
    stack = np.load(anat / f"sub-02_{STEM}_desc-bgcrop_slices.npy")
    vectors = np.load(anat / f"sub-02_{STEM}_desc-bgcrop_embeddings.npy")
    assert stack.ndim == 4 and stack.shape[1] == 3 and stack.dtype == np.float32
    assert 0.0 <= stack.min() and stack.max() <= 1.0
    assert vectors.shape == (stack.shape[0], 512) and np.isfinite(vectors).all()
    meta = json.loads((anat / f"sub-02_{STEM}_desc-bgcrop_slices.json").read_text())
    assert meta["Channels"] == ["Chimap", "R2starmap", "T1w"]
    assert meta["SlicePositions"] == sorted(meta["SlicePositions"])  # inferior to superior


def test_registration_puts_iron_where_the_atlas_says(run):
    """Registered QSM: pallidum > putamen > white matter, as planted in template space."""
    reference = load_reference()
    template = template_on_grid(reference, 2.0)
    labels = atlas_on_grid(reference, template).numpy()
    for sub in ("01", "02", "03", "04"):
        chi = nib.load(run["out"] / f"sub-{sub}" / "anat" / f"sub-{sub}_{STEM}_Chimap.nii.gz")
        chi = np.asarray(chi.dataobj)
        means = {
            name: float(
                np.mean(
                    chi[
                        np.isin(
                            labels,
                            [reference.labels[f"Left_{name}"], reference.labels[f"Right_{name}"]],
                        )
                    ]
                )
            )
            for name in ("Pallidum", "Putamen", "Thalamus_Proper")
        }
        assert means["Pallidum"] > 0.08, means
        assert means["Pallidum"] > means["Putamen"] > means["Thalamus_Proper"], means


def test_crop_contains_the_basal_ganglia(run):
    reference = load_reference()
    labels = atlas_on_grid(reference, template_on_grid(reference, 2.0)).numpy()
    meta = json.loads(
        (run["out"] / "sub-01" / "anat" / f"sub-01_{STEM}_desc-bgcrop_slices.json").read_text()
    )
    lower, upper = meta["Box"]["lower"], meta["Box"]["upper"]
    names = [
        f"{side}_{n}" for side in ("Left", "Right") for n in ("Caudate", "Putamen", "Pallidum")
    ]
    inside = np.zeros(labels.shape, bool)
    inside[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]] = True
    for name in names:
        region = labels == reference.labels[name]
        assert region.any() and inside[region].all(), name


def test_output_passes_the_bids_validator(run):
    issues = run_validator(run["out"])
    errors = [i for i in issues if i.get("severity") == "error"]
    assert errors == []


def test_rerun_skips_complete_participants(run, caplog, tmp_path):
    out = writable_copy(run["out"], tmp_path / "out")
    anat = out / "sub-01" / "anat"
    stamp = {p.name: p.stat().st_mtime_ns for p in anat.iterdir()}
    code = main(
        [
            str(run["bids"]),
            str(out),
            "participant",
            "-w",
            str(run["work"]),
            "--participant-label",
            "01",
            *OPTIONS,
        ]
    )
    assert code == 0
    assert {p.name: p.stat().st_mtime_ns for p in anat.iterdir()} == stamp
    assert "already complete" in caplog.text


def test_settings_saved_with_outputs(run):
    saved = list((run["out"] / "sub-01" / "log").glob("*/bids_qnet_settings.json"))
    assert saved
    settings = json.loads(saved[0].read_text())
    assert settings["registration_profile"] == "fast" and settings["random_seed"] == 7
    assert os.path.isabs(settings["bids_dir"])


def test_overwrite_reuses_the_work_cache_and_is_deterministic(run, tmp_path):
    out = writable_copy(run["out"], tmp_path / "out")
    anat = out / "sub-01" / "anat"
    stack = anat / f"sub-01_{STEM}_desc-bgcrop_slices.npy"
    vectors = anat / f"sub-01_{STEM}_desc-bgcrop_embeddings.npy"
    before = stack.read_bytes(), vectors.read_bytes()
    stack.unlink()  # a lost output: --overwrite rewrites it from the nipype cache
    code = main(
        [
            str(run["bids"]),
            str(out),
            "participant",
            "-w",
            str(run["work"]),
            "--participant-label",
            "01",
            "--overwrite",
            *OPTIONS,
        ]
    )
    assert code == 0
    assert (stack.read_bytes(), vectors.read_bytes()) == before


def test_fresh_run_same_seed_gives_identical_stack(run, tmp_path):
    code = main(
        [
            str(run["bids"]),
            str(tmp_path / "out"),
            "participant",
            "-w",
            str(tmp_path / "work"),
            "--participant-label",
            "01",
            "--skip-bids-validation",
            *OPTIONS,
        ]
    )
    assert code == 0
    name = f"sub-01/anat/sub-01_{STEM}_desc-bgcrop_slices.npy"
    assert (tmp_path / "out" / name).read_bytes() == (run["out"] / name).read_bytes()
