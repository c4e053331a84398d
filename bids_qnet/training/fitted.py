"""The fitted models of one fit (a fold or the final model): fit, predict, save, load.

:class:`FittedModels` holds one fitted :class:`~bids_qnet.training.base.Estimator` per family
of the registry that the run trains, fits them in order (Q-Net learns from the embeddings of a
fitted stage 1), writes their prediction rows and checkpoints, and reads a final model folder
back through its model card (:func:`model_card` writes it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bids_qnet import __version__
from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.inputs.scans import Scan
from bids_qnet.models.presets import get_preset
from bids_qnet.outputs.names import MODEL_CARD, ModelFiles
from bids_qnet.outputs.provenance import software_versions
from bids_qnet.training.base import Cohort, Estimator, FitParams, GroupContext, ScanLogits
from bids_qnet.training.registry import ESTIMATORS, MODEL_NAMES, SCAN_MODEL

LOGGER = logging.getLogger(__name__)
#: The ``Name`` of a bids_qnet model card.
CARD_NAME = "bids_qnet Q-Net"
#: Keys every model card has.
CARD_KEYS = frozenset(
    {"Name", "Classes", "Channels", "Crop", "TrainingSettings", "Models", "TrainedOn"}
)


class FittedModels:
    """Every model family a run trains, fitted together.

    Parameters
    ----------
    params : FitParams
        Hyperparameters and random state of the fit.
    n_classes : int
        Number of classes.
    progress : callable, optional
        Called with a family's stage label and each epoch's history record.
    context : GroupContext, optional
        The crop's atlas regions and the covariates (the ROI model needs them to fit).

    Attributes
    ----------
    families_ : list of Estimator
        The fitted families, in registry order.
    checksums_ : dict of str to str
        Checkpoint file name -> SHA-256, once saved (or as loaded).
    """

    def __init__(
        self,
        params: FitParams,
        n_classes: int,
        progress: Callable[[str, dict], None] | None = None,
        context: GroupContext | None = None,
    ) -> None:
        self.params = params
        self.n_classes = int(n_classes)
        self.progress = progress
        self.context = context
        self.families_: list[Estimator] = []
        self.checksums_: dict[str, str] = {}

    def fit(
        self, scans: list[Scan], labels: dict[str, int], save_to: ModelFiles | None = None
    ) -> FittedModels:
        """Fit every family the run trains on the training scans, in registry order.

        With ``save_to``, each family's checkpoints are written as soon as it is fitted.
        """
        cohort = Cohort(list(scans), context=self.context)
        y = [labels[scan.participant_id] for scan in scans]
        self.families_ = []
        for family in ESTIMATORS:
            if not family.wanted(self.params):
                continue
            estimator = family(self.params, self.n_classes, self.progress).fit(cohort, y)
            self.families_.append(estimator)
            if save_to is not None:
                self.checksums_.update(estimator.save(save_to))
            features = estimator.features(cohort)
            if features is not None:
                cohort.features = features
        return self

    @property
    def models(self) -> list[str]:
        """The fitted models' names, in the order their predictions are written."""
        return [name for family in self.families_ for name in family.models]

    @property
    def history_(self) -> dict[str, list[dict]]:
        """Each family's training history, keyed as ``done.json`` and the card record it."""
        return {family.history_key: family.history_ for family in self.families_}

    def predict(self, scans: list[Scan], labels: dict[str, int]) -> list[dict]:
        """Return prediction rows (image and scan level) of every model for ``scans``.

        Parameters
        ----------
        scans : list of Scan
            The scans to predict.
        labels : dict
            Participant id to true class index; participants missing from it get ``n/a``.

        Returns
        -------
        list of dict
            Per model, per scan: one row per slice (image level), then the scan's row.
        """
        cohort = Cohort(list(scans), context=self.context)
        rows: list[dict] = []
        for family in self.families_:
            prediction = family.predict(cohort)
            if prediction.features is not None:
                cohort.features = prediction.features
            for name, outputs in prediction.logits.items():
                for scan, logits in zip(scans, outputs, strict=True):
                    rows += prediction_rows(scan, labels, name, logits)
        return rows

    def family(self, name: str) -> Estimator | None:
        """Return the fitted family that holds the model ``name`` (None if not fitted)."""
        return next((f for f in self.families_ if name in f.models), None)

    def save(self, files: ModelFiles) -> dict[str, str]:
        """Write every checkpoint into ``files.folder``; return file name -> SHA-256."""
        for family in self.families_:
            self.checksums_.update(family.save(files))
        return dict(self.checksums_)

    @classmethod
    def load(cls, path: Path, device) -> tuple[FittedModels, dict[str, Any]]:
        """Load a bids_qnet final model folder (``models/final``) and its model card.

        Returns
        -------
        FittedModels, dict
            The fitted models and the model card.

        Raises
        ------
        MissingInputError
            The folder or its model card is missing.
        InputDataError
            The folder is not a bids_qnet model, a checkpoint differs from the SHA-256 recorded
            in the card (tampered or corrupt), or it cannot be loaded safely
            (``weights_only=True``).
        """
        files, card = read_model_card(Path(path))
        checksums = card.get("SHA256") or {}
        settings = card["TrainingSettings"]
        params = card_params(settings, device)
        fitted = cls(params, len(card["Classes"]))
        for family in ESTIMATORS:
            if set(family.models) <= set(card["Models"]):
                loaded = family.load(
                    files, checksums, params, fitted.n_classes, len(card["Channels"])
                )
                fitted.families_.append(loaded)
        if SCAN_MODEL not in fitted.models:
            raise InputDataError(
                f"--model {files.folder} has no {files.checkpoint_name(SCAN_MODEL)}"
            )
        fitted.checksums_ = dict(checksums)
        return fitted, card


