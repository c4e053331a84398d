"""Shared fixtures: a small demo cohort run through the participant level once per session.

The session's outputs are shared by many tests, so no test may change them: ``run["bids"]`` and
``run["out"]`` are made read-only once written, and a test that runs bids_qnet on them works on
:func:`writable_copy`. ``run["work"]`` is nipype's cache of that run: tests may pass it as
``--work-dir`` to reuse the cached steps (a node is recomputed only when its inputs change, and
then gives the same result), never to hold their own outputs.
"""

import shutil
import stat
from pathlib import Path

import pytest

from bids_qnet.cli.run import main
from bids_qnet.demo import make_demo_dataset
from bids_qnet.inputs.reference import atlas_on_grid, load_reference, template_on_grid

SPACE = "MNI152NLin2009cAsym"
STEM = f"space-{SPACE}_res-2"
OPTIONS = [
    "--registration-profile",
    "fast",
    "--embedding-weights",
    "random",
    "--template-resolution",
    "2",
    "--image-size",
    "64",
    "--nprocs",
    "2",
    "--random-seed",
    "7",
]
_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def read_only(folder: Path) -> Path:
    """Take write permission away from ``folder`` and everything in it."""
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(path.stat().st_mode & ~_WRITE)
    folder.chmod(folder.stat().st_mode & ~_WRITE)
    return folder


def writable_copy(source: Path, target: Path) -> Path:
    """Copy a fixture's folder (without ``sourcedata``) to ``target``, writable throughout."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("sourcedata"))
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """Participant level on six demo participants; sub-05 lacks a channel, sub-06 is empty."""
    root = tmp_path_factory.mktemp("participant_level")
    demo = make_demo_dataset(
        root / "bids", n_participants=6, seed=5, resolution=2.0, t1w_grid="mixed"
    )
    bids = demo.bids_dir
    (bids / "sub-05" / "anat" / "sub-05_R2starmap.nii.gz").unlink()
    (bids / "sub-05" / "anat" / "sub-05_R2starmap.json").unlink()
    (bids / "sub-06" / "anat" / "sub-06_Chimap.nii.gz").write_bytes(b"")
    before = snapshot(bids)
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "participant", "-w", str(work), *OPTIONS])
    read_only(out)
    read_only(bids)
    return {"bids": bids, "out": out, "work": work, "code": code, "before": before}


@pytest.fixture(scope="session")
def reference():
    """The packaged template and atlas, read once."""
    return load_reference()


@pytest.fixture(scope="session")
def template(reference):
    """The template on the 2 mm grid."""
    return template_on_grid(reference, 2.0)


@pytest.fixture(scope="session")
def atlas(reference, template):
    """The atlas on the 2 mm template grid."""
    return atlas_on_grid(reference, template)
