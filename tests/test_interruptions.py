"""Runs killed (SIGKILL to the whole job) or stopped by a full disk: nothing looks complete
without its data, and the same command finishes the job with the outputs of an uninterrupted
run."""

from __future__ import annotations

import resource
import shutil
import signal

import pytest

from bids_qnet.errors import EXIT_IO, EXIT_SUCCESS
from bids_qnet.outputs.derivatives import is_complete
from bids_qnet.outputs.names import CV_METRICS, FOLD_DONE, OOF_PREDICTIONS, GroupFiles

from .robustness import (
    GROUP_QUICK,
    SPACE,
    STEM,
    assert_complete_files_whole,
    cli,
    complete_files,
    group_cohort,
    kill_job,
    participant_args,
    participant_outputs,
    same_content,
    stale_temporaries,
    start,
    tiny_bids,
    tiny_profile,
    wait_for,
)

pytestmark = pytest.mark.slow

XFM = f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5"


def _file_size_limit(megabytes: int):
    """``preexec_fn``: files may not grow beyond ``megabytes`` (writes then fail with EFBIG)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = megabytes << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def _errors(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("bids_qnet: error")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One 2 mm demo participant and its uninterrupted participant-level run."""
    root = tmp_path_factory.mktemp("interruptions")
    bids, profile = tiny_bids(root / "bids"), tiny_profile(root)
    out, work = root / "reference" / "out", root / "reference" / "work"
    result = cli(participant_args(bids, out, work, profile, "--skip-bids-validation"))
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    return {"bids": bids, "profile": profile, "out": out, "work": work}


def _assert_same_outputs(out, reference) -> None:
    names = participant_outputs(out)
    assert names == participant_outputs(reference)
    for name in names:
        assert same_content(out / name, reference / name), name
    assert stale_temporaries(out / "sub-01") == []


