"""Plumbing around ``ants.registration``: profile validation, seeding, work folders, images.

The registration functions of :mod:`bids_qnet.preprocess.registration` call antspyx only through
this module. Two antspyx 0.6.3 behaviours shape it:

* ``ants.registration`` silently ignores keyword arguments it does not know, and it has no
  ``random_seed`` argument at all (a ``random_seed=`` keyword lands in ``**kwargs`` and is dropped);
  the seed reaches ``antsRegistration --random-seed`` only through the module global
  ``ants.config._random_seed``. :func:`registration_kwargs` therefore checks every profile key
  against the signature of ``ants.registration``, and :func:`run_registration` sets that global
  only for the duration of its own call, restoring it afterwards.
* For ``type_of_transform="SyN"`` antspyx hard-codes the affine stage (``2100x1200x1200x0``
  iterations, shrink factors ``4x2x2x1``) and ignores ``aff_iterations``, ``aff_shrink_factors``
  and ``aff_smoothing_sigmas``; it also ignores those three when they are lists rather than
  tuples (as they are when read from JSON). :func:`registration_kwargs` converts lists to tuples,
  and :func:`bids_qnet.preprocess.registration.normalise` runs ``SyN`` as an ``Affine`` registration
  followed by ``SyNOnly`` initialised with it, so that every parameter of the profile takes
  effect. The composite transform holds both stages.

Reproducibility: the seed fixes the metric's sampling. With one ITK thread
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``, set by the caller before ITK first runs) a seed
gives bit-identical transforms. With more threads the Mattes mutual information is summed in a
thread-dependent order and linear parameters vary from run to run at the 1e-4 level (a few
hundredths of a millimetre).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.outputs.atomic import write_atomic
from bids_qnet.outputs.integrity import check_gzip_whole, check_nifti_whole

if TYPE_CHECKING:  # pragma: no cover
    import ants

logger = logging.getLogger(__name__)

#: Arguments of ``ants.registration`` that this package sets itself; a profile may not set them.
_RESERVED_KEYS = frozenset(
    {
        "fixed",
        "moving",
        "outprefix",
        "initial_transform",
        "mask",
        "moving_mask",
        "write_composite_transform",
        "verbose",
        "kwargs",
    }
)

#: The linear stages' schedule: all three or none, with one entry per level each.
AFF_SCHEDULE_KEYS = ("aff_iterations", "aff_shrink_factors", "aff_smoothing_sigmas")

_SEED_LOCK = threading.Lock()


def registration_kwargs(params: dict[str, Any], section: str) -> dict[str, Any]:
    """Validate a profile section against ``ants.registration`` and make its lists tuples.

    Parameters
    ----------
    params : dict
        A registration profile section (``coregistration`` or ``normalisation``): keyword
        arguments of ``ants.registration``.
    section : str
        The section's name, for messages.

    Returns
    -------
    dict
        A copy of ``params`` with every list value turned into a tuple (antspyx ignores the
        ``aff_*`` schedules when they are lists).

    Raises
    ------
    UsageError
        If a key is ``random_seed``, is not an argument of ``ants.registration`` or is one this
        package sets itself, or if :data:`AFF_SCHEDULE_KEYS` are given in part or with
        different lengths.
    """
    import ants

    accepted = set(inspect.signature(ants.registration).parameters) - _RESERVED_KEYS
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        if key == "random_seed":
            raise UsageError(
                f"registration profile section {section!r} may not set random_seed; "
                "use --random-seed"
            )
        if key not in accepted:
            raise UsageError(
                f"registration profile section {section!r} has key {key!r}, which "
                f"ants.registration does not take (it would be ignored silently); accepted: "
                f"{', '.join(sorted(accepted))}"
            )
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    schedule = [kwargs[k] for k in AFF_SCHEDULE_KEYS if k in kwargs]
    if schedule and (
        len(schedule) != len(AFF_SCHEDULE_KEYS) or len({len(s) for s in schedule}) != 1
    ):
        raise UsageError(
            f"registration profile section {section!r}: {', '.join(AFF_SCHEDULE_KEYS)} must "
            "all be given, with one entry per level each"
        )
    return kwargs


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Set antspyx's registration seed for one call and restore it afterwards.

    Parameters
    ----------
    seed : int
        Any integer; it is mapped to a non-zero ``antsRegistration --random-seed`` (0 would
        mean "seed from the clock").

    Yields
    ------
    None
        While the seed is set; a lock keeps concurrent calls from mixing their seeds.
    """
    import ants.config

    # antsRegistration treats 0 as "seed from the clock": map every int to a non-zero seed.
    ants_seed = int(seed) % 2_147_483_646 + 1
    with _SEED_LOCK:
        previous = ants.config._random_seed
        ants.config._random_seed = ants_seed
        try:
            yield
        finally:
            ants.config._random_seed = previous


