"""The two model families of Q-Net: the stage-1 slice classifier and the stage-2 Bi-LSTM.

:class:`ResNetEstimator` trains the stage-1 residual network on the slices and gives two
models, the last epoch's (``ResNet``) and the weight average (``ResNetSWA``), whose embeddings
stage 2 learns from; the network is the preset's (:mod:`bids_qnet.models.presets`): the
regional network or the paper's ResNet18. :class:`QNetEstimator` trains Q-Net on the slice
embeddings of each scan (stage 1's when it was trained, else the participant level's with
``--stage1 frozen``), with the regional read-out in the quantitative preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from bids_qnet.errors import InputDataError
from bids_qnet.models.readout import RegionalReadout, regional_features
from bids_qnet.models.regional import load_regional
from bids_qnet.models.resnet import load_classifier
from bids_qnet.models.roi import RegionalLogistic
from bids_qnet.outputs.names import ModelFiles
from bids_qnet.preprocess.regions import MOMENTS, pooling_weights, slice_pooling_weights
from bids_qnet.training.base import Cohort, Estimator, FitParams, Prediction, ScanLogits
from bids_qnet.training.checkpoints import load_state

#: Prefix of the read-out's tensors in Q-Net's checkpoint.
READOUT_PREFIX = "readout."


class ResNetEstimator(Estimator):
    """Stage 1: slice classifiers, the last epoch's and the SWA average.

    Learned attributes: ``states_`` and ``networks_`` (model name -> state dict / classifier on
    the CPU), ``history_`` (one record per epoch). A scan's score is the mean of its slice
    logits; its class the majority vote of the slices.
    """

    #: The last epoch's classifier and the weight average.
    LAST, SWA = "ResNet", "ResNetSWA"
    models: ClassVar[tuple[str, ...]] = (LAST, SWA)
    labels: ClassVar[dict[str, str]] = {LAST: LAST, SWA: SWA}
    history_key: ClassVar[str] = "stage1"
    stage_label: ClassVar[str] = "stage 1"
    #: The model whose embeddings stage 2 learns from.
    FEATURES = SWA

    @classmethod
    def wanted(cls, params: FitParams) -> bool:
        """Trained unless ``--stage1 frozen``."""
        return params.stage1 == "train"

    def fit(self, cohort: Cohort, labels: Sequence[int]) -> ResNetEstimator:
        """Train the preset's network with SWA on the cohort's slices (:func:`train_stage1`)."""
        from bids_qnet.training.stage1 import Stage1Config, train_stage1

        stacks = cohort.stacks()
        p, preset = self.params, self.params.preset
        config = Stage1Config(
            epochs=p.epochs,
            batch_size=p.batch_size,
            image_size=p.image_size,
            weights=p.weights,
            seed=p.seed,
            device=str(p.device),
            network=preset.network,
            lr=preset.lr,
            lr_min=min(preset.lr, Stage1Config.lr_min),
            weight_decay=preset.weight_decay,
            augment=preset.augment,
            width=max(1, preset.width),
        )
        pooling = _slice_pooling(cohort) if preset.regional else None
        result = train_stage1(stacks, labels, self.n_classes, config, self.report, pooling)
        self.history_ = result.history
        states = {self.LAST: result.last_state, self.SWA: result.swa_state}
        self._set_networks(states, stacks[0].shape[1])
        return self

    def _set_networks(self, states: dict[str, dict], n_channels: int) -> None:
        self.states_ = dict(states)
        self.networks_ = {
            name: load_network(state, n_channels, self.n_classes) for name, state in states.items()
        }

    def features(self, cohort: Cohort):
        """Return the SWA classifier's embedding of every slice."""
        from bids_qnet.training.stage1 import embed_slices_with

        p = self.params
        network = self.networks_[self.FEATURES]
        return embed_slices_with(network, cohort.stacks(), p.image_size, p.batch_size, p.device)

    def predict(self, cohort: Cohort) -> Prediction:
        """Return both classifiers' logits; the SWA pass gives the embeddings too."""
        from bids_qnet.training.stage1 import predict_and_embed, predict_slices

        p, stacks, logits, features = self.params, cohort.stacks(), {}, None
        for name in self.models:
            network = self.networks_[name]
            if name == self.FEATURES:  # one pass gives Q-Net's embeddings too
                slices, features = predict_and_embed(
                    network, stacks, p.image_size, p.batch_size, p.device
                )
            else:
                slices = predict_slices(network, stacks, p.image_size, p.batch_size, p.device)
            logits[name] = [_voted(scan_logits) for scan_logits in slices]
        return Prediction(logits, features)

    def state_dicts(self) -> dict[str, dict]:
        """Return the two classifiers' state dicts."""
        return dict(self.states_)

    @classmethod
    def load(cls, files, checksums, params, n_classes, n_channels) -> ResNetEstimator:
        """Read ``ResNet.pt`` and ``ResNetSWA.pt`` back."""
        estimator = cls(params, n_classes)
        states = {name: _checked_state(files, checksums, name) for name in cls.models}
        estimator._set_networks(states, n_channels)
        return estimator


