"""Multiple-comparison adjustment (Holm) and significance stars (the paper's Table 2)."""

from __future__ import annotations

import numpy as np

from bids_qnet.errors import InputDataError

# (upper bound of p, label), checked in order; the paper's Table 2 and CONVENTIONS section 4.
STAR_LEVELS = ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (0.05, "*"))


def holm(pvalues) -> np.ndarray:
    """Return Holm's step-down adjusted p-values (Holm 1979), in the input order.

    With the raw p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``: monotone in the raw p-values and
    capped at 1 (R's ``p.adjust(method = "holm")``). NaN p-values are left NaN and do not
    count in ``m``.

    Parameters
    ----------
    pvalues : array_like of float
        Raw p-values in [0, 1].

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape and order as ``pvalues``.

    Raises
    ------
    InputDataError
        A p-value lies outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    flat = p.ravel()
    finite = np.flatnonzero(~np.isnan(flat))
    if np.any((flat[finite] < 0) | (flat[finite] > 1)):
        raise InputDataError("p-values must lie in [0, 1]")
    adjusted = np.full(flat.shape, np.nan)
    order = finite[np.argsort(flat[finite], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * flat[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.reshape(p.shape)


def stars(p: float) -> str:
    """Return the significance stars of a p-value.

    ``p <= 1e-4`` gives ``****``, ``<= 1e-3`` ``***``, ``<= 0.01`` ``**``, ``<= 0.05`` ``*``,
    anything larger ``ns``; NaN gives ``""`` (no test was possible).

    Parameters
    ----------
    p : float
        A (possibly adjusted) p-value.

    Returns
    -------
    str
        The label.
    """
    p = float(p)
    if np.isnan(p):
        return ""
    for bound, label in STAR_LEVELS:
        if p <= bound:
            return label
    return "ns"
