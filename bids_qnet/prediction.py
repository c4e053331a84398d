"""Predictions of fitted ResNet, ResNetSWA and Q-Net models, and loading a saved final model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.group_inputs import Scan

LOGGER = logging.getLogger(__name__)
CARD = "model_card.json"
KNOWN_MODELS = ("ResNet", "ResNetSWA", "QNet")


def load_final_model(path: Path, device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a bids_qnet final model folder (``models/final``) and its model card.

    Returns
    -------
    tuple of dict
        The fitted models as :func:`predict_scans` takes them, and the model card.

    Raises
    ------
    MissingInputError
        The folder or its model card is missing.
    InputDataError
        The folder is not a bids_qnet model, a checkpoint differs from the SHA-256 recorded in
        the card (tampered or corrupt), or it cannot be loaded safely (``weights_only=True``).
    """
    from bids_qnet.training.stage1 import load_classifier, load_state
    from bids_qnet.training.stage2 import Stage2Config

    folder = Path(path)
    folder = folder.parent if folder.name == CARD else folder
    card_path = folder / CARD
    if not card_path.is_file():
        raise MissingInputError(
            f"--model {path}: no {CARD} there; point it at a group run's models/final folder"
        )
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"--model {card_path} is not valid JSON: {exc}") from exc
    needed = {"Name", "Classes", "Channels", "Crop", "TrainingSettings", "Models", "TrainedOn"}
    if card.get("Name") != "bids_qnet Q-Net" or not needed <= set(card):
        raise InputDataError(f"--model {card_path} is not a bids_qnet model card")
    checksums = card.get("SHA256") or {}
    unknown = [m for m in card["Models"] if m not in KNOWN_MODELS]
    unchecked = [m for m in card["Models"] if not isinstance(checksums.get(f"{m}.pt"), str)]
    if unknown:
        raise InputDataError(f"--model {card_path} lists unknown models {unknown}")
    if unchecked:
        raise InputDataError(
            f"--model {card_path} lists models without a recorded SHA-256 ({unchecked}): "
            "their files cannot be checked; retrain the model with this bids_qnet version"
        )
    n_classes = len(card["Classes"])
    fitted: dict[str, Any] = {}
    for name in card["Models"]:
        state = load_state(folder / f"{name}.pt", checksums[f"{name}.pt"])
        if name == "QNet":
            fitted["QNet"] = state
        else:
            fitted[name] = load_classifier(state, len(card["Channels"]), n_classes)
    if "QNet" not in fitted:
        raise InputDataError(f"--model {folder} has no QNet.pt")
    settings = card["TrainingSettings"]
    fitted["stage2_config"] = Stage2Config(seed=settings["random_seed"], device=str(device))
    return fitted, card


def predict_scans(
    fitted: dict,
    scans: list[Scan],
    labels: dict[str, int],
    n_classes: int,
    device,
    image_size: int,
    batch_size: int,
) -> list[dict]:
    """Return prediction rows (image and scan level) of every fitted model for ``scans``.

    Parameters
    ----------
    fitted : dict
        ``ResNet``/``ResNetSWA`` classifiers (absent with a frozen stage 1), the ``QNet`` state and
        its ``stage2_config``.
    scans : list of Scan
        The scans to predict.
    labels : dict
        Participant id to true class index; participants missing from it get ``n/a``.
    n_classes : int
        Number of classes.
    device : torch.device
        Where to run the networks.
    image_size, batch_size : int
        Network input size and batch size used in training.

    Returns
    -------
    list of dict
        One row per slice (image level) and per scan, for each model.
    """
    from bids_qnet.metrics import scan_scores_from_slices
    from bids_qnet.training.stage1 import predict_and_embed, predict_slices
    from bids_qnet.training.stage2 import predict_stage2

    rows: list[dict] = []
    if "ResNetSWA" in fitted:
        stacks = [s.load_slices() for s in scans]
        for name in ("ResNet", "ResNetSWA"):
            if name == "ResNetSWA":  # one pass gives Q-Net's embeddings too
                logits, embeddings = predict_and_embed(
                    fitted[name], stacks, image_size, batch_size, device
                )
            else:
                logits = predict_slices(fitted[name], stacks, image_size, batch_size, device)
            for scan, slice_logits in zip(scans, logits, strict=True):
                rows += _rows(scan, labels, name, "image", slice_logits)
                vote, mean_logits = scan_scores_from_slices(slice_logits)
                rows += _rows(scan, labels, name, "scan", mean_logits[None], prediction=vote)
    else:
        embeddings = [s.load_embeddings() for s in scans]
    outputs = predict_stage2(fitted["QNet"], embeddings, n_classes, fitted["stage2_config"])
    for scan, (image_logits, scan_logits) in zip(scans, outputs, strict=True):
        rows += _rows(scan, labels, "QNet", "image", image_logits)
        rows += _rows(scan, labels, "QNet", "scan", scan_logits[None])
    return rows


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
