"""The group level: cross-validated ResNet, ResNetSWA and Q-Net, then a final model.

Wiring only: the models and training loops live in :mod:`bids_qnet.models` and
:mod:`bids_qnet.training`, the metrics in :mod:`bids_qnet.metrics`. Every fold writes its
checkpoints and out-of-fold predictions under ``models/repeat-<r>_fold-<k>/`` and marks itself
done last, so an interrupted run resumes at the next unfinished fold and ``--fold`` lets a
cluster run folds as separate jobs that a final call gathers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bids_qnet import __version__
from bids_qnet.config import Settings
from bids_qnet.derivatives import CROP_DESC, write_atomic, write_bidsignore, write_json
from bids_qnet.errors import EXIT_SUCCESS, UsageError
from bids_qnet.group_inputs import Scan, check_consistent, find_scans
from bids_qnet.integrity import file_sha256
from bids_qnet.prediction import predict_scans
from bids_qnet.provenance import software_versions
from bids_qnet.reports.group import write_group_report
from bids_qnet.stats import write_model_comparisons

LOGGER = logging.getLogger(__name__)
MODELS = ("ResNet", "ResNetSWA", "QNet")


def run_group_level(settings: Settings) -> int:
    """Cross-validate the three models, gather the results and train the final model."""
    from bids_qnet.embed import resolve_device
    from bids_qnet.labels import load_labels
    from bids_qnet.training.splits import make_splits, read_splits, write_splits

    device = resolve_device(settings.device)
    scans = find_scans(settings.output_dir, CROP_DESC[settings.crop])
    settings.save(settings.output_dir / "logs" / f"group_{settings.run_id}_settings.json")
    write_bidsignore(settings.output_dir)
    check_consistent(scans)
    labels, spec, notes = load_labels(
        settings.bids_dir / "participants.tsv",
        settings.label_column,
        settings.classes,
        settings.positive_class,
        settings.bins,
    )
    for note in notes:
        LOGGER.warning("left out: %s", note)
    unlabelled = sorted({s.participant_id for s in scans} - set(labels))
    if unlabelled:
        LOGGER.warning("left out, no label in participants.tsv: %s", ", ".join(unlabelled))
    missing = sorted(set(labels) - {s.participant_id for s in scans})
    if missing:
        LOGGER.warning("left out, no participant-level outputs: %s", ", ".join(missing))
    scans = [s for s in scans if s.participant_id in labels]
    participants = sorted({s.participant_id for s in scans})

    splits_path = settings.output_dir / "desc-cv_splits.tsv"
    splits = make_splits(
        participants,
        [labels[p] for p in participants],
        settings.folds,
        settings.cv_repeats,
        settings.random_seed,
    )
    if splits_path.is_file():
        previous = read_splits(splits_path)
        if not _same_splits(previous, splits):
            raise UsageError(
                f"{splits_path} holds other splits (participants, folds or seed changed); "
                "use another output_dir or delete models/ and the splits to start over"
            )
    write_splits(splits, splits_path)
    write_json(settings.output_dir / "desc-cv_labels.json", spec.to_dict())

    folds = split_folds(splits)
    if settings.fold is not None:
        folds = [(r, f) for r, f in folds if f == settings.fold]
        if not folds:
            raise UsageError(f"--fold {settings.fold} is not a fold of {splits_path}")
    n_classes = len(spec.classes)
    for repeat, fold in folds:
        run_fold(settings, scans, labels, splits, repeat, fold, n_classes, device)
    if settings.fold is not None:
        LOGGER.info("fold %d done; run again without --fold to gather all folds", settings.fold)
        return EXIT_SUCCESS
    predictions = gather(settings, splits)
    if settings.attribution != "none":
        from bids_qnet.attribution import attribute_cohort

        attribute_cohort(settings, scans, labels, spec, splits, predictions)
    final_model(settings, scans, labels, spec, n_classes, device, predictions)
    write_group_report(settings.output_dir, settings.bids_dir, settings.to_dict())
    return EXIT_SUCCESS


def split_folds(splits: pd.DataFrame) -> list[tuple[int, int]]:
    """Return the sorted (repeat, fold) pairs of a splits table."""
    pairs = zip(splits["repeat"], splits["fold"], strict=True)
    return sorted({(int(r), int(f)) for r, f in pairs})


def fold_dir(settings: Settings, repeat: int, fold: int) -> Path:
    """Return the folder of one fold's checkpoints and predictions."""
    return settings.output_dir / "models" / f"repeat-{repeat}_fold-{fold}"


