"""The classical yardstick: regularised logistic regression on regional means.

Regional means of quantitative maps (susceptibility and R2* in atlas nuclei, optionally with
covariates such as age and sex) fed to a penalised logistic regression are how iron studies
classify and test groups without deep learning. :class:`RegionalLogistic` is that model, made
reproducible and safe to store:

* missing covariate values are replaced by the training mean, then every feature is
  standardised with the training mean and SD;
* the penalty (L2, or L1 for a sparse read-out) is chosen by an inner, stratified
  cross-validation on the training set only (:data:`C_GRID`, ROC AUC for two classes,
  log-loss otherwise), then the model is refitted on the whole training set;
* the fitted model is plain arrays (:meth:`state` / :meth:`from_state`): no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bids_qnet.errors import InputDataError

#: Inverse penalty strengths tried by the inner cross-validation.
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))
#: Inner folds (fewer when a class is smaller).
INNER_FOLDS = 5


@dataclass
class RegionalLogistic:
    """Standardise, choose the penalty by inner cross-validation, fit a logistic regression.

    Parameters
    ----------
    seed : int
        Random state of the inner folds.
    c_grid : sequence of float
        Inverse penalty strengths to choose from.
    penalty : str
        ``l2`` (the ROI baseline) or ``l1`` (sparse: most regions get no weight).

    Attributes
    ----------
    mean_, scale_ : numpy.ndarray
        ``(F,)`` training mean (also used for missing values) and SD of each feature.
    coef_ : numpy.ndarray
        ``(K, F)`` coefficients on standardised features (``K = 1`` for two classes).
    intercept_ : numpy.ndarray
        ``(K,)``.
    c_ : float
        The chosen inverse penalty.
    n_classes_ : int
        Number of classes.
    """

    seed: int = 0
    c_grid: Sequence[float] = C_GRID
    penalty: str = "l2"
    mean_: np.ndarray = field(default=None, repr=False)
    scale_: np.ndarray = field(default=None, repr=False)
    coef_: np.ndarray = field(default=None, repr=False)
    intercept_: np.ndarray = field(default=None, repr=False)
    c_: float = float("nan")
    n_classes_: int = 0

    def fit(self, features: np.ndarray, labels: Sequence[int], n_classes: int) -> RegionalLogistic:
        """Fit on ``(N, F)`` features (NaN allowed: imputed) and class indices.

        Raises
        ------
        InputDataError
            A class without participants, or a feature that is missing everywhere. With fewer
            than two participants in a class the penalty is not tuned (the grid's middle).
        """
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=int(n_classes))
        if x.ndim != 2 or len(x) != len(y) or counts.min() < 1:
            raise InputDataError(
                f"the ROI model needs (N, F) features and a participant of every class; got "
                f"{x.shape} features and class counts {counts.tolist()}"
            )
        mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        if not np.isfinite(mean).all():
            raise InputDataError("an ROI feature (or covariate) is missing for every participant")
        x = np.where(np.isfinite(x), x, mean)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        self.c_ = self._choose_c(z, y, int(counts.min()))
        model = self._model(self.c_).fit(z, y)
        self.mean_, self.scale_ = mean, scale
        self.coef_, self.intercept_ = model.coef_.copy(), model.intercept_.copy()
        self.n_classes_ = int(n_classes)
        return self

    def _choose_c(self, z: np.ndarray, y: np.ndarray, smallest: int) -> float:
        from sklearn.model_selection import GridSearchCV, StratifiedKFold

        folds = min(INNER_FOLDS, smallest)
        if folds < 2 or len(self.c_grid) == 1:
            return float(self.c_grid[len(self.c_grid) // 2])
        scoring = "roc_auc" if len(np.unique(y)) == 2 else "neg_log_loss"
        search = GridSearchCV(
            self._model(1.0),
            {"C": list(self.c_grid)},
            cv=StratifiedKFold(folds, shuffle=True, random_state=int(self.seed)),
            scoring=scoring,
        )
        return float(search.fit(z, y).best_params_["C"])

    def _model(self, c: float):
        from sklearn.linear_model import LogisticRegression

        if self.penalty == "l1":
            # saga shuffles: seeded, so that the same seed gives the same model
            return LogisticRegression(
                C=c, l1_ratio=1.0, solver="saga", max_iter=5000, tol=1e-4, random_state=self.seed
            )
        if self.penalty != "l2":
            raise InputDataError(f"unknown penalty {self.penalty!r} (l1 or l2)")
        return LogisticRegression(C=c, max_iter=5000)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Return ``(N, K)`` class logits; for two classes ``[-d/2, d/2]`` (``d`` the log-odds).

        The score ``logit_1 - logit_0`` is then the log-odds of the positive class.
        """
        if self.coef_ is None:
            raise InputDataError("the ROI model is not fitted")
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean_.shape[0]:
            raise InputDataError(
                f"the ROI model takes {self.mean_.shape[0]} features, got shape {x.shape}"
            )
        z = (np.where(np.isfinite(x), x, self.mean_) - self.mean_) / self.scale_
        decision = z @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:
            return np.hstack([-decision / 2.0, decision / 2.0])
        return decision

    def state(self) -> dict[str, np.ndarray]:
        """Return the fitted model as arrays (for a checkpoint)."""
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "c": np.array([self.c_]),
            "n_classes": np.array([self.n_classes_]),
        }

    @classmethod
    def from_state(cls, state: dict) -> RegionalLogistic:
        """Rebuild a fitted model from :meth:`state`'s arrays."""
        try:
            model = cls()
            model.mean_ = np.asarray(state["mean"], dtype=np.float64)
            model.scale_ = np.asarray(state["scale"], dtype=np.float64)
            model.coef_ = np.asarray(state["coef"], dtype=np.float64)
            model.intercept_ = np.asarray(state["intercept"], dtype=np.float64)
            model.c_ = float(np.asarray(state["c"]).ravel()[0])
            model.n_classes_ = int(np.asarray(state["n_classes"]).ravel()[0])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputDataError(f"not an ROI model state: {exc!r}") from exc
        shapes_ok = model.coef_.ndim == 2 and model.coef_.shape[1] == model.mean_.shape[0]
        if not shapes_ok or model.scale_.shape != model.mean_.shape:
            raise InputDataError("an ROI model state with inconsistent shapes")
        return model
