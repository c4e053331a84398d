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
from bids_qnet.derivatives import sidecar_path
from bids_qnet.errors import InputDataError
from bids_qnet.group_inputs import Scan
from bids_qnet.integrity import file_sha256
from bids_qnet.models.qnet import QNet

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
    try:
        recorded = json.loads((folder / "done.json").read_text()).get("SHA256") or {}
    except (OSError, json.JSONDecodeError):
        recorded = {}
    names = [n for n in ("ResNetSWA.pt", "QNet.pt") if (folder / n).is_file()]
    return {
        n: recorded[n] if isinstance(recorded.get(n), str) else file_sha256(folder / n)
        for n in names
    }


def load_qnet(path: Path, n_classes: int, sha256: str | None = None) -> QNet:
    """Load a fold's ``QNet.pt`` (stage-2 defaults for the hidden size and dropout)."""
    from bids_qnet.training.stage1 import load_state
    from bids_qnet.training.stage2 import Stage2Config, build_qnet

    state = load_state(path, sha256)
    try:
        in_features = int(state["lstm.weight_ih_l0"].shape[1])
        model = build_qnet(n_classes, Stage2Config(), in_features)
        model.load_state_dict(state)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise InputDataError(
            f"{path} does not fit a Q-Net with {n_classes} classes: {exc}"
        ) from exc
    return model.eval()


def trained_networks(
    folder: Path, n_channels: int, n_classes: int, image_size: int, sums: dict | None = None
) -> FoldNetworks:
    """Networks of a fold trained with ``--stage1 train`` (``ResNetSWA.pt`` and ``QNet.pt``).

    ``sums``: expected SHA-256 per file name; a checkpoint that differs is refused.
    """
    from bids_qnet.models.resnet import features
    from bids_qnet.training.stage1 import load_classifier, load_state

    sums = sums or {}
    state = load_state(folder / "ResNetSWA.pt", sums.get("ResNetSWA.pt"))
    classifier = load_classifier(state, n_channels, n_classes)
    geometry, normalise = stage1_geometry(image_size, n_channels)
    qnet = load_qnet(folder / "QNet.pt", n_classes, sums.get("QNet.pt"))
    scan_model = SliceToScan(features(classifier), qnet, geometry, normalise, stretch=True)
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
    logs = sorted((scan.slices.parents[1] / "log").glob("*/bids_qnet_settings*.json"))
    if scan.session:
        logs = [p for p in logs if p.name == f"bids_qnet_settings_ses-{scan.session}.json"]
    for path in reversed(logs):
        saved = json.loads(path.read_text())
        if saved.get("image_size") == image_size and saved.get("random_seed") is not None:
            seed = int(saved["random_seed"])
            break
    return BackboneSpec(str(weights), int(seed), int(image_size))


def frozen_networks(
    folder: Path, spec: BackboneSpec, n_channels: int, n_classes: int, sums: dict | None = None
) -> FoldNetworks:
    """Networks of a fold trained with ``--stage1 frozen``: participant backbone + ``QNet.pt``."""
    from bids_qnet.embed import load_backbone

    backbone, _ = load_backbone(spec.weights, n_channels, spec.seed)
    geometry, normalise = participant_geometry(spec.image_size, n_channels)
    qnet = load_qnet(folder / "QNet.pt", n_classes, (sums or {}).get("QNet.pt"))
    scan_model = SliceToScan(backbone, qnet, geometry, normalise, stretch=False)
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
    """Return the networks of the fold in ``folder`` for ``settings.stage1``, on ``device``."""
    if settings.stage1 == "train":
        networks = trained_networks(folder, n_channels, n_classes, settings.image_size, sums)
    else:
        spec = backbone_spec(scan, settings.random_seed)
        networks = frozen_networks(folder, spec, n_channels, n_classes, sums)
    _to(networks.scan_model, device)
    if networks.slice_model is not None:
        _to(networks.slice_model, device)
    return networks


def _to(model: nn.Module, device: torch.device) -> None:
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
