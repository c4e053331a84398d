"""Co-registration of channels and normalisation to the template with antspyx.

Pure computation on ANTs images: nothing here knows about BIDS or derivative names. Transform files
are written under a prefix the caller chooses.

antspyx caveats (the seed, SyN's affine stage) and reproducibility:
:mod:`bids_qnet.preprocess.ants_calls`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_qnet.data import channel_defaults
from bids_qnet.errors import InputDataError, RegistrationError, UsageError
from bids_qnet.outputs.integrity import check_hdf5_whole
from bids_qnet.preprocess.ants_calls import (
    AFF_SCHEDULE_KEYS,
    ants_workdir,
    as_list,
    binary,
    finite,
    move,
    registration_kwargs,
    run_registration,
)
from bids_qnet.preprocess.crop import Box

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


@dataclass(frozen=True)
class Transforms:
    """The transform files of a normalisation to the template.

    Attributes
    ----------
    composite, inverse_composite : str
        The subject -> template and template -> subject ``.h5`` composite transforms.
    affine : str or None
        The linear part alone (``.mat``) for staged registrations, else None.
    type_of_transform : str
        The profile's ``type_of_transform``.
    stages : tuple of str
        What ran, in order (``("Affine", "SyNOnly")`` for ``SyN``).
    """

    composite: str
    inverse_composite: str
    affine: str | None
    type_of_transform: str
    stages: tuple[str, ...]

    @property
    def forward(self) -> list[str]:
        """Return the transform list subject -> template (``ants.apply_transforms``)."""
        return [self.composite]

    @property
    def inverse(self) -> list[str]:
        """Return the transform list template -> subject."""
        return [self.inverse_composite]


@dataclass
class Normalisation:
    """What :func:`normalise` returns.

    Attributes
    ----------
    transforms : Transforms
        The transform files.
    warped : ants.ANTsImage
        The moving image on the template grid through the whole transform, as antsRegistration
        itself resampled it (linear interpolation; equal to :func:`to_template` with
        ``transforms.forward`` to float rounding), so that nobody resamples the reference
        channel a second time.
    """

    transforms: Transforms
    warped: ants.ANTsImage


def centroid_transform(moving: ants.ANTsImage, fixed_mask: ants.ANTsImage, path: str) -> str:
    """Write the translation that puts the moving image's support on the mask's centroid.

    The support is where the moving image is finite and non-zero (a brain-masked QSM map: the
    brain). antsRegistration's own start aligns intensity-weighted centres of mass, which a
    signed map (QSM, summing to about zero) sends anywhere.

    Parameters
    ----------
    moving : ants.ANTsImage
        The image to register.
    fixed_mask : ants.ANTsImage
        The fixed image's brain mask (non-zero inside).
    path : str
        Where to write the transform (``.mat``).

    Returns
    -------
    str
        ``path``, for ``initial_transform``.

    Raises
    ------
    InputDataError
        The moving image or the mask is empty.
    """
    import ants

    centres = []
    for image, name in ((moving, "moving image"), (fixed_mask, "template mask")):
        data = image.numpy()
        support = np.isfinite(data) & (data != 0)
        if not support.any():
            raise InputDataError(f"the {name} is empty (no non-zero voxel)")
        index = np.argwhere(support).mean(axis=0)
        direction = np.asarray(image.direction)
        centres.append(np.asarray(image.origin) + direction @ (np.asarray(image.spacing) * index))
    # ITK transforms map fixed points to moving points
    shift = centres[0] - centres[1]
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, translation=[float(v) for v in shift]
    )
    ants.write_transform(transform, path)
    return path


def normalise(
    moving: ants.ANTsImage,
    template: ants.ANTsImage,
    template_mask: ants.ANTsImage,
    params: dict[str, Any],
    out_prefix: str,
    seed: int,
    focus: Box | None = None,
    initial_transform: str | None = None,
) -> Normalisation:
    """Register the reference channel to the template (affine then SyN by default).

    The template brain mask is the fixed-image metric mask in every stage, so a moving T1w that
    still has its skull is matched on the brain only.

    With ``focus`` the linear stages still cover the whole brain, but the deformable stage runs
    on the template cut to that box: its displacement field is defined there only, zero on the
    box's faces (SyN keeps the field's boundary fixed) and outside it, so the composite is the
    linear transform alone outside the box and stays continuous across its faces. At 1 mm a box
    around the basal ganglia with a 20 mm margin is about a tenth of the brain, and the SyN
    stage costs about a tenth as much.

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
    focus : Box, optional
        Voxel box of the template grid the deformable stage covers (e.g. the crop box with a
        margin); None: the whole grid.
    initial_transform : str, optional
        A linear transform (``.mat``) the first stage starts from (e.g.
        :func:`centroid_transform`); by default antsRegistration aligns the centres of mass.

    Returns
    -------
    Normalisation
        The transform files and the moving image on the template grid.

    Raises
    ------
    UsageError
        If ``params`` holds a key that ``ants.registration`` does not take, or ``focus`` is
        given for a transform that is not staged (:data:`STAGED_TRANSFORMS`) or lies outside the
        template grid.
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
    if focus is not None:
        _check_focus(focus, transform, template.shape)
    moving, template = finite(moving, "moving"), finite(template, "template")
    with ants_workdir(out_prefix) as work:
        reg, linear, initial = _run_stages(
            template, moving, mask, stages, work, seed, kwargs, initial_transform, focus
        )
        files = _keep_transforms(reg, initial, out_prefix, transform)
    logger.debug("normalisation %s (%s) written under %s", transform, stages, out_prefix)
    transforms = Transforms(*files, type_of_transform=transform, stages=tuple(stages))
    warped = reg["warpedmovout"]  # moving through every stage
    if focus is not None:  # on the box only: the linear stages' image around it
        whole = linear["warpedmovout"].numpy()
        whole[focus.slices] = warped.numpy()
        warped = linear["warpedmovout"].new_image_like(whole)
    return Normalisation(transforms, warped)


