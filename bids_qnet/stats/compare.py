"""Pairwise AUC comparisons of every model at the image and scan levels (the paper's Table 2).

From the out-of-fold predictions table (``desc-oof_predictions.tsv``): one row per predicted unit
with ``participant_id``, ``session``, ``label`` (0/1, 1 = positive), ``model``, ``level``
(``image`` or ``scan``), ``slice``, ``score`` (``logit_1 - logit_0``, higher = positive; NaN
with more than two classes) and ``repeat``.

How units become independent (the participant is the independent unit throughout):

* Repeated cross-validation gives a participant one prediction per repeat: scores are averaged
  over repeats per participant, session and slice.
* Scan level: one score per participant (scan scores averaged over the participant's sessions);
  paired DeLong test.
* Image level: slices (of all sessions) are clustered within their participant; paired
  Obuchowski (1997) clustered test. Slices are never treated as independent.
* Bootstrap: participants resampled with replacement within each class (whole participants, all
  their slices), the same draws for every model and both levels, so replicates are paired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bids_qnet.errors import InputDataError
from bids_qnet.stats.bootstrap import (
    DEFAULT_REPLICATES,
    bootstrap_auc,
    percentile_ci,
    stratified_counts,
)
from bids_qnet.stats.clustered import obuchowski_test
from bids_qnet.stats.delong import AUCComparison, delong_test
from bids_qnet.stats.metrics import auc_mann_whitney
from bids_qnet.stats.significance import holm, stars

logger = logging.getLogger(__name__)

LEVELS = ("image", "scan")
METHODS = {"image": "Obuchowski clustered", "scan": "DeLong"}
COMPARISON_COLUMNS = (
    "level",
    "model1",
    "model2",
    "auc1",
    "auc2",
    "difference",
    "se",
    "z",
    "p",
    "p_holm",
    "ci_low",
    "ci_high",
    "stars",
    "method",
    "n_participants",
    "n_images",
)
REPLICATE_COLUMNS = ("level", "model", "replicate", "auc")
INTERVAL_COLUMNS = ("level", "model", "auc", "ci_low", "ci_high", "n_replicates")
_REQUIRED = ("participant_id", "label", "model", "level", "score")
_KEYS = ["participant_id", "session", "slice"]


@dataclass(frozen=True)
class ModelComparison:
    """The results of :func:`compare_models`.

    Attributes
    ----------
    comparisons : pandas.DataFrame
        One row per model pair and level, columns :data:`COMPARISON_COLUMNS`.
    replicates : pandas.DataFrame
        Bootstrap AUCs, columns :data:`REPLICATE_COLUMNS`.
    intervals : pandas.DataFrame
        Percentile CIs per model and level, columns :data:`INTERVAL_COLUMNS`.
    notes : dict
        How the inputs were reduced (repeats, sessions averaged, skipped reason, ...), for the
        sidecar.
    """

    comparisons: pd.DataFrame
    replicates: pd.DataFrame
    intervals: pd.DataFrame
    notes: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when nothing was compared (more than two classes, too few participants)."""
        return self.comparisons.empty and self.replicates.empty


def empty_result(reason: str, notes: dict | None = None) -> ModelComparison:
    """Return empty tables with the right columns and the reason in the notes."""
    logger.info("model comparison skipped: %s", reason)
    return ModelComparison(
        pd.DataFrame(columns=list(COMPARISON_COLUMNS)),
        pd.DataFrame(columns=list(REPLICATE_COLUMNS)),
        pd.DataFrame(columns=list(INTERVAL_COLUMNS)),
        {**(notes or {}), "skipped": reason},
    )


def model_order(predictions: pd.DataFrame) -> list[str]:
    """Return the model names in order of first appearance."""
    return list(dict.fromkeys(predictions["model"].astype(str)))


