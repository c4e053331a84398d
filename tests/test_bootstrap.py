"""Stratified participant bootstrap of AUCs, and its agreement with the clustered test."""

import time

import numpy as np
import pytest

from bids_qnet.errors import InputDataError
from bids_qnet.stats.bootstrap import (
    bootstrap_auc,
    bootstrap_comparison,
    percentile_ci,
    stratified_bootstrap_auc,
    stratified_counts,
)
from bids_qnet.stats.clustered import obuchowski_ci, obuchowski_test
from bids_qnet.stats.metrics import auc_mann_whitney


def clustered_cohort(seed=0, n_participants=60, n_slices=12, effect=(0.9, 0.5)):
    """Slices clustered within participants: a shared participant effect plus slice noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_participants // 2)
    rng.shuffle(labels)
    subject = rng.normal(size=n_participants)
    participant = np.repeat(np.arange(n_participants), n_slices)
    y = labels[participant]
    scores = [
        np.repeat(subject + e * labels, n_slices) + 0.8 * rng.normal(size=participant.size)
        for e in effect
    ]
    return y, scores, participant, labels


def test_counts_keep_class_sizes():
    labels = np.array([0] * 7 + [1] * 4 + [0] * 2)
    counts = stratified_counts(labels, 500, 3)
    assert counts.shape == (500, labels.size)
    assert np.all(counts[:, labels == 0].sum(axis=1) == 9)
    assert np.all(counts[:, labels == 1].sum(axis=1) == 4)
    assert np.array_equal(counts, stratified_counts(labels, 500, 3))
    assert not np.array_equal(counts, stratified_counts(labels, 500, 4))
    # Every participant is drawn once per replicate on average.
    np.testing.assert_allclose(counts.mean(axis=0), 1.0, atol=0.15)
    with pytest.raises(InputDataError, match="class 1"):
        stratified_counts([0, 0, 0], 10, 0)


def test_replicate_auc_equals_the_auc_of_the_resampled_slices():
    y, (score, _), participant, labels = clustered_cohort(seed=1, n_participants=20, n_slices=5)
    score = np.round(score, 1)  # ties across participants
    counts = stratified_counts(labels, 25, np.random.default_rng(5))
    replicates = bootstrap_auc(y, score, participant, counts)
    for r in range(25):
        # Expand the drawn participants (with multiplicity) into their slices.
        drawn = np.repeat(np.arange(labels.size), counts[r])
        rows = np.concatenate([np.flatnonzero(participant == p) for p in drawn])
        assert replicates[r] == pytest.approx(auc_mann_whitney(y[rows], score[rows]), abs=1e-12)
    ones = np.ones((1, labels.size), dtype=int)
    assert bootstrap_auc(y, score, participant, ones)[0] == pytest.approx(
        auc_mann_whitney(y, score), abs=1e-12
    )


def test_percentile_ci_covers_the_auc_and_matches_the_clustered_se():
    y, (score, _), participant, _ = clustered_cohort(seed=2)
    replicates = stratified_bootstrap_auc(y, score, participant, n_replicates=2000, seed=7)
    assert replicates.shape == (2000,)
    auc = auc_mann_whitney(y, score)
    low, high = percentile_ci(replicates)
    assert low < auc < high
    assert low == pytest.approx(np.quantile(replicates, 0.025))
    # The participant bootstrap SD and Obuchowski's SE estimate the same quantity.
    assert np.std(replicates, ddof=1) == pytest.approx(
        obuchowski_ci(y, score, participant).se, rel=0.1
    )
    # Resampling slices as if independent would understate the spread.
    slice_level = stratified_bootstrap_auc(y, score, None, n_replicates=2000, seed=7)
    assert np.std(slice_level) < 0.6 * np.std(replicates)


def test_mixed_class_participant_is_refused():
    with pytest.raises(InputDataError, match="both classes"):
        stratified_bootstrap_auc([0, 1, 1, 0], [1, 2, 3, 4], ["a", "a", "b", "c"], 10, 0)


@pytest.mark.parametrize("seed", [4, 5])
def test_bootstrap_comparison_agrees_with_obuchowski(seed):
    y, (first, second), participant, labels = clustered_cohort(seed=seed, n_participants=80)
    clustered = obuchowski_test(y, first, second, participant)
    counts = stratified_counts(labels, 2000, seed)
    boot = bootstrap_comparison(
        clustered.auc1,
        clustered.auc2,
        bootstrap_auc(y, first, participant, counts),
        bootstrap_auc(y, second, participant, counts),
    )
    assert boot.difference == pytest.approx(clustered.difference)
    assert boot.se == pytest.approx(clustered.se, rel=0.1)
    assert boot.z == pytest.approx(clustered.z, rel=0.1)


def test_vectorised_bootstrap_is_fast():
    # 2000 replicates x 3 models x 2 levels on 100 participants x 20 slices: seconds, not minutes.
    y, scores, participant, labels = clustered_cohort(
        seed=6, n_participants=100, n_slices=20, effect=(0.9, 0.6, 0.3)
    )
    start = time.perf_counter()
    counts = stratified_counts(labels, 2000, 0)
    for score in scores:
        image = bootstrap_auc(y, score, participant, counts)
        per_participant = np.bincount(participant, weights=score) / 20
        scan = bootstrap_auc(labels, per_participant, np.arange(labels.size), counts)
        assert np.all(np.isfinite(image)) and np.all(np.isfinite(scan))
    assert time.perf_counter() - start < 20.0
