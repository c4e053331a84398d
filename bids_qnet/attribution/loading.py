"""Rebuild, for each fold, the network that predicted its test participants.

``--stage1 train``: the fold's ``ResNetSWA.pt`` and ``QNet.pt``. ``--stage1 frozen``: the fold's
``QNet.pt`` behind the participant level's backbone, rebuilt from the embeddings' sidecar
(weights, image size) and the participant's saved settings (seed of random weights), and
checked against the stored embeddings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bids_qnet.attribution.network import (
    SliceClassifier,
    SliceToScan,
    participant_geometry,
    stage1_geometry,
)
from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.inputs.scans import Scan
from bids_qnet.models.qnet import QNet
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.integrity import file_sha256
from bids_qnet.outputs.names import ModelFiles, saved_participant_settings
from bids_qnet.training.checkpoints import load_state
from bids_qnet.training.registry import SCAN_MODEL, SLICE_MODEL

LOGGER = logging.getLogger(__name__)

#: Largest relative deviation (Frobenius norm) allowed between the stored participant-level
#: embeddings and those of the rebuilt backbone (bf16 on a GPU vs float32 here stays far below).
EMBEDDING_TOLERANCE = 0.05


@dataclass
class FoldNetworks:
    """The networks of one fold, ready for attribution.

    Attributes
    ----------
    scan_model : SliceToScan
        Stored slices -> Q-Net scan logits.
    slice_model : SliceClassifier or None
        The stage-1 ResNetSWA classifier behind its preprocessing (None with a frozen stage 1).
    image_size : int
        Side of the network input.
    """

    scan_model: SliceToScan
    slice_model: SliceClassifier | None
    image_size: int


def checksums(folder: Path) -> dict[str, str]:
    """Return the SHA-256 of the fold's checkpoints as ``done.json`` records them, else computed."""
    files = ModelFiles(folder)
    try:
        recorded = json.loads(files.done.read_text()).get("SHA256") or {}
    except (OSError, json.JSONDecodeError):
        recorded = {}
    paths = {files.checkpoint_name(m): files.checkpoint(m) for m in (SLICE_MODEL, SCAN_MODEL)}
    return {
        name: recorded[name] if isinstance(recorded.get(name), str) else file_sha256(path)
        for name, path in paths.items()
        if path.is_file()
    }


def load_qnet(
    path: Path, n_classes: int, sha256: str | None = None
) -> tuple[QNet, nn.Module | None]:
    """Load a fold's ``QNet.pt``: the Bi-LSTM (sizes read from the state) and its read-out."""
    from bids_qnet.training.estimators import split_readout
    from bids_qnet.training.stage2 import qnet_from_state

    state, readout = split_readout(load_state(path, sha256))
    try:
        model = qnet_from_state(state, n_classes)
    except UsageError as exc:
        raise InputDataError(
            f"{path} does not fit a Q-Net with {n_classes} classes: {exc}"
        ) from exc
    return model.eval(), readout


def trained_networks(
    folder: Path, n_channels: int, n_classes: int, image_size: int, sums: dict | None = None
) -> FoldNetworks:
    """Networks of a fold trained with ``--stage1 train`` (``ResNetSWA.pt`` and ``QNet.pt``).

    ``sums``: expected SHA-256 per file name; a checkpoint that differs is refused.
    """
    from bids_qnet.models.regional import RegionalNet
    from bids_qnet.training.estimators import load_network
    from bids_qnet.training.stage1 import trunk_of

    sums = sums or {}
    files = ModelFiles(folder)
    checksum = sums.get(files.checkpoint_name(SLICE_MODEL))
    state = load_state(files.checkpoint(SLICE_MODEL), checksum)
    classifier = load_network(state, n_channels, n_classes)
    checksum = sums.get(files.checkpoint_name(SCAN_MODEL))
    qnet, readout = load_qnet(files.checkpoint(SCAN_MODEL), n_classes, checksum)
    if isinstance(classifier, RegionalNet):  # the stored slices as they are; no Grad-CAM
        identity = nn.Identity()
        scan_model = SliceToScan(trunk_of(classifier), qnet, identity, identity, False, readout)
        return FoldNetworks(scan_model, None, int(image_size))
    geometry, normalise = stage1_geometry(image_size, n_channels)
    scan_model = SliceToScan(trunk_of(classifier), qnet, geometry, normalise, True, readout)
    slice_model = SliceClassifier(classifier, geometry, normalise)
    return FoldNetworks(scan_model, slice_model, int(image_size))


