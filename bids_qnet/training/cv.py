"""Cross-validation that resumes: splits kept on disk, folds fitted apart and marked done last.

Every fold writes its checkpoints and out-of-fold predictions under
``models/repeat-<r>_fold-<k>/`` and then ``done.json`` (the training record it was made with and
the files' SHA-256), so an interrupted run resumes at the next unfinished fold and ``--fold``
lets a cluster run folds as separate jobs that a final call gathers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bids_qnet.errors import UsageError
from bids_qnet.inputs.scans import Scan
from bids_qnet.outputs.atomic import write_json, write_table
from bids_qnet.outputs.integrity import file_sha256
from bids_qnet.outputs.names import FOLD_PREDICTIONS, GroupFiles, ModelFiles
from bids_qnet.outputs.provenance import software_versions
from bids_qnet.training.base import FitParams, GroupContext
from bids_qnet.training.fitted import FittedModels
from bids_qnet.training.splits import (
    check_no_leakage,
    make_splits,
    read_splits,
    train_test_ids,
    write_splits,
)

LOGGER = logging.getLogger(__name__)
#: Seed of fold ``k`` of repeat ``r``: the run's seed + ``REPEAT_SEED_STEP * r + k``.
REPEAT_SEED_STEP = 1000


def prepare_splits(
    files: GroupFiles,
    participants: list[str],
    labels: list[int],
    folds: int,
    repeats: int,
    seed: int,
) -> pd.DataFrame:
    """Make the splits and write them, refusing other splits already written there.

    Raises
    ------
    UsageError
        ``desc-cv_splits.tsv`` holds other splits (participants, folds or seed changed).
    """
    splits = make_splits(participants, labels, folds, repeats, seed)
    if files.splits.is_file() and not same_splits(read_splits(files.splits), splits):
        raise UsageError(
            f"{files.splits} holds other splits (participants, folds or seed changed); "
            "use another output_dir or delete models/ and the splits to start over"
        )
    write_splits(splits, files.splits)
    return splits


def same_splits(previous: pd.DataFrame, new: pd.DataFrame) -> bool:
    """Tell whether two splits tables put every participant in the same fold of each repeat."""
    columns = ["participant_id", "repeat", "fold"]
    left = previous[columns].sort_values(columns).reset_index(drop=True)
    right = new[columns].sort_values(columns).reset_index(drop=True)
    return left.astype(str).equals(right.astype(str))


def split_folds(splits: pd.DataFrame) -> list[tuple[int, int]]:
    """Return the sorted (repeat, fold) pairs of a splits table."""
    pairs = zip(splits["repeat"], splits["fold"], strict=True)
    return sorted({(int(r), int(f)) for r, f in pairs})


@dataclass
class CrossValidation:
    """The folds of one splits table, fitted and predicted one at a time.

    Attributes
    ----------
    files : GroupFiles
        Where the folds' folders are.
    splits : pandas.DataFrame
        ``desc-cv_splits.tsv``.
    scans : list of Scan
        The labelled scans.
    labels : dict
        Participant id -> class index.
    n_classes : int
        Number of classes.
    params : FitParams
        The fit parameters; each fold's seed is derived from ``params.seed``.
    record : dict
        The settings that define the training; a fold is reused only when its ``done.json``
        was made with the same record.
    overwrite : bool
        Refit folds that are done.
    progress : callable, optional
        Called with a stage label and each epoch's history record.
    context : GroupContext, optional
        The crop's atlas regions and the covariates.
    """

    files: GroupFiles
    splits: pd.DataFrame
    scans: list[Scan]
    labels: dict[str, int]
    n_classes: int
    params: FitParams
    record: dict[str, Any]
    overwrite: bool = False
    progress: Callable[[str, dict], None] | None = None
    context: GroupContext | None = None

    def folds(self, only: int | None = None) -> list[tuple[int, int]]:
        """Return the (repeat, fold) pairs to run: all, or those of fold ``only``."""
        folds = split_folds(self.splits)
        if only is None:
            return folds
        chosen = [(r, f) for r, f in folds if f == only]
        if not chosen:
            raise UsageError(f"--fold {only} is not a fold of {self.files.splits}")
        return chosen

    def run_fold(self, repeat: int, fold: int) -> pd.DataFrame:
        """Train and evaluate one fold, or read its results when it is already done."""
        files = self.files.fold(repeat, fold)
        if not self.overwrite and fold_is_done(files, self.record):
            LOGGER.info("repeat %d fold %d already done", repeat, fold)
            return pd.read_csv(files.predictions, sep="\t")
        files.done.unlink(missing_ok=True)  # the fold is not done until all its files are rewritten
        start = time.perf_counter()
        train, test = self._fold_scans(repeat, fold)
        seed = self.params.seed + REPEAT_SEED_STEP * repeat + fold
        LOGGER.info(
            "repeat %d fold %d: %d training and %d test scans", repeat, fold, len(train), len(test)
        )
        fitted = FittedModels(
            self.params.with_seed(seed), self.n_classes, self.progress, self.context
        )
        fitted.fit(train, self.labels, save_to=files)
        frame = pd.DataFrame(fitted.predict(test, self.labels)).assign(repeat=repeat, fold=fold)
        write_table(files.predictions, frame)
        seconds = round(time.perf_counter() - start, 1)
        checksums = {**fitted.checksums_, FOLD_PREDICTIONS: file_sha256(files.predictions)}
        done = {"config": self.record, "seconds": seconds, "SHA256": checksums}
        write_json(files.done, done | {"Software": software_versions(), "history": fitted.history_})
        LOGGER.info("repeat %d fold %d done in %.1f s", repeat, fold, seconds)
        return frame

    def _fold_scans(self, repeat: int, fold: int) -> tuple[list[Scan], list[Scan]]:
        train_ids, test_ids = train_test_ids(self.splits, repeat, fold)
        check_no_leakage(train_ids, test_ids, f"repeat {repeat} fold {fold}")
        train = [s for s in self.scans if s.participant_id in set(train_ids)]
        test = [s for s in self.scans if s.participant_id in set(test_ids)]
        check_no_leakage([s.participant_id for s in train], [s.participant_id for s in test])
        return train, test

    def gather(self) -> pd.DataFrame:
        """Return every fold's out-of-fold predictions, in fold order.

        Raises
        ------
        UsageError
            A fold has no results yet (run it, or run without ``--fold``).
        """
        frames = []
        for repeat, fold in split_folds(self.splits):
            path = self.files.fold(repeat, fold).predictions
            if not path.is_file():
                raise UsageError(f"fold {fold} of repeat {repeat} has no results yet ({path})")
            frames.append(pd.read_csv(path, sep="\t"))
        return pd.concat(frames, ignore_index=True)

    def fit_final(self) -> FittedModels:
        """Train every model on all the labelled scans and save them under ``models/final``."""
        files = self.files.final
        files.card.unlink(missing_ok=True)  # no card over half-replaced weights
        LOGGER.info("training the final model on %d scans", len(self.scans))
        fitted = FittedModels(self.params, self.n_classes, self.progress, self.context)
        return fitted.fit(self.scans, self.labels, save_to=files)


def fold_is_done(files: ModelFiles, record: dict[str, Any]) -> bool:
    """Tell whether a fold's ``done.json`` matches ``record`` and its predictions are intact."""
    try:
        done = json.loads(files.done.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if done.get("config") != record:
        return False
    predictions = files.predictions
    recorded = done.get("SHA256", {}).get(FOLD_PREDICTIONS)
    if not predictions.is_file() or file_sha256(predictions) != recorded:
        LOGGER.warning("%s changed since the fold finished; recomputing the fold", predictions)
        return False
    return True
