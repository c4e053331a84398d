"""The participant HTML report: one self-contained page over what the participant level wrote.

The page is the ``participant.html`` template filled from a summary (the dict the sink writes
as ``sub-<label>/figures/<stem>_report.json``, so ``--reports-only`` renders it again) and the
figure files, embedded as data URIs. Known summary keys become sections in words a reader
knows (quality checks with thresholds and results, input images, processing, methods,
software, errors); any other key still renders, under "Other details". Keys are matched
ignoring case, ``_``, ``-`` and spaces.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bids_qnet import __version__
from bids_qnet.outputs.atomic import write_text
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.reports.html import figure_uri, render
from bids_qnet.reports.labels import label, records_table, units_of

logger = logging.getLogger(__name__)

# Keys shown in "About" rather than in the summary (also read from a nested "About" dict).
ABOUT_KEYS = ("commandline", "settingspath", "settingsfile", "runid", "started", "finished")
# Keys naming the version that wrote the derivatives (the first present wins).
VERSION_KEYS = ("bidsqnetversion", "version")
# Keys the page places itself (the rest go to "Other details").
PLACED = (
    "warnings",
    "qualitychecks",
    "inputs",
    "coregistration",
    "normalisation",
    "crop",
    "embedding",
    "steptimings(s)",
    "settings",
    "methods",
    "software",
    "errors",
    "about",
    "subject",
    "session",
    "figures",
)
NAV = (
    ("summary", "Summary"),
    ("quality", "Quality"),
    ("figures", "Figures"),
    ("inputs", "Inputs"),
    ("processing", "Processing"),
    ("methods", "Methods"),
    ("errors", "Errors"),
    ("about", "About"),
)

# Figure heading and caption by a prefix of the file's ``desc-`` entity or of its suffix
# (``..._desc-registration_qc.png`` -> "reg", ``..._desc-bgcrop_slices.png`` -> "slice").
FIGURE_CAPTIONS = {
    "reg": (
        "Registration to the template",
        "Each channel resampled onto the template grid (grey, windowed to its 1st-99th percentile "
        "inside the brain; the window is printed beside the row), under the template's brain "
        "outline (red) and white-matter boundary (cyan). The dashed yellow rectangle is the "
        "basal-ganglia crop box. The outlines should follow the edges of the brain, the "
        "ventricles and the white matter in every channel; the box should enclose caudate, "
        "putamen and pallidum.",
    ),
    "slice": (
        "Slice stack",
        "The axial slices written for the network, one row per channel (windowed to [0, 1]) "
        "and, with three channels, the RGB composite the ResNet18 receives. Slice indices count "
        "from the most inferior slice; anterior is at the top of each panel.",
    ),
    "montage": ("Slice stack", "The axial slices written for the network, one row per channel."),
}


def write_participant_report(
    output_dir: Path,
    subject: str,
    session: str | None,
    summary: dict,
    figures: list[Path],
    out_path: Path,
) -> Path:
    """Write the participant's HTML report.

    Parameters
    ----------
    output_dir : Path
        The derivative dataset root; relative ``figures`` are taken relative to it.
    subject : str
        Participant label, with or without ``sub-``.
    session : str or None
        Session label, with or without ``ses-``; None when the dataset has no sessions.
    summary : dict
        What the run did (the sink's summary). Known keys (``Warnings``, ``QualityChecks``,
        ``Inputs``, ``Co-registration``, ``Normalisation``, ``Crop``, ``Embedding``,
        ``Step timings (s)``, ``Settings``, ``Methods``, ``Software``, ``Errors``;
        ``CommandLine``, ``SettingsPath``, ``RunID``, or a nested ``About`` dict, go to "About";
        ``BidsQnetVersion`` or ``Version`` names the version that wrote the derivatives) get
        their own sections; any other key renders under "Other details".
    figures : list of Path
        Figure files (absolute or relative to ``output_dir``), embedded in this order and
        captioned by their ``desc-`` entity (see ``FIGURE_CAPTIONS``). A missing file is
        flagged in the page.
    out_path : Path
        The HTML file, normally ``<output_dir>/sub-<label>.html``.

    Returns
    -------
    Path
        ``out_path``, written atomically.
    """
    output_dir, out_path = Path(output_dir), Path(out_path)
    subject = _strip(subject, "sub-")
    session = _strip(session, "ses-") if session else None
    context = participant_context(output_dir, subject, session, summary, figures, out_path)
    write_text(out_path, render("participant.html", **context))
    logger.debug("wrote report %s", out_path)
    return out_path


def participant_context(
    output_dir: Path,
    subject: str,
    session: str | None,
    summary: dict,
    figures: list[Path],
    out_path: Path,
) -> dict[str, Any]:
    """Return what ``participant.html`` shows (see :func:`write_participant_report`)."""
    parts = {_norm(k): v for k, v in dict(summary).items()}
    names = {_norm(k): k for k in summary}
    about_dict = parts.get("about")
    about_dict = dict(about_dict) if isinstance(about_dict, dict) else {}
    about_dict.update({names[k]: parts[k] for k in ABOUT_KEYS if k in parts})
    version = next((str(parts[k]) for k in VERSION_KEYS if k in parts), __version__)
    settings = parts.get("settings") if isinstance(parts.get("settings"), dict) else {}
    label_text = f"sub-{subject}" + (f", ses-{session}" if session else "")
    group = GroupFiles(output_dir).report
    placed = set(PLACED) | set(ABOUT_KEYS) | set(VERSION_KEYS)
    other = [(label(names[k]), v) for k, v in parts.items() if k not in placed]
    errors = _as_list(parts.get("errors"))
    command = _pop_command(about_dict)
    context = {
        "label": label_text,
        "version": version,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "run_id": _first(about_dict, "runid"),
        "group_link": Path(os.path.relpath(group, out_path.parent)).as_posix(),
        "group_exists": group.is_file(),
        "warnings": _as_list(parts.get("warnings")),
        "errors": errors,
        "overview": _overview(subject, session, parts, settings),
        "quality": _guard(_quality_rows, parts.get("qualitychecks")),
        "figures": [_figure(output_dir, f) for f in figures],
        "inputs": _guard(_inputs_table, parts.get("inputs")),
        "processing": _processing(
            parts, {**settings, "_has_checks": bool(parts.get("qualitychecks"))}
        ),
        "other": other,
        "methods": parts.get("methods"),
        "software": [
            {"Software": k, "Version": v} for k, v in (parts.get("software") or {}).items()
        ],
        "command": command,
        "about": _about_rows(about_dict, output_dir, version),
    }
    optional = {"quality", "inputs", "processing", "methods"}  # sections drawn only with content
    context["nav"] = [n for n in NAV if n[0] not in optional or context[n[0]]]
    return context


def _overview(subject, session, parts, settings) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("Participant", f"sub-{subject}")]
    if session:
        rows.append(("Session", f"ses-{session}"))
    if settings.get("channels"):
        rows.append(("Channels", ", ".join(settings["channels"])))
    norm = parts.get("normalisation") if isinstance(parts.get("normalisation"), dict) else {}
    if norm.get("Space"):
        grid = str(norm["Space"])
        if settings.get("template_resolution"):
            grid += f", {float(settings['template_resolution']):g} mm isotropic grid"
        rows.append(("Template space", grid))
    if norm.get("Profile"):
        rows.append(("Registration profile", norm["Profile"]))
    crop = parts.get("crop") if isinstance(parts.get("crop"), dict) else {}
    shape = crop.get("Shape")
    if isinstance(shape, list) and len(shape) == 4:
        rows.append(
            (
                "Slices for the network",
                f"{shape[0]} axial slices of {shape[2]} x {shape[3]} voxels, {shape[1]} channel(s)",
            )
        )
    return rows if len(rows) > 1 else []


def _quality_rows(checks) -> list[dict]:
    rows = []
    for row in checks:
        rows.append(
            {
                "check": row["check"],
                "value": row["value"],
                "unit": row.get("unit", ""),
                "threshold": row.get("threshold", "none"),
                "result": row.get("result", "info"),
                "description": row.get("description", ""),
                "detail": row.get("detail", ""),
            }
        )
    return rows


def _inputs_table(inputs: dict) -> dict:
    records = [{"channel": channel, **info} for channel, info in inputs.items()]
    return records_table(records)


def _processing(parts: dict, settings: dict) -> list[dict]:
    blocks = []
    builders = (
        ("coregistration", "Co-registration of the channels", _coregistration),
        ("normalisation", "Registration to the template", _normalisation),
        ("crop", "Crop and slices", _crop),
        ("embedding", "Slice embedding", _embedding),
        ("steptimings(s)", "Time per step", _timings),
    )
    for key, heading, build in builders:
        value = parts.get(key)
        if value in (None, {}, []):
            continue
        try:
            block = build(value, settings)
        except (KeyError, TypeError, ValueError, AttributeError):
            block = {"facts": [(label(k), v) for k, v in _items(value)]}
        blocks.append({"heading": heading, **block})
    windows = parts.get("intensitywindows")
    if isinstance(windows, dict) and not isinstance(parts.get("crop"), dict):
        blocks.append({"heading": "Intensity windows", "facts": list(windows.items())})
    return blocks


def _coregistration(info: dict, settings: dict) -> dict:
    reference = settings.get("reference_channel") or "the reference channel"
    via = info.get("CoregisteredVia") or {}
    grids = [list(g) for g in info.get("Grids") or []]
    if not via:
        channels = ", ".join(c for g in grids for c in g) or "every channel"
        return {
            "text": f"Not needed: {channels} share one voxel grid with the reference image "
            f"({reference}), so no transform between channels was estimated."
        }
    transform = str(info.get("CoregistrationTransform", "rigid")).lower()
    sentences = []
    for group in grids:
        if reference in group:
            continue
        moving = via.get(group[0], group[0])
        shared = f"{', '.join(group)} share a grid; " if len(group) > 1 else ""
        sentences.append(
            f"{shared}{moving} was registered to {reference} with a {transform} transform "
            f"(mutual information), applied to {', '.join(group)}."
        )
    return {"text": " ".join(sentences)}


def _normalisation(info: dict, settings: dict) -> dict:
    transform = info.get("TransformType")
    described = {"SyN": "affine, then symmetric diffeomorphic (SyN)"}.get(transform, transform)
    facts = [
        ("Registration profile", info.get("Profile")),
        ("Template", info.get("Space")),
        ("Transform", described),
    ]
    if settings.get("template_resolution"):
        facts.append(("Output grid", f"{float(settings['template_resolution']):g} mm isotropic"))
    facts.append(
        (
            "Transforms written",
            "participant to template and back"
            if settings.get("inverse_transforms", True)
            else "participant to template (--no-inverse-transforms)",
        )
    )
    facts += _rest(info, {"Profile", "Space", "TransformType", "Quality"})
    if "Quality" in info and not settings.get("_has_checks"):
        facts += [(label(k), v) for k, v in (info.get("Quality") or {}).items()]
    return {"facts": [(k, v) for k, v in facts if v is not None]}


def _rest(info: dict, used: set[str]) -> list[tuple[str, Any]]:
    """Return the keys a section's words do not cover, labelled (nothing is dropped)."""
    return [(label(k), v) for k, v in info.items() if k not in used]


