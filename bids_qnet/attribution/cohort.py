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

from bids_qnet.attribution.contrast import class_references, reference_scan
from bids_qnet.attribution.integrated import (
    BLUR_SIGMA_MM,
    grad_cam,
    integrated_gradients,
    internal_batch_size,
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
from bids_qnet.attribution.volumes import CropGrid, crop_grid, unstack
from bids_qnet.derivatives import is_complete, sidecar_path
from bids_qnet.errors import UsageError
from bids_qnet.group_inputs import Scan

LOGGER = logging.getLogger(__name__)
#: Largest difference between recomputed and stored Q-Net scan logits before a warning.
LOGIT_TOLERANCE = 0.05


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
    spec : bids_qnet.labels.LabelSpec
        Class names and the positive class.
    splits, predictions : pandas.DataFrame
        ``desc-cv_splits.tsv`` and ``desc-oof_predictions.tsv``.
    truth : list of str, optional
        Regions known to carry the effect; default: the demo dataset's planted regions when its
        ground truth (``<bids_dir>_truth/truth.json``) exists.

    Returns
    -------
    dict of str to Path
        Every file written, by a short key.
    """
    from bids_qnet.attribution.group import summarise_cohort
    from bids_qnet.embed import resolve_device

    if settings.attribution != "ig":
        raise UsageError(f"--attribution {settings.attribution!r} is not one of ig, none")
    device = resolve_device(settings.device)
    plans = plan_scans(scans, labels, splits, predictions, settings.attribution_target)
    LOGGER.info(
        "attribution: Integrated Gradients (%d steps, %s baseline, %s class) for %d scans on %s",
        settings.ig_steps,
        settings.ig_baseline,
        settings.attribution_target,
        len(plans),
        device,
    )
    if settings.stage1 != "train":
        LOGGER.info("attribution: no Grad-CAM: with --stage1 frozen there is no stage-1 classifier")
    results: list[ScanMaps] = []
    written: dict[str, Path] = {}
    start = time.perf_counter()
    grids = {p.scan.scan_id: crop_grid(p.scan, settings.output_dir) for p in plans}
    references, on_grid = _references(plans, grids, len(spec.classes))
    for fold in sorted({p.fold for p in plans}):
        chosen = [p for p in plans if p.fold == fold]
        folder = settings.output_dir / "models" / f"repeat-{chosen[0].repeat}_fold-{fold}"
        networks = None
        for plan in chosen:
            grid = grids[plan.scan.scan_id]
            if networks is None:
                models = checksums(folder)
                if settings.stage1 != "train":
                    models.pop("ResNetSWA.pt", None)
                networks = fold_networks(
                    settings,
                    folder,
                    plan.scan,
                    len(grid.channels),
                    len(spec.classes),
                    device,
                    models,
                )
            maps = attribute_scan(settings, plan, grid, networks, models, device, spec.classes)
            results.append(maps)
            written[f"ig_{plan.scan.scan_id}"] = maps.record["ig_path"]
            if maps.record.get("cam_path"):
                written[f"gradcam_{plan.scan.scan_id}"] = maps.record["cam_path"]
            if references is not None and plan.scan.scan_id in on_grid:
                maps.reference, maps.reference_record = reference_scan(
                    settings, plan, grid, networks, models, device, spec.classes, references
                )
                written[f"igreference_{plan.scan.scan_id}"] = map_path(
                    settings.output_dir, scan_entities(plan.scan), "IGreference"
                )
            _log_progress(len(results), len(plans), maps, spec.classes)
    if truth is None:
        truth = planted_regions(settings.bids_dir)
    written.update(summarise_cohort(settings, results, spec, truth))
    LOGGER.info(
        "attribution done in %.0f s: %s",
        time.perf_counter() - start,
        settings.output_dir / "attribution",
    )
    return written


def attribute_scan(
    settings,
    plan: ScanPlan,
    grid: CropGrid,
    networks: FoldNetworks,
    models: dict[str, str],
    device: torch.device,
    class_names: list[str] | tuple[str, ...],
) -> ScanMaps:
    """Integrated Gradients (and Grad-CAM) of one scan, written under ``attribution/``."""
    import captum

    entities = scan_entities(plan.scan)
    ig_path = map_path(settings.output_dir, entities, "IG")
    cam_path = map_path(settings.output_dir, entities, "GradCAM")
    config = {
        "Method": "IntegratedGradients",
        "Target": settings.attribution_target,
        "TargetIndex": plan.target,
        "Baseline": settings.ig_baseline,
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
    model = networks.scan_model
    check: dict[str, Any] = {}
    if settings.stage1 != "train":
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
    zooms = grid.zooms  # slice-stack axes (slice, row, column) are (z, y, x)
    sigma = (BLUR_SIGMA_MM / zooms[2], BLUR_SIGMA_MM / zooms[1], BLUR_SIGMA_MM / zooms[0])
    baseline = make_baseline(x, settings.ig_baseline, sigma)
    batch = internal_batch_size(x.shape[1], networks.image_size, settings.ig_steps, device)
    result = integrated_gradients(model, x, baseline, plan.target, settings.ig_steps, batch)
    ig = unstack(result.attribution)
    cam = None
    if with_cam:
        with torch.enable_grad():
            cam_slices = grad_cam(networks.slice_model, x[0], plan.cam_target, networks.image_size)
        cam = unstack(cam_slices)
    seconds = round(time.perf_counter() - began, 2)
    names = list(class_names)
    common = {
        "Sources": [f"bids::{plan.scan.slices.relative_to(settings.output_dir).as_posix()}"],
        "SpatialReference": entities.get("space"),
        "TrueClass": names[plan.label],
        "PredictedClass": names[plan.predicted],
        "Fold": plan.fold,
        "Repeat": plan.repeat,
    }
    record = {
        **common,
        "Description": "Integrated Gradients of Q-Net's scan decision (Bi-LSTM and ResNet) "
        "toward the target class, on the crop grid; 4th axis = channels",
        "Config": config,
        "Implementation": f"captum {captum.__version__}",
        "Output": "centred logit of the target class (logit minus the mean logit over classes)",
        "TargetClass": names[plan.target],
        "AttributedInput": _input_text(settings.stage1),
        "BaselineSigmaMillimetres": BLUR_SIGMA_MM if settings.ig_baseline == "blur" else None,
        "IntegrationMethod": "gausslegendre",
        "InternalBatchSize": batch,
        "OutputAtInput": result.output,
        "OutputAtBaseline": result.baseline_output,
        "ConvergenceDelta": result.delta,
        "RelativeDelta": result.relative_delta,
        "Channels": grid.channels,
        "Check": check,
        "Device": str(device),
        "Seconds": seconds,
    }
    write_map(ig_path, ig, grid.affine, record)
    if cam is not None:
        cam_meta = {
            **common,
            "Description": "Grad-CAM of the stage-1 ResNetSWA (layer4) per slice, upsampled "
            "bilinearly and carried back to the slice grid, stacked on the crop grid",
            "Method": "LayerGradCam",
            "Layer": "layer4",
            "Target": settings.attribution_target,
            "TargetClass": names[plan.cam_target],
            "Implementation": f"captum {captum.__version__}",
            "ModelSHA256": models,
        }
        write_map(cam_path, cam, grid.affine, cam_meta)
    record.update(ig_path=ig_path, cam_path=cam_path if cam is not None else None)
    return ScanMaps(plan, grid, ig, cam, record)


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
        f"{classes[plan.target]}, delta {record['ConvergenceDelta']:.3g} "
        f"({100 * record['RelativeDelta']:.1f}%), {record['Seconds']:.1f} s"
    )
    if maps.reference_record is not None:
        ref = maps.reference_record
        text += (
            f"; from the other classes' mean: delta {ref['ConvergenceDelta']:.3g} "
            f"({100 * ref['RelativeDelta']:.1f}%), {ref['Seconds']:.1f} s"
        )
    LOGGER.info(text)


def _input_text(stage1: str) -> str:
    if stage1 == "train":
        return "stored slices after the stage-1 per-image 1st-99th percentile stretch"
    return "stored slices (the participant-level input of the frozen backbone)"
