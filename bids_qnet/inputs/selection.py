"""What the command line selects: participant and session labels, per-channel BIDS filters.

Light on purpose (no imaging libraries): the settings read ``--participant-label``,
``--session-label``, ``--bids-filter-file`` and ``-d/--derivatives`` through it when the
command line is parsed, so that every mistake there is one line and exit 64 before anything
runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bids_qnet.errors import UsageError

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
#: File name endings that make a ``--participant-label`` item a label file.
LABEL_FILE_SUFFIXES = (".txt", ".tsv", ".csv")
#: Keywords of ``BIDSLayout.get`` that are no BIDS entities: a filter may not set them.
RESERVED_FILTER_KEYS = frozenset(
    {"return_type", "target", "scope", "regex_search", "absolute_paths", "invalid_filters"}
)
#: Entities bids_qnet sets itself for each participant and channel.
SET_BY_BIDS_QNET = frozenset({"subject", "session", "suffix"})
#: Bytes read at most from a label or filter file (both are a few lines).
MAX_SMALL_FILE = 1 << 20


def is_label_file(item: str) -> bool:
    """Tell whether a ``--participant-label`` item names a file of labels, not a label.

    Only an explicit form does: ``@FILE``, a path with a separator (``./labels``,
    ``lists/a.txt``) or a name ending in ``.txt``, ``.tsv`` or ``.csv``. A bare word is always
    a label, even when a file of that name exists in the current folder.
    """
    return item.startswith("@") or "/" in item or item.lower().endswith(LABEL_FILE_SUFFIXES)


def read_small_text(path: Path, what: str) -> str:
    """Return a small UTF-8 text file's content (a byte-order mark is dropped).

    Raises
    ------
    UsageError
        The file does not exist, is a folder, cannot be read, is too large or is not UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    try:
        if path.stat().st_size > MAX_SMALL_FILE:
            raise UsageError(f"{what} {path} is larger than {MAX_SMALL_FILE // 1024} KiB")
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc


def _label_file_items(item: str, prefix: str) -> list[str]:
    path = Path(item.removeprefix("@"))
    text = read_small_text(path, f"--{prefix}-label file")
    column = "participant_id" if prefix == "sub" else "session_id"
    labels: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix.lower() == ".tsv":  # a participants.tsv-like table: its first column
            first = line.split("\t")[0].strip()
            if first != column:
                labels.append(first)
            continue
        labels += line.replace(",", " ").split()
    return labels


def clean_labels(labels: list[str] | None, prefix: str) -> list[str] | None:
    """Strip ``sub-``/``ses-`` prefixes, expand label files, and refuse unsafe labels.

    Parameters
    ----------
    labels : list of str or None
        Labels as given on the command line. An item in an explicit file form
        (:func:`is_label_file`: ``@FILE``, a path with ``/``, or ``*.txt``/``*.tsv``/``*.csv``)
        is read as labels, one or more per line (a ``.tsv`` gives its first column, without a
        ``participant_id``/``session_id`` header; ``#`` starts a comment line).
    prefix : str
        ``"sub"`` or ``"ses"``.

    Returns
    -------
    list of str or None
        Unique labels in the order given, or None when no labels were given.

    Raises
    ------
    UsageError
        A label file that is missing, unreadable or not UTF-8, a label that is not letters and
        digits, or label files that list no label.
    """
    if not labels:
        return None
    expanded: list[str] = []
    for item in labels:
        if is_label_file(item):
            found = _label_file_items(item, prefix)
            if not found:
                raise UsageError(f"--{prefix}-label file {item.removeprefix('@')} lists no label")
            expanded += found
        else:
            expanded += item.replace(",", " ").split()
    cleaned = []
    for label in expanded:
        label = label.removeprefix(f"{prefix}-")
        if not LABEL_PATTERN.match(label):
            raise UsageError(
                f"{prefix} label {label!r} is not a BIDS label (letters and digits only); "
                "a file of labels is given as @FILE or a path with a folder (./FILE)"
            )
        if label not in cleaned:
            cleaned.append(label)
    if not cleaned:
        raise UsageError(f"--{prefix}-label names no label")
    return cleaned


def load_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: a JSON object of per-channel pybids queries.

    Keys are channel suffixes (e.g. ``"Chimap"``) or ``"all"`` (applied to every channel); each
    value is an object of entity -> value, a value being a string, number, boolean, null or a
    list of those.

    Raises
    ------
    UsageError
        The file is missing, a folder, not UTF-8, not JSON, or not of that form.
    """
    if path is None:
        return {}
    text = read_small_text(Path(path), "--bids-filter-file")
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {exc}") from exc
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(
            f"--bids-filter-file {path} must map channel suffixes to query objects, "
            'e.g. {"Chimap": {"acq": "qsm"}}'
        )
    for suffix, query in filters.items():
        for key, value in query.items():
            _check_filter_entry(path, suffix, key, value)
    return filters


def _check_filter_entry(path, suffix: str, key: str, value: Any) -> None:
    where = f"--bids-filter-file {path}: {suffix}.{key}"
    if key in RESERVED_FILTER_KEYS:
        raise UsageError(f"{where} is not a BIDS entity (a pybids option); remove it")
    if key in SET_BY_BIDS_QNET:
        raise UsageError(
            f"{where} is set by bids_qnet for each participant and channel; use "
            "--participant-label, --session-label or --channels instead"
        )
    items = value if isinstance(value, list) else [value]
    if not all(item is None or isinstance(item, str | int | float | bool) for item in items):
        raise UsageError(
            f"{where} must be a string, number, boolean, null or a list of those, "
            f"not {json.dumps(value)[:80]}"
        )


def derivative_datasets(pairs: list[tuple[str, Path]] | None) -> dict[str, Path]:
    """Turn ``-d NAME=PATH`` pairs into ``{name: absolute path}``.

    The same dataset given twice (same path, same or another name) counts once; one name given
    to two different paths is a mistake.

    Raises
    ------
    UsageError
        A name used for two different datasets.
    """
    datasets: dict[str, Path] = {}
    for name, path in pairs or []:
        path = Path(path).absolute()
        if path in datasets.values():
            continue
        if name in datasets:
            raise UsageError(
                f"-d/--derivatives names two datasets {name}: {datasets[name]} and {path}; "
                "give each its own NAME"
            )
        datasets[name] = path
    return datasets