def _crop(crop: dict, settings: dict) -> dict:
    facts: list[tuple[str, Any]] = []
    mode = crop.get("Crop")
    if mode is not None:
        facts.append(
            ("Crop", "box around basal-ganglia atlas regions" if mode == "bg" else "whole brain")
        )
    if crop.get("Atlas"):
        facts.append(("Atlas", crop["Atlas"]))
    regions = crop.get("Regions")
    if regions:
        facts.append(("Regions", ", ".join(str(r).replace("_", " ") for r in _as_list(regions))))
    if settings.get("crop_margin_mm") is not None and mode == "bg":
        facts.append(("Margin", f"{float(settings['crop_margin_mm']):g} mm"))
    box = crop.get("Box") or {}
    if box.get("lower") is not None and box.get("upper") is not None:
        facts.append(("Box (voxels)", f"{_triple(box['lower'])} to {_triple(box['upper'])}"))
    box_mm = crop.get("BoxMillimetres") or {}
    if box_mm.get("lower") is not None and box_mm.get("upper") is not None:
        facts.append(
            (
                "Box (mm, template space)",
                f"{_triple(box_mm['lower'])} to {_triple(box_mm['upper'])}",
            )
        )
    shape = crop.get("Shape")
    if isinstance(shape, list) and len(shape) == 4:
        facts.append(
            (
                "Slice stack",
                f"{shape[0]} slices x {shape[1]} channels x {shape[2]} x {shape[3]} voxels",
            )
        )
    block: dict[str, Any] = {"facts": facts}
    windows = crop.get("IntensityWindows")
    if isinstance(windows, dict) and windows:
        rows = []
        for channel, window in windows.items():
            if not isinstance(window, dict):
                rows.append({"Channel": channel, "Window": window})
                continue
            window = {_norm(k): v for k, v in window.items()}
            method = window.get("method")
            params = window.get("parameters") or []
            how = (
                "fixed"
                if method == "fixed"
                else f"{params[0]:g}th to {params[1]:g}th percentile in the brain"
                if method == "percentile" and len(params) == 2
                else method
            )
            rows.append(
                {
                    "Channel": channel,
                    "Window": how,
                    "Low": window.get("low"),
                    "High": window.get("high"),
                    "Units": units_of(channel),
                }
            )
        block["table"] = records_table(rows, raw_columns=True)
        block["text"] = (
            "Each channel was clipped to its window and scaled to [0, 1] before stacking; "
            "quantitative maps keep fixed windows so that their values stay comparable across "
            "participants."
        )
    return block


