"""Q-Net stage 1: fine-tune a ResNet18 slice classifier with SWA (ResNetSWA); predict, embed."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset

from bids_qnet.derivatives import write_atomic
from bids_qnet.embed import EMBEDDING_DIM, WeightsInfo, resolve_device
from bids_qnet.errors import InputDataError, MissingInputError, UsageError, WriteError
from bids_qnet.integrity import file_sha256
from bids_qnet.models.resnet import build_classifier, features
from bids_qnet.models.resnet import load_classifier as load_classifier  # re-exported
from bids_qnet.training.augment import test_transform, train_transform

logger = logging.getLogger(__name__)


@dataclass
class Stage1Config:
    """Stage-1 settings; the defaults are the paper's (sized for a GPU).

    ``lr`` is cosine-annealed to ``lr_min`` over ``epochs``; from epoch ``floor(swa_start *
    epochs)`` (0-based; at least the last) the weights are averaged once per epoch and ``SWALR``
    anneals the rate to ``swa_lr = lr_min`` over up to 5 epochs. ``amp``: bf16 autocast, CUDA.
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
    n_channels, dataset = _check_stacks(stacks, True), slice_dataset(stacks, labels)
    if len(dataset) < 2 or any(not 0 <= int(v) < int(n_classes) for v in labels):
        raise InputDataError(f"need 2+ slices and labels in 0..{int(n_classes) - 1}")
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(config.seed))
        model, info = build_classifier(n_channels, n_classes, config.weights, config.seed)
        swa_model, history = _fit(model, dataset, n_channels, device, config, progress)
        prepare = test_transform(config.image_size, n_channels)
        bn_loader = _loader(dataset, config, device, shuffle=False)
        update_bn((prepare(x.to(device)) for x, *_ in bn_loader), swa_model)
    return Stage1Result(_cpu(model), _cpu(swa_model.module), history, info)


def _fit(model, dataset, n_channels, device, config, progress):
    """Run the epoch loop; return the AveragedModel (BatchNorm not updated) and the history."""
    model.to(device).train()
    cuda = device.type == "cuda"
    if cuda:  # channels-last convolutions; cuDNN picks its fastest kernels for the fixed shapes
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    loader = _loader(dataset, config, device, shuffle=True)
    augment = train_transform(config.image_size, n_channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, config.lr_min)
    first_swa = min(config.epochs - 1, math.floor(config.swa_start * config.epochs))
    anneal = max(1, min(5, config.epochs - first_swa))
    use_amp = bool(config.amp) and device.type == "cuda"
    swa_model, swa_scheduler, history = None, None, []
    for epoch in range(config.epochs):
        start, lr = time.perf_counter(), float(optimizer.param_groups[0]["lr"])
        totals, seen = torch.zeros(2, device=device), 0  # loss sum, correct
        for x, y, *_ in loader:
            x = augment(x.to(device, non_blocking=True))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hits = (logits.detach().argmax(dim=1) == y).sum().float()
            totals, seen = totals + torch.stack((loss.detach() * len(y), hits)), seen + len(y)
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
        logger.info("stage 1 epoch %(epoch)d: loss %(loss).4f, accuracy %(accuracy).3f", record)
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
        A classifier (:func:`load_classifier`); moved to ``device``, run in eval mode under
        ``torch.inference_mode()`` (bf16 autocast on CUDA), its training flag then restored.
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
    return _run(model, features(model), stacks, image_size, batch_size, device)


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
    return _run(model, features(model), stacks, image_size, batch_size, device, model.fc)


def save_state(state: dict, path: Path) -> str:
    """``torch.save`` a state dict atomically (temporary file beside ``path``, then rename).

    Returns
    -------
    str
        The SHA-256 of the file written, to record beside it and check in :func:`load_state`.
    """

    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write this way
            raise WriteError(
                f"writing {path} failed ({str(exc).strip()[:120]}); the disk may be full or a "
                "file-size limit reached: free space and run the same command again"
            ) from exc

    write_atomic(Path(path), write)  # OutputError (73) / WriteError (74) on other failures
    return file_sha256(Path(path))


def load_state(path: Path, sha256: str | None = None) -> dict:
    """Read a state dict written by :func:`save_state` (``weights_only=True``, onto the CPU).

    Parameters
    ----------
    path : Path
        The ``.pt`` file.
    sha256 : str, optional
        The checksum recorded when it was saved; when given, a file that differs is refused
        before it is unpickled.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputDataError
        The checksum differs, or the file is not a plain state dict (``weights_only=True``
        refuses pickled code).
    """
    if sha256 is not None and Path(path).is_file():
        actual = file_sha256(Path(path))
        if actual != sha256:
            raise InputDataError(
                f"{path} was modified after it was saved: its SHA-256 {actual[:16]}... differs "
                f"from the recorded {sha256[:16]}...; refusing to load it (retrain, or restore "
                "the original file)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise MissingInputError(f"stage-1 weights {path} do not exist") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        # torch's own message advises weights_only=False: show only the line saying why
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if not ln.startswith(noise)), type(exc).__name__)
        raise InputDataError(
            f"{path} cannot be read as a state dict ({reason[:200]}); refusing it: a bids_qnet "
            "checkpoint holds tensors only, so use checkpoints written by bids_qnet"
        ) from exc
    if not isinstance(state, dict):
        raise InputDataError(f"{path} does not hold a state dict")
    return dict(state)


def _check_stacks(stacks: Sequence[np.ndarray], same_shape: bool) -> int:
    shapes = {tuple(np.shape(stack)[1:]) if np.ndim(stack) == 4 else None for stack in stacks}
    channels = {shape[0] if shape else None for shape in shapes}
    if not shapes or None in shapes or len(channels) != 1 or (same_shape and len(shapes) != 1):
        raise InputDataError(f"slice stacks must be (S, C, H, W), one shape; got {shapes}")
    if not all(np.isfinite(np.asarray(stack)).all() for stack in stacks):
        raise InputDataError("slice stacks hold NaN or infinite values")
    return int(channels.pop())


def _loader(dataset: Dataset, config: Stage1Config, device, shuffle: bool) -> DataLoader:
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
    n_channels = _check_stacks(stacks, same_shape=True)
    if getattr(getattr(net, "conv1", None), "in_channels", n_channels) != n_channels:
        raise InputDataError(f"stacks have {n_channels} channel(s), the model takes another")
    device, was_training = resolve_device(str(device)), model.training
    prepare = test_transform(int(image_size), n_channels)
    model.to(device).eval()
    net.eval()
    outputs, heads, cuda = [], [], device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    dataset = slice_dataset(stacks, [0] * len(stacks))
    try:
        with torch.inference_mode():
            for x, *_ in DataLoader(dataset, int(batch_size), pin_memory=cuda):
                x = prepare(x.to(device, non_blocking=cuda))
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    out = net(x)
                    if head is not None:
                        heads.append(head(out).float().cpu())
                outputs.append(out.float().reshape(len(out), -1).cpu())
    finally:
        model.train(was_training)
    bounds = np.cumsum([len(s) for s in stacks])[:-1]
    width = getattr(getattr(net, "fc", None), "out_features", EMBEDDING_DIM)
    flat = torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32)
    result = np.split(flat.astype(np.float32, copy=False), bounds)
    if head is None:
        return result
    logits = torch.cat(heads).numpy() if heads else np.zeros((0, head.out_features), np.float32)
    return np.split(logits.astype(np.float32, copy=False), bounds), result
