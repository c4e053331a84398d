"""The ROI baseline as a model family: regional means of every channel -> logistic regression.

:class:`ROIEstimator` pools each scan's slice stack into the mean of every channel inside every
atlas region of the group context (``--regions``; the crop's regions by default), adds the
covariates (``--covariates``), and fits :class:`~bids_qnet.models.roi.RegionalLogistic`. It is
cross-validated on the same splits as the networks, so its out-of-fold predictions enter the same
metrics, ROC curves and paired DeLong tests. It classifies whole scans only (no image-level
rows). Its checkpoint holds the fitted arrays and the label slices it pools with, so a saved
final model predicts without the group context (covariates it cannot find count as missing and
take the training mean).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from bids_qnet.errors import InputDataError
from bids_qnet.models.roi import RegionalLogistic
from bids_qnet.outputs.names import ModelFiles
from bids_qnet.preprocess.regions import pooling_weights, regional_statistics
from bids_qnet.training.base import Cohort, Estimator, Prediction, ScanLogits
from bids_qnet.training.checkpoints import load_state

LOGGER = logging.getLogger(__name__)


class ROIEstimator(Estimator):
    """Regularised logistic regression on regional means (and covariates).

    Learned attributes: ``model_`` (:class:`RegionalLogistic`), ``label_slices_`` (``(S, H, W)``
    atlas labels), ``regions_`` and ``indices_`` (names and labels of the regions),
    ``channels_`` (channel names), ``covariates_`` (covariate names), ``history_``.
    """

    NAME = "ROI"
    models: ClassVar[tuple[str, ...]] = (NAME,)
    labels: ClassVar[dict[str, str]] = {NAME: "ROI (regional means)"}
    history_key: ClassVar[str] = "roi"
    stage_label: ClassVar[str] = "ROI"

    def fit(self, cohort: Cohort, labels: Sequence[int]) -> ROIEstimator:
        """Pool the cohort into regional means and fit the penalised logistic regression."""
        context = cohort.context
        if context is None:
            raise InputDataError("the ROI model needs the crop's atlas regions (group context)")
        self.label_slices_ = context.grid.slice_labels()
        self.regions_ = list(context.regions)
        self.indices_ = context.region_indices()
        self.channels_ = list(context.grid.channels)
        table = context.covariates
        self.covariates_ = [] if table is None else [str(c) for c in table.columns]
        features = self._features(cohort)
        self.model_ = RegionalLogistic(seed=self.params.seed).fit(features, labels, self.n_classes)
        self.history_ = [{"C": self.model_.c_, "features": int(features.shape[1])}]
        LOGGER.info(
            "ROI: logistic regression on %d features (%d regions x %d channels%s), C = %.3g",
            features.shape[1],
            len(self.regions_),
            len(self.channels_),
            f" + {len(self.covariates_)} covariates" if self.covariates_ else "",
            self.model_.c_,
        )
        return self

    @property
    def feature_names(self) -> list[str]:
        """``<region>_<channel>`` for every region and channel, then the covariates."""
        return [f"{r}_{c}" for r in self.regions_ for c in self.channels_] + self.covariates_

    def _features(self, cohort: Cohort) -> np.ndarray:
        weights = pooling_weights(self.label_slices_, self.indices_, ("mean",))
        rows = []
        for scan, stack in zip(cohort.scans, cohort.stacks(), strict=True):
            if tuple(stack.shape[2:]) != self.label_slices_.shape[1:] or len(stack) != len(
                weights[0]
            ):
                raise InputDataError(
                    f"{scan.scan_id}: slices {tuple(stack.shape)} do not fit the atlas slices "
                    f"{self.label_slices_.shape} of the ROI model"
                )
            rows.append(regional_statistics(stack, weights).ravel())
        regional = np.asarray(rows, dtype=np.float64)
        if not self.covariates_:
            return regional
        context = cohort.context
        covariates = (
            context.covariate_rows(cohort.scans, self.covariates_)
            if context is not None
            else np.full((len(cohort.scans), len(self.covariates_)), np.nan)
        )
        return np.hstack([regional, covariates])

    def predict(self, cohort: Cohort) -> Prediction:
        """Return each scan's logits (scan level only)."""
        logits = self.model_.logits(self._features(cohort))
        return Prediction({self.NAME: [ScanLogits(None, row) for row in logits]})

    def coefficients(self) -> pd.DataFrame:
        """Return the fitted coefficients on standardised features, one row per feature."""
        rows = []
        names = self.feature_names
        for k, coef in enumerate(self.model_.coef_):
            for name, value, mean, scale in zip(
                names, coef, self.model_.mean_, self.model_.scale_, strict=True
            ):
                rows.append(
                    {
                        "feature": name,
                        "class_index": k + 1 if len(self.model_.coef_) == 1 else k,
                        "coefficient": float(value),
                        "training_mean": float(mean),
                        "training_sd": float(scale),
                    }
                )
        return pd.DataFrame(rows).assign(C=self.model_.c_)

    def state_dicts(self) -> dict[str, dict]:
        """Return the fitted arrays, the label slices and the names."""
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in self.model_.state().items()}
        state["label_slices"] = torch.from_numpy(self.label_slices_.astype(np.int32))
        state["indices"] = torch.tensor(self.indices_, dtype=torch.int64)
        state["names"] = {
            "regions": self.regions_,
            "channels": self.channels_,
            "covariates": self.covariates_,
        }
        return {self.NAME: state}

    @classmethod
    def load(cls, files: ModelFiles, checksums, params, n_classes, n_channels) -> ROIEstimator:
        """Read ``ROI.pt`` back."""
        name = files.checkpoint_name(cls.NAME)
        if name not in checksums:
            raise InputDataError(f"{files.folder} has no recorded SHA-256 for {name}")
        state = load_state(files.checkpoint(cls.NAME), checksums[name])
        estimator = cls(params, n_classes)
        try:
            names = state["names"]
            estimator.regions_ = [str(r) for r in names["regions"]]
            estimator.channels_ = [str(c) for c in names["channels"]]
            estimator.covariates_ = [str(c) for c in names["covariates"]]
            estimator.label_slices_ = state["label_slices"].numpy().astype(np.int32)
            estimator.indices_ = [int(i) for i in state["indices"].tolist()]
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputDataError(f"{files.checkpoint(cls.NAME)} is not an ROI model") from exc
        arrays = {k: v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
        estimator.model_ = RegionalLogistic.from_state(arrays)
        if len(estimator.channels_) != int(n_channels):
            raise InputDataError(
                f"{files.checkpoint(cls.NAME)} was fitted on {len(estimator.channels_)} channels"
            )
        return estimator
