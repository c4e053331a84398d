"""Classification metrics of cross-validated predictions (the paper's Table 1 and ROC AUCs).

Conventions: class 1 is the positive class; a higher score means more positive (a logit
difference or a probability, never a guessed direction); the AUC is the Mann-Whitney statistic
with ties counted 1/2; a metric that is undefined (e.g. AUC with one class) is NaN, not 0.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from scipy.stats import rankdata

from bids_qnet.errors import InputDataError

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("accuracy", "sensitivity", "specificity", "f1", "auc", "n")
SUMMARY_COLUMNS = ("model", "level", "repeat", "fold", *METRIC_COLUMNS)
_LOGIT = re.compile(r"^logit_(\d+)$")


def auc_mann_whitney(y_true, score) -> float:
    """Return the ROC AUC as the Mann-Whitney statistic, ties counted 1/2.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive.
    score : array_like of float
        Higher = more positive.

    Returns
    -------
    float
        P(score of a random positive > score of a random negative) + 1/2 P(equal);
        NaN when either class is absent.
    """
    y, s = _binary_inputs(y_true, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie contributes 1/2
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y_true, score, y_pred=None, threshold: float = 0.0) -> dict[str, float]:
    """Return accuracy, sensitivity, specificity, F1 and AUC of a two-class prediction.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive.
    score : array_like of float
        Higher = more positive (a logit difference or a probability).
    y_pred : array_like of {0, 1}, optional
        Predicted classes; default ``score > threshold``.
    threshold : float
        Decision threshold on ``score`` when ``y_pred`` is not given (0 suits logit
        differences; use 0.5 for probabilities).

    Returns
    -------
    dict
        ``accuracy``, ``sensitivity`` (TP / positives), ``specificity`` (TN / negatives),
        ``f1`` (2TP / (2TP + FP + FN)), ``auc`` (NaN when one class is absent), ``n`` and
        ``n_positive``. A ratio with a zero denominator is NaN.
    """
    y, s = _binary_inputs(y_true, score)
    pred = (s > threshold).astype(int) if y_pred is None else _binary_labels(y_pred, "y_pred")
    if pred.shape != y.shape:
        raise InputDataError(f"y_pred has {pred.size} values but y_true has {y.size}")
    tp = int(np.sum((y == 1) & (pred == 1)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc": auc_mann_whitney(y, s),
        "n": int(y.size),
        "n_positive": tp + fn,
    }


def multiclass_metrics(y_true, logits, y_pred=None) -> dict[str, float]:
    """Return accuracy, macro F1 and macro one-vs-rest AUC of a K-class prediction.

    Parameters
    ----------
    y_true : array_like of int
        Truth, class indices 0 .. K-1.
    logits : array_like, shape (N, K)
        Class logits (or any scores where higher = more of that class).
    y_pred : array_like of int, optional
        Predicted classes; default the argmax of ``logits``.

    Returns
    -------
    dict
        ``accuracy``; ``f1``: mean F1 over the classes present in ``y_true`` or ``y_pred``;
        ``auc``: mean over classes present in ``y_true`` (with other classes present too) of the
        one-vs-rest AUC of the class's log-odds ``logit_k - logsumexp(other logits)`` (the same
        ranking as the softmax probability, without its saturation); ``n``.
    """
    z = np.asarray(logits, dtype=float)
    y = np.asarray(y_true)
    if z.ndim != 2 or z.shape[0] != y.size or z.shape[1] < 2:
        raise InputDataError(f"logits must have shape (N, K>=2) with N={y.size}, got {z.shape}")
    if y.size == 0 or not np.all(np.isfinite(z)):
        raise InputDataError("multiclass metrics need at least one row and finite logits")
    if not np.all((y >= 0) & (y < z.shape[1]) & (y == np.round(y))):
        raise InputDataError(f"labels must be class indices 0..{z.shape[1] - 1}")
    y = y.astype(int)
    pred = np.argmax(z, axis=1) if y_pred is None else np.asarray(y_pred, dtype=int)
    f1s, aucs = [], []
    for k in range(z.shape[1]):
        if np.any(y == k) or np.any(pred == k):
            tp = np.sum((y == k) & (pred == k))
            f1s.append(_ratio(2 * tp, np.sum(y == k) + np.sum(pred == k)))
        if np.any(y == k) and np.any(y != k):
            others = np.delete(z, k, axis=1)
            aucs.append(auc_mann_whitney(y == k, z[:, k] - logsumexp(others, axis=1)))
    return {
        "accuracy": float(np.mean(pred == y)),
        "f1": float(np.mean(f1s)),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "n": int(y.size),
    }


def summarise(predictions: pd.DataFrame, level: str) -> pd.DataFrame:
    """Summarise cross-validated predictions per model, repeat and fold.

    Parameters
    ----------
    predictions : pandas.DataFrame
        One row per predicted unit (a slice at image level, a scan at scan level) with columns
        ``participant_id``, ``label``, ``repeat``, ``fold``, ``model``, and either ``score``
        (two classes, higher = class 1) or ``logit_0`` .. ``logit_{K-1}``. ``prediction`` is
        used when present, else derived (``score > 0`` or the argmax). With only two logit
        columns and no ``score``, the score is ``logit_1 - logit_0``.
    level : str
        Written to the ``level`` column (e.g. ``"image"`` or ``"scan"``).

    Returns
    -------
    pandas.DataFrame
        Columns ``model, level, repeat, fold, accuracy, sensitivity, specificity, f1, auc, n``:
        for each model and repeat, one row per fold, a ``"pooled"`` row (all test predictions
        of the repeat together), and ``"mean"`` and ``"sd"`` rows (mean and sample SD of the
        fold rows, every column including ``n``; undefined fold values are skipped).
        Sensitivity and specificity are NaN for more than two classes.
    """
    required = ["participant_id", "label", "repeat", "fold", "model"]
    missing = [c for c in required if c not in predictions.columns]
    if missing:
        raise InputDataError(f"predictions lack column(s): {', '.join(missing)}")
    if predictions.empty:
        raise InputDataError("no predictions to summarise")
    logit_columns = sorted(
        (c for c in predictions.columns if _LOGIT.match(str(c))),
        key=lambda c: int(_LOGIT.match(str(c)).group(1)),
    )
    if "score" not in predictions.columns and not logit_columns:
        raise InputDataError("predictions need a 'score' column or logit_<k> columns")

    rows = []
    for (model, repeat), group in predictions.groupby(["model", "repeat"], sort=True):
        fold_rows = [
            {"fold": fold, **_metrics(part, logit_columns)}
            for fold, part in group.groupby("fold", sort=True)
        ]
        folds = pd.DataFrame(fold_rows)
        pooled = {"fold": "pooled", **_metrics(group, logit_columns)}
        mean = {"fold": "mean", **folds[list(METRIC_COLUMNS)].mean(skipna=True).to_dict()}
        sd = {"fold": "sd", **folds[list(METRIC_COLUMNS)].std(ddof=1, skipna=True).to_dict()}
        for row in [*fold_rows, pooled, mean, sd]:
            rows.append({"model": model, "level": level, "repeat": repeat, **row})
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    table["fold"] = table["fold"].astype(object)
    return table


def _metrics(part: pd.DataFrame, logit_columns: list[str]) -> dict[str, float]:
    """Metrics of one set of predictions, restricted to METRIC_COLUMNS."""
    y = part["label"].to_numpy()
    pred = part["prediction"].to_numpy() if "prediction" in part.columns else None
    if "score" in part.columns or len(logit_columns) == 2:
        if "score" in part.columns:
            score = part["score"].to_numpy(dtype=float)
        else:
            score = part[logit_columns[1]].to_numpy(float) - part[logit_columns[0]].to_numpy(float)
        result = binary_metrics(y, score, y_pred=pred)
    else:
        result = multiclass_metrics(y, part[logit_columns].to_numpy(float), y_pred=pred)
        result.update(sensitivity=float("nan"), specificity=float("nan"))
    return {key: result[key] for key in METRIC_COLUMNS}


def _binary_inputs(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    """Validate binary truth and finite scores of equal length."""
    y = _binary_labels(y_true, "y_true")
    s = np.asarray(score, dtype=float).ravel()
    if s.shape != y.shape:
        raise InputDataError(f"score has {s.size} values but y_true has {y.size}")
    if not np.all(np.isfinite(s)):
        raise InputDataError("scores must be finite (no NaN or infinity)")
    return y, s


def _binary_labels(values, name: str) -> np.ndarray:
    """Return ``values`` as a 1D int array of 0/1, or raise."""
    array = np.asarray(values).ravel()
    if array.dtype == bool:
        return array.astype(int)
    if array.size and not np.all(np.isin(array, (0, 1))):
        raise InputDataError(f"{name} must hold only 0 and 1 (1 = positive class)")
    return array.astype(int)


def _ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, NaN when the denominator is 0."""
    return float(numerator / denominator) if denominator else float("nan")
