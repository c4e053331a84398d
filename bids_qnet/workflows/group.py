"""The group level: cross-validated ROI baseline, ResNet, ResNetSWA and Q-Net, then a final model.

Wiring only: the scans and labels come from :mod:`bids_qnet.inputs`, the cross-validation, the
model families and the final model from :mod:`bids_qnet.training`, the results from
:mod:`bids_qnet.workflows.results`, the attribution from :mod:`bids_qnet.attribution` and the
page from :mod:`bids_qnet.reports.group`; every path from the naming table.
"""

from __future__ import annotations

import json
import logging

from bids_qnet.config import Settings
from bids_qnet.config.sections import DEFAULT_CROP_REGIONS
from bids_qnet.errors import EXIT_SUCCESS, UsageError
from bids_qnet.inputs.labels import LabelSpec, load_covariates, load_labels
from bids_qnet.inputs.scans import Scan, check_consistent, find_scans
from bids_qnet.models.device import choose_device, cpu_reason
from bids_qnet.models.presets import get_preset
from bids_qnet.outputs.atomic import write_json, write_table, write_text
from bids_qnet.outputs.derivatives import write_bidsignore
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.outputs.warnings import record_warning, reset_warnings
from bids_qnet.preprocess.crop_grid import crop_grid
from bids_qnet.reports.group import write_group_report
from bids_qnet.training.base import FitParams, GroupContext
from bids_qnet.training.cv import CrossValidation, prepare_splits
from bids_qnet.training.fitted import model_card
from bids_qnet.training.registry import BASELINE_MODEL
from bids_qnet.workflows.results import pooled_scan_metrics, write_results

LOGGER = logging.getLogger(__name__)


def run_group_level(settings: Settings) -> int:
    """Cross-validate the models, gather the results and train the final model."""
    files = GroupFiles(settings.output_dir)
    device, reason = choose_device(settings.execution.device)
    LOGGER.info("device: %s", reason)
    scans = find_scans(settings.output_dir, settings.preprocessing.crop)
    write_json(files.settings(settings.run_id), recorded_settings(settings, device))
    write_bidsignore(settings.output_dir)
    reset_warnings(settings.output_dir)
    if device.type == "cpu" and settings.execution.device == "auto":
        record_warning(
            settings.output_dir,
            "device",
            f"Training and attribution ran on the CPU: {cpu_reason()}.",
            severity="info",
            log=False,
        )
    check_consistent(scans)
    scans, labels, spec = labelled_scans(settings, scans)
    participant_warnings(settings.output_dir, scans)
    participants = sorted({s.participant_id for s in scans})
    training = settings.training
    splits = prepare_splits(
        files,
        participants,
        [labels[p] for p in participants],
        training.folds,
        training.cv_repeats,
        settings.execution.random_seed,
    )
    write_json(files.labels, spec.to_dict())
    context = group_context(settings, scans)
    params = fit_params(settings, device)
    progress = EpochProgress(params)
    cv = CrossValidation(
        files,
        splits,
        scans,
        labels,
        len(spec.classes),
        params,
        settings.training_record(),
        settings.execution.overwrite,
        progress,
        context,
    )
    folds = cv.folds(training.fold)
    for number, (repeat, fold) in enumerate(folds, 1):
        progress.fold(number, len(folds), repeat, fold, training.cv_repeats)
        cv.run_fold(repeat, fold)
    progress.done()
    if training.fold is not None:
        LOGGER.info("fold %d done; run again without --fold to gather all folds", training.fold)
        return EXIT_SUCCESS
    predictions = cv.gather()
    seed = settings.execution.random_seed
    write_results(files, predictions, settings.statistics.bootstrap_replicates, seed)
    if settings.attribution.enabled:
        from bids_qnet.attribution import attribute_cohort

        attribute_cohort(settings, scans, labels, spec, splits, predictions)
    progress.final()
    final = cv.fit_final()
    progress.done()
    card = model_card(
        final,
        spec,
        settings.inputs.channels,
        settings.preprocessing.crop,
        settings.training_record(),
        participants,
        pooled_scan_metrics(predictions),
    )
    write_json(files.final.card, card)
    baseline = final.family(BASELINE_MODEL)
    if baseline is not None:
        write_table(files.roi_coefficients, baseline.coefficients())
    recorded = recorded_settings(settings, device)
    write_text(files.citation, group_citation(recorded, spec.to_dict()))
    write_group_report(settings.output_dir, settings.bids_dir, recorded)
    return EXIT_SUCCESS


def recorded_settings(settings: Settings, device) -> dict:
    """Return the settings the group run saves and reports, with the device it used."""
    return settings.to_dict() | {"device_used": str(device)}


def group_citation(settings: dict, labels: dict | None) -> str:
    """Return ``group_CITATION.md``: the group level's methods paragraph and references."""
    from bids_qnet.reports.group_text import CITATIONS, methods_paragraph

    references = "\n".join(f"{k}. {text}" for k, text in enumerate(CITATIONS, 1))
    return (
        f"# Methods of the group level (generated by bids_qnet {settings.get('version')})\n\n"
        f"{methods_paragraph(settings, labels)}\n\n## References\n\n{references}\n"
    )