def _embedding(info: dict, settings: dict) -> dict:
    weights = info.get("Weights")
    if weights == "random":
        weights = f"random initialisation (seed {settings.get('random_seed', 'n/a')})"
    facts = [("Weights", weights)]
    checksum = info.get("WeightsSHA256")
    if checksum and checksum != "n/a":
        facts.append(("Weights checksum (SHA-256)", checksum))
    facts.append(("Device", info.get("Device")))
    shape = info.get("Shape")
    if isinstance(shape, list) and len(shape) == 2:
        facts.append(("Embeddings", f"{shape[0]} slices x {shape[1]} features"))
    if settings.get("image_size"):
        facts.append(
            ("Network input", f"{settings['image_size']} x {settings['image_size']} pixels")
        )
    return {"facts": [(k, v) for k, v in facts if v is not None]}


def _timings(timings: dict, settings: dict) -> dict:
    rows = [{"Step": label(k), "Seconds": v} for k, v in timings.items()]
    total = sum(v for v in timings.values() if isinstance(v, int | float))
    rows.append({"Step": "Total", "Seconds": total})
    return {"table": records_table(rows, raw_columns=True)}


def _figure(output_dir: Path, figure: Path) -> dict:
    path = Path(figure) if Path(figure).is_absolute() else output_dir / figure
    heading, caption = _caption(path.name)
    try:
        relative = path.relative_to(output_dir).as_posix()
    except ValueError:
        relative = path.name
    uri = figure_uri(path)
    if uri is None:
        logger.warning("report figure %s is missing", path)
    return {"heading": heading, "caption": caption, "uri": uri, "path": relative}


