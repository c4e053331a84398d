"""How much of the Bi-LSTM Q-Net keeps on top of its regional read-out (quantitative preset).

In the quantitative preset Q-Net's scan logits are ``read-out + s * Bi-LSTM``: the read-out
(:mod:`bids_qnet.models.readout`) carries the regional levels and first moments, the Bi-LSTM
learns what they miss. On 40-100 participants the Bi-LSTM can also learn noise, and then it costs
AUC (docs/science.md). The weight ``s`` must therefore earn its place on participants the
models did not see: an inner, stratified cross-validation on the training participants only
fits the read-out and the Bi-LSTM on each inner training part, and ``s`` is the smallest value
of :data:`RESIDUAL_SCALES` whose log-loss of ``read-out + s * Bi-LSTM`` on the inner held-out
participants is within one standard error of the lowest (:func:`one_standard_error_choice`).
``s = 0`` leaves the read-out alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bids_qnet.models.readout import RegionalReadout, regional_features
from bids_qnet.models.roi import RegionalLogistic

logger = logging.getLogger(__name__)

#: Weights of the Bi-LSTM's scan logits tried by the inner cross-validation.
RESIDUAL_SCALES = (0.0, 0.25, 0.5, 1.0)


@dataclass
class ResidualChoice:
    """Outcome of :func:`choose_residual_scale`.

    Attributes
    ----------
    scale : float
        The chosen weight of the Bi-LSTM's scan logits.
    log_loss : dict
        Inner cross-validated log-loss per weight tried (empty when not tuned).
    """

    scale: float
    log_loss: dict[float, float] = field(default_factory=dict)


def fit_readout(
    stacks: Sequence[np.ndarray],
    labels: Sequence[int],
    n_classes: int,
    weights: np.ndarray,
    seed: int,
) -> RegionalReadout:
    """Fit Q-Net's regional read-out: an L1 logistic regression on the regional statistics.

    The penalty is chosen by inner cross-validated log-loss: the read-out's logits are added to
    the Bi-LSTM's, so they must be calibrated, and without signal every weight is 0.

    Parameters
    ----------
    stacks : sequence of numpy.ndarray
        ``(T, C, H, W)`` slices per training scan, in physical units.
    labels : sequence of int
        Class index per scan.
    n_classes : int
        Number of classes.
    weights : numpy.ndarray
        ``(P, T, H, W)`` pooling weights (:func:`bids_qnet.preprocess.regions.pooling_weights`).
    seed : int
        Random state of the inner folds and of the solver.

    Returns
    -------
    RegionalReadout
        The fitted model folded into maps on the slice grid.
    """
    features = regional_features(stacks, weights)
    logistic = RegionalLogistic(seed=seed, penalty="l1", scoring="neg_log_loss")
    logistic.fit(features, labels, n_classes)
    return RegionalReadout.from_logistic(logistic, weights)


def choose_residual_scale(
    stacks: Sequence[np.ndarray],
    embeddings: Sequence[np.ndarray],
    labels: Sequence[int],
    n_classes: int,
    weights: np.ndarray,
    config,
    folds: int,
    scales: Sequence[float] = RESIDUAL_SCALES,
) -> ResidualChoice:
    """Choose the Bi-LSTM's weight by an inner cross-validation (module docstring).

    Parameters
    ----------
    stacks, embeddings : sequence of numpy.ndarray
        Per training scan: ``(T, C, H, W)`` slices and ``(S, F)`` slice embeddings.
    labels : sequence of int
        Class index per scan.
    n_classes : int
        Number of classes.
    weights : numpy.ndarray
        The read-out's pooling weights.
    config : Stage2Config
        The Bi-LSTM's training settings (its seed also seeds the inner folds).
    folds : int
        Inner folds; fewer when a class is smaller; with fewer than 2 the weight is 1 (untuned).
    scales : sequence of float
        Weights to choose from.

    Returns
    -------
    ResidualChoice
    """
    from sklearn.model_selection import StratifiedKFold

    from bids_qnet.training.stage2 import predict_stage2, train_stage2

    y = np.asarray(labels, dtype=np.int64)
    folds = min(int(folds), int(np.bincount(y, minlength=n_classes).min()))
    if folds < 2:
        return ResidualChoice(1.0)
    readout_logits = np.zeros((len(y), n_classes))
    lstm_logits = np.zeros((len(y), n_classes))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(config.seed))
    for inner, (train, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
        readout = fit_readout(
            [stacks[i] for i in train], y[train], n_classes, weights, config.seed + inner
        )
        offsets = readout.logits([stacks[i] for i in train])
        result = train_stage2(
            [embeddings[i] for i in train], y[train].tolist(), n_classes, config, None, offsets
        )
        predicted = predict_stage2(
            result.state, [embeddings[i] for i in held_out], n_classes, replace(config)
        )
        lstm_logits[held_out] = np.stack([scan for _, scan in predicted])
        readout_logits[held_out] = readout.logits([stacks[i] for i in held_out])
    losses = {float(s): _log_losses(readout_logits + s * lstm_logits, y) for s in scales}
    chosen = one_standard_error_choice(losses)
    means = {s: float(loss.mean()) for s, loss in losses.items()}
    logger.debug("Q-Net residual weights (inner log-loss): %s -> %s", means, chosen)
    return ResidualChoice(chosen, means)


def one_standard_error_choice(losses: dict[float, np.ndarray]) -> float:
    """Return the smallest weight whose loss is within one standard error of the best's.

    Parameters
    ----------
    losses : dict
        Weight -> per-participant held-out losses (the same participants for every weight).

    Returns
    -------
    float
        The smallest weight whose mean loss exceeds the lowest mean by at most the standard
        error of the paired per-participant differences (the one-standard-error rule): a
        Bi-LSTM that helps by less than the noise of the comparison is not kept.
    """
    best = min(losses, key=lambda s: (float(losses[s].mean()), s))
    for weight in sorted(losses):
        difference = losses[weight] - losses[best]
        error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0
        if difference.mean() <= error:
            return weight
    return best


def _log_losses(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probability = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probability[np.arange(len(y)), y]