def participant_warnings(output_dir, scans: list[Scan]) -> None:
    """Add the participant level's warnings (borderline quality checks) of the scans used."""
    from bids_qnet.outputs.names import report_data

    for scan in scans:
        path = report_data(output_dir, scan.participant_id.removeprefix("sub-"), scan.session)
        try:
            notes = json.loads(path.read_text()).get("Warnings") or []
        except (OSError, ValueError):
            continue
        for note in notes if isinstance(notes, list) else [notes]:
            record_warning(output_dir, "registration", str(note), participant_id=scan.scan_id)


def labelled_scans(
    settings: Settings, scans: list[Scan]
) -> tuple[list[Scan], dict[str, int], LabelSpec]:
    """Read the classes from ``participants.tsv`` and keep the scans that have one.

    Participants left out (no label, no participant-level outputs) are named in the log.
    """
    training = settings.training
    labels, spec, notes = load_labels(
        settings.bids_dir / "participants.tsv",
        training.label_column,
        training.classes,
        training.positive_class,
        training.bins,
    )
    out = settings.output_dir
    for note in notes:
        record_warning(out, "labels", f"left out: {note}")
    unlabelled = sorted({s.participant_id for s in scans} - set(labels))
    if unlabelled:
        names = ", ".join(unlabelled)
        record_warning(out, "labels", f"left out, no label in participants.tsv: {names}")
    missing = sorted(set(labels) - {s.participant_id for s in scans})
    if missing:
        names = ", ".join(missing)
        record_warning(out, "participants", f"left out, no participant-level outputs: {names}")
    return [s for s in scans if s.participant_id in labels], labels, spec


def group_context(settings: Settings, scans: list[Scan]) -> GroupContext:
    """Return the crop's atlas regions and the covariates the models use.

    The regions are ``--regions``, else those the participant level cropped around, else the
    default crop regions (``--crop full``); each must have voxels in the crop.
    """
    grid = crop_grid(scans[0].slices, settings.output_dir)
    regions = tuple(settings.training.regions or grid.regions or DEFAULT_CROP_REGIONS)
    for name in regions:
        if name not in grid.names.values():
            raise UsageError(
                f"--regions {name}: not a region of the {grid.atlas_name} atlas "
                f"(e.g. {', '.join(DEFAULT_CROP_REGIONS[:2])})"
            )
        if not (grid.labels == grid.region_index(name)).any():
            raise UsageError(f"--regions {name}: the region has no voxel in the crop")
    covariates = load_covariates(
        settings.bids_dir / "participants.tsv", settings.training.covariates
    )
    LOGGER.info("regions: %s", ", ".join(regions))
    return GroupContext(grid, regions, covariates)


def fit_params(settings: Settings, device) -> FitParams:
    """Return the fit parameters of a run (the final model's; folds derive their seeds)."""
    return FitParams(
        epochs=settings.training.epochs,
        qnet_epochs=settings.training.qnet_epochs,
        batch_size=settings.embedding.embedding_batch_size,
        image_size=settings.embedding.image_size,
        weights=settings.embedding.embedding_weights,
        stage1=settings.training.stage1,
        seed=settings.execution.random_seed,
        device=device,
        preset=get_preset(settings.training.preset),
    )


class EpochProgress:
    """Log each fold as "k of K" and each epoch once, and move the progress display.

    Called by the estimators with a stage label and each epoch's history record
    (:class:`~bids_qnet.training.cv.CrossValidation`'s ``progress``).
    """

    def __init__(self, params: FitParams) -> None:
        self.totals = {"stage 1": params.epochs, "Q-Net": params.qnet_epochs}
        self.where = ""

    def fold(self, number: int, total: int, repeat: int, fold: int, repeats: int) -> None:
        """Announce fold ``number`` of ``total``."""
        name = f"fold {fold}" + (f" of repeat {repeat}" if repeats > 1 else "")
        self.where = f"fold {number}/{total}"
        progress = {
            "bar": "folds",
            "desc": "folds",
            "completed": number - 1,
            "total": total,
            "status": name,
        }
        LOGGER.info("fold %d of %d (%s)", number, total, name, extra={"progress": progress})

    def final(self) -> None:
        """Announce the final model's training."""
        self.where = "final model"
        progress = {
            "bar": "folds",
            "desc": "final model",
            "completed": 0,
            "total": 1,
            "status": "all participants",
            "quiet": True,
        }
        LOGGER.info("final model", extra={"progress": progress})

    def done(self) -> None:
        """Finish the folds' and epochs' display lines."""
        for bar in ("epochs", "folds"):  # INFO: a DEBUG record would not reach the display
            LOGGER.info(
                "%s done", bar, extra={"progress": {"bar": bar, "close": True, "quiet": True}}
            )

    def __call__(self, stage: str, entry: dict) -> None:
        """Log one epoch's history record of a training stage, once."""
        total = self.totals.get(stage)
        epoch = entry.get("epoch")
        values = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in entry.items()
            if k not in ("epoch", "seconds")
        )
        of = f"/{total}" if total else ""
        progress = {
            "bar": "epochs",
            "desc": stage,
            "completed": epoch,
            "total": total,
            "status": values,
        }
        LOGGER.info(
            "%s: %s epoch %s%s: %s",
            self.where,
            stage,
            epoch,
            of,
            values,
            extra={"progress": progress},
        )
