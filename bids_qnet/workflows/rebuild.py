"""``--reports-only`` and ``--boilerplate-only``: pages and methods text, nothing computed.

``--reports-only`` renders the HTML reports of a level again from what that level wrote: every
participant's report data (``sub-<label>/figures/<stem>_report.json``) and figures, or the
group level's tables, figures, warnings and latest saved settings. ``--boilerplate-only``
writes the methods text of a level with the settings given (``CITATION.md`` for the
participant level, ``group_CITATION.md`` for the group level).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bids_qnet.config import Settings
from bids_qnet.errors import EXIT_SUCCESS, MissingInputError, OutputError
from bids_qnet.outputs.atomic import write_text
from bids_qnet.outputs.names import DatasetFiles, GroupFiles, report_data_files, scan_stem

LOGGER = logging.getLogger(__name__)


def rebuild_reports(settings: Settings) -> int:
    """Render the reports of ``settings.analysis_level`` again; return the exit code.

    Raises
    ------
    MissingInputError
        The output folder holds nothing the level's reports are made from (exit 66).
    """
    if settings.analysis_level == "participant":
        written = rebuild_participant_reports(settings)
        LOGGER.info("rebuilt %d participant report(s)", len(written))
        return EXIT_SUCCESS
    from bids_qnet.reports.group import write_group_report

    saved = GroupFiles(settings.output_dir).saved_settings()
    if not saved:
        raise MissingInputError(
            f"{settings.output_dir} holds no group run (no logs/group_*_settings.json): "
            "run the group level first"
        )
    recorded = json.loads(saved[-1].read_text())
    write_group_report(settings.output_dir, settings.bids_dir, recorded)
    return EXIT_SUCCESS


def rebuild_participant_reports(settings: Settings) -> list[Path]:
    """Render every selected participant's report from its report data; return the pages."""
    from bids_qnet.reports.participant import write_participant_report

    wanted = set(settings.inputs.participant_label or [])
    sessions = set(settings.inputs.session_label or [])
    written = []
    for path in report_data_files(settings.output_dir):
        summary = json.loads(path.read_text())
        subject = str(summary.get("Subject") or path.name.split("_")[0].removeprefix("sub-"))
        session = summary.get("Session")
        if (wanted and subject not in wanted) or (sessions and session not in sessions):
            continue
        figures = [Path(f) for f in summary.get("Figures") or []]
        page = settings.output_dir / f"{scan_stem(subject, session)}.html"
        written.append(
            write_participant_report(settings.output_dir, subject, session, summary, figures, page)
        )
    if not written:
        raise MissingInputError(
            f"{settings.output_dir} holds no participant report data (sub-*/figures/"
            "*_report.json) for the selected participants: run the participant level (outputs "
            "of bids_qnet before 0.3 have none)"
        )
    return written


def write_boilerplate(settings: Settings) -> int:
    """Write the methods text of ``settings.analysis_level`` with these settings."""
    output_dir = Path(settings.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
    if settings.analysis_level == "participant":
        from bids_qnet.workflows.run_participant import participant_citation

        path = write_text(DatasetFiles(output_dir).citation, participant_citation(settings))
    else:
        from bids_qnet.workflows.group import group_citation

        files = GroupFiles(output_dir)
        labels = json.loads(files.labels.read_text()) if files.labels.is_file() else None
        path = write_text(files.citation, group_citation(settings.to_dict(), labels))
    LOGGER.info("methods text: %s", path)
    return EXIT_SUCCESS
