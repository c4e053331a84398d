"""Figures of the attribution: the per-region bar chart and the class-average overlays.

Pure plotting on arrays already computed; drawn on a :class:`matplotlib.figure.Figure` with the
Agg canvas (the global pyplot backend is never touched) and written atomically.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bids_qnet.outputs.atomic import write_figure

LOGGER = logging.getLogger(__name__)
DPI = 150
CHANNEL_COLOURS = ("#d62728", "#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd", "#8c564b")
_TAG = {"facecolor": "black", "alpha": 0.6, "pad": 1.0, "linewidth": 0}
_TAG_TEXT = {"color": "white", "fontsize": 7, "fontweight": "bold", "bbox": _TAG}
OUTLINE_COLOURS = ("#ffd60a", "#00e5ff", "#7CFC00", "#ff66ff")


def region_barplot(
    table: pd.DataFrame,
    channels: Sequence[str],
    out_path: Path,
    truth: Sequence[str] | None = None,
    title: str = "",
    top: int = 15,
) -> Path:
    """Horizontal bars of the ranking statistic per region, split by channel.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`bids_qnet.attribution.regions.region_table` (best first).
    channels : sequence of str
        Channels; each bar is the sum of the ``density_contrast_<channel>`` segments (positive
        parts stacked to the right of zero, negative parts to the left).
    out_path : Path
        PNG to write.
    truth : sequence of str, optional
        Regions known to carry the effect, marked with an asterisk.
    title : str
        Figure title.
    top : int
        Number of regions shown.

    Returns
    -------
    Path
    """
    shown = table.head(top).iloc[::-1]
    marked = set(truth or ())
    ticks = [
        _region_tick(rank, name, name in marked, row)
        for rank, name, (_, row) in zip(
            shown["rank"], shown["region"], shown.iterrows(), strict=True
        )
    ]
    lines = sum(t.count("\n") + 1 for t in ticks)
    fig = Figure(figsize=(9.0, 1.3 + 0.24 * lines + 0.1 * len(ticks)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(shown))
    right, left = np.zeros(len(shown)), np.zeros(len(shown))
    for c, channel in enumerate(channels):
        values = shown[f"density_contrast_{channel}"].to_numpy(dtype=float)
        pos, neg = np.clip(values, 0, None), np.clip(values, None, 0)
        colour = CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)]
        ax.barh(y, pos, left=right, color=colour, label=channel, height=0.7)
        ax.barh(y, neg, left=left, color=colour, height=0.7)
        right, left = right + pos, left + neg
    ax.scatter(shown["density_contrast"], y, color="black", s=12, zorder=3, label="total")
    ax.set_yticks(y, ticks, fontsize=9)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    low, high = float(left.min(initial=0.0)), float(right.max(initial=0.0))
    pad = 0.05 * (high - low) or 1e-6
    ax.set_xlim(low - pad, high + pad)
    ax.axvline(0, color="black", linewidth=0.8)
    # Tick labels as multiples of one power of ten (shown at the axis end): short, no overlap.
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3), useMathText=True)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel("relevance density contrast (IG relevance per voxel, a.u.)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(
        textwrap.fill(title, 70) + ("\n* known (planted) region" if marked else ""), fontsize=9
    )
    fig.tight_layout()
    return _save(fig, out_path)


def _region_tick(rank, name, marked: bool, row) -> str:
    """``3. Right MFC medial frontal cortex *`` over ``(51 voxels, 408 mm³)``, wrapped."""
    words = str(name).replace("_", " ") + (" *" if marked else "")
    size = f"{int(row['voxels']):,} voxels"
    if "volume_mm3" in row and np.isfinite(row["volume_mm3"]):
        size += f", {float(row['volume_mm3']):,.0f} mm³"
    wrapped = textwrap.fill(f"{rank}. {words}", width=40, subsequent_indent="    ")
    return f"{wrapped}\n({size})"


def overlay(
    background: np.ndarray,
    maps: dict[str, np.ndarray],
    grid,
    outlined: Sequence[str],
    out_path: Path,
    quantity: str,
    signed: bool,
    level_regions: Sequence[str] = (),
    n_levels: int = 6,
) -> Path:
    """Class-average maps over the mean anatomy on axial slices through the basal ganglia.

    Rows are the maps, columns axial levels spread from the lowest to the highest slice of the
    ``level_regions`` (e.g. the basal-ganglia regions the crop was built around; default: the
    ``outlined`` regions). Display is neurological: the subject's left on
    the image's left, anterior up. Relevance below 15 % of the row's maximum is transparent.

    Parameters
    ----------
    background : numpy.ndarray
        ``(X, Y, Z)`` anatomy on the crop grid (RAS voxel order).
    maps : dict of str to numpy.ndarray
        Row title -> ``(X, Y, Z)`` map on the same grid.
    grid : CropGrid
        Labels, names and voxel size of the crop.
    outlined : sequence of str
        Regions drawn as outlines (e.g. the top of the region table).
    out_path : Path
        PNG to write.
    quantity : str
        What the colour bar shows.
    signed : bool
        Diverging colours centred on zero (IG) or a sequential map from zero (Grad-CAM).
    level_regions : sequence of str
        Regions whose extent the axial levels cover.
    n_levels : int
        Number of axial levels.

    Returns
    -------
    Path
    """
    lookup = {n: i for i, n in grid.names.items()}
    wanted = [n for n in outlined if n in lookup and (grid.labels == lookup[n]).any()]
    spread = [lookup[n] for n in level_regions if n in lookup] or [lookup[n] for n in wanted]
    levels = _levels(grid.labels, spread, n_levels)
    fig, extent = _overlay_figure(background.shape, grid.zooms, len(maps), len(levels))
    inside = background[background > 0]
    window = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    rows = fig.subfigures(len(maps), 1, squeeze=False)[:, 0]
    for sub, (title, volume) in zip(rows, maps.items(), strict=True):
        limit = float(np.abs(volume).max()) or 1.0
        norm = TwoSlopeNorm(0.0, -limit, limit) if signed else Normalize(0.0, limit)
        cmap = "RdBu_r" if signed else "inferno"
        axes = sub.subplots(1, len(levels), squeeze=False)[0]
        for ax, z in zip(axes, levels, strict=True):
            image = _panel(ax, background, window, volume, z, norm, cmap, extent, limit)
            _outline_regions(ax, grid, [lookup[name] for name in wanted], z)
            ax.set_title(f"z = {_world_z(grid, z):.0f} mm", fontsize=6, pad=2)
        _orientation_tags(axes[0])
        colourbar = sub.colorbar(image, ax=list(axes), shrink=0.9, aspect=15, pad=0.01)
        colourbar.set_label(quantity + " (a.u.)", fontsize=6)
        colourbar.ax.tick_params(labelsize=5)
        sub.suptitle(title, fontsize=8, x=0.01, ha="left")
    _outline_legend(fig, wanted)
    fig.suptitle(
        f"{quantity}, class averages; neurological view (subject's left on the left, anterior up)",
        fontsize=8,
    )
    return _save(fig, out_path)


def _overlay_figure(shape, zooms, n_rows: int, n_columns: int) -> tuple[Figure, tuple]:
    """Return the overlay's figure (panels 1.5 in high, the crop's aspect) and a panel's extent."""
    extent = (0.0, shape[0] * zooms[0], 0.0, shape[1] * zooms[1])
    panel_h = 1.5
    panel_w = panel_h * extent[1] / extent[3]
    fig = Figure(
        figsize=(panel_w * n_columns + 1.4, (panel_h + 0.35) * n_rows + 0.8),
        dpi=DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    return fig, extent


def _outline_regions(ax, grid, indices: list[int], z: int) -> None:
    """Outline regions (atlas indices) on axial slice ``z``, one colour each."""
    zooms = grid.zooms
    for k, index in enumerate(indices):
        mask = (grid.labels[:, :, z] == index).T.astype(float)
        if mask.any():
            xs = (np.arange(mask.shape[1]) + 0.5) * zooms[0]
            ys = (np.arange(mask.shape[0]) + 0.5) * zooms[1]
            colour = OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]
            ax.contour(xs, ys, mask, levels=[0.5], colors=colour, linewidths=0.7)


