"""Which fold model explains which scan, toward which class: pandas on the group-level tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.inputs.scans import Scan
from bids_qnet.outputs.names import SPLITS
from bids_qnet.training.registry import SCAN_MODEL, SLICE_MODEL

TARGETS = ("true", "predicted")


@dataclass(frozen=True)
class ScanPlan:
    """What attribution needs to know about one scan.

    Attributes
    ----------
    scan : Scan
        The participant-level outputs.
    repeat, fold : int
        The cross-validation fold whose models did not see the participant.
    label : int
        True class index.
    predicted : int
        Q-Net's out-of-fold scan prediction.
    target : int
        Class explained by Integrated Gradients (``label`` or ``predicted``).
    cam_target : int
        Class explained by Grad-CAM (``label``, or ResNetSWA's out-of-fold scan prediction).
    logits : numpy.ndarray
        Q-Net's stored out-of-fold scan logits.
    """

    scan: Scan
    repeat: int
    fold: int
    label: int
    predicted: int
    target: int
    cam_target: int
    logits: np.ndarray

    @property
    def correct(self) -> bool:
        """Whether Q-Net classified the scan correctly."""
        return self.predicted == self.label


def plan_scans(
    scans: list[Scan],
    labels: dict[str, int],
    splits: pd.DataFrame,
    predictions: pd.DataFrame,
    target: str,
    repeat: int = 0,
) -> list[ScanPlan]:
    """Pair every labelled scan with its out-of-fold model and attribution target.

    Parameters
    ----------
    scans : list of Scan
        Scans of the group level.
    labels : dict
        Participant id -> class index.
    splits : pandas.DataFrame
        ``desc-cv_splits.tsv`` (``participant_id``, ``repeat``, ``fold``).
    predictions : pandas.DataFrame
        ``desc-oof_predictions.tsv``.
    target : {"true", "predicted"}
        Which class to explain.
    repeat : int
        Cross-validation repeat whose fold models are used.

    Returns
    -------
    list of ScanPlan
        In the order of ``scans``; scans without a label are left out.

    Raises
    ------
    UsageError
        For an unknown ``target``.
    InputDataError
        When a participant has no fold in ``splits`` or no Q-Net scan prediction.
    """
    if target not in TARGETS:
        raise UsageError(f"--attribution-target {target!r} is not one of {', '.join(TARGETS)}")
    folds = splits[splits["repeat"].astype(int) == int(repeat)]
    fold_of = dict(zip(folds["participant_id"], folds["fold"].astype(int), strict=True))
    scan_rows = predictions[
        (predictions["level"] == "scan") & (predictions["repeat"].astype(int) == int(repeat))
    ]
    plans = []
    for scan in scans:
        if scan.participant_id not in labels:
            continue
        if scan.participant_id not in fold_of:
            raise InputDataError(f"{scan.participant_id} has no fold in {SPLITS}")
        qnet = _row(scan_rows, scan, SCAN_MODEL)
        swa = _row(scan_rows, scan, SLICE_MODEL, required=False)
        logits = _logits(qnet)
        label, predicted = int(labels[scan.participant_id]), int(np.argmax(logits))
        cam_predicted = int(swa["prediction"]) if swa is not None else predicted
        plans.append(
            ScanPlan(
                scan=scan,
                repeat=int(repeat),
                fold=int(fold_of[scan.participant_id]),
                label=label,
                predicted=predicted,
                target=label if target == "true" else predicted,
                cam_target=label if target == "true" else cam_predicted,
                logits=logits,
            )
        )
    return plans


def _row(rows: pd.DataFrame, scan: Scan, model: str, required: bool = True) -> pd.Series | None:
    session = rows["session"].map(_session)
    chosen = rows[
        (rows["participant_id"] == scan.participant_id)
        & (rows["model"] == model)
        & (session == _session(scan.session))
    ]
    if chosen.empty:
        if required:
            raise InputDataError(f"{scan.scan_id} has no {model} scan prediction in the results")
        return None
    return chosen.iloc[0]


def _session(value) -> str:
    """Session label as a comparable key (pandas reads ``n/a`` as NaN and ``01`` as 1)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value in ("", "n/a"):
        return ""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _logits(row: pd.Series) -> np.ndarray:
    columns = sorted(
        (c for c in row.index if c.startswith("logit_")), key=lambda c: int(c.split("_")[1])
    )
    return np.array([float(row[c]) for c in columns], dtype=np.float32)
