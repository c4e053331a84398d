"""Registration accuracy against the demo's ground truth: Dice of atlas labels through transforms.

The demo (``bids_qnet-demo``) writes with each scan its pose and warp (``<bids>_truth/truth.json``):
a scan shows at scanner point ``y`` the template point ``T(y)``
(:func:`bids_qnet.demo.acquisition.template_points_shown`). A transform list that brings the scan
onto the template grid (``ants.apply_transforms`` order, as the pipeline saves it) maps each
template voxel ``q`` to a scanner point ``y(q)``; the image resampled through it shows at ``q``
the anatomy of ``T(y(q))``. For each atlas label ``L`` the Dice of ``{q: atlas(q) = L}`` and
``{q: atlas(T(y(q))) = L}`` is 1 for a perfect registration, on any grid.

``y(q)`` comes from the transforms themselves: images holding each voxel's scanner coordinates
(a linear function, so linear interpolation is exact) are resampled through the transform list
with :func:`bids_qnet.preprocess.registration.to_template_series`, the pipeline's own
resampling. The atlas is read at ``T(y(q))`` by nearest neighbour on the same grid as at ``q``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_qnet.demo.acquisition import template_points_shown

#: The basal-ganglia labels the accuracy table reports (Neuromorphometrics names).
BG_LABELS = (
    "Left_Caudate",
    "Right_Caudate",
    "Left_Putamen",
    "Right_Putamen",
    "Left_Pallidum",
    "Right_Pallidum",
)
_LPS = np.array([-1.0, -1.0, 1.0])  # ANTs' physical space is LPS, NIfTI's RAS


def _voxel_to_physical(image) -> np.ndarray:
    """Return the 4 x 4 voxel -> LPS mm matrix of an ANTs image."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.direction) @ np.diag(image.spacing)
    matrix[:3, 3] = image.origin
    return matrix


def scanner_points_on_template(subject_grid, template, transforms: Sequence[str]):
    """Return, per template voxel, the scanner point a transform list maps it to (RAS mm).

    Parameters
    ----------
    subject_grid : ants.ANTsImage
        Any image on the scan's grid (its values are not used).
    template : ants.ANTsImage
        The output grid.
    transforms : sequence of str
        ``ants.apply_transforms`` list that brings the scan onto ``template``.

    Returns
    -------
    points : numpy.ndarray
        ``(*template.shape, 3)`` scanner RAS mm.
    covered : numpy.ndarray
        Boolean, template voxels whose point lies inside the scan's grid.
    """

    from bids_qnet.preprocess.registration import to_template_series

    shape = subject_grid.shape
    index = np.indices(shape, dtype=np.float32).reshape(3, -1)
    matrix = _voxel_to_physical(subject_grid).astype(np.float32)
    lps = (matrix[:3, :3] @ index + matrix[:3, 3:]).reshape(3, *shape)
    images = [subject_grid.new_image_like(np.ascontiguousarray(c)) for c in lps]
    images.append(subject_grid.new_image_like(np.ones(shape, np.float32)))
    del index, lps
    moved = to_template_series(images, template, list(transforms))
    covered = moved[3].numpy() > 0.999
    points = np.stack([m.numpy() for m in moved[:3]], axis=-1) * _LPS
    return points, covered


def carried_labels(atlas, points: np.ndarray, covered: np.ndarray, pose: dict, box) -> np.ndarray:
    """Return the atlas label each template voxel shows through the transforms (0 outside)."""
    labels = atlas.numpy().astype(np.int32)
    shown = template_points_shown(pose, points[covered], box) * _LPS
    to_voxel = np.linalg.inv(_voxel_to_physical(atlas))
    ijk = np.rint(shown @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape)), axis=1)
    values = np.zeros(len(ijk), np.int32)
    values[inside] = labels[tuple(ijk[inside].T)]
    carried = np.zeros(labels.shape, np.int32)
    carried[covered] = values
    return carried


def dice_through(
    subject_grid,
    template,
    atlas,
    transforms: Sequence[str],
    pose: dict,
    box,
    label_names: dict[str, int],
    regions: Sequence[str] = BG_LABELS,
    margin_mm: float = 20.0,
) -> dict[str, float]:
    """Dice of atlas regions carried through a transform list against the atlas itself.

    Parameters
    ----------
    subject_grid, template, transforms
        As for :func:`scanner_points_on_template`.
    atlas : ants.ANTsImage
        Labels on the template grid.
    pose : dict
        The scan's record in ``truth.json`` (pose and warp).
    box : sequence
        ``truth.json``'s ``warp_box_mm``.
    label_names : dict
        Region name -> atlas label.
    regions : sequence of str
        Regions to score.
    margin_mm : float
        Only template voxels within this distance of the regions' bounding box are scored: a
        voxel further out carries a region only after a registration error of that size.

    Returns
    -------
    dict
        Region -> Dice.
    """
    import ants

    labels = atlas.numpy().astype(np.int32)
    where = np.argwhere(np.isin(labels, [label_names[r] for r in regions]))
    margin = np.ceil(margin_mm / np.asarray(atlas.spacing)).astype(int)
    lower = np.maximum(where.min(0) - margin, 0)
    upper = np.minimum(where.max(0) + margin + 1, labels.shape)
    template = ants.crop_indices(template, lower.tolist(), upper.tolist())
    atlas = ants.crop_indices(atlas, lower.tolist(), upper.tolist())
    labels = atlas.numpy().astype(np.int32)
    points, covered = scanner_points_on_template(subject_grid, template, transforms)
    carried = carried_labels(atlas, points, covered, pose, box)
    scores = {}
    for region in regions:
        a, b = labels == label_names[region], carried == label_names[region]
        scores[region] = float(2.0 * np.count_nonzero(a & b) / (a.sum() + b.sum()))
    return scores
