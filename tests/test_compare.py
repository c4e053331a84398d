"""Model comparisons from an out-of-fold predictions table, and the files they are written to."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from bids_qnet.errors import InputDataError
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.stats import compare_models
from bids_qnet.stats.clustered import obuchowski_test
from bids_qnet.stats.compare import COMPARISON_COLUMNS, INTERVAL_COLUMNS, REPLICATE_COLUMNS
from bids_qnet.stats.delong import delong_test
from bids_qnet.stats.significance import holm, stars
from bids_qnet.workflows.results import write_model_comparisons

MODELS = {"ResNet": 0.5, "ResNetSWA": 0.7, "QNet": 1.4}  # model: effect of the label


def synthetic_predictions(
    n_participants=24, n_slices=6, repeats=1, sessions=("",), seed=0, n_classes=2
):
    """A table shaped like desc-oof_predictions.tsv (models, levels, logits, repeat, fold)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_participants) % n_classes
    subject = rng.normal(size=n_participants)
    rows = []
    for repeat in range(repeats):
        for p in range(n_participants):
            pid = f"sub-{p + 1:02d}"
            fold = int(rng.integers(0, 3))
            for session in sessions:
                for model, effect in MODELS.items():
                    slices = subject[p] + effect * labels[p] + rng.normal(size=n_slices)
                    scan = [slices.mean()]
                    for level, values in (("image", slices), ("scan", scan)):
                        for index, value in enumerate(values):
                            logits = np.zeros(n_classes)
                            logits[min(1, n_classes - 1)] = value
                            probabilities = np.exp(logits) / np.exp(logits).sum()
                            row = {
                                "participant_id": pid,
                                "session": session or np.nan,
                                "label": labels[p],
                                "model": model,
                                "level": level,
                                "slice": float(index) if level == "image" else np.nan,
                                "prediction": int(np.argmax(logits)),
                                "score": value if n_classes == 2 else np.nan,
                            }
                            for k in range(n_classes):
                                row[f"logit_{k}"] = logits[k]
                                row[f"probability_{k}"] = probabilities[k]
                            rows.append({**row, "repeat": repeat, "fold": fold})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def predictions():
    return synthetic_predictions()


@pytest.fixture(scope="module")
def result(predictions):
    return compare_models(predictions, n_replicates=300, seed=1)


def test_tables_have_the_documented_shape(result):
    table = result.comparisons
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert list(result.replicates.columns) == list(REPLICATE_COLUMNS)
    assert list(result.intervals.columns) == list(INTERVAL_COLUMNS)
    pairs = [("ResNetSWA", "ResNet"), ("QNet", "ResNet"), ("QNet", "ResNetSWA")]
    for level, method in (("image", "Obuchowski clustered"), ("scan", "DeLong")):
        rows = table[table["level"] == level]
        assert list(zip(rows["model1"], rows["model2"], strict=True)) == pairs
        assert set(rows["method"]) == {method}
        assert set(rows["n_participants"]) == {24}
        np.testing.assert_allclose(rows["p_holm"], holm(rows["p"].to_numpy()))
        assert list(rows["stars"]) == [stars(p) for p in rows["p_holm"]]
    assert set(table.loc[table["level"] == "image", "n_images"]) == {24 * 6}
    assert table.loc[table["level"] == "scan", "n_images"].isna().all()
    assert len(result.replicates) == 300 * 3 * 2
    assert len(result.intervals) == 6
    assert (result.intervals["n_replicates"] == 300).all()


def test_rows_equal_the_tests_on_the_reduced_units(predictions, result):
    table = result.comparisons.set_index(["level", "model1", "model2"])
    scan = predictions[predictions["level"] == "scan"].pivot(
        index="participant_id", columns="model", values="score"
    )
    y = predictions.groupby("participant_id")["label"].first().loc[scan.index]
    expected = delong_test(y, scan["QNet"], scan["ResNet"])
    row = table.loc[("scan", "QNet", "ResNet")]
    assert row["z"] == pytest.approx(expected.z, abs=1e-12)
    assert row["ci_low"] == pytest.approx(expected.ci_low, abs=1e-12)
    image = predictions[predictions["level"] == "image"].pivot(
        index=["participant_id", "slice"], columns="model", values="score"
    )
    ids = image.index.get_level_values("participant_id")
    y_image = predictions.groupby("participant_id")["label"].first().loc[ids]
    expected = obuchowski_test(y_image, image["ResNetSWA"], image["ResNet"], ids)
    row = table.loc[("image", "ResNetSWA", "ResNet")]
    assert row["z"] == pytest.approx(expected.z, abs=1e-12)
    assert row["se"] == pytest.approx(expected.se, abs=1e-12)
    # The image-level z is not the naive slice DeLong z.
    naive = delong_test(y_image, image["ResNetSWA"], image["ResNet"])
    assert row["se"] != pytest.approx(naive.se, rel=0.05)


