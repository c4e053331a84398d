"""The stage-1 image-level classifier: a ResNet18 backbone followed by one linear layer.

The backbone (and its weights: ImageNet, random or a file, never downloaded) comes from
:func:`bids_qnet.models.embedding.load_backbone`; removing the head gives the 512-d
global-average-pooled image embedding that stage 2 feeds to its Bi-LSTM.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.models.embedding import EMBEDDING_DIM, WeightsInfo, load_backbone

logger = logging.getLogger(__name__)

#: Offset added to ``seed`` for the head's initialisation, so that it does not repeat the
#: random stream the backbone drew from the same seed.
HEAD_SEED_OFFSET = 1


def build_classifier(
    n_channels: int, n_classes: int, weights: str, seed: int
) -> tuple[nn.Module, WeightsInfo]:
    """Build a ResNet18 classifier: backbone from ``load_backbone`` plus a fresh linear head.

    Parameters
    ----------
    n_channels : int
        Input channels (QSM, R2*, T1w: 3); conv1 is adapted as
        :func:`bids_qnet.models.embedding.load_backbone` describes.
    n_classes : int
        Number of classes K (at least 2).
    weights : str
        ``"imagenet"``, ``"random"`` or the path of a ResNet18 state dict (see
        :func:`bids_qnet.models.embedding.load_backbone`; a head in the file is ignored).
    seed : int
        Seeds a random backbone and the head (``nn.Linear(512, K)``'s default
        initialisation, drawn from ``seed + HEAD_SEED_OFFSET``). The global torch RNG state is
        left as it was.

    Returns
    -------
    model : torch.nn.Module
        ResNet18 (:class:`bids_qnet.models.backbone.ResNet18`, torchvision's network and
        state-dict layout) whose ``fc`` is the new head; ``model(x)`` gives ``(B, K)``
        logits. On the CPU, in eval mode (call ``train()`` to fine-tune).
    info : WeightsInfo
        Where the backbone's weights came from.

    Raises
    ------
    UsageError
        If ``n_classes`` is below 2 (or ``n_channels`` below 1).
    MissingInputError, InputDataError
        From :func:`bids_qnet.models.embedding.load_backbone`.
    """
    if int(n_classes) < 2:
        raise UsageError(f"n_classes must be at least 2, got {n_classes}")
    model, info = load_backbone(weights, int(n_channels), int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + HEAD_SEED_OFFSET)
        model.fc = nn.Linear(EMBEDDING_DIM, int(n_classes))
    model.eval()
    logger.debug("classifier: ResNet18 (%s) + Linear(512, %d)", info.source, int(n_classes))
    return model, info


def features(model: nn.Module) -> nn.Module:
    """Return the same network with its head replaced by ``Identity`` (the 512-d embedding).

    The result is a shallow copy of ``model``: every layer but ``fc`` is the very same module
    object, so parameters, buffers and their updates are shared (no memory is copied) and
    ``model`` keeps its head. It is still a ``ResNet18`` (``conv1`` and the other
    attributes are there), so it works with :func:`bids_qnet.models.embedding.embed_slices`.
    Nothing is frozen here (``requires_grad`` would be shared with ``model``): for frozen
    embeddings run it in eval mode under ``torch.inference_mode()``. Note that
    ``train()``/``eval()`` on either network switches the shared layers of both.

    Parameters
    ----------
    model : torch.nn.Module
        A network with an ``fc`` head, e.g. from :func:`build_classifier`; an
        ``AveragedModel`` is unwrapped to its ``module``.

    Returns
    -------
    torch.nn.Module
        ``(B, C, H, W) -> (B, 512)``.

    Raises
    ------
    UsageError
        If ``model`` has no ``fc`` attribute.
    """
    if isinstance(model, torch.optim.swa_utils.AveragedModel):
        model = model.module
    if not isinstance(getattr(model, "fc", None), nn.Module):
        raise UsageError(f"{type(model).__name__} has no fc head to remove")
    trunk = copy.copy(model)
    # copy.copy shares the registries; give the copy its own so that replacing fc (or
    # registering anything later) leaves the original alone.
    for registry in ("_modules", "_parameters", "_buffers"):
        setattr(trunk, registry, copy.copy(getattr(model, registry)))
    trunk.fc = nn.Identity()
    return trunk


def load_classifier(state: dict, n_channels: int, n_classes: int) -> nn.Module:
    """Rebuild a classifier from a state dict (e.g. stage 1's ``swa_state`` or ``last_state``).

    Parameters
    ----------
    state : dict
        A state dict of :func:`build_classifier`'s network; an ``AveragedModel``'s own state
        (``module.`` prefix, ``n_averaged``) is accepted too.
    n_channels, n_classes : int
        As for :func:`build_classifier`.

    Returns
    -------
    torch.nn.Module
        The classifier on the CPU, in eval mode.

    Raises
    ------
    InputDataError
        If the state does not fit a ResNet18 with that many channels and classes.
    """
    model, _ = build_classifier(n_channels, n_classes, "random", 0)
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[0]
        raise InputDataError(f"state does not fit the stage-1 classifier: {message}") from exc
    return model.eval()