@dataclass(frozen=True)
class BackboneSpec:
    """How the participant level embedded the slices (from the embeddings' sidecar)."""

    weights: str
    seed: int
    image_size: int


def backbone_spec(scan: Scan, default_seed: int) -> BackboneSpec:
    """Read how a scan's participant-level embeddings were made.

    The weights and image size come from the embeddings' sidecar; the seed (which matters for
    random weights) from the newest saved participant-level settings that used them, else
    ``default_seed``.
    """
    meta = json.loads(sidecar_path(scan.embeddings).read_text())
    source, image_size = meta.get("Weights"), meta.get("ImageSize")
    if source is None or image_size is None:
        raise InputDataError(
            f"{sidecar_path(scan.embeddings)} lacks Weights/ImageSize: rerun the participant "
            "level, or run the group level with --attribution none"
        )
    weights = meta["WeightsFile"] if source == "file" else source
    seed = default_seed
    participant = scan.slices.parents[2 if scan.session else 1]  # sub-<label>/[ses-<label>/]anat
    for path in reversed(saved_participant_settings(participant, scan.session)):
        saved = json.loads(path.read_text())
        if saved.get("image_size") == image_size and saved.get("random_seed") is not None:
            seed = int(saved["random_seed"])
            break
    return BackboneSpec(str(weights), int(seed), int(image_size))


def frozen_networks(
    folder: Path, spec: BackboneSpec, n_channels: int, n_classes: int, sums: dict | None = None
) -> FoldNetworks:
    """Networks of a fold trained with ``--stage1 frozen``: participant backbone + ``QNet.pt``."""
    from bids_qnet.models.embedding import load_backbone

    backbone, _ = load_backbone(spec.weights, n_channels, spec.seed)
    geometry, normalise = participant_geometry(spec.image_size, n_channels)
    files = ModelFiles(folder)
    checksum = (sums or {}).get(files.checkpoint_name(SCAN_MODEL))
    qnet, readout = load_qnet(files.checkpoint(SCAN_MODEL), n_classes, checksum)
    scan_model = SliceToScan(backbone, qnet, geometry, normalise, False, readout)
    return FoldNetworks(scan_model, None, spec.image_size)


def check_embeddings(model: SliceToScan, scan: Scan, slices: torch.Tensor) -> float:
    """Compare the rebuilt backbone's embeddings with the stored ones; return the deviation.

    Parameters
    ----------
    model : SliceToScan
        With the participant level's backbone.
    scan : Scan
        Provides the stored embeddings.
    slices : Tensor
        ``(1, T, C, H, W)`` stored slices on the model's device.

    Returns
    -------
    float
        ``||rebuilt - stored|| / ||stored||``.

    Raises
    ------
    InputDataError
        When the deviation exceeds :data:`EMBEDDING_TOLERANCE`: the backbone could not be
        rebuilt, and attributions would explain another network.
    """
    stored = torch.from_numpy(np.asarray(scan.load_embeddings(), dtype=np.float32))
    with torch.no_grad():
        rebuilt = model.features(model.to_input(slices))[0].float().cpu()
    if rebuilt.shape != stored.shape:
        raise InputDataError(
            f"{scan.embeddings}: {tuple(stored.shape)} embeddings, rebuilt {tuple(rebuilt.shape)}"
        )
    deviation = float(
        torch.linalg.norm(rebuilt - stored) / torch.linalg.norm(stored).clamp_min(1e-12)
    )
    if deviation > EMBEDDING_TOLERANCE:
        raise InputDataError(
            f"{scan.scan_id}: the participant-level backbone cannot be rebuilt (embeddings "
            f"differ by {deviation:.3g}); rerun the participant level with the same "
            "--embedding-weights and --random-seed, or run the group level with --attribution none"
        )
    return deviation


def fold_networks(
    settings,
    folder: Path,
    scan: Scan,
    n_channels: int,
    n_classes: int,
    device: torch.device,
    sums: dict[str, str] | None = None,
) -> FoldNetworks:
    """Return the networks of the fold in ``folder`` for ``--stage1``, on ``device``."""
    if settings.training.stage1 == "train":
        networks = trained_networks(
            folder, n_channels, n_classes, settings.embedding.image_size, sums
        )
    else:
        spec = backbone_spec(scan, settings.execution.random_seed)
        networks = frozen_networks(folder, spec, n_channels, n_classes, sums)
    _to(networks.scan_model, device)
    if networks.slice_model is not None:
        _to(networks.slice_model, device)
    return networks


def _to(model: nn.Module, device: torch.device) -> None:
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
