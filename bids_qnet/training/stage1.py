"""Q-Net stage 1: train a slice classifier with SWA (ResNet, ResNetSWA); predict, embed.

Two networks (:mod:`bids_qnet.models.presets`): ResNet18 fine-tuned on stretched, resized
slices with the paper's augmentations, or the regional network
(:class:`bids_qnet.models.regional.RegionalNet`) on standardised slices at their own resolution,
shifted by up to a voxel. Both share the epoch loop, the training step, SWA and inference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.models.device import resolve_device
from bids_qnet.models.embedding import EMBEDDING_DIM, WeightsInfo
from bids_qnet.models.regional import RegionalNet
from bids_qnet.models.resnet import build_classifier, features
from bids_qnet.training.augment import RandomShift, test_transform, train_transform

logger = logging.getLogger(__name__)


@dataclass
class Stage1Config:
    """Stage-1 settings; the defaults are the paper's (sized for a GPU).

    ``lr`` is cosine-annealed to ``lr_min`` over ``epochs``; from epoch ``floor(swa_start *
    epochs)`` (0-based; at least the last) the weights are averaged once per epoch and ``SWALR``
    anneals the rate to ``swa_lr = lr_min`` over up to 5 epochs. ``amp``: bf16 autocast, CUDA.
    ``network``: ``resnet18`` or ``regional`` (``width`` feature maps); ``weight_decay`` > 0
    means AdamW; ``augment``: ``paper`` or ``shift`` (:class:`RandomShift`).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-4
    lr_min: float = 1e-4
    swa_start: float = 0.75
    image_size: int = 224
    weights: str = "imagenet"
    seed: int = 42
    device: str = "cpu"
    num_workers: int = 0
    amp: bool = True
    network: str = "resnet18"
    weight_decay: float = 0.0
    augment: str = "paper"
    width: int = 8


@dataclass
class Stage1Result:
    """What :func:`train_stage1` returns (CPU tensors).

    ``last_state``: after the last epoch; ``swa_state``: ``swa_model.module.state_dict()``
    (BatchNorm recomputed); ``history``: per epoch ``epoch`` (from 1), ``loss`` and ``accuracy``
    (augmented batches), ``lr``, ``seconds``, ``swa`` (averaged); ``weights``: initial backbone.
    """

    last_state: dict
    swa_state: dict
    history: list[dict] = field(default_factory=list)
    weights: WeightsInfo | None = None


