import numpy as np
import pandas as pd
import pytest

from bids_qnet.errors import DataLeakageError, InputDataError, MissingInputError, UsageError
from bids_qnet.training.splits import (
    check_no_leakage,
    make_splits,
    read_splits,
    train_test_ids,
    write_splits,
)


def cohort(n_pos=13, n_neg=27):
    ids = [f"sub-{i:03d}" for i in range(n_pos + n_neg)]
    labels = [1] * n_pos + [0] * n_neg
    return ids, labels


def test_columns_and_each_participant_once_per_repeat():
    ids, labels = cohort()
    splits = make_splits(ids, labels, folds=5, repeats=3, seed=7)
    assert list(splits.columns) == ["participant_id", "label", "repeat", "fold"]
    assert len(splits) == 3 * len(ids)
    for _, rows in splits.groupby("repeat"):
        assert sorted(rows["participant_id"]) == sorted(ids)
        assert set(rows["fold"]) == set(range(5))
    label_of = dict(zip(ids, labels, strict=True))
    assert all(
        label_of[p] == lab for p, lab in zip(splits.participant_id, splits.label, strict=True)
    )


def test_stratified_within_one():
    ids, labels = cohort(13, 27)
    folds = 5
    splits = make_splits(ids, labels, folds=folds, repeats=2)
    for (_, _), rows in splits.groupby(["repeat", "fold"]):
        for label, total in ((1, 13), (0, 27)):
            assert abs((rows["label"] == label).sum() - total / folds) <= 1


def test_deterministic_by_seed_and_input_order():
    ids, labels = cohort()
    a = make_splits(ids, labels, folds=4, seed=3)
    b = make_splits(ids[::-1], labels[::-1], folds=4, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(ids, labels, folds=4, seed=4)
    fold_of = dict(zip(a.participant_id, a.fold, strict=True))
    assert fold_of != dict(zip(c.participant_id, c.fold, strict=True))
    two = make_splits(ids, labels, folds=4, repeats=2, seed=3)
    assert not np.array_equal(
        two[two.repeat == 0].sort_values("participant_id").fold.to_numpy(),
        two[two.repeat == 1].sort_values("participant_id").fold.to_numpy(),
    )


def test_train_test_ids_disjoint_and_cover():
    ids, labels = cohort()
    splits = make_splits(ids, labels, folds=5)
    seen = []
    for fold in range(5):
        train, test = train_test_ids(splits, 0, fold)
        assert not set(train) & set(test)
        assert sorted(train + test) == sorted(ids)
        seen += test
    assert sorted(seen) == sorted(ids)  # no participant in two test folds
    with pytest.raises(UsageError, match="fold 9"):
        train_test_ids(splits, 0, 9)
    with pytest.raises(UsageError, match="repeat 2"):
        train_test_ids(splits, 2, 0)


def test_usage_errors():
    ids, labels = cohort(3, 10)
    with pytest.raises(UsageError, match="at least 4 participants in every class"):
        make_splits(ids, labels, folds=4)
    make_splits(ids, labels, folds=3)
    with pytest.raises(UsageError, match="at least 2"):
        make_splits(ids, labels, folds=1)
    with pytest.raises(UsageError, match="repeats"):
        make_splits(ids, labels, folds=2, repeats=0)
    with pytest.raises(UsageError, match="labels"):
        make_splits(ids, labels[:-1], folds=2)
    with pytest.raises(UsageError, match="more than once: sub-000"):
        make_splits(ids + ["sub-000"], labels + [1], folds=2)


def test_leakage_detected():
    check_no_leakage(["sub-01", "sub-02"], ["sub-03"])
    with pytest.raises(DataLeakageError, match=r"\(fold 3\): sub-02"):
        check_no_leakage(["sub-01", "sub-02"], ["sub-02", "sub-03"], what="fold 3")
    with pytest.raises(DataLeakageError, match="sub-01"):
        check_no_leakage(["sub-01_ses-1"], ["01"])


def test_corrupted_table_leaks():
    ids, labels = cohort()
    splits = make_splits(ids, labels, folds=5)
    extra = splits.iloc[[0]].assign(fold=(splits.fold.iloc[0] + 1) % 5)
    with pytest.raises(DataLeakageError):
        train_test_ids(pd.concat([splits, extra], ignore_index=True), 0, int(extra.fold.iloc[0]))


def test_tsv_round_trip(tmp_path):
    ids, labels = cohort()
    splits = make_splits(ids, labels, folds=5, repeats=2)
    path = tmp_path / "sub" / "splits.tsv"
    write_splits(splits, path)
    assert [p.name for p in path.parent.iterdir()] == ["splits.tsv"]
    pd.testing.assert_frame_equal(read_splits(path), splits)


def test_read_errors(tmp_path):
    with pytest.raises(MissingInputError):
        read_splits(tmp_path / "none.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("participant_id\tlabel\nsub-01\t1\n")
    with pytest.raises(InputDataError, match="repeat, fold"):
        read_splits(bad)
    bad.write_text("participant_id\tlabel\trepeat\tfold\nsub-01\t1\t0\t0\nsub-01\t1\t0\t1\n")
    with pytest.raises(InputDataError, match="sub-01"):
        read_splits(bad)
