"""Stratified bootstrap of ROC AUCs that resamples participants, not slices.

As pROC's ``ci.auc(method = "bootstrap", boot.stratified = TRUE)``: cases and controls are
resampled separately (with replacement, each class keeping its size), 2000 replicates by
default, percentile confidence intervals. Here the resampled unit is the participant: at the
image level a drawn participant brings all its slices (whole clusters), so the bootstrap keeps
the within-participant correlation that a slice bootstrap would ignore.

A replicate is a vector of participant counts (how often each participant was drawn). The AUC
of a replicate is a weighted Mann-Whitney statistic, computed from a matrix ``P`` of pairwise
comparisons summed per (positive participant, negative participant)::

    AUC_r = (w_pos^r . P . w_neg^r) / ((w_pos^r . m) (w_neg^r . n))

with ``m``, ``n`` the participants' unit counts; thousands of replicates cost a few matrix
products. Using the same counts for every model (and level) makes the replicates paired.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from bids_qnet.errors import InputDataError
from bids_qnet.stats.delong import AUCComparison

DEFAULT_REPLICATES = 2000


def stratified_counts(
    participant_labels, n_replicates: int = DEFAULT_REPLICATES, rng=None
) -> np.ndarray:
    """Draw participants with replacement within each class, for every replicate.

    Parameters
    ----------
    participant_labels : array_like of {0, 1}, length P
        Each participant's class.
    n_replicates : int
        Number of bootstrap replicates R.
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.ndarray of int, shape (R, P)
        How often each participant was drawn in each replicate; within each class the counts
        of a replicate sum to the class size.

    Raises
    ------
    InputDataError
        ``n_replicates`` below 1 or a class with no participant.
    """
    labels = np.asarray(participant_labels).ravel()
    if n_replicates < 1:
        raise InputDataError(f"the bootstrap needs at least one replicate (got {n_replicates})")
    rng = np.random.default_rng(rng)
    counts = np.zeros((n_replicates, labels.size), dtype=np.int64)
    for value in (0, 1):
        members = np.flatnonzero(labels == value)
        if members.size == 0:
            raise InputDataError(f"no participant of class {value} to resample")
        draws = rng.integers(0, members.size, size=(n_replicates, members.size))
        offsets = members.size * np.arange(n_replicates)[:, None]
        class_counts = np.bincount((draws + offsets).ravel(), minlength=n_replicates * members.size)
        counts[:, members] = class_counts.reshape(n_replicates, members.size)
    return counts


def pair_matrix(y_true, score, clusters, n_clusters: int):
    """Return the pairwise comparisons summed per (positive cluster, negative cluster).

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth per unit, 1 = positive.
    score : array_like of float
        Higher = more positive.
    clusters : array_like of int
        Cluster (participant) index per unit, in ``0 .. n_clusters - 1``.
    n_clusters : int
        Number of clusters.

    Returns
    -------
    matrix : numpy.ndarray, shape (n_clusters, n_clusters)
        ``matrix[a, b]`` = sum over positive units of cluster ``a`` and negative units of
        cluster ``b`` of ``1[pos > neg] + 1/2 1[pos == neg]``.
    m, n : numpy.ndarray, shape (n_clusters,)
        Positive and negative units per cluster.
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(score, dtype=float).ravel()
    c = np.asarray(clusters).astype(int).ravel()
    pos, neg = y == 1, y == 0
    s_pos, c_pos = s[pos], c[pos]
    matrix = np.zeros((n_clusters, n_clusters))
    neg_clusters = c[neg]
    s_neg = s[neg]
    for b in np.unique(neg_clusters):
        sorted_scores = np.sort(s_neg[neg_clusters == b])
        below = np.searchsorted(sorted_scores, s_pos, side="left")
        at_or_below = np.searchsorted(sorted_scores, s_pos, side="right")
        wins = 0.5 * (below + at_or_below)
        matrix[:, b] = np.bincount(c_pos, weights=wins, minlength=n_clusters)
    m = np.bincount(c_pos, minlength=n_clusters).astype(float)
    n = np.bincount(neg_clusters, minlength=n_clusters).astype(float)
    return matrix, m, n


