"""ROC curves of several models on one panel (the paper's Figures 5 and 8).

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas; the global pyplot backend is
never touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.outputs.atomic import write_figure
from bids_qnet.stats.metrics import auc_mann_whitney

logger = logging.getLogger(__name__)

DPI = 150
SIZE_IN = 5.0


def roc_points(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    """Return the ROC curve's false and true positive rates, from (0, 0) to (1, 1).

    One point per distinct score (thresholds from high to low); tied scores of positives and
    negatives give a diagonal segment, so the area under the curve equals the Mann-Whitney AUC
    with ties counted 1/2.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive.
    score : array_like of float
        Higher = more positive.

    Returns
    -------
    fpr, tpr : numpy.ndarray
        False and true positive rates.
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(score, dtype=float).ravel()
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr


def roc_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], out_path: Path, title: str = ""
) -> Path:
    """Draw the ROC curve of each model, with its AUC, on one square panel.

    Parameters
    ----------
    curves : dict of str to (numpy.ndarray, numpy.ndarray)
        Model name to ``(y_true, score)``: truth in {0, 1} (1 = positive) and scores where
        higher = more positive. Drawn in the dictionary's order.
    out_path : pathlib.Path
        PNG file to write (150 dpi), atomically; its folder is created if needed.
    title : str
        Panel title.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    UsageError
        ``curves`` is empty.
    InputDataError
        A model's truth lacks one of the two classes (no ROC curve exists) or its inputs are
        malformed.
    """
    if not curves:
        raise UsageError("roc_figure needs at least one model's predictions")
    fig = Figure(figsize=(SIZE_IN, SIZE_IN))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.55", linewidth=1, label="Chance (AUC = 0.5)")
    for name, (y_true, score) in curves.items():
        auc = auc_mann_whitney(y_true, score)
        if np.isnan(auc):
            raise InputDataError(
                f"ROC curve of '{name}' needs both classes among its predictions; "
                "check the labels of the pooled test folds"
            )
        fpr, tpr = roc_points(y_true, score)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC = {auc:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out_path = Path(out_path)
    write_figure(out_path, fig, DPI)
    logger.debug("wrote ROC figure %s", out_path)
    return out_path
