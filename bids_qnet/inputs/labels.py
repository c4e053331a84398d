"""Class labels from ``participants.tsv``: which column, which classes, which one is positive.

For two classes the positive class (the one sensitivity, F1 and the ROC curve are about) always
gets index 1, so that "higher score = positive" holds throughout the group level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_qnet.errors import InputDataError, MissingInputError, UsageError, one_line

logger = logging.getLogger(__name__)

ID_COLUMN = "participant_id"
# Cells read as "no value" (BIDS writes n/a; spreadsheets write the others).
MISSING_VALUES = frozenset({"", "n/a", "N/A", "na", "NA", "nan", "NaN", "NULL", "null", "None"})


@dataclass(frozen=True)
class LabelSpec:
    """How participants were turned into class indices.

    Attributes
    ----------
    column : str
        The ``participants.tsv`` column the labels come from.
    classes : tuple of str
        Class names; a participant's class index is the position of its class here.
    positive : str or None
        The positive class for two classes (always ``classes[1]``); None for more classes.
    bins : int or None
        Number of quantile bins requested when a numeric column was binned, else None.
    edges : tuple of float or None
        Bin edges (``len(classes) + 1`` values) when a numeric column was binned, else None.
    """

    column: str
    classes: tuple[str, ...]
    positive: str | None
    bins: int | None = None
    edges: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-ready dictionary (lists instead of tuples)."""
        return {
            "column": self.column,
            "classes": list(self.classes),
            "positive": self.positive,
            "bins": self.bins,
            "edges": None if self.edges is None else [float(e) for e in self.edges],
        }


def load_labels(
    participants_tsv: Path,
    column: str = "group",
    classes: list[str] | None = None,
    positive: str | None = None,
    bins: int | None = None,
) -> tuple[dict[str, int], LabelSpec, list[str]]:
    """Read class labels from ``participants.tsv``.

    Parameters
    ----------
    participants_tsv : pathlib.Path
        The dataset's ``participants.tsv``.
    column : str
        Column holding the label (default ``group``).
    classes : list of str, optional
        Classes to use, in this order. Participants with another value are left out (with a
        note). Default: every value found, sorted (numerically when all values are numbers).
    positive : str, optional
        The positive class when there are two classes. Default: the second class in order
        (sorted ``HC``/``HH`` -> ``HH``). The classes are then ordered so that the positive
        class has index 1. Not allowed with more than two classes.
    bins : int, optional
        Split a numeric column into this many quantile classes ``q1`` .. ``qN`` (lowest values
        in ``q1``). Tied values may merge bins (pandas ``qcut`` with ``duplicates="drop"``);
        fewer than two remaining bins is an error. Cannot be combined with ``classes``.

    Returns
    -------
    labels : dict of str to int
        ``participant_id`` (with its ``sub-`` prefix) to class index.
    spec : LabelSpec
        The classes, positive class and bin edges used.
    notes : list of str
        One line per participant left out, e.g. ``"sub-07: no value in column 'group'"``.

    Raises
    ------
    MissingInputError
        ``participants_tsv`` does not exist.
    InputDataError
        No ``participant_id`` column, duplicate participant ids, fewer than two classes in the
        data, or quantile binning that leaves fewer than two bins.
    UsageError
        ``column`` missing, a requested class never occurs, ``positive`` is not a class or is
        given for more than two classes, ``bins`` on a non-numeric column or ``bins < 2``.
    """
    path = Path(participants_tsv)
    values, notes = _column_values(path, column)
    edges: tuple[float, ...] | None = None
    if bins is not None:
        if classes is not None:
            raise UsageError("give either classes or bins for the label column, not both")
        values, names, edges = _bin_values(values, path, column, bins)
    else:
        names = _choose_classes(values, path, column, classes, notes)

    if len(names) < 2:
        found = ", ".join(names) or "none"
        raise InputDataError(
            f"{path}: column '{column}' has fewer than 2 classes among labelled participants "
            f"(found: {found}); classification needs at least two."
        )
    names, positive = _order_positive(names, positive)
    index = {name: i for i, name in enumerate(names)}
    labels = {pid: index[value] for pid, value in values.items() if value in index}
    spec = LabelSpec(column=column, classes=tuple(names), positive=positive, bins=bins, edges=edges)
    logger.info(
        "labels from %s column '%s': %s (%d participants, %d left out)",
        path.name,
        column,
        ", ".join(f"{n}={sum(v == i for v in labels.values())}" for n, i in index.items()),
        len(labels),
        len(notes),
    )
    return labels, spec, notes


def _column_values(path: Path, column: str) -> tuple[dict[str, str], list[str]]:
    """Return participant -> value of ``column``, and a note for each participant without one."""
    table = _read_table(path)
    if column not in table.columns:
        available = ", ".join(c for c in table.columns if c != ID_COLUMN) or "(none)"
        raise UsageError(
            f"{path}: no column '{column}'; available columns: {available}. "
            "Choose one of these as the label column."
        )
    notes: list[str] = []
    values: dict[str, str] = {}
    for pid, value in zip(table[ID_COLUMN], table[column], strict=True):
        if value in MISSING_VALUES:
            notes.append(f"{pid}: no value in column '{column}'")
        else:
            values[pid] = value
    return values, notes


