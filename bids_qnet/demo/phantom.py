"""The template-space phantom: tissue classes, regional values and the planted iron effect.

The phantom is built once per resolution from the reference template and atlas: CSF, grey and
white matter by k-means on intensity, ventricles and deep grey nuclei from the atlas, and a T1w
image with CSF, skull and scalp around the brain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from bids_qnet.reference import atlas_on_grid, load_reference, template_on_grid

DEFAULT_PLANTED = ("Left_Pallidum", "Right_Pallidum", "Left_Putamen", "Right_Putamen")
# 3 T adults: chi (ppm), its slope (ppm/yr over 30), R2* (1/s), its slope, T1w (white matter = 1)
TISSUES = {
    "CSF": (0.0, 0.0, 4.0, 0.0, 0.25),
    "GM": (0.01, 0.0, 17.0, 0.0, 0.62),
    "WM": (-0.03, 0.0, 21.0, 0.0, 1.0),
    "Caudate": (0.05, 0.0005, 24.0, 0.05, 0.72),
    "Putamen": (0.04, 0.001, 26.0, 0.15, 0.76),
    "Pallidum": (0.14, 0.0, 40.0, 0.0, 0.88),
    "Thalamus_Proper": (0.0, 0.0, 22.0, 0.0, 0.84),
    "Accumbens_Area": (0.03, 0.0, 20.0, 0.0, 0.70),
}
NUCLEI = tuple(f"{side}_{name}" for name in list(TISSUES)[3:] for side in ("Left", "Right"))
SEGMENTS = ("background", "CSF", "GM", "WM", *NUCLEI)
_VALUES = np.array([TISSUES[s.removeprefix("Left_").removeprefix("Right_")] for s in SEGMENTS[1:]])
VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "3rd_Ventricle", "4th_Ventricle")
# T1w outside the brain: (outer distance from the brain in mm, intensity): CSF, skull, diploe, scalp
SHELL = ((2.0, 0.15), (3.5, 0.04), (5.5, 0.35), (7.0, 0.04), (12.0, 0.9))


@dataclass(frozen=True)
class Phantom:
    """Template-space segments and T1w of the demo, cropped around the head.

    Attributes
    ----------
    seg : numpy.ndarray
        Index into ``SEGMENTS`` of each voxel.
    atlas : numpy.ndarray
        Atlas label of each voxel.
    t1w : numpy.ndarray
        T1w relative to white matter, with CSF, skull and scalp.
    affine : numpy.ndarray
        Voxel to template mm (RAS), 4 x 4.
    head, brain : numpy.ndarray
        (P, 3) template mm of points 4 mm apart in the head and in the brain.
    resolution : float
        Voxel size in mm.
    """

    seg: np.ndarray
    atlas: np.ndarray
    t1w: np.ndarray
    affine: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    resolution: float


@lru_cache(maxsize=2)
def build_phantom(resolution: float) -> Phantom:
    """Build (once per resolution) template-space segments and a T1w with skull and scalp.

    Parameters
    ----------
    resolution : float
        Template resolution in mm.

    Returns
    -------
    Phantom
        Read-only arrays, shared by every caller with the same ``resolution``.
    """
    reference = load_reference()
    template = template_on_grid(reference, resolution)
    atlas = atlas_on_grid(reference, template).numpy().astype(np.int16)
    image = template.numpy().astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # ANTs' physical space is LPS
    affine[:3, :3] = affine[:3, :3] @ template.direction @ np.diag(template.spacing)
    affine[:3, 3] = -np.asarray(template.origin) * [1, 1, -1]
    brain = image > 1e-6
    where, margin = np.argwhere(brain), math.ceil(16.0 / resolution)  # room for skull and scalp
    lo, hi = where.min(0) - margin, where.max(0) + margin + 1
    pads = [(max(0, -a), max(0, b - n)) for a, b, n in zip(lo, hi, image.shape, strict=True)]
    crop = tuple(slice(a + p[0], b + p[0]) for a, b, p in zip(lo, hi, pads, strict=True))
    image, atlas, brain = (np.pad(a, pads)[crop] for a in (image, atlas, brain))
    affine[:3, 3] += affine[:3, :3] @ lo
    seg, white = _segment(image, brain, atlas, reference.labels)
    t1w = _t1w_phantom(image / white, brain, seg, resolution)
    step = max(1, round(4 / resolution))
    head, inside = (np.argwhere(m[::step, ::step, ::step]) * step for m in (t1w > 0.05, brain))
    head, inside = (p @ affine[:3, :3].T + affine[:3, 3] for p in (head, inside))
    for array in (seg, atlas, t1w):
        array.flags.writeable = False
    return Phantom(seg, atlas, t1w, affine, head, inside, resolution)


def _segment(image, brain, atlas, labels) -> tuple[np.ndarray, float]:
    """Label CSF/GM/WM by 3-class k-means on intensity, then ventricles and deep grey nuclei."""
    values = image[brain]
    sample = values[:: max(1, values.size // 200_000)]
    centres = np.percentile(sample, [10.0, 50.0, 90.0])
    for _ in range(50):
        nearest = np.abs(sample[:, None] - centres[None, :]).argmin(axis=1)
        centres = np.array([sample[nearest == k].mean() for k in range(3)])
    seg = np.zeros(image.shape, np.uint8)
    seg[brain] = 1 + np.digitize(values, (centres[:-1] + centres[1:]) / 2)
    seg[brain & np.isin(atlas, [labels[name] for name in VENTRICLES])] = 1
    for index, name in enumerate(NUCLEI, start=4):
        seg[brain & (atlas == labels[name])] = index
    return seg, float(centres[2])


def _t1w_phantom(texture, brain, seg, resolution) -> np.ndarray:
    """Half tissue contrast, half template texture; CSF, skull and scalp around the brain."""
    lut = np.r_[0.0, _VALUES[:, 4]].astype(np.float32)
    t1w = np.where(brain, 0.5 * lut[seg] + 0.5 * np.clip(texture, 0, 1.3), 0).astype(np.float32)
    hull = brain | (ndi.gaussian_filter(brain.astype(np.float32), 4.0 / resolution) > 0.5)
    distance = ndi.distance_transform_edt(~hull) * resolution
    t1w[hull & ~brain] = SHELL[0][1]
    for (inner, _), (outer, value) in zip(((0.0, 0.0), *SHELL[:-1]), SHELL, strict=True):
        t1w[(distance > inner) & (distance <= outer)] = value
    return ndi.gaussian_filter(t1w, 1.0 / resolution)


def regional_values(rng: np.random.Generator, age: float) -> np.ndarray:
    """Draw one participant's chi and R2* of each segment but background.

    Parameters
    ----------
    rng : numpy.random.Generator
        The participant's random stream.
    age : float
        Age in years; iron-rich nuclei gain iron after 30.

    Returns
    -------
    numpy.ndarray
        (len(SEGMENTS) - 1, 2): chi (ppm) and R2* (1/s), with age and between-subject variability.
    """
    nuclei = np.arange(len(_VALUES)) >= 3
    scale = np.where(nuclei, rng.normal(1.0, 0.05), 1.0)  # one factor for all nuclei
    chi = (_VALUES[:, 0] + _VALUES[:, 1] * (age - 30)) * scale
    r2s = (_VALUES[:, 2] + _VALUES[:, 3] * (age - 30)) * scale
    sd = np.where(nuclei, 1.0, 0.4)
    return np.stack([chi + rng.normal(0, 0.006 * sd), r2s + rng.normal(0, 1.2 * sd)], axis=1)


def template_maps(
    phantom: Phantom, values: np.ndarray, planted: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paint susceptibility and R2* in template space, smoothed (1 mm) like partial volume.

    Parameters
    ----------
    phantom : Phantom
        The template-space phantom.
    values : numpy.ndarray
        Chi and R2* of each segment but background, from `regional_values`.
    planted : numpy.ndarray
        Flat indices of the phantom voxels with more iron in patients.
    factor : float
        Multiplies positive chi and all R2* of the ``planted`` voxels (1 for controls).

    Returns
    -------
    chi, r2s : numpy.ndarray
        Float32 maps on the phantom grid.
    """
    lut = np.vstack([[0.0, 0.0], values]).astype(np.float32)
    chi, r2s = lut[:, 0][phantom.seg], lut[:, 1][phantom.seg]
    if factor != 1.0:
        excess = chi.flat[planted]
        chi.flat[planted] = np.where(excess > 0, excess * np.float32(factor), excess)
        r2s.flat[planted] *= np.float32(factor)
    sigma = 1.0 / phantom.resolution
    return ndi.gaussian_filter(chi, sigma), ndi.gaussian_filter(r2s, sigma)
