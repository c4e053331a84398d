"""Attribution of a cross-validated cohort: every scan with the fold model that did not see it.

Per scan: Integrated Gradients with the configured baseline and target (``desc-IG``), Grad-CAM
on stage 1 (``desc-GradCAM``) and Integrated Gradients from the other classes' mean toward the
true class (``desc-IGreference``, which the region table ranks). Wiring: the plan
(:mod:`~bids_qnet.attribution.plan`), the networks (:mod:`~bids_qnet.attribution.loading`), the
methods (:mod:`~bids_qnet.attribution.integrated`, :mod:`~bids_qnet.attribution.contrast`),
template space (:mod:`~bids_qnet.attribution.volumes`), the region summaries
(:mod:`~bids_qnet.attribution.regions`) and the group outputs
(:mod:`~bids_qnet.attribution.group`). A scan whose maps exist with the same configuration and
fold models is read back instead of being recomputed, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bids_qnet.attribution.contrast import class_references, reference_scans
from bids_qnet.attribution.integrated import (
    BLUR_SIGMA_MM,
    IGJob,
    grad_cam,
    integrated_gradients_many,
    make_baseline,
)
from bids_qnet.attribution.loading import (
    FoldNetworks,
    check_embeddings,
    checksums,
    fold_networks,
)
from bids_qnet.attribution.outputs import (
    map_path,
    model_config,
    read_map,
    reusable,
    scan_entities,
    write_map,
)
from bids_qnet.attribution.plan import ScanPlan, plan_scans
from bids_qnet.attribution.volumes import unstack
from bids_qnet.errors import UsageError
from bids_qnet.inputs.scans import Scan
from bids_qnet.outputs.derivatives import is_complete, sidecar_path
from bids_qnet.outputs.names import GroupFiles, ModelFiles
from bids_qnet.preprocess.crop_grid import CropGrid, crop_grid
from bids_qnet.training.registry import SLICE_MODEL

LOGGER = logging.getLogger(__name__)
#: Largest difference between recomputed and stored Q-Net scan logits before a warning.
LOGIT_TOLERANCE = 0.05
#: Scans of one fold whose Integrated Gradients share calls and passes (same network, same
#: stack shape), by device. The pass size stays within the pixel budget whatever the count, so
#: this bounds only the inputs held at once and what an interruption loses (maps are written
#: per group). On the CPU a pass of the budget holds a few steps of one scan already and
#: grouping saved nothing (benchmarks/attribution.py): one scan a call, as before.
SCANS_PER_CALL = {"cpu": 1, "cuda": 8}


@dataclass
class ScanMaps:
    """One scan's maps on its crop grid and what its sidecars say."""

    plan: ScanPlan
    grid: CropGrid
    ig: np.ndarray  # (C, X, Y, Z), toward plan.target
    cam: np.ndarray | None  # (X, Y, Z), toward plan.cam_target
    record: dict[str, Any]
    reference: np.ndarray | None = None  # (C, X, Y, Z), toward plan.label, from the others
    reference_record: dict[str, Any] | None = None


