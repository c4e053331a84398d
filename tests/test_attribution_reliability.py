"""Attribution that says when it is unreliable: unconverged IG, a model at chance."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bids_qnet.attribution.group import reliability
from bids_qnet.attribution.integrated import (
    IGJob,
    IGResult,
    integrated_gradients_many,
)
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
    assert any("2 of 3 scans" in w and "--ig-max-steps" in w for w in report["Warnings"])


def test_without_intervals_nothing_is_claimed_about_chance(tmp_path):
    report = reliability(tmp_path, _ranked([0.0]), "IG")
    assert report["ModelAUC"] is None and not report["AtChance"] and report["Reliable"]


def test_ig_records_say_whether_the_path_integral_converged():
    assert IGResult(None, 2.0, 0.0, 0.05).record()["Converged"] is True
    assert IGResult(None, 2.0, 0.0, 0.2).record()["Converged"] is False
    # no output change: complete when the attributions sum to zero too (a constant model)
    assert IGResult(None, 1.0, 1.0, 0.0).record()["Converged"] is True
    assert IGResult(None, 1.0, 1.0, 0.01).record()["Converged"] is False


class _Steep(nn.Module):
    """``(B, T, C, H, W) -> (B, 2)``: a step-like logit of the mean voxel, hard to integrate."""

    def __init__(self, sharpness: float) -> None:
        super().__init__()
        self.sharpness = sharpness

    def forward(self, x):
        score = 6.0 * torch.tanh(self.sharpness * (x.mean(dim=(1, 2, 3, 4)) - 0.37))
        return torch.stack([-score, score], dim=1)


def _jobs(n):
    x = torch.full((1, 3, 2, 4, 4), 1.0)
    return [IGJob(x * (1 + 0.1 * i), torch.zeros_like(x), 1) for i in range(n)]


def test_unconverged_integrated_gradients_are_computed_again_with_more_steps():
    model = _Steep(25.0).eval()
    once = integrated_gradients_many(model, _jobs(2), 4, 4, torch.device("cpu"))
    assert all(not result.converged for result, _, _ in once)  # 4 steps miss the step
    refined = integrated_gradients_many(model, _jobs(2), 4, 4, torch.device("cpu"), 64)
    for (first, _, _), (result, _, seconds) in zip(once, refined, strict=True):
        assert result.converged and result.n_steps in (16, 64)
        assert result.record()["StepsUsed"] == result.n_steps and seconds > 0
        total = result.attribution.sum()
        assert np.isclose(total, result.output - result.baseline_output, rtol=0.05)
        assert abs(first.attribution.sum() - total) > 0.05 * abs(total)


def test_refinement_stops_at_its_limit_and_leaves_converged_scans_alone():
    cpu = torch.device("cpu")
    smooth = integrated_gradients_many(_Steep(1.0).eval(), _jobs(1), 4, 4, cpu, 64)
    assert smooth[0][0].converged and smooth[0][0].n_steps == 4  # nothing to refine
    cliff = integrated_gradients_many(_Steep(1e4).eval(), _jobs(1), 2, 4, cpu, 20)
    result = cliff[0][0]
    assert result.n_steps == 20 and not result.converged  # 2, 8, then the limit
    assert result.record()["Converged"] is False


def test_the_most_steps_default_to_sixteen_times_the_steps_and_cannot_be_fewer(tmp_path):
    from bids_qnet.config import Settings
    from bids_qnet.config.settings import check_settings
    from bids_qnet.errors import UsageError

    (tmp_path / "bids").mkdir()
    settings = Settings.create(tmp_path / "bids", tmp_path / "out", "group", ig_steps=50)
    assert settings.attribution.max_steps == 800
    settings = Settings.create(
        tmp_path / "bids", tmp_path / "out", "group", ig_steps=50, ig_max_steps=50
    )
    assert settings.attribution.max_steps == 50  # no second pass
    check_settings(settings)
    settings.attribution.ig_max_steps = 10
    with pytest.raises(UsageError, match="--ig-max-steps 10 is below --ig-steps 50"):
        check_settings(settings)
