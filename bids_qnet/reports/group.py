"""The group HTML report: one self-contained page over the group-level derivatives.

The page (the ``group.html`` template) reads only files already written: the tables and figures
at the output root, the warnings list (``desc-group_warnings.tsv``), the settings each level
saved, and ``participants.tsv``. Figures are embedded as data URIs, so ``group.html`` can be
mailed or archived on its own. A section whose files are missing says so instead of failing:
the report can be rebuilt at any time (``--reports-only``) with the results that exist.

Models are whatever the predictions and metrics hold: registered families come in
``training/registry.py`` order with their report labels, any other model after them under its
own name; a model with scan-level predictions only appears at the scan level.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_qnet import __version__
from bids_qnet.outputs.atomic import write_text
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.names import GroupFiles, saved_participant_settings
from bids_qnet.outputs.warnings import read_warnings
from bids_qnet.reports.group_text import (
    CITATIONS,
    FIGURE_TEXT,
    methods_paragraph,
    statistics_note,
)
from bids_qnet.reports.html import figure_uri, format_number, render
from bids_qnet.reports.labels import label
from bids_qnet.training.registry import MODEL_LABELS, MODEL_NAMES

LOGGER = logging.getLogger(__name__)
METRIC_COLUMNS = ("accuracy", "sensitivity", "specificity", "f1", "auc")
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1",
    "auc": "AUC",
}
LEVEL_TEXT = {
    "scan": "Scan level (one prediction per participant scan)",
    "image": "Image level (one prediction per slice)",
}
NAV = (
    ("summary", "Summary"),
    ("warnings", "Warnings"),
    ("cohort", "Cohort"),
    ("performance", "Performance"),
    ("comparison", "Comparison"),
    ("attribution", "Attribution"),
    ("methods", "Methods"),
    ("about", "About"),
)
#: Settings "About" shows, per level, in this order.
PARTICIPANT_SETTINGS = (
    "version",
    "channels",
    "reference_channel",
    "registration_profile",
    "template_resolution",
    "crop",
    "crop_margin_mm",
    "embedding_weights",
    "image_size",
    "random_seed",
)
GROUP_SETTINGS = (
    "version",
    "preset",
    "regions",
    "covariates",
    "label_column",
    "folds",
    "cv_repeats",
    "stage1",
    "epochs",
    "qnet_epochs",
    "embedding_weights",
    "image_size",
    "embedding_batch_size",
    "bootstrap_replicates",
    "attribution",
    "attribution_target",
    "ig_steps",
    "ig_baseline",
    "device",
    "random_seed",
)
#: Region table columns shown (others stay in the TSV), with their headings.
REGION_COLUMNS = {
    "rank": "Rank",
    "region": "Region",
    "volume_mm3": "Volume (mm³)",
    "density_contrast": "Relevance contrast per voxel",
}
REGION_ROWS = 20
#: How "About" names the settings.
SETTING_LABELS = {
    "version": "bids_qnet version",
    "channels": "Channels",
    "reference_channel": "Reference channel",
    "registration_profile": "Registration profile",
    "template_resolution": "Template grid (mm)",
    "crop": "Crop",
    "crop_margin_mm": "Crop margin (mm)",
    "embedding_weights": "ResNet18 weights",
    "image_size": "Network input (pixels)",
    "random_seed": "Random seed",
    "preset": "Training preset",
    "regions": "Regions (ROI baseline)",
    "covariates": "Covariates",
    "label_column": "Class column",
    "folds": "Folds",
    "cv_repeats": "Cross-validation repeats",
    "stage1": "Stage 1",
    "epochs": "Stage-1 epochs",
    "qnet_epochs": "Q-Net epochs",
    "embedding_batch_size": "Batch size",
    "bootstrap_replicates": "Bootstrap replicates",
    "attribution": "Attribution",
    "attribution_target": "Attribution target class",
    "ig_steps": "Integrated Gradients steps",
    "ig_baseline": "Integrated Gradients baseline",
    "device": "Device",
}


def write_group_report(output_dir: Path, bids_dir: Path, settings: dict) -> Path:
    """Write ``<output_dir>/group.html`` from the group-level outputs already on disk.

    Parameters
    ----------
    output_dir : Path
        The derivative dataset root the group level wrote into.
    bids_dir : Path
        The input BIDS dataset (its ``participants.tsv`` gives the cohort table).
    settings : dict
        The group run's settings (``Settings.to_dict()``), shown in "About" beside the
        participant level's recorded settings, and used for the methods paragraph.

    Returns
    -------
    Path
        The report, written atomically.
    """
    output_dir = Path(output_dir)
    context = group_context(output_dir, Path(bids_dir), settings)
    path = write_text(GroupFiles(output_dir).report, render("group.html", **context))
    LOGGER.info("wrote group report %s", path)
    return path


def group_context(output_dir: Path, bids_dir: Path, settings: dict) -> dict[str, Any]:
    """Return what ``group.html`` shows (see :func:`write_group_report`)."""
    files = GroupFiles(output_dir)
    predictions = _read_tsv(files.predictions)
    metrics = _read_tsv(files.metrics)
    labels = _read_json(files.labels)
    participants = _read_tsv(bids_dir / "participants.tsv")
    ci = _read_tsv(files.bootstrap_ci)
    models = model_order(predictions, metrics)
    return {
        "title": "bids_qnet group report",
        "subtitle": _subtitle(labels, predictions, settings),
        "version": __version__,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nav": NAV,
        "summary": _summary(labels, predictions, metrics, ci, settings, models),
        "warnings": read_warnings(output_dir),
        "warnings_file": files.warnings.name,
        "cohort": _cohort(participants, labels, predictions),
        "performance": _performance(files, metrics, models),
        "comparison": _comparison(files, ci, models),
        "statistics_note": statistics_note(settings, labels),
        "attribution": _attribution(files),
        "methods": methods_paragraph(settings, labels),
        "citations": CITATIONS,
        "about": _about(output_dir, settings),
    }


def model_order(*frames: pd.DataFrame | None) -> list[str]:
    """Return the models of the tables: registered ones in registry order, then any other."""
    found: list[str] = []
    for frame in frames:
        if frame is not None and "model" in frame:
            found += [str(m) for m in frame["model"].dropna().unique()]
    found = list(dict.fromkeys(found))
    known = [m for m in MODEL_NAMES if m in found]
    return known + [m for m in found if m not in known]


def model_label(model: str) -> str:
    """Return the name reports show for a model (its registry label, or its own name)."""
    return MODEL_LABELS.get(model, model)


def cohort_table(
    participants: pd.DataFrame, labels: dict, predictions: pd.DataFrame
) -> pd.DataFrame:
    """Summarise the cohort per class: participants, scans, slices, age and sex when present.

    Parameters
    ----------
    participants : DataFrame
        ``participants.tsv`` (``participant_id`` and the label column at least).
    labels : dict
        ``desc-cv_labels.json``: ``column`` and ordered ``classes``.
    predictions : DataFrame
        Out-of-fold predictions; only the participants in it (the ones cross-validated) count.

    Returns
    -------
    DataFrame
        One row per class and a ``total`` row.
    """
    classes = [str(c) for c in labels["classes"]]
    used = predictions[predictions["level"] == "image"]
    slices = used.groupby(["participant_id", "session"], dropna=False)["slice"].nunique()
    scans = slices.groupby(level=0).size()
    slices = slices.groupby(level=0).sum()
    table = participants.set_index("participant_id")
    label_of = predictions.drop_duplicates("participant_id").set_index("participant_id")["label"]
    rows = []
    for name, members in [
        *((c, label_of.index[label_of.astype(str) == str(k)]) for k, c in enumerate(classes)),
        ("total", label_of.index),
    ]:
        members = list(members)
        row = {
            "class": name,
            "participants": len(members),
            "scans": int(scans.reindex(members).fillna(0).sum()),
            "slices per scan": _mean_range(slices.reindex(members) / scans.reindex(members)),
        }
        if "age" in table.columns:
            row["age, mean (SD)"] = _mean_sd(pd.to_numeric(table["age"], errors="coerce"), members)
        if "sex" in table.columns:
            counts = table["sex"].reindex(members).astype(str).value_counts()
            row["sex"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        rows.append(row)
    return pd.DataFrame(rows)


def performance_table(metrics: pd.DataFrame, level: str, models: list[str] | None = None):
    """Return pooled out-of-fold metrics with the fold mean ± SD for one level.

    Parameters
    ----------
    metrics : DataFrame
        ``desc-cv_metrics.tsv``.
    level : str
        ``scan`` or ``image``.
    models : list of str, optional
        The order of the rows (default: :func:`model_order`); models without rows at this
        level are left out.

    Returns
    -------
    DataFrame
        One row per model: ``model`` (its report label), ``n`` and each metric as
        ``pooled (mean ± SD)``.
    """
    part = metrics[metrics["level"] == level]
    order = models if models is not None else model_order(metrics)
    rows = []
    for model in [m for m in order if m in set(part["model"].astype(str))]:
        group = part[part["model"].astype(str) == model]
        fold = group["fold"].astype(str)
        pooled = group[fold == "pooled"]
        if pooled.empty:
            continue
        pooled = pooled.iloc[0]
        mean = group[fold == "mean"].iloc[0] if (fold == "mean").any() else None
        sd = group[fold == "sd"].iloc[0] if (fold == "sd").any() else None
        row = {"model": model_label(model), "n": int(pooled["n"])}
        for metric in METRIC_COLUMNS:
            if metric in group:
                text = _fixed(pooled[metric], 3)
                if mean is not None and sd is not None:
                    text += f" ({_fixed(mean[metric], 3)} ± {_fixed(sd[metric], 3)})"
                row[metric] = text
        rows.append(row)
    return pd.DataFrame(rows)


def delong_display(delong: pd.DataFrame) -> pd.DataFrame:
    """Return the comparison table as shown: model names, CI in one column, p in 3 digits."""
    frame = delong.copy()
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {
            "Level": record.get("level"),
            "Comparison": f"{model_label(record['model1'])} vs {model_label(record['model2'])}",
            "AUC 1": _fixed(record.get("auc1"), 3),
            "AUC 2": _fixed(record.get("auc2"), 3),
            "Difference (95% CI)": f"{_fixed(record.get('difference'), 3)} "
            f"[{_fixed(record.get('ci_low'), 3)}, {_fixed(record.get('ci_high'), 3)}]",
            "z": _fixed(record.get("z"), 2),
            "p": _p_value(record.get("p")),
            "p (Holm)": _p_value(record.get("p_holm")),
            "Significance": record.get("stars") if isinstance(record.get("stars"), str) else "",
        }
        if "n_participants" in record:
            row["Participants"] = record["n_participants"]
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(labels, predictions, metrics, ci, settings, models) -> dict | None:
    if labels is None or predictions is None:
        return None
    facts = [
        (
            "Classes",
            " vs ".join(map(str, labels["classes"]))
            + (f" (positive: {labels['positive']})" if labels.get("positive") else ""),
        ),
        ("Participants", predictions["participant_id"].nunique()),
        (
            "Cross-validation",
            f"{settings.get('folds')} folds by participant"
            + (
                f", {settings.get('cv_repeats')} repeats"
                if (settings.get("cv_repeats") or 1) > 1
                else ""
            ),
        ),
        ("Models", ", ".join(model_label(m) for m in models)),
    ]
    best = None
    if metrics is not None:
        scan = metrics[(metrics["level"] == "scan") & (metrics["fold"].astype(str) == "pooled")]
        scan = scan.dropna(subset=["auc"]) if "auc" in scan else scan.iloc[0:0]
        if not scan.empty:
            top = scan.sort_values("auc", ascending=False).iloc[0]
            best = {"model": model_label(str(top["model"])), "auc": _fixed(top["auc"], 3)}
            if ci is not None and len(ci):
                match = ci[(ci["level"] == "scan") & (ci["model"].astype(str) == str(top["model"]))]
                if not match.empty:
                    best["ci"] = (
                        f"{_fixed(match.iloc[0]['ci_low'], 3)} to "
                        f"{_fixed(match.iloc[0]['ci_high'], 3)}"
                    )
    return {"facts": facts, "best": best}


def _cohort(participants, labels, predictions) -> dict:
    if labels is None or predictions is None or participants is None:
        return {"missing": "the cross-validated predictions or participants.tsv"}
    table = cohort_table(participants, labels, predictions)
    table = table.rename(columns=lambda c: c[:1].upper() + c[1:])
    return {"column": labels["column"], "positive": labels.get("positive"), "table": _rows(table)}


def _performance(files: GroupFiles, metrics, models) -> dict:
    if metrics is None:
        return {"missing": files.metrics.name, "levels": [], "figures": []}
    levels = []
    present = {
        lvl: set(metrics.loc[metrics["level"] == lvl, "model"].astype(str))
        for lvl in ("scan", "image")
    }
    for level in ("scan", "image"):
        table = performance_table(metrics, level, models)
        if table.empty:
            continue
        table = table.rename(columns={"model": "Model", "n": "N", **METRIC_LABELS})
        rows = _rows(table)
        rows["numeric"] = [c for c in rows["columns"] if c != "Model"]
        levels.append({"heading": LEVEL_TEXT[level], "table": rows})
    scan_only = sorted(present["scan"] - present["image"], key=models.index)
    figures = [_figure(files.roc_figure(level)) for level in ("scan", "image")]
    return {
        "levels": levels,
        "scan_only": [model_label(m) for m in scan_only],
        "figures": figures,
    }


def _comparison(files: GroupFiles, ci, models) -> dict:
    delong = _read_tsv(files.comparisons)
    sidecar = _read_json(sidecar_path(files.comparisons)) or {}
    out: dict[str, Any] = {"intervals": None, "tests": None, "figures": []}
    if ci is None and delong is None:
        out["missing"] = f"{files.comparisons.name} and {files.bootstrap_ci.name} (two classes)"
    if ci is not None and len(ci):
        order = {m: i for i, m in enumerate(models)}
        ci = ci.assign(_o=ci["model"].astype(str).map(order)).sort_values(["level", "_o"])
        rows = [
            {
                "Level": r["level"],
                "Model": model_label(str(r["model"])),
                "AUC": _fixed(r["auc"], 3),
                "95% interval": f"{_fixed(r['ci_low'], 3)} to {_fixed(r['ci_high'], 3)}",
                "Replicates": r.get("n_replicates"),
            }
            for r in ci.to_dict(orient="records")
        ]
        out["intervals"] = {"columns": list(rows[0]), "rows": rows}
    if delong is not None and len(delong):
        out["tests"] = _rows(delong_display(delong))
        methods = sidecar.get("Methods") or {}
        out["methods"] = [
            f"{level}: {info.get('Method')} ({info.get('Reason')})"
            if isinstance(info, dict)
            else f"{level}: {info}"
            for level, info in (methods.items() if isinstance(methods, dict) else [])
        ]
    out["figures"] = [
        _figure(files.auc_boxplot(level))
        for level in ("scan", "image")
        if files.auc_boxplot(level).is_file()
    ]
    return out


def _attribution(files: GroupFiles) -> dict:
    regions = _read_tsv(files.attribution_regions)
    sidecar = _read_json(sidecar_path(files.attribution_regions)) or {}
    figures = [files.ig_overlay, files.gradcam_overlay, files.ig_regions_barplot]
    out: dict[str, Any] = {"figures": [_figure(f) for f in figures if f.is_file()]}
    out["cautions"] = list((sidecar.get("Reliability") or {}).get("Warnings") or [])
    if regions is None and not out["figures"]:
        out["missing"] = "attribution outputs (run without --attribution none)"
    if regions is not None and len(regions):
        out["description"] = plain_text(sidecar.get("Ranking") or _text(sidecar.get("Description")))
        out["regions"] = region_display(regions.head(REGION_ROWS))
        out["total"] = len(regions)
        out["shown"] = min(len(regions), REGION_ROWS)
        out["file"] = files.attribution_regions.name
    return out


def region_display(regions: pd.DataFrame) -> dict:
    """Return the region table as shown: words for names, channel shares in %, fixed decimals.

    The relevance contrast is a small number: it is shown as a multiple of one power of ten
    named in its heading, so that no cell needs an exponent, and every number column keeps
    one number of decimals so that digits line up.
    """
    shown = pd.DataFrame(index=regions.index)
    numeric = []
    if "rank" in regions:
        shown["Rank"] = regions["rank"].map(lambda v: format_number(v))
        numeric.append("Rank")
    if "region" in regions:
        shown["Region"] = regions["region"].astype(str).str.replace("_", " ")
    if "volume_mm3" in regions:
        shown["Volume (mm³)"] = regions["volume_mm3"].map(lambda v: format_number(round(v)))
        numeric.append("Volume (mm³)")
    if "density_contrast" in regions:
        values = regions["density_contrast"].astype(float)
        power = _power_of_ten(values)
        heading = REGION_COLUMNS["density_contrast"]
        if power:
            heading += f" (×10{str(power).translate(SUPERSCRIPTS)})"
        shown[heading] = (values / 10.0**power).map(lambda v: _fixed(v, 2))
        numeric.append(heading)
    for column in [c for c in regions.columns if c.startswith("share_")]:
        heading = f"{column.removeprefix('share_')} share (%)"
        shown[heading] = (100 * regions[column].astype(float)).map(lambda v: _fixed(v, 1))
        numeric.append(heading)
    if "small" in regions:
        shown["Under 100 mm³"] = regions["small"].map(_yes_no)
    table = _rows(shown)
    table["numeric"] = numeric
    return table


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _fixed(value, decimals: int) -> str:
    """Return a number with a fixed number of decimals (n/a when missing, never ``-0.000``)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(value):
        return "n/a"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _about(output_dir: Path, settings: dict) -> dict:
    participant = participant_level_settings(output_dir)
    rows = []
    for key in dict.fromkeys(PARTICIPANT_SETTINGS + GROUP_SETTINGS):
        rows.append(
            {
                "Setting": SETTING_LABELS.get(key, label(key)),
                "Participant level": participant.get(key, "")
                if key in PARTICIPANT_SETTINGS
                else "",
                "Group level": _value(settings.get(key)) if key in GROUP_SETTINGS else "",
            }
        )
        if key == "device" and settings.get("device_used"):
            rows[-1]["Group level"] += f" (used: {settings['device_used']})"
    software = settings.get("software") or {}
    return {
        "settings": {"columns": ["Setting", "Participant level", "Group level"], "rows": rows},
        "participants_counted": participant.get("_counted", 0),
        "facts": [
            ("Group run", settings.get("run_id")),
            ("Output folder", str(output_dir)),
            ("Configuration file", settings.get("config_file") or "none"),
        ],
        "software": [{"Software": k, "Version": v} for k, v in software.items()],
    }