def _read_table(path: Path) -> pd.DataFrame:
    """Read ``participants.tsv`` as strings, with ``sub-`` ids, checking the id column."""
    if not path.is_file():
        raise MissingInputError(
            f"participants file not found: {path}; the dataset needs a participants.tsv "
            "with participant_id and label columns."
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputDataError(f"{path}: cannot be read as a TSV table ({one_line(err)})") from err
    table.columns = [str(c).strip() for c in table.columns]
    if ID_COLUMN not in table.columns:
        raise InputDataError(
            f"{path}: no '{ID_COLUMN}' column (found: {', '.join(table.columns)}); "
            "the first column of participants.tsv must be participant_id."
        )
    table = table.apply(lambda col: col.str.strip())
    table = table[table[ID_COLUMN] != ""]
    ids = table[ID_COLUMN].map(lambda p: p if p.startswith("sub-") else f"sub-{p}")
    table = table.assign(**{ID_COLUMN: ids})
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise InputDataError(
            f"{path}: duplicate participant ids: {', '.join(duplicated)}; "
            "each participant must have exactly one row."
        )
    return table


def _choose_classes(
    values: dict[str, str],
    path: Path,
    column: str,
    classes: list[str] | None,
    notes: list[str],
) -> list[str]:
    """Return the class names; drop (with a note) participants outside requested classes."""
    found = set(values.values())
    if classes is None:
        return _sorted_values(found)
    names = [str(c).strip() for c in classes]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise UsageError(f"classes given more than once: {', '.join(repeated)}")
    absent = [c for c in names if c not in found]
    if absent:
        raise UsageError(
            f"{path}: class(es) {', '.join(absent)} never occur in column '{column}' "
            f"(values found: {', '.join(_sorted_values(found)) or 'none'}); fix the class list."
        )
    wanted = ", ".join(names)
    for pid, value in list(values.items()):
        if value not in names:
            notes.append(f"{pid}: value '{value}' in column '{column}' is not one of {wanted}")
            del values[pid]
    return names


def _bin_values(
    values: dict[str, str], path: Path, column: str, bins: int
) -> tuple[dict[str, str], list[str], tuple[float, ...]]:
    """Replace numeric values by quantile class names ``q1`` .. ``qN``."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
        raise UsageError(f"bins must be an integer of at least 2, got {bins!r}")
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    bad = sorted(pid for pid, number in numbers.items() if pd.isna(number))
    if bad:
        examples = ", ".join(f"{pid}={values[pid]!r}" for pid in bad[:3])
        raise UsageError(
            f"{path}: bins needs a numeric column but '{column}' has non-numeric values "
            f"({examples}); use bins only with a numeric column such as age."
        )
    if numbers.empty:
        return {}, [], ()
    codes, edges = pd.qcut(numbers, bins, labels=False, retbins=True, duplicates="drop")
    n_bins = len(edges) - 1
    if n_bins < 2:
        raise InputDataError(
            f"{path}: column '{column}' has too few distinct values for {bins} quantile bins "
            f"(ties leave {n_bins}); use fewer bins or another column."
        )
    if n_bins < bins:
        logger.warning("column '%s': ties merged %d quantile bins into %d", column, bins, n_bins)
    names = [f"q{i + 1}" for i in range(n_bins)]
    binned = {pid: names[int(code)] for pid, code in codes.items()}
    return binned, names, tuple(float(e) for e in edges)


def _order_positive(names: list[str], positive: str | None) -> tuple[list[str], str | None]:
    """Check ``positive`` and put it at index 1 for two classes."""
    if len(names) > 2:
        if positive is not None:
            raise UsageError(
                f"a positive class ('{positive}') applies only to two classes; "
                f"found {len(names)}: {', '.join(names)}. Leave it out or select two classes."
            )
        return names, None
    if positive is None:
        positive = names[1]
    if positive not in names:
        raise UsageError(
            f"positive class '{positive}' is not one of the classes {', '.join(names)}; "
            "choose one of these."
        )
    negative = names[0] if names[1] == positive else names[1]
    return [negative, positive], positive


def _sorted_values(values: set[str]) -> list[str]:
    """Sort class values: numerically when all are numbers, else as text."""
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def load_covariates(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    """Read covariates from ``participants.tsv``, as numbers, indexed by ``participant_id``.

    Numeric columns stay as they are; text columns (e.g. ``sex``) become 0/1 indicator columns
    named ``<column>=<value>``, one per value but the first (in sorted order). Missing cells
    (``n/a`` and the like) are NaN: the ROI model replaces them with the training mean.

    Parameters
    ----------
    path : Path
        ``participants.tsv``.
    columns : list of str or None
        The columns; None or empty gives None.

    Returns
    -------
    pandas.DataFrame or None

    Raises
    ------
    MissingInputError
        ``participants.tsv`` is missing.
    UsageError
        A column is not in the table.
    """
    if not columns:
        return None
    if not Path(path).is_file():
        raise MissingInputError(f"{path} is missing: --covariates reads it")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in table.columns]
    if missing or ID_COLUMN not in table.columns:
        raise UsageError(
            f"--covariates {' '.join(missing)}: not a column of {path} "
            f"(columns: {', '.join(table.columns)})"
        )
    table = table.set_index(ID_COLUMN)
    out = {}
    for column in columns:
        cells = table[column].map(lambda v: None if v.strip() in MISSING_VALUES else v.strip())
        numbers = pd.to_numeric(cells, errors="coerce")
        if numbers.notna().sum() == cells.notna().sum():
            out[column] = numbers.astype(float)
            continue
        for value in sorted(set(cells.dropna()))[1:]:
            out[f"{column}={value}"] = np.where(cells.isna(), np.nan, (cells == value) * 1.0)
    return pd.DataFrame(out, index=table.index)
