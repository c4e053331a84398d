"""Report figures drawn from arrays: registration quality and the slice stack.

Pure plotting: no BIDS knowledge, no reading of derivatives. Figures are drawn on a
:class:`matplotlib.figure.Figure` with the Agg canvas; the global pyplot backend is never touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from scipy import ndimage

from bids_qnet.outputs.atomic import write_figure

logger = logging.getLogger(__name__)

DPI = 150
PANEL_IN = 2.3  # inches per registration panel
EDGE_COLOUR = "#ff2d55"  # template brain outline
TISSUE_COLOUR = "#00e5ff"  # template white-matter outline
BOX_COLOUR = "#ffd60a"  # crop box
ROW_LABEL = {"rotation": 90, "ha": "right", "va": "center", "fontsize": 9}
_LABEL_STYLE = {"color": "white", "fontsize": 7, "fontweight": "bold"}
# Plane -> (axis cut across, horizontal axis, vertical axis) in RAS voxel order.
_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}


def registration_qc(
    template: np.ndarray,
    registered: dict[str, np.ndarray],
    box_lower: tuple[int, int, int],
    box_upper: tuple[int, int, int],
    out_path: Path,
    zooms: tuple[float, float, float] = (1, 1, 1),
    title: str = "",
) -> Path:
    """Draw registered channels under the template's outline, with the crop box.

    Rows are the registered channels (in ``registered``'s order); columns are three axial
    levels through the box (lower quarter, centre, upper quarter), then a coronal and a
    sagittal slice through the box centre. Each panel shows the channel in grey, windowed to its
    1st-99th percentile inside the template brain, the template's outlines (brain edge and
    white-matter boundary of the smoothed template) and the crop box where the slice cuts it.
    Display is neurological (subject's left on the left), anterior up in axial views, superior
    up in coronal and sagittal views; aspect ratios follow ``zooms``.

    Parameters
    ----------
    template : numpy.ndarray
        3D template image in RAS voxel order (axis 0 left to right, axis 1 posterior to
        anterior, axis 2 inferior to superior).
    registered : dict of str to numpy.ndarray
        Channel name to image on the template grid (same shape as ``template``).
    box_lower, box_upper : tuple of int
        Crop box in voxels, lower corner inclusive and upper corner exclusive (Python slice
        convention: the crop is ``image[l0:u0, l1:u1, l2:u2]``).
    out_path : Path
        Where to write the figure (PNG unless the suffix names another Matplotlib format).
    zooms : tuple of float, optional
        Voxel size in mm along the three axes.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValueError
        If no channel is given, shapes differ, or the box lies outside the grid.
    """
    template = np.asarray(template, dtype=np.float32)
    lower, upper = _checked_box(template, registered, box_lower, box_upper)
    zooms = tuple(float(z) for z in zooms)

    mask = _brain_mask(template)
    outlines = _outlines(template, mask, zooms)
    views = _views(lower, upper)

    nrows, ncols = len(registered), len(views)
    header = 0.75 if title else 0.45  # inches above the panels: column titles, figure title
    fig = Figure(figsize=(0.9 + ncols * PANEL_IN, header + 0.45 + nrows * PANEL_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for row, (name, image) in enumerate(registered.items()):
        image = np.asarray(image, dtype=np.float32)
        vmin, vmax = robust_window(image, mask)
        label = f"{name}\n[{vmin:.3g}, {vmax:.3g}]"
        axes[row, 0].text(-0.06, 0.5, label, transform=axes[row, 0].transAxes, **ROW_LABEL)
        for col, (plane, index) in enumerate(views):
            _panel(axes[row, col], plane, index, image, (vmin, vmax), outlines, lower, upper, zooms)
            if row == 0:
                axis_name = "xyz"[_AXES[plane][0]]
                axes[row, col].set_title(f"{plane.capitalize()} {axis_name}={index}", fontsize=9)
    _legend_and_margins(fig, title, header)
    return _save(fig, out_path)


def _outlines(template: np.ndarray, mask: np.ndarray, zooms) -> list[tuple]:
    """Return the template's brain edge and white-matter boundary (volume, level, colour, width)."""
    sigma = [1.0 / z for z in zooms]  # 1 mm
    smooth = ndimage.gaussian_filter(np.nan_to_num(template), sigma)
    outlines = [(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.5, EDGE_COLOUR, 0.8)]
    if mask.any():
        outlines.append((smooth, _otsu(smooth[mask]), TISSUE_COLOUR, 0.5))
    return outlines


def _checked_box(template, registered, box_lower, box_upper) -> tuple[np.ndarray, np.ndarray]:
    """Check the registered images against the template and the box against the grid."""
    if template.ndim != 3:
        raise ValueError(f"template must be 3D, got shape {template.shape}")
    if not registered:
        raise ValueError("registered needs at least one channel")
    for name, image in registered.items():
        if np.shape(image) != template.shape:
            raise ValueError(f"{name} has shape {np.shape(image)}, template {template.shape}")
    lower, upper = np.asarray(box_lower, int), np.asarray(box_upper, int)
    if lower.shape != (3,) or np.any(lower < 0) or np.any(upper > template.shape):
        raise ValueError(f"box {tuple(lower)}-{tuple(upper)} is outside grid {template.shape}")
    if np.any(upper <= lower):
        raise ValueError(f"box {tuple(lower)}-{tuple(upper)} is empty")
    return lower, upper


def _legend_and_margins(fig: Figure, title: str, header: float) -> None:
    """Add the outlines' legend and the title; fit the panels between them."""
    handles = [
        Line2D([], [], color=EDGE_COLOUR, label="template brain outline"),
        Line2D([], [], color=TISSUE_COLOUR, label="template white-matter outline"),
        Line2D([], [], color=BOX_COLOUR, linestyle="--", label="crop box"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig_w, fig_h = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.9 / fig_w,
        right=0.995,
        bottom=0.45 / fig_h,
        top=1 - header / fig_h,
        wspace=0.03,
        hspace=0.06,
    )


def slice_montage(
    stack: np.ndarray, channels: list[str], out_path: Path, max_slices: int = 12, title: str = ""
) -> Path:
    """Draw the slice stack the network sees: one row per channel, slices as columns.

    Parameters
    ----------
    stack : numpy.ndarray
        Slices, shape (S, C, H, W), values in [0, 1], oriented for display (row 0 anterior,
        slice 0 the most inferior).
    channels : list of str
        Channel names, one per C.
    out_path : Path
        Where to write the figure (PNG unless the suffix names another Matplotlib format).
    max_slices : int, optional
        At most this many evenly spaced slices are shown, each labelled with its index.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``out_path``.

    Notes
    -----
    When C == 3 an extra row shows the channels composed as red, green and blue, the way an
    ImageNet network receives them.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 4 or stack.shape[0] == 0:
        raise ValueError(f"stack must have shape (S, C, H, W) with S > 0, got {stack.shape}")
    n_slices, n_channels, height, width = stack.shape
    if len(channels) != n_channels:
        raise ValueError(f"{len(channels)} channel names for {n_channels} channels")
    stack = np.clip(np.nan_to_num(stack), 0.0, 1.0)
    count = max(1, min(int(max_slices), n_slices))
    indices = np.unique(np.round(np.linspace(0, n_slices - 1, count)).astype(int))
    rows = [(name, c) for c, name in enumerate(channels)]
    if n_channels == 3:
        rows.append(
            ("RGB\n" + "\n".join(f"{k}={n}" for k, n in zip("RGB", channels, strict=True)), None)
        )

    panel_w = 1.1
    panel_h = panel_w * height / width
    gap = max(1, round(0.04 * width))  # white columns between slices, in pixels
    fig = Figure(figsize=(1.2 + len(indices) * panel_w, 0.8 + len(rows) * (panel_h + 0.1)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    centres = [k * (width + gap) + (width - 1) / 2 for k in range(len(indices))]
    for r, (label, channel) in enumerate(rows):
        ax = axes[r]
        ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=7)
        if channel is None:
            ax.imshow(_tiles(np.moveaxis(stack[indices], 1, -1), gap), interpolation="nearest")
        else:
            grey = _tiles(stack[indices, channel], gap, fill=np.nan)
            cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
            ax.imshow(grey, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        if r == 0:
            for x, s in zip(centres, indices, strict=True):
                ax.text(x, -1, f"#{s}", ha="center", va="bottom", fontsize=8)
    caption = f"{n_slices} slices, inferior to superior; anterior at the top of each panel"
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=9)
    fig_w, fig_h = fig.get_size_inches()
    fig.subplots_adjust(
        left=1.2 / fig_w, right=0.995, bottom=0.02, top=1 - 0.6 / fig_h, wspace=0.04, hspace=0.08
    )
    return _save(fig, out_path)


def _tiles(images: np.ndarray, gap: int, fill: float = 1.0) -> np.ndarray:
    """Place images (N, H, W[, 3]) side by side, ``gap`` columns of ``fill`` between them."""
    count, height, width = images.shape[:3]
    out = np.full((height, count * width + (count - 1) * gap, *images.shape[3:]), fill, np.float32)
    for k in range(count):
        out[:, k * (width + gap) : k * (width + gap) + width] = images[k]
    return out


def robust_window(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Return the 1st and 99th percentiles of the finite voxels inside ``mask``.

    Parameters
    ----------
    image : numpy.ndarray
        Any image.
    mask : numpy.ndarray of bool, optional
        Voxels to consider; all voxels when omitted or when it selects no finite voxel.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``high > low``.
    """
    image = np.asarray(image)
    finite = np.isfinite(image)
    inside = finite & mask if mask is not None else finite
    values = image[inside] if inside.any() else image[finite]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    if high <= low:
        high = low + (abs(low) if low else 1.0)
    return low, high


def _brain_mask(template: np.ndarray) -> np.ndarray:
    """Voxels above 5 % of the template's robust maximum."""
    positive = template[np.isfinite(template) & (template > 0)]
    if positive.size == 0:
        return np.zeros(template.shape, bool)
    return np.nan_to_num(template) > 0.05 * np.percentile(positive, 98)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold; on a T1w brain it separates white matter from grey matter and CSF."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _views(lower: np.ndarray, upper: np.ndarray) -> list[tuple[str, int]]:
    """Three axial levels through the box, then coronal and sagittal through its centre."""
    centre = (lower + upper - 1) // 2
    levels = {int(round(lower[2] + f * (upper[2] - 1 - lower[2]))) for f in (0.25, 0.75)}
    axial = sorted(levels | {int(centre[2])})
    others = [("coronal", int(centre[1])), ("sagittal", int(centre[0]))]
    return [("axial", k) for k in axial] + others


def _panel(ax, plane: str, index: int, image, window, outlines, lower, upper, zooms) -> None:
    """Draw one slice of ``image`` with the template outlines and, if cut, the crop box."""
    normal, h_axis, v_axis = _AXES[plane]
    shape = image.shape
    extent = (0.0, shape[h_axis] * zooms[h_axis], 0.0, shape[v_axis] * zooms[v_axis])
    cut = np.nan_to_num(_plane(image, normal, index).T)  # rows: vertical axis
    ax.imshow(
        cut,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )
    xs, ys = ((np.arange(shape[a]) + 0.5) * zooms[a] for a in (h_axis, v_axis))
    for volume, level, colour, width in outlines:
        ax.contour(
            xs,
            ys,
            _plane(volume, normal, index).T,
            levels=[level],
            colors=colour,
            linewidths=width,
        )
    if lower[normal] <= index < upper[normal]:
        corner = (lower[h_axis] * zooms[h_axis], lower[v_axis] * zooms[v_axis])
        width = (upper[h_axis] - lower[h_axis]) * zooms[h_axis]
        height = (upper[v_axis] - lower[v_axis]) * zooms[v_axis]
        ax.add_patch(
            Rectangle(
                corner,
                width,
                height,
                fill=False,
                edgecolor=BOX_COLOUR,
                linestyle="--",
                linewidth=1.0,
            )
        )
    _orientation_labels(ax, plane)
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_axis_off()


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Return ``volume``'s slice ``index`` across ``axis`` as a view (``np.take`` copies slowly)."""
    return volume[(slice(None),) * axis + (index,)]


def _orientation_labels(ax, plane: str) -> None:
    """Mark the subject's directions at the panel edges (neurological display)."""
    left, right, top = {"axial": "LRA", "coronal": "LRS", "sagittal": "PAS"}[plane]
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **_LABEL_STYLE)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **_LABEL_STYLE)
    ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **_LABEL_STYLE)


def _save(fig: Figure, out_path: Path) -> Path:
    """Write ``fig`` atomically (PNG unless the suffix names another Matplotlib format)."""
    path = write_figure(Path(out_path), fig, DPI)
    logger.debug("wrote figure %s", path)
    return path
