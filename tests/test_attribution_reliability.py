"""Attribution that says when it is unreliable: unconverged IG, a model at chance."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from bids_qnet.attribution.group import reliability
from bids_qnet.attribution.integrated import IGResult
from bids_qnet.outputs.names import GroupFiles


def _ranked(deltas):
    return [
        SimpleNamespace(
            plan=SimpleNamespace(scan=SimpleNamespace(scan_id=f"sub-{i:02d}")),
            record=IGResult(None, 1.0, 0.0, delta).record(),
            reference_record=None,
        )
        for i, delta in enumerate(deltas)
    ]


def _interval(tmp_path, low, high, model="QNet"):
    rows = [
        {
            "level": "scan",
            "model": model,
            "auc": (low + high) / 2,
            "ci_low": low,
            "ci_high": high,
            "n_replicates": 100,
        },
        {
            "level": "scan",
            "model": "ROI",
            "auc": 0.9,
            "ci_low": 0.8,
            "ci_high": 0.95,
            "n_replicates": 100,
        },
    ]
    pd.DataFrame(rows).to_csv(GroupFiles(tmp_path).bootstrap_ci, sep="\t", index=False)


def test_maps_of_a_separating_model_that_converged_are_reliable(tmp_path):
    _interval(tmp_path, 0.71, 0.93)
    report = reliability(tmp_path, _ranked([0.001, -0.02]), "IG")
    assert report["Reliable"] and not report["AtChance"] and report["Warnings"] == []
    assert report["ModelAUCCI"] == [0.71, 0.93]


def test_a_model_at_chance_and_unconverged_maps_are_flagged(tmp_path):
    _interval(tmp_path, 0.38, 0.66)
    report = reliability(tmp_path, _ranked([0.001, 0.2, -0.07]), "IG")
    assert report["AtChance"] and not report["Reliable"]
    assert report["Unconverged"] == ["sub-01", "sub-02"]
    assert any("includes chance" in w for w in report["Warnings"])
    assert any("2 of 3 scans" in w and "--ig-steps" in w for w in report["Warnings"])


def test_without_intervals_nothing_is_claimed_about_chance(tmp_path):
    report = reliability(tmp_path, _ranked([0.0]), "IG")
    assert report["ModelAUC"] is None and not report["AtChance"] and report["Reliable"]


def test_ig_records_say_whether_the_path_integral_converged():
    assert IGResult(None, 2.0, 0.0, 0.05).record()["Converged"] is True
    assert IGResult(None, 2.0, 0.0, 0.2).record()["Converged"] is False
    # no output change: complete when the attributions sum to zero too (a constant model)
    assert IGResult(None, 1.0, 1.0, 0.0).record()["Converged"] is True
    assert IGResult(None, 1.0, 1.0, 0.01).record()["Converged"] is False