def run_fold(settings, scans, labels, splits, repeat, fold, n_classes, device) -> pd.DataFrame:
    """Train and evaluate one fold, or read its results when it is already done."""
    from bids_qnet.training.splits import check_no_leakage, train_test_ids

    folder = fold_dir(settings, repeat, fold)
    done = folder / "done.json"
    config = training_config(settings)
    if not settings.overwrite and fold_is_done(folder, config):
        LOGGER.info("repeat %d fold %d already done", repeat, fold)
        return pd.read_csv(folder / "predictions.tsv", sep="\t")
    done.unlink(missing_ok=True)  # the fold is not done until all its files are rewritten
    start = time.perf_counter()
    train_ids, test_ids = train_test_ids(splits, repeat, fold)
    check_no_leakage(train_ids, test_ids, f"repeat {repeat} fold {fold}")
    train = [s for s in scans if s.participant_id in set(train_ids)]
    test = [s for s in scans if s.participant_id in set(test_ids)]
    check_no_leakage([s.participant_id for s in train], [s.participant_id for s in test])
    seed = settings.random_seed + 1000 * repeat + fold
    LOGGER.info(
        "repeat %d fold %d: %d training and %d test scans", repeat, fold, len(train), len(test)
    )
    fitted = fit_models(settings, train, labels, n_classes, device, seed, folder)
    rows = predict_scans(
        fitted, test, labels, n_classes, device, settings.image_size, settings.embedding_batch_size
    )
    frame = pd.DataFrame(rows).assign(repeat=repeat, fold=fold)
    write_atomic(folder / "predictions.tsv", lambda tmp: frame.to_csv(tmp, sep="\t", index=False))
    seconds = round(time.perf_counter() - start, 1)
    checksums = {**fitted["checksums"], "predictions.tsv": file_sha256(folder / "predictions.tsv")}
    record = {"config": config, "seconds": seconds, "SHA256": checksums}
    write_json(done, record | {"Software": software_versions(), "history": fitted["history"]})
    LOGGER.info("repeat %d fold %d done in %.1f s", repeat, fold, seconds)
    return frame


