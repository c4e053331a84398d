"""Co-registration of channels and normalisation to the template with antspyx.

Pure computation on ANTs images: nothing here knows about BIDS or derivative names. Transform files
are written under a prefix the caller chooses.

Two antspyx 0.6.3 behaviours shape this module:

* ``ants.registration`` silently ignores keyword arguments it does not know, and it has no
  ``random_seed`` argument at all (a ``random_seed=`` keyword lands in ``**kwargs`` and is dropped);
  the seed reaches ``antsRegistration --random-seed`` only through the module global
  ``ants.config._random_seed``. :func:`coregister` and :func:`normalise` therefore check every
  profile key against the signature of ``ants.registration`` and set that global only for the
  duration of their own call, restoring it afterwards.
* For ``type_of_transform="SyN"`` antspyx hard-codes the affine stage (``2100x1200x1200x0``
  iterations, shrink factors ``4x2x2x1``) and ignores ``aff_iterations``, ``aff_shrink_factors``
  and ``aff_smoothing_sigmas``; it also ignores those three when they are lists rather than
  tuples (as they are when read from JSON). :func:`normalise` converts lists to tuples and runs
  ``SyN`` as an ``Affine`` registration followed by ``SyNOnly`` initialised with it, so that every
  parameter of the profile takes effect. The composite transform holds both stages.

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

from bids_qnet.data import channel_defaults
from bids_qnet.errors import InputDataError, RegistrationError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import ants

logger = logging.getLogger(__name__)

#: ``type_of_transform`` values whose linear stages antspyx hard-codes, mapped to the sequence of
#: registrations that honours the profile's ``aff_*`` parameters instead.
STAGED_TRANSFORMS: dict[str, tuple[str, ...]] = {
    "SyN": ("Affine", "SyNOnly"),
    "SyNRA": ("Rigid", "Affine", "SyNOnly"),
}

#: Linear ``type_of_transform`` values for which antspyx uses the ``aff_*`` parameters.
LINEAR_TRANSFORMS = frozenset({"Rigid", "Similarity", "Translation", "Affine"})

#: Arguments of ``ants.registration`` that this module sets itself; a profile may not set them.
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
_AFF_SCHEDULE_KEYS = ("aff_iterations", "aff_shrink_factors", "aff_smoothing_sigmas")

#: Share of the robust maximum (99th percentile) above which a registered voxel counts as
#: foreground in :func:`quality`'s ``mask_overlap``.
FOREGROUND_FRACTION = 0.05

_SEED_LOCK = threading.Lock()


def same_grid(a: ants.ANTsImage, b: ants.ANTsImage, atol_mm: float = 1e-3) -> bool:
    """Tell whether two ANTs images share one voxel grid.

    Parameters
    ----------
    a, b : ants.ANTsImage
        The images to compare.
    atol_mm : float, optional
        Absolute tolerance for spacing and origin, in mm. Direction cosines are compared with
        a tolerance of ``1e-4``.

    Returns
    -------
    bool
        True when dimension, shape, spacing, origin and direction agree.
    """
    if a.dimension != b.dimension or tuple(a.shape) != tuple(b.shape):
        return False
    return bool(
        np.allclose(a.spacing, b.spacing, rtol=0, atol=atol_mm)
        and np.allclose(a.origin, b.origin, rtol=0, atol=atol_mm)
        and np.allclose(np.asarray(a.direction), np.asarray(b.direction), rtol=0, atol=1e-4)
    )


def group_by_grid(images: dict[str, ants.ANTsImage]) -> list[list[str]]:
    """Group image keys (BIDS suffixes) by identical voxel grid.

    Parameters
    ----------
    images : dict of str to ants.ANTsImage
        Images keyed by suffix, in the order the caller wants kept.

    Returns
    -------
    list of list of str
        One list per distinct grid, in order of first appearance; keys keep their input order.
        An image joins the first group whose first image shares its grid (:func:`same_grid`).
    """
    groups: list[list[str]] = []
    for key, image in images.items():
        for group in groups:
            if same_grid(images[group[0]], image):
                group.append(key)
                break
        else:
            groups.append([key])
    return groups


def pick_coregistration_channel(suffixes: list[str]) -> str:
    """Choose the channel the others are co-registered to.

    Parameters
    ----------
    suffixes : list of str
        BIDS suffixes available for a session.

    Returns
    -------
    str
        The suffix with the lowest ``coregistration_priority`` in ``resources.json``'s channels
        (unknown suffixes take the ``default`` entry); ties go to the earliest in ``suffixes``.

    Raises
    ------
    UsageError
        If ``suffixes`` is empty.
    """
    if not suffixes:
        raise UsageError("no channels to choose a co-registration reference from")
    priorities = [channel_defaults(s)["coregistration_priority"] for s in suffixes]
    return suffixes[int(np.argmin(priorities))]


def coregister(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    params: dict[str, Any],
    out_prefix: str,
    seed: int,
) -> list[str]:
    """Rigidly (or affinely) register one channel to another, across modalities.

    Parameters
    ----------
    fixed : ants.ANTsImage
        The reference channel (its grid defines the target).
    moving : ants.ANTsImage
        The channel to align to ``fixed``.
    params : dict
        The profile's ``coregistration`` section: keyword arguments of ``ants.registration``
        with a linear ``type_of_transform`` and a cross-modal ``aff_metric`` (e.g. ``mattes``).
    out_prefix : str
        Path prefix of the transform written: ``{out_prefix}0GenericAffine.mat``.
    seed : int
        Seed of the metric's random sampling (``antsRegistration --random-seed``).

    Returns
    -------
    list of str
        The forward transform list (one ``.mat``): pass it to ``ants.apply_transforms`` with
        ``fixed`` as the reference to bring ``moving`` onto ``fixed``.

    Raises
    ------
    UsageError
        If ``params`` holds a key that ``ants.registration`` does not take, or a non-linear
        ``type_of_transform``.
    RegistrationError
        If ANTs fails or returns no transform.
    """
    kwargs = _registration_kwargs(params, "coregistration")
    transform = kwargs.pop("type_of_transform", "Rigid")
    if transform not in LINEAR_TRANSFORMS:
        raise UsageError(
            f"coregistration type_of_transform must be one of {sorted(LINEAR_TRANSFORMS)}, "
            f"not {transform!r}"
        )
    fixed, moving = _finite(fixed, "fixed"), _finite(moving, "moving")
    with _ants_workdir(out_prefix) as work:
        reg = _run_registration(fixed, moving, transform, work, seed, kwargs)
        forward = _as_list(reg["fwdtransforms"])
        if len(forward) != 1 or not forward[0].endswith("GenericAffine.mat"):
            raise RegistrationError(
                f"co-registration ({transform}) returned {forward!r} instead of one affine .mat"
            )
        target = f"{out_prefix}0GenericAffine.mat"
        _move(forward[0], target)
    logger.debug("co-registration %s written to %s", transform, target)
    return [target]


def normalise(
    moving: ants.ANTsImage,
    template: ants.ANTsImage,
    template_mask: ants.ANTsImage,
    params: dict[str, Any],
    out_prefix: str,
    seed: int,
) -> dict[str, Any]:
    """Register the reference channel to the template (affine then SyN by default).

    The template brain mask is the fixed-image metric mask in every stage, so a moving T1w that
    still has its skull is matched on the brain only.

    Parameters
    ----------
    moving : ants.ANTsImage
        The subject's reference channel.
    template : ants.ANTsImage
        The template (fixed image; its grid is the output space).
    template_mask : ants.ANTsImage
        Brain mask on the template grid (non-zero inside).
    params : dict
        The profile's ``normalisation`` section (keyword arguments of ``ants.registration``).
        ``SyN`` and ``SyNRA`` run as staged registrations (see :data:`STAGED_TRANSFORMS`) so
        that ``aff_iterations``, ``aff_shrink_factors`` and ``aff_smoothing_sigmas`` apply.
    out_prefix : str
        Path prefix of the files written: ``{out_prefix}Composite.h5``,
        ``{out_prefix}InverseComposite.h5`` and, for staged registrations, the linear part
        alone as ``{out_prefix}0GenericAffine.mat``.
    seed : int
        Seed of the metrics' random sampling.

    Returns
    -------
    dict
        ``forward`` (list for ``ants.apply_transforms``: subject -> template, template as
        reference), ``inverse`` (template -> subject), ``composite`` and ``inverse_composite``
        (paths of the ``.h5`` files), ``affine`` (the linear part's ``.mat`` or None) and
        ``type_of_transform`` (the profile's value) with ``stages`` (what ran, in order).

    Raises
    ------
    UsageError
        If ``params`` holds a key that ``ants.registration`` does not take.
    InputDataError
        If ``template_mask`` is not on the template's grid or is empty.
    RegistrationError
        If ANTs fails or does not write the composite transforms.
    """
    kwargs = _registration_kwargs(params, "normalisation")
    transform = kwargs.pop("type_of_transform", "SyN")
    if not same_grid(template, template_mask):
        raise InputDataError("the template brain mask is not on the template's grid")
    mask = _binary(template_mask)
    if float(mask.sum()) == 0:
        raise InputDataError("the template brain mask is empty")
    stages = STAGED_TRANSFORMS.get(transform, (transform,))
    if len(stages) == 1 and transform not in LINEAR_TRANSFORMS:
        ignored = [k for k in _AFF_SCHEDULE_KEYS if k in kwargs]
        if ignored:
            logger.warning(
                "ants.registration ignores %s for type_of_transform=%s", ignored, transform
            )
    moving, template = _finite(moving, "moving"), _finite(template, "template")
    result: dict[str, Any] = {"type_of_transform": transform, "stages": list(stages)}
    with _ants_workdir(out_prefix) as work:
        initial: list[str] | None = None
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            reg = _run_registration(
                template,
                moving,
                stage,
                f"{work}s{index}_",
                seed,
                kwargs,
                mask=mask,
                initial_transform=initial,
                write_composite_transform=last,
            )
            if not last:
                forward = _as_list(reg["fwdtransforms"])
                if len(forward) != 1 or not forward[0].endswith(".mat"):
                    raise RegistrationError(
                        f"normalisation stage {stage} returned {forward!r} instead of one .mat"
                    )
                initial = forward
        composite = _as_list(reg["fwdtransforms"])
        inverse = _as_list(reg["invtransforms"])
        if len(composite) != 1 or len(inverse) != 1 or not Path(composite[0]).is_file():
            raise RegistrationError(
                f"normalisation ({transform}) wrote no composite transform (got {composite!r})"
            )
        result["composite"] = f"{out_prefix}Composite.h5"
        result["inverse_composite"] = f"{out_prefix}InverseComposite.h5"
        _move(composite[0], result["composite"])
        _move(inverse[0], result["inverse_composite"])
        result["affine"] = None
        if initial is not None:
            result["affine"] = f"{out_prefix}0GenericAffine.mat"
            _move(initial[0], result["affine"])
    result["forward"] = [result["composite"]]
    result["inverse"] = [result["inverse_composite"]]
    logger.debug("normalisation %s (%s) written under %s", transform, stages, out_prefix)
    return result


def to_template(
    moving: ants.ANTsImage,
    template: ants.ANTsImage,
    transforms: list[str],
    interpolator: str = "linear",
) -> ants.ANTsImage:
    """Resample an image onto the template grid in one step through a transform list.

    Parameters
    ----------
    moving : ants.ANTsImage
        The image in subject space. Non-finite voxels (NaN outside a QSM mask, say) become 0
        before interpolation so that they cannot spread.
    template : ants.ANTsImage
        Reference image whose grid the output takes.
    transforms : list of str
        Transforms in ``ants.apply_transforms`` order: the first maps template points onward
        first, e.g. ``[composite.h5, coreg.mat]`` (template -> reference channel -> this
        channel) for a channel co-registered to the reference channel. None is inverted
        (``whichtoinvert`` is all False, overriding antspyx's guess for two-item lists that
        start with a ``.mat``).
    interpolator : str, optional
        An ``ants.apply_transforms`` interpolator: ``linear`` for maps, ``genericLabel`` or
        ``nearestNeighbor`` for labels, ``bSpline``, ``lanczosWindowedSinc``...

    Returns
    -------
    ants.ANTsImage
        The resampled image (float) on the template grid; 0 outside the moving field of view.

    Raises
    ------
    UsageError
        For an unknown interpolator or an empty transform list.
    RegistrationError
        If a transform file is missing or ANTs fails.
    """
    import ants

    transforms = [str(t) for t in transforms]
    if not transforms:
        raise UsageError("to_template needs at least one transform")
    missing = [t for t in transforms if not Path(t).is_file()]
    if missing:
        raise RegistrationError(f"transform file(s) missing: {', '.join(missing)}")
    moving = _finite(moving, "moving")
    try:
        return ants.apply_transforms(
            fixed=template,
            moving=moving,
            transformlist=transforms,
            interpolator=interpolator,
            whichtoinvert=[False] * len(transforms),
            defaultvalue=0,
        )
    except ValueError as exc:
        if "interpolator" in str(exc):
            raise UsageError(f"unknown interpolator {interpolator!r}: {exc}") from exc
        raise RegistrationError(f"applying transforms {transforms} failed: {exc}") from exc
    except RuntimeError as exc:
        raise RegistrationError(f"applying transforms {transforms} failed: {exc}") from exc


def quality(
    registered_reference: ants.ANTsImage,
    template: ants.ANTsImage,
    template_mask: ants.ANTsImage,
) -> dict[str, float]:
    """Measure how well a registered reference channel matches the template.

    Parameters
    ----------
    registered_reference : ants.ANTsImage
        The reference channel resampled onto the template grid (:func:`to_template`).
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
    reg = np.nan_to_num(registered_reference.numpy().astype(np.float64), nan=0.0)
    tpl = np.nan_to_num(template.numpy().astype(np.float64), nan=0.0)
    mask = template_mask.numpy() > 0.5
    n_mask = int(mask.sum())
    if n_mask == 0:
        raise InputDataError("the template brain mask is empty")
    a, b = reg[mask], tpl[mask]
    if a.std() > 0 and b.std() > 0:
        correlation = float(np.corrcoef(a, b)[0, 1])
    else:
        correlation = float("nan")
    finite = reg[np.isfinite(reg)]
    robust_max = float(np.percentile(finite, 99)) if finite.size else 0.0
    threshold = FOREGROUND_FRACTION * robust_max if robust_max > 0 else 0.0
    foreground = reg > threshold
    overlap = 2.0 * np.count_nonzero(foreground & mask) / (foreground.sum() + n_mask)
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


# --------------------------------------------------------------------------------------------
# helpers


def _registration_kwargs(params: dict[str, Any], section: str) -> dict[str, Any]:
    """Validate a profile section against ``ants.registration`` and make its lists tuples."""
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
    schedule = [kwargs[k] for k in _AFF_SCHEDULE_KEYS if k in kwargs]
    if schedule and (
        len(schedule) != len(_AFF_SCHEDULE_KEYS) or len({len(s) for s in schedule}) != 1
    ):
        raise UsageError(
            f"registration profile section {section!r}: {', '.join(_AFF_SCHEDULE_KEYS)} must "
            "all be given, with one entry per level each"
        )
    return kwargs


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Set antspyx's registration seed for one call and restore it afterwards."""
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


def _run_registration(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    transform: str,
    outprefix: str,
    seed: int,
    kwargs: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Call ``ants.registration`` with a seed, turning its failures into RegistrationError."""
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
def _ants_workdir(out_prefix: str) -> Iterator[str]:
    """Yield a fresh prefix in a temporary folder beside ``out_prefix``.

    ``ants.registration`` finds its outputs by globbing its prefix, so files left by an earlier
    run under the same prefix would be picked up; a fresh folder avoids that.
    """
    parent = Path(os.path.dirname(out_prefix) or ".")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".ants-") as tmp:
        yield f"{tmp}{os.sep}"


def _move(source: str, target: str) -> None:
    if not Path(source).is_file():
        raise RegistrationError(f"ANTs did not write {source}")
    os.replace(source, target)


def _as_list(transforms: str | list[str]) -> list[str]:
    if isinstance(transforms, str):
        return [transforms] if transforms else []
    return [str(t) for t in transforms]


def _finite(image: ants.ANTsImage, name: str) -> ants.ANTsImage:
    """Return a float copy of a 3D scalar image with non-finite voxels set to 0."""
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


def _binary(mask: ants.ANTsImage) -> ants.ANTsImage:
    data = (mask.numpy() > 0.5).astype(np.float32)
    return mask.clone("float").new_image_like(data)
