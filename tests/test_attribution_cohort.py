"""End to end: attribution at the group level on the shared demo cohort."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_qnet.attribution import attribute_cohort
from bids_qnet.cli.run import main
from bids_qnet.config import Settings
from bids_qnet.errors import UsageError
from bids_qnet.inputs.labels import load_labels
from bids_qnet.inputs.scans import find_scans
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.names import GroupFiles

from .conftest import writable_copy
from .images import assert_drawn, has_hue
from .test_group_level import QUICK

pytestmark = pytest.mark.slow
IG = ["--ig-steps", "6", "--ig-max-steps", "24"]


def _group(run, tmp_path_factory, name, *extra):
    out = writable_copy(run["out"], tmp_path_factory.mktemp(name) / "out")
    code = main([str(run["bids"]), str(out), "group", *QUICK, *IG, *extra])
    return {"code": code, "out": out}


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    """The paper's pipeline: ResNet18 behind the stretch, Grad-CAM beside IG."""
    return _group(run, tmp_path_factory, "attribution_trained", "--preset", "paper")


@pytest.fixture(scope="module")
def quantitative(run, tmp_path_factory):
    """The default preset: the regional network and Q-Net's read-out."""
    return _group(run, tmp_path_factory, "attribution_quantitative")


def test_quantitative_attribution_explains_the_whole_qnet_in_units(quantitative):
    assert quantitative["code"] == 0
    out = quantitative["out"]
    maps = sorted((out / "attribution").glob("sub-*_desc-IG_attribution.nii.gz"))
    assert [p.name[:6] for p in maps] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    for path in maps:
        meta = _sidecar(path)
        assert "in their units" in meta["AttributedInput"]
        # read-out + regional network + Bi-LSTM recomputed give the stored logits
        assert meta["Check"]["MaxAbsDifference"] < 1e-3
        total = float(np.asarray(nib.load(path).dataobj).sum())
        gap = meta["OutputAtInput"] - meta["OutputAtBaseline"]
        assert total - gap == pytest.approx(meta["ConvergenceDelta"], abs=1e-3)
        assert isinstance(meta["Converged"], bool)
    assert not list((out / "attribution").glob("*GradCAM*"))
    regions = json.loads(sidecar_path(GroupFiles(out).attribution_regions).read_text())
    reliability = regions["Reliability"]
    assert {"AtChance", "Unconverged", "ModelAUCCI", "Warnings"} <= set(reliability)
    card = json.loads(GroupFiles(out).final.card.read_text())
    assert card["Preset"]["name"] == "quantitative" and card["Preset"]["readout"]


@pytest.fixture(scope="module")
def frozen(run, tmp_path_factory):
    return _group(run, tmp_path_factory, "attribution_frozen", "--stage1", "frozen")


