"""Cross-validation splits over participants, and the checks that keep test data unseen.

The participant is the unit of splitting: all sessions and slices of one participant fall in the
same fold, so nothing of a test participant is ever seen in training (the paper's 10-fold
cross-validation by individual).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from bids_qnet.errors import DataLeakageError, InputDataError, MissingInputError, UsageError
from bids_qnet.outputs.atomic import write_table

logger = logging.getLogger(__name__)

SPLIT_COLUMNS = ("participant_id", "label", "repeat", "fold")


def make_splits(
    participants: list[str],
    labels: list[int],
    folds: int = 10,
    repeats: int = 1,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign every participant to a test fold, stratified by label, for each repeat.

    Parameters
    ----------
    participants : list of str
        One id per participant (never one per session or slice).
    labels : list of int
        Class index of each participant, in the order of ``participants``.
    folds : int
        Number of folds (at least 2, at most the size of the smallest class).
    repeats : int
        Number of repetitions with different shuffles (seed ``seed + repeat``).
    seed : int
        Base random seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id``, ``label``, ``repeat`` (0-based), ``fold`` (0-based, the fold in
        which the participant is in the test set); one row per participant and repeat, sorted by
        repeat, fold and participant. Participants are sorted before splitting, so the result
        depends only on the set of participants, their labels and the seed, not on input order.

    Raises
    ------
    UsageError
        Lengths differ, a participant is listed twice, ``folds < 2``, ``repeats < 1``, or
        ``folds`` exceeds the number of participants in the smallest class.
    """
    if len(participants) != len(labels):
        raise UsageError(
            f"{len(participants)} participants but {len(labels)} labels; give one label each"
        )
    ids = [str(p) for p in participants]
    repeated = sorted(p for p, count in Counter(ids).items() if count > 1)
    if repeated:
        raise UsageError(
            f"participants listed more than once: {', '.join(repeated)}; split by participant "
            "(one entry each), or their sessions would land on both sides of a split"
        )
    _check_counts(labels, folds, repeats)
    order = np.argsort(ids, kind="stable")
    ids_sorted = np.asarray(ids, dtype=object)[order]
    labels_sorted = np.asarray(labels, dtype=int)[order]
    tables = []
    for repeat in range(int(repeats)):
        splitter = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=seed + repeat)
        fold_of = np.empty(len(ids_sorted), dtype=int)
        for fold, (_, test) in enumerate(splitter.split(ids_sorted, labels_sorted)):
            fold_of[test] = fold
        tables.append(
            pd.DataFrame(
                {
                    "participant_id": ids_sorted,
                    "label": labels_sorted,
                    "repeat": repeat,
                    "fold": fold_of,
                }
            )
        )
    splits = pd.concat(tables, ignore_index=True)
    splits = splits.sort_values(["repeat", "fold", "participant_id"], ignore_index=True)
    splits["participant_id"] = splits["participant_id"].astype(str)
    logger.info(
        "%d participants in %d folds x %d repeats (seed %d)", len(ids), folds, repeats, seed
    )
    return splits


