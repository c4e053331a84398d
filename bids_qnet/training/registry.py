"""The model families the group level trains, listed once.

A family is an :class:`~bids_qnet.training.base.Estimator` subclass; the group level fits the
families in this order (a family may learn from the features of one before it), writes their
predictions and checkpoints and lists their models in the model card. Adding a model is one new
estimator class and one entry here.
"""

from __future__ import annotations

from bids_qnet.training.base import Estimator
from bids_qnet.training.estimators import QNetEstimator, ResNetEstimator
from bids_qnet.training.roi import ROIEstimator

#: Every family, in the order they are fitted and their predictions written: the classical
#: baseline first, so that paired comparisons read "model vs ROI".
ESTIMATORS: tuple[type[Estimator], ...] = (ROIEstimator, ResNetEstimator, QNetEstimator)

#: Every model name, in that order.
MODEL_NAMES: tuple[str, ...] = tuple(name for family in ESTIMATORS for name in family.models)

#: Model name -> the name reports show.
MODEL_LABELS: dict[str, str] = {k: v for family in ESTIMATORS for k, v in family.labels.items()}

#: The model that classifies scans at the participant level (``--model``) and that the
#: attribution explains; a final model must have it.
SCAN_MODEL = QNetEstimator.models[0]
#: The stage-1 model whose embeddings Q-Net learns from, and that Grad-CAM explains.
SLICE_MODEL = ResNetEstimator.FEATURES
#: The classical baseline (regional means, logistic regression).
BASELINE_MODEL = ROIEstimator.NAME
