"""End to end: the group level on the participant-level outputs of the shared demo cohort."""

import json

import pandas as pd
import pytest

from bids_qnet.cli.run import main
from bids_qnet.outputs.names import GroupFiles

from .conftest import OPTIONS, writable_copy
from .images import assert_drawn, has_hue

pytestmark = pytest.mark.slow

QUICK = [
    "--folds",
    "2",
    "--epochs",
    "2",
    "--qnet-epochs",
    "3",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--embedding-weights",
    "random",
    "--random-seed",
    "3",
    "--ig-max-steps",
    "50",  # one pass of the default 50 steps: refinement is tested in test_attribution_*
]


def _group(run, out, *extra):
    return main([str(run["bids"]), str(out), "group", *QUICK, *extra])


@pytest.fixture(scope="module")
def frozen(run, tmp_path_factory):
    """A group run with ``--stage1 frozen``; tests that run again work on a copy."""
    out = writable_copy(run["out"], tmp_path_factory.mktemp("group_frozen") / "out")
    return {"code": _group(run, out, "--stage1", "frozen"), "out": out}


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    out = writable_copy(run["out"], tmp_path_factory.mktemp("group_trained") / "out")
    return {"code": _group(run, out), "out": out}


def test_frozen_mode_cross_validates_qnet(frozen):
    assert frozen["code"] == 0
    out = frozen["out"]
    splits = pd.read_csv(GroupFiles(out).splits, sep="\t")
    # sub-05 and sub-06 have labels but no participant-level outputs: left out
    assert sorted(splits["participant_id"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    predictions = pd.read_csv(GroupFiles(out).predictions, sep="\t")
    scan = predictions[predictions["level"] == "scan"]
    assert set(scan["model"]) == {"ROI", "QNet"}  # the ROI baseline is always there
    for model in ("ROI", "QNet"):
        rows = scan[scan["model"] == model]
        assert sorted(rows["participant_id"]) == sorted(splits["participant_id"])
    for _, row in scan.iterrows():  # every prediction comes from the fold that did not see it
        assert row["fold"] == splits.set_index("participant_id").loc[row["participant_id"], "fold"]
    metrics = pd.read_csv(GroupFiles(out).metrics, sep="\t")
    assert {"accuracy", "sensitivity", "specificity", "f1", "auc"} <= set(metrics.columns)
    assert {"pooled", "mean", "sd"} <= set(metrics["fold"].astype(str))
    card = json.loads(GroupFiles(out).final.card.read_text())
    assert card["Classes"] == ["HC", "HH"] and card["Models"] == ["ROI", "QNet"]
    assert card["Preset"]["name"] == "quantitative"
    saved = json.loads(GroupFiles(out).saved_settings()[0].read_text())
    assert saved["stage1"] == "frozen" and saved["folds"] == 2


def test_train_mode_gives_all_three_models(trained):
    assert trained["code"] == 0
    out = trained["out"]
    predictions = pd.read_csv(GroupFiles(out).predictions, sep="\t")
    for level, extra in (("image", set()), ("scan", {"ROI"})):
        models = set(predictions.loc[predictions["level"] == level, "model"])
        assert models == {"ResNet", "ResNetSWA", "QNet"} | extra
    image = predictions[(predictions["level"] == "image") & (predictions["model"] == "QNet")]
    assert image.groupby("participant_id")["slice"].nunique().min() > 10
    for fold in (0, 1):
        folder = GroupFiles(out).fold(0, fold).folder
        names = {p.name for p in folder.glob("*.pt")}
        assert names == {"ROI.pt", "ResNet.pt", "ResNetSWA.pt", "QNet.pt"}
    roc = assert_drawn(GroupFiles(out).roc_figure("scan"), min_colours=8)
    assert has_hue(roc, 0) or has_hue(roc, 1) or has_hue(roc, 2)  # coloured curves
    card = json.loads(GroupFiles(out).final.card.read_text())
    assert card["Models"] == ["ROI", "ResNet", "ResNetSWA", "QNet"]
    assert card["CrossValidatedScanMetrics"]
    comparisons = pd.read_csv(GroupFiles(out).comparisons, sep="\t")
    scan_pairs = comparisons[comparisons["level"] == "scan"][["model1", "model2"]]
    assert ("QNet", "ROI") in set(map(tuple, scan_pairs.to_numpy()))  # Q-Net vs the baseline
    assert GroupFiles(out).roi_coefficients.is_file()


def test_resume_skips_done_folds_and_single_fold_runs(frozen, run, caplog, tmp_path):
    out = writable_copy(frozen["out"], tmp_path / "out")
    done = GroupFiles(out).fold(0, 0).done
    stamp = done.stat().st_mtime_ns
    assert _group(run, out, "--stage1", "frozen", "--fold", "0") == 0
    assert done.stat().st_mtime_ns == stamp
    assert "already done" in caplog.text


def test_changed_splits_are_refused(frozen, run, capsys, tmp_path):
    out = writable_copy(frozen["out"], tmp_path / "out")
    code = _group(run, out, "--stage1", "frozen", "--random-seed", "99")
    assert code == 64
    assert "desc-cv_splits.tsv" in capsys.readouterr().err


def test_final_model_classifies_participants(trained, run, tmp_path, caplog):
    out = writable_copy(run["out"], tmp_path / "out")
    code = main(
        [
            str(run["bids"]),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "02",
            "--model",
            str(GroupFiles(trained["out"]).final.folder),
            "-w",
            str(tmp_path / "work"),
            *OPTIONS,
        ]
    )
    assert code == 0
    table = pd.read_csv(
        out / "sub-01" / "anat" / "sub-01_desc-finalmodel_predictions.tsv", sep="\t"
    )
    assert list(table["model"]) == ["ROI", "ResNet", "ResNetSWA", "QNet"]
    assert set(table["predicted_class"]) <= {"HC", "HH"}
    assert (table[["probability_HC", "probability_HH"]].sum(axis=1).round(5) == 1).all()
    assert table["in_training_set"].all()
    assert "not independent" in caplog.text


def test_not_a_model_is_refused(run, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model_card.json").write_text('{"Name": "something else"}')
    code = main(
        [str(run["bids"]), str(tmp_path / "o"), "participant", "--model", str(fake), *OPTIONS]
    )
    assert code == 65
    assert "not a bids_qnet model" in capsys.readouterr().err


def test_same_seed_gives_identical_metrics(frozen, run, tmp_path):
    out = writable_copy(run["out"], tmp_path / "out")
    assert _group(run, out, "--stage1", "frozen") == 0
    first = GroupFiles(frozen["out"]).metrics.read_text()
    assert GroupFiles(out).metrics.read_text() == first