def _check_counts(labels, folds, repeats) -> None:
    """Refuse non-integer or too few folds or repeats, and a class smaller than ``folds``."""
    if isinstance(folds, bool) or int(folds) != folds or folds < 2:
        raise UsageError(f"folds must be an integer of at least 2, got {folds!r}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise UsageError(f"repeats must be an integer of at least 1, got {repeats!r}")
    counts = Counter(int(label) for label in labels)
    smallest = min(counts.values()) if counts else 0
    if folds > smallest:
        per_class = ", ".join(f"class {k}: {n}" for k, n in sorted(counts.items())) or "none"
        raise UsageError(
            f"{folds} folds need at least {folds} participants in every class ({per_class}); "
            f"use {max(smallest, 2)} folds or fewer, or add participants."
        )


def train_test_ids(splits: pd.DataFrame, repeat: int, fold: int) -> tuple[list[str], list[str]]:
    """Return the training and test participants of one fold.

    Parameters
    ----------
    splits : pandas.DataFrame
        Table from :func:`make_splits` or :func:`read_splits`.
    repeat, fold : int
        Which repeat and which test fold.

    Returns
    -------
    train_ids, test_ids : list of str
        Sorted participant ids; the test ids are those whose ``fold`` equals ``fold``.

    Raises
    ------
    UsageError
        ``repeat`` or ``fold`` does not occur in ``splits``.
    DataLeakageError
        A participant would be on both sides (a corrupted split table).
    """
    _check_columns(splits, "splits table")
    rows = splits[splits["repeat"] == repeat]
    if rows.empty:
        known = ", ".join(str(r) for r in sorted(splits["repeat"].unique()))
        raise UsageError(f"repeat {repeat} is not in the splits (repeats: {known})")
    is_test = rows["fold"] == fold
    if not is_test.any():
        known = ", ".join(str(f) for f in sorted(rows["fold"].unique()))
        raise UsageError(f"fold {fold} is not in repeat {repeat} of the splits (folds: {known})")
    train_ids = sorted(rows.loc[~is_test, "participant_id"].astype(str))
    test_ids = sorted(rows.loc[is_test, "participant_id"].astype(str))
    check_no_leakage(train_ids, test_ids, what=f"repeat {repeat}, fold {fold}")
    return train_ids, test_ids


def check_no_leakage(train_ids: Iterable[str], test_ids: Iterable[str], what: str = "") -> None:
    """Fail if a participant is on both sides of a split.

    Ids are compared by participant label: ``sub-01``, ``01`` and ``sub-01_ses-2`` are the same
    participant, so sessions or slices of one person cannot straddle the split either.

    Parameters
    ----------
    train_ids, test_ids : iterable of str
        Participant (or participant-and-session) ids of the two sides.
    what : str
        Which split this is, for the message (e.g. ``"repeat 0, fold 3"``).

    Raises
    ------
    DataLeakageError
        Naming the participants found on both sides.
    """
    train = {_participant(i): str(i) for i in train_ids}
    test = {_participant(i): str(i) for i in test_ids}
    overlap = sorted(set(train) & set(test))
    if overlap:
        where = f" ({what})" if what else ""
        names = ", ".join(f"sub-{p}" for p in overlap)
        raise DataLeakageError(
            f"{len(overlap)} participant(s) in both the training and the test set{where}: "
            f"{names}; splits must be made by participant."
        )


def write_splits(splits: pd.DataFrame, path: Path) -> None:
    """Write the splits as a TSV file, atomically (temporary file, then rename).

    Parameters
    ----------
    splits : pandas.DataFrame
        Table with columns ``participant_id``, ``label``, ``repeat``, ``fold``.
    path : pathlib.Path
        Destination ``.tsv`` file; its folder is created if needed.
    """
    _check_columns(splits, "splits table")
    table = splits.loc[:, list(SPLIT_COLUMNS)]
    path = Path(path)
    write_table(path, table, lineterminator="\n")
    logger.debug("wrote splits %s", path)


def read_splits(path: Path) -> pd.DataFrame:
    """Read a splits TSV written by :func:`write_splits`.

    Parameters
    ----------
    path : pathlib.Path
        The ``.tsv`` file.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id`` (str), ``label``, ``repeat``, ``fold`` (int).

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputDataError
        Columns are missing, values are not integers, or a participant appears twice in a repeat.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"splits file not found: {path}; rerun the group level to make it")
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str}, keep_default_na=False)
    _check_columns(table, str(path))
    try:
        for column in ("label", "repeat", "fold"):
            table[column] = pd.to_numeric(table[column], errors="raise").astype(int)
    except (ValueError, TypeError) as err:
        raise InputDataError(f"{path}: label, repeat and fold must be integers ({err})") from err
    twice = table[table.duplicated(["repeat", "participant_id"])]
    if not twice.empty:
        names = ", ".join(sorted(set(twice["participant_id"])))
        raise InputDataError(f"{path}: participants in more than one fold of a repeat: {names}")
    return table.loc[:, list(SPLIT_COLUMNS)]


def _check_columns(table: pd.DataFrame, what: str) -> None:
    """Raise InputDataError if a split column is missing."""
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(f"{what}: missing column(s) {', '.join(missing)}")


def _participant(identifier: str) -> str:
    """Return the bare participant label of ``sub-01``, ``01`` or ``sub-01_ses-2``."""
    text = str(identifier).strip()
    text = text.removeprefix("sub-")
    return text.split("_", 1)[0]
