"""End to end: attribution at the group level on the shared demo cohort."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.attribution import attribute_cohort
from bids_qnet.cli.run import main
from bids_qnet.config import Settings
from bids_qnet.group_inputs import find_scans
from bids_qnet.labels import load_labels

from .test_group_level import QUICK

pytestmark = pytest.mark.slow
IG = ["--ig-steps", "6"]


def _group(run, tmp_path_factory, name, *extra):
    out = tmp_path_factory.mktemp(name) / "out"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("sourcedata"))
    code = main([str(run["bids"]), str(out), "group", *QUICK, *IG, *extra])
    return {"code": code, "out": out}


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    return _group(run, tmp_path_factory, "attribution_trained")


@pytest.fixture(scope="module")
def frozen(run, tmp_path_factory):
    return _group(run, tmp_path_factory, "attribution_frozen", "--stage1", "frozen")


def _sidecar(path):
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_every_participant_is_explained_by_its_own_fold(trained):
    assert trained["code"] == 0
    out = trained["out"]
    splits = pd.read_csv(out / "desc-cv_splits.tsv", sep="\t").set_index("participant_id")
    maps = sorted((out / "attribution").glob("sub-*_desc-IG_attribution.nii.gz"))
    assert [p.name[:6] for p in maps] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    crop = nib.load(
        next(out.glob("sub-01/anat/sub-01_*_desc-bgcrop_Chimap.nii.gz")),
    )
    for path in maps:
        image = nib.load(path)
        assert image.shape == (*crop.shape, 3)
        np.testing.assert_allclose(image.affine, crop.affine)
        meta = _sidecar(path)
        participant = path.name[:6]
        assert meta["Fold"] == splits.loc[participant, "fold"]
        assert meta["Channels"] == ["Chimap", "R2starmap", "T1w"]
        assert meta["Config"]["Steps"] == 6 and meta["Config"]["Baseline"] == "zero"
        # the differentiable path gives the logits the group level stored for this participant
        assert meta["Check"]["MaxAbsDifference"] < 1e-3
        total = float(np.asarray(image.dataobj).sum())
        gap = meta["OutputAtInput"] - meta["OutputAtBaseline"]
        assert total - gap == pytest.approx(meta["ConvergenceDelta"], abs=1e-3)
        assert meta["TargetClass"] == meta["TrueClass"]
        cam = path.with_name(path.name.replace("desc-IG", "desc-GradCAM"))
        assert nib.load(cam).shape == crop.shape
        assert np.asarray(nib.load(cam).dataobj).min() >= 0


def test_group_maps_region_table_and_figures(trained):
    out = trained["out"]
    stem = "space-MNI152NLin2009cAsym_res-2"
    descs = ("IGclassHC", "IGclassHH", "IGcontrast", "GradCAMclassHC", "GradCAMclassHH")
    for desc in (*descs, "IGreferenceclassHC", "IGreferenceclassHH", "IGreferencecontrast"):
        path = out / "attribution" / f"{stem}_desc-{desc}_attribution.nii.gz"
        meta = _sidecar(path)
        assert meta["Complete"] and meta["N"] >= 1
        assert meta["Method"] in ("IntegratedGradients", "LayerGradCam")
    contrast = _sidecar(out / "attribution" / f"{stem}_desc-IGcontrast_attribution.nii.gz")
    assert contrast["N"] == 4 and set(contrast["ConvergenceDeltas"]) == {
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
    }
    table = pd.read_csv(out / "desc-attribution_regions.tsv", sep="\t")
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert {"Left_Caudate", "Right_Putamen", "Left_Pallidum"} <= set(table["region"])
    for _, part in table.groupby("small"):  # slivers under 100 mm^3 come last
        assert part["density_contrast"].is_monotonic_decreasing
    assert table["small"].is_monotonic_increasing
    for column in ("share_Chimap", "density_HC", "mass_HH", "mass_contrast"):
        assert column in table.columns
    meta = json.loads((out / "desc-attribution_regions.json").read_text())
    assert meta["Baseline"] == "zero" and "density_contrast" in meta
    assert meta["RankedOn"].startswith("desc-IGreference maps of 4 scans")
    assert set(meta["ReferenceDeltas"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    for path in sorted((out / "attribution").glob("sub-*_desc-IGreference_attribution.nii.gz")):
        reference = _sidecar(path)
        assert reference["TargetClass"] == reference["TrueClass"]
        other = {"HC": "HH", "HH": "HC"}[reference["TrueClass"]]
        labels = pd.read_csv(out / "desc-cv_splits.tsv", sep="\t").set_index("participant_id")
        members = reference["ReferenceParticipants"]
        assert members and all(labels.loc[m, "label"] == ["HC", "HH"].index(other) for m in members)
        total = float(np.asarray(nib.load(path).dataobj).sum())
        gap = reference["OutputAtInput"] - reference["OutputAtBaseline"]
        assert total - gap == pytest.approx(reference["ConvergenceDelta"], abs=1e-3)
    for name in (
        "desc-igregions_barplot.png",
        "desc-igoverlay_attribution.png",
        "desc-gradcamoverlay_attribution.png",
    ):
        assert (out / "figures" / name).stat().st_size > 10_000


def test_a_second_run_reuses_the_maps(trained, run):
    out = trained["out"]
    path = next((out / "attribution").glob("sub-01_*_desc-IG_attribution.nii.gz"))
    reference = next((out / "attribution").glob("sub-01_*_desc-IGreference_attribution.nii.gz"))
    before, reference_before = path.stat().st_mtime_ns, reference.stat().st_mtime_ns
    labels, spec, _ = load_labels(run["bids"] / "participants.tsv")
    scans = [s for s in find_scans(out) if s.participant_id in labels]
    splits = pd.read_csv(out / "desc-cv_splits.tsv", sep="\t")
    predictions = pd.read_csv(out / "desc-oof_predictions.tsv", sep="\t")
    settings = Settings(run["bids"], out, "group", image_size=32, ig_steps=6, device="cpu")
    written = attribute_cohort(settings, scans, labels, spec, splits, predictions)
    assert path.stat().st_mtime_ns == before
    assert reference.stat().st_mtime_ns == reference_before
    assert written["ig_sub-01"] == path and written["regions"].is_file()
    settings.ig_steps = 3  # another configuration: recomputed
    attribute_cohort(settings, scans, labels, spec, splits, predictions)
    assert path.stat().st_mtime_ns != before
    assert _sidecar(path)["Config"]["Steps"] == 3


def test_frozen_stage1_has_no_grad_cam(frozen):
    assert frozen["code"] == 0
    out = frozen["out"]
    maps = sorted((out / "attribution").glob("sub-*_desc-IG_attribution.nii.gz"))
    assert len(maps) == 4
    assert not list((out / "attribution").glob("*GradCAM*"))
    assert not (out / "figures" / "desc-gradcamoverlay_attribution.png").exists()
    meta = _sidecar(maps[0])
    assert meta["Check"]["EmbeddingDeviation"] < 1e-3
    assert meta["Check"]["MaxAbsDifference"] < 1e-3
    assert (out / "desc-attribution_regions.tsv").is_file()
