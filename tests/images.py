"""Checks on the figures bids_qnet writes: PNG files with something drawn in them."""

from pathlib import Path

import numpy as np
from matplotlib.image import imread

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_pixels(path: Path) -> np.ndarray:
    """Return a PNG's RGB pixels as floats in [0, 1], shape (height, width, 3)."""
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return imread(path)[..., :3]


def assert_drawn(path: Path, min_colours: int = 2, min_ink: float = 0.01) -> np.ndarray:
    """Assert that a PNG is more than a blank page; return its pixels.

    ``min_colours`` distinct colours at least, and at least ``min_ink`` of the pixels not white.
    """
    pixels = png_pixels(path)
    ink = float(np.mean(pixels.min(axis=-1) < 0.95))
    colours = len(np.unique(np.round(pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0))
    assert ink >= min_ink, f"{path}: only {ink:.1%} of the pixels are not white"
    assert colours >= min_colours, f"{path}: {colours} colour(s)"
    return pixels


def has_hue(pixels: np.ndarray, channel: int, margin: float = 0.2) -> bool:
    """Whether some pixel is clearly red (channel 0), green (1) or blue (2)."""
    others = np.delete(pixels, channel, axis=-1).max(axis=-1)
    return bool(np.any(pixels[..., channel] - others > margin))
