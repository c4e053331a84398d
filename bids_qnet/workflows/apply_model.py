"""Classify participants with a saved final model (``--model`` at the participant level)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_qnet.config import Settings
from bids_qnet.derivatives import CROP_DESC, build_path, write_atomic, write_sidecar
from bids_qnet.errors import InputDataError

LOGGER = logging.getLogger(__name__)


def check_model(settings: Settings):
    """Load ``--model`` and check it fits these inputs; return (fitted models, card, device)."""
    from bids_qnet.embed import resolve_device
    from bids_qnet.prediction import load_final_model

    device = resolve_device(settings.device)
    fitted, card = load_final_model(settings.model, device)
    if card["Channels"] != settings.channels or card["Crop"] != settings.crop:
        raise InputDataError(
            f"--model {settings.model} was trained on channels {card['Channels']} with crop "
            f"{card['Crop']!r}; this run uses {settings.channels} and {settings.crop!r}: "
            "run with the same --channels and --crop"
        )
    return fitted, card, device


def apply_model(settings: Settings, model, done: list[tuple[str, str | None]]) -> list[Path]:
    """Write scan-level predictions of the final model for the processed participants."""
    from bids_qnet.group_inputs import find_scans
    from bids_qnet.prediction import predict_scans

    fitted, card, device = model
    wanted = set(done)
    scans = [
        s
        for s in find_scans(settings.output_dir, CROP_DESC[settings.crop])
        if (s.participant_id.removeprefix("sub-"), s.session) in wanted
    ]
    seen = sorted({s.participant_id for s in scans} & set(card["TrainedOn"]))
    if seen:
        LOGGER.warning(
            "WARNING: --model was trained on %s; their predictions are not independent "
            "(in-sample) and must not be used to judge the model",
            ", ".join(seen),
        )
    training = card["TrainingSettings"]
    rows = pd.DataFrame(
        predict_scans(
            fitted,
            scans,
            {},
            len(card["Classes"]),
            device,
            training["image_size"],
            training["embedding_batch_size"],
        )
    )
    written = []
    for scan in scans:
        mine = rows[(rows["participant_id"] == scan.participant_id) & (rows["level"] == "scan")]
        table = mine[["participant_id", "session", "model"]].assign(
            predicted_class=[card["Classes"][int(k)] for k in mine["prediction"]],
            **{f"probability_{c}": mine[f"probability_{k}"] for k, c in enumerate(card["Classes"])},
            in_training_set=scan.participant_id in card["TrainedOn"],
        )
        entities = {
            "sub": scan.participant_id.removeprefix("sub-"),
            "ses": scan.session,
            "desc": "finalmodel",
        }
        path = settings.output_dir / build_path(entities, "predictions", ".tsv")
        write_atomic(path, lambda tmp, t=table: t.to_csv(tmp, sep="\t", index=False))
        write_sidecar(
            path,
            {
                "Description": "scan-level predictions of a bids_qnet final model",
                "Model": str(Path(settings.model).resolve()),
                "Classes": card["Classes"],
                "Sources": [f"bids::{scan.embeddings.relative_to(settings.output_dir).as_posix()}"],
            },
        )
        written.append(path)
    LOGGER.info("final-model predictions written for %d scan(s)", len(written))
    return written
