"""DeLong's test of two correlated ROC AUCs, and DeLong confidence intervals of one AUC.

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, computed with the midrank
algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21:1389-1393. Conventions, as in
R pROC (``roc.test(method = "delong", paired = TRUE)``, ``ci.auc(method = "delong")``): class 1
is positive, a higher score is more positive (the direction is fixed, never guessed), ties
count 1/2, structural-component variances use ``n - 1`` denominators, the test is two-sided and
the confidence interval of the difference is ``difference +/- z_(1 - alpha/2) * se``.

Each score is one independent unit (one per participant). Scores clustered within participants
(slices of a scan) need :mod:`bids_qnet.stats.clustered` instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm, rankdata

from bids_qnet.errors import InputDataError
from bids_qnet.stats.significance import holm, stars

__all__ = [
    "AUCComparison",
    "AUCInterval",
    "comparison_from_covariance",
    "delong_ci",
    "delong_covariance",
    "delong_test",
    "holm",
    "stars",
    "validate_scores",
]


@dataclass(frozen=True)
class AUCComparison:
    """A paired comparison of two AUCs on the same units.

    Attributes
    ----------
    auc1, auc2 : float
        The two AUCs.
    difference : float
        ``auc1 - auc2``.
    se : float
        Standard error of the difference.
    z : float
        ``difference / se`` (0 when both are 0, as pROC).
    p : float
        Two-sided p-value, ``2 * Phi(-|z|)``.
    ci_low, ci_high : float
        Confidence interval of the difference (95 % by default).
    """

    auc1: float
    auc2: float
    difference: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        """Return the fields as a plain dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class AUCInterval:
    """One AUC with its standard error and confidence interval (clipped to [0, 1], as pROC)."""

    auc: float
    se: float
    ci_low: float
    ci_high: float


def validate_scores(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Return truth as a 0/1 integer vector and scores as a (k, n) float array.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive, length n.
    scores : array_like, shape (n,) or (k, n)
        One score vector per test; higher = more positive.

    Returns
    -------
    y : numpy.ndarray of int, shape (n,)
    s : numpy.ndarray of float, shape (k, n)

    Raises
    ------
    InputDataError
        Labels outside {0, 1}, non-finite scores, mismatched lengths, or fewer than two units
        of either class (no variance can be estimated).
    """
    y = np.asarray(y_true).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.ndim != 2 or s.shape[1] != y.size:
        raise InputDataError(f"scores of shape {s.shape} do not match {y.size} labels")
    if not np.all(np.isin(y, (0, 1))):
        raise InputDataError("labels must be 0 (negative) or 1 (positive)")
    if not np.all(np.isfinite(s)):
        raise InputDataError("scores must be finite (score with logits, not saturated values)")
    y = y.astype(int)
    n_pos = int(y.sum())
    if n_pos < 2 or y.size - n_pos < 2:
        raise InputDataError(
            f"an AUC variance needs at least two positives and two negatives "
            f"(got {n_pos} and {y.size - n_pos})"
        )
    return y, s


def placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return AUCs and DeLong placement values by midranks (Sun & Xu 2014).

    Parameters
    ----------
    y : numpy.ndarray of {0, 1}, shape (n,)
        Truth, as returned by :func:`validate_scores`.
    s : numpy.ndarray, shape (k, n)
        Scores of k tests.

    Returns
    -------
    aucs : numpy.ndarray, shape (k,)
        Mann-Whitney AUCs, ties counted 1/2.
    v10 : numpy.ndarray, shape (k, m)
        For each positive, the share of negatives scored below it (ties 1/2).
    v01 : numpy.ndarray, shape (k, n_neg)
        For each negative, the share of positives scored above it (ties 1/2).
    """
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Return the AUCs of k tests on the same units and DeLong's k x k covariance matrix.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive.
    scores : array_like, shape (n,) or (k, n)
        Higher = more positive.

    Returns
    -------
    aucs : numpy.ndarray, shape (k,)
    covariance : numpy.ndarray, shape (k, k)
        ``S10 / m + S01 / n`` with ``S10``, ``S01`` the sample covariances (``n - 1``
        denominators) of the positives' and negatives' placement values.
    """
    y, s = validate_scores(y_true, scores)
    aucs, v10, v01 = placements(y, s)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / v10.shape[1] + s01 / v01.shape[1]


def comparison_from_covariance(
    aucs: np.ndarray, covariance: np.ndarray, conf_level: float = 0.95
) -> AUCComparison:
    """Return the two-sided z-test of ``aucs[0] - aucs[1]`` given their 2 x 2 covariance.

    Parameters
    ----------
    aucs : numpy.ndarray, shape (2,)
        The two AUCs.
    covariance : numpy.ndarray, shape (2, 2)
        Their covariance matrix (DeLong's or Obuchowski's).
    conf_level : float
        Confidence level of the interval of the difference.

    Returns
    -------
    AUCComparison
        As pROC: ``z = 0`` when the difference and its variance are both 0; an infinite z
        (p = 0) when only the variance is 0.
    """
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        z = 0.0 if difference == 0.0 else float(np.copysign(np.inf, difference))
    else:
        z = difference / se
    p = float(2 * norm.sf(abs(z)))
    half = float(ndtri(1 - (1 - conf_level) / 2)) * se
    return AUCComparison(
        auc1=float(aucs[0]),
        auc2=float(aucs[1]),
        difference=difference,
        se=se,
        z=float(z),
        p=p,
        ci_low=difference - half,
        ci_high=difference + half,
    )


def delong_test(y_true, score1, score2, conf_level: float = 0.95) -> AUCComparison:
    """Compare two correlated AUCs with DeLong's paired, two-sided test.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive; one entry per independent unit (participant).
    score1, score2 : array_like of float
        The two tests' scores of the same units, higher = more positive.
    conf_level : float
        Confidence level of the interval of ``auc1 - auc2``.

    Returns
    -------
    AUCComparison
        Matches R pROC's ``roc.test(roc1, roc2, method = "delong", paired = TRUE)`` with
        ``direction = "<"``.

    Raises
    ------
    InputDataError
        See :func:`validate_scores`.
    """
    aucs, covariance = delong_covariance(y_true, np.vstack([score1, score2]))
    return comparison_from_covariance(aucs, covariance, conf_level)


def delong_ci(y_true, score, conf_level: float = 0.95) -> AUCInterval:
    """Return one AUC with its DeLong standard error and confidence interval.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth, 1 = positive; one entry per independent unit.
    score : array_like of float
        Higher = more positive.
    conf_level : float
        Confidence level.

    Returns
    -------
    AUCInterval
        As pROC's ``ci.auc(method = "delong")``: ``auc +/- z se`` clipped to [0, 1].
    """
    aucs, covariance = delong_covariance(y_true, score)
    return interval_from_variance(float(aucs[0]), float(covariance[0, 0]), conf_level)


def interval_from_variance(auc: float, variance: float, conf_level: float = 0.95) -> AUCInterval:
    """Return the normal confidence interval of an AUC, clipped to [0, 1]."""
    se = float(np.sqrt(max(variance, 0.0)))
    half = float(ndtri(1 - (1 - conf_level) / 2)) * se
    return AUCInterval(auc, se, max(auc - half, 0.0), min(auc + half, 1.0))
