import json
from pathlib import Path

import pytest

from bids_qnet.errors import InputDataError, MissingInputError, UsageError
from bids_qnet.inputs.labels import LabelSpec, load_labels


def write_tsv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "participants.tsv"
    path.write_text(text)
    return path


@pytest.fixture
def tsv(tmp_path):
    return write_tsv(
        tmp_path,
        "participant_id\tgroup\tage\tsex\n"
        "sub-01\tHC\t30\tM\n"
        "sub-02\tHH\t41\tF\n"
        "sub-03\tHH\t55\tF\n"
        "sub-04\tHC\t62\tM\n"
        "sub-05\tn/a\t47\tM\n"
        "sub-06\tXX\t38\tF\n"
        "sub-07\t\t70\tM\n",
    )


def test_default_sorted_classes_second_is_positive(tsv):
    labels, spec, notes = load_labels(tsv, classes=["HC", "HH"])
    assert spec == LabelSpec(column="group", classes=("HC", "HH"), positive="HH")
    assert labels == {"sub-01": 0, "sub-02": 1, "sub-03": 1, "sub-04": 0}
    assert "sub-05: no value in column 'group'" in notes
    assert "sub-07: no value in column 'group'" in notes
    assert any(n.startswith("sub-06: value 'XX'") for n in notes)
    assert len(notes) == 3
    assert json.loads(json.dumps(spec.to_dict()))["classes"] == ["HC", "HH"]


def test_positive_gets_index_one(tsv):
    labels, spec, _ = load_labels(tsv, classes=["HC", "HH"], positive="HC")
    assert spec.classes == ("HH", "HC") and spec.positive == "HC"
    assert labels["sub-01"] == 1 and labels["sub-02"] == 0


def test_given_order_kept_for_many_classes(tsv):
    labels, spec, notes = load_labels(tsv, classes=["HH", "XX", "HC"])
    assert spec.classes == ("HH", "XX", "HC") and spec.positive is None
    assert labels["sub-06"] == 1 and labels["sub-01"] == 2
    assert len(notes) == 2


def test_all_values_sorted_when_no_classes(tsv):
    _, spec, _ = load_labels(tsv)
    assert spec.classes == ("HC", "HH", "XX") and spec.positive is None


def test_numeric_classes_sorted_numerically(tmp_path):
    path = write_tsv(
        tmp_path,
        "participant_id\tstage\n"
        + "".join(f"sub-{i:02d}\t{v}\n" for i, v in enumerate([10, 2, 10, 2], start=1)),
    )
    labels, spec, _ = load_labels(path, column="stage")
    assert spec.classes == ("2", "10") and spec.positive == "10"
    assert labels["sub-01"] == 1


def test_ids_without_prefix_get_sub(tmp_path):
    path = write_tsv(tmp_path, "participant_id\tgroup\n01\tA\n02\tB\n")
    labels, _, _ = load_labels(path)
    assert set(labels) == {"sub-01", "sub-02"}


def test_bins_quantiles(tsv):
    labels, spec, notes = load_labels(tsv, column="age", bins=2)
    assert spec.classes == ("q1", "q2") and spec.positive == "q2" and spec.bins == 2
    assert len(spec.edges) == 3 and spec.edges[0] == 30 and spec.edges[-1] == 70
    assert labels["sub-01"] == 0 and labels["sub-07"] == 1
    assert notes == []
    _, spec3, _ = load_labels(tsv, column="age", bins=3)
    assert spec3.classes == ("q1", "q2", "q3") and spec3.positive is None


def test_bins_ties_too_few(tmp_path):
    path = write_tsv(
        tmp_path, "participant_id\tscore\n" + "".join(f"sub-{i}\t5\n" for i in range(6))
    )
    with pytest.raises(InputDataError, match="too few distinct"):
        load_labels(path, column="score", bins=3)


def test_bins_non_numeric(tsv):
    with pytest.raises(UsageError, match="numeric"):
        load_labels(tsv, column="sex", bins=2)


def test_bins_with_classes_or_too_small(tsv):
    with pytest.raises(UsageError):
        load_labels(tsv, column="age", bins=2, classes=["q1", "q2"])
    with pytest.raises(UsageError, match="at least 2"):
        load_labels(tsv, column="age", bins=1)


def test_missing_file(tmp_path):
    with pytest.raises(MissingInputError, match="participants.tsv"):
        load_labels(tmp_path / "participants.tsv")


def test_no_participant_id(tmp_path):
    path = write_tsv(tmp_path, "subject\tgroup\nsub-01\tA\n")
    with pytest.raises(InputDataError, match="participant_id"):
        load_labels(path)


def test_missing_column_lists_available(tsv):
    with pytest.raises(UsageError, match="available columns: group, age, sex"):
        load_labels(tsv, column="diagnosis")


def test_duplicate_ids(tmp_path):
    path = write_tsv(tmp_path, "participant_id\tgroup\nsub-01\tA\nsub-02\tB\nsub-01\tB\n")
    with pytest.raises(InputDataError, match="duplicate participant ids: sub-01"):
        load_labels(path)


def test_class_never_occurs(tsv):
    with pytest.raises(UsageError, match="HX"):
        load_labels(tsv, classes=["HC", "HX"])


def test_fewer_than_two_classes(tmp_path, tsv):
    (tmp_path / "one").mkdir()
    path = write_tsv(tmp_path / "one", "participant_id\tgroup\nsub-01\tA\nsub-02\tA\nsub-03\tn/a\n")
    with pytest.raises(InputDataError, match="fewer than 2 classes"):
        load_labels(path)
    with pytest.raises(InputDataError, match="fewer than 2 classes"):
        load_labels(tsv, classes=["HC"])


def test_positive_not_a_class(tsv):
    with pytest.raises(UsageError, match="'XX' is not one of"):
        load_labels(tsv, classes=["HC", "HH"], positive="XX")
    with pytest.raises(UsageError, match="only to two classes"):
        load_labels(tsv, positive="HH")
