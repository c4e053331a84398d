import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.reports.roc import roc_figure, roc_points
from bids_qnet.stats.metrics import (
    auc_mann_whitney,
    binary_metrics,
    multiclass_metrics,
    summarise,
)
from bids_qnet.training.estimators import scan_scores_from_slices

from .images import assert_drawn, has_hue


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        score = rng.integers(0, 6, 60).astype(float)  # many ties
        assert binary_metrics(y, score)["auc"] == pytest.approx(roc_auc_score(y, score))
        fpr, tpr = roc_points(y, score)
        assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, score))


def test_auc_hand_computed():
    # positives 0.8, 0.4; negatives 0.4, 0.2, 0.9
    # pairs: (0.8>0.4, 0.8>0.2, 0.8<0.9) = 2; (0.4=0.4 -> 1/2, 0.4>0.2, 0.4<0.9) = 1.5 -> 3.5 / 6
    y = [1, 1, 0, 0, 0]
    s = [0.8, 0.4, 0.4, 0.2, 0.9]
    assert auc_mann_whitney(y, s) == pytest.approx(3.5 / 6)
    assert auc_mann_whitney([0, 1], [0.0, 1.0]) == 1.0
    assert auc_mann_whitney([1, 0], [0.0, 1.0]) == 0.0  # higher score = positive, no flipping


def test_sensitivity_specificity_definitions():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])  # TP 3, FN 1, TN 4, FP 2
    m = binary_metrics(y, np.linspace(-1, 1, 10), y_pred=pred)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert (m["n"], m["n_positive"]) == (10, 4)


def test_default_prediction_uses_threshold():
    m = binary_metrics([1, 0, 1, 0], [2.0, -1.0, 0.0, 0.3])  # score > 0: 1, 0, 0, 1
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    m = binary_metrics([1, 0], [0.7, 0.4], threshold=0.5)
    assert m["accuracy"] == 1.0


def test_one_class_gives_nan_auc():
    m = binary_metrics([1, 1, 1], [0.2, 0.5, -1.0])
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)


def test_bad_inputs():
    with pytest.raises(InputDataError):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(InputDataError):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(InputDataError):
        binary_metrics([0, 1], [0.1, np.nan])


def test_multiclass_metrics_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + np.eye(3)[y]
    m = multiclass_metrics(y, logits)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert m["n"] == 90


def test_majority_vote_and_ties():
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    pred, mean = scan_scores_from_slices(logits)
    assert pred == 0 and np.allclose(mean, [1.0, 1 / 6])
    # 2 votes each; class 1 has the larger mean logit -> 1
    tied = np.array([[0.1, 0.0], [0.2, 0.0], [0.0, 3.0], [0.0, 2.0]])
    assert scan_scores_from_slices(tied)[0] == 1
    # same tie, class 0 larger mean
    assert scan_scores_from_slices(tied[:, ::-1])[0] == 0
    # majority wins over mean logit
    assert scan_scores_from_slices(np.array([[1, 0], [1, 0], [0, 50.0]]))[0] == 0
    with pytest.raises(InputDataError):
        scan_scores_from_slices(np.zeros((0, 2)))


def predictions_table(rng, models=("good", "bad"), folds=3):
    rows = []
    for model in models:
        for fold in range(folds):
            for i in range(10):
                label = i % 2
                score = rng.normal(2.0 * (label - 0.5) * (model == "good"))
                rows.append(
                    dict(
                        participant_id=f"sub-{fold}{i}",
                        label=label,
                        repeat=0,
                        fold=fold,
                        model=model,
                        prediction=int(score > 0),
                        score=score,
                    )
                )
    return pd.DataFrame(rows)


def test_summarise_binary():
    table = predictions_table(np.random.default_rng(2))
    out = summarise(table, "scan")
    assert list(out.columns) == [
        "model",
        "level",
        "repeat",
        "fold",
        "accuracy",
        "sensitivity",
        "specificity",
        "f1",
        "auc",
        "n",
    ]
    good = out[out.model == "good"].set_index("fold")
    assert list(good.index) == [0, 1, 2, "pooled", "mean", "sd"]
    sub = table[(table.model == "good") & (table.fold == 1)]
    assert good.loc[1, "auc"] == pytest.approx(roc_auc_score(sub.label, sub.score))
    pooled = table[table.model == "good"]
    assert good.loc["pooled", "auc"] == pytest.approx(roc_auc_score(pooled.label, pooled.score))
    assert good.loc["pooled", "n"] == 30
    assert good.loc["mean", "accuracy"] == pytest.approx(good.loc[[0, 1, 2], "accuracy"].mean())
    assert good.loc["sd", "f1"] == pytest.approx(good.loc[[0, 1, 2], "f1"].std(ddof=1))
    assert (out.level == "scan").all()


def test_summarise_multiclass_and_two_logits():
    rng = np.random.default_rng(3)
    n = 30
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[y]
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i}" for i in range(n)],
            "label": y,
            "repeat": 0,
            "fold": np.arange(n) % 2,
            "model": "q",
        }
    )
    for k in range(3):
        table[f"logit_{k}"] = logits[:, k]
    out = summarise(table, "image").set_index("fold")
    assert out.loc["pooled", "auc"] == pytest.approx(multiclass_metrics(y, logits)["auc"])
    assert np.isnan(out.loc["pooled", "sensitivity"])
    two = table[table.label < 2].drop(columns="logit_2")
    out2 = summarise(two, "image").set_index("fold")
    score = two.logit_1 - two.logit_0
    assert out2.loc["pooled", "auc"] == pytest.approx(roc_auc_score(two.label, score))
    with pytest.raises(InputDataError, match="score"):
        summarise(table.drop(columns=[f"logit_{k}" for k in range(3)]), "image")


def test_roc_figure(tmp_path):
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    curves = {
        "Q-Net": (y, 2.5 * y + rng.normal(size=100)),
        "ResNet": (y, 0.5 * y + rng.normal(size=100)),
    }
    out = roc_figure(curves, tmp_path / "figs" / "roc.png", title="Scan level")
    pixels = assert_drawn(out, min_colours=8)
    assert pixels.shape[:2] == (750, 750)
    assert has_hue(pixels, 0) and has_hue(pixels, 2)  # two curves in two colours
    assert [p.name for p in out.parent.iterdir()] == ["roc.png"]
    with pytest.raises(UsageError):
        roc_figure({}, tmp_path / "x.png")
    with pytest.raises(InputDataError, match="both classes"):
        roc_figure({"m": (np.ones(4, int), np.arange(4.0))}, tmp_path / "x.png")
