"""The group level's results: out-of-fold predictions, metrics, model comparisons, figures.

Wiring: the metrics and tests come from :mod:`bids_qnet.stats`, the figures from
:mod:`bids_qnet.reports`; every file is named by :class:`~bids_qnet.outputs.names.GroupFiles`.
Tables sit at the output root (group level, no ``sub-``; ``desc-*`` is in ``.bidsignore``), each
comparison table with a JSON sidecar written last (``"Complete": true``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_qnet.outputs.atomic import write_table
from bids_qnet.outputs.derivatives import write_sidecar
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.stats.bootstrap import DEFAULT_REPLICATES
from bids_qnet.stats.compare import METHODS, compare_models
from bids_qnet.stats.metrics import summarise
from bids_qnet.stats.sidecars import bootstrap_sidecar, comparisons_sidecar
from bids_qnet.training.registry import MODEL_LABELS

LOGGER = logging.getLogger(__name__)
LEVELS = ("image", "scan")


def write_results(
    files: GroupFiles, predictions: pd.DataFrame, n_replicates: int, seed: int
) -> pd.DataFrame:
    """Write the out-of-fold predictions, the metrics, the ROC curves and the comparisons.

    Returns
    -------
    pandas.DataFrame
        The metrics (``desc-cv_metrics.tsv``).
    """
    from bids_qnet.reports.roc import roc_figure

    write_table(files.predictions, predictions)
    metrics = pd.concat(
        [summarise(predictions[predictions["level"] == level], level) for level in LEVELS],
        ignore_index=True,
    )
    write_table(files.metrics, metrics)
    if predictions["score"].notna().any():
        for level in LEVELS:
            subset = predictions[predictions["level"] == level]
            curves = {
                MODEL_LABELS.get(m, m): (g["label"].to_numpy(), g["score"].to_numpy())
                for m, g in subset.groupby("model", sort=False)
            }
            title = f"Out-of-fold ROC, {level} level"
            roc_figure(curves, files.roc_figure(level), title=title)
    LOGGER.info("cross-validation results: %s", files.metrics)
    write_model_comparisons(predictions, files.root, n_replicates=n_replicates, seed=seed)
    return metrics


def pooled_scan_metrics(predictions: pd.DataFrame) -> list[dict]:
    """Return each model's scan-level metrics over all the test folds pooled."""
    pooled = summarise(predictions[predictions["level"] == "scan"], "scan")
    return pooled[pooled["fold"].astype(str) == "pooled"].to_dict(orient="records")


def write_model_comparisons(
    predictions: pd.DataFrame,
    output_dir: Path,
    n_replicates: int = DEFAULT_REPLICATES,
    seed: int | None = 0,
) -> dict[str, Path]:
    """Compare the models and write the tables, their sidecars and the AUC boxplots.

    Parameters
    ----------
    predictions : pandas.DataFrame
        The out-of-fold predictions (``desc-oof_predictions.tsv``).
    output_dir : pathlib.Path
        The derivative dataset root.
    n_replicates : int
        Bootstrap replicates (default 2000).
    seed : int or None
        Bootstrap seed.

    Returns
    -------
    dict of str to pathlib.Path
        Keys ``comparisons``, ``replicates``, ``intervals`` (TSVs; their sidecars sit beside
        them) and ``boxplot_<level>``; empty (nothing written, a note logged) when there are
        more than two classes or too few participants.
    """
    from bids_qnet.reports.auc_boxplot import auc_boxplot

    result = compare_models(predictions, n_replicates=n_replicates, seed=seed)
    if result.empty:
        return {}
    files = GroupFiles(Path(output_dir))
    paths = {
        "comparisons": _tsv(files.comparisons, result.comparisons),
        "replicates": _tsv(files.bootstrap_aucs, result.replicates),
        "intervals": _tsv(files.bootstrap_ci, result.intervals),
    }
    write_sidecar(paths["comparisons"], comparisons_sidecar(result))
    write_sidecar(paths["replicates"], bootstrap_sidecar(result, intervals=False))
    write_sidecar(paths["intervals"], bootstrap_sidecar(result, intervals=True))
    for level, replicates in result.replicates.groupby("level", sort=False):
        tests = result.comparisons[result.comparisons["level"] == level]
        named = {"model": replicates["model"].map(lambda m: MODEL_LABELS.get(m, m))}
        pairs = {k: tests[k].map(lambda m: MODEL_LABELS.get(m, m)) for k in ("model1", "model2")}
        paths[f"boxplot_{level}"] = auc_boxplot(
            replicates.assign(**named),
            tests.assign(**pairs),
            files.auc_boxplot(str(level)),
            title=f"Bootstrap ROC AUCs, {level} level",
            method=METHODS[str(level)],
        )
    LOGGER.info("model comparisons: %s", paths["comparisons"])
    return paths


def _tsv(path: Path, frame: pd.DataFrame) -> Path:
    return write_table(path, frame, na_rep="n/a")