def read_model_card(path: Path) -> tuple[ModelFiles, dict[str, Any]]:
    """Read and check the model card of a final model folder (or of the card's path)."""
    folder = path.parent if path.name == MODEL_CARD else path
    files = ModelFiles(folder)
    if not files.card.is_file():
        raise MissingInputError(
            f"--model {path}: no {MODEL_CARD} there; point it at a group run's models/final folder"
        )
    try:
        card = json.loads(files.card.read_bytes())
    except ValueError as exc:  # not JSON, not UTF-8
        raise InputDataError(f"--model {files.card} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("Name") != CARD_NAME or not CARD_KEYS <= set(card):
        raise InputDataError(f"--model {files.card} is not a bids_qnet model card")
    problem = _card_problem(card)
    if problem:
        raise InputDataError(
            f"--model {files.card} is not a usable bids_qnet model card ({problem}); "
            "retrain the model with this bids_qnet version"
        )
    checksums = card.get("SHA256") or {}
    unknown = [m for m in card["Models"] if m not in MODEL_NAMES]
    unchecked = [
        m for m in card["Models"] if not isinstance(checksums.get(files.checkpoint_name(m)), str)
    ]
    if unknown:
        raise InputDataError(f"--model {files.card} lists unknown models {unknown}")
    if unchecked:
        raise InputDataError(
            f"--model {files.card} lists models without a recorded SHA-256 ({unchecked}): "
            "their files cannot be checked; retrain the model with this bids_qnet version"
        )
    return files, card


#: Types of the model card's entries that loading and applying the model read.
CARD_TYPES = {"Classes": list, "Channels": list, "Crop": str, "Models": list, "TrainedOn": list}
#: Integer entries of ``TrainingSettings`` that loading the model reads.
CARD_SETTINGS = ("random_seed", "embedding_batch_size", "image_size")


def _card_problem(card: dict[str, Any]) -> str | None:
    """Return what makes a model card unusable (a wrong type, a missing setting), or None."""
    for key, kind in CARD_TYPES.items():
        if not isinstance(card[key], kind):
            return f"{key} is not a {kind.__name__}"
    if not all(isinstance(item, str) for key in ("Classes", "Models") for item in card[key]):
        return "Classes and Models must be lists of names"
    if len(card["Classes"]) < 2:
        return "fewer than two classes"
    settings = card["TrainingSettings"]
    if not isinstance(settings, dict):
        return "TrainingSettings is not an object"
    for key in CARD_SETTINGS:
        value = settings.get(key)
        least = 0 if key == "random_seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"TrainingSettings.{key} is missing or not a whole number"
    if not isinstance(card.get("SHA256") or {}, dict):
        return "SHA256 is not an object"
    return None


def card_params(training: dict[str, Any], device) -> FitParams:
    """Return the fit parameters a model card's ``TrainingSettings`` record."""
    return FitParams(
        epochs=training.get("epochs", 0),
        qnet_epochs=training.get("qnet_epochs", 0),
        batch_size=training["embedding_batch_size"],
        image_size=training["image_size"],
        weights=training.get("embedding_weights", "random"),
        stage1=training.get("stage1", "train"),
        seed=training["random_seed"],
        device=device,
        preset=get_preset(training.get("preset", "paper")),
    )


def model_card(
    fitted: FittedModels, spec, channels, crop, training, trained_on, scan_metrics
) -> dict[str, Any]:
    """Return a final model's card: what it is, how it was trained, on whom, how well.

    Parameters
    ----------
    fitted : FittedModels
        The saved final models.
    spec : bids_qnet.inputs.labels.LabelSpec
        The classes.
    channels : list of str
        The input channels, in order.
    crop : str
        ``--crop``.
    training : dict
        The settings that define the training (:meth:`bids_qnet.config.Settings.training_record`).
    trained_on : list of str
        The participants of the training set.
    scan_metrics : list of dict
        The cross-validated pooled scan-level metrics.
    """
    return {
        "Name": CARD_NAME,
        "Version": __version__,
        "Classes": list(spec.classes),
        "Labels": spec.to_dict(),
        "Channels": channels,
        "Crop": crop,
        "TrainingSettings": training,
        "Preset": fitted.params.preset.record(),
        "TrainedOn": trained_on,
        "Models": [m for m in MODEL_NAMES if ModelFiles.checkpoint_name(m) in fitted.checksums_],
        "SHA256": fitted.checksums_,
        "Software": software_versions(),
        "CrossValidatedScanMetrics": scan_metrics,
        "History": fitted.history_,
    }


def prediction_rows(scan: Scan, labels: dict[str, int], model: str, logits: ScanLogits) -> list:
    """Return one model's rows for one scan: its slices (image level), then the scan."""
    image = [] if logits.image is None else _rows(scan, labels, model, "image", logits.image)
    return [*image, *_rows(scan, labels, model, "scan", logits.scan[None], prediction=logits.vote)]


def _rows(scan: Scan, labels, model, level, logits: np.ndarray, prediction=None) -> list[dict]:
    rows = []
    for index, row_logits in enumerate(np.asarray(logits, dtype=float)):
        row = {
            "participant_id": scan.participant_id,
            "session": scan.session or "n/a",
            "label": labels.get(scan.participant_id, "n/a"),
            "model": model,
            "level": level,
            "slice": index if level == "image" else "n/a",
            "prediction": int(np.argmax(row_logits)) if prediction is None else int(prediction),
            "score": float(row_logits[1] - row_logits[0]) if len(row_logits) == 2 else np.nan,
        }
        probabilities = np.exp(row_logits - row_logits.max())
        probabilities /= probabilities.sum()
        for k, value in enumerate(row_logits):
            row[f"logit_{k}"] = float(value)
            row[f"probability_{k}"] = float(probabilities[k])
        rows.append(row)
    return rows
