"""Bad inputs give one clear line and the BEP027 exit code (the table in docs/robustness.md).

Most cases fail in the preflight (seconds): the command line runs in this process on small
inputs. The registration quality gate needs a real registration (slow marker).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.cli.run import main
from bids_qnet.errors import (
    EXIT_DATA,
    EXIT_NO_INPUT,
    EXIT_NOTHING_SELECTED,
    EXIT_SUCCESS,
    EXIT_USAGE,
    EXIT_VALIDATION,
)
from bids_qnet.outputs.names import GroupFiles

from .bids_examples import empty_files, qmri_megre, qmri_qsm
from .robustness import (
    GROUP_QUICK,
    cli,
    group_cohort,
    participant_args,
    tiny_bids,
    tiny_profile,
    write_scan_outputs,
)

CHANNELS = ("Chimap", "R2starmap", "T1w")


def _error_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bids_qnet: error")]


def _copy_participant(bids: Path, source: str, target: str) -> Path:
    """Copy sub-<source> to sub-<target>, renaming the files; return the new anat folder."""
    anat = bids / f"sub-{target}" / "anat"
    anat.mkdir(parents=True)
    for path in (bids / f"sub-{source}" / "anat").iterdir():
        shutil.copy(path, anat / path.name.replace(f"sub-{source}", f"sub-{target}"))
    return anat


def _rewrite(path: Path, data=None, affine=None) -> None:
    """Save new voxels and/or a new affine (kept as the sform as given, even a singular one)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32) if data is None else data
    new = nib.Nifti1Image(data, None)
    new.header.set_sform(image.affine if affine is None else affine, code=1)
    new.header.set_qform(None, code=0)
    nib.save(new, path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """sub-01 is fine; sub-02 .. sub-08 are each broken in one way."""
    root = tmp_path_factory.mktemp("bad_inputs")
    bids = tiny_bids(root / "bids")
    chimap = "{}_Chimap.nii.gz"
    anat = _copy_participant(bids, "01", "02")
    (anat / "sub-02_R2starmap.nii.gz").unlink()
    (anat / "sub-02_R2starmap.json").unlink()
    anat = _copy_participant(bids, "01", "03")
    (anat / chimap.format("sub-03")).write_bytes(b"")
    anat = _copy_participant(bids, "01", "04")
    whole = (anat / chimap.format("sub-04")).read_bytes()
    (anat / chimap.format("sub-04")).write_bytes(whole[: len(whole) // 2])
    anat = _copy_participant(bids, "01", "05")
    data = np.asarray(nib.load(anat / chimap.format("sub-05")).dataobj, dtype=np.float32)
    _rewrite(anat / chimap.format("sub-05"), data=np.stack([data, data, data], axis=-1))
    anat = _copy_participant(bids, "01", "06")
    _rewrite(anat / chimap.format("sub-06"), data=np.full(data.shape, np.nan, np.float32))
    anat = _copy_participant(bids, "01", "07")
    shifted = nib.load(anat / "sub-07_R2starmap.nii.gz").affine.copy()
    shifted[0, 3] += 500.0  # half a metre to the left: no overlap with the other channels
    _rewrite(anat / "sub-07_R2starmap.nii.gz", affine=shifted)
    anat = _copy_participant(bids, "01", "08")
    singular = nib.load(anat / chimap.format("sub-08")).affine.copy()
    singular[:3, 2] = 0.0  # the third voxel axis maps to nothing
    _rewrite(anat / chimap.format("sub-08"), affine=singular)
    return {"bids": bids, "root": root, "profile": tiny_profile(root)}


def _participant(broken, label: str, *extra: str) -> int:
    root = broken["root"]
    args = participant_args(broken["bids"], root / "out", root / "work", broken["profile"])
    return main([*args, "--participant-label", label, "--skip-bids-validation", *extra])


@pytest.mark.parametrize(
    ("label", "code", "words"),
    [
        ("02", EXIT_NO_INPUT, ["sub-02", "no R2starmap image", "--channels"]),
        ("03", EXIT_DATA, ["sub-03", "sub-03_Chimap.nii.gz is an empty (0-byte) file"]),
        ("04", EXIT_DATA, ["sub-04", "sub-04_Chimap.nii.gz is truncated"]),
        ("05", EXIT_DATA, ["sub-05", "is 4D with shape", "a 3D map is expected"]),
        ("06", EXIT_DATA, ["sub-06", "has no finite voxel (all NaN/Inf)"]),
        ("07", EXIT_DATA, ["sub-07", "fields of view of sub-07_R2starmap.nii.gz", "share 0%"]),
        ("08", EXIT_DATA, ["sub-08", "singular or non-finite affine"]),
    ],
)
def test_broken_participant_fails_in_preflight(broken, capsys, label, code, words):
    assert _participant(broken, label) == code
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (broken["root"] / "out" / f"sub-{label}" / "anat").exists()


def test_invalid_dataset_description(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": ')
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "dataset_description.json is not valid JSON" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unknown_participant_label(broken, capsys):
    assert _participant(broken, "99") == EXIT_NOTHING_SELECTED
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "participant label(s) 99 not found" in lines[0]
    assert "available: 01, 02" in lines[0]


def test_unknown_participant_among_known_ones_is_reported(broken, capsys):
    assert _participant(broken, "02 98") == EXIT_NO_INPUT  # the first failure: sub-02
    lines = _error_lines(capsys)
    assert any("sub-98" in ln and "not found" in ln for ln in lines), lines


def test_session_label_on_a_dataset_without_sessions(broken, capsys):
    code = _participant(broken, "01", "--session-label", "pre")
    assert code == EXIT_NOTHING_SELECTED
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "sub-01: no session ['pre']" in lines[0]


def test_unknown_session_label(tmp_path, capsys):
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "ses-a" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "s", "BIDSVersion": "1.10.0"}')
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    for suffix in CHANNELS:
        nib.save(image, anat / f"sub-01_ses-a_{suffix}.nii.gz")
    profile = tiny_profile(tmp_path)
    args = participant_args(bids, tmp_path / "out", tmp_path / "work", profile)
    code = main([*args, "--session-label", "b", "--skip-bids-validation"])
    assert code == EXIT_NOTHING_SELECTED
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "sub-01: no session ['b']" in lines[0]


def test_filter_selecting_nothing(broken, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"Chimap": {"run": 3}}))
    code = _participant(broken, "01", "--bids-filter-file", str(filters))
    assert code == EXIT_NOTHING_SELECTED
    lines = _error_lines(capsys)
    assert len(lines) == 1
    assert 'sub-01: --bids-filter-file query {"run": 3} selects no Chimap image' in lines[0]


def test_filter_with_an_unknown_entity(broken, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"all": {"colour": "red"}}))
    assert _participant(broken, "01", "--bids-filter-file", str(filters)) == EXIT_USAGE
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--bids-filter-file query for Chimap is invalid" in lines[0]


