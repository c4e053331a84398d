"""The group HTML report renders what the group level wrote, and says what is missing."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from bids_qnet.metrics import summarise
from bids_qnet.reports.group import cohort_table, performance_table, write_group_report
from bids_qnet.reports.roc import roc_figure

LABELS = {"column": "group", "classes": ["HC", "HH"], "positive": "HH", "bins": None}


def _predictions(rng, n_per_class=6, slices=4):
    rows = []
    for i in range(2 * n_per_class):
        label = int(i >= n_per_class)
        pid = f"sub-{i + 1:02d}"
        for model, shift in (("ResNet", 0.5), ("QNet", 2.0)):
            scan_score = shift * (2 * label - 1) + rng.normal()
            for s in range(slices):
                score = scan_score + rng.normal(scale=0.5)
                rows.append(_row(pid, label, model, "image", s, score, i % 3))
            rows.append(_row(pid, label, model, "scan", "n/a", scan_score, i % 3))
    return pd.DataFrame(rows)


def _row(pid, label, model, level, index, score, fold):
    return {
        "participant_id": pid,
        "session": np.nan,
        "label": label,
        "model": model,
        "level": level,
        "slice": index,
        "prediction": int(score > 0),
        "score": score,
        "logit_0": 0.0,
        "logit_1": score,
        "repeat": 0,
        "fold": fold,
    }


@pytest.fixture()
def group_output(tmp_path):
    rng = np.random.default_rng(0)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    out.mkdir()
    predictions = _predictions(rng)
    ids = sorted(predictions["participant_id"].unique())
    pd.DataFrame(
        {
            "participant_id": ids + ["sub-99"],
            "group": ["HC"] * 6 + ["HH"] * 6 + ["HH"],
            "age": list(range(30, 42)) + [70],
            "sex": ["F", "M"] * 6 + ["F"],
        }
    ).to_csv(bids / "participants.tsv", sep="\t", index=False)
    predictions.to_csv(out / "desc-oof_predictions.tsv", sep="\t", index=False)
    (out / "desc-cv_labels.json").write_text(json.dumps(LABELS))
    metrics = pd.concat(
        [summarise(predictions[predictions["level"] == v], v) for v in ("image", "scan")]
    )
    metrics.to_csv(out / "desc-cv_metrics.tsv", sep="\t", index=False)
    scan = predictions[predictions["level"] == "scan"]
    curves = {m: (g["label"].to_numpy(), g["score"].to_numpy()) for m, g in scan.groupby("model")}
    roc_figure(curves, out / "figures" / "desc-rocscan_roc.png", title="scan <ROC>")
    return {"bids": bids, "out": out, "predictions": predictions, "metrics": metrics}


SETTINGS = {
    "channels": ["Chimap", "R2starmap", "T1w"],
    "stage1": "train",
    "epochs": 3,
    "qnet_epochs": 5,
    "folds": 3,
    "cv_repeats": 1,
    "random_seed": 1,
    "bootstrap_replicates": 2000,
    "attribution": "ig",
    "ig_steps": 50,
    "ig_baseline": "zero",
    "attribution_target": "true",
    "embedding_weights": "random",
    "version": "test",
    "label_column": "<script>alert(1)</script>",
}


def test_cohort_table_counts_only_cross_validated_participants(group_output):
    participants = pd.read_csv(group_output["bids"] / "participants.tsv", sep="\t")
    table = cohort_table(participants, LABELS, group_output["predictions"]).set_index("class")
    assert table.loc["HC", "participants"] == 6 and table.loc["HH", "participants"] == 6
    assert table.loc["total", "participants"] == 12  # sub-99 has no predictions
    assert table.loc["HH", "age, mean (SD)"].startswith("38.5")  # ages 36..41, not sub-99's 70
    assert table.loc["total", "slices per scan"] == "4.0 (4-4)"
    assert table.loc["HC", "sex"] == "F 3, M 3"


def test_performance_table_shows_pooled_and_fold_spread(group_output):
    table = performance_table(group_output["metrics"], "scan").set_index("model")
    assert set(table.index) == {"ResNet", "Q-Net"}
    metrics = group_output["metrics"]
    pooled = metrics[
        (metrics["level"] == "scan") & (metrics["model"] == "QNet") & (metrics["fold"] == "pooled")
    ]
    assert table.loc["Q-Net", "auc"].startswith(f"{pooled['auc'].iloc[0]:.3f} (")
    assert table.loc["Q-Net", "n"] == 12


def test_report_is_self_contained_and_names_missing_sections(group_output):
    out = group_output["out"]
    path = write_group_report(out, group_output["bids"], SETTINGS)
    text = path.read_text()
    assert path == out / "group.html"
    for section in ("cohort", "performance", "comparison", "attribution", "methods", "about"):
        assert f'id="{section}"' in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1  # the scan ROC; the image ROC is flagged as not written
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not written: <code>desc-rocimage_roc.png</code>" in text
    assert "Not available: desc-delong_comparisons.tsv" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "DeLong" in text and "Integrated Gradients" in text and "3-fold" in text
    assert not list(out.glob(".*tmp"))


def test_report_shows_comparison_and_region_tables(group_output):
    out = group_output["out"]
    pd.DataFrame(
        [
            {
                "level": "scan",
                "model1": "QNet",
                "model2": "ResNet",
                "auc1": 0.95,
                "auc2": 0.7,
                "difference": 0.25,
                "se": 0.1,
                "z": 2.5,
                "ci_low": 0.05,
                "ci_high": 0.45,
                "p": 1.23e-5,
                "p_holm": 0.02,
                "stars": "*",
            }
        ]
    ).to_csv(out / "desc-delong_comparisons.tsv", sep="\t", index=False)
    (out / "desc-delong_comparisons.json").write_text(json.dumps({"Methods": {"scan": "DeLong"}}))
    pd.DataFrame([{"region": "Left_Pallidum", "channel": "Chimap", "rank": 1}]).to_csv(
        out / "desc-attribution_regions.tsv", sep="\t", index=False
    )
    text = write_group_report(
        out, group_output["bids"], SETTINGS | {"attribution": "none"}
    ).read_text()
    assert '<td class="sig">*</td>' in text and "Q-Net vs ResNet" in text
    assert "0.250 [0.050, 0.450]" in text and "1.23e-05" in text
    assert "Left_Pallidum" in text and "scan: DeLong" in text
    assert "Integrated Gradients (Sundararajan" not in text  # attribution switched off
