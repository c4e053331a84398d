"""End to end: the group level on the participant-level outputs of the shared demo cohort."""

import json
import shutil

import pandas as pd
import pytest

from bids_qnet.cli.run import main

from .conftest import OPTIONS

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
]


def _group(run, out, *extra):
    return main([str(run["bids"]), str(out), "group", *QUICK, *extra])


@pytest.fixture(scope="module")
def frozen(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("group_frozen") / "out"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("sourcedata"))
    return {"code": _group(run, out, "--stage1", "frozen"), "out": out}


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("group_trained") / "out"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("sourcedata"))
    return {"code": _group(run, out), "out": out}


def test_frozen_mode_cross_validates_qnet(frozen):
    assert frozen["code"] == 0
    out = frozen["out"]
    splits = pd.read_csv(out / "desc-cv_splits.tsv", sep="\t")
    # sub-05 and sub-06 have labels but no participant-level outputs: left out
    assert sorted(splits["participant_id"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    predictions = pd.read_csv(out / "desc-oof_predictions.tsv", sep="\t")
    scan = predictions[predictions["level"] == "scan"]
    assert set(scan["model"]) == {"QNet"}
    assert sorted(scan["participant_id"]) == sorted(splits["participant_id"])
    for _, row in scan.iterrows():  # every prediction comes from the fold that did not see it
        assert row["fold"] == splits.set_index("participant_id").loc[row["participant_id"], "fold"]
    metrics = pd.read_csv(out / "desc-cv_metrics.tsv", sep="\t")
    assert {"accuracy", "sensitivity", "specificity", "f1", "auc"} <= set(metrics.columns)
    assert {"pooled", "mean", "sd"} <= set(metrics["fold"].astype(str))
    card = json.loads((out / "models" / "final" / "model_card.json").read_text())
    assert card["Classes"] == ["HC", "HH"] and card["Models"] == ["QNet"]
    saved = json.loads(next((out / "logs").glob("group_*_settings.json")).read_text())
    assert saved["stage1"] == "frozen" and saved["folds"] == 2


def test_train_mode_gives_all_three_models(trained):
    assert trained["code"] == 0
    out = trained["out"]
    predictions = pd.read_csv(out / "desc-oof_predictions.tsv", sep="\t")
    for level in ("image", "scan"):
        models = set(predictions.loc[predictions["level"] == level, "model"])
        assert models == {"ResNet", "ResNetSWA", "QNet"}
    image = predictions[(predictions["level"] == "image") & (predictions["model"] == "QNet")]
    assert image.groupby("participant_id")["slice"].nunique().min() > 10
    for fold in (0, 1):
        folder = out / "models" / f"repeat-0_fold-{fold}"
        assert {p.name for p in folder.glob("*.pt")} == {"ResNet.pt", "ResNetSWA.pt", "QNet.pt"}
    assert (out / "figures" / "desc-rocscan_roc.png").is_file()
    card = json.loads((out / "models" / "final" / "model_card.json").read_text())
    assert card["Models"] == ["ResNet", "ResNetSWA", "QNet"]
    assert card["CrossValidatedScanMetrics"]


def test_resume_skips_done_folds_and_single_fold_runs(frozen, run, caplog):
    done = frozen["out"] / "models" / "repeat-0_fold-0" / "done.json"
    stamp = done.stat().st_mtime_ns
    assert _group(run, frozen["out"], "--stage1", "frozen", "--fold", "0") == 0
    assert done.stat().st_mtime_ns == stamp
    assert "already done" in caplog.text


def test_changed_splits_are_refused(frozen, run, capsys):
    code = _group(run, frozen["out"], "--stage1", "frozen", "--random-seed", "99")
    assert code == 64
    assert "desc-cv_splits.tsv" in capsys.readouterr().err


def test_final_model_classifies_participants(trained, run, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("sourcedata"))
    code = main(
        [
            str(run["bids"]),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "02",
            "--model",
            str(trained["out"] / "models" / "final"),
            "-w",
            str(run["work"]),
            *OPTIONS,
        ]
    )
    assert code == 0
    table = pd.read_csv(
        out / "sub-01" / "anat" / "sub-01_desc-finalmodel_predictions.tsv", sep="\t"
    )
    assert list(table["model"]) == ["ResNet", "ResNetSWA", "QNet"]
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
    out = tmp_path / "out"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("sourcedata"))
    assert _group(run, out, "--stage1", "frozen") == 0
    first = (frozen["out"] / "desc-cv_metrics.tsv").read_text()
    assert (out / "desc-cv_metrics.tsv").read_text() == first
