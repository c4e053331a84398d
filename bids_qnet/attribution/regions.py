"""Attribution summarised per atlas region, and localisation scores for known regions.

Pure NumPy/pandas on arrays on one crop grid.

Orientation. For two classes every participant's map is turned toward the positive class (an
attribution of the centred logit toward class 0 is exactly minus the one toward class 1), so that
"more relevance" means "more evidence for the positive class" in everyone. For more classes the
maps stay oriented toward each participant's target class.

Ranking. Regions are ranked by the **density contrast**: the mean relevance per voxel of the
region (summed over channels) averaged over the positive class, minus the same average over the
other participants. Dividing by the voxel count removes the advantage of large regions;
subtracting the other class removes what every participant shares. The group level ranks the
class-reference maps (:mod:`bids_qnet.attribution.contrast`: each scan explained toward its true
class from the mean of the other class), where a region scores when it both differs between
the classes and moves the network's decision; for a linear model the contrast is then twice the
weights times the class difference of the inputs. With more than two classes regions are ranked
by the mean density toward the true class over all participants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bids_qnet.errors import InputDataError

#: Regions smaller than this inside the crop are ranked after the others (100 mm^3: about 12
#: voxels at 2 mm, 100 at 1 mm; the smallest basal-ganglia label, the accumbens, has ~500 mm^3).
MIN_VOLUME_MM3 = 100.0


def region_indices(labels: np.ndarray, names: dict[int, str]) -> dict[str, int]:
    """Return region name -> label index for every non-zero label present in ``labels``.

    Labels absent from ``names`` are called ``label-<index>``.
    """
    present = sorted(int(v) for v in np.unique(labels) if int(v) != 0)
    return {names.get(i, f"label-{i}"): i for i in present}


def region_sums(maps: np.ndarray, labels: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Sum maps over every region.

    Parameters
    ----------
    maps : numpy.ndarray
        ``(N, C, X, Y, Z)`` maps (N participants, C channels).
    labels : numpy.ndarray
        ``(X, Y, Z)`` integer labels.
    indices : sequence of int
        The regions' label values.

    Returns
    -------
    numpy.ndarray
        ``(N, R, C)`` float64 sums.
    """
    maps = np.asarray(maps)
    if maps.ndim != 5 or maps.shape[2:] != np.shape(labels):
        raise InputDataError(f"maps {maps.shape} do not fit labels {np.shape(labels)}")
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1).astype(np.float64)
    lookup = {int(i): r for r, i in enumerate(indices)}
    region = np.array([lookup.get(int(v), -1) for v in np.asarray(labels).ravel()])
    keep = region >= 0
    out = np.zeros((maps.shape[0], len(indices), maps.shape[1]))
    for r in range(len(indices)):
        inside = keep & (region == r)
        out[:, r, :] = flat[:, :, inside].sum(axis=2)
    return out


