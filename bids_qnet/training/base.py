"""What every model of the group level is: an estimator that is fitted, predicts, saves and loads.

Models come in families trained together (stage 1 gives ResNet and ResNetSWA from one run). An
:class:`Estimator` is one family, in the manner of scikit-learn: hyperparameters and
``random_state`` (``seed``) in :class:`FitParams`, :meth:`~Estimator.fit` on a training
:class:`Cohort`, learned attributes ending in ``_``, :meth:`~Estimator.predict` on any cohort,
and :meth:`~Estimator.save` / :meth:`~Estimator.load` of its checkpoints. The splits live apart
(:mod:`bids_qnet.training.splits`); the families the group level trains are listed once, in
:mod:`bids_qnet.training.registry`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from bids_qnet.inputs.scans import Scan
from bids_qnet.models.presets import PRESETS, TrainingPreset
from bids_qnet.outputs.names import ModelFiles
from bids_qnet.preprocess.crop_grid import CropGrid

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitParams:
    """Hyperparameters shared by the estimators of one fit (a fold or the final model).

    Attributes
    ----------
    epochs, qnet_epochs : int
        Stage-1 (ResNet18) and stage-2 (Q-Net) epochs.
    batch_size : int
        Slices per stage-1 batch, sequences per stage-2 batch, slices per forward pass.
    image_size : int
        Side of the network input in pixels.
    weights : str
        Stage 1's initial ResNet18 weights (``imagenet``, ``random`` or a file).
    stage1 : str
        ``train`` (fine-tune ResNet18) or ``frozen`` (Q-Net on the participant embeddings).
    seed : int
        The fit's random state: initial weights, shuffling, dropout.
    device : torch.device
        Where the networks run.
    preset : TrainingPreset
        The named configuration (:mod:`bids_qnet.models.presets`): networks, optimisers,
        augmentation, Q-Net's read-out.
    """

    epochs: int
    qnet_epochs: int
    batch_size: int
    image_size: int
    weights: str
    stage1: str
    seed: int
    device: Any
    preset: TrainingPreset = PRESETS["paper"]

    def with_seed(self, seed: int) -> FitParams:
        """Return the same parameters with another random state."""
        return FitParams(**{**self.__dict__, "seed": int(seed)})


@dataclass
class ScanLogits:
    """One model's outputs for one scan.

    Attributes
    ----------
    image : numpy.ndarray or None
        ``(S, K)`` slice-level logits; None for models that only classify whole scans.
    scan : numpy.ndarray
        ``(K,)`` scan-level logits.
    vote : int or None
        The scan-level prediction when it is not the argmax of ``scan`` (a majority vote of
        the slices).
    """

    image: np.ndarray | None
    scan: np.ndarray
    vote: int | None = None


@dataclass(frozen=True)
class GroupContext:
    """What the group level knows beyond the scans: the crop's atlas regions, covariates.

    Attributes
    ----------
    grid : CropGrid
        The crop's grid with the atlas cut to it (every scan shares it).
    regions : tuple of str
        The atlas regions the models pool over (``--regions``; default the crop's regions).
    covariates : pandas.DataFrame or None
        Numeric covariates from ``participants.tsv`` indexed by ``participant_id``
        (``--covariates``), for the ROI model.
    """

    grid: CropGrid
    regions: tuple[str, ...]
    covariates: pd.DataFrame | None = None

    def region_indices(self) -> list[int]:
        """Return the atlas label of each region, in order."""
        return [self.grid.region_index(name) for name in self.regions]

    def covariate_rows(self, scans: Sequence[Scan], names: Sequence[str]) -> np.ndarray:
        """Return ``(N, len(names))`` covariates of the scans' participants (NaN if unknown)."""
        table = self.covariates
        out = np.full((len(scans), len(names)), np.nan)
        if table is None:
            return out
        for j, name in enumerate(names):
            if name in table.columns:
                column = table[name]
                out[:, j] = [column.get(s.participant_id, np.nan) for s in scans]
        return out


@dataclass
class Cohort:
    """Scans to fit or predict, with their data read once and shared by the estimators.

    Attributes
    ----------
    scans : list of Scan
        The participant-level outputs.
    features : list of numpy.ndarray or None
        ``(S, F)`` slice embeddings per scan from a fitted stage 1 (set by the estimators'
        owner between families); None means the participant level's stored embeddings.
    context : GroupContext or None
        Atlas regions and covariates (None when a saved model predicts on its own).
    """

    scans: list[Scan]
    features: list[np.ndarray] | None = None
    context: GroupContext | None = None
    _stacks: list[np.ndarray] | None = field(default=None, repr=False)
    _stored: list[np.ndarray] | None = field(default=None, repr=False)

    def stacks(self) -> list[np.ndarray]:
        """Return the slice stacks ``(S, C, H, W)`` (memory-mapped, read once)."""
        if self._stacks is None:
            self._stacks = [scan.load_slices() for scan in self.scans]
        return self._stacks

    def embeddings(self) -> list[np.ndarray]:
        """Return the slice embeddings: a fitted stage 1's, else the participant level's."""
        if self.features is not None:
            return self.features
        if self._stored is None:
            self._stored = [scan.load_embeddings() for scan in self.scans]
        return self._stored


@dataclass
class Prediction:
    """What :meth:`Estimator.predict` returns.

    Attributes
    ----------
    logits : dict of str to list of ScanLogits
        Per model of the family, in the family's order, one entry per scan.
    features : list of numpy.ndarray or None
        Slice embeddings computed on the way, for the families that follow.
    """

    logits: dict[str, list[ScanLogits]]
    features: list[np.ndarray] | None = None


class Estimator(ABC):
    """A family of models trained together.

    Subclasses set :attr:`models` (the names of the models they fit: prediction rows,
    checkpoint files, the model card) and :attr:`labels` (their names in reports), and say in
    :meth:`wanted` whether a run trains them.

    Parameters
    ----------
    params : FitParams
        Hyperparameters and random state.
    n_classes : int
        Number of classes.
    progress : callable, optional
        Called with each epoch's history record.
    """

    #: Model names, in the order their predictions are written.
    models: ClassVar[tuple[str, ...]] = ()
    #: Model name -> name shown in reports.
    labels: ClassVar[dict[str, str]] = {}
    #: Key of this family's training history in ``done.json`` and the model card.
    history_key: ClassVar[str] = ""
    #: What the progress log calls this family.
    stage_label: ClassVar[str] = ""

    def __init__(
        self,
        params: FitParams,
        n_classes: int,
        progress: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.params = params
        self.n_classes = int(n_classes)
        self.progress = progress
        self.history_: list[dict] = []

    @classmethod
    def wanted(cls, params: FitParams) -> bool:
        """Whether a run with these parameters trains this family (default: always)."""
        return True

    @abstractmethod
    def fit(self, cohort: Cohort, labels: Sequence[int]) -> Estimator:
        """Learn from the training cohort; return ``self``."""

    def features(self, cohort: Cohort) -> list[np.ndarray] | None:
        """Return slice embeddings for the families that follow (None: none of its own)."""
        return None

    @abstractmethod
    def predict(self, cohort: Cohort) -> Prediction:
        """Return the logits of every model of the family for every scan of ``cohort``."""

    @abstractmethod
    def state_dicts(self) -> dict[str, dict]:
        """Return the learned weights per model name (CPU tensors)."""

    def save(self, files: ModelFiles) -> dict[str, str]:
        """Write every model's checkpoint; return file name -> SHA-256."""
        from bids_qnet.outputs.atomic import write_checkpoint

        return {
            files.checkpoint_name(name): write_checkpoint(files.checkpoint(name), state)
            for name, state in self.state_dicts().items()
        }

    @classmethod
    @abstractmethod
    def load(
        cls,
        files: ModelFiles,
        checksums: dict[str, str],
        params: FitParams,
        n_classes: int,
        n_channels: int,
    ) -> Estimator:
        """Read a fitted family back from its checkpoints (each checked against its SHA-256)."""

    def report(self, record: dict) -> None:
        """Hand an epoch's history record to the progress callback."""
        if self.progress is not None:
            self.progress(self.stage_label, record)