def test_bootstrap_intervals_cover_the_auc_and_are_seeded(predictions, result):
    intervals = result.intervals
    assert (intervals["ci_low"] <= intervals["auc"]).all()
    assert (intervals["auc"] <= intervals["ci_high"]).all()
    again = compare_models(predictions, n_replicates=300, seed=1)
    pd.testing.assert_frame_equal(again.replicates, result.replicates)
    other = compare_models(predictions, n_replicates=300, seed=2)
    assert not np.allclose(other.replicates["auc"], result.replicates["auc"])


def test_repeats_and_sessions_are_averaged():
    table = synthetic_predictions(n_participants=16, n_slices=4, repeats=3, sessions=("1", "2"))
    result = compare_models(table, n_replicates=200, seed=3)
    assert result.notes["repeats_averaged"] and result.notes["n_repeats"] == 3
    assert result.notes["participants_with_several_sessions"] == 16
    keys = ["participant_id", "session", "label", "model", "level", "slice"]
    averaged = table.groupby(keys, dropna=False, as_index=False)["score"].mean()
    scan = averaged[averaged["level"] == "scan"]
    scan = scan.groupby(["participant_id", "label", "model"], as_index=False)["score"].mean()
    wide = scan.pivot(index="participant_id", columns="model", values="score")
    y = scan.groupby("participant_id")["label"].first().loc[wide.index]
    expected = delong_test(y, wide["QNet"], wide["ResNetSWA"])
    row = result.comparisons.query("level == 'scan' and model1 == 'QNet' and model2 == 'ResNetSWA'")
    assert row["z"].item() == pytest.approx(expected.z, abs=1e-12)
    assert row["n_participants"].item() == 16
    image_rows = result.comparisons[result.comparisons["level"] == "image"]
    assert set(image_rows["n_images"]) == {16 * 2 * 4}
    assert set(image_rows["n_participants"]) == {16}


def test_more_than_two_classes_are_skipped(caplog):
    table = synthetic_predictions(n_participants=9, n_slices=3, n_classes=3)
    with caplog.at_level(logging.INFO, logger="bids_qnet.stats.compare"):
        result = compare_models(table, n_replicates=50, seed=0)
    assert result.empty and result.comparisons.empty and result.intervals.empty
    assert list(result.comparisons.columns) == list(COMPARISON_COLUMNS)
    assert "more than two classes" in caplog.text


def test_bad_tables_raise(predictions):
    with pytest.raises(InputDataError, match="score"):
        compare_models(predictions.drop(columns="score"))
    mixed = predictions.copy()
    mixed.loc[mixed.index[0], "label"] = 1 - mixed.loc[mixed.index[0], "label"]
    with pytest.raises(InputDataError, match="two labels"):
        compare_models(mixed, n_replicates=10)


def test_write_model_comparisons(tmp_path, predictions):
    paths = write_model_comparisons(predictions, tmp_path, n_replicates=200, seed=4)
    expected = {
        "comparisons": GroupFiles(tmp_path).comparisons,
        "replicates": GroupFiles(tmp_path).bootstrap_aucs,
        "intervals": GroupFiles(tmp_path).bootstrap_ci,
        "boxplot_image": GroupFiles(tmp_path).auc_boxplot("image"),
        "boxplot_scan": GroupFiles(tmp_path).auc_boxplot("scan"),
    }
    assert paths == expected
    table = pd.read_csv(expected["comparisons"], sep="\t", na_values="n/a")
    assert list(table.columns) == list(COMPARISON_COLUMNS) and len(table) == 6
    reference = compare_models(predictions, n_replicates=200, seed=4).comparisons
    np.testing.assert_allclose(table["z"], reference["z"], rtol=1e-12)
    sidecar = json.loads(sidecar_path(GroupFiles(tmp_path).comparisons).read_text())
    assert sidecar["Complete"] is True
    assert sidecar["Methods"]["image"]["Method"] == "Obuchowski clustered"
    assert sidecar["Methods"]["scan"]["Method"] == "DeLong"
    assert set(COMPARISON_COLUMNS) <= set(sidecar)
    boot = json.loads(sidecar_path(GroupFiles(tmp_path).bootstrap_ci).read_text())
    assert boot["NumberOfReplicates"] == 200 and boot["RandomSeed"] == 4
    replicates = pd.read_csv(expected["replicates"], sep="\t")
    assert len(replicates) == 200 * 3 * 2
    for key in ("boxplot_image", "boxplot_scan"):
        image = imread(expected[key])
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # not blank


def test_write_skips_more_than_two_classes(tmp_path):
    table = synthetic_predictions(n_participants=9, n_slices=3, n_classes=3)
    assert write_model_comparisons(table, tmp_path, n_replicates=20, seed=0) == {}
    assert list(tmp_path.iterdir()) == []