def test_participant_killed_anywhere_then_rerun_gives_the_same_outputs(tiny, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = participant_args(tiny["bids"], out, work, tiny["profile"], "--skip-bids-validation")
    node = work / "bids_qnet_participant_wf" / "sub_01_wf" / "normalise"
    anat, figures = out / "sub-01" / "anat", out / "sub-01" / "figures"
    final = anat / f"{STEM}_embeddings.npy"
    kill_points = {
        # nipype has started the normalisation node (affine + SyN) and not finished it
        "during registration": lambda: (node / "_inputs.pklz").is_file(),
        "at the first file the sink writes": lambda: anat.is_dir() and any(anat.iterdir()),
        "while figures are written": lambda: figures.is_dir() and any(figures.iterdir()),
    }
    for point, condition in kill_points.items():
        job = start(args, tmp_path / "job.log")
        assert wait_for(condition, job, timeout=600), f"{point}: never reached"
        kill_job(job)
        if point == "during registration":
            assert not (node / "result_normalise.pklz").exists(), "killed too late"
        assert_complete_files_whole(out, tiny["out"])
        assert not is_complete(final), f"killed {point}, the participant looks complete"
    result = cli(args)
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    assert is_complete(final)
    _assert_same_outputs(out, tiny["out"])


def test_full_disk_while_rewriting_outputs(tiny, tmp_path):
    """``--overwrite`` with writes failing (EFBIG) at the first large file, then a clean rerun."""
    out = tmp_path / "out"
    shutil.copytree(tiny["out"], out)
    args = participant_args(tiny["bids"], out, tiny["work"], tiny["profile"])
    args.append("--skip-bids-validation")
    result = cli([*args, "--overwrite"], preexec_fn=_file_size_limit(4))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    lines = _errors(result)
    assert len(lines) == 1
    assert f"sub-01: writing {out / 'sub-01' / 'anat' / XFM} failed: File too large" in lines[0]
    anat = out / "sub-01" / "anat"
    assert not is_complete(anat / XFM)  # its old sidecar went before the new data was tried
    assert not is_complete(anat / f"{STEM}_embeddings.npy")  # nor is the participant complete
    assert_complete_files_whole(out, tiny["out"])
    assert stale_temporaries(out) == []
    result = cli(args)  # space is back: the incomplete participant is processed again
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    _assert_same_outputs(out, tiny["out"])


@pytest.mark.parametrize(
    ("megabytes", "truncated"),
    [
        # the template on the 2 mm grid (4.1 MB, uncompressed in the work folder) via ITK
        (2, "reference/tpl-MNI152NLin2009cAsym_res-2_T1w.nii was written incompletely"),
        # the composite transform (10 MB) via antsRegistration's HDF5 writer
        (6, "normalise/norm_Composite.h5 was written incompletely"),
    ],
)
def test_full_disk_during_registration_does_not_poison_the_cache(
    tiny, tmp_path, megabytes, truncated
):
    """ITK hides failed writes of images and transforms; the checks catch them, a rerun recovers."""
    out, work = tmp_path / "out", tmp_path / "work"
    args = participant_args(tiny["bids"], out, work, tiny["profile"], "--skip-bids-validation")
    result = cli(args, preexec_fn=_file_size_limit(megabytes))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    lines = _errors(result)
    assert len(lines) == 1 and truncated in lines[0], lines
    assert ".tmp-" not in lines[0]  # the message names the file, not its temporary copy
    assert [p for p in complete_files(out) if "sub-01" in p.parts] == []
    result = cli(args)
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    _assert_same_outputs(out, tiny["out"])


# --- the group level --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group_reference(tmp_path_factory):
    bids, out = group_cohort(tmp_path_factory.mktemp("group_reference"))
    result = cli([str(bids), str(out), "group", *GROUP_QUICK])
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    return out


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_group_killed_mid_fold_resumes_at_that_fold(group_reference, tmp_path):
    bids, out = group_cohort(tmp_path)
    args = [str(bids), str(out), "group", *GROUP_QUICK]
    fold0, fold1 = GroupFiles(out).fold(0, 0).folder, GroupFiles(out).fold(0, 1).folder
    job = start(args, tmp_path / "job.log")
    # stage 1 of fold 1 has saved its weights; Q-Net and the predictions are still to come
    assert wait_for(lambda: (fold1 / "ResNet.pt").is_file(), job, timeout=600)
    kill_job(job)
    assert (fold0 / FOLD_DONE).is_file() and not (fold1 / FOLD_DONE).exists()
    finished = _stamps(fold0)
    result = cli(args)
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    assert "repeat 0 fold 0 already done" in result.stderr
    assert "repeat 0 fold 1: " in result.stderr  # fold 1 trained again, from its start
    assert _stamps(fold0) == finished  # the finished fold untouched
    for name in (OOF_PREDICTIONS, CV_METRICS):
        assert (out / name).read_bytes() == (group_reference / name).read_bytes(), name

    result = cli([*args, "--overwrite"])
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    assert "already done" not in result.stderr
    assert (fold0 / FOLD_DONE).stat().st_mtime_ns != finished[FOLD_DONE]  # recomputed
    for name in (OOF_PREDICTIONS, CV_METRICS):
        assert (out / name).read_bytes() == (group_reference / name).read_bytes(), name


def test_group_changed_fold_results_are_recomputed(group_reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(group_reference, out)
    bids = group_reference.parent / "bids"
    predictions = GroupFiles(out).fold(0, 1).predictions
    predictions.write_bytes(predictions.read_bytes()[:-200])  # truncated, or edited by hand
    result = cli([str(bids), str(out), "group", *GROUP_QUICK])
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    assert "repeat 0 fold 0 already done" in result.stderr
    assert "predictions.tsv changed since the fold finished; recomputing" in result.stderr
    assert (
        predictions.read_bytes() == GroupFiles(group_reference).fold(0, 1).predictions.read_bytes()
    )


def test_group_full_disk_while_saving_a_checkpoint(tmp_path):
    bids, out = group_cohort(tmp_path)
    # the paper's ResNet18 checkpoint (45 MB) outgrows the limit; the regional network's is tiny
    command = [str(bids), str(out), "group", *GROUP_QUICK, "--preset", "paper"]
    result = cli(command, preexec_fn=_file_size_limit(16))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    lines = _errors(result)
    fold0 = GroupFiles(out).fold(0, 0).folder
    assert len(lines) == 1 and f"writing {fold0 / 'ResNet.pt'} failed" in lines[0], lines
    # no done.json and nothing half-written: the fold is redone; only the (whole) ROI checkpoint
    # saved before ResNet's may be there
    assert set(p.name for p in fold0.iterdir()) <= {"ROI.pt"}
    assert stale_temporaries(out) == []
    assert not GroupFiles(out).predictions.exists()
