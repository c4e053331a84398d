"""Co-registration of channels and normalisation to the template with antspyx.

Pure computation on ANTs images: nothing here knows about BIDS or derivative names. Transform files
are written under a prefix the caller chooses.

antspyx caveats (the seed, SyN's affine stage) and reproducibility: :mod:`bids_qnet.ants_calls`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_qnet.ants_calls import (
    AFF_SCHEDULE_KEYS,
    ants_workdir,
    as_list,
    binary,
    finite,
    move,
    registration_kwargs,
    run_registration,
)
from bids_qnet.data import channel_defaults
from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.integrity import check_hdf5_whole

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
    kwargs = registration_kwargs(params, "coregistration")
    transform = kwargs.pop("type_of_transform", "Rigid")
    if transform not in LINEAR_TRANSFORMS:
        raise UsageError(
            f"coregistration type_of_transform must be one of {sorted(LINEAR_TRANSFORMS)}, "
            f"not {transform!r}"
        )
    fixed, moving = finite(fixed, "fixed"), finite(moving, "moving")
    with ants_workdir(out_prefix) as work:
        reg = run_registration(fixed, moving, transform, work, seed, kwargs)
        forward = as_list(reg["fwdtransforms"])
        if len(forward) != 1 or not forward[0].endswith("GenericAffine.mat"):
            raise RegistrationError(
                f"co-registration ({transform}) returned {forward!r} instead of one affine .mat"
            )
        target = f"{out_prefix}0GenericAffine.mat"
        move(forward[0], target)
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
        ``type_of_transform`` (the profile's value) with ``stages`` (what ran, in order), and
        ``warped_image``: ``moving`` on the template grid through the whole transform, as
        antsRegistration itself resamples it (linear interpolation; equal to
        :func:`to_template` with ``forward`` to float rounding), so that nobody resamples the
        reference channel a second time. It is an ``ants.ANTsImage``, not a path: pop it before
        the dict goes anywhere that needs plain values.

    Raises
    ------
    UsageError
        If ``params`` holds a key that ``ants.registration`` does not take.
    InputDataError
        If ``template_mask`` is not on the template's grid or is empty.
    RegistrationError
        If ANTs fails or does not write the composite transforms.
    WriteError
        If a composite transform was written incompletely (full disk, file-size limit).
    """
    kwargs = registration_kwargs(params, "normalisation")
    transform = kwargs.pop("type_of_transform", "SyN")
    if not same_grid(template, template_mask):
        raise InputDataError("the template brain mask is not on the template's grid")
    mask = binary(template_mask)
    if float(mask.sum()) == 0:
        raise InputDataError("the template brain mask is empty")
    stages = STAGED_TRANSFORMS.get(transform, (transform,))
    if len(stages) == 1 and transform not in LINEAR_TRANSFORMS:
        ignored = [k for k in AFF_SCHEDULE_KEYS if k in kwargs]
        if ignored:
            logger.warning(
                "ants.registration ignores %s for type_of_transform=%s", ignored, transform
            )
    moving, template = finite(moving, "moving"), finite(template, "template")
    result: dict[str, Any] = {"type_of_transform": transform, "stages": list(stages)}
    with ants_workdir(out_prefix) as work:
        initial: list[str] | None = None
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            reg = run_registration(
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
                forward = as_list(reg["fwdtransforms"])
                if len(forward) != 1 or not forward[0].endswith(".mat"):
                    raise RegistrationError(
                        f"normalisation stage {stage} returned {forward!r} instead of one .mat"
                    )
                initial = forward
        composite = as_list(reg["fwdtransforms"])
        inverse = as_list(reg["invtransforms"])
        if len(composite) != 1 or len(inverse) != 1 or not Path(composite[0]).is_file():
            raise RegistrationError(
                f"normalisation ({transform}) wrote no composite transform (got {composite!r})"
            )
        result["composite"] = f"{out_prefix}Composite.h5"
        result["inverse_composite"] = f"{out_prefix}InverseComposite.h5"
        move(composite[0], result["composite"])
        move(inverse[0], result["inverse_composite"])
        for written in (result["composite"], result["inverse_composite"]):
            check_hdf5_whole(written)  # antsRegistration hides a failed write; reading crashes
        result["affine"] = None
        if initial is not None:
            result["affine"] = f"{out_prefix}0GenericAffine.mat"
            move(initial[0], result["affine"])
    result["forward"] = [result["composite"]]
    result["inverse"] = [result["inverse_composite"]]
    result["warped_image"] = reg["warpedmovout"]  # moving through initial + last stage
    logger.debug("normalisation %s (%s) written under %s", transform, stages, out_prefix)
    return result


def to_template(
    moving: ants.ANTsImage,
    template: ants.ANTsImage,
    transforms: list[str],
    interpolator: str = "linear",
    imagetype: int = 0,
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
    imagetype : int, optional
        0: a scalar image; 3: a time series, volume by volume (:func:`to_template_series`).

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
    if imagetype == 0:
        moving = finite(moving, "moving")
    try:
        return ants.apply_transforms(
            fixed=template,
            moving=moving,
            transformlist=transforms,
            interpolator=interpolator,
            imagetype=imagetype,
            whichtoinvert=[False] * len(transforms),
            defaultvalue=0,
        )
    except ValueError as exc:
        if "interpolator" in str(exc):
            raise UsageError(f"unknown interpolator {interpolator!r}: {exc}") from exc
        raise RegistrationError(f"applying transforms {transforms} failed: {exc}") from exc
    except RuntimeError as exc:
        raise RegistrationError(f"applying transforms {transforms} failed: {exc}") from exc


def to_template_series(
    moving: list[ants.ANTsImage],
    template: ants.ANTsImage,
    transforms: list[str],
    interpolator: str = "linear",
) -> list[ants.ANTsImage]:
    """Resample images on one grid through one transform list, reading the transforms once.

    One ``ants.apply_transforms`` call on the stacked images (``imagetype=3``, a time series).

    Parameters
    ----------
    moving : list of ants.ANTsImage
        3D images on one voxel grid (:func:`same_grid`), e.g. one acquisition's QSM and R2*.
    template, transforms, interpolator
        As for :func:`to_template`.

    Returns
    -------
    list of ants.ANTsImage
        In input order, each exactly as :func:`to_template` makes it.

    Raises
    ------
    UsageError, RegistrationError
        Images on different grids or none, else as for :func:`to_template`.
    """
    import ants

    if not moving:
        raise UsageError("to_template_series needs at least one image")
    if len(moving) == 1:
        return [to_template(moving[0], template, transforms, interpolator)]
    if not all(same_grid(first := moving[0], image) for image in moving[1:]):
        raise UsageError("to_template_series needs images on one grid; resample them apart")
    volumes = np.stack([finite(image, "moving").numpy() for image in moving], axis=-1)
    direction = np.eye(4)
    direction[:3, :3] = np.asarray(first.direction)
    series = ants.from_numpy(volumes, [*first.origin, 0.0], [*first.spacing, 1.0], direction)
    out = to_template(series, template, transforms, interpolator, imagetype=3).numpy()
    return [template.new_image_like(np.ascontiguousarray(out[..., k])) for k in range(len(moving))]
