"""The group level's list of warnings: what a reader of the results should know.

One TSV at the output root (``desc-group_warnings.tsv``, :data:`COLUMNS`), emptied when a group
run starts and filled during it; the group report's "Warnings" section is drawn from it. Any
step of the group level adds to it with :func:`record_warning`::

    from bids_qnet.outputs.warnings import record_warning

    record_warning(
        settings.output_dir,
        source="attribution",
        message="Integrated Gradients did not converge for 3 of 40 scans (delta > 5 %)",
    )

which also logs the message (at WARNING, or INFO for ``severity="info"``). A row repeated in
the same run is kept once. Readers use :func:`read_warnings`.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from bids_qnet.outputs.atomic import write_text
from bids_qnet.outputs.names import GroupFiles

LOGGER = logging.getLogger(__name__)
#: The table's columns.
COLUMNS = ("source", "severity", "participant_id", "message")
#: ``severity``: info (worth knowing: a CPU fallback), warning (check before trusting a
#: result: a model at chance level, a borderline registration, IG that did not converge).
SEVERITIES = ("info", "warning")


def reset_warnings(output_dir: Path) -> Path:
    """Start the list of a new group run: the header only."""
    return _write(GroupFiles(Path(output_dir)).warnings, [])


def record_warning(
    output_dir: Path,
    source: str,
    message: str,
    severity: str = "warning",
    participant_id: str | None = None,
    log: bool = True,
) -> Path:
    """Add one warning to the group level's list (and log it).

    Parameters
    ----------
    output_dir : Path
        The derivative dataset root.
    source : str
        What raised it, in a word or two the report shows: ``device``, ``labels``,
        ``registration``, ``models``, ``attribution``.
    message : str
        One sentence a clinician-researcher can act on (tabs and line breaks become spaces).
    severity : str
        ``warning`` (default) or ``info``.
    participant_id : str, optional
        The participant concerned (``sub-01``), if one.
    log : bool
        Also log the message (WARNING, INFO for ``info``).

    Returns
    -------
    Path
        The table, rewritten atomically.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
    row = {
        "source": _clean(source),
        "severity": severity,
        "participant_id": _clean(participant_id) if participant_id else "n/a",
        "message": _clean(message),
    }
    if log:
        level = logging.INFO if severity == "info" else logging.WARNING
        prefix = f"{row['participant_id']}: " if participant_id else ""
        logging.getLogger(f"bids_qnet.{row['source']}").log(level, "%s%s", prefix, row["message"])
    path = GroupFiles(Path(output_dir)).warnings
    rows = read_warnings(output_dir)
    if row not in rows:
        rows.append(row)
    return _write(path, rows)


def read_warnings(output_dir: Path) -> list[dict[str, str]]:
    """Return the warnings of the latest group run, oldest first (empty when none)."""
    path = GroupFiles(Path(output_dir)).warnings
    if not path.is_file():
        return []
    reader = csv.DictReader(io.StringIO(path.read_text()), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [{k: row.get(k) or "n/a" for k in COLUMNS} for row in reader]


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    lines = ["\t".join(COLUMNS)] + ["\t".join(row[k] for k in COLUMNS) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")


def _clean(text: str) -> str:
    return " ".join(str(text).split())
