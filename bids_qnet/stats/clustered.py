"""Clustered ROC AUC (Obuchowski 1997) and the paired comparison of two tests on the same clusters.

Obuchowski NA (1997). Nonparametric analysis of clustered ROC curve data. Biometrics 53:567-578.
Slices of one participant are not independent: their scores share the participant's anatomy
and model. Obuchowski's estimator keeps the pooled Mann-Whitney AUC over all units (ties 1/2,
higher score = positive) and estimates its variance from cluster sums of DeLong placement
values, so that duplicating every unit of a cluster leaves the variance unchanged, whereas
DeLong's test on slices treated as independent shrinks it. With one unit per cluster the
estimator equals DeLong's exactly.

With ``I`` clusters, cluster ``i`` holding ``m_i`` positive and ``n_i`` negative units,
``M = sum m_i``, ``N = sum n_i``, ``V10_i`` the sum over the cluster's positives of the share
of all negatives below them and ``V01_i`` the sum over its negatives of the share of all
positives above them, the covariance of tests ``r`` and ``s`` is::

    S10 = I10 / ((I10 - 1) M) sum_i (V10_i^r - m_i A^r)(V10_i^s - m_i A^s)
    S01 = I01 / ((I01 - 1) N) sum_i (V01_i^r - n_i A^r)(V01_i^s - n_i A^s)
    S11 = I / (I - 1)         sum_i (V10_i^r - m_i A^r)(V01_i^s - n_i A^s)
    cov = S10 / M + S01 / N + (S11^{rs} + S11^{sr}) / (M N)

where ``I10`` (``I01``) counts the clusters with at least one positive (negative) unit.
"""

from __future__ import annotations

import numpy as np

from bids_qnet.errors import InputDataError
from bids_qnet.stats.delong import (
    AUCComparison,
    AUCInterval,
    comparison_from_covariance,
    interval_from_variance,
    placements,
    validate_scores,
)


def cluster_indices(clusters) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct cluster labels and each unit's index into them.

    Parameters
    ----------
    clusters : array_like
        One cluster label (e.g. a participant id) per unit.

    Returns
    -------
    labels : numpy.ndarray
        Sorted distinct labels.
    index : numpy.ndarray of int
        ``labels[index]`` equals ``clusters``.
    """
    labels, index = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
    return labels, index.ravel()


def obuchowski_covariance(y_true, scores, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Return the AUCs of k tests on the same clustered units and their k x k covariance.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth per unit (e.g. per slice), 1 = positive.
    scores : array_like, shape (n,) or (k, n)
        Higher = more positive.
    clusters : array_like, length n
        Cluster label per unit (e.g. ``participant_id``); a cluster may hold units of both
        classes.

    Returns
    -------
    aucs : numpy.ndarray, shape (k,)
        Pooled Mann-Whitney AUCs over all units.
    covariance : numpy.ndarray, shape (k, k)
        Obuchowski's (1997) covariance matrix.

    Raises
    ------
    InputDataError
        Invalid labels or scores (see :func:`bids_qnet.stats.delong.validate_scores`), a
        cluster list of the wrong length, or fewer than two clusters holding each class.
    """
    y, s = validate_scores(y_true, scores)
    labels, index = cluster_indices(clusters)
    if index.size != y.size:
        raise InputDataError(f"{index.size} cluster labels for {y.size} units")
    n_clusters = labels.size
    aucs, v10, v01 = placements(y, s)
    pos, neg = y == 1, y == 0
    m_i = np.bincount(index[pos], minlength=n_clusters).astype(float)
    n_i = np.bincount(index[neg], minlength=n_clusters).astype(float)
    i10, i01 = int(np.count_nonzero(m_i)), int(np.count_nonzero(n_i))
    if i10 < 2 or i01 < 2:
        raise InputDataError(
            f"a clustered AUC variance needs at least two clusters with positives and two with "
            f"negatives (got {i10} and {i01})"
        )
    big_m, big_n = float(m_i.sum()), float(n_i.sum())
    v10_i = np.stack([np.bincount(index[pos], weights=row, minlength=n_clusters) for row in v10])
    v01_i = np.stack([np.bincount(index[neg], weights=row, minlength=n_clusters) for row in v01])
    d10 = v10_i - aucs[:, None] * m_i[None, :]
    d01 = v01_i - aucs[:, None] * n_i[None, :]
    s10 = i10 / ((i10 - 1) * big_m) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * big_n) * (d01 @ d01.T)
    s11 = n_clusters / (n_clusters - 1) * (d10 @ d01.T)
    covariance = s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
    return aucs, covariance


def obuchowski_test(y_true, score1, score2, clusters, conf_level: float = 0.95) -> AUCComparison:
    """Compare two tests' AUCs on the same clustered units (paired, two-sided z-test).

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth per unit, 1 = positive.
    score1, score2 : array_like of float
        The two tests' scores of the same units, higher = more positive.
    clusters : array_like
        Cluster label per unit (the participant).
    conf_level : float
        Confidence level of the interval of ``auc1 - auc2``.

    Returns
    -------
    AUCComparison
        ``z = (auc1 - auc2) / sqrt(var1 + var2 - 2 cov)`` with Obuchowski's variances.
    """
    aucs, covariance = obuchowski_covariance(y_true, np.vstack([score1, score2]), clusters)
    return comparison_from_covariance(aucs, covariance, conf_level)


def obuchowski_ci(y_true, score, clusters, conf_level: float = 0.95) -> AUCInterval:
    """Return one clustered AUC with its Obuchowski standard error and normal CI in [0, 1]."""
    aucs, covariance = obuchowski_covariance(y_true, score, clusters)
    return interval_from_variance(float(aucs[0]), float(covariance[0, 0]), conf_level)
