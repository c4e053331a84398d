"""Quality of a registration to the template: metrics and the profile's gate."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.preprocess.registration import same_grid

if TYPE_CHECKING:  # pragma: no cover
    import ants

logger = logging.getLogger(__name__)

#: Share of the robust maximum (99th percentile) above which a registered voxel counts as
#: foreground in :func:`quality`'s ``mask_overlap``.
FOREGROUND_FRACTION = 0.05


def quality(
    registered_reference: ants.ANTsImage,
    template: ants.ANTsImage,
    template_mask: ants.ANTsImage,
) -> dict[str, float]:
    """Measure how well a registered reference channel matches the template.

    Parameters
    ----------
    registered_reference : ants.ANTsImage
        The reference channel resampled onto the template grid
        (:func:`bids_qnet.preprocess.registration.to_template`).
    template : ants.ANTsImage
        The template.
    template_mask : ants.ANTsImage
        Template brain mask (non-zero inside), on the template grid.

    Returns
    -------
    dict of str to float
        ``brain_correlation``: Pearson r of the two images' intensities inside the mask (NaN when
        either is constant there); ``abs_brain_correlation``: its absolute value, the gate of the
        built-in profiles (a QSM reference correlates negatively with a T1w template);
        ``mask_overlap``: Dice of the registered image's foreground
        (above :data:`FOREGROUND_FRACTION` of its 99th percentile) and the mask, over the
        template grid (a T1w with skull scores lower than a brain-extracted one);
        ``coverage``: share of mask voxels where the registered image holds data (non-zero),
        low when the subject's field of view misses part of the brain; ``foreground_threshold``:
        the threshold used; ``mask_voxels``: the mask's size.

    Raises
    ------
    InputDataError
        If the three images are not on one grid, or the mask is empty.
    """
    if not (same_grid(registered_reference, template) and same_grid(template, template_mask)):
        raise InputDataError("quality() needs the registered image, template and mask on one grid")
    # float32 throughout the volume (a 1 mm grid has 8.5 M voxels); float64 only in the mask
    reg = np.nan_to_num(registered_reference.numpy(), nan=0.0, copy=False)
    mask = template_mask.numpy() > 0.5
    n_mask = int(np.count_nonzero(mask))
    if n_mask == 0:
        raise InputDataError("the template brain mask is empty")
    a = reg[mask].astype(np.float64)
    b = np.nan_to_num(template.numpy()[mask].astype(np.float64), nan=0.0)
    if a.std() > 0 and b.std() > 0:
        correlation = float(np.corrcoef(a, b)[0, 1])
    else:
        correlation = float("nan")
    robust_max = float(np.percentile(reg, 99))
    threshold = FOREGROUND_FRACTION * robust_max if robust_max > 0 else 0.0
    foreground = reg > threshold
    overlap = 2.0 * np.count_nonzero(foreground & mask) / (np.count_nonzero(foreground) + n_mask)
    coverage = np.count_nonzero(a != 0) / n_mask
    return {
        "brain_correlation": correlation,
        # Contrast may be inverted against a T1w template (QSM: white matter dark), so the
        # built-in quality gate uses the size of the correlation, not its sign.
        "abs_brain_correlation": abs(correlation),
        "mask_overlap": float(overlap),
        "coverage": float(coverage),
        "foreground_threshold": float(threshold),
        "mask_voxels": float(n_mask),
    }


def thresholds(profile_quality: dict[str, Any], contrast: str) -> dict[str, Any]:
    """Return the quality thresholds of a registration to the ``contrast`` template.

    The profile's ``min_*`` keys, overridden by those of its section named after the contrast
    (e.g. ``"susceptibility": {"min_abs_brain_correlation": 0.2}``) when it has one.
    """
    base = {k: v for k, v in profile_quality.items() if k.startswith("min_")}
    override = profile_quality.get(contrast, {})
    if not isinstance(override, dict):
        raise UsageError(f"registration profile quality section {contrast!r} must be an object")
    return base | {k: v for k, v in override.items() if k.startswith("min_")}


def check_quality(metrics: dict[str, float], profile_quality: dict[str, Any], what: str) -> None:
    """Raise when a registration's quality falls below the profile's thresholds.

    Every ``min_<metric>`` key of the profile's ``quality`` section is checked against
    ``metrics[<metric>]`` (``min_abs_brain_correlation`` in the built-in profiles); a NaN metric
    fails.

    Parameters
    ----------
    metrics : dict
        Output of :func:`quality`.
    profile_quality : dict
        The profile's ``quality`` section.
    what : str
        What was registered, for the message (e.g. ``"sub-01 T1w -> MNI152NLin2009cAsym"``).

    Raises
    ------
    RegistrationError
        One line naming ``what``, the metric, its value and the threshold.
    UsageError
        If the profile sets a threshold for a metric that :func:`quality` does not compute.
    """
    for key, threshold in profile_quality.items():
        if not key.startswith("min_"):
            continue
        name = key[len("min_") :]
        if name not in metrics:
            raise UsageError(
                f"registration profile quality key {key!r} names no metric; "
                f"known: {', '.join('min_' + m for m in sorted(metrics))}"
            )
        value = float(metrics[name])
        if not value >= float(threshold):  # also catches NaN
            raise RegistrationError(
                f"registration of {what} failed its quality check: {name} = {value:.3f} "
                f"is below {key} = {float(threshold):.3f}; inspect the input image or try "
                "another registration profile"
            )
        logger.debug("%s: %s = %.3f (threshold %.3f)", what, name, value, float(threshold))


#: Below these a person should look at the registration figure; the profile's ``min_*`` gate
#: (lower) stops the participant. ``coverage``: share of the template brain holding data.
REVIEW_THRESHOLDS = {"abs_brain_correlation": 0.8, "coverage": 0.9}
#: What each metric is, for a reader, and whether a threshold applies.
METRIC_TEXT = {
    "abs_brain_correlation": (
        "Similarity to the template",
        "absolute correlation of the registered reference image with the template inside the "
        "template brain",
    ),
    "coverage": (
        "Brain inside the field of view",
        "share of the template brain where the registered image holds data",
    ),
    "mask_overlap": (
        "Overlap with the template brain",
        "Dice of the image's foreground and the template brain mask; lower for images that "
        "still have their skull, so no threshold applies",
    ),
}


def assess(
    metrics: dict[str, float],
    profile_quality: dict[str, Any],
    nonfinite: dict[str, int] | None = None,
    review: dict[str, float] = REVIEW_THRESHOLDS,
) -> list[dict[str, Any]]:
    """Return the quality checks of a registration as rows a report shows, with a result each.

    Parameters
    ----------
    metrics : dict
        Output of :func:`quality`.
    profile_quality : dict
        The profile's ``quality`` section (``min_<metric>``: below it the participant failed).
    nonfinite : dict, optional
        Channel -> number of non-finite input voxels set to zero.
    review : dict
        Metric -> the value below which the result is ``check`` (look at the figure).

    Returns
    -------
    list of dict
        ``check``, ``description``, ``value``, ``unit``, ``threshold`` (words) and ``result``:
        ``pass``, ``check`` (borderline: look at the registration figure), ``fail`` (below the
        profile's gate) or ``info`` (no threshold applies).
    """
    rows = []
    for name, (check, description) in METRIC_TEXT.items():
        if name not in metrics:
            continue
        value = float(metrics[name])
        gate = profile_quality.get(f"min_{name}")
        bound = review.get(name)
        scale, unit = (100.0, "%") if name == "coverage" else (1.0, "")
        limits = []
        if gate is not None:
            limits.append(f"at least {float(gate) * scale:g}{unit} required")
        if bound is not None:
            limits.append(f"at least {bound * scale:g}{unit} expected")
        if gate is not None and not value >= float(gate):
            result = "fail"
        elif bound is not None and not value >= bound:
            result = "check"
        else:
            result = "pass" if limits else "info"
        rows.append(
            {
                "check": check,
                "description": description,
                "value": value * scale,
                "unit": unit,
                "threshold": "; ".join(limits) if limits else "none",
                "result": result,
            }
        )
    if nonfinite is not None:
        bad = {s: int(n) for s, n in nonfinite.items() if n}
        rows.append(
            {
                "check": "Non-finite input voxels",
                "description": "NaN or infinite voxels in the input images, set to zero",
                "value": sum(bad.values()),
                "unit": "",
                "threshold": "none expected",
                "result": "check" if bad else "pass",
                "detail": ", ".join(f"{s}: {n:,}" for s, n in bad.items()),
            }
        )
    return rows
