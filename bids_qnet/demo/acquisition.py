"""One simulated scan: random pose and warp, oblique grids, resampling and noise.

Conventions (also written to the ground truth): a scan shows at scanner point ``y`` the template
point ``p + d(p)`` with ``p = pose^-1(y)``, the pose being ``Rz Ry Rx @ diag(scale) @ p + t`` and
``d`` a low-frequency cosine series over the head's bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from bids_qnet.demo.phantom import TISSUES, Phantom

NOISE = {"Chimap": 0.01, "R2starmap": 1.5, "T1w": 0.02}  # T1w: a fraction of white matter
T1W_WM = 1000.0


def draw_pose(rng: np.random.Generator) -> dict:
    """Draw one scan's pose, slab tilt, warp and T1w bias field.

    Parameters
    ----------
    rng : numpy.random.Generator
        The participant's random stream.

    Returns
    -------
    dict
        JSON-ready ``rotation_deg``, ``translation_mm``, ``scale``, ``slab_tilt_deg``,
        ``warp_mm`` (3, 3, 3, 3) and ``t1w_bias`` (1, 2, 2, 2).
    """
    order = np.add.outer(np.add.outer(np.arange(3), np.arange(3)), np.arange(3)).astype(float)
    order[0, 0, 0] = np.inf  # no constant term: translation is in the pose
    return {
        "rotation_deg": rng.uniform(-10, 10, 3).tolist(),
        "translation_mm": rng.uniform(-10, 10, 3).tolist(),
        "scale": rng.uniform(0.88, 0.98, 3).tolist(),  # native brains are smaller than MNI's
        "slab_tilt_deg": float(rng.choice([-1, 1]) * rng.uniform(10, 20)),
        "warp_mm": (rng.normal(0, 1.2, (3, 3, 3, 3)) / order).tolist(),
        "t1w_bias": rng.normal(0, 0.04, (1, 2, 2, 2)).tolist(),
    }


def _forward(pose) -> np.ndarray:
    """Template mm -> scanner mm (4 x 4) of one scan's pose."""
    matrix = np.eye(4)
    rotation = Rotation.from_euler("xyz", pose["rotation_deg"], degrees=True).as_matrix()
    matrix[:3, :3] = rotation @ np.diag(pose["scale"])
    matrix[:3, 3] = pose["translation_mm"]
    return matrix


def template_points_shown(pose: dict, scanner_mm: np.ndarray, box: Sequence) -> np.ndarray:
    """Return the template points a scan shows at some scanner points (the ground truth).

    Follows the conventions written to ``truth.json``: a scan shows at scanner point ``y`` the
    template point ``p + d(p)`` with ``p = pose^-1(y)``.

    Parameters
    ----------
    pose : dict
        One scan's pose as ``truth.json`` holds it (``rotation_deg``, ``scale``,
        ``translation_mm``, ``warp_mm``).
    scanner_mm : numpy.ndarray
        ``(N, 3)`` scanner points in mm (RAS, as NIfTI affines give them).
    box : sequence
        ``truth.json``'s ``warp_box_mm``: lower and upper corners (template mm) of the warp's
        cosine series.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` template points in mm (RAS).
    """
    points = np.asarray(scanner_mm, dtype=float).reshape(-1, 3)
    inverse = np.linalg.inv(_forward(pose))
    template = points @ inverse[:3, :3].T + inverse[:3, 3]
    warp = _cosine_field(template.T, np.asarray(pose["warp_mm"], float), np.asarray(box, float))
    return template + warp.T


def _grid(head, brain, voxel, axes, slab) -> tuple[tuple[int, ...], np.ndarray]:
    """Cover the head (only the brain along the slab axis) with ``voxel`` mm along ``axes``."""
    local = head @ axes
    lo, hi = local.min(0) - 10, local.max(0) + 10  # points are 4 mm apart, warps a few mm
    if slab:
        lo[2], hi[2] = (brain @ axes[:, 2]).min() - 6, (brain @ axes[:, 2]).max() + 6
    shape = np.ceil((hi - lo) / voxel / 2).astype(int) * 2
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(voxel)
    affine[:3, 3] = axes @ ((lo + hi) / 2 - (shape - 1) / 2 * np.asarray(voxel))
    return tuple(int(n) for n in shape), affine


def _cosine_field(points, coef, box) -> np.ndarray:
    """Evaluate a low-frequency cosine series ``coef`` (C, K, K, K) at points (3, P) in mm."""
    u = (points - box[0][:, None]) / (box[1] - box[0])[:, None]
    k = np.arange(coef.shape[-1])[:, None]
    cx, cy, cz = (np.cos(np.pi * k * u[a]) for a in range(3))
    return np.einsum("cxyz,xp,yp,zp->cp", coef, cx, cy, cz)


