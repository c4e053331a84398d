"""Group outputs of the attribution: class-average maps, the region table, localisation, figures."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_qnet.attribution import regions as reg
from bids_qnet.attribution.integrated import CONVERGENCE_TOLERANCE
from bids_qnet.attribution.outputs import label_value, map_path, write_map, write_region_table
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.preprocess.crop_grid import space_entities
from bids_qnet.training.registry import SCAN_MODEL

LOGGER = logging.getLogger(__name__)


def orient(maps: np.ndarray, targets: np.ndarray, positive: int | None) -> np.ndarray:
    """Turn maps toward the positive class (two classes: the centred logits are opposite).

    Parameters
    ----------
    maps : numpy.ndarray
        ``(N, ...)`` maps, each toward ``targets[n]``.
    targets : numpy.ndarray
        Target class index of each map.
    positive : int or None
        Positive class (two classes); None leaves the maps as they are.
    """
    if positive is None:
        return maps
    signs = np.where(np.asarray(targets) == positive, 1.0, -1.0).astype(maps.dtype)
    return maps * signs.reshape(-1, *([1] * (maps.ndim - 1)))


def summarise_cohort(settings, results: list, spec, truth: list[str] | None) -> dict[str, Path]:
    """Write class-average maps, the region table (+ localisation) and the figures.

    Parameters
    ----------
    settings : bids_qnet.config.Settings
        Output folder and attribution settings.
    results : list of ScanMaps
        From :func:`bids_qnet.attribution.cohort.attribute_scans`.
    spec : bids_qnet.inputs.labels.LabelSpec
        Class names and the positive class.
    truth : list of str or None
        Regions known to carry the effect.

    Returns
    -------
    dict of str to Path
    """
    kept = _common_grid(results)
    grid = kept[0].grid
    classes = list(spec.classes)
    positive = classes.index(spec.positive) if len(classes) == 2 else None
    base = _group_metadata(settings, kept)
    written, class_maps, contrast = write_group_maps(settings, kept, classes, positive, base)
    ranked, ranked_on = _ranking_maps(kept)
    labels = np.array([r.plan.label for r in ranked])
    oriented = orient(
        np.stack([r.reference if ranked_on == "IGreference" else r.ig for r in ranked]),
        np.array([r.plan.label if ranked_on == "IGreference" else r.plan.target for r in ranked]),
        positive,
    )
    if ranked_on == "IGreference":
        written.update(write_reference_maps(settings, ranked, oriented, classes, positive))

    table = reg.region_table(
        oriented,
        labels,
        classes,
        grid.channels,
        grid.labels,
        grid.names,
        float(np.prod(grid.zooms)),
        positive,
        reg.MIN_VOLUME_MM3,
    )
    meta = _table_metadata(base, grid, ranked, ranked_on, classes, positive)
    meta["Reliability"] = reliability(settings.output_dir, ranked, ranked_on)
    record_reliability(settings.output_dir, meta["Reliability"])
    if truth:
        meta["Localisation"] = localisation_report(oriented, labels, positive, grid, table, truth)
        LOGGER.info("attribution: %s", meta["Localisation"]["Summary"])
    written["regions"] = write_region_table(settings.output_dir, table, meta)
    LOGGER.info("attribution: top regions %s", ", ".join(table["region"].head(5)))
    maps = (class_maps, contrast, oriented, labels)
    figures = _cohort_figures(settings, kept, table, maps, ranked_on, classes, positive, truth)
    written.update(figures)
    return written


def record_reliability(output_dir: Path, checks: dict[str, Any]) -> None:
    """Put :func:`reliability`'s warnings in the group run's warnings table.

    The table logs each one and the report shows it; the convergence warning names the scans.
    """
    from bids_qnet.outputs.warnings import record_warning

    unconverged = checks.get("Unconverged") or []
    for line in checks.get("Warnings") or []:
        if unconverged and "did not converge" in line:
            line += f" ({', '.join(unconverged)})"
        record_warning(output_dir, "attribution", line)


def reliability(output_dir: Path, ranked: list, ranked_on: str) -> dict[str, Any]:
    """Say whether the ranked maps can be read as findings.

    Two checks: every map's Integrated Gradients converged (relative delta at most
    :data:`~bids_qnet.attribution.integrated.CONVERGENCE_TOLERANCE`), and the explained model
    (Q-Net, scan level) is better than chance: the lower end of its bootstrap 95 % CI of the
    AUC (``desc-bootstrap_ci.tsv``) is above 0.5. Maps of a model at chance explain noise.

    Returns
    -------
    dict
        ``Unconverged`` (scan ids), ``ConvergenceTolerance``, ``ModelAUC`` and ``ModelAUCCI``
        (None when unknown), ``AtChance``, ``Reliable`` and ``Warnings`` (sentences).
    """
    key = "reference_record" if ranked_on == "IGreference" else "record"
    unconverged = [
        r.plan.scan.scan_id for r in ranked if not (getattr(r, key) or {}).get("Converged", True)
    ]
    auc, interval = scan_auc_interval(output_dir, SCAN_MODEL)
    at_chance = interval is not None and interval[0] <= 0.5
    warnings = []
    if at_chance:
        warnings.append(
            f"Q-Net's scan-level AUC is {auc:.2f} with a 95 % CI of [{interval[0]:.2f}, "
            f"{interval[1]:.2f}], which includes chance (0.5): the attribution maps explain a "
            "model that does not separate the groups; do not read the region ranking as findings"
        )
    if unconverged:
        warnings.append(
            f"Integrated Gradients did not converge for {len(unconverged)} of {len(ranked)} "
            f"scans (relative delta above {CONVERGENCE_TOLERANCE:.0%} at the most steps): "
            "raise --ig-max-steps"
        )
    return {
        "ConvergenceTolerance": CONVERGENCE_TOLERANCE,
        "Unconverged": unconverged,
        "ModelAUC": auc,
        "ModelAUCCI": list(interval) if interval is not None else None,
        "AtChance": bool(at_chance),
        "Reliable": not warnings,
        "Warnings": warnings,
    }


def scan_auc_interval(
    output_dir: Path, model: str
) -> tuple[float | None, tuple[float, float] | None]:
    """Return a model's scan-level AUC and bootstrap 95 % CI (None, None when not written)."""
    path = GroupFiles(Path(output_dir)).bootstrap_ci
    if not path.is_file():
        return None, None
    table = pd.read_csv(path, sep="\t")
    row = table[(table["level"] == "scan") & (table["model"] == model)]
    if row.empty or row[["ci_low", "ci_high"]].isna().any(axis=None):
        return None, None
    first = row.iloc[0]
    return float(first["auc"]), (float(first["ci_low"]), float(first["ci_high"]))


