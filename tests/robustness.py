"""Helpers of the robustness tests: tiny inputs, the command line in a subprocess, checks that
no file looks complete without its data, and synthetic participant-level outputs for the group
level (written through the same writers the participant level uses)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.data import registration_profile
from bids_qnet.demo import make_demo_dataset
from bids_qnet.outputs.atomic import write_atomic
from bids_qnet.outputs.derivatives import dataset_description, sidecar_path, write_sidecar
from bids_qnet.outputs.names import build_path, entity_name

SPACE = "MNI152NLin2009cAsym"
STEM = f"sub-01_space-{SPACE}_res-2_desc-bgcrop"
DATA_EXTENSIONS = (".nii.gz", ".nii", ".npy", ".h5", ".mat", ".tsv")
# Keys of sidecars that differ between identical runs (timings).
VOLATILE_KEYS = ("Seconds", "StepSeconds")


def tiny_profile(folder: Path) -> Path:
    """Write a registration profile for tests: the ``fast`` one with fewer iterations.

    Still a real affine + SyN registration (about 10 s for a 2 mm demo participant).
    """
    profile = registration_profile("fast")
    profile["name"] = "tests"
    profile["coregistration"]["aff_iterations"] = [50, 20]
    profile["normalisation"]["aff_iterations"] = [100, 50]
    profile["normalisation"]["reg_iterations"] = [10, 0, 0]
    path = Path(folder) / "tests_profile.json"
    path.write_text(json.dumps(profile, indent=1))
    return path


def tiny_bids(folder: Path, n_participants: int = 1, seed: int = 3) -> Path:
    """Write a demo dataset on a 2 mm grid (all channels on one grid) and return its root."""
    demo = make_demo_dataset(
        Path(folder),
        n_participants=n_participants,
        seed=seed,
        resolution=2.0,
        t1w_grid="gre",
        gre_voxel_mm=(2.0, 2.0, 2.0),
    )
    return demo.bids_dir


def participant_args(bids: Path, out: Path, work: Path, profile: Path, *extra: str) -> list[str]:
    """Return the arguments of a quick participant-level run (2 mm, random weights, 32 px)."""
    return [
        str(bids),
        str(out),
        "participant",
        "-w",
        str(work),
        "--registration-profile",
        str(profile),
        "--embedding-weights",
        "random",
        "--template-resolution",
        "2",
        "--image-size",
        "32",
        "--nprocs",
        "1",
        "--omp-nthreads",
        "1",
        "--random-seed",
        "7",
        *extra,
    ]


def command(args: list[str]) -> list[str]:
    """Return the command line that runs bids_qnet with ``args`` in this Python."""
    return [sys.executable, "-m", "bids_qnet.cli.run", *args]


def environment(**extra: str) -> dict[str, str]:
    """Return this environment with one torch/OpenMP thread (the tests share a few cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def cli(args: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """Run bids_qnet in a subprocess and return the completed process (text output)."""
    kwargs.setdefault("env", environment())
    return subprocess.run(
        command(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start bids_qnet in its own process group (as a batch job), output going to ``log``."""
    kwargs.setdefault("env", environment())
    with Path(log).open("w") as handle:
        return subprocess.Popen(
            command(args), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> bool:
    """Poll ``condition`` every 5 ms; False if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.005)
    return False


def kill_job(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group (the job and its workers), as a scheduler does."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # workers are reaped by init; wait until none is left
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of job {process.pid} survived SIGKILL")


def data_file(sidecar: Path) -> Path | None:
    """Return the data file a sidecar describes (None when there is none)."""
    stem = sidecar.name[: -len(".json")]
    for extension in DATA_EXTENSIONS:
        candidate = sidecar.with_name(stem + extension)
        if candidate.is_file() and sidecar_path(candidate) == sidecar:
            return candidate
    return None


def complete_files(out: Path) -> list[Path]:
    """Return the data files whose sidecar says ``"Complete": true``."""
    files = []
    for sidecar in sorted(Path(out).rglob("*.json")):
        try:
            complete = json.loads(sidecar.read_text()).get("Complete") is True
        except (json.JSONDecodeError, AttributeError):
            continue
        if complete:
            files.append(data_file(sidecar) or sidecar)
    return files


def same_content(a: Path, b: Path) -> bool:
    """Tell whether two derivative files hold the same result.

    ``.nii.gz``: same voxels and affine (the gzip header holds a time stamp); ``.h5``
    transforms: same mapping of a few points (HDF5 stores object times); JSON: equal once
    timings are removed; anything else: equal bytes.
    """
    name = a.name
    if name.endswith(".nii.gz"):
        left, right = nib.load(a), nib.load(b)
        return np.array_equal(left.affine, right.affine) and np.array_equal(
            np.asanyarray(left.dataobj), np.asanyarray(right.dataobj)
        )
    if name.endswith(".h5"):
        import ants

        points = pd.DataFrame({"x": [0.0, 20, -30], "y": [0.0, -25, 15], "z": [0.0, 10, 30]})
        moved = [ants.apply_transforms_to_points(3, points, [str(f)]).to_numpy() for f in (a, b)]
        return np.array_equal(*moved)
    if name.endswith(".json"):
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    return a.read_bytes() == b.read_bytes()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def assert_complete_files_whole(out: Path, reference: Path) -> None:
    """Every file marked complete in ``out`` exists and equals the uninterrupted run's file."""
    for path in complete_files(out):
        relative = path.relative_to(out)
        assert path.is_file(), f"{relative}: sidecar says complete, data file missing"
        assert same_content(path, reference / relative), f"{relative} is complete but differs"


def participant_outputs(out: Path) -> list[str]:
    """Return the participant's result files (data, sidecars, figures), relative to ``out``.

    Logs (``sub-*/log``), the HTML report and its data (``figures/*_report.json``: the run id,
    the time and the timings of the run that wrote it) are left out.
    """
    return sorted(
        str(p.relative_to(out))
        for p in Path(out).glob("sub-*/**/*")
        if p.is_file()
        and "log" not in p.relative_to(out).parts
        and not p.name.endswith("_report.json")
    )


def stale_temporaries(folder: Path) -> list[Path]:
    """Return temporary files (``.tmp-*`` and the report helpers' ``.*.tmp``) under ``folder``."""
    return [
        p
        for p in Path(folder).rglob(".*")
        if p.is_file() and (p.name.startswith(".tmp-") or p.name.endswith(".tmp"))
    ]


def drop_root_privileges() -> None:
    """``preexec_fn``: make file permissions bind root too (drop DAC capabilities at exec).

    Removes CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the bounding set, so the
    command run next (and its children) cannot write where the mode bits forbid it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permissions_bind() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` under which ``chmod a-w`` stops writes, or skip the test.

    None for an ordinary user; :func:`drop_root_privileges` as root when it works here.
    """
    if os.geteuid() != 0:
        return None
    probe = subprocess.run(
        ["sh", "-c", "grep CapEff /proc/self/status"],
        preexec_fn=drop_root_privileges,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod does not bind root")
    return drop_root_privileges


def make_writable(folder: Path) -> None:
    """Give the owner write permission back on ``folder`` and everything in it."""
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)


# --- the group level on synthetic participant-level outputs ---------------------------------


#: The synthetic cohorts' atlas: two nuclei inside the crop box (margin 2 voxels).
ATLAS_NAME = "Test"
ATLAS_REGIONS = {1: "Left_Caudate", 2: "Right_Caudate"}


def write_atlas(out: Path, n_slices: int = 6, size: int = 16) -> None:
    """Write the root atlas and its label table, as the participant level does."""
    volume = np.zeros((size + 4, size + 4, n_slices + 4), np.int16)
    volume[4 : size // 2, 4 : size - 2, 3:n_slices] = 1
    volume[size // 2 + 2 : size, 4 : size - 2, 3:n_slices] = 2
    image = nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0]))
    entities = {"space": SPACE, "atlas": ATLAS_NAME, "res": "2"}
    out.mkdir(parents=True, exist_ok=True)
    nib.save(image, out / entity_name(entities, "dseg", ".nii.gz"))
    table = pd.DataFrame({"index": list(ATLAS_REGIONS), "name": list(ATLAS_REGIONS.values())})
    table.to_csv(out / f"atlas-{ATLAS_NAME}_dseg.tsv", sep="\t", index=False)


def write_scan_outputs(
    out: Path,
    subject: str,
    label: int,
    rng: np.random.Generator,
    n_slices: int = 6,
    size: int = 16,
    fingerprint: str = "testfingerprint00",
    version: str = "0.1.0",
) -> None:
    """Write one participant's slice stack and embeddings with sidecars, as the sink does.

    The sidecars carry the crop box on the atlas of :func:`write_atlas` (2 voxels in from its
    corner) and the first channel's crop image is written beside them, so the group level can
    cut the atlas to the crop. The positive class has brighter slices and shifted embeddings,
    so the models can learn.
    """
    entities = {"sub": subject, "space": SPACE, "res": "2", "desc": "bgcrop"}
    slices = rng.random((n_slices, 3, size, size), dtype=np.float32) * 0.5 + 0.25 * label
    embeddings = rng.normal(0.3 * label, 1.0, (n_slices, 512)).astype(np.float32)
    meta = {"bids_qnet": {"Version": version, "SettingsFingerprint": fingerprint}}
    description = Path(out) / "dataset_description.json"
    if not description.is_file():  # a bids_qnet derivative dataset, as the participant level makes
        Path(out).mkdir(parents=True, exist_ok=True)
        description.write_text(json.dumps(dataset_description([])))
    crop = {
        "Box": {"lower": [2, 2, 2], "upper": [size + 2, size + 2, n_slices + 2]},
        "Channels": ["Chimap", "R2starmap", "T1w"],
        "Shape": list(slices.shape),
        "Atlas": ATLAS_NAME,
        "Regions": list(ATLAS_REGIONS.values()),
    }
    for suffix, array in (("slices", slices), ("embeddings", embeddings)):
        path = out / build_path(entities, suffix, ".npy")
        write_atomic(path, lambda tmp, a=array: np.save(tmp, a))
        extra = crop if suffix == "slices" else {}
        write_sidecar(path, {"Sources": [], **meta, **extra})
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [4.0, 4.0, 4.0]
    image = nib.Nifti1Image(np.zeros((size, size, n_slices), np.float32), affine)
    nib.save(image, out / build_path(entities, "Chimap", ".nii.gz"))


def group_cohort(root: Path, n_participants: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Write ``bids/participants.tsv`` and participant-level outputs in ``out``; return both."""
    bids, out = Path(root) / "bids", Path(root) / "out"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "group test", "BIDSVersion": "1.10.0"})
    )
    subjects = [f"{i:02d}" for i in range(1, n_participants + 1)]
    groups = ["HC" if i % 2 else "HH" for i in range(1, n_participants + 1)]
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "group": groups}).to_csv(
        bids / "participants.tsv", sep="\t", index=False
    )
    rng = np.random.default_rng(seed)
    write_atlas(out)
    for subject, group in zip(subjects, groups, strict=True):
        write_scan_outputs(out, subject, int(group == "HH"), rng)
    return bids, out


GROUP_QUICK = [
    "--folds",
    "2",
    "--epochs",
    "1",
    "--qnet-epochs",
    "2",
    "--image-size",
    "16",
    "--batch-size",
    "16",
    "--embedding-weights",
    "random",
    "--bootstrap-replicates",
    "50",
    "--attribution",
    "none",
    "--random-seed",
    "3",
]