def fold_is_done(folder: Path, config: dict[str, Any]) -> bool:
    """Tell whether a fold's ``done.json`` matches ``config`` and its predictions are intact."""
    try:
        record = json.loads((folder / "done.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("config") != config:
        return False
    predictions = folder / "predictions.tsv"
    recorded = record.get("SHA256", {}).get("predictions.tsv")
    if not predictions.is_file() or file_sha256(predictions) != recorded:
        LOGGER.warning("%s changed since the fold finished; recomputing the fold", predictions)
        return False
    return True


def training_config(settings: Settings) -> dict[str, Any]:
    """Return the settings that define the group-level training (compared on resume)."""
    keys = (
        "stage1",
        "epochs",
        "qnet_epochs",
        "embedding_batch_size",
        "image_size",
        "embedding_weights",
        "random_seed",
        "label_column",
        "classes",
        "positive_class",
        "bins",
    )
    return {k: settings.to_dict()[k] for k in keys} | {"version": __version__}


def fit_models(settings, train: list[Scan], labels, n_classes, device, seed, folder) -> dict:
    """Train stage 1 (unless frozen) and stage 2 on the training scans; save checkpoints."""
    from bids_qnet.training.stage1 import (
        Stage1Config,
        embed_slices_with,
        load_classifier,
        save_state,
        train_stage1,
    )
    from bids_qnet.training.stage2 import Stage2Config, train_stage2

    y = [labels[s.participant_id] for s in train]
    fitted: dict[str, Any] = {"history": {}, "checksums": {}}
    if settings.stage1 == "train":
        stacks = [s.load_slices() for s in train]
        config1 = Stage1Config(
            epochs=settings.epochs,
            batch_size=settings.embedding_batch_size,
            image_size=settings.image_size,
            weights=settings.embedding_weights,
            seed=seed,
            device=str(device),
        )
        result = train_stage1(stacks, y, n_classes, config1, progress=_progress("stage 1"))
        for name, state in (("ResNet", result.last_state), ("ResNetSWA", result.swa_state)):
            fitted["checksums"][f"{name}.pt"] = save_state(state, folder / f"{name}.pt")
        n_channels = stacks[0].shape[1]
        fitted["ResNet"] = load_classifier(result.last_state, n_channels, n_classes)
        fitted["ResNetSWA"] = load_classifier(result.swa_state, n_channels, n_classes)
        fitted["history"]["stage1"] = result.history
        embeddings = embed_slices_with(
            fitted["ResNetSWA"], stacks, settings.image_size, settings.embedding_batch_size, device
        )
    else:
        embeddings = [s.load_embeddings() for s in train]
    config2 = Stage2Config(
        epochs=settings.qnet_epochs,
        batch_size=settings.embedding_batch_size,
        seed=seed,
        device=str(device),
    )
    result2 = train_stage2(embeddings, y, n_classes, config2, progress=_progress("Q-Net"))
    fitted["checksums"]["QNet.pt"] = save_state(result2.state, folder / "QNet.pt")
    fitted["QNet"] = result2.state
    fitted["stage2_config"] = config2
    fitted["history"]["stage2"] = result2.history
    return fitted


def gather(settings: Settings, splits: pd.DataFrame) -> pd.DataFrame:
    """Concatenate every fold's predictions, write them, the metrics and the ROC figures."""
    from bids_qnet.metrics import summarise
    from bids_qnet.reports.roc import roc_figure

    frames = []
    for repeat, fold in split_folds(splits):
        path = fold_dir(settings, repeat, fold) / "predictions.tsv"
        if not path.is_file():
            raise UsageError(f"fold {fold} of repeat {repeat} has no results yet ({path})")
        frames.append(pd.read_csv(path, sep="\t"))
    predictions = pd.concat(frames, ignore_index=True)
    out = settings.output_dir
    write_atomic(
        out / "desc-oof_predictions.tsv", lambda tmp: predictions.to_csv(tmp, sep="\t", index=False)
    )
    metrics = pd.concat(
        [
            summarise(predictions[predictions["level"] == level], level)
            for level in ("image", "scan")
        ],
        ignore_index=True,
    )
    write_atomic(
        out / "desc-cv_metrics.tsv", lambda tmp: metrics.to_csv(tmp, sep="\t", index=False)
    )
    if predictions["score"].notna().any():
        for level in ("image", "scan"):
            subset = predictions[predictions["level"] == level]
            curves = {
                m: (g["label"].to_numpy(), g["score"].to_numpy())
                for m, g in subset.groupby("model", sort=False)
            }
            roc_figure(
                curves,
                out / "figures" / f"desc-roc{level}_roc.png",
                title=f"Out-of-fold ROC, {level} level",
            )
    LOGGER.info("cross-validation results: %s", out / "desc-cv_metrics.tsv")
    write_model_comparisons(
        predictions, out, n_replicates=settings.bootstrap_replicates, seed=settings.random_seed
    )
    return predictions


def final_model(settings, scans, labels, spec, n_classes, device, predictions) -> Path:
    """Train on every labelled participant and save the models with a model card."""
    from bids_qnet.metrics import summarise

    folder = settings.output_dir / "models" / "final"
    (folder / "model_card.json").unlink(missing_ok=True)  # no card over half-replaced weights
    LOGGER.info("training the final model on %d scans", len(scans))
    fitted = fit_models(settings, scans, labels, n_classes, device, settings.random_seed, folder)
    pooled = summarise(predictions[predictions["level"] == "scan"], "scan")
    pooled = pooled[pooled["fold"].astype(str) == "pooled"]
    card = {
        "Name": "bids_qnet Q-Net",
        "Version": __version__,
        "Classes": list(spec.classes),
        "Labels": spec.to_dict(),
        "Channels": settings.channels,
        "Crop": settings.crop,
        "TrainingSettings": training_config(settings),
        "TrainedOn": sorted({s.participant_id for s in scans}),
        "Models": [m for m in MODELS if f"{m}.pt" in fitted["checksums"]],
        "SHA256": fitted["checksums"],
        "Software": software_versions(),
        "CrossValidatedScanMetrics": pooled.to_dict(orient="records"),
        "History": fitted["history"],
    }
    return write_json(folder / "model_card.json", card)


def _same_splits(previous: pd.DataFrame, new: pd.DataFrame) -> bool:
    columns = ["participant_id", "repeat", "fold"]
    left = previous[columns].sort_values(columns).reset_index(drop=True)
    right = new[columns].sort_values(columns).reset_index(drop=True)
    return left.astype(str).equals(right.astype(str))


def _progress(stage: str):
    def report(entry: dict) -> None:
        LOGGER.info(
            "%s epoch %s: %s",
            stage,
            entry.get("epoch"),
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in entry.items()
                if k != "epoch"
            ),
        )

    return report