def test_filter_file_not_json(broken, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text("{Chimap: run=1}")
    assert _participant(broken, "01", "--bids-filter-file", str(filters)) == EXIT_USAGE
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "is not valid JSON" in lines[0]


def test_partial_nan_is_accepted_and_counted(broken):
    from bids_qnet.inputs import bids_dataset as bids_io

    anat = broken["bids"] / "sub-01" / "anat"
    path = broken["root"] / "nan" / "sub-01_Chimap.nii.gz"
    path.parent.mkdir()
    shutil.copy(anat / "sub-01_Chimap.nii.gz", path)
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    data[10, 10, 10], data[11, 11, 11] = np.nan, np.inf
    _rewrite(path, data=data)
    channels = {"Chimap": path, "T1w": anat / "sub-01_T1w.nii.gz"}
    assert bids_io.check_channels(channels, "T1w")["Chimap"]["nonfinite"] == 2


# --- bids-examples -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids_examples")
    return {
        "qmri_qsm": qmri_qsm(root / "qmri_qsm"),
        "qmri_megre": qmri_megre(root / "qmri_megre"),
        "ds001": empty_files(root / "ds001"),
        "profile": tiny_profile(root),
        "root": root,
    }


def _example(examples, name: str, tmp_path: Path, *extra: str) -> int:
    out, work = tmp_path / "out", tmp_path / "work"
    args = participant_args(examples[name], out, work, examples["profile"])
    return main([*args, *extra])


def test_qmri_qsm_default_channels(examples, tmp_path, capsys):
    code = _example(examples, "qmri_qsm", tmp_path, "--skip-bids-validation")
    assert code == EXIT_NO_INPUT
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "sub-01: no Chimap image" in lines[0]
    assert "-d/--derivatives" in lines[0]


def test_qmri_qsm_with_its_derivatives(examples, tmp_path, capsys):
    bids = examples["qmri_qsm"]
    derivatives = ["-d", f"qmrlab={bids / 'derivatives' / 'qMRLab'}", "--channels", "Chimap", "T1w"]
    code = _example(examples, "qmri_qsm", tmp_path, "--skip-bids-validation", *derivatives)
    assert code == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "2 T1w images match" in lines[0] and "part-mag" in lines[0]
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"T1w": {"part": "mag"}}))
    code = _example(
        examples,
        "qmri_qsm",
        tmp_path,
        "--skip-bids-validation",
        *derivatives,
        "--bids-filter-file",
        str(filters),
    )
    assert code == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "sub-01_Chimap.nii.gz is an empty (0-byte) file" in lines[0]


def test_qmri_megre(examples, tmp_path, capsys):
    code = _example(examples, "qmri_megre", tmp_path, "--skip-bids-validation")
    assert code == EXIT_NO_INPUT
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "sub-01: no Chimap image" in lines[0]
    skip = "--skip-bids-validation"
    code = _example(examples, "qmri_megre", tmp_path, skip, "--channels", "MEGRE")
    assert code == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "8 MEGRE images match" in lines[0]