def _table_metadata(base, grid, ranked, ranked_on, classes, positive) -> dict[str, Any]:
    """Return the region table's sidecar: how its maps were made, ranked and oriented."""
    meta: dict[str, Any] = {**base, "Atlas": grid.atlas_name, "Ranking": _ranking_text()}
    meta["RankedOn"] = f"desc-{ranked_on} maps of {len(ranked)} scans"
    if ranked_on == "IGreference":
        meta["RankedOn"] += (
            " (Integrated Gradients toward the true class from the mean stored slices of the "
            "other classes, through the whole network)"
        )
        meta["ReferenceDeltas"] = {
            r.plan.scan.scan_id: r.reference_record["ConvergenceDelta"] for r in ranked
        }
    meta["Orientation"] = (
        f"maps turned toward the positive class {classes[positive]}"
        if positive is not None
        else "maps toward each participant's target class"
    )
    return meta


def _cohort_figures(settings, kept, table, maps, ranked_on, classes, positive, truth):
    """Draw the region bar plot, the IG overlay and (with a stage 1) the Grad-CAM overlay."""
    from bids_qnet.attribution import figures

    class_maps, contrast, oriented, labels = maps
    grid, files, written = kept[0].grid, GroupFiles(settings.output_dir), {}
    written["barplot"] = figures.region_barplot(
        table,
        grid.channels,
        files.ig_regions_barplot,
        truth,
        _contrast_title(classes, positive),
    )
    baseline = f"{settings.attribution.ig_baseline} baseline"
    panels = {f"class {k}, {baseline}, toward its target": v.sum(0) for k, v in class_maps.items()}
    if contrast is not None:
        other = _other(classes, positive)
        title = f"{classes[positive]} - {other}, {baseline}, toward {classes[positive]}"
        panels[title] = contrast.sum(axis=0)
    if ranked_on == "IGreference":
        if positive is not None:
            other = _other(classes, positive)
            title = f"ranked map: {classes[positive]} - {other}, from the other class's mean"
            panels[title] = _class_contrast(oriented, labels, positive).sum(axis=0)
        else:
            panels["ranked map: toward the true class, from the other classes' mean"] = (
                oriented.mean(axis=0).sum(axis=0)
            )
    background, top = _background(kept), list(table["region"].head(4))
    regions = settings.preprocessing.crop_regions
    written["igoverlay"] = figures.overlay(
        background,
        panels,
        grid,
        top,
        files.ig_overlay,
        "Integrated Gradients relevance",
        signed=True,
        level_regions=regions,
    )
    cams = _cam_means(kept, classes)
    if cams:
        written["gradcamoverlay"] = figures.overlay(
            background,
            {f"class {k}": v for k, v in cams.items()},
            grid,
            top,
            files.gradcam_overlay,
            "Grad-CAM (ResNetSWA layer4)",
            signed=False,
            level_regions=regions,
        )
    return written