class QNetEstimator(Estimator):
    """Stage 2: Q-Net, the Bi-LSTM over a scan's slice embeddings.

    Learned attributes: ``state_`` (state dict), ``config_`` (the :class:`Stage2Config` it was
    trained and predicts with) and ``history_``.
    """

    NAME = "QNet"
    models: ClassVar[tuple[str, ...]] = (NAME,)
    labels: ClassVar[dict[str, str]] = {NAME: "Q-Net"}
    history_key: ClassVar[str] = "stage2"
    stage_label: ClassVar[str] = "Q-Net"

    #: The regional read-out (quantitative preset), or None.
    readout_: RegionalReadout | None = None

    def fit(self, cohort: Cohort, labels: Sequence[int]) -> QNetEstimator:
        """Train Q-Net on the cohort's slice embeddings (:func:`train_stage2`).

        With the preset's read-out, an L1 logistic regression on the raw channels' regional
        statistics is fitted first (penalty by inner CV on the training scans only) and the
        Bi-LSTM learns on top of its fixed logits.
        """
        from bids_qnet.training.stage2 import Stage2Config, train_stage2

        p, preset = self.params, self.params.preset
        self.config_ = Stage2Config(
            epochs=p.qnet_epochs,
            batch_size=preset.qnet_batch_size or p.batch_size,
            lr=preset.qnet_lr,
            hidden=preset.qnet_hidden,
            seed=p.seed,
            device=str(p.device),
            weight_decay=preset.qnet_weight_decay,
            standardise=preset.standardise,
        )
        offsets = None
        if preset.readout:
            weights = _volume_pooling(cohort)
            features = regional_features(cohort.stacks(), weights)
            logistic = RegionalLogistic(seed=p.seed, penalty="l1").fit(
                features, labels, self.n_classes
            )
            self.readout_ = RegionalReadout.from_logistic(logistic, weights)
            offsets = self.readout_.logits(cohort.stacks())
        embeddings = cohort.embeddings()
        result = train_stage2(
            embeddings, labels, self.n_classes, self.config_, self.report, offsets
        )
        self.state_, self.history_ = result.state, result.history
        return self

    def predict(self, cohort: Cohort) -> Prediction:
        """Return Q-Net's slice-level and scan-level logits (read-out included)."""
        from bids_qnet.training.stage2 import predict_stage2

        offsets = None if self.readout_ is None else self.readout_.logits(cohort.stacks())
        outputs = predict_stage2(
            self.state_, cohort.embeddings(), self.n_classes, self.config_, offsets
        )
        return Prediction({self.NAME: [ScanLogits(image, scan) for image, scan in outputs]})

    def state_dicts(self) -> dict[str, dict]:
        """Return Q-Net's state dict (the read-out's maps under ``readout.``)."""
        state = dict(self.state_)
        if self.readout_ is not None:
            state.update({READOUT_PREFIX + k: v for k, v in self.readout_.state_dict().items()})
        return {self.NAME: state}

    @classmethod
    def load(cls, files, checksums, params, n_classes, n_channels) -> QNetEstimator:
        """Read ``QNet.pt`` back; it predicts with ``params``' seed and device."""
        from bids_qnet.training.stage2 import Stage2Config

        estimator = cls(params, n_classes)
        state = _checked_state(files, checksums, cls.NAME)
        estimator.state_, estimator.readout_ = split_readout(state)
        estimator.config_ = Stage2Config(seed=params.seed, device=str(params.device))
        return estimator