def attribute_cohort(
    settings,
    scans: list[Scan],
    labels: dict[str, int],
    spec,
    splits: pd.DataFrame,
    predictions: pd.DataFrame,
    truth: list[str] | None = None,
    scans_per_call: int | None = None,
) -> dict[str, Path]:
    """Attribute every labelled scan, write its maps, the group maps, the region table, figures.

    Parameters
    ----------
    settings : bids_qnet.config.Settings
        Uses ``output_dir``, ``bids_dir``, ``stage1``, ``image_size``, ``device``,
        ``random_seed``, ``attribution``, ``attribution_target``, ``ig_steps``, ``ig_baseline``.
    scans : list of Scan
        The group level's scans.
    labels : dict
        Participant id -> class index.
    spec : bids_qnet.inputs.labels.LabelSpec
        Class names and the positive class.
    splits, predictions : pandas.DataFrame
        ``desc-cv_splits.tsv`` and ``desc-oof_predictions.tsv``.
    truth : list of str, optional
        Regions known to carry the effect; default: the demo dataset's planted regions when its
        ground truth (``<bids_dir>_truth/truth.json``) exists.
    scans_per_call : int, optional
        Scans of one fold attributed together (:func:`attribute_scans`); default
        :data:`SCANS_PER_CALL` for the device. The maps are the same (up to float rounding) for
        any value, only the speed differs.

    Returns
    -------
    dict of str to Path
        Every file written, by a short key.
    """
    from bids_qnet.attribution.group import summarise_cohort
    from bids_qnet.models.device import resolve_device

    if scans_per_call is not None and int(scans_per_call) < 1:
        raise UsageError(f"scans_per_call must be at least 1, got {scans_per_call}")
    if settings.attribution.attribution != "ig":
        raise UsageError(
            f"--attribution {settings.attribution.attribution!r} is not one of ig, none"
        )
    device = resolve_device(settings.execution.device)
    if scans_per_call is None:
        scans_per_call = SCANS_PER_CALL.get(device.type, 1)
    plans = plan_scans(scans, labels, splits, predictions, settings.attribution.attribution_target)
    _announce(settings, len(plans), device)
    results: list[ScanMaps] = []
    written: dict[str, Path] = {}
    start = time.perf_counter()
    grids = {p.scan.scan_id: crop_grid(p.scan.slices, settings.output_dir) for p in plans}
    references, on_grid = _references(plans, grids, len(spec.classes))
    for fold in sorted({p.fold for p in plans}):
        chosen = [p for p in plans if p.fold == fold]
        folder = GroupFiles(settings.output_dir).fold(chosen[0].repeat, fold).folder
        models = checksums(folder)
        if settings.training.stage1 != "train":
            models.pop(ModelFiles.checkpoint_name(SLICE_MODEL), None)
        first = grids[chosen[0].scan.scan_id]
        n_channels, n_classes = len(first.channels), len(spec.classes)
        networks = fold_networks(
            settings, folder, chosen[0].scan, n_channels, n_classes, device, models
        )
        for offset in range(0, len(chosen), scans_per_call):
            part = chosen[offset : offset + scans_per_call]
            maps_list = attribute_scans(
                settings, part, grids, networks, models, device, spec.classes
            )
            if references is not None:
                with_reference = [i for i, p in enumerate(part) if p.scan.scan_id in on_grid]
                found = reference_scans(
                    settings,
                    [part[i] for i in with_reference],
                    grids,
                    networks,
                    models,
                    device,
                    spec.classes,
                    references,
                )
                for i, (volume, record) in zip(with_reference, found, strict=True):
                    maps_list[i].reference, maps_list[i].reference_record = volume, record
                    written[f"igreference_{part[i].scan.scan_id}"] = map_path(
                        settings.output_dir, scan_entities(part[i].scan), "IGreference"
                    )
            for maps in maps_list:
                results.append(maps)
                written.update(_paths(maps))
                _log_progress(len(results), len(plans), maps, spec.classes)
    if truth is None:
        truth = planted_regions(settings.bids_dir)
    written.update(summarise_cohort(settings, results, spec, truth))
    folder = GroupFiles(settings.output_dir).attribution
    LOGGER.info("attribution done in %.0f s: %s", time.perf_counter() - start, folder)
    return written


@dataclass
class _Pending:
    """A scan whose Integrated Gradients are still to compute, and what its sidecar needs."""

    plan: ScanPlan
    grid: CropGrid
    config: dict[str, Any]
    job: IGJob
    check: dict[str, Any]
    seconds: float  # preparing it (loading, the logit check, the baseline)