def level_units(predictions: pd.DataFrame, level: str) -> pd.DataFrame:
    """Return one score per unit and model at ``level``, averaged over repeats (and sessions).

    Parameters
    ----------
    predictions : pandas.DataFrame
        The out-of-fold predictions (two classes), already checked by :func:`compare_models`.
    level : str
        ``"image"`` (units: participant, session, slice) or ``"scan"`` (units: participants).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id, session, slice``, one column per model (in order of
        appearance); units missing a model's score are dropped with a warning.
    """
    rows = predictions[predictions["level"] == level].copy()
    rows["session"] = session_labels(rows)
    if level == "scan" or "slice" not in rows:
        rows["slice"] = -1
    rows["slice"] = pd.to_numeric(rows["slice"], errors="coerce").fillna(-1).astype(int)
    if level == "scan":
        rows["session"] = ""  # one score per participant: average the sessions' scans
    scores = rows.groupby(["model", *_KEYS], sort=False)["score"].mean()
    wide = scores.unstack("model")[[m for m in model_order(rows)]]
    complete = wide.dropna()
    if len(complete) < len(wide):
        logger.warning(
            "%s level: %d of %d units lack a prediction of some model and are left out",
            level,
            len(wide) - len(complete),
            len(wide),
        )
    return complete.sort_index()


def compare_models(
    predictions: pd.DataFrame,
    n_replicates: int = DEFAULT_REPLICATES,
    seed: int | np.random.Generator | None = 0,
    conf_level: float = 0.95,
) -> ModelComparison:
    """Compare every pair of models at both levels; bootstrap every model's AUC.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Out-of-fold predictions (columns ``participant_id, session, label, model, level,
        slice, score, repeat``; ``session``, ``slice`` and ``repeat`` optional).
    n_replicates : int
        Bootstrap replicates (default 2000).
    seed : int or numpy.random.Generator or None
        Seeds :func:`numpy.random.default_rng` for the bootstrap.
    conf_level : float
        Confidence level of the intervals (default 0.95).

    Returns
    -------
    ModelComparison
        Tables of pairwise tests (``model1`` is the later model in the table's order, as in
        the paper's Table 2; ``p_holm`` adjusts across the pairs within a level), bootstrap
        replicates and percentile CIs. Empty tables, with a logged note, for more than two
        classes (``score`` all NaN) or fewer than two participants of a class.

    Raises
    ------
    InputDataError
        Missing columns, labels other than 0/1 with two-class scores, scores missing for
        some rows only, or a participant carrying two labels.
    """
    missing = [c for c in _REQUIRED if c not in predictions.columns]
    if missing:
        raise InputDataError(f"out-of-fold predictions lack column(s): {', '.join(missing)}")
    if predictions.empty:
        return empty_result("no predictions")
    data = _two_class_scores(predictions)
    if data is None:
        return empty_result("more than two classes (no two-class score); AUC tests need two")
    per_participant = data.groupby("participant_id")["label"].nunique()
    if (per_participant > 1).any():
        bad = ", ".join(per_participant[per_participant > 1].index.astype(str)[:5])
        raise InputDataError(f"participants with two labels in the predictions: {bad}")
    participant_label = data.groupby("participant_id")["label"].first().sort_index()
    notes = reduction_notes(data)
    class_sizes = participant_label.value_counts()
    if class_sizes.get(0, 0) < 2 or class_sizes.get(1, 0) < 2:
        return empty_result("fewer than two participants in a class", notes)

    participants = participant_label.index.to_numpy()
    counts = stratified_counts(participant_label.to_numpy(), n_replicates, seed)
    comparison_rows, replicate_frames, interval_rows = [], [], []
    for level in LEVELS:
        if not (data["level"] == level).any():
            continue
        units = level_units(data, level)
        ids = units.index.get_level_values("participant_id").to_numpy()
        y = participant_label.loc[ids].to_numpy()
        clusters = np.searchsorted(participants, ids)
        comparison_rows += level_comparisons(units, y, level, conf_level)
        intervals, replicates = level_bootstrap(units, y, clusters, counts, level, conf_level)
        interval_rows += intervals
        replicate_frames += replicates
    notes["n_replicates"] = int(n_replicates)
    notes["seed"] = seed if isinstance(seed, int) else None
    replicates = (
        pd.concat(replicate_frames, ignore_index=True)
        if replicate_frames
        else pd.DataFrame(columns=list(REPLICATE_COLUMNS))
    )
    intervals = pd.DataFrame(interval_rows, columns=list(INTERVAL_COLUMNS))
    return ModelComparison(_adjusted(comparison_rows), replicates, intervals, notes)