def _orientation_tags(ax) -> None:
    """Mark the subject's left, right and anterior on a panel."""
    for text, x, ha in (("L", 0.03, "left"), ("R", 0.97, "right")):
        ax.text(x, 0.5, text, transform=ax.transAxes, ha=ha, va="center", **_TAG_TEXT)
    ax.text(0.5, 0.97, "A", transform=ax.transAxes, ha="center", va="top", **_TAG_TEXT)


def _outline_legend(fig: Figure, names: list[str]) -> None:
    """Name the outlined regions under the panels."""
    handles = [
        Line2D([], [], color=OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)], label=name)
        for k, name in enumerate(names)
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            fontsize=6,
            frameon=False,
            title="outlines (top-ranked regions)",
            title_fontsize=6,
        )


def _panel(ax, background, window, volume, z, norm, cmap, extent, limit):
    """Draw one axial level: anatomy in grey, relevance above 15 % of the row maximum."""
    ax.imshow(
        background[:, :, z].T,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin="lower",
        extent=extent,
    )
    cut = volume[:, :, z].T
    shown = np.ma.masked_where(np.abs(cut) < 0.15 * limit, cut)
    image = ax.imshow(
        shown, cmap=cmap, norm=norm, origin="lower", extent=extent, interpolation="nearest"
    )
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_axis_off()
    return image


def _levels(labels: np.ndarray, indices: Sequence[int], n_levels: int) -> list[int]:
    """Axial slice indices spread over the extent of the given regions (else of the crop)."""
    mask = np.isin(labels, list(indices)) if indices else np.ones(labels.shape, bool)
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    if slices.size == 0:
        slices = np.arange(labels.shape[2])
    if slices.size <= n_levels:
        return [int(v) for v in slices]
    picks = np.linspace(slices[0], slices[-1], n_levels + 2)[1:-1]
    return sorted({int(round(v)) for v in picks})


def _world_z(grid, z: int) -> float:
    return float((grid.affine @ np.array([0.0, 0.0, float(z), 1.0]))[2])


def _save(fig: Figure, out_path: Path) -> Path:
    return write_figure(Path(out_path), fig, DPI)
