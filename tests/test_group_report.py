"""The group HTML report renders what the group level wrote, and says what is missing."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from bids_qnet.outputs.derivatives import dataset_description, sidecar_path
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.reports.group import cohort_table, performance_table, write_group_report
from bids_qnet.reports.roc import roc_figure
from bids_qnet.stats.metrics import summarise

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
    # a bids_qnet derivative dataset: other output folders are refused
    (out / "dataset_description.json").write_text(json.dumps(dataset_description([])))
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
    predictions.to_csv(GroupFiles(out).predictions, sep="\t", index=False)
    GroupFiles(out).labels.write_text(json.dumps(LABELS))
    metrics = pd.concat(
        [summarise(predictions[predictions["level"] == v], v) for v in ("image", "scan")]
    )
    metrics.to_csv(GroupFiles(out).metrics, sep="\t", index=False)
    scan = predictions[predictions["level"] == "scan"]
    curves = {m: (g["label"].to_numpy(), g["score"].to_numpy()) for m, g in scan.groupby("model")}
    roc_figure(curves, GroupFiles(out).roc_figure("scan"), title="scan <ROC>")
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
    assert table.loc["HH", "age, mean (SD)"] == "38.5 (1.9)"
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
    assert path == GroupFiles(out).report
    for section in ("cohort", "performance", "comparison", "attribution", "methods", "about"):
        assert f'id="{section}"' in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1  # the scan ROC; the image ROC is flagged as not written
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not written: <code>figures/desc-rocimage_roc.png</code>" in text
    assert "Not available: desc-delong_comparisons.tsv" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "DeLong" in text and "Integrated Gradients" in text and "3-fold" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched
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
    ).to_csv(GroupFiles(out).comparisons, sep="\t", index=False)
    sidecar_path(GroupFiles(out).comparisons).write_text(
        json.dumps({"Methods": {"scan": "DeLong"}})
    )
    pd.DataFrame([{"region": "Left_Pallidum", "channel": "Chimap", "rank": 1}]).to_csv(
        GroupFiles(out).attribution_regions, sep="\t", index=False
    )
    text = write_group_report(
        out, group_output["bids"], SETTINGS | {"attribution": "none"}
    ).read_text()
    assert '<td class="sig">*</td>' in text and "Q-Net vs ResNet" in text
    assert "0.250 [0.050, 0.450]" in text and "&lt; 0.0001" in text
    assert "Left Pallidum" in text and "scan: DeLong" in text
    assert "Integrated Gradients (Sundararajan" not in text  # attribution switched off


def _cells(text: str) -> list[str]:
    return re.findall(r"<td[^>]*>([^<]*)</td>", text)


def test_region_table_reads_as_numbers_and_words(group_output):
    out = group_output["out"]
    pd.DataFrame(
        {
            "rank": [1, 2],
            "region": ["Left_Pallidum", "Right_Caudate"],
            "voxels": [236, 500],
            "volume_mm3": [1888.0, 4000.0],
            "density_contrast": [4.00462e-4, -1e-12],
            "share_Chimap": [0.35, 0.0],
            "share_R2starmap": [0.65, 1.0],
            "small": [False, True],
        }
    ).to_csv(GroupFiles(out).attribution_regions, sep="\t", index=False)
    text = write_group_report(out, group_output["bids"], SETTINGS).read_text()
    table = text.split("Regions in numbers</h3>")[1].split("</table>")[0]
    cells = _cells(table)
    assert "Left Pallidum" in cells and "1,888" in cells
    assert "4.00" in cells and "0.00" in cells  # one scale (×10⁻⁴), fixed decimals, never -0
    assert "(×10⁻⁴)" in table
    assert not [c for c in cells if re.fullmatch(r"-0(\.0+)?", c.strip())]
    assert "yes" in cells and "no" in cells and "True" not in cells and "False" not in cells
    assert not any("e-" in c for c in cells)


def test_warnings_section_lists_the_recorded_warnings(group_output):
    from bids_qnet.outputs.warnings import read_warnings, record_warning, reset_warnings

    out = group_output["out"]
    text = write_group_report(out, group_output["bids"], SETTINGS).read_text()
    assert "None: this run raised no warning." in text
    reset_warnings(out)
    record_warning(out, "attribution", "IG did not converge <for> 3 scans", log=False)
    record_warning(out, "device", "ran on the CPU", severity="info", log=False)
    record_warning(out, "registration", "similarity 0.72", participant_id="sub-03", log=False)
    record_warning(out, "device", "ran on the CPU", severity="info", log=False)  # kept once
    assert len(read_warnings(out)) == 3
    text = write_group_report(out, group_output["bids"], SETTINGS).read_text()
    section = text.split('id="warnings"')[1].split("</section>")[0]
    assert "IG did not converge &lt;for&gt; 3 scans" in section
    assert "sub-03" in section and '<span class="badge info">' in section
    assert "3 warning(s)" in text


def test_every_model_of_the_tables_is_shown_even_unregistered_and_scan_only(group_output):
    out, predictions = group_output["out"], group_output["predictions"]
    scan = predictions[(predictions["level"] == "scan") & (predictions["model"] == "QNet")]
    roi = scan.assign(
        model="Ridge", score=scan["score"] * 0.5
    )  # a model no registry knows: scans only
    everything = pd.concat([predictions, roi], ignore_index=True)
    everything.to_csv(GroupFiles(out).predictions, sep="\t", index=False)
    metrics = pd.concat(
        [summarise(everything[everything["level"] == v], v) for v in ("image", "scan")]
    )
    metrics.to_csv(GroupFiles(out).metrics, sep="\t", index=False)
    text = write_group_report(out, group_output["bids"], SETTINGS).read_text()
    performance = text.split('id="performance"')[1].split("</section>")[0]
    scan_part, image_part = performance.split("Image level")
    assert ">Ridge</td>" in scan_part and "Ridge" not in image_part.split("</table>")[0]
    assert "Ridge: scan-level predictions only" in performance
    assert scan_part.index(">ResNet</td>") < scan_part.index(">Q-Net</td>")
    assert scan_part.index(">Q-Net</td>") < scan_part.index(">Ridge</td>")
    assert "ResNet, Q-Net, Ridge" in text  # the summary's model list
    table = performance_table(metrics, "scan").set_index("model")
    assert list(table.index) == ["ResNet", "Q-Net", "Ridge"]


def test_about_shows_what_each_level_used(group_output, tmp_path):
    out = group_output["out"]
    for subject, profile in (("01", "fast"), ("02", "fast"), ("03", "precise")):
        log = out / f"sub-{subject}" / "log" / "run1"
        log.mkdir(parents=True)
        (log / "bids_qnet_settings.json").write_text(
            json.dumps({"registration_profile": profile, "template_resolution": 2.0})
        )
    settings = SETTINGS | {"registration_profile": "precise", "device": "auto"}
    text = write_group_report(out, group_output["bids"], settings | {"device_used": "cpu"})
    about = text.read_text().split('id="about"')[1]
    row = re.search(r">Registration profile</td>\s*<td[^>]*>([^<]*)</td>", about)
    assert row and row.group(1) == "fast (2), precise (1)"
    assert re.search(r">Template grid \(mm\)</td>\s*<td[^>]*>2</td>", about)
    assert "auto (used: cpu)" in about


def test_reports_only_rebuilds_the_group_page_from_the_outputs(group_output):
    from bids_qnet.cli.run import main

    out, bids = group_output["out"], group_output["bids"]
    assert main([str(bids), str(out), "group", "--reports-only"]) == 66  # no group run saved
    saved = GroupFiles(out).settings("20260101-000000_x")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(SETTINGS))
    assert main([str(bids), str(out), "group", "--reports-only"]) == 0
    page = GroupFiles(out).report.read_text()
    assert "Cross-validated performance" in page and "Q-Net" in page
    assert not GroupFiles(out).final.card.exists()  # nothing was trained


def test_boilerplate_only_writes_the_methods_text_and_nothing_else(group_output):
    from bids_qnet.cli.run import main

    out, bids = group_output["out"], group_output["bids"]
    before = {p for p in out.rglob("*")}
    assert main([str(bids), str(out), "group", "--boilerplate-only", "--epochs", "7"]) == 0
    text = GroupFiles(out).citation.read_text()
    assert "# Methods of the group level" in text and "References" in text
    assert {p for p in out.rglob("*")} - before == {GroupFiles(out).citation}
    assert main([str(bids), str(out), "participant", "--boilerplate-only", "--crop", "full"]) == 0
    participant = (out / "CITATION.md").read_text()
    assert "whole template brain was kept" in participant


def test_attribution_of_an_unreliable_model_carries_a_caution(group_output):
    out = group_output["out"]
    pd.DataFrame({"rank": [1], "region": ["Left_Pallidum"], "volume_mm3": [1888.0]}).to_csv(
        GroupFiles(out).attribution_regions, sep="\t", index=False
    )
    caution = "the attribution maps explain a model that does not separate the groups"
    sidecar_path(GroupFiles(out).attribution_regions).write_text(
        json.dumps({"Reliability": {"AtChance": True, "Warnings": [f"AUC 0.55: {caution}"]}})
    )
    text = write_group_report(out, group_output["bids"], SETTINGS).read_text()
    attribution = text.split('<section id="attribution">')[1].split("</section>")[0]
    assert caution in attribution and "callout warn" in attribution