def _sidecar(path):
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_every_participant_is_explained_by_its_own_fold(trained):
    assert trained["code"] == 0
    out = trained["out"]
    splits = pd.read_csv(GroupFiles(out).splits, sep="\t").set_index("participant_id")
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
    table = pd.read_csv(GroupFiles(out).attribution_regions, sep="\t")
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert {"Left_Caudate", "Right_Putamen", "Left_Pallidum"} <= set(table["region"])
    for _, part in table.groupby("small"):  # slivers under 100 mm^3 come last
        assert part["density_contrast"].is_monotonic_decreasing
    assert table["small"].is_monotonic_increasing
    for column in ("share_Chimap", "density_HC", "mass_HH", "mass_contrast"):
        assert column in table.columns
    meta = json.loads(sidecar_path(GroupFiles(out).attribution_regions).read_text())
    assert meta["Baseline"] == "zero" and "density_contrast" in meta
    assert meta["RankedOn"].startswith("desc-IGreference maps of 4 scans")
    assert set(meta["ReferenceDeltas"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    for path in sorted((out / "attribution").glob("sub-*_desc-IGreference_attribution.nii.gz")):
        reference = _sidecar(path)
        assert reference["TargetClass"] == reference["TrueClass"]
        other = {"HC": "HH", "HH": "HC"}[reference["TrueClass"]]
        labels = pd.read_csv(GroupFiles(out).splits, sep="\t").set_index("participant_id")
        members = reference["ReferenceParticipants"]
        assert members and all(labels.loc[m, "label"] == ["HC", "HH"].index(other) for m in members)
        total = float(np.asarray(nib.load(path).dataobj).sum())
        gap = reference["OutputAtInput"] - reference["OutputAtBaseline"]
        assert total - gap == pytest.approx(reference["ConvergenceDelta"], abs=1e-3)
    figures = out / "figures"
    bars = assert_drawn(figures / "desc-igregions_barplot.png", min_colours=16)
    assert sum(has_hue(bars, c) for c in range(3)) >= 2  # one colour per channel
    overlay = assert_drawn(figures / "desc-igoverlay_attribution.png", min_colours=64)
    assert has_hue(overlay, 0) and has_hue(overlay, 2)  # signed relevance: red and blue
    assert_drawn(figures / "desc-gradcamoverlay_attribution.png", min_colours=64)


def test_a_second_run_reuses_the_maps(trained, run, tmp_path):
    out = writable_copy(trained["out"], tmp_path / "out")
    path = next((out / "attribution").glob("sub-01_*_desc-IG_attribution.nii.gz"))
    reference = next((out / "attribution").glob("sub-01_*_desc-IGreference_attribution.nii.gz"))
    before, reference_before = path.stat().st_mtime_ns, reference.stat().st_mtime_ns
    labels, spec, _ = load_labels(run["bids"] / "participants.tsv")
    scans = [s for s in find_scans(out) if s.participant_id in labels]
    splits = pd.read_csv(GroupFiles(out).splits, sep="\t")
    predictions = pd.read_csv(GroupFiles(out).predictions, sep="\t")
    settings = Settings.create(
        run["bids"], out, "group", image_size=32, ig_steps=6, ig_max_steps=24, device="cpu"
    )
    written = attribute_cohort(settings, scans, labels, spec, splits, predictions)
    assert path.stat().st_mtime_ns == before
    assert reference.stat().st_mtime_ns == reference_before
    assert written["ig_sub-01"] == path and written["regions"].is_file()
    settings.attribution.ig_steps = 3  # another configuration: recomputed
    attribute_cohort(settings, scans, labels, spec, splits, predictions)
    assert path.stat().st_mtime_ns != before
    assert _sidecar(path)["Config"]["Steps"] == 3


def test_scans_attributed_together_equal_one_by_one(trained, run, tmp_path):
    labels, spec, _ = load_labels(run["bids"] / "participants.tsv")
    maps = {}
    for per_call in (1, 4):
        out = writable_copy(trained["out"], tmp_path / f"out{per_call}")
        scans = [s for s in find_scans(out) if s.participant_id in labels]
        splits = pd.read_csv(GroupFiles(out).splits, sep="\t")
        predictions = pd.read_csv(GroupFiles(out).predictions, sep="\t")
        assert splits["fold"].value_counts().max() >= 2  # some call holds several scans
        settings = Settings.create(  # one pass: refinement decides per scan, on rounding
            run["bids"], out, "group", image_size=32, ig_steps=4, ig_max_steps=4, device="cpu"
        )
        attribute_cohort(
            settings, scans, labels, spec, splits, predictions, scans_per_call=per_call
        )
        found = sorted((out / "attribution").glob("sub-*_desc-IG*_attribution.nii.gz"))
        assert len(found) == 8  # desc-IG and desc-IGreference of 4 participants, recomputed
        assert all(_sidecar(p)["Config"]["Steps"] == 4 for p in found)
        maps[per_call] = {p.name: np.asarray(nib.load(p).dataobj) for p in found}
    assert maps[1].keys() == maps[4].keys()
    for name, alone in maps[1].items():
        np.testing.assert_allclose(maps[4][name], alone, atol=1e-6, rtol=1e-4, err_msg=name)
    with pytest.raises(UsageError, match="scans_per_call"):
        attribute_cohort(settings, scans, labels, spec, splits, predictions, scans_per_call=0)


def test_frozen_stage1_has_no_grad_cam(frozen):
    assert frozen["code"] == 0
    out = frozen["out"]
    maps = sorted((out / "attribution").glob("sub-*_desc-IG_attribution.nii.gz"))
    assert len(maps) == 4
    assert not list((out / "attribution").glob("*GradCAM*"))
    assert not GroupFiles(out).gradcam_overlay.exists()
    meta = _sidecar(maps[0])
    assert meta["Check"]["EmbeddingDeviation"] < 1e-3
    assert meta["Check"]["MaxAbsDifference"] < 1e-3
    assert GroupFiles(out).attribution_regions.is_file()