def _about_rows(about: dict, output_dir: Path, version: str) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("bids_qnet version", version)]
    names = {"runid": "Run", "settingspath": "Settings file", "settingsfile": "Settings file"}
    for key, value in about.items():
        rows.append((names.get(_norm(key), label(key)), value))
    rows.append(("Output folder", str(output_dir)))
    return rows


def _pop_command(about: dict) -> str | None:
    keys = [k for k in about if _norm(k) == "commandline"]
    if not keys:
        return None
    command = about.pop(keys[0])
    return " ".join(map(str, command)) if isinstance(command, list | tuple) else str(command)


def _first(about: dict, key: str) -> Any:
    return next((v for k, v in about.items() if _norm(k) == key), None)


def _guard(build, value):
    if not value:
        return None
    try:
        return build(value)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _caption(name: str) -> tuple[str, str]:
    """Heading and caption for a figure file, from its ``desc-`` entity or its suffix."""
    stem = name.split(".")[0]
    match = re.search(r"desc-([A-Za-z0-9]+)", stem)
    tokens = [match.group(1).lower()] if match else []
    tokens.append(stem.rsplit("_", 1)[-1].lower())
    for token in tokens:
        for prefix, (heading, caption) in FIGURE_CAPTIONS.items():
            if token.startswith(prefix):
                return heading, caption
    return label(match.group(1) if match else stem), ""


def _items(value) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else [("Value", value)]


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _triple(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _norm(key: Any) -> str:
    return re.sub(r"[\s_-]+", "", str(key)).lower()


def _strip(label_text: str, prefix: str) -> str:
    label_text = str(label_text)
    return label_text[len(prefix) :] if label_text.startswith(prefix) else label_text