def test_empty_files_skip_validation(examples, tmp_path, capsys):
    code = _example(examples, "ds001", tmp_path, "--skip-bids-validation", "--channels", "T1w")
    assert code == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 2
    for sub, line in zip(("01", "02"), lines, strict=True):
        assert f"sub-{sub}: " in line and f"sub-{sub}_T1w.nii.gz is an empty (0-byte) file" in line


def test_empty_files_fail_validation(examples, tmp_path, capsys):
    code = _example(examples, "ds001", tmp_path, "--channels", "T1w")
    assert code == EXIT_VALIDATION
    lines = _error_lines(capsys)
    assert len(lines) == 2
    for sub, line in zip(("01", "02"), lines, strict=True):
        assert f"sub-{sub}: failed BIDS validation" in line and "EMPTY_FILE" in line, line


# --- the group level ------------------------------------------------------------------------


@pytest.fixture
def cohort(tmp_path):
    bids, out = group_cohort(tmp_path, n_participants=6)
    return {"bids": bids, "out": out}


def _group(cohort, *extra: str) -> int:
    return main([str(cohort["bids"]), str(cohort["out"]), "group", *GROUP_QUICK, *extra])


def test_group_without_participants_tsv(cohort, capsys):
    (cohort["bids"] / "participants.tsv").unlink()
    assert _group(cohort, "--stage1", "frozen") == EXIT_NO_INPUT
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "participants file not found" in lines[0]


def test_group_with_duplicate_ids(cohort, capsys):
    tsv = cohort["bids"] / "participants.tsv"
    tsv.write_text(tsv.read_text() + "sub-02\tHC\n")
    assert _group(cohort, "--stage1", "frozen") == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "duplicate participant ids: sub-02" in lines[0]


def test_group_labels_for_absent_participants_are_left_out(cohort, caplog):
    tsv = cohort["bids"] / "participants.tsv"
    tsv.write_text(tsv.read_text() + "sub-98\tHC\nsub-99\tHH\n")
    assert _group(cohort, "--stage1", "frozen") == EXIT_SUCCESS
    assert "left out, no participant-level outputs: sub-98, sub-99" in caplog.text
    splits = GroupFiles(cohort["out"]).splits.read_text()
    assert "sub-98" not in splits and "sub-06" in splits


def test_group_without_participant_outputs(tmp_path, capsys):
    bids, out = group_cohort(tmp_path, n_participants=2)
    shutil.rmtree(out)
    out.mkdir()
    code = main([str(bids), str(out), "group", *GROUP_QUICK])
    assert code == EXIT_NOTHING_SELECTED
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "no complete participant-level outputs" in lines[0]


@pytest.mark.parametrize(
    ("changed", "shown"),
    [({"version": "0.0.9"}, "version 0.0.9"), ({"fingerprint": "other"}, "settings other")],
)
def test_group_refuses_mixed_versions_or_settings(cohort, capsys, changed, shown):
    write_scan_outputs(cohort["out"], "02", 0, np.random.default_rng(1), **changed)
    assert _group(cohort, "--stage1", "frozen") == EXIT_DATA
    lines = _error_lines(capsys)
    assert len(lines) == 1
    assert "made with 2 different bids_qnet versions/settings" in lines[0]
    assert shown in lines[0] and "1 scan(s) (sub-02)" in lines[0]
    assert "--overwrite" in lines[0]
    assert not GroupFiles(cohort["out"]).models.exists()


# --- registration quality gate (a real registration) ----------------------------------------


@pytest.mark.slow
def test_wrong_affine_is_caught_by_the_registration_gate(broken, tmp_path):
    """All channels rotated by 90 degrees in their header (a converter mix-up of axes)."""
    bids = broken["bids"]
    anat = _copy_participant(bids, "01", "10")
    turn = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    for suffix in CHANNELS:
        path = anat / f"sub-10_{suffix}.nii.gz"
        _rewrite(path, affine=turn @ nib.load(path).affine)
    args = participant_args(bids, tmp_path / "out", tmp_path / "work", broken["profile"])
    result = cli([*args, "--participant-label", "10", "--skip-bids-validation"])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("bids_qnet: error")]
    assert result.returncode == EXIT_DATA, result.stderr[-2000:]
    assert len(lines) == 1
    assert "sub-10: registration of T1w" in lines[0] and "failed its quality check" in lines[0]
    assert "abs_brain_correlation" in lines[0]
    assert not (tmp_path / "out" / "sub-10" / "anat").exists()  # nothing cropped from anywhere


def test_stop_on_first_crash_stops_before_anyone_when_preflight_fails(broken, capsys):
    root = broken["root"]
    out = root / "out-stop"
    args = participant_args(broken["bids"], out, root / "work-stop", broken["profile"])
    argv = [*args, "--participant-label", "01", "02", "--skip-bids-validation"]
    assert main([*argv, "--stop-on-first-crash"]) == EXIT_NO_INPUT
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "no R2starmap image" in lines[0]
    assert not (out / "sub-01" / "anat").exists()  # sub-01 is fine but was not started