class _Slices(Dataset):
    def __init__(self, stacks: Sequence[np.ndarray], labels: Sequence[int]) -> None:
        self.stacks, self.labels = list(stacks), [int(v) for v in labels]
        self.index = [(p, s) for p, stack in enumerate(self.stacks) for s in range(len(stack))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        p, s = self.index[i]
        image = np.array(self.stacks[p][s], dtype=np.float32)  # reads one slice of a memmap
        return torch.from_numpy(image), self.labels[p], p, s


def slice_dataset(stacks: Sequence[np.ndarray], labels: Sequence[int]) -> Dataset:
    """One item per slice: ``(image (C, H, W) float32 tensor, label, participant, slice)``.

    Parameters
    ----------
    stacks : sequence of numpy.ndarray
        ``(S, C, H, W)`` arrays; a memmap is read one slice at a time, when the item is asked for.
    labels : sequence of int
        One class index per stack; its slices inherit it.

    Returns
    -------
    torch.utils.data.Dataset
        Items in participant order, then slice order.
    """
    if len(stacks) != len(labels):
        raise InputDataError(f"{len(stacks)} slice stacks but {len(labels)} labels")
    return _Slices(stacks, labels)


def train_stage1(
    stacks: Sequence[np.ndarray],
    labels: Sequence[int],
    n_classes: int,
    config: Stage1Config | None = None,
    progress: Callable[[dict], None] | None = None,
    pooling: np.ndarray | None = None,
) -> Stage1Result:
    """Fine-tune the slice classifier on the training participants (fixed epoch budget).

    Adam, cross-entropy, schedule and SWA as :class:`Stage1Config` says; batches are augmented
    after the move to the device. ``update_bn`` then recomputes the SWA model's BatchNorm
    statistics (``AveragedModel`` copies buffers, it does not average them) on the training
    slices through the **test** transform: the statistics serve at inference, on test-transformed
    slices. Deterministic on the CPU for a seed: the global RNG is seeded inside ``fork_rng``
    (the caller's state is restored) and the shuffle has its own generator. On CUDA the network
    runs channels-last in bf16 autocast and ``cudnn.benchmark`` is switched on (shapes are
    fixed), so GPU runs are fast but not bitwise repeatable.

    Parameters
    ----------
    stacks : sequence of numpy.ndarray
        ``(S, C, H, W)`` float32 slices in [0, 1] per participant, one shape (C, H, W) for all.
    labels : sequence of int
        Class index per participant, in ``0 .. n_classes - 1``.
    n_classes : int
        Number of classes K.
    config : Stage1Config, optional
        Defaults to the paper's settings.
    progress : callable, optional
        Called with each epoch's history record.
    pooling : numpy.ndarray, optional
        ``(T, P, H, W)`` pooling weights per slice position; required by the regional network
        (:func:`bids_qnet.preprocess.regions.slice_pooling_weights`).

    Returns
    -------
    Stage1Result

    Raises
    ------
    InputDataError, UsageError
        For unusable stacks or labels (or fewer than 2 slices); for invalid settings or device.
    """
    c = config = config or Stage1Config()
    sizes_ok = min(c.epochs, c.batch_size, c.image_size) >= 1 and c.num_workers >= 0
    if not (sizes_ok and 0.0 <= c.lr_min <= c.lr and 0.0 <= c.swa_start <= 1.0):
        raise UsageError(f"invalid stage-1 settings: {config}")
    n_channels, dataset = check_stacks(stacks, True), slice_dataset(stacks, labels)
    if len(dataset) < 2 or any(not 0 <= int(v) < int(n_classes) for v in labels):
        raise InputDataError(f"need 2+ slices and labels in 0..{int(n_classes) - 1}")
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(config.seed))
        model, info = _build(config, stacks, n_channels, n_classes, pooling)
        swa_model, history = _fit(model, dataset, n_channels, device, config, progress)
        bn_loader = slice_loader(dataset, config, device, shuffle=False)
        if _uses_positions(model):
            _update_bn_with_positions(bn_loader, swa_model.module, device)
        else:
            prepare = test_transform(config.image_size, n_channels)
            update_bn((prepare(x.to(device)) for x, *_ in bn_loader), swa_model)
    return Stage1Result(_cpu(model), _cpu(swa_model.module), history, info)


def _build(config: Stage1Config, stacks, n_channels: int, n_classes: int, pooling):
    """Build the configured network (under the caller's seeded RNG) and say where it came from."""
    if config.network == "resnet18":
        return build_classifier(n_channels, n_classes, config.weights, config.seed)
    if config.network != "regional":
        raise UsageError(f"unknown stage-1 network {config.network!r}")
    if pooling is None:
        raise UsageError("the regional network needs the atlas regions' pooling weights")
    lengths = {len(stack) for stack in stacks}
    if lengths != {np.shape(pooling)[0]}:
        raise InputDataError(
            "the regional network needs every slice stack to have one slice per atlas slice "
            f"({np.shape(pooling)[0]}); got {sorted(lengths)}"
        )
    model = RegionalNet(n_channels, n_classes, pooling, config.width)
    mean, scale = channel_standardisation(stacks)
    model.set_standardisation(mean, scale)
    return model, None


