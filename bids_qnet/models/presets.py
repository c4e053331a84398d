"""Named training configurations of the group level (``--preset``).

``quantitative`` (the default) keeps the maps in physical units from the participant level to
the classifier and tells the networks where the atlas regions are; ``paper`` is the pipeline of
Zabihi et al. as published. docs/science.md gives the measurements behind the choice.

========================  ====================================  ===================================
                          quantitative                          paper
========================  ====================================  ===================================
stage-1 network           small residual CNN at the crop's      ResNet18 on slices resized to
                          native resolution; feature maps and   ``--image-size`` (224 px)
                          raw channels pooled inside each
                          atlas region (mean, anterior-
                          posterior and left-right moments)
stage-1 input             channels standardised with the        per-image percentile stretch,
                          training fold's mean and SD (units    ImageNet normalisation
                          kept)
stage-1 augmentation      shifts of up to 1 voxel               flips, rotations, brightness,
                          (registration jitter)                 contrast, gamma
stage-1 optimiser         AdamW 1e-3, weight decay 1e-4,        Adam 3e-4, cosine, 100 epochs,
                          cosine, 30 epochs, SWA last quarter   SWA last quarter
Q-Net                     Bi-LSTM (32 per direction) on         Bi-LSTM (128 per direction) on
                          standardised embeddings, plus a       the raw embeddings, 50 epochs
                          regional read-out (L1 logistic
                          regression on the regional
                          statistics of the raw channels,
                          penalty by inner CV); the LSTM
                          learns what the read-out misses;
                          100 epochs
========================  ====================================  ===================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bids_qnet.errors import UsageError


@dataclass(frozen=True)
class TrainingPreset:
    """One named training configuration (module docstring).

    Attributes
    ----------
    name : str
        ``quantitative`` or ``paper``.
    network : str
        Stage-1 network: ``regional`` (:class:`bids_qnet.models.regional.RegionalNet`) or
        ``resnet18``.
    epochs, qnet_epochs : int
        Default stage-1 and stage-2 epochs (``--epochs`` and ``--qnet-epochs`` override them).
    lr, weight_decay : float
        Stage-1 learning rate and (AdamW) weight decay; 0 means Adam.
    augment : str
        Stage-1 augmentation: ``shift`` or ``paper``.
    width : int
        Feature maps of the regional network.
    qnet_hidden, qnet_batch_size : int
        Q-Net's hidden size per direction and participants per mini-batch (0: the stage-1
        batch size, ``--embedding-batch-size``, as the paper's pipeline always did).
    qnet_lr, qnet_weight_decay : float
        Q-Net's learning rate and (AdamW) weight decay; 0 means Adam.
    standardise : bool
        Whether Q-Net standardises its input embeddings (training-fold mean and SD).
    readout : bool
        Whether Q-Net adds the regional read-out to its scan logits.
    """

    name: str
    network: str
    epochs: int
    qnet_epochs: int
    lr: float
    weight_decay: float
    augment: str
    width: int
    qnet_hidden: int
    qnet_batch_size: int
    qnet_lr: float
    qnet_weight_decay: float
    standardise: bool
    readout: bool

    @property
    def regional(self) -> bool:
        """Whether stage 1 is the regional network (native resolution, no resizing)."""
        return self.network == "regional"

    def record(self) -> dict:
        """Return the preset as a JSON-ready dict (training records, model cards)."""
        return asdict(self)


PRESETS: dict[str, TrainingPreset] = {
    "quantitative": TrainingPreset(
        name="quantitative",
        network="regional",
        epochs=30,
        qnet_epochs=100,
        lr=1e-3,
        weight_decay=1e-4,
        augment="shift",
        width=8,
        qnet_hidden=32,
        qnet_batch_size=16,
        qnet_lr=3e-3,
        qnet_weight_decay=1e-3,
        standardise=True,
        readout=True,
    ),
    "paper": TrainingPreset(
        name="paper",
        network="resnet18",
        epochs=100,
        qnet_epochs=50,
        lr=3e-4,
        weight_decay=0.0,
        augment="paper",
        width=0,
        qnet_hidden=128,
        qnet_batch_size=0,
        qnet_lr=3e-4,
        qnet_weight_decay=0.0,
        standardise=False,
        readout=False,
    ),
}

#: The preset a run uses unless ``--preset`` says otherwise.
DEFAULT_PRESET = "quantitative"


def get_preset(name: str) -> TrainingPreset:
    """Return the preset called ``name``.

    Raises
    ------
    UsageError
        An unknown name.
    """
    try:
        return PRESETS[str(name)]
    except KeyError:
        known = ", ".join(PRESETS)
        raise UsageError(f"--preset {name}: unknown preset; choose one of {known}") from None
