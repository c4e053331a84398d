"""What patients carry: the planted iron effect, by kind, size and regions.

Three kinds, each applied in template space to the participant's maps before partial-volume
smoothing, to the planted regions only:

* ``scale`` (the quick demo): positive susceptibility and all R2* times ``1 + size * u``;
* ``offset``: ``size * u`` ppm added to susceptibility, ``r2s_per_ppm`` times that to R2*;
* ``gradient``: a zero-mean anterior-posterior ramp inside each planted region, ``size * u`` ppm
  from its posterior to its anterior end (the regional mean is unchanged), R2* likewise.

``u ~ U(0.6, 1.4)`` is drawn for every participant (so the group does not shift the random
stream) and makes patients differ in how much iron they carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bids_qnet.errors import UsageError

EFFECT_KINDS = ("scale", "offset", "gradient")

#: R2* change per ppm of susceptibility change in iron-rich nuclei (about 1.6 1/s per 0.012 ppm).
R2S_PER_PPM = 133.0


@dataclass(frozen=True)
class Effect:
    """The planted effect of a cohort.

    Attributes
    ----------
    kind : {"scale", "offset", "gradient"}
        See the module docstring.
    size : float
        Relative increase for ``scale``; ppm for ``offset`` and ``gradient``.
    r2s_per_ppm : float
        R2* change (1/s) per ppm of susceptibility change, for ``offset`` and ``gradient``.
    """

    kind: str = "scale"
    size: float = 0.5
    r2s_per_ppm: float = R2S_PER_PPM

    def __post_init__(self) -> None:
        if self.kind not in EFFECT_KINDS:
            raise UsageError(f"effect kind {self.kind!r} is not one of {', '.join(EFFECT_KINDS)}")
        if not np.isfinite(self.size) or self.size < 0 or self.r2s_per_ppm < 0:
            raise UsageError(f"effect size {self.size} and r2s_per_ppm must be >= 0")

    def to_dict(self) -> dict:
        """Return the effect as JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class PlantedRegion:
    """The voxels of one planted region on the phantom grid.

    Attributes
    ----------
    name : str
        Atlas region name.
    voxels : numpy.ndarray
        Flat indices of the region's voxels.
    y_mm : numpy.ndarray
        Anterior template coordinate (mm) of each of those voxels.
    """

    name: str
    voxels: np.ndarray
    y_mm: np.ndarray


def locate_regions(
    atlas: np.ndarray, inside: np.ndarray, affine: np.ndarray, labels: dict[str, int], names
) -> list[PlantedRegion]:
    """Locate the planted regions on a phantom grid.

    Parameters
    ----------
    atlas : numpy.ndarray
        Atlas label of each voxel.
    inside : numpy.ndarray
        Voxels that may carry the effect (the brain).
    affine : numpy.ndarray
        Voxel to template mm (RAS).
    labels : dict
        Atlas name to label value.
    names : sequence of str
        The planted regions.

    Returns
    -------
    list of PlantedRegion
    """
    regions = []
    for name in names:
        voxels = np.flatnonzero((atlas == labels[name]) & inside)
        ijk = np.stack(np.unravel_index(voxels, atlas.shape)).astype(float)
        y_mm = affine[1, :3] @ ijk + affine[1, 3]
        regions.append(PlantedRegion(name, voxels, y_mm))
    return regions


def apply_effect(
    chi: np.ndarray,
    r2s: np.ndarray,
    regions: list[PlantedRegion],
    effect: Effect,
    u: float,
) -> None:
    """Add a patient's effect to template-space maps, in place.

    Parameters
    ----------
    chi, r2s : numpy.ndarray
        Susceptibility (ppm) and R2* (1/s) maps, before smoothing.
    regions : list of PlantedRegion
        Where to plant it.
    effect : Effect
        What to plant.
    u : float
        The patient's multiplier of the effect size.
    """
    size = effect.size * u
    for region in regions:
        voxels = region.voxels
        if voxels.size == 0:
            continue
        if effect.kind == "scale":
            excess = chi.flat[voxels]
            chi.flat[voxels] = np.where(excess > 0, excess * np.float32(1 + size), excess)
            r2s.flat[voxels] *= np.float32(1 + size)
            continue
        if effect.kind == "offset":
            change = np.full(voxels.size, size)
        else:  # gradient: zero mean over the region, size from posterior to anterior end
            y = region.y_mm
            span = max(float(y.max() - y.min()), 1e-6)
            ramp = (y - y.mean()) / span
            change = size * ramp
        chi.flat[voxels] += change.astype(np.float32)
        r2s.flat[voxels] += (effect.r2s_per_ppm * change).astype(np.float32)