def _check_focus(focus: Box, transform: str, shape: tuple[int, ...]) -> None:
    """Refuse a focus box for a single-stage transform or outside the template grid."""
    if transform not in STAGED_TRANSFORMS:
        raise UsageError(
            f"a registration profile with a focus needs type_of_transform "
            f"{' or '.join(STAGED_TRANSFORMS)} (linear stages, then SyN in the box), "
            f"not {transform!r}"
        )
    if any(up > n for up, n in zip(focus.upper, shape, strict=True)):
        raise UsageError(f"focus box {focus.to_dict()} exceeds the template grid {shape}")


def _run_stages(template, moving, mask, stages, work, seed, kwargs, start=None, focus=None):
    """Run the registration stages, each initialised with the linear transform before it.

    The first stage starts from ``start`` (a ``.mat``) when given; with ``focus`` the last
    stage's fixed image and mask are cut to that box. Returns what the last
    ``ants.registration`` returned, what the one before it returned (None for a single stage)
    and the linear stages' ``.mat`` (or None for a single stage without ``start``).
    """
    import ants

    initial: list[str] | None = [start] if start else None
    linear = None
    for index, stage in enumerate(stages):
        last = index == len(stages) - 1
        fixed, fixed_mask = template, mask
        if last and focus is not None:
            lower, upper = list(focus.lower), list(focus.upper)
            fixed = ants.crop_indices(template, lower, upper)
            fixed_mask = ants.crop_indices(mask, lower, upper)
        reg = run_registration(
            fixed,
            moving,
            stage,
            f"{work}s{index}_",
            seed,
            kwargs,
            mask=fixed_mask,
            initial_transform=initial,
            write_composite_transform=last,
        )
        if not last:
            forward = as_list(reg["fwdtransforms"])
            if len(forward) != 1 or not forward[0].endswith(".mat"):
                raise RegistrationError(
                    f"normalisation stage {stage} returned {forward!r} instead of one .mat"
                )
            initial, linear = forward, reg
    return reg, linear, initial


def _keep_transforms(reg, initial, out_prefix: str, transform: str) -> tuple[str, str, str | None]:
    """Move the composite transforms (and the linear part) to their final names; check them."""
    composite = as_list(reg["fwdtransforms"])
    inverse = as_list(reg["invtransforms"])
    if len(composite) != 1 or len(inverse) != 1 or not Path(composite[0]).is_file():
        raise RegistrationError(
            f"normalisation ({transform}) wrote no composite transform (got {composite!r})"
        )
    forward, backward = f"{out_prefix}Composite.h5", f"{out_prefix}InverseComposite.h5"
    move(composite[0], forward)
    move(inverse[0], backward)
    for written in (forward, backward):
        check_hdf5_whole(written)  # antsRegistration hides a failed write; reading crashes
    affine = None
    if initial is not None:
        affine = f"{out_prefix}0GenericAffine.mat"
        move(initial[0], affine)
    return forward, backward, affine


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
