"""Classify participants with a saved final model (``--model`` at the participant level)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_qnet.config import Settings
from bids_qnet.errors import InputDataError
from bids_qnet.outputs.atomic import write_table
from bids_qnet.outputs.derivatives import write_sidecar
from bids_qnet.outputs.names import final_model_predictions

LOGGER = logging.getLogger(__name__)


def check_model(settings: Settings):
    """Load ``--model`` and check it fits these inputs; return (fitted models, card)."""
    from bids_qnet.models.device import resolve_device
    from bids_qnet.training.fitted import FittedModels

    device = resolve_device(settings.execution.device)
    fitted, card = FittedModels.load(settings.embedding.model, device)
    channels, crop = settings.inputs.channels, settings.preprocessing.crop
    if card["Channels"] != channels or card["Crop"] != crop:
        raise InputDataError(
            f"--model {settings.embedding.model} was trained on channels {card['Channels']} "
            f"with crop {card['Crop']!r}; this run uses {channels} and {crop!r}: "
            "run with the same --channels and --crop"
        )
    return fitted, card


def apply_model(settings: Settings, model, done: list[tuple[str, str | None]]) -> list[Path]:
    """Write scan-level predictions of the final model for the processed participants."""
    from bids_qnet.inputs.scans import find_scans

    fitted, card = model
    wanted = set(done)
    scans = [
        s
        for s in find_scans(settings.output_dir, settings.preprocessing.crop, check=False)
        if (s.participant_id.removeprefix("sub-"), s.session) in wanted
    ]
    for scan in scans:
        scan.check()
    seen = sorted({s.participant_id for s in scans} & set(card["TrainedOn"]))
    if seen:
        LOGGER.warning(
            "WARNING: --model was trained on %s; their predictions are not independent "
            "(in-sample) and must not be used to judge the model",
            ", ".join(seen),
        )
    rows = pd.DataFrame(fitted.predict(scans, {}))
    written = [_write_predictions(settings, card, scan, rows) for scan in scans]
    LOGGER.info("final-model predictions written for %d scan(s)", len(written))
    return written


def _write_predictions(settings: Settings, card: dict, scan, rows: pd.DataFrame) -> Path:
    classes = card["Classes"]
    mine = rows[(rows["participant_id"] == scan.participant_id) & (rows["level"] == "scan")]
    table = mine[["participant_id", "session", "model"]].assign(
        predicted_class=[classes[int(k)] for k in mine["prediction"]],
        **{f"probability_{c}": mine[f"probability_{k}"] for k, c in enumerate(classes)},
        in_training_set=scan.participant_id in card["TrainedOn"],
    )
    subject = scan.participant_id.removeprefix("sub-")
    path = final_model_predictions(settings.output_dir, subject, scan.session)
    write_table(path, table)
    source = scan.embeddings.relative_to(settings.output_dir).as_posix()
    write_sidecar(
        path,
        {
            "Description": "scan-level predictions of a bids_qnet final model",
            "Model": str(Path(settings.embedding.model).resolve()),
            "Classes": classes,
            "Sources": [f"bids::{source}"],
        },
    )
    return path