def channel_standardisation(stacks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and SD of each channel over every slice and pixel of the stacks."""
    count, sums, squares = 0, 0.0, 0.0
    for stack in stacks:
        values = np.asarray(stack, dtype=np.float64)
        sums = sums + values.sum(axis=(0, 2, 3))
        squares = squares + (values**2).sum(axis=(0, 2, 3))
        count += values.shape[0] * values.shape[2] * values.shape[3]
    mean = sums / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def _uses_positions(model: nn.Module) -> bool:
    if isinstance(model, AveragedModel):
        model = model.module
    return bool(getattr(model, "uses_positions", False))


@torch.no_grad()
def _update_bn_with_positions(loader, model: nn.Module, device) -> None:
    """Recompute BatchNorm statistics (cumulative average) over the training slices."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for x, _, _, positions in loader:
        model(x.to(device), positions.to(device))
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a classifier to ``device`` for training (train mode).

    On CUDA the convolutions run channels-last and cuDNN picks its fastest kernels for the
    fixed shapes (``cudnn.benchmark``).
    """
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    amp: bool = True,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One stage-1 optimisation step, as training and the benchmarks run it.

    The batch moves to the device and is augmented there (channels-last on CUDA); the forward
    pass runs in bf16 autocast on CUDA when ``amp``; cross-entropy, backward, optimiser step.
    ``positions``: the slices' positions in their stacks, for networks that pool per region.

    Returns
    -------
    torch.Tensor
        ``(loss x batch size, correct predictions)`` of the batch, on the device (no sync).
    """
    cuda = device.type == "cuda"
    x = augment(x.to(device, non_blocking=True))
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(device, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(amp) and cuda):
        logits = model(x) if positions is None else model(x, positions.to(device))
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    hits = (logits.detach().argmax(dim=1) == y).sum().float()
    return torch.stack((loss.detach() * len(y), hits))


def _fit(model, dataset, n_channels, device, config, progress):
    """Run the epoch loop; return the AveragedModel (BatchNorm not updated) and the history."""
    prepare_model(model, device)
    loader = slice_loader(dataset, config, device, shuffle=True)
    if config.augment == "shift":
        augment = RandomShift(1)
    else:
        augment = train_transform(config.image_size, n_channels)
    if config.weight_decay > 0:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    positional = _uses_positions(model)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, config.lr_min)
    first_swa = min(config.epochs - 1, math.floor(config.swa_start * config.epochs))
    anneal = max(1, min(5, config.epochs - first_swa))
    swa_model, swa_scheduler, history = None, None, []
    for epoch in range(config.epochs):
        start, lr = time.perf_counter(), float(optimizer.param_groups[0]["lr"])
        totals, seen = torch.zeros(2, device=device), 0  # loss sum, correct
        for x, y, _, s in loader:
            positions = s if positional else None
            step = train_step(model, optimizer, augment, x, y, device, config.amp, positions)
            totals, seen = totals + step, seen + len(y)
        if averaging := epoch >= first_swa:
            if swa_model is None:
                swa_model = AveragedModel(model)
                swa_scheduler = SWALR(optimizer, swa_lr=config.lr_min, anneal_epochs=anneal)
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            cosine.step()
        loss, accuracy = (totals / seen).tolist()
        record = {"epoch": epoch + 1, "loss": loss, "accuracy": accuracy, "lr": lr}
        record.update(seconds=time.perf_counter() - start, swa=averaging)
        history.append(record)
        logger.debug("stage 1 epoch %(epoch)d: loss %(loss).4f, accuracy %(accuracy).3f", record)
        if progress is not None:
            progress(record)
    return swa_model, history


def predict_slices(
    model: nn.Module, stacks: Sequence[np.ndarray], image_size: int, batch_size: int, device
) -> list[np.ndarray]:
    """Compute the logits of every slice with the test transform.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier (:func:`~bids_qnet.models.resnet.load_classifier`); moved to ``device``,
        run in eval mode under ``torch.inference_mode()`` (bf16 autocast on CUDA), its
        training flag then restored.
    stacks : sequence of numpy.ndarray
        ``(S, C, H, W)`` slices in [0, 1], one shape (C, H, W) for all.
    image_size, batch_size : int
        Side of the network input; slices per forward pass.
    device : str or torch.device
        ``cpu``, ``cuda[:N]`` or ``auto``.

    Returns
    -------
    list of numpy.ndarray
        ``(S, K)`` float32 logits per stack.
    """
    return _run(model, model, stacks, image_size, batch_size, device)


def embed_slices_with(
    model: nn.Module, stacks: Sequence[np.ndarray], image_size: int, batch_size: int, device
) -> list[np.ndarray]:
    """Compute the 512-d embedding of every slice with ``features(model)``.

    Parameters and execution as :func:`predict_slices`; returns ``(S, 512)`` float32 per stack.
    """
    return _run(model, trunk_of(model), stacks, image_size, batch_size, device)


