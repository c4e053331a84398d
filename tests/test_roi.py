"""The ROI baseline: regional pooling, the penalised logistic regression, the estimator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.inputs.labels import load_covariates
from bids_qnet.inputs.scans import Scan
from bids_qnet.models.roi import RegionalLogistic
from bids_qnet.outputs.names import ModelFiles
from bids_qnet.preprocess.regions import pooling_weights, regional_statistics
from bids_qnet.stats.metrics import auc_mann_whitney
from bids_qnet.training.base import FitParams, GroupContext
from bids_qnet.training.fitted import FittedModels
from bids_qnet.training.roi import ROIEstimator

from .grids import grid_from_slice_labels

# (S, H, W) = (3, 4, 5): region 7 is a 2x3 block on slices 0-1, region 9 a column on slice 2.
LABELS = np.zeros((3, 4, 5), np.int32)
LABELS[0:2, 1:3, 1:4] = 7
LABELS[2, :, 4] = 9


def test_mean_weights_give_the_regional_mean_over_all_slices():
    weights = pooling_weights(LABELS, [7, 9], ("mean",))
    assert weights.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(weights.sum(axis=(1, 2, 3)), [1.0, 1.0])
    stack = np.random.default_rng(0).normal(size=(3, 2, 4, 5))
    stats = regional_statistics(stack, weights)
    for k, label in enumerate([7, 9]):
        for c in range(2):
            np.testing.assert_allclose(stats[k, c], stack[:, c][LABELS == label].mean())


def test_moments_see_a_ramp_inside_a_region_and_ignore_its_level():
    weights = pooling_weights(LABELS, [7], ("mean", "ap", "lr"))
    rows = np.arange(4, dtype=float)[None, :, None] * np.ones((3, 4, 5))
    cols = np.arange(5, dtype=float)[None, None, :] * np.ones((3, 4, 5))
    level = np.full((3, 1, 4, 5), 0.3)
    anterior_bright = (10.0 - rows)[:, None]  # row 0 is anterior
    right_bright = cols[:, None]
    mean, ap, lr = regional_statistics(level, weights)[:, 0]
    assert mean == pytest.approx(0.3) and ap == pytest.approx(0) and lr == pytest.approx(0)
    assert regional_statistics(anterior_bright, weights)[1, 0] > 0.5
    assert regional_statistics(anterior_bright, weights)[2, 0] == pytest.approx(0)
    assert regional_statistics(right_bright, weights)[2, 0] > 0.5
    assert regional_statistics(level + anterior_bright, weights)[1, 0] == pytest.approx(
        regional_statistics(anterior_bright, weights)[1, 0]
    )


def test_pooling_refuses_unknown_statistics_and_empty_regions():
    with pytest.raises(UsageError):
        pooling_weights(LABELS, [7], ("median",))
    with pytest.raises(InputDataError, match="no voxel"):
        pooling_weights(LABELS, [8])


def _two_groups(n=60, shift=1.0, features=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, features))
    x[:, 0] += shift * y
    return x, y


def test_logistic_regression_learns_a_shift_and_round_trips():
    x, y = _two_groups(shift=1.5)
    model = RegionalLogistic(seed=1).fit(x[:40], y[:40], 2)
    logits = model.logits(x[40:])
    assert logits.shape == (20, 2)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])
    assert auc_mann_whitney(y[40:], logits[:, 1] - logits[:, 0]) > 0.8
    assert model.c_ in model.c_grid
    again = RegionalLogistic.from_state(model.state())
    np.testing.assert_allclose(again.logits(x[40:]), logits)


def test_logistic_regression_imputes_missing_values_with_the_training_mean():
    x, y = _two_groups()
    x[3, 2] = np.nan
    model = RegionalLogistic().fit(x, y, 2)
    row = x[:1].copy()
    row[0, 2] = np.nan
    filled = row.copy()
    filled[0, 2] = model.mean_[2]
    np.testing.assert_allclose(model.logits(row), model.logits(filled))


def test_logistic_regression_refuses_missing_classes_and_wrong_shapes():
    x, y = _two_groups(n=6)
    with pytest.raises(InputDataError):
        RegionalLogistic().fit(x[:3], np.array([0, 0, 0]), 2)
    tiny = RegionalLogistic().fit(x[:3], np.array([0, 0, 1]), 2)  # one patient: C not tuned
    assert tiny.c_ == RegionalLogistic().c_grid[len(RegionalLogistic().c_grid) // 2]
    model = RegionalLogistic().fit(x, y, 2)
    with pytest.raises(InputDataError):
        model.logits(x[:, :3])
    with pytest.raises(InputDataError):
        RegionalLogistic.from_state({"mean": np.zeros(2)})


def test_three_classes_give_three_logits():
    rng = np.random.default_rng(2)
    y = np.arange(45) % 3
    x = rng.normal(size=(45, 4)) + np.eye(4)[y] * 2
    logits = RegionalLogistic().fit(x, y, 3).logits(x)
    assert logits.shape == (45, 3)
    assert (logits.argmax(axis=1) == y).mean() > 0.8


def test_covariates_become_numbers_and_indicators(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(
        "participant_id\tage\tsex\tsite\nsub-01\t40\tF\ta\nsub-02\tn/a\tM\tb\nsub-03\t61\tF\tn/a\n"
    )
    table = load_covariates(path, ["age", "sex"])
    assert list(table.columns) == ["age", "sex=M"]
    assert table.loc["sub-01", "age"] == 40 and np.isnan(table.loc["sub-02", "age"])
    assert table["sex=M"].tolist() == [0.0, 1.0, 0.0]
    assert load_covariates(path, None) is None
    with pytest.raises(UsageError, match="weight"):
        load_covariates(path, ["weight"])


def _cohort(tmp_path, n=24, shift=0.3, seed=0):
    """Scans whose region 7 is brighter in channel 0 for patients; a grid for the atlas."""
    rng = np.random.default_rng(seed)
    scans, labels = [], {}
    for i in range(n):
        pid = f"sub-{i:02d}"
        label = i % 2
        stack = rng.normal(0.5, 0.1, (3, 2, 4, 5)).astype(np.float32)
        stack[:, 0][LABELS == 7] += shift * label + rng.normal(0, 0.05)
        path = tmp_path / f"{pid}_slices.npy"
        np.save(path, stack)
        scans.append(Scan(pid, None, path, path, "fp"))
        labels[pid] = label
    grid = grid_from_slice_labels(LABELS, {7: "Left_Caudate", 9: "Right_Caudate"})
    np.testing.assert_array_equal(grid.slice_labels(), LABELS)
    return scans, labels, grid


def test_roi_estimator_fits_predicts_saves_and_loads(tmp_path):
    scans, labels, grid = _cohort(tmp_path)
    covariates = pd.DataFrame({"age": np.arange(24.0)}, index=[s.participant_id for s in scans])
    context = GroupContext(grid, grid.regions, covariates)
    params = FitParams(1, 1, 8, 8, "random", "train", 3, "cpu")
    estimator = ROIEstimator(params, 2)
    from bids_qnet.training.base import Cohort

    train, test = scans[:16], scans[16:]
    estimator.fit(Cohort(train, context=context), [labels[s.participant_id] for s in train])
    assert estimator.feature_names == [
        "Left_Caudate_Chimap",
        "Left_Caudate_R2starmap",
        "Right_Caudate_Chimap",
        "Right_Caudate_R2starmap",
        "age",
    ]
    prediction = estimator.predict(Cohort(test, context=context)).logits["ROI"]
    assert all(p.image is None and p.scan.shape == (2,) for p in prediction)
    scores = [p.scan[1] - p.scan[0] for p in prediction]
    assert auc_mann_whitney([labels[s.participant_id] for s in test], scores) > 0.9
    table = estimator.coefficients()
    top = table.loc[table["coefficient"].abs().idxmax(), "feature"]
    assert top == "Left_Caudate_Chimap"

    files = ModelFiles(tmp_path / "model")
    files.folder.mkdir()
    checksums = estimator.save(files)
    loaded = ROIEstimator.load(files, checksums, params, 2, 2)
    again = loaded.predict(Cohort(test, context=context)).logits["ROI"]
    np.testing.assert_allclose([p.scan for p in again], [p.scan for p in prediction])
    without = loaded.predict(Cohort(test)).logits["ROI"]  # age unknown: the training mean
    assert len(without) == len(test)


def test_fitted_models_write_scan_rows_only_for_the_roi(tmp_path):
    scans, labels, grid = _cohort(tmp_path, n=12)
    context = GroupContext(grid, ("Left_Caudate",))
    params = FitParams(1, 1, 8, 8, "random", "frozen", 3, "cpu")
    fitted = FittedModels(params, 2, context=context)
    fitted.families_ = [ROIEstimator(params, 2)]
    from bids_qnet.training.base import Cohort

    fitted.families_[0].fit(
        Cohort(scans, context=context), [labels[s.participant_id] for s in scans]
    )
    rows = pd.DataFrame(fitted.predict(scans, labels))
    assert set(rows["level"]) == {"scan"} and set(rows["model"]) == {"ROI"}
    assert len(rows) == len(scans)
