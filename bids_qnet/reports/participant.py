"""The participant HTML report: a self-contained page over derivatives already written.

The page lists the run summary (a dict the workflow fills from the JSON sidecars), the figures in
``sub-<label>/figures/`` (referenced by relative path) and an "About" section. Any summary key
renders, nested dicts as nested tables and lists of records as tables, so new keys need no code.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from numbers import Integral, Real
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bids_qnet import __version__
from bids_qnet.reports.html import CSS as _CSS
from bids_qnet.reports.html import escape as _e
from bids_qnet.reports.html import write_text_atomic as _atomic_write_text

logger = logging.getLogger(__name__)

# Summary keys are matched ignoring case, "_", "-" and spaces ("CommandLine" == "command_line").
# Keys shown in "About" rather than in the summary (also read from a nested "About" dict).
ABOUT_KEYS = ("commandline", "settingspath", "settingsfile", "runid", "started", "finished")
# Keys naming the version that wrote the derivatives (the first present wins).
VERSION_KEYS = ("bidsqnetversion", "version")
WARNINGS_KEY = "warnings"

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
        What the run did, filled by the workflow from the JSON sidecars. Top-level scalars form
        an overview table; dicts and lists get a section each. Keys are matched ignoring case,
        ``_``, ``-`` and spaces: ``Warnings`` (str or list) are shown at the top;
        ``CommandLine``, ``SettingsPath``, ``RunID``, ``Started``, ``Finished`` (or a nested
        ``About`` dict) go to the "About" section; ``BidsQnetVersion`` or ``Version`` names the
        version that wrote the derivatives (this package's version otherwise).
    figures : list of Path
        Figure files (absolute or relative to ``output_dir``); shown in this order, captioned by
        their ``desc-`` entity (see ``FIGURE_CAPTIONS``). A missing file is flagged in the page.
    out_path : Path
        The HTML file, normally ``<output_dir>/sub-<label>.html``.

    Returns
    -------
    Path
        ``out_path``, written atomically (temporary file in the same folder, then renamed).
    """
    output_dir, out_path = Path(output_dir), Path(out_path)
    subject = _strip(subject, "sub-")
    session = _strip(session, "ses-") if session else None
    summary = dict(summary)
    keys = {_norm(k): k for k in summary}
    warnings = summary.pop(keys[WARNINGS_KEY], None) if WARNINGS_KEY in keys else None
    about = summary.pop(keys["about"], None) if "about" in keys else None
    about = dict(about) if isinstance(about, dict) else ({"about": about} if about else {})
    about.update({keys[k]: summary.pop(keys[k]) for k in ABOUT_KEYS if k in keys})
    version = __version__
    for key in VERSION_KEYS:
        if key in keys:
            version = str(summary.pop(keys[key]))
            break

    label = f"sub-{subject}" + (f", ses-{session}" if session else "")
    single = isinstance(warnings, str | dict) or _is_scalar(warnings)
    warning_list = [warnings] if single and warnings else list(warnings or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bids_qnet: {_e(label)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>bids_qnet report: {_e(label)}</h1>",
        f"<p>bids_qnet version {_e(version)}</p></header>",
        '<nav><a href="#summary">Summary</a><a href="#figures">Figures</a>'
        + ('<a href="#warnings">Warnings</a>' if warning_list else "")
        + '<a href="#about">About</a></nav><main>',
    ]
    if warning_list:
        items = "".join(f"<li>{_render(w)}</li>" for w in warning_list)
        parts.append(f'<section id="warnings" class="warnings"><h2>Warnings</h2><ul>{items}</ul>')
        parts.append("</section>")
    parts.append(_summary_section(subject, session, summary))
    parts.append(_figures_section(output_dir, figures, out_path))
    parts.append(_about_section(about, output_dir, version))
    parts.append("</main><footer>Generated by bids_qnet</footer></body></html>\n")
    _atomic_write_text(out_path, "\n".join(parts))
    logger.info("wrote report %s", out_path)
    return out_path


def _summary_section(subject: str, session: str | None, summary: dict) -> str:
    """Overview table of scalars, then one subsection per dict/list entry."""
    overview = {"subject": f"sub-{subject}"}
    if session:
        overview["session"] = f"ses-{session}"
    overview.update({k: v for k, v in summary.items() if not isinstance(v, dict | list | tuple)})
    parts = ['<section id="summary"><h2>Summary</h2><div class="grid">']
    parts.append(f'<div class="card"><h3>Overview</h3>{_render(overview)}</div>')
    for key, value in summary.items():
        if isinstance(value, dict | list | tuple):
            body = _render(value)
            wide = " wide" if body.startswith("<table><thead>") else ""  # records: full width
            parts.append(
                f'<div class="card{wide}" id="{_anchor(key)}"><h3>{_e(_humanise(key))}</h3>'
                f"{body}</div>"
            )
    parts.append("</div></section>")
    return "\n".join(parts)


def _figures_section(output_dir: Path, figures: list[Path], out_path: Path) -> str:
    """One captioned figure per file, linked by its path relative to the report."""
    parts = ['<section id="figures"><h2>Figures</h2>']
    if not figures:
        parts.append('<p class="none">No figures were written.</p>')
    for figure in figures:
        path = Path(figure) if Path(figure).is_absolute() else output_dir / figure
        relative = Path(os.path.relpath(path, out_path.parent)).as_posix()
        heading, caption = _caption(path.name)
        if not path.is_file():
            logger.warning("report figure %s is missing", path)
            parts.append(
                f'<figure class="missing"><h3>{_e(heading)}</h3>'
                f"<figcaption>Figure missing: <code>{_e(relative)}</code></figcaption></figure>"
            )
            continue
        parts.append(
            f'<figure><h3>{_e(heading)}</h3><a href="{_e(quote(relative))}">'
            f'<img src="{_e(quote(relative))}" alt="{_e(heading)}" loading="lazy"></a>'
            f"<figcaption>{_e(caption)} <code>{_e(relative)}</code></figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _about_section(about: dict, output_dir: Path, version: str) -> str:
    """Command line, settings, run id and where and when the report was made."""
    rows = {"bids_qnet version": version, "output directory": str(output_dir)}
    command_keys = [k for k in about if _norm(k) == "commandline"]
    command = about.pop(command_keys[0]) if command_keys else None
    rows.update(about)
    rows["report generated"] = datetime.now(UTC).isoformat(timespec="seconds")
    parts = ['<section id="about"><h2>About</h2>']
    if command is not None:
        text = " ".join(map(str, command)) if isinstance(command, list | tuple) else str(command)
        parts.append(f"<h3>Command line</h3><pre>{_e(text)}</pre>")
    parts.append(_render(rows))
    parts.append("</section>")
    return "\n".join(parts)


def _render(value: Any) -> str:
    """HTML for any JSON-like value; every string that reaches the page is escaped."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _render(value.tolist())
    if isinstance(value, dict):
        if not value:
            return '<span class="none">none</span>'
        if len(value) > 1 and all(isinstance(v, dict) and v for v in value.values()):
            return _records_table([{"": k, **v} for k, v in value.items()])
        rows = "".join(
            f"<tr><th>{_e(_humanise(str(k)))}</th><td>{_render(v)}</td></tr>"
            for k, v in value.items()
        )
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if not items:
            return '<span class="none">none</span>'
        if all(isinstance(i, dict) for i in items):
            return _records_table(items)
        if all(_is_scalar(i) for i in items) and len(items) <= 12:
            return _e(", ".join(_format_scalar(i) for i in items))
        return "<ul>" + "".join(f"<li>{_render(i)}</li>" for i in items) + "</ul>"
    return _e(_format_scalar(value))


def _records_table(records: list[dict]) -> str:
    """Render dicts as one table, columns the union of their keys in first-seen order."""
    columns = list(dict.fromkeys(k for record in records for k in record))
    head = "".join(f"<th>{_e(_humanise(str(c)))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_render(r.get(c))}</td>" for c in columns) + "</tr>"
        for r in records
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bytes | bool | Real | Path)


def _format_scalar(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        return f"{number:.4g}" if abs(number) < 1e6 else f"{number:.6g}"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


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
    return _humanise(match.group(1) if match else stem), ""


def _humanise(key: str) -> str:
    """``snake_case`` keys become words; other keys (sidecar ``CamelCase``, names) stay as is."""
    if not re.fullmatch(r"[a-z0-9_]+", key):
        return key
    text = key.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _norm(key: Any) -> str:
    return re.sub(r"[\s_-]+", "", str(key)).lower()


def _anchor(key: str) -> str:
    return "s-" + re.sub(r"[^A-Za-z0-9_-]+", "-", str(key))


def _strip(label: str, prefix: str) -> str:
    label = str(label)
    return label[len(prefix) :] if label.startswith(prefix) else label