def predict_and_embed(
    model: nn.Module, stacks: Sequence[np.ndarray], image_size: int, batch_size: int, device
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Compute logits and 512-d embeddings of every slice in one forward pass per batch.

    The trunk (``features(model)``) runs once and the head (``model.fc``) is applied to its
    output, which is what ``model(x)`` computes: the results equal :func:`predict_slices` and
    :func:`embed_slices_with` (bitwise on the CPU) at half their cost together.

    Returns
    -------
    logits, embeddings : list of numpy.ndarray
        ``(S, K)`` and ``(S, 512)`` float32 per stack.
    """
    return _run(model, trunk_of(model), stacks, image_size, batch_size, device, model.fc)


def trunk_of(model: nn.Module) -> nn.Module:
    """Return the classifier without its head: the slice embedding (layers shared)."""
    if isinstance(model, AveragedModel):
        model = model.module
    if isinstance(model, RegionalNet):
        return model.trunk()
    return features(model)


def check_stacks(stacks: Sequence[np.ndarray], same_shape: bool) -> int:
    """Check slice stacks (``(S, C, H, W)``, finite, one shape if ``same_shape``); return C."""
    shapes = {tuple(np.shape(stack)[1:]) if np.ndim(stack) == 4 else None for stack in stacks}
    channels = {shape[0] if shape else None for shape in shapes}
    if not shapes or None in shapes or len(channels) != 1 or (same_shape and len(shapes) != 1):
        raise InputDataError(f"slice stacks must be (S, C, H, W), one shape; got {shapes}")
    if not all(np.isfinite(np.asarray(stack)).all() for stack in stacks):
        raise InputDataError("slice stacks hold NaN or infinite values")
    return int(channels.pop())


def slice_loader(dataset: Dataset, config: Stage1Config, device, shuffle: bool) -> DataLoader:
    """Return stage 1's loader: ``config.batch_size`` slices a batch, shuffled by ``config.seed``.

    A last batch of one slice is dropped (BatchNorm needs two); memory is pinned for CUDA.
    """
    workers, generator = config.num_workers, torch.Generator().manual_seed(int(config.seed))
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    options["pin_memory"] = device.type == "cuda"
    options["drop_last"] = len(dataset) % config.batch_size == 1  # BatchNorm needs 2 images
    return DataLoader(dataset, config.batch_size, shuffle, generator=generator, **options)


def _cpu(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _run(model, net, stacks, image_size, batch_size, device, head=None):
    """Run ``net`` over every slice; with ``head``, also ``head(net(x))`` (returns both)."""
    if int(image_size) < 1 or int(batch_size) < 1:
        raise UsageError(f"image_size and batch_size must be positive ({image_size}, {batch_size})")
    n_channels = check_stacks(stacks, same_shape=True)
    if getattr(getattr(net, "conv1", None), "in_channels", n_channels) != n_channels:
        raise InputDataError(f"stacks have {n_channels} channel(s), the model takes another")
    device, was_training = resolve_device(str(device)), model.training
    positional = _uses_positions(model)
    prepare = nn.Identity() if positional else test_transform(int(image_size), n_channels)
    model.to(device).eval()
    net.eval()
    outputs, heads, cuda = [], [], device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    dataset = slice_dataset(stacks, [0] * len(stacks))
    try:
        with torch.inference_mode():
            for x, _, _, s in DataLoader(dataset, int(batch_size), pin_memory=cuda):
                x = prepare(x.to(device, non_blocking=cuda))
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    out = net(x, s.to(device)) if positional else net(x)
                    if head is not None:
                        heads.append(head(out).float().cpu())
                outputs.append(out.float().reshape(len(out), -1).cpu())
    finally:
        model.train(was_training)
    bounds = np.cumsum([len(s) for s in stacks])[:-1]
    width = getattr(net, "embedding_dim", EMBEDDING_DIM)
    width = getattr(getattr(net, "fc", None), "out_features", width)
    flat = torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32)
    result = np.split(flat.astype(np.float32, copy=False), bounds)
    if head is None:
        return result
    logits = torch.cat(heads).numpy() if heads else np.zeros((0, head.out_features), np.float32)
    return np.split(logits.astype(np.float32, copy=False), bounds), result
