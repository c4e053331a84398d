"""Per-region summaries and localisation scores on synthetic maps with known answers."""

import numpy as np
import pytest

from bids_qnet.attribution.group import orient
from bids_qnet.attribution.regions import (
    localisation,
    mass_accuracy,
    planted_rank_first,
    rank_accuracy,
    region_table,
)

NAMES = {1: "Small_Planted", 2: "Bright_Everywhere", 3: "Large_Weak", 4: "Not_In_Crop"}


def _labels():
    labels = np.zeros((10, 10, 10), np.int32)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[4:7, 4:7, 4:7] = 2  # 27 voxels
    labels[0:4, 6:10, 6:10] = 3  # 64 voxels
    return labels


def _cohort(rng):
    """8 participants (4 per class), 2 channels, maps toward the positive class (1)."""
    labels = _labels()
    classes = np.array([0, 1] * 4)
    maps = rng.normal(0, 0.01, (8, 2, *labels.shape)).astype(np.float32)
    for n, k in enumerate(classes):
        maps[n, 0][labels == 1] += 1.0 if k == 1 else 0.0  # planted: channel 0 only
        maps[n, :][:, labels == 2] += 5.0  # bright in everyone, both channels
        maps[n, 1][labels == 3] += 0.2 if k == 1 else 0.0  # weak but large
    return maps, classes, labels


def test_region_table_ranks_the_class_difference_per_voxel():
    maps, classes, labels = _cohort(np.random.default_rng(0))
    table = region_table(maps, classes, ["HC", "HH"], ["Chimap", "T1w"], labels, NAMES, 8.0, 1)
    assert list(table["region"]) == ["Small_Planted", "Large_Weak", "Bright_Everywhere"]
    assert list(table["rank"]) == [1, 2, 3]
    first = table.iloc[0]
    assert first["voxels"] == 8 and first["volume_mm3"] == 64.0
    assert first["density_contrast"] == pytest.approx(1.0, abs=0.01)
    assert first["density_contrast_Chimap"] == pytest.approx(1.0, abs=0.01)
    assert first["share_Chimap"] == pytest.approx(1.0, abs=0.02)
    weak = table.set_index("region").loc["Large_Weak"]
    assert weak["share_T1w"] == pytest.approx(1.0, abs=0.05)
    bright = table.set_index("region").loc["Bright_Everywhere"]
    assert bright["density_HC"] == pytest.approx(10.0, abs=0.01)  # 5 per channel, 2 channels
    assert abs(bright["density_contrast"]) < 0.01
    # the bright region holds most positive mass of each class average, not of the contrast
    assert bright["mass_HH"] > 0.8 and bright["mass_HC"] > 0.9
    assert first["mass_contrast"] > 0.3
    assert table["mass_contrast"].sum() <= 1.0 + 1e-9
    assert planted_rank_first(table, ["Small_Planted"])
    assert not planted_rank_first(table, ["Bright_Everywhere"])


def test_size_alone_does_not_rank():
    """A large region with the same per-voxel contrast as a small one does not outrank it."""
    labels = _labels()
    classes = np.array([0, 1, 0, 1])
    maps = np.zeros((4, 1, *labels.shape), np.float32)
    for n, k in enumerate(classes):
        maps[n, 0][labels == 1] = 1.0 * k
        maps[n, 0][labels == 3] = 0.9 * k
    table = region_table(maps, classes, ["a", "b"], ["x"], labels, NAMES, 1.0, 1)
    assert list(table["region"][:2]) == ["Small_Planted", "Large_Weak"]


def test_slivers_are_ranked_last():
    maps, classes, labels = _cohort(np.random.default_rng(1))
    # 8 voxels of 8 mm^3 = 64 mm^3: below 100 mm^3, listed after the larger regions
    table = region_table(
        maps, classes, ["HC", "HH"], ["Chimap", "T1w"], labels, NAMES, 8.0, 1, min_volume_mm3=100
    )
    assert list(table["region"]) == ["Large_Weak", "Bright_Everywhere", "Small_Planted"]
    assert table["small"].tolist() == [False, False, True]
    assert list(table["rank"]) == [1, 2, 3]


def test_more_classes_rank_the_mean_density():
    labels = _labels()
    classes = np.array([0, 1, 2])
    maps = np.zeros((3, 1, *labels.shape), np.float32)
    maps[:, 0][:, labels == 3] = 2.0
    maps[:, 0][:, labels == 1] = 1.0
    table = region_table(maps, classes, ["a", "b", "c"], ["x"], labels, NAMES, 1.0, None)
    assert list(table["region"][:2]) == ["Large_Weak", "Small_Planted"]
    assert {"density_a", "density_b", "density_c", "mass_c"} <= set(table.columns)


def test_mass_and_rank_accuracy_formulas():
    relevance = np.array([3.0, 1.0, -2.0, 0.5, 0.5, 0.0])
    region = np.array([True, False, True, False, False, False])
    # positive relevance inside (3) over all positive relevance (3 + 1 + 0.5 + 0.5)
    assert mass_accuracy(relevance, region) == pytest.approx(3.0 / 5.0)
    # K = 2: the two most relevant voxels are 0 (inside) and 1 (outside)
    assert rank_accuracy(relevance, region) == pytest.approx(0.5)
    assert np.isnan(mass_accuracy(-np.abs(relevance), region))
    assert rank_accuracy(relevance, np.ones(6, bool)) == 1.0


def test_localisation_of_named_regions():
    labels = _labels()
    relevance = np.zeros(labels.shape)
    relevance[labels == 1] = 2.0
    relevance[labels == 2] = 1.0
    scores = localisation(relevance, labels, NAMES, ["Small_Planted", "Not_In_Crop"])
    assert scores["mass_accuracy"] == pytest.approx(16.0 / (16.0 + 27.0))
    assert scores["rank_accuracy"] == 1.0
    assert scores["voxels"] == 8
    assert scores["missing"] == ["Not_In_Crop"]


def test_orient_turns_two_class_maps_toward_the_positive_class():
    maps = np.ones((3, 2, 2), np.float32)
    oriented = orient(maps, np.array([1, 0, 1]), positive=1)
    assert oriented[:, 0, 0].tolist() == [1.0, -1.0, 1.0]
    assert orient(maps, np.array([1, 0, 2]), positive=None) is maps


def test_reliability_warnings_go_to_the_group_warnings_table(tmp_path):
    from bids_qnet.attribution.group import record_reliability
    from bids_qnet.outputs.warnings import read_warnings

    record_reliability(tmp_path, {"Warnings": [], "Unconverged": []})
    assert read_warnings(tmp_path) == []
    checks = {
        "Unconverged": ["sub-03", "sub-04"],
        "Warnings": [
            "Q-Net's scan-level AUC is 0.52 ... includes chance (0.5)",
            "Integrated Gradients did not converge for 2 of 4 scans (relative delta above 5%)",
        ],
    }
    record_reliability(tmp_path, checks)
    rows = read_warnings(tmp_path)
    assert [r["source"] for r in rows] == ["attribution", "attribution"]
    assert rows[0]["message"].startswith("Q-Net's scan-level AUC is 0.52")
    assert rows[1]["message"].endswith("(sub-03, sub-04)")
