"""A crop grid drawn from slice labels, for tests of the regional models."""

import numpy as np

from bids_qnet.preprocess.crop import Box
from bids_qnet.preprocess.crop_grid import CropGrid


def grid_from_slice_labels(labels: np.ndarray, names: dict[int, str]) -> CropGrid:
    """Return a 2 mm Chimap + R2starmap crop grid whose ``slice_labels()`` are ``labels``.

    ``labels`` is ``(T, H, W)`` as the slice stacks see it; ``names`` maps label values to atlas
    region names, which are also the grid's regions, in that order.
    """
    volume = labels[:, ::-1, :].transpose(2, 1, 0)  # (X, Y, Z), the inverse of slice_stack
    return CropGrid(
        affine=np.eye(4),
        shape=volume.shape,
        zooms=(2.0, 2.0, 2.0),
        box=Box((0, 0, 0), volume.shape),
        channels=["Chimap", "R2starmap"],
        atlas_name="test",
        labels=np.ascontiguousarray(volume),
        names=dict(names),
        regions=tuple(names.values()),
    )
