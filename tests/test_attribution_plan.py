"""Which fold model explains which scan, toward which class."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_qnet.attribution.plan import plan_scans
from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.inputs.scans import Scan


def _scan(sub, ses=None):
    return Scan(f"sub-{sub}", ses, Path(f"{sub}_slices.npy"), Path(f"{sub}_embeddings.npy"), "")


def _tables():
    splits = pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03"],
            "label": [0, 1, 1],
            "repeat": 0,
            "fold": [0, 1, 1],
        }
    )
    rows = []
    for sub, ses, qnet, swa in (
        ("01", np.nan, (2.0, -1.0), 1),
        ("02", 1, (0.5, 1.5), 1),
        ("03", np.nan, (1.0, 0.0), 1),
    ):
        for model, logits, prediction in (
            ("QNet", qnet, int(np.argmax(qnet))),
            ("ResNetSWA", (0.0, 1.0), swa),
        ):
            rows.append(
                {
                    "participant_id": f"sub-{sub}",
                    "session": ses,
                    "model": model,
                    "level": "scan",
                    "repeat": 0,
                    "prediction": prediction,
                    "logit_0": logits[0],
                    "logit_1": logits[1],
                }
            )
    rows.append({**rows[0], "level": "image", "logit_0": 9.0})  # image rows are ignored
    return splits, pd.DataFrame(rows)


def test_targets_folds_and_sessions():
    splits, predictions = _tables()
    labels = {"sub-01": 0, "sub-02": 1, "sub-03": 1}
    scans = [_scan("01"), _scan("02", "01"), _scan("03"), _scan("04")]  # sub-04 has no label
    true = plan_scans(scans, labels, splits, predictions, "true")
    assert [p.scan.scan_id for p in true] == ["sub-01", "sub-02_ses-01", "sub-03"]
    assert [p.fold for p in true] == [0, 1, 1]
    assert [p.target for p in true] == [0, 1, 1]
    np.testing.assert_array_equal(true[1].logits, [0.5, 1.5])  # session "01" read back as 1
    predicted = plan_scans(scans, labels, splits, predictions, "predicted")
    assert [p.target for p in predicted] == [0, 1, 0]
    assert [p.cam_target for p in predicted] == [1, 1, 1]  # ResNetSWA's own prediction
    assert [p.correct for p in predicted] == [True, True, False]


def test_refusals():
    splits, predictions = _tables()
    with pytest.raises(UsageError):
        plan_scans([_scan("01")], {"sub-01": 0}, splits, predictions, "both")
    with pytest.raises(InputDataError, match="no fold"):
        plan_scans([_scan("09")], {"sub-09": 0}, splits, predictions, "true")
    with pytest.raises(InputDataError, match="no QNet"):
        plan_scans(
            [_scan("01")],
            {"sub-01": 0},
            splits,
            predictions[predictions["model"] != "QNet"],
            "true",
        )