def write_group_maps(settings, kept, classes, positive, base):
    """Write the IG class averages (all, correctly classified), the contrast, Grad-CAM means.

    Returns
    -------
    written : dict of str to Path
    class_maps : dict of str to numpy.ndarray
        ``(C, X, Y, Z)`` IG average per class (toward each participant's target).
    contrast : numpy.ndarray or None
        ``(C, X, Y, Z)`` positive-class minus other-class average, toward the positive class.
    """
    out, grid = settings.output_dir, kept[0].grid
    entities = space_entities(kept[0].plan.scan.slices)
    ig = np.stack([r.ig for r in kept])
    labels = np.array([r.plan.label for r in kept])
    correct = np.array([r.plan.correct for r in kept])
    written: dict[str, Path] = {}
    class_maps: dict[str, np.ndarray] = {}
    toward_target = "toward each participant's target class"
    for k, name in enumerate(classes):
        for subset, suffix in ((labels == k, ""), ((labels == k) & correct, "correct")):
            if not subset.any():
                continue
            desc = f"IGclass{label_value(name)}{suffix}"
            mean = ig[subset].mean(axis=0)
            meta = {**base, **_members(kept, subset), "Class": name, "CorrectOnly": bool(suffix)}
            meta["Orientation"] = toward_target
            written[desc] = write_map(map_path(out, entities, desc), mean, grid.affine, meta)
            if not suffix:
                class_maps[name] = mean
    contrast = None
    if positive is not None and len(set(labels.tolist())) == 2:
        oriented = orient(ig, np.array([r.plan.target for r in kept]), positive)
        contrast = oriented[labels == positive].mean(axis=0) - oriented[labels != positive].mean(
            axis=0
        )
        meta = {**base, **_members(kept, np.ones(len(kept), bool))}
        meta["Orientation"] = (
            f"toward {classes[positive]}: the {classes[positive]} average minus the "
            f"{_other(classes, positive)} average"
        )
        path = map_path(out, entities, "IGcontrast")
        written["IGcontrast"] = write_map(path, contrast, grid.affine, meta)
    for name, mean in _cam_means(kept, classes).items():
        desc = f"GradCAMclass{label_value(name)}"
        cams = [r for r in kept if r.cam is not None]
        subset = np.array([classes[r.plan.label] == name for r in cams])
        meta = {**base, **_members(cams, subset), "Class": name}
        meta.update(Method="LayerGradCam", Layer="layer4", Orientation=toward_target)
        for key in ("Baseline", "Steps", "Output", "ConvergenceDeltas"):
            meta.pop(key, None)
        written[desc] = write_map(map_path(out, entities, desc), mean, grid.affine, meta)
    return written, class_maps, contrast


def write_reference_maps(settings, ranked, oriented, classes, positive) -> dict[str, Path]:
    """Write the class averages of the class-reference maps (and their two-class contrast)."""
    out, grid = settings.output_dir, ranked[0].grid
    entities = space_entities(ranked[0].plan.scan.slices)
    labels = np.array([r.plan.label for r in ranked])
    base = {
        "Method": "IntegratedGradients",
        "Baseline": "mean stored slices of the other classes",
        "Target": "true",
        "Steps": int(settings.attribution.ig_steps),
        "Output": "centred logit of the true class",
        "Channels": grid.channels,
        "ConvergenceDeltas": {
            r.plan.scan.scan_id: r.reference_record["ConvergenceDelta"] for r in ranked
        },
        "Orientation": "toward each participant's true class",
    }
    written = {}
    for k, name in enumerate(classes):
        subset = labels == k
        if subset.any():
            desc = f"IGreferenceclass{label_value(name)}"
            mean = np.stack([r.reference for r, s in zip(ranked, subset, strict=True) if s])
            meta = {**base, **_members(ranked, subset), "Class": name}
            path = map_path(out, entities, desc)
            written[desc] = write_map(path, mean.mean(axis=0), grid.affine, meta)
    if positive is not None and len(set(labels.tolist())) == 2:
        meta = {**base, **_members(ranked, np.ones(len(ranked), bool))}
        meta["Orientation"] = (
            f"toward {classes[positive]}: the {classes[positive]} average minus the "
            f"{_other(classes, positive)} average (the map the region table ranks)"
        )
        path = map_path(out, entities, "IGreferencecontrast")
        contrast = _class_contrast(oriented, labels, positive)
        written["IGreferencecontrast"] = write_map(path, contrast, grid.affine, meta)
    return written


def _ranking_maps(kept) -> tuple[list, str]:
    """Return the scans and the maps to rank: the class-reference maps where they exist."""
    ranked = [r for r in kept if r.reference is not None]
    if ranked and len({r.plan.label for r in ranked}) >= 2:
        return ranked, "IGreference"
    LOGGER.warning("attribution: no class-reference maps; the region table ranks desc-IG maps")
    return kept, "IG"


