"""Versions of Python and of the libraries that shape bids_qnet's results, for the outputs."""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata

from bids_qnet import __version__

# Distributions whose version can change a result (registration, resampling, networks, I/O).
DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "antspyx",
    "nibabel",
    "numpy",
    "scipy",
    "pandas",
    "pybids",
    "nipype",
    "captum",
    "matplotlib",
)


@cache
def software_versions() -> dict[str, str]:
    """Return the versions of Python, bids_qnet and the libraries in :data:`DISTRIBUTIONS`.

    Read from the installed distributions' metadata (nothing is imported); a library that is
    not installed is recorded as ``"not installed"``.

    Returns
    -------
    dict of str to str
        ``python``, ``bids_qnet``, then one entry per distribution, in that order.
    """
    versions = {"python": platform.python_version(), "bids_qnet": __version__}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
