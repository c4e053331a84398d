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

from bids_qnet.demo.effects import Effect, PlantedRegion, apply_effect
from bids_qnet.inputs.reference import atlas_on_grid, load_reference, template_on_grid

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
# Ageing of iron-rich nuclei after 40: chi (ppm/yr), R2* (1/s/yr), in realistic cohorts
AGE_SLOPES = {"Caudate": (0.0003, 0.04), "Putamen": (0.001, 0.13), "Pallidum": (0.001, 0.13)}
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


def realistic_regional_values(rng: np.random.Generator, age: float) -> np.ndarray:
    """Draw chi and R2* of each segment as real cohorts vary (CONVENTIONS section 6).

    Susceptibility varies between participants by about 15 % (SD) of the regional value (at
    least 0.003 ppm), R2* by about 8 %; left and right nuclei of one kind correlate (0.6) and R2*
    follows susceptibility (0.6). Putamen and pallidum gain 0.001 ppm and 0.13 1/s a year after
    40, the caudate a third of that.

    Parameters
    ----------
    rng : numpy.random.Generator
        The participant's random stream.
    age : float
        Age in years.

    Returns
    -------
    numpy.ndarray
        (len(SEGMENTS) - 1, 2): chi (ppm) and R2* (1/s).
    """
    kinds = [s.removeprefix("Left_").removeprefix("Right_") for s in SEGMENTS[1:]]
    shared = {kind: rng.standard_normal() for kind in dict.fromkeys(kinds)}
    own = rng.standard_normal((len(kinds), 2))
    z = np.array([shared[k] for k in kinds]) * math.sqrt(0.6) + own[:, 0] * math.sqrt(0.4)
    z_r2s = 0.6 * z + 0.8 * own[:, 1]
    years = max(float(age) - 40.0, 0.0)
    chi, r2s = _VALUES[:, 0].copy(), _VALUES[:, 2].copy()
    for i, kind in enumerate(kinds):
        chi[i] += years * AGE_SLOPES.get(kind, (0.0, 0.0))[0]
        r2s[i] += years * AGE_SLOPES.get(kind, (0.0, 0.0))[1]
    chi = chi + regional_sd(chi) * z
    r2s = r2s * (1.0 + 0.08 * z_r2s)
    return np.stack([chi, r2s], axis=1)


def base_susceptibility(segments) -> np.ndarray:
    """Return the chi (ppm) of segments (names of ``SEGMENTS``; others count as grey matter)."""
    index = {name: i for i, name in enumerate(SEGMENTS[1:])}
    return _VALUES[[index.get(s, index["GM"]) for s in segments], 0]


def regional_sd(chi: np.ndarray) -> np.ndarray:
    """Return the between-participant SD (ppm) of susceptibility for regional values ``chi``."""
    return 0.15 * np.maximum(np.abs(chi), 0.02)


def template_maps(
    phantom: Phantom,
    values: np.ndarray,
    regions: list[PlantedRegion] | None = None,
    effect: Effect | None = None,
    u: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint susceptibility and R2* in template space, smoothed (1 mm) like partial volume.

    Parameters
    ----------
    phantom : Phantom
        The template-space phantom.
    values : numpy.ndarray
        Chi and R2* of each segment but background, from `regional_values`.
    regions : list of PlantedRegion, optional
        The planted regions.
    effect : Effect, optional
        The patient's effect (None for controls).
    u : float
        The patient's multiplier of the effect size.

    Returns
    -------
    chi, r2s : numpy.ndarray
        Float32 maps on the phantom grid.
    """
    lut = np.vstack([[0.0, 0.0], values]).astype(np.float32)
    chi, r2s = lut[:, 0][phantom.seg], lut[:, 1][phantom.seg]
    if effect is not None and regions:
        apply_effect(chi, r2s, regions, effect, u)
    sigma = 1.0 / phantom.resolution
    return ndi.gaussian_filter(chi, sigma), ndi.gaussian_filter(r2s, sigma)


def smooth_field(phantom: Phantom, rng: np.random.Generator, sd: float) -> np.ndarray:
    """Draw a smooth random field (cosine series up to order 2 per axis) of about ``sd`` SD.

    Parameters
    ----------
    phantom : Phantom
        Gives the grid.
    rng : numpy.random.Generator
        The participant's random stream.
    sd : float
        Approximate standard deviation of the field over the grid.

    Returns
    -------
    numpy.ndarray
        float32 field on the phantom grid.
    """
    order = np.add.outer(np.add.outer(np.arange(3), np.arange(3)), np.arange(3)).astype(float)
    order[0, 0, 0] = np.inf  # no constant: a level is what the cohort's regions already vary by
    coef = rng.normal(0.0, 1.0, (3, 3, 3)) / order
    coef *= sd / max(float(np.sqrt((coef**2).sum() / 8)), 1e-12)
    k = np.arange(3)[:, None]
    axes = [np.cos(np.pi * k * (np.arange(n) + 0.5) / n) for n in phantom.seg.shape]
    field = np.einsum("abc,ai,bj,ck->ijk", coef, *axes, optimize=True)
    return field.astype(np.float32)