def run_registration(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    transform: str,
    outprefix: str,
    seed: int,
    kwargs: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Call ``ants.registration`` with a seed, turning its failures into RegistrationError.

    Parameters
    ----------
    fixed, moving : ants.ANTsImage
        The images to register.
    transform : str
        ``type_of_transform`` of this call.
    outprefix : str
        Prefix of the files ANTs writes (best a fresh one, see :func:`ants_workdir`).
    seed : int
        Seed of the metric's random sampling, set for this call only.
    kwargs : dict
        Validated profile arguments (:func:`registration_kwargs`).
    **extra
        Further ``ants.registration`` arguments set by the caller (``mask``,
        ``initial_transform``, ``write_composite_transform``...).

    Returns
    -------
    dict
        What ``ants.registration`` returned, with a non-empty ``fwdtransforms``.

    Raises
    ------
    RegistrationError
        If ANTs raises or returns no transform.
    """
    import ants

    logger.debug("ants.registration %s %s", transform, kwargs)
    start = time.perf_counter()
    try:
        with _ants_seed(seed):
            reg = ants.registration(
                fixed=fixed,
                moving=moving,
                type_of_transform=transform,
                outprefix=outprefix,
                **kwargs,
                **extra,
            )
    except (RuntimeError, ValueError) as exc:
        raise RegistrationError(f"ants.registration ({transform}) failed: {exc}") from exc
    if not reg or not reg.get("fwdtransforms"):
        raise RegistrationError(f"ants.registration ({transform}) returned no transform")
    logger.debug("ants.registration %s took %.1f s", transform, time.perf_counter() - start)
    return reg


@contextlib.contextmanager
def ants_workdir(out_prefix: str) -> Iterator[str]:
    """Yield a fresh prefix in a temporary folder beside ``out_prefix``.

    ``ants.registration`` finds its outputs by globbing its prefix, so files left by an earlier
    run under the same prefix would be picked up; a fresh folder avoids that.

    Parameters
    ----------
    out_prefix : str
        The caller's final prefix; its folder is created if missing and holds the temporary one.

    Yields
    ------
    str
        A prefix ending in the path separator, inside a folder removed on exit.
    """
    parent = Path(os.path.dirname(out_prefix) or ".")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".ants-") as tmp:
        yield f"{tmp}{os.sep}"


def move(source: str, target: str) -> None:
    """Move a file ANTs wrote to its final path.

    Parameters
    ----------
    source : str
        The file written by ANTs.
    target : str
        Its destination (replaced if it exists).

    Raises
    ------
    RegistrationError
        If ``source`` does not exist.
    """
    if not Path(source).is_file():
        raise RegistrationError(f"ANTs did not write {source}")
    os.replace(source, target)


def write_image(image: ants.ANTsImage, path: Path) -> Path:
    """Write an ANTs image atomically and check that it reached the disk whole.

    ``ants.image_write`` does not report a failed write (full disk, file-size limit): it
    prints an ITK error and leaves a truncated file. A ``.nii.gz`` is therefore read back to
    its end, and a ``.nii`` must be as long as its header says, before it is renamed into place.

    Raises
    ------
    OutputError, WriteError
        The file could not be written whole (exit 73 or 74).
    """
    import ants

    def write(tmp: Path) -> None:
        ants.image_write(image, str(tmp))
        if tmp.name.endswith(".gz"):
            check_gzip_whole(tmp, name=path)
        elif tmp.name.endswith(".nii"):
            check_nifti_whole(tmp, name=path)

    return write_atomic(Path(path), write)


def as_list(transforms: str | list[str]) -> list[str]:
    """Return a transform list as ``ants.registration`` may give it (a string or a list).

    Parameters
    ----------
    transforms : str or list of str
        A single path, an empty string, or a list of paths.

    Returns
    -------
    list of str
        The paths, as a list (empty for an empty string).
    """
    if isinstance(transforms, str):
        return [transforms] if transforms else []
    return [str(t) for t in transforms]


def finite(image: ants.ANTsImage, name: str) -> ants.ANTsImage:
    """Return a float copy of a 3D scalar image with non-finite voxels set to 0.

    Parameters
    ----------
    image : ants.ANTsImage
        The image.
    name : str
        What the image is, for messages.

    Returns
    -------
    ants.ANTsImage
        A float copy, with NaN and infinite voxels set to 0.

    Raises
    ------
    InputDataError
        If the image is not 3D or has more than one component.
    """
    if image.dimension != 3 or image.components != 1:
        raise InputDataError(
            f"{name} image must be 3D with one component "
            f"(got {image.dimension}D, {image.components} components)"
        )
    image = image.clone("float")
    data = image.numpy()
    bad = ~np.isfinite(data)
    if bad.any():
        logger.debug("%s image: %d non-finite voxels set to 0", name, int(bad.sum()))
        image = image.new_image_like(np.where(bad, 0.0, data).astype(np.float32))
    return image


def binary(mask: ants.ANTsImage) -> ants.ANTsImage:
    """Return a mask as a float image of 0 and 1.

    Parameters
    ----------
    mask : ants.ANTsImage
        A mask, non-zero (above 0.5) inside.

    Returns
    -------
    ants.ANTsImage
        1 where ``mask`` is above 0.5, 0 elsewhere, on the same grid.
    """
    data = (mask.numpy() > 0.5).astype(np.float32)
    return mask.clone("float").new_image_like(data)
