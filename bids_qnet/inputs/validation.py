"""Offline BIDS validation with the deno build of the BIDS validator (PyPI: bids-validator-deno)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bids_qnet.errors import BIDSValidationError, MissingInputError

LOGGER = logging.getLogger(__name__)
EXECUTABLE = "bids-validator-deno"


def validator_command() -> str:
    """Return the validator executable, preferring the one installed beside this Python."""
    beside = Path(sys.executable).parent / EXECUTABLE
    found = str(beside) if beside.is_file() else shutil.which(EXECUTABLE)
    if not found:
        raise MissingInputError(
            f"{EXECUTABLE} is not installed (pip install bids-validator-deno), "
            "or pass --skip-bids-validation"
        )
    return found


def run_validator(dataset: Path, ignore_subjects: list[str] | None = None) -> list[dict]:
    """Validate ``dataset`` and return the issues (dicts with ``code``, ``severity``, ``location``).

    Parameters
    ----------
    dataset : Path
        A raw or derivative BIDS dataset.
    ignore_subjects : list of str, optional
        Subject labels whose files are not reported (to validate only selected participants
        without writing a ``.bidsignore`` into a possibly read-only dataset).
    """
    config = {"ignore": [{"location": f"/sub-{s}/**"} for s in ignore_subjects or []]}
    with tempfile.TemporaryDirectory(prefix="bids_qnet_validator_") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        command = [validator_command(), "--format", "json", "--config", str(config_path)]
        command += ["--ignoreWarnings", str(dataset)]
        completed = subprocess.run(
            command, capture_output=True, text=True, check=False, env=_offline_env()
        )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError as exc:
        raise BIDSValidationError(
            f"the BIDS validator failed on {dataset}: {completed.stderr.strip()[:300]}"
        ) from exc
    issues = report.get("issues", {}).get("issues", [])
    return [i for i in issues if not _ignored(i, ignore_subjects or [])]


def validate_dataset(
    dataset: Path, subjects: list[str], all_subjects: list[str]
) -> dict[str, BIDSValidationError]:
    """Validate the selected participants of ``dataset``.

    Errors in one participant's files exclude that participant only; errors at the dataset level
    stop the run.

    Returns
    -------
    dict of str to BIDSValidationError
        Subject label to the error that excludes it.

    Raises
    ------
    BIDSValidationError
        The dataset itself (outside any ``sub-`` folder) is invalid.
    """
    others = [s for s in all_subjects if s not in subjects]
    errors = [i for i in run_validator(dataset, others) if i.get("severity") == "error"]
    per_subject: dict[str, list[dict]] = {}
    dataset_level = []
    for issue in errors:
        match = re.match(r"^/sub-([A-Za-z0-9]+)/", issue.get("location") or "")
        if match:
            per_subject.setdefault(match.group(1), []).append(issue)
        else:
            dataset_level.append(issue)
    if dataset_level:
        raise BIDSValidationError(
            f"{dataset} failed BIDS validation: {_describe(dataset_level)}. "
            "Fix it or pass --skip-bids-validation"
        )
    LOGGER.info(
        "BIDS validation: %d of %d participants without errors",
        len(subjects) - len(per_subject),
        len(subjects),
    )
    return {
        subject: BIDSValidationError(
            f"failed BIDS validation: {_describe(issues)}; fix the file(s) or pass "
            "--skip-bids-validation"
        )
        for subject, issues in per_subject.items()
    }


def _describe(issues: list[dict]) -> str:
    shown = "; ".join(f"{i.get('code')} at {i.get('location') or '(dataset)'}" for i in issues[:3])
    more = f" and {len(issues) - 3} more" if len(issues) > 3 else ""
    return f"{shown}{more}"


def _ignored(issue: dict, subjects: list[str]) -> bool:
    location = issue.get("location") or ""
    return any(location.startswith(f"/sub-{s}/") for s in subjects)


def _offline_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.setdefault("DENO_NO_UPDATE_CHECK", "1")
    env.setdefault("DENO_DIR", str(Path(tempfile.gettempdir()) / "bids_qnet_deno"))
    return env