def attribute_scans(
    settings,
    plans: list[ScanPlan],
    grids: dict[str, CropGrid],
    networks: FoldNetworks,
    models: dict[str, str],
    device: torch.device,
    class_names: list[str] | tuple[str, ...],
) -> list[ScanMaps]:
    """Integrated Gradients (and Grad-CAM) of scans of one fold, written under ``attribution/``.

    Maps already there with the same configuration are read back; the others' Integrated
    Gradients are computed together (:func:`~bids_qnet.attribution.integrated.
    integrated_gradients_many`), each equal to its own call's up to float rounding. A sidecar's
    ``Seconds`` is the scan's own preparation and Grad-CAM plus its share of the shared call.

    Parameters
    ----------
    settings : bids_qnet.config.Settings
        As for :func:`attribute_cohort`.
    plans : list of ScanPlan
        Scans of one fold.
    grids : dict
        Scan id -> crop grid.
    networks : FoldNetworks
        The fold's networks.
    models : dict
        SHA-256 of the fold's checkpoints.
    device : torch.device
        Where to run.
    class_names : sequence of str
        Class names.

    Returns
    -------
    list of ScanMaps
        In the order of ``plans``.
    """
    done: list[ScanMaps | None] = []
    pending: list[tuple[int, _Pending]] = []
    for plan in plans:
        found = _prepare_scan(settings, plan, grids[plan.scan.scan_id], networks, models, device)
        if isinstance(found, ScanMaps):
            done.append(found)
        else:
            pending.append((len(done), found))
            done.append(None)
    computed = integrated_gradients_many(
        networks.scan_model,
        [p.job for _, p in pending],
        settings.attribution.ig_steps,
        networks.image_size,
        device,
        settings.attribution.max_steps,
    )
    for (index, item), (result, batch, share) in zip(pending, computed, strict=True):
        done[index] = _finish_scan(
            settings, item, result, batch, share, networks, models, device, class_names
        )
    return done  # type: ignore[return-value]


def _prepare_scan(settings, plan, grid, networks, models, device) -> ScanMaps | _Pending:
    """Read a scan's maps back when they are current, else its input, baseline and check."""
    entities = scan_entities(plan.scan)
    ig_path = map_path(settings.output_dir, entities, "IG")
    cam_path = map_path(settings.output_dir, entities, "GradCAM")
    config = {
        "Method": "IntegratedGradients",
        "Target": settings.attribution.attribution_target,
        "TargetIndex": plan.target,
        "Baseline": settings.attribution.ig_baseline,
        **model_config(settings, plan, networks, models),
    }
    with_cam = networks.slice_model is not None
    if reusable(ig_path, config) and (not with_cam or is_complete(cam_path)):
        record = json.loads(sidecar_path(ig_path).read_text())
        record.update(ig_path=ig_path, cam_path=cam_path if with_cam else None)
        cam = read_map(cam_path) if with_cam else None
        return ScanMaps(plan, grid, read_map(ig_path), cam, record)
    began = time.perf_counter()
    stored = torch.from_numpy(np.array(plan.scan.load_slices(), dtype=np.float32))[None].to(device)
    x, check = _recomputed(settings, plan, networks.scan_model, stored)
    zooms = grid.zooms  # slice-stack axes (slice, row, column) are (z, y, x)
    sigma = (BLUR_SIGMA_MM / zooms[2], BLUR_SIGMA_MM / zooms[1], BLUR_SIGMA_MM / zooms[0])
    baseline = make_baseline(x, settings.attribution.ig_baseline, sigma)
    job = IGJob(x, baseline, plan.target)
    return _Pending(plan, grid, config, job, check, time.perf_counter() - began)


