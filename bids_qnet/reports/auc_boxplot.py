"""Bootstrap AUC boxplots per model with significance brackets (the paper's Figure 7).

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas; the global pyplot backend is
never touched. Inputs are the tables :func:`bids_qnet.stats.compare.compare_models` returns
(and ``write_model_comparisons`` writes): bootstrap replicates and pairwise tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.outputs.atomic import write_figure

logger = logging.getLogger(__name__)

DPI = 150
#: How the boxes look.
BOX_STYLE = {
    "patch_artist": True,
    "boxprops": {"facecolor": "#cfe0f1", "edgecolor": "0.25"},
    "medianprops": {"color": "black", "linewidth": 1.8},
    "whiskerprops": {"color": "0.25"},
    "capprops": {"color": "0.25"},
    "flierprops": {"marker": ".", "markersize": 3, "markerfacecolor": "0.5", "alpha": 0.5},
}
STAR_KEY = "ns: p > 0.05, *: p <= 0.05, **: p <= 0.01, ***: p <= 0.001, ****: p <= 0.0001."


def bracket_tiers(pairs: list[tuple[int, int]]) -> list[int]:
    """Assign each bracket (left, right box position) the lowest tier free over its span.

    Narrow brackets are placed first so that wider ones arch over them.

    Parameters
    ----------
    pairs : list of (int, int)
        Box positions joined by each bracket.

    Returns
    -------
    list of int
        Tier (0 = lowest) of each bracket, in the input order.
    """
    order = sorted(range(len(pairs)), key=lambda k: (abs(pairs[k][1] - pairs[k][0]), min(pairs[k])))
    occupied: list[list[tuple[int, int]]] = []
    tiers = [0] * len(pairs)
    for k in order:
        low, high = sorted(pairs[k])
        tier = 0
        while tier < len(occupied) and any(not (high < a or low > b) for a, b in occupied[tier]):
            tier += 1
        if tier == len(occupied):
            occupied.append([])
        occupied[tier].append((low, high))
        tiers[k] = tier
    return tiers


def auc_boxplot(
    replicates: pd.DataFrame,
    comparisons: pd.DataFrame,
    out_path: Path,
    title: str = "",
    method: str = "DeLong",
) -> Path:
    """Draw one box of bootstrap AUCs per model with stars of the pairwise tests above.

    Parameters
    ----------
    replicates : pandas.DataFrame
        Columns ``model`` and ``auc`` (one level's bootstrap replicates); boxes in order of
        first appearance.
    comparisons : pandas.DataFrame
        Columns ``model1``, ``model2``, ``stars`` (and ``p_holm``): the same level's pairwise
        tests; the stars come from the Holm-adjusted p-values. May be empty.
    out_path : pathlib.Path
        PNG file to write (150 dpi), atomically.
    title : str
        Panel title.
    method : str
        Name of the test behind the stars, for the caption.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    UsageError
        No replicates.
    InputDataError
        A comparison names a model without replicates.
    """
    if replicates.empty:
        raise UsageError("auc_boxplot needs bootstrap replicates of at least one model")
    models = list(dict.fromkeys(replicates["model"].astype(str)))
    position = {m: k + 1 for k, m in enumerate(models)}
    values = [
        replicates.loc[replicates["model"].astype(str) == m, "auc"].dropna().to_numpy(float)
        for m in models
    ]
    n_replicates = max(v.size for v in values)
    fig = Figure(figsize=(max(4.0, 1.3 * len(models) + 1.5), 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(values, positions=list(position.values()), widths=0.55, **BOX_STYLE)
    ax.set_xticks(list(position.values()), models)
    low = float(min(np.min(v) for v in values if v.size))
    high = float(max(np.max(v) for v in values if v.size))
    span = max(high - low, 0.05)
    low = min(low, high - span)  # a degenerate (constant) distribution still gets an axis
    top = _brackets(ax, comparisons, position, high, 0.09 * span)
    ax.set_ylim(low - 0.08 * span, top)
    ax.set_yticks([t for t in ax.get_yticks() if low - 0.08 * span <= t <= 1.0])
    ax.set_ylabel("ROC AUC (bootstrap replicates)")
    ax.grid(True, axis="y", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=11)
    fig.text(
        0.5,
        0.01,
        f"{n_replicates} stratified participant resamples; box: IQR, line: median.\n"
        f"Stars: Holm-adjusted {method} test p-values of the pairs.\n{STAR_KEY}",
        ha="center",
        va="bottom",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out_path = Path(out_path)
    write_figure(out_path, fig, DPI)
    logger.debug("wrote AUC boxplot %s", out_path)
    return out_path


def _brackets(ax, comparisons, position: dict[str, int], high: float, step: float) -> float:
    """Draw one bracket with its stars per comparison above the boxes; return the top."""
    pairs = []
    for row in comparisons.itertuples(index=False):
        if str(row.model1) not in position or str(row.model2) not in position:
            raise InputDataError(f"comparison {row.model1} vs {row.model2} has no bootstrap AUCs")
        pairs.append((position[str(row.model1)], position[str(row.model2)], str(row.stars)))
    tiers = bracket_tiers([(a, b) for a, b, _ in pairs])
    top = high + 0.5 * step
    for (a, b, label), tier in zip(pairs, tiers, strict=True):
        y = high + step * (tier + 0.6)
        left, right = sorted((a, b))
        ax.plot(
            [left, left, right, right],
            [y - 0.25 * step, y, y, y - 0.25 * step],
            color="black",
            linewidth=1.0,
        )
        ax.text((left + right) / 2, y, label or "n/a", ha="center", va="bottom", fontsize=10)
        top = max(top, y + 0.8 * step)
    return top