def _class_contrast(oriented, labels, positive) -> np.ndarray:
    return oriented[labels == positive].mean(axis=0) - oriented[labels != positive].mean(axis=0)


def localisation_report(oriented, labels, positive, grid, table, truth) -> dict[str, Any]:
    """Relevance mass and rank accuracy of the known regions, and whether they rank first.

    Scored maps (channels summed): ``contrast`` (two classes: positive-class average minus
    the other's, toward the positive class), ``positive_class`` (its average alone) and ``all``.
    """
    maps = {"all": oriented.mean(axis=0).sum(axis=0)}
    if positive is not None and (labels == positive).any():
        maps["positive_class"] = oriented[labels == positive].mean(axis=0).sum(axis=0)
        if (labels != positive).any():
            other = oriented[labels != positive].mean(axis=0).sum(axis=0)
            maps["contrast"] = maps["positive_class"] - other
    scores = {k: reg.localisation(v, grid.labels, grid.names, truth) for k, v in maps.items()}
    regions = table.set_index("region")["rank"]
    ranks = {r: int(regions[r]) for r in truth if r in regions.index}
    first = reg.planted_rank_first(table, truth)
    key = "contrast" if "contrast" in scores else "all"
    summary = (
        f"known regions {', '.join(truth)}: ranks {ranks}, rank first: {first}; relevance mass "
        f"accuracy {scores[key]['mass_accuracy']:.3f}, rank accuracy "
        f"{scores[key]['rank_accuracy']:.3f} ({key} map)"
    )
    return {
        "Regions": list(truth),
        "Ranks": ranks,
        "RankFirst": first,
        "Maps": scores,
        "Summary": summary,
    }


def _common_grid(results: list) -> list:
    """Keep the scans on the most common crop grid (warn about the others)."""
    keys = [(r.grid.shape, tuple(np.round(r.grid.affine, 3).ravel())) for r in results]
    common = Counter(keys).most_common(1)[0][0]
    kept = [r for r, key in zip(results, keys, strict=True) if key == common]
    if len(kept) < len(results):
        LOGGER.warning(
            "attribution: %d scan(s) on another crop grid left out of the group outputs",
            len(results) - len(kept),
        )
    return kept


def _cam_means(kept, classes) -> dict[str, np.ndarray]:
    cams = [r for r in kept if r.cam is not None]
    means = {}
    for k, name in enumerate(classes):
        chosen = [r.cam for r in cams if r.plan.label == k]
        if chosen:
            means[name] = np.mean(chosen, axis=0)
    return means


def _group_metadata(settings, kept) -> dict[str, Any]:
    relative = [r.record["RelativeDelta"] for r in kept]
    return {
        "Method": "IntegratedGradients",
        "Target": settings.attribution.attribution_target,
        "Baseline": settings.attribution.ig_baseline,
        "Steps": int(settings.attribution.ig_steps),
        "Output": "centred logit of the target class",
        "Channels": kept[0].grid.channels,
        "ConvergenceDeltas": {r.plan.scan.scan_id: r.record["ConvergenceDelta"] for r in kept},
        "MaxRelativeDelta": float(np.max(relative)),
        "MedianRelativeDelta": float(np.median(relative)),
    }


def _members(kept, subset) -> dict[str, Any]:
    chosen = [r.plan.scan.scan_id for r, s in zip(kept, subset, strict=True) if s]
    return {"Participants": chosen, "N": len(chosen)}


def _ranking_text() -> str:
    return " ".join(reg.__doc__.split("Ranking. ", 1)[1].split("\n\n", 1)[0].split())


def _other(classes, positive) -> str:
    return next(c for i, c in enumerate(classes) if i != positive)


def _contrast_title(classes, positive) -> str:
    if positive is None:
        return "IG relevance density toward the target class (mean over participants)"
    other = _other(classes, positive)
    return (
        f"IG relevance density per region, {classes[positive]} - {other} "
        "(class-reference Integrated Gradients)"
    )


def _background(kept) -> np.ndarray:
    """Mean T1w (else first channel) crop of up to 20 scans, for display."""
    import nibabel as nib

    channel = "T1w" if "T1w" in kept[0].grid.channels else kept[0].grid.channels[0]
    images = []
    for result in kept[:20]:
        path = result.plan.scan.slices
        crop = path.with_name(path.name.replace("_slices.npy", f"_{channel}.nii.gz"))
        if crop.is_file():
            images.append(np.asarray(nib.load(crop).dataobj, dtype=np.float32))
    return np.mean(images, axis=0) if images else np.zeros(kept[0].grid.shape, np.float32)