def _finish_scan(
    settings, item: _Pending, result, batch: int, share: float, networks, models, device, names
) -> ScanMaps:
    """Grad-CAM of a scan, then write its maps and sidecars."""
    import captum

    began = time.perf_counter()
    plan, grid = item.plan, item.grid
    entities = scan_entities(plan.scan)
    ig_path = map_path(settings.output_dir, entities, "IG")
    cam_path = map_path(settings.output_dir, entities, "GradCAM")
    ig = unstack(result.attribution)
    cam = None
    if networks.slice_model is not None:
        with torch.enable_grad():
            cam_slices = grad_cam(
                networks.slice_model, item.job.x[0], plan.cam_target, networks.image_size
            )
        cam = unstack(cam_slices)
    seconds = round(item.seconds + share + time.perf_counter() - began, 2)
    names = list(names)
    common = _common_record(settings, plan, entities, names)
    record = {
        **common,
        "Description": "Integrated Gradients of Q-Net's scan decision (stage-1 network, "
        "Bi-LSTM and, in the quantitative preset, the regional read-out) toward the target "
        "class, on the crop grid; 4th axis = channels",
        "Config": item.config,
        "Implementation": f"captum {captum.__version__}",
        "Output": "centred logit of the target class (logit minus the mean logit over classes)",
        "TargetClass": names[plan.target],
        "AttributedInput": _input_text(settings, networks),
        "BaselineSigmaMillimetres": BLUR_SIGMA_MM
        if settings.attribution.ig_baseline == "blur"
        else None,
        "IntegrationMethod": "gausslegendre",
        "InternalBatchSize": batch,
        **result.record(),
        "Channels": grid.channels,
        "Check": item.check,
        "Device": str(device),
        "Seconds": seconds,
    }
    write_map(ig_path, ig, grid.affine, record)
    if cam is not None:
        cam_meta = _cam_record(settings, plan, common, names, models)
        write_map(cam_path, cam, grid.affine, cam_meta)
    record.update(ig_path=ig_path, cam_path=cam_path if cam is not None else None)
    return ScanMaps(plan, grid, ig, cam, record)


def _common_record(settings, plan: ScanPlan, entities: dict, names: list[str]) -> dict:
    """Return what the sidecars of a scan's maps share: source, space, classes, fold."""
    return {
        "Sources": [f"bids::{plan.scan.slices.relative_to(settings.output_dir).as_posix()}"],
        "SpatialReference": entities.get("space"),
        "TrueClass": names[plan.label],
        "PredictedClass": names[plan.predicted],
        "Fold": plan.fold,
        "Repeat": plan.repeat,
    }


def _cam_record(settings, plan: ScanPlan, common: dict, names: list[str], models: dict) -> dict:
    """Return the sidecar of a scan's Grad-CAM map."""
    import captum

    return {
        **common,
        "Description": "Grad-CAM of the stage-1 ResNetSWA (layer4) per slice, upsampled "
        "bilinearly and carried back to the slice grid, stacked on the crop grid",
        "Method": "LayerGradCam",
        "Layer": "layer4",
        "Target": settings.attribution.attribution_target,
        "TargetClass": names[plan.cam_target],
        "Implementation": f"captum {captum.__version__}",
        "ModelSHA256": models,
    }


def _paths(maps: ScanMaps) -> dict[str, Path]:
    """Return the maps a scan's attribution wrote, keyed ``ig_<scan>`` and ``gradcam_<scan>``."""
    scan_id, record = maps.plan.scan.scan_id, maps.record
    paths = {f"ig_{scan_id}": record["ig_path"]}
    if record.get("cam_path"):
        paths[f"gradcam_{scan_id}"] = record["cam_path"]
    return paths


def _announce(settings, n_scans: int, device) -> None:
    attribution = settings.attribution
    LOGGER.info(
        "attribution: Integrated Gradients (%d steps, %s baseline, %s class) for %d scans on %s",
        attribution.ig_steps,
        attribution.ig_baseline,
        attribution.attribution_target,
        n_scans,
        device,
    )
    if settings.training.stage1 != "train":
        LOGGER.info("attribution: no Grad-CAM: with --stage1 frozen there is no stage-1 classifier")


