"""Training and inference of Q-Net stage 2 (the Bi-LSTM scan-level model).

Stage 2 learns from the frozen stage-1 embeddings of each participant's slices, in slice order;
every slice carries its participant's label (see :func:`bids_qnet.models.qnet.qnet_loss`). The
defaults are the paper's: 50 epochs, batch size 64, Adam with a fixed learning rate of 3e-4.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from bids_qnet.errors import InputDataError, UsageError
from bids_qnet.models.device import resolve_device
from bids_qnet.models.qnet import QNet, qnet_loss

logger = logging.getLogger(__name__)


@dataclass
class Stage2Config:
    """Settings of stage 2 (defaults are the paper's).

    Attributes
    ----------
    epochs : int
        Passes over the training participants.
    batch_size : int
        Participants (sequences) per mini-batch.
    lr : float
        Adam learning rate (fixed).
    hidden : int
        Hidden size of each LSTM direction.
    dropout : float
        Dropout on the Bi-LSTM outputs.
    image_loss_weight : float
        Weight ``w`` of the image-level term: loss = scan CE + w * mean image CE over real slices.
    seed : int
        Seeds the initial weights, dropout and the order of mini-batches.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    weight_decay : float
        AdamW weight decay; 0 means Adam (the paper).
    standardise : bool
        Standardise the embeddings with the training participants' mean and SD per feature.
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 3e-4
    hidden: int = 128
    dropout: float = 0.3
    image_loss_weight: float = 0.5
    seed: int = 42
    device: str = "cpu"
    weight_decay: float = 0.0
    standardise: bool = False


@dataclass
class Stage2Result:
    """Outcome of :func:`train_stage2`.

    Attributes
    ----------
    state : dict
        The trained model's ``state_dict``, as CPU tensors.
    history : list of dict
        One record per epoch: ``epoch`` (from 1), ``loss`` (mean over participants),
        ``scan_accuracy`` (training scan accuracy of that epoch's mini-batches, in train mode)
        and ``seconds``.
    """

    state: dict
    history: list[dict] = field(default_factory=list)


def build_qnet(n_classes: int, config: Stage2Config, in_features: int = 512) -> QNet:
    """Build an untrained stage-2 model from the settings.

    Parameters
    ----------
    n_classes : int
        Number of classes.
    config : Stage2Config
        Provides ``hidden`` and ``dropout``.
    in_features : int
        Size of a slice embedding.

    Returns
    -------
    QNet
    """
    return QNet(
        in_features=in_features,
        hidden=config.hidden,
        n_classes=n_classes,
        dropout=config.dropout,
        standardise=config.standardise,
    )


def collate(sequences: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Pad slice-embedding sequences into one batch.

    Parameters
    ----------
    sequences : sequence of ndarray
        Each of shape (S_i, F), S_i >= 1, the same F for all.

    Returns
    -------
    x : Tensor
        float32, shape (B, T_max, F), zero after each sequence's last slice.
    lengths : Tensor
        int64, shape (B,), the S_i.

    Raises
    ------
    InputDataError
        For an empty list, a sequence that is not 2-D or has no slice, or differing F.
    """
    if len(sequences) == 0:
        raise InputDataError("cannot collate an empty list of sequences")
    arrays = [np.asarray(seq) for seq in sequences]
    if any(a.ndim != 2 or a.shape[0] < 1 for a in arrays) or len({a.shape[1] for a in arrays}) > 1:
        shapes = sorted({a.shape for a in arrays})
        raise InputDataError(f"sequences must be (slices >= 1, F) with one F; got shapes {shapes}")
    n_features = arrays[0].shape[1]
    lengths = torch.tensor([arr.shape[0] for arr in arrays], dtype=torch.int64)
    x = torch.zeros(len(arrays), int(lengths.max()), n_features, dtype=torch.float32)
    for index, arr in enumerate(arrays):
        x[index, : arr.shape[0]] = torch.from_numpy(arr.astype(np.float32, copy=False))
    return x, lengths


def train_stage2(
    embeddings: Sequence[np.ndarray],
    labels: Sequence[int],
    n_classes: int,
    config: Stage2Config,
    progress: Callable[[dict], None] | None = None,
    offsets: np.ndarray | None = None,
) -> Stage2Result:
    """Train the stage-2 model on participants' slice embeddings.

    Parameters
    ----------
    embeddings : sequence of ndarray
        One array of shape (S_i, F) per participant, slices in anatomical order.
    labels : sequence of int
        One class index per participant, in ``[0, n_classes)``.
    n_classes : int
        Number of classes (at least 2).
    config : Stage2Config
        Training settings.
    progress : callable, optional
        Called after each epoch with that epoch's history record.
    offsets : numpy.ndarray, optional
        ``(N, K)`` fixed scan logits added to the model's (a regional read-out): the Bi-LSTM
        then learns what they miss.

    Returns
    -------
    Stage2Result

    Raises
    ------
    UsageError
        For invalid settings.
    InputDataError
        For inconsistent embeddings or labels.

    Notes
    -----
    Adam; participants are reshuffled into mini-batches each epoch by a generator seeded with
    ``config.seed``. Initial weights and dropout use torch's global generator, seeded inside
    :func:`torch.random.fork_rng` (the caller's random state is untouched): same seed, same weights.
    """
    _check_config(config)
    all_x, all_lengths = collate(embeddings)
    targets = _check_labels(labels, len(embeddings), n_classes)
    if not bool(torch.isfinite(all_x).all()):
        raise InputDataError("stage 2 embeddings contain non-finite values")
    device = resolve_device(config.device)
    n_participants, _, in_features = all_x.shape
    fixed = _offsets(offsets, n_participants, n_classes)
    history: list[dict] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_qnet(n_classes, config, in_features)
        if config.standardise:
            mean, scale = embedding_statistics(embeddings)
            model.set_standardisation(mean, scale)
        model.to(device)
        if config.weight_decay > 0:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        order_rng = torch.Generator().manual_seed(config.seed)
        logger.debug("stage 2: %d participants, %s on %s", n_participants, config, device)
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            order = torch.randperm(n_participants, generator=order_rng).tolist()
            batches = [
                order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
            ]
            total_loss, correct = _epoch(
                model, optimizer, (all_x, all_lengths, targets, fixed), batches, config, device
            )
            record = {
                "epoch": epoch,
                "loss": total_loss / n_participants,
                "scan_accuracy": correct / n_participants,
                "seconds": time.perf_counter() - start,
            }
            history.append(record)
            logger.debug(
                "stage 2 epoch %(epoch)d: loss %(loss).4f, accuracy %(scan_accuracy).3f", record
            )
            if progress is not None:
                progress(record)
    state = {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}
    return Stage2Result(state=state, history=history)


def _epoch(model, optimizer, data, batches, config: Stage2Config, device) -> tuple[float, int]:
    """Train one epoch on the given mini-batches; return the summed loss and correct scans."""
    all_x, all_lengths, targets, fixed = data
    model.train()
    total_loss, correct = 0.0, 0
    for chosen in batches:
        lengths = all_lengths[chosen]
        x = all_x[chosen, : int(lengths.max())]
        y = targets[chosen].to(device)
        image_logits, scan_logits = model(x.to(device), lengths)
        scan_logits = scan_logits + fixed[chosen].to(device)
        loss = qnet_loss(image_logits, scan_logits, y, lengths, config.image_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(chosen)
        correct += int((scan_logits.detach().argmax(dim=1) == y).sum())
    return total_loss, correct


def qnet_from_state(state: dict, n_classes: int, config: Stage2Config | None = None) -> QNet:
    """Rebuild a trained Q-Net from its state dict; sizes and standardisation come from it.

    Raises
    ------
    UsageError
        If the state does not fit a Q-Net with ``n_classes`` classes.
    """
    config = config or Stage2Config()
    try:
        in_features = int(state["lstm.weight_ih_l0"].shape[1])
        hidden = int(state["lstm.weight_hh_l0"].shape[1])
        shape = replace(config, hidden=hidden, standardise="input_mean" in state)
        model = build_qnet(n_classes, shape, in_features)
        model.load_state_dict(state)
    except (KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise UsageError(f"stage-2 weights do not fit n_classes={n_classes}: {exc!r}") from exc
    return model


def embedding_statistics(embeddings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and SD of each embedding feature over all slices of all participants."""
    stacked = np.concatenate([np.asarray(e, dtype=np.float64) for e in embeddings])
    return stacked.mean(axis=0), stacked.std(axis=0)


def _offsets(offsets, n: int, n_classes: int) -> Tensor:
    if offsets is None:
        return torch.zeros(n, int(n_classes))
    fixed = torch.as_tensor(np.asarray(offsets, dtype=np.float32))
    if fixed.shape != (n, int(n_classes)) or not bool(torch.isfinite(fixed).all()):
        raise InputDataError(f"offsets must be finite, shape ({n}, {n_classes})")
    return fixed


def predict_stage2(
    state: dict,
    embeddings: Sequence[np.ndarray],
    n_classes: int,
    config: Stage2Config,
    offsets: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Predict image-level and scan-level logits with a trained stage-2 model.

    Parameters
    ----------
    state : dict
        A ``state_dict`` from :func:`train_stage2`.
    embeddings : sequence of ndarray
        One array of shape (S_i, F) per participant.
    n_classes : int
        Number of classes the model was trained with.
    config : Stage2Config
        Provides ``batch_size`` and ``device``; the hidden size and whether the input is
        standardised are read from ``state``.
    offsets : numpy.ndarray, optional
        ``(N, K)`` scan logits added to the model's (see :func:`train_stage2`).

    Returns
    -------
    list of tuple
        Per participant, in input order: image logits of shape (S_i, K) and scan logits of
        shape (K,), float32.

    Raises
    ------
    InputDataError
        If the embeddings do not fit the model's input size.
    UsageError
        If ``state`` does not match ``n_classes`` or ``config.hidden``.
    """
    if config.batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {config.batch_size}")
    if len(embeddings) == 0:
        return []
    model = qnet_from_state(state, n_classes, config)
    in_features = model.in_features
    device = resolve_device(config.device)
    fixed = _offsets(offsets, len(embeddings), n_classes)
    model.to(device).eval()
    results: list[tuple[np.ndarray, np.ndarray]] = []
    with torch.inference_mode():
        for first in range(0, len(embeddings), config.batch_size):
            x, lengths = collate(embeddings[first : first + config.batch_size])
            if x.shape[2] != in_features:
                raise InputDataError(
                    f"embeddings have {x.shape[2]} features; the model expects {in_features}"
                )
            image_logits, scan_logits = model(x.to(device), lengths)
            scan_logits = scan_logits + fixed[first : first + len(lengths)].to(device)
            image_np = image_logits.float().cpu().numpy()
            scan_np = scan_logits.float().cpu().numpy()
            for row, length in enumerate(lengths.tolist()):
                results.append((image_np[row, :length].copy(), scan_np[row].copy()))
    return results


def _check_config(config: Stage2Config) -> None:
    if int(config.epochs) < 1:
        raise UsageError(f"epochs must be at least 1, got {config.epochs}")
    if int(config.batch_size) < 1:
        raise UsageError(f"batch_size must be at least 1, got {config.batch_size}")
    if not float(config.lr) > 0:
        raise UsageError(f"lr must be positive, got {config.lr}")
    if not float(config.image_loss_weight) >= 0:
        raise UsageError(f"image_loss_weight must be >= 0, got {config.image_loss_weight}")


def _check_labels(labels: Sequence[int], n_participants: int, n_classes: int) -> Tensor:
    if int(n_classes) < 2:
        raise UsageError(f"stage 2 needs at least 2 classes, got {n_classes}")
    label_array = np.asarray(labels)
    if label_array.shape != (n_participants,):
        raise InputDataError(f"{n_participants} embedding sequences but {len(labels)} labels")
    if not np.issubdtype(label_array.dtype, np.integer):
        raise InputDataError(f"labels must be integers, got dtype {label_array.dtype}")
    if label_array.min() < 0 or label_array.max() >= n_classes:
        raise InputDataError(f"labels must lie in [0, {n_classes}), got {sorted(set(labels))}")
    return torch.as_tensor(label_array.astype(np.int64))
