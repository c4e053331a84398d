"""A susceptibility (QSM) template on the output grid, for maps registered without a T1w.

A QSM map has little in common with a T1w image: white matter is slightly negative, cortex
slightly positive, iron-rich nuclei bright, cerebrospinal fluid zero, and the map is signed, so
neither mutual information against the T1w template nor antsRegistration's centre-of-mass
start (an intensity-weighted mean of values summing to about zero) finds its place. This module
draws a template of the same contrast from the T1w template and the atlas: three tissue classes
by k-means on the template's intensity, the ventricles as fluid and the deep grey nuclei from the
atlas, each given a typical 3 T adult susceptibility. Pure NumPy: the caller reads and writes the
images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Typical susceptibility (ppm, 3 T adults) of the tissue classes, in the order of their T1w
#: intensity (fluid darkest, white matter brightest).
TISSUE_PPM = (("CSF", 0.0), ("GM", 0.01), ("WM", -0.03))
#: Typical susceptibility (ppm) of deep grey nuclei, by atlas name without ``Left_``/``Right_``.
NUCLEI_PPM = {
    "Caudate": 0.05,
    "Putamen": 0.04,
    "Pallidum": 0.14,
    "Thalamus_Proper": 0.0,
    "Accumbens_Area": 0.03,
}
#: Atlas regions that hold fluid.
VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "3rd_Ventricle", "4th_Ventricle")
#: Smoothing of the template (mm, Gaussian sigma): about a QSM map's own blur.
SMOOTHING_MM = 1.0


def tissue_thresholds(values: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Return the two intensity thresholds between three classes (1-D k-means).

    Parameters
    ----------
    values : numpy.ndarray
        Intensities inside the brain.
    iterations : int, optional
        k-means iterations (from the 10th, 50th and 90th percentiles).

    Returns
    -------
    numpy.ndarray
        Two thresholds, increasing.
    """
    sample = np.asarray(values, dtype=np.float64).ravel()
    sample = sample[:: max(1, sample.size // 200_000)]
    centres = np.percentile(sample, [10.0, 50.0, 90.0])
    for _ in range(iterations):
        nearest = np.abs(sample[:, None] - centres[None, :]).argmin(axis=1)
        centres = np.array(
            [sample[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)]
        )
    return (centres[:-1] + centres[1:]) / 2


def susceptibility_template(
    t1w: np.ndarray, atlas: np.ndarray, labels: dict[str, int], zooms
) -> np.ndarray:
    """Return a susceptibility map (ppm) of the template's anatomy on the template's grid.

    Parameters
    ----------
    t1w : numpy.ndarray
        The brain-extracted T1w template (zero outside the brain).
    atlas : numpy.ndarray
        Atlas labels on the same grid.
    labels : dict of str to int
        Atlas region names to label values; nuclei and ventricles are found by the names of
        :data:`NUCLEI_PPM` (with ``Left_``/``Right_``) and :data:`VENTRICLES`; an atlas without
        them gives tissue classes alone.
    zooms : sequence of float
        Voxel sizes in mm.

    Returns
    -------
    numpy.ndarray
        float32, zero outside the brain, smoothed by :data:`SMOOTHING_MM`.
    """
    t1w = np.asarray(t1w, dtype=np.float32)
    atlas = np.asarray(atlas)
    brain = t1w > 1e-6
    chi = np.zeros(t1w.shape, np.float32)
    if not brain.any():
        return chi
    classes = np.digitize(t1w[brain], tissue_thresholds(t1w[brain]))
    chi[brain] = np.array([ppm for _, ppm in TISSUE_PPM], np.float32)[classes]
    fluid = [labels[name] for name in VENTRICLES if name in labels]
    chi[brain & np.isin(atlas, fluid)] = 0.0
    for name, ppm in NUCLEI_PPM.items():
        indices = [
            labels[f"{side}_{name}"] for side in ("Left", "Right") if f"{side}_{name}" in labels
        ]
        chi[brain & np.isin(atlas, indices)] = ppm
    sigma = [SMOOTHING_MM / float(z) for z in zooms]
    return ndi.gaussian_filter(chi, sigma).astype(np.float32)