def _adjusted(comparison_rows: list[dict]) -> pd.DataFrame:
    """Return the pairwise tests with Holm-adjusted p-values (within a level) and stars."""
    comparisons = pd.DataFrame(comparison_rows, columns=list(COMPARISON_COLUMNS))
    for _, group in comparisons.groupby("level", sort=False):
        comparisons.loc[group.index, "p_holm"] = holm(group["p"].to_numpy(dtype=float))
    comparisons["stars"] = [stars(p) for p in comparisons["p_holm"]]
    comparisons["n_images"] = comparisons["n_images"].astype("Int64")
    return comparisons


def _two_class_scores(predictions: pd.DataFrame) -> pd.DataFrame | None:
    """Return the predictions with numeric scores and 0/1 labels; None without any score."""
    score = pd.to_numeric(predictions["score"], errors="coerce")
    if score.isna().all():
        return None
    if score.isna().any():
        raise InputDataError("out-of-fold predictions: 'score' is missing for some rows only")
    labels = pd.to_numeric(predictions["label"], errors="coerce")
    if not labels.isin([0, 1]).all():
        raise InputDataError("out-of-fold predictions: labels must be 0/1 for two classes")
    return predictions.assign(score=score, label=labels.astype(int))


def level_bootstrap(
    units: pd.DataFrame, y, clusters, counts, level: str, conf_level: float
) -> tuple[list[dict], list[pd.DataFrame]]:
    """Bootstrap each model's AUC at one level: its interval rows and replicate tables.

    ``counts`` are the participant draws shared by every model and both levels.
    """
    interval_rows, replicate_frames = [], []
    for model in units.columns:
        aucs = bootstrap_auc(y, units[model].to_numpy(), clusters, counts)
        low, high = percentile_ci(aucs, conf_level)
        interval_rows.append(
            {
                "level": level,
                "model": model,
                "auc": auc_mann_whitney(y, units[model].to_numpy()),
                "ci_low": low,
                "ci_high": high,
                "n_replicates": int(np.isfinite(aucs).sum()),
            }
        )
        replicate_frames.append(
            pd.DataFrame(
                {"level": level, "model": model, "replicate": np.arange(aucs.size), "auc": aucs}
            )
        )
    return interval_rows, replicate_frames


def level_comparisons(
    units: pd.DataFrame, y: np.ndarray, level: str, conf_level: float
) -> list[dict]:
    """Return one row per model pair at one level (``p_holm`` and ``stars`` filled later)."""
    models = list(units.columns)
    ids = units.index.get_level_values("participant_id").to_numpy()
    rows = []
    for j in range(1, len(models)):
        for i in range(j):
            first, second = units[models[j]].to_numpy(), units[models[i]].to_numpy()
            try:
                if level == "image":
                    result = obuchowski_test(y, first, second, ids, conf_level)
                else:
                    result = delong_test(y, first, second, conf_level)
                values = result.to_dict()
            except InputDataError as error:
                logger.warning(
                    "%s level, %s vs %s: no test (%s)", level, models[j], models[i], error
                )
                values = dict.fromkeys(AUCComparison.__dataclass_fields__, np.nan)
            rows.append(
                {
                    "level": level,
                    "model1": models[j],
                    "model2": models[i],
                    **values,
                    "p_holm": np.nan,
                    "stars": "",
                    "method": METHODS[level],
                    "n_participants": int(np.unique(ids).size),
                    "n_images": int(len(units)) if level == "image" else np.nan,
                }
            )
    return rows


def session_labels(frame: pd.DataFrame) -> pd.Series:
    """Return the ``session`` column as strings, ``""`` where missing (or no such column)."""
    if "session" not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    sessions = frame["session"]
    return sessions.astype(object).where(sessions.notna(), "").astype(str)


def reduction_notes(data: pd.DataFrame) -> dict:
    """Describe how repeats and sessions were reduced, for the sidecar."""
    n_repeats = int(data["repeat"].nunique()) if "repeat" in data else 1
    sessions = session_labels(data)
    per_participant = sessions.groupby(data["participant_id"]).nunique()
    return {
        "n_repeats": n_repeats,
        "repeats_averaged": n_repeats > 1,
        "participants_with_several_sessions": int((per_participant > 1).sum()),
    }