def split_readout(state: dict) -> tuple[dict, RegionalReadout | None]:
    """Split a Q-Net checkpoint into the Bi-LSTM's state and the read-out (or None)."""
    lstm = {k: v for k, v in state.items() if not k.startswith(READOUT_PREFIX)}
    parts = {k[len(READOUT_PREFIX) :]: v for k, v in state.items() if k.startswith(READOUT_PREFIX)}
    if not parts:
        return lstm, None
    try:
        return lstm, RegionalReadout(parts["template"], parts["bias"])
    except KeyError as exc:
        raise InputDataError(f"Q-Net's read-out lacks {exc}") from exc


def _context(cohort: Cohort):
    if cohort.context is None:
        raise InputDataError("the quantitative preset needs the crop's atlas regions")
    return cohort.context


def _slice_pooling(cohort: Cohort) -> np.ndarray:
    context = _context(cohort)
    return slice_pooling_weights(context.grid.slice_labels(), context.region_indices(), MOMENTS)


def _volume_pooling(cohort: Cohort) -> np.ndarray:
    context = _context(cohort)
    return pooling_weights(context.grid.slice_labels(), context.region_indices(), MOMENTS)


def load_network(state: dict, n_channels: int, n_classes: int):
    """Rebuild a stage-1 classifier (regional network or ResNet18) from its state dict."""
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
    if "pooling" in state:
        return load_regional(state, n_channels, n_classes, int(state["stem.0.weight"].shape[0]))
    return load_classifier(state, n_channels, n_classes)


def scan_scores_from_slices(slice_logits: np.ndarray) -> tuple[int, np.ndarray]:
    """Turn one scan's slice-level logits into a scan-level prediction and score.

    Parameters
    ----------
    slice_logits : numpy.ndarray, shape (S, K)
        Logits of the S slices of one scan.

    Returns
    -------
    prediction : int
        The class most slices predict (majority vote of the slice argmax); a tie between
        classes goes to the one with the larger mean logit (then to the lower index).
    mean_logits : numpy.ndarray, shape (K,)
        Mean slice logits, the scan's score (for two classes use
        ``mean_logits[1] - mean_logits[0]``).
    """
    z = np.asarray(slice_logits, dtype=float)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise InputDataError(f"slice logits must have shape (S>=1, K>=2), got {z.shape}")
    votes = np.bincount(np.argmax(z, axis=1), minlength=z.shape[1])
    mean = z.mean(axis=0)
    tied = np.flatnonzero(votes == votes.max())
    prediction = int(tied[np.argmax(mean[tied])])
    return prediction, mean


def _voted(slice_logits) -> ScanLogits:
    vote, mean_logits = scan_scores_from_slices(slice_logits)
    return ScanLogits(slice_logits, mean_logits, vote)


def _checked_state(files: ModelFiles, checksums: dict[str, str], name: str) -> dict:
    checkpoint = files.checkpoint_name(name)
    if checkpoint not in checksums:
        raise InputDataError(f"{files.folder} has no recorded SHA-256 for {checkpoint}")
    return load_state(files.checkpoint(name), checksums[checkpoint])