def _pull(phantom, pose, shape, grid_affine, step=4) -> tuple[np.ndarray, np.ndarray]:
    """Template voxel coordinates (3, *shape) of each grid voxel, and the T1w bias field.

    Pose, warp and bias are evaluated every ``step`` voxels and interpolated linearly, which is
    exact for the affine part and close for the smooth warp.
    """
    to_template = np.linalg.inv(_forward(pose)) @ grid_affine
    to_voxel = np.linalg.inv(phantom.affine)
    lattice = np.meshgrid(*[np.arange(0, n + step, step) for n in shape], indexing="ij")
    points = (to_template @ np.stack([*lattice, np.ones_like(lattice[0])]).reshape(4, -1))[:3]
    box = np.array([phantom.head.min(0), phantom.head.max(0)])
    warped = points + _cosine_field(points, np.array(pose["warp_mm"]), box)
    bias = np.exp(_cosine_field(points, np.array(pose["t1w_bias"]), box))
    fields = np.concatenate([to_voxel[:3, :3] @ warped + to_voxel[:3, 3:], bias])
    fields = fields.reshape(4, *lattice[0].shape).astype(np.float32)
    hats = [
        np.arange(n)[:, None] / step - np.arange(m)
        for n, m in zip(shape[1:], fields.shape[2:], strict=True)
    ]
    hats = [np.maximum(1 - np.abs(h), 0).astype(np.float32) for h in hats]
    fields = np.einsum("jb,kc,xabc->xajk", *hats, fields, optimize=True)  # (4, m0, n1, n2)
    out = np.empty((4, *shape), np.float32)
    for phase in range(step):  # slices phase, phase + step, ... along the first axis
        n = len(range(phase, shape[0], step))
        np.multiply(fields[:, 1 : n + 1] - fields[:, :n], phase / step, out=out[:, phase::step])
        out[:, phase::step] += fields[:, :n]
    return out[:3], out[3]


def _sample(volume, coords) -> np.ndarray:
    return ndi.map_coordinates(volume, coords, output=np.float32, order=1, prefilter=False)


def _noise(rng, shape, suffix, levels=None) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32((levels or NOISE)[suffix])
    return noise


def simulate_scan(
    phantom: Phantom,
    chi: np.ndarray,
    r2s: np.ndarray,
    pose: dict,
    voxel: Sequence[float],
    t1w_on_gre: bool,
    rng: np.random.Generator,
    noise_levels: dict[str, float] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Resample one scan onto its grids and add noise.

    Parameters
    ----------
    phantom : Phantom
        The template-space phantom (T1w, head and brain points).
    chi, r2s : numpy.ndarray
        The participant's template-space maps, from `template_maps`.
    pose : dict
        The scan's pose, from `draw_pose`.
    voxel : sequence of 3 float
        Voxel size (mm) of the oblique GRE grid.
    t1w_on_gre : bool
        T1w on the GRE grid, else on its own 1 mm axis-aligned grid.
    rng : numpy.random.Generator
        The participant's random stream (noise).
    noise_levels : dict, optional
        Per-voxel noise SD of each suffix (default :data:`NOISE`).

    Returns
    -------
    dict
        ``{"Chimap" | "R2starmap" | "T1w": (array, affine)}``; chi and R2* are brain-masked.
    """
    forward = _forward(pose)
    head, brain = (p @ forward[:3, :3].T + forward[:3, 3] for p in (phantom.head, phantom.brain))
    slab = Rotation.from_euler("x", pose["slab_tilt_deg"], degrees=True).as_matrix()
    shape, gre = _grid(head, brain, np.asarray(voxel, float), slab * [-1, 1, 1], slab=True)  # LAS
    coords, bias = _pull(phantom, pose, shape, gre)
    r2s_map = _sample(r2s, coords)
    mask = r2s_map > TISSUES["CSF"][2] / 2  # brain mask, as QSM pipelines output
    chi_map = np.zeros(shape, np.float32)
    chi_noise = _noise(rng, mask.sum(), "Chimap", noise_levels)
    chi_map[mask] = _sample(chi, coords[:, mask]) + chi_noise
    r2s_map[~mask] = 0
    r2s_noise = _noise(rng, mask.sum(), "R2starmap", noise_levels)
    r2s_map[mask] = np.maximum(r2s_map[mask] + r2s_noise, 0.1)
    t1w_affine = gre
    if not t1w_on_gre:
        shape, t1w_affine = _grid(head, brain, np.ones(3), np.eye(3), slab=False)
        coords, bias = _pull(phantom, pose, shape, t1w_affine)
    signal = _sample(phantom.t1w, coords) * bias * np.float32(T1W_WM)
    noise = _noise(rng, (2, *shape), "T1w", noise_levels) * np.float32(T1W_WM)
    t1w = np.round(np.hypot(signal + noise[0], noise[1]))  # Rician magnitude, integers like DICOM
    return {"Chimap": (chi_map, gre), "R2starmap": (r2s_map, gre), "T1w": (t1w, t1w_affine)}