def bootstrap_auc(y_true, score, clusters, counts: np.ndarray) -> np.ndarray:
    """Return the AUC of every bootstrap replicate of clustered (or unclustered) scores.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth per unit (slice or scan), 1 = positive.
    score : array_like of float
        Higher = more positive.
    clusters : array_like of int
        Participant index per unit, into the columns of ``counts``; one unit per participant
        gives the ordinary stratified bootstrap.
    counts : numpy.ndarray, shape (R, P)
        Participant counts per replicate, from :func:`stratified_counts`.

    Returns
    -------
    numpy.ndarray, shape (R,)
        Replicate AUCs (NaN for a replicate without units of one class).
    """
    counts = np.asarray(counts, dtype=float)
    matrix, m, n = pair_matrix(y_true, score, clusters, counts.shape[1])
    numerator = np.einsum("ra,ab,rb->r", counts, matrix, counts, optimize=True)
    denominator = (counts @ m) * (counts @ n)
    defined = denominator > 0
    return np.where(defined, numerator / np.where(defined, denominator, 1.0), np.nan)


def stratified_bootstrap_auc(
    y_true, score, clusters=None, n_replicates: int = DEFAULT_REPLICATES, seed=None
) -> np.ndarray:
    """Bootstrap one test's AUC, resampling participants (clusters) within each class.

    Parameters
    ----------
    y_true : array_like of {0, 1}
        Truth per unit, 1 = positive; constant within a cluster.
    score : array_like of float
        Higher = more positive.
    clusters : array_like, optional
        Participant label per unit (slices of one participant share it); default: every unit
        is its own participant.
    n_replicates : int
        Number of replicates (default 2000).
    seed : int or numpy.random.Generator or None
        Seeds :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.ndarray, shape (n_replicates,)
        Replicate AUCs.

    Raises
    ------
    InputDataError
        A cluster holds units of both classes, or a class is absent.
    """
    y = np.asarray(y_true).astype(int).ravel()
    if clusters is None:
        clusters = np.arange(y.size)
    _, index = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
    index = index.ravel()
    if index.size != y.size:
        raise InputDataError(f"{index.size} cluster labels for {y.size} units")
    n_clusters = int(index.max()) + 1 if index.size else 0
    lowest = np.full(n_clusters, 2)
    highest = np.full(n_clusters, -1)
    np.minimum.at(lowest, index, y)
    np.maximum.at(highest, index, y)
    if np.any(lowest != highest):
        raise InputDataError("a participant's units carry both classes; stratification needs one")
    counts = stratified_counts(lowest, n_replicates, seed)
    return bootstrap_auc(y, score, index, counts)


def percentile_ci(replicates, conf_level: float = 0.95) -> tuple[float, float]:
    """Return the percentile confidence interval of bootstrap replicates (NaNs ignored).

    Quantiles are interpolated linearly (R's default type 7, as pROC).
    """
    values = np.asarray(replicates, dtype=float)
    alpha = (1 - conf_level) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_comparison(
    auc1: float, auc2: float, replicates1, replicates2, conf_level: float = 0.95
) -> AUCComparison:
    """Test ``auc1 - auc2`` with the SD of paired bootstrap replicate differences.

    As pROC's ``roc.test(method = "bootstrap")``: ``z = (auc1 - auc2) / sd(d_r)`` with
    ``d_r`` the replicate differences (computed on the same resampled participants); the
    interval is ``difference +/- z_(1 - alpha/2) sd``.

    Parameters
    ----------
    auc1, auc2 : float
        AUCs on the original sample.
    replicates1, replicates2 : array_like of float
        Paired replicate AUCs of the two tests.
    conf_level : float
        Confidence level.

    Returns
    -------
    AUCComparison
    """
    differences = np.asarray(replicates1, dtype=float) - np.asarray(replicates2, dtype=float)
    differences = differences[np.isfinite(differences)]
    if differences.size < 2:
        raise InputDataError("a bootstrap test needs at least two finite replicate differences")
    se = float(np.std(differences, ddof=1))
    difference = float(auc1 - auc2)
    if se == 0.0:
        z = 0.0 if difference == 0.0 else float(np.copysign(np.inf, difference))
    else:
        z = difference / se
    half = float(norm.ppf(1 - (1 - conf_level) / 2)) * se
    return AUCComparison(
        auc1=float(auc1),
        auc2=float(auc2),
        difference=difference,
        se=se,
        z=float(z),
        p=float(2 * norm.sf(abs(z))),
        ci_low=difference - half,
        ci_high=difference + half,
    )