def participant_level_settings(output_dir: Path) -> dict[str, Any]:
    """Return what the participant level used: each setting's value(s) over participants.

    Reads the latest settings every participant (and session) saved; a setting that differs
    between participants reads ``fast (3), precise (1)``.
    """
    found: dict[str, Counter] = {}
    counted = 0
    for folder in sorted(Path(output_dir).glob("sub-*")):
        if not folder.is_dir():
            continue
        saved = saved_participant_settings(folder, None)
        by_session: dict[str, Path] = {}
        for path in saved:  # oldest first: the last per file name is the latest run
            by_session[path.name] = path
        for path in by_session.values():
            try:
                values = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            counted += 1
            for key in PARTICIPANT_SETTINGS:
                found.setdefault(key, Counter())[_value(values.get(key))] += 1
    summary: dict[str, Any] = {"_counted": counted}
    for key, counts in found.items():
        if len(counts) == 1:
            summary[key] = next(iter(counts))
        else:
            summary[key] = ", ".join(f"{v} ({n})" for v, n in counts.most_common())
    return summary


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, bool) or value is None:
        return format_number(value)
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _figure(path: Path) -> dict:
    heading, caption = FIGURE_TEXT.get(path.name, (path.stem, ""))
    return {
        "heading": heading,
        "caption": caption,
        "uri": figure_uri(path),
        "path": f"{path.parent.name}/{path.name}",
    }


