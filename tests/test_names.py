"""The naming table: every output name pinned here, once, as users and other tools see it.

Every other test takes its paths from ``bids_qnet.outputs.names``; this one checks that the
table still gives the names bids_qnet has always written.
"""

from pathlib import Path

import pytest

from bids_qnet.outputs import names
from bids_qnet.outputs.names import DatasetFiles, GroupFiles, ParticipantFiles

ROOT = Path("/out")
SPACE = "MNI152NLin2009cAsym"


def test_participant_names():
    files = ParticipantFiles(ROOT, "01", None, SPACE, 2.0, "bg")
    anat = ROOT / "sub-01" / "anat"
    stem = f"sub-01_space-{SPACE}_res-2"
    assert files.registered("Chimap") == anat / f"{stem}_Chimap.nii.gz"
    assert files.cropped("T1w") == anat / f"{stem}_desc-bgcrop_T1w.nii.gz"
    assert files.slices == anat / f"{stem}_desc-bgcrop_slices.npy"
    assert files.embeddings == anat / f"{stem}_desc-bgcrop_embeddings.npy"
    assert files.transform("T1w", SPACE, ".h5") == (
        anat / f"sub-01_from-T1w_to-{SPACE}_mode-image_xfm.h5"
    )
    assert files.transform("R2starmap", "T1w", ".mat") == (
        anat / "sub-01_from-R2starmap_to-T1w_mode-image_xfm.mat"
    )
    assert files.predictions == anat / "sub-01_desc-finalmodel_predictions.tsv"
    figures = ROOT / "sub-01" / "figures"
    assert files.registration_figure == figures / f"sub-01_space-{SPACE}_desc-registration_qc.png"
    assert files.slices_figure == figures / "sub-01_desc-bgcrop_slices.png"
    assert files.report == ROOT / "sub-01.html"
    assert files.settings("RUN") == ROOT / "sub-01" / "log" / "RUN" / "bids_qnet_settings.json"


def test_session_and_whole_brain_names():
    files = ParticipantFiles(ROOT, "01", "2", SPACE, 1.5, "full")
    anat = ROOT / "sub-01" / "ses-2" / "anat"
    assert files.slices == anat / f"sub-01_ses-2_space-{SPACE}_res-1p5_desc-brain_slices.npy"
    assert files.report == ROOT / "sub-01_ses-2.html"
    log = ROOT / "sub-01" / "log" / "RUN"
    assert files.settings("RUN") == log / "bids_qnet_settings_ses-2.json"
    assert files.slices_figure == ROOT / "sub-01" / "figures" / "sub-01_ses-2_desc-brain_slices.png"


def test_dataset_root_names():
    files = DatasetFiles(ROOT)
    assert files.description == ROOT / "dataset_description.json"
    assert files.bidsignore == ROOT / ".bidsignore"
    assert (files.readme, files.citation) == (ROOT / "README.md", ROOT / "CITATION.md")
    assert files.atlas_image(SPACE, "Neuromorphometrics", "2") == (
        ROOT / f"space-{SPACE}_atlas-Neuromorphometrics_res-2_dseg.nii.gz"
    )
    assert files.atlas_labels("X") == ROOT / "atlas-X_dseg.tsv"
    assert files.atlas_description("X") == ROOT / "atlas-X_description.json"
    assert names.WORK_DIR == "sourcedata/bids_qnet_work"


def test_group_names():
    files = GroupFiles(ROOT)
    table = {
        files.splits: "desc-cv_splits.tsv",
        files.labels: "desc-cv_labels.json",
        files.predictions: "desc-oof_predictions.tsv",
        files.metrics: "desc-cv_metrics.tsv",
        files.comparisons: "desc-delong_comparisons.tsv",
        files.bootstrap_aucs: "desc-bootstrap_aucs.tsv",
        files.bootstrap_ci: "desc-bootstrap_ci.tsv",
        files.attribution_regions: "desc-attribution_regions.tsv",
        files.report: "group.html",
        files.roc_figure("scan"): "figures/desc-rocscan_roc.png",
        files.auc_boxplot("image"): "figures/desc-aucboxplotimage_boxplot.png",
        files.ig_overlay: "figures/desc-igoverlay_attribution.png",
        files.gradcam_overlay: "figures/desc-gradcamoverlay_attribution.png",
        files.ig_regions_barplot: "figures/desc-igregions_barplot.png",
        files.settings("RUN"): "logs/group_RUN_settings.json",
    }
    for path, expected in table.items():
        assert path == ROOT / expected
    entities = {"sub": "01", "space": SPACE, "res": "2"}
    assert files.attribution_map(entities, "IG") == (
        ROOT / "attribution" / f"sub-01_space-{SPACE}_res-2_desc-IG_attribution.nii.gz"
    )


def test_model_names():
    fold = GroupFiles(ROOT).fold(0, 3)
    assert fold.folder == ROOT / "models" / "repeat-0_fold-3"
    assert fold.checkpoint("QNet") == fold.folder / "QNet.pt"
    assert (fold.predictions.name, fold.done.name) == ("predictions.tsv", "done.json")
    final = GroupFiles(ROOT).final
    assert final.card == ROOT / "models" / "final" / "model_card.json"


def test_bidsignore_lists_every_file_without_a_standard():
    assert names.BIDSIGNORE == (
        "*_xfm.h5",
        "*_xfm.mat",
        "*_xfm.json",
        "*_slices.npy",
        "*_slices.json",
        "*_embeddings.npy",
        "*_embeddings.json",
        "*_predictions.tsv",
        "*_predictions.json",
        "desc-*",
        "attribution",
        "models",
        "figures",
        "group.html",
        "sub-*.html",
        "sub-*/figures",
        "sub-*/log",
        "sourcedata",
        "logs",
        "CITATION.md",
        "group_CITATION.md",
    )


def test_helpers():
    path = Path("sub-01_space-X_res-2_desc-bgcrop_slices.npy")
    assert (
        names.sibling(path, "T1w", ".nii.gz").name == "sub-01_space-X_res-2_desc-bgcrop_T1w.nii.gz"
    )
    assert names.name_entities(path) == {"sub": "01", "space": "X", "res": "2", "desc": "bgcrop"}
    assert names.resolution_label(1.5) == "1p5" and names.resolution_label(2.0) == "2"
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        names.entity_name({"colour": "red"}, "T1w", ".nii.gz")