def positive_mass(relevance: np.ndarray, labels: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Share of the positive relevance of one map that falls in each region.

    Parameters
    ----------
    relevance : numpy.ndarray
        ``(X, Y, Z)`` voxel relevance (channels summed).
    labels : numpy.ndarray
        ``(X, Y, Z)`` labels.
    indices : sequence of int
        Regions.

    Returns
    -------
    numpy.ndarray
        ``(R,)``: positive relevance inside each region / positive relevance in the whole crop
        (0 when the map has none).
    """
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    total = positive.sum()
    if total <= 0:
        return np.zeros(len(indices))
    return np.array([positive[labels == i].sum() / total for i in indices])


def mass_accuracy(relevance: np.ndarray, region: np.ndarray) -> float:
    """Relevance mass accuracy: positive relevance inside ``region`` / all positive relevance.

    Parameters
    ----------
    relevance : numpy.ndarray
        Voxel relevance (any shape).
    region : numpy.ndarray
        Boolean mask of the true region(s), same shape.

    Returns
    -------
    float
        In [0, 1]; NaN when the map holds no positive relevance.
    """
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    total = positive.sum()
    return float(positive[np.asarray(region, bool)].sum() / total) if total > 0 else float("nan")


def rank_accuracy(relevance: np.ndarray, region: np.ndarray) -> float:
    """Relevance rank accuracy: share of the K most relevant voxels inside the region, K = its size.

    Ties at the K-th value are broken by voxel order (stable sort).
    """
    region = np.asarray(region, bool).ravel()
    k = int(region.sum())
    if k == 0:
        return float("nan")
    order = np.argsort(-np.asarray(relevance, dtype=np.float64).ravel(), kind="stable")
    return float(region[order[:k]].mean())


def region_table(
    maps: np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str],
    channels: Sequence[str],
    labels: np.ndarray,
    names: dict[int, str],
    voxel_mm3: float,
    positive: int | None,
    min_volume_mm3: float = 0.0,
) -> pd.DataFrame:
    """Summarise oriented attribution maps per atlas region; one row per region, best first.

    Regions with less than ``min_volume_mm3`` inside the crop (slivers at its edge, whose few
    voxels make a noisy density) are listed after all the others.

    Parameters
    ----------
    maps : numpy.ndarray
        ``(N, C, X, Y, Z)`` per-participant maps, oriented as the module docstring says.
    classes : sequence of int
        True class index of each participant.
    class_names : sequence of str
        Name of each class index.
    channels : sequence of str
        Channel names (the ``C`` axis).
    labels : numpy.ndarray
        ``(X, Y, Z)`` atlas labels on the crop.
    names : dict of int to str
        Label index to region name.
    voxel_mm3 : float
        Volume of one voxel.
    positive : int or None
        Index of the positive class (two classes), else None.
    min_volume_mm3 : float
        Smallest region volume ranked among the others (:data:`MIN_VOLUME_MM3` at the group
        level).

    Returns
    -------
    pandas.DataFrame
        Columns ``rank``, ``region``, ``index``, ``voxels``, ``volume_mm3``, ``small`` (below
        ``min_volume_mm3``, ranked last), ``density_contrast``
        (the ranking statistic), ``density_contrast_<channel>``, ``share_<channel>`` (absolute
        share of each channel in the contrast), ``mass_contrast`` (share of the positive
        relevance of the contrast map), then per class ``density_<class>`` (mean relevance per
        voxel, averaged over the class) and ``mass_<class>`` (positive relevance mass fraction
        of the class-average map).
    """
    maps = np.asarray(maps, dtype=np.float32)
    classes = np.asarray(classes, dtype=int)
    if len(classes) != maps.shape[0] or len(channels) != maps.shape[1]:
        raise InputDataError(
            f"{maps.shape} maps for {len(classes)} labels and {len(channels)} channels"
        )
    regions = region_indices(labels, names)
    indices = list(regions.values())
    counts = np.array([int((labels == i).sum()) for i in indices], dtype=float)
    density = region_sums(maps, labels, indices) / counts[None, :, None]  # (N, R, C)
    present = [k for k in range(len(class_names)) if (classes == k).any()]
    class_density, class_maps, contrast, contrast_map = _contrasts(
        maps, density, classes, present, positive
    )
    table = pd.DataFrame({"region": list(regions), "index": indices, "voxels": counts.astype(int)})
    table["volume_mm3"] = counts * float(voxel_mm3)
    table["density_contrast"] = contrast.sum(axis=1)
    for c, channel in enumerate(channels):
        table[f"density_contrast_{channel}"] = contrast[:, c]
    shares = _channel_shares(contrast)
    for c, channel in enumerate(channels):
        table[f"share_{channel}"] = shares[:, c]
    table["mass_contrast"] = positive_mass(contrast_map, labels, indices)
    for k in present:
        table[f"density_{class_names[k]}"] = class_density[k].sum(axis=1)
        table[f"mass_{class_names[k]}"] = positive_mass(class_maps[k], labels, indices)
    table["small"] = table["volume_mm3"] < float(min_volume_mm3)
    table = table.sort_values(["small", "density_contrast"], ascending=[True, False], kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def _channel_shares(contrast: np.ndarray) -> np.ndarray:
    """Each channel's share of a region's absolute contrast, ``(R, C)`` (0 where none)."""
    weights = np.abs(contrast)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def _contrasts(maps, density, classes, present, positive):
    """Class averages (region densities, summed maps) and the contrast that ranks the regions.

    Two classes with a positive one: the positive class minus the other; otherwise the mean
    over all participants.
    """
    class_density = {k: density[classes == k].mean(axis=0) for k in present}  # (R, C)
    class_maps = {k: maps[classes == k].mean(axis=0).sum(axis=0) for k in present}
    if positive is not None and positive in present and len(present) == 2:
        other = next(k for k in present if k != positive)
        contrast = class_density[positive] - class_density[other]
        contrast_map = class_maps[positive] - class_maps[other]
    else:
        contrast = density.mean(axis=0)
        contrast_map = maps.mean(axis=0).sum(axis=0)
    return class_density, class_maps, contrast, contrast_map


def localisation(
    relevance: np.ndarray, labels: np.ndarray, names: dict[int, str], truth: Sequence[str]
) -> dict[str, float]:
    """Relevance mass and rank accuracy of one map for the union of the ``truth`` regions.

    Parameters
    ----------
    relevance : numpy.ndarray
        ``(X, Y, Z)`` voxel relevance (channels summed).
    labels, names :
        Atlas labels on the crop and their names.
    truth : sequence of str
        Region names (e.g. the demo's planted regions).

    Returns
    -------
    dict
        ``mass_accuracy``, ``rank_accuracy``, ``voxels`` (of the union inside the crop) and
        ``missing`` (truth regions absent from the crop).
    """
    wanted = {n: i for i, n in names.items() if n in set(truth)}
    region = np.isin(labels, list(wanted.values()))
    return {
        "mass_accuracy": mass_accuracy(relevance, region),
        "rank_accuracy": rank_accuracy(relevance, region),
        "voxels": int(region.sum()),
        "missing": sorted(set(truth) - {n for n, i in wanted.items() if (labels == i).any()}),
    }


def planted_rank_first(table: pd.DataFrame, truth: Sequence[str]) -> bool:
    """Whether the ``truth`` regions present in the table hold the first ranks."""
    found = [t for t in truth if t in set(table["region"])]
    if not found:
        return False
    top = set(table.sort_values("rank")["region"].head(len(found)))
    return top == set(found)
