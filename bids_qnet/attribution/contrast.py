"""Class-reference Integrated Gradients: why is this participant in its class and not another.

Each scan is explained relative to the mean stored slices of the participants of the *other*
classes (all of them on the crop grid, every fold: the reference is an image, not a model), toward
its own (true) class, through the whole network including the stage-1 per-image stretch (see
:class:`~bids_qnet.attribution.network.StoredToScan`). In template space the slices of all
participants are aligned, so ``x - reference`` is what sets this participant apart from the
other class, and the attributions (summing to the difference of the centred logits) say how
much of the decision each voxel carries. The region table is ranked on these maps: a black or
blurred baseline answers "why this output rather than that of an empty image", which in every
participant credits the structures bright in everyone, and it cannot see through the stretch
(which is blind to scale).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from bids_qnet.attribution.integrated import IGJob, integrated_gradients, integrated_gradients_many
from bids_qnet.attribution.network import StoredToScan
from bids_qnet.attribution.outputs import (
    map_path,
    model_config,
    read_map,
    reusable,
    scan_entities,
    write_map,
)
from bids_qnet.attribution.volumes import unstack
from bids_qnet.errors import InputDataError
from bids_qnet.outputs.derivatives import sidecar_path

LOGGER = logging.getLogger(__name__)
DESC = "IGreference"


@dataclass(frozen=True)
class ClassReferences:
    """The baseline of each class: the mean stored slices of the participants of the others.

    Attributes
    ----------
    slices : dict of int to numpy.ndarray
        Class index -> ``(T, C, H, W)`` float32 mean over the other classes' scans.
    members : dict of int to list of str
        Class index -> the scans averaged.
    digests : dict of int to str
        Class index -> SHA-256 of the reference array (recorded, compared on resume).
    """

    slices: dict[int, np.ndarray]
    members: dict[int, list[str]]
    digests: dict[int, str]


def class_references(scans_by_class: dict[int, list]) -> ClassReferences | None:
    """Average the stored slices per class and build each class's reference.

    Parameters
    ----------
    scans_by_class : dict of int to list of Scan
        Scans on one crop grid, by true class.

    Returns
    -------
    ClassReferences or None
        None with fewer than two classes.
    """
    present = [k for k, scans in scans_by_class.items() if scans]
    if len(present) < 2:
        return None
    sums, counts = {}, {}
    for k in present:
        total = None
        for scan in scans_by_class[k]:
            stack = np.asarray(scan.load_slices(), dtype=np.float64)
            total = stack if total is None else total + stack
        sums[k], counts[k] = total, len(scans_by_class[k])
    slices, members, digests = {}, {}, {}
    for k in present:
        others = [j for j in present if j != k]
        mean = sum(sums[j] for j in others) / sum(counts[j] for j in others)
        slices[k] = mean.astype(np.float32)
        members[k] = sorted(s.scan_id for j in others for s in scans_by_class[j])
        digests[k] = hashlib.sha256(slices[k].tobytes()).hexdigest()
    return ClassReferences(slices, members, digests)


def reference_attribution(model, stored: torch.Tensor, reference: np.ndarray, target: int, steps):
    """Integrated Gradients of one scan from a class reference, the stretch inside the network.

    Parameters
    ----------
    model : SliceToScan
        The fold's network.
    stored : Tensor
        ``(1, T, C, H, W)`` stored slices on the model's device.
    reference : numpy.ndarray
        ``(T, C, H, W)`` baseline (:class:`ClassReferences`).
    target : int
        The scan's true class.
    steps : tuple of int
        ``(n_steps, internal_batch_size)``.

    Returns
    -------
    IGResult
    """
    baseline = torch.from_numpy(reference)[None].to(stored.device, stored.dtype)
    if baseline.shape != stored.shape:
        raise InputDataError(f"reference {tuple(baseline.shape)} vs slices {tuple(stored.shape)}")
    n_steps, batch = steps
    return integrated_gradients(StoredToScan(model), stored, baseline, target, n_steps, batch)


def reference_scans(settings, plans, grids, networks, models, device, names, references):
    """Class-reference Integrated Gradients of scans of one fold, written as ``desc-IGreference``.

    Maps already there with the same configuration are read back; the others are computed
    together (:func:`~bids_qnet.attribution.integrated.integrated_gradients_many`, each equal
    to its own call's up to float rounding).

    Parameters
    ----------
    settings : bids_qnet.config.Settings
        Output folder and ``ig_steps``.
    plans : list of ScanPlan
        The scans (of one fold, on the references' crop grid), their true classes.
    grids : dict
        Scan id -> crop grid.
    networks : FoldNetworks
        The fold's networks.
    models : dict
        SHA-256 of the fold's checkpoints.
    device : torch.device
        Where to run.
    names : sequence of str
        Class names.
    references : ClassReferences
        The baselines.

    Returns
    -------
    list of tuple
        Per plan, in order: ``(volume, record)``, the ``(C, X, Y, Z)`` attributions toward the
        true class and the sidecar.
    """
    out: list = [None] * len(plans)
    pending, jobs = [], []
    wrapped = StoredToScan(networks.scan_model)
    for index, plan in enumerate(plans):
        path = map_path(settings.output_dir, scan_entities(plan.scan), DESC)
        config = {
            "Method": "IntegratedGradients",
            "Baseline": "mean stored slices of the other classes",
            "ReferenceSHA256": references.digests[plan.label],
            "TargetIndex": plan.label,
            **model_config(settings, plan, networks, models),
        }
        if reusable(path, config):
            out[index] = (read_map(path), json.loads(sidecar_path(path).read_text()))
            continue
        began = time.perf_counter()
        stored = torch.from_numpy(np.array(plan.scan.load_slices(), dtype=np.float32))[None]
        stored = stored.to(device)
        baseline = torch.from_numpy(references.slices[plan.label])[None].to(device, stored.dtype)
        if baseline.shape != stored.shape:
            raise InputDataError(
                f"reference {tuple(baseline.shape)} vs slices {tuple(stored.shape)}"
            )
        jobs.append(IGJob(stored, baseline, plan.label))
        pending.append((index, plan, path, config, time.perf_counter() - began))
    computed = integrated_gradients_many(
        wrapped,
        jobs,
        settings.attribution.ig_steps,
        networks.image_size,
        device,
        settings.attribution.max_steps,
    )
    for (index, plan, path, config, seconds), (result, batch, share) in zip(
        pending, computed, strict=True
    ):
        grid = grids[plan.scan.scan_id]
        volume = unstack(result.attribution)
        source = plan.scan.slices.relative_to(settings.output_dir).as_posix()
        record = {
            "Description": "Integrated Gradients of Q-Net's scan decision toward the true "
            "class, from the mean stored slices of the other classes, through the whole network "
            "(the stage-1 per-image stretch included); on the crop grid, 4th axis = channels",
            "Config": config,
            "Sources": [f"bids::{source}"],
            "ReferenceParticipants": references.members[plan.label],
            "TrueClass": names[plan.label],
            "TargetClass": names[plan.label],
            "Output": "centred logit of the true class (logit minus the mean logit over classes)",
            **result.record(),
            "InternalBatchSize": batch,
            "Channels": grid.channels,
            "Device": str(device),
            "Seconds": round(seconds + share, 2),
        }
        write_map(path, volume, grid.affine, record)
        out[index] = (volume, record)
    return out