def _recomputed(settings, plan: ScanPlan, model, stored: torch.Tensor):
    """Recompute the scan's Q-Net logits from its stored slices and compare them.

    Returns the network's input and the check recorded in the sidecar (with a frozen stage 1,
    also how far the rebuilt backbone's embeddings are from the stored ones).
    """
    check: dict[str, Any] = {}
    if settings.training.stage1 != "train":
        check["EmbeddingDeviation"] = check_embeddings(model, plan.scan, stored)
    x = model.to_input(stored)
    with torch.no_grad():
        logits = model(x)[0].float().cpu().numpy()
    difference = float(np.abs(logits - plan.logits).max())
    check.update(RecomputedLogits=logits.tolist(), StoredLogits=plan.logits.tolist())
    check["MaxAbsDifference"] = difference
    if difference > LOGIT_TOLERANCE:
        LOGGER.warning(
            "%s: recomputed Q-Net logits differ from the stored ones by %.3g",
            plan.scan.scan_id,
            difference,
        )
    return x, check


def planted_regions(bids_dir: Path) -> list[str] | None:
    """Return the demo's planted regions from ``<bids_dir>_truth/truth.json``, if present."""
    path = Path(bids_dir).with_name(Path(bids_dir).name + "_truth") / "truth.json"
    if not path.is_file():
        return None
    try:
        regions = json.loads(path.read_text())["settings"]["planted_regions"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        LOGGER.warning("cannot read the planted regions from %s", path)
        return None
    LOGGER.info("attribution: ground truth %s: planted regions %s", path, ", ".join(regions))
    return [str(r) for r in regions]


def _references(plans, grids, n_classes):
    """Class references over the scans on the most common crop grid (and those scans' ids)."""
    keys = {sid: (g.shape, tuple(np.round(g.affine, 3).ravel())) for sid, g in grids.items()}
    common = Counter(keys.values()).most_common(1)[0][0]
    on_grid = {sid for sid, key in keys.items() if key == common}
    by_class = {
        k: [p.scan for p in plans if p.label == k and p.scan.scan_id in on_grid]
        for k in range(n_classes)
    }
    references = class_references(by_class)
    if references is None:
        LOGGER.warning("attribution: one class only, no class-reference attribution")
    return references, on_grid


def _log_progress(done: int, total: int, maps: ScanMaps, classes) -> None:
    plan, record = maps.plan, maps.record
    text = (
        f"attribution {done}/{total}: {plan.scan.scan_id} (fold {plan.fold}) toward "
        f"{classes[plan.target]}, {_check_text(record)}"
    )
    if maps.reference_record is not None:
        text += f"; from the other classes' mean: {_check_text(maps.reference_record)}"
    progress = {
        "bar": "attribution",
        "desc": "attribution",
        "completed": done,
        "total": total,
        "status": plan.scan.scan_id,
        "close": done == total,
    }
    converged = record.get("Converged", True) and (
        maps.reference_record is None or maps.reference_record.get("Converged", True)
    )
    if converged:
        LOGGER.info(text, extra={"progress": progress})
    else:
        LOGGER.warning(
            "%s: not converged (relative delta above 5 %% at the most steps; raise --ig-max-steps)",
            text,
            extra={"progress": progress},
        )


def _check_text(record: dict) -> str:
    """``delta D (R%)[, N steps], S s`` of a map's sidecar; the steps when more than asked."""
    steps = record.get("StepsUsed")
    asked = record.get("Config", {}).get("Steps")
    more = f", {steps} steps" if steps is not None and asked is not None and steps > asked else ""
    return (
        f"delta {record['ConvergenceDelta']:.3g} ({100 * record['RelativeDelta']:.1f}%){more}, "
        f"{record['Seconds']:.1f} s"
    )


def _input_text(settings, networks: FoldNetworks) -> str:
    if settings.training.stage1 != "train":
        return "stored slices (the participant-level input of the frozen backbone)"
    if networks.scan_model.stretch is None:
        return "stored slices in their units (the regional network standardises them itself)"
    return "stored slices after the stage-1 per-image 1st-99th percentile stretch"
