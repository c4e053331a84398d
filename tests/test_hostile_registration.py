"""Inputs that reach the registration (issue 14), checked by what the outputs hold.

- Headers whose voxel sizes (pixdim) or qform disagree with the sform: the channels must end up
  where a clean header puts them (compared voxel by voxel with a clean run, not only through
  the quality gate).
- Outputs are complete only for the inputs they were made from: a filter that selects another
  image, or a file replaced under the same name, is processed again and its sidecars name it.
- QSM alone (``--channels Chimap``) is registered to the susceptibility template.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.errors import EXIT_SUCCESS
from bids_qnet.outputs.derivatives import is_complete, sidecar_path

from .robustness import SPACE, cli, participant_args, tiny_bids, tiny_profile

pytestmark = pytest.mark.slow

STEM = f"space-{SPACE}_res-2"


def registered(out: Path, label: str, suffix: str) -> Path:
    """Return a participant's channel on the template grid."""
    return out / f"sub-{label}" / "anat" / f"sub-{label}_{STEM}_{suffix}.nii.gz"


def correlation(a: Path, b: Path) -> float:
    """Pearson correlation of two images' voxels."""
    x, y = (np.asarray(nib.load(p).dataobj, dtype=np.float64).ravel() for p in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


def _header_field(path: Path, **fields) -> None:
    """Rewrite header fields of a ``.nii.gz`` on disk, exactly (nibabel would repair them)."""
    raw = gzip.decompress(path.read_bytes())
    block = bytearray(raw[:348])
    header = np.ndarray((), dtype=nib.Nifti1Header.template_dtype, buffer=block)
    for name, value in fields.items():
        if name == "pixdim_xyz":
            header["pixdim"][1:4] = value
        else:
            header[name] = value
    path.write_bytes(gzip.compress(bytes(block) + raw[348:]))


@pytest.fixture(scope="module")
def headers(tmp_path_factory):
    """sub-01 clean; sub-02..04 the same data with T1w headers that only nibabel reads right."""
    root = tmp_path_factory.mktemp("headers")
    bids = tiny_bids(root / "bids")
    for label in ("02", "03", "04"):
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for path in (bids / "sub-01" / "anat").iterdir():
            shutil.copy(path, anat / path.name.replace("sub-01", f"sub-{label}"))
    t1w = {
        label: bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        for label in ("02", "03", "04")
    }
    _header_field(t1w["02"], pixdim_xyz=0.0, qform_code=0)  # valid sform, no qform
    _header_field(t1w["03"], pixdim_xyz=np.nan, qform_code=0)
    # a qform that disagrees with the sform (sform code 2): nibabel reads the sform
    _header_field(t1w["04"], qform_code=1, quatern_b=0.3, qoffset_x=40.0)
    profile = tiny_profile(root)
    out = root / "out"
    args = participant_args(bids, out, root / "work", profile, "--skip-bids-validation")
    result = cli([*args, "--nprocs", "2"])
    return {"bids": bids, "out": out, "result": result, "root": root, "profile": profile}


def test_inconsistent_headers_are_read_as_nibabel_reads_them(headers):
    for label in ("02", "03", "04"):
        image = nib.load(headers["bids"] / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
        clean = nib.load(headers["bids"] / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
        assert np.allclose(image.affine, clean.affine), label


@pytest.mark.parametrize("label", ["02", "03", "04"])
def test_channels_stay_aligned_whatever_the_header_says(headers, label):
    result = headers["result"]
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    out = headers["out"]
    for suffix in ("Chimap", "R2starmap", "T1w"):
        r = correlation(registered(out, "01", suffix), registered(out, label, suffix))
        assert r > 0.999, (label, suffix, r)


def test_prepared_images_tell_itk_what_nibabel_reads(tmp_path):
    import ants

    from bids_qnet.workflows.steps import consistent_image

    turn = nib.eulerangles.euler2mat(0.3, -0.2, 0.1)  # an oblique grid, axes perpendicular
    affine = nib.affines.from_matvec(turn @ np.diag([2.0, 1.5, 1.2]), [-40.0, 60.0, -10.0])
    image = nib.Nifti1Image(np.random.default_rng(0).random((6, 7, 8), dtype=np.float32), affine)
    image.header.set_qform(np.eye(4), code=1)  # disagrees with the sform
    image.header["pixdim"][1:4] = 0.0
    path = tmp_path / "prepared.nii"
    nib.save(consistent_image(np.asarray(image.dataobj), image), path)
    itk = ants.image_read(str(path))
    lps = np.diag([-1.0, -1.0, 1.0])
    itk_affine = lps @ np.asarray(itk.direction) @ np.diag(itk.spacing)
    assert np.allclose(itk_affine, affine[:3, :3], atol=1e-4)
    assert np.allclose(lps @ np.asarray(itk.origin), affine[:3, 3], atol=1e-4)


# --- what selects the inputs is part of what defines the outputs -----------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sub-01 with two Chimap runs; a filter picks one, then the other."""
    root = tmp_path_factory.mktemp("selection")
    bids = tiny_bids(root / "bids")
    anat = bids / "sub-01" / "anat"
    first = anat / "sub-01_Chimap.nii.gz"
    image = nib.load(first)
    second = nib.Nifti1Image(np.asarray(image.dataobj) * 2.0 + 0.05, image.affine, image.header)
    nib.save(second, anat / "sub-01_run-2_Chimap.nii.gz")
    first.rename(anat / "sub-01_run-1_Chimap.nii.gz")
    for run in (1, 2):
        (root / f"run{run}.json").write_text(json.dumps({"Chimap": {"run": run}}))
    args = participant_args(bids, root / "out", root / "work", tiny_profile(root))
    return {"bids": bids, "root": root, "out": root / "out", "args": [*args, "-v"]}


def _run(runs, run: int):
    return cli([*runs["args"], "--bids-filter-file", str(runs["root"] / f"run{run}.json")])


def _chimap_sources(out: Path) -> list[str]:
    sidecar = sidecar_path(registered(out, "01", "Chimap"))
    return json.loads(sidecar.read_text())["Sources"]


def test_another_selected_image_is_processed_again(runs):
    first = _run(runs, 1)
    assert first.returncode == EXIT_SUCCESS, first.stderr[-3000:]
    assert _chimap_sources(runs["out"]) == ["bids:raw:sub-01/anat/sub-01_run-1_Chimap.nii.gz"]
    chimap_1 = np.asarray(nib.load(registered(runs["out"], "01", "Chimap")).dataobj)
    again = _run(runs, 1)
    assert "already complete with these settings" in again.stderr
    second = _run(runs, 2)
    assert second.returncode == EXIT_SUCCESS, second.stderr[-3000:]
    assert "already complete with these settings" not in second.stderr
    assert "1 processed, 0 already complete" in second.stderr
    assert _chimap_sources(runs["out"]) == ["bids:raw:sub-01/anat/sub-01_run-2_Chimap.nii.gz"]
    chimap_2 = np.asarray(nib.load(registered(runs["out"], "01", "Chimap")).dataobj)
    assert not np.allclose(chimap_1, chimap_2)
    stack = runs["out"] / "sub-01" / "anat" / f"sub-01_{STEM}_desc-bgcrop_embeddings.npy"
    assert is_complete(stack)


def test_a_file_replaced_under_its_name_is_processed_again(runs):
    """The same work folder: nipype's cache must not hand back results of the old file."""
    path = runs["bids"] / "sub-01" / "anat" / "sub-01_run-2_Chimap.nii.gz"
    before = _run(runs, 2)
    assert before.returncode == EXIT_SUCCESS, before.stderr[-3000:]
    old = np.asarray(nib.load(registered(runs["out"], "01", "Chimap")).dataobj)
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * -1.0, image.affine, image.header), path)
    after = _run(runs, 2)
    assert after.returncode == EXIT_SUCCESS, after.stderr[-3000:]
    assert "already complete with these settings" not in after.stderr
    assert "1 processed, 0 already complete" in after.stderr
    new = np.asarray(nib.load(registered(runs["out"], "01", "Chimap")).dataobj)
    inside = np.abs(old) > 1e-3
    assert np.allclose(new[inside], -old[inside], atol=1e-4)


# --- QSM alone --------------------------------------------------------------------------------


def test_qsm_alone_is_registered_to_the_susceptibility_template(tmp_path):
    """The demo's Chimap without T1w: the synthetic stand-in for real QSM-only data."""
    bids = tiny_bids(tmp_path / "bids")
    profile = tiny_profile(tmp_path)
    full = cli(participant_args(bids, tmp_path / "full", tmp_path / "w1", profile))
    assert full.returncode == EXIT_SUCCESS, full.stderr[-3000:]
    alone = cli(
        participant_args(bids, tmp_path / "alone", tmp_path / "w2", profile, "--channels", "Chimap")
    )
    assert alone.returncode == EXIT_SUCCESS, alone.stderr[-3000:]
    r = correlation(
        registered(tmp_path / "full", "01", "Chimap"),
        registered(tmp_path / "alone", "01", "Chimap"),
    )
    assert r > 0.8, r
    sidecar = json.loads(
        (
            tmp_path
            / "alone"
            / "sub-01"
            / "anat"
            / f"sub-01_from-Chimap_to-{SPACE}_mode-image_xfm.json"
        ).read_text()
    )
    assert sidecar["Template"] == "susceptibility"