def _rows(frame: pd.DataFrame) -> dict:
    records = frame.to_dict(orient="records")
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "iuf" and frame[c].dtype != bool]
    return {"columns": list(frame.columns), "rows": records, "numeric": numeric}


def _power_of_ten(values: pd.Series) -> int:
    finite = values[np.isfinite(values)].abs()
    if finite.empty or finite.max() == 0:
        return 0
    exponent = int(np.floor(np.log10(finite.max())))
    return exponent if exponent <= -3 or exponent >= 4 else 0


def _yes_no(value) -> str:
    text = str(value).strip().lower()
    return {"true": "yes", "false": "no", "1": "yes", "0": "no"}.get(text, str(value))


def _p_value(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    value = float(value)
    return "< 0.0001" if value < 1e-4 else format_number(value, 2)


def _mean_sd(values: pd.Series, members: list[str]) -> str:
    part = values.reindex(members).dropna()
    if len(part) < 2:
        return "n/a"
    return f"{_fixed(part.mean(), 1)} ({_fixed(part.std(ddof=1), 1)})"


def _mean_range(values: pd.Series) -> str:
    part = values.dropna()
    if part.empty:
        return "n/a"
    return f"{_fixed(part.mean(), 1)} ({part.min():.0f}-{part.max():.0f})"


def _subtitle(labels: dict | None, predictions: pd.DataFrame | None, settings: dict) -> str:
    if labels is None or predictions is None:
        return f"bids_qnet {__version__}"
    n = predictions["participant_id"].nunique()
    classes = " vs ".join(str(c) for c in labels["classes"])
    folds = settings.get("folds")
    how = f"{folds}-fold cross-validation" if folds else "cross-validation"
    return f"{classes}: {n} participants, out-of-fold results of {how}; bids_qnet {__version__}"


def plain_text(text: str | None) -> str | None:
    """Return sidecar text without markup: ``**bold**`` and Sphinx roles become plain words."""
    if text is None:
        return None
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", str(text))
    text = re.sub(r":\w+:`[^`]+`:\s*", "", text)  # "(:mod:`x.y`: each scan" -> "(each scan"
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"``?([^`]+)``?", r"\1", text)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) or "" for v in value)
    return str(value)


def _read_tsv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
