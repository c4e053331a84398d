"""The participant pipeline's steps: load files, call the computation modules, save to the cwd.

Each step is what one nipype node runs (in its own working folder, which is the current
directory), takes JSON-able arguments and returns paths and a small ``info`` dict that ends up in
the derivative sidecars. Nothing here writes into the output dataset.

Images passed between steps are uncompressed NIfTI (:data:`WORK_EXT`): the next step reads them
back at once, and the float data of a 1 mm volume barely compress (34 MB to 25 MB) while
compressing and decompressing them took about 2 s a participant. The sink compresses each image
once, into the derivative dataset.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_qnet.preprocess.registration import Transforms

LOGGER = logging.getLogger(__name__)

#: Extension of the images steps pass to each other in the work folder.
WORK_EXT = ".nii"


def set_threads(nthreads: int) -> None:
    """Set ITK and torch thread counts for this process.

    torch is not imported for this (3 s a process): a worker that has not imported it reads
    ``OMP_NUM_THREADS`` when it does.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(nthreads)
    os.environ["OMP_NUM_THREADS"] = str(nthreads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != nthreads:
        torch.set_num_threads(nthreads)


def prepare(
    channels: dict[str, str], nthreads: int, checksums: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """Write finite float32 copies of the channel images (NaN/Inf set to 0, counted).

    Each copy is rebuilt from its image's affine (nibabel's reading: the sform when set, else
    the qform): sform and qform both hold that affine and the voxel sizes (pixdim) are the
    affine's. ITK reads the spacing from pixdim and may prefer the qform, so a header whose
    pixdim is 0 or NaN, or whose qform disagrees with its sform, would otherwise put the image
    elsewhere for ANTs than for nibabel and misalign the channels.

    Each copy's name carries the start of its input's SHA-256 (``checksums``), so that the
    steps after this one, whose cache keys are these names, are recomputed when an input file
    is replaced under the same name.
    """
    import nibabel as nib

    set_threads(nthreads)
    start = time.perf_counter()
    prepared, nonfinite = {}, {}
    for suffix, path in channels.items():
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        data = data.reshape(data.shape[:3])
        bad = ~np.isfinite(data)
        nonfinite[suffix] = int(bad.sum())
        data[bad] = 0.0
        digest = (checksums or {}).get(suffix)
        out = Path.cwd() / (f"{suffix}_{digest[:12]}" if digest else suffix)
        out = out.with_name(out.name + WORK_EXT)
        nib.save(consistent_image(data, image), out)
        prepared[suffix] = str(out)
    info = {"NonFiniteVoxels": nonfinite, "Seconds": round(time.perf_counter() - start, 2)}
    return prepared, info


def consistent_image(data: np.ndarray, source):
    """Return ``data`` as a NIfTI image whose every geometry field holds ``source.affine``.

    sform and qform are both set to the affine (with the source's sform code, or ``scanner``
    without one) and pixdim to the affine's voxel sizes, so that nibabel and ITK agree.
    """
    import nibabel as nib

    affine = np.asarray(source.affine, dtype=np.float64)
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units("mm", "sec")  # ITK scales spacing by the units; nibabel never does
    image = nib.Nifti1Image(data, affine, header)
    code = int(source.header["sform_code"]) or int(source.header["qform_code"]) or 1
    image.header.set_sform(affine, code=code)
    image.header.set_qform(affine, code=code)
    image.header.set_zooms(nib.affines.voxel_sizes(affine))
    return image


def coregister(
    prepared: dict[str, str], reference_channel: str, profile: dict, seed: int, nthreads: int
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Rigidly register each grid that differs from the reference channel's grid to it."""
    import ants

    from bids_qnet.preprocess import registration

    set_threads(nthreads)
    start = time.perf_counter()
    images = {s: ants.image_read(p) for s, p in prepared.items()}
    transforms: dict[str, list[str]] = {s: [] for s in prepared}
    groups = registration.group_by_grid(images)
    moved: dict[str, str] = {}
    for group in groups:
        if reference_channel in group:
            continue
        moving = registration.pick_coregistration_channel(group)
        xfms = registration.coregister(
            images[reference_channel],
            images[moving],
            profile["coregistration"],
            str(Path.cwd() / f"coreg_{moving}_"),
            seed,
        )
        for suffix in group:
            transforms[suffix] = xfms
            moved[suffix] = moving
    info = {
        "Grids": [list(g) for g in groups],
        "CoregisteredVia": moved,
        "CoregistrationTransform": profile["coregistration"]["type_of_transform"],
        "Seconds": round(time.perf_counter() - start, 2),
    }
    return transforms, info


@dataclass(frozen=True)
class RegisteredReference:
    """The reference channel normalised to the template, as :func:`normalise` passes it on.

    Attributes
    ----------
    transforms : Transforms
        The transform files.
    warped : str
        The reference channel on the template grid, as antsRegistration resampled it.
    warped_from : str
        The prepared image it was made from: :func:`resample` reuses ``warped`` for it.
    """

    transforms: Transforms
    warped: str
    warped_from: str


def normalise(
    reference_image: str,
    template: str,
    mask: str,
    profile: dict,
    seed: int,
    nthreads: int,
    contrast: str = "T1w",
    focus: dict | None = None,
) -> tuple[RegisteredReference, dict[str, Any]]:
    """Register the reference channel to the template (affine + SyN) and check the result.

    ``contrast`` is the template's (the reference channel's ``template`` in ``resources.json``):
    ``"T1w"``, or ``"susceptibility"`` for a QSM map registered to the susceptibility template,
    starting from the centroid of its support (:func:`~bids_qnet.preprocess.registration.
    centroid_transform`) and checked against the profile's ``quality.susceptibility``
    thresholds where it sets them.

    The reference channel warped for the check is kept: :func:`resample` reuses it instead of
    resampling it again. ``focus`` (profiles with a ``focus`` section, :func:`focus_box`)
    restricts the SyN stage to the crop box grown by a margin.
    """
    import ants

    from bids_qnet.preprocess import quality as registration_quality
    from bids_qnet.preprocess import registration
    from bids_qnet.preprocess.ants_calls import write_image

    set_threads(nthreads)
    start = time.perf_counter()
    template_img, mask_img = ants.image_read(template), ants.image_read(mask)
    moving = ants.image_read(reference_image)
    initial = None
    if contrast == "susceptibility":
        initial = registration.centroid_transform(
            moving, mask_img, str(Path.cwd() / "centroid_start.mat")
        )
    box = focus_box(focus, mask_img) if focus else None
    result = registration.normalise(
        moving,
        template_img,
        mask_img,
        profile["normalisation"],
        str(Path.cwd() / "norm_"),
        seed,
        initial_transform=initial,
        focus=box,
    )
    warped = result.warped  # antsRegistration's own resampling, not a second one
    quality = registration_quality.quality(warped, template_img, mask_img)
    thresholds = registration_quality.thresholds(profile["quality"], contrast)
    what = Path(reference_image).name.split("_")[0]
    if contrast != "T1w":
        what += f" (to the {contrast} template)"
    registration_quality.check_quality(quality, thresholds, what)
    path = write_image(warped, Path.cwd() / f"reference_space-template{WORK_EXT}")
    info = {
        "TransformType": result.transforms.type_of_transform,
        "Template": contrast,
        "Quality": quality,
        "Seconds": round(time.perf_counter() - start, 2),
    }
    if box is not None:
        info["DeformableRegion"] = {
            "Box": box.to_dict(),
            "BoxMillimetres": _box_mm(box, _ants_affine(template_img)),
            "MarginMillimetres": focus["margin_mm"],
            "Outside": "the linear transform alone",
        }
    return RegisteredReference(result.transforms, str(path), reference_image), info


def focus_box(focus: dict, mask_img):
    """Return the template-grid box a focused profile's SyN stage covers.

    Parameters
    ----------
    focus : dict
        ``crop_mode`` (``bg``: around the atlas ``labels`` in the ``atlas`` image; ``full``:
        around the brain mask) and ``margin_mm`` (the crop margin plus the profile's).
    mask_img : ants.ANTsImage
        The template brain mask on the output grid.

    Returns
    -------
    bids_qnet.preprocess.crop.Box
        The box, clipped to the grid.
    """
    import ants

    from bids_qnet.preprocess import crop as cropping

    margin = tuple(int(np.ceil(focus["margin_mm"] / z)) for z in mask_img.spacing)
    if focus["crop_mode"] == "bg":
        labels = ants.image_read(focus["atlas"]).numpy()
        return cropping.region_box(labels, focus["labels"], margin)
    return cropping.mask_box(mask_img.numpy() > 0, margin)


def _ants_affine(image) -> np.ndarray:
    """Voxel -> RAS mm of an ANTs image (its physical space is LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = (
        np.diag([-1.0, -1.0, 1.0]) @ np.asarray(image.direction) @ np.diag(image.spacing)
    )
    affine[:3, 3] = np.asarray(image.origin) * [-1.0, -1.0, 1.0]
    return affine


def resample(
    prepared: dict[str, str],
    coreg: dict[str, list[str]],
    xfm: RegisteredReference,
    template: str,
    nthreads: int,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Resample every channel once onto the template grid with the composed transforms.

    The reference channel, already resampled by :func:`normalise`, is passed on as that step
    wrote it; channels that share a grid and a transform list are resampled together, reading
    the transforms once.
    """
    import ants

    from bids_qnet.preprocess import registration
    from bids_qnet.preprocess.ants_calls import write_image

    set_threads(nthreads)
    start = time.perf_counter()
    template_img = ants.image_read(template)
    outputs = {s: Path.cwd() / f"{s}_space-template{WORK_EXT}" for s in prepared}
    groups: dict[tuple[str, ...], list[str]] = {}
    for suffix, path in prepared.items():
        transforms = (*xfm.transforms.forward, *coreg.get(suffix, []))
        if path == xfm.warped_from and not coreg.get(suffix):
            outputs[suffix] = Path(xfm.warped)
        else:
            groups.setdefault(transforms, []).append(suffix)
    for transforms, suffixes in groups.items():
        images = {s: ants.image_read(prepared[s]) for s in suffixes}
        for grid in registration.group_by_grid(images):
            moved = registration.to_template_series(
                [images[s] for s in grid], template_img, list(transforms)
            )
            for suffix, image in zip(grid, moved, strict=True):
                write_image(image, outputs[suffix])  # ITK does not report a failed write
    registered = {s: str(p) for s, p in outputs.items()}
    return registered, {"Seconds": round(time.perf_counter() - start, 2)}


def crop(
    registered: dict[str, str],
    mask: str,
    atlas: str,
    region_indices: dict[str, int],
    crop_mode: str,
    margin_mm: float,
) -> tuple[dict[str, str], str, dict[str, Any]]:
    """Cut the box, stretch intensities per channel and build the (S, C, H, W) slice stack."""
    import nibabel as nib

    from bids_qnet.data import channel_defaults
    from bids_qnet.preprocess import crop as cropping

    start = time.perf_counter()
    mask_img = nib.load(mask)
    brain = np.asarray(mask_img.dataobj) > 0
    zooms = np.array(mask_img.header.get_zooms()[:3], dtype=float)
    margin = tuple(int(np.ceil(margin_mm / z)) for z in zooms)
    if crop_mode == "bg":
        labels = np.asarray(nib.load(atlas).dataobj)
        box = cropping.region_box(labels, list(region_indices.values()), margin)
    else:
        box = cropping.mask_box(brain, margin)
    volumes, windows, cropped = [], {}, {}
    for suffix, path in registered.items():
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        setting = channel_defaults(suffix)["intensity"]
        low, high = cropping.intensity_window(data, brain, setting["method"], setting["range"])
        windows[suffix] = {
            "method": setting["method"],
            "parameters": setting["range"],
            "low": float(low),
            "high": float(high),
        }
        volumes.append(cropping.stretch(data[box.slices], low, high))  # the box only
        out = Path.cwd() / f"{suffix}_crop{WORK_EXT}"
        nib.save(_crop_image(image, data, box.slices), out)
        cropped[suffix] = str(out)
    stack = cropping.slice_stack(volumes, cropping.Box((0, 0, 0), box.shape))
    stack_path = Path.cwd() / "slices.npy"
    np.save(stack_path, stack)
    info = {
        "Box": box.to_dict(),
        "BoxMillimetres": _box_mm(box, mask_img.affine),
        "SlicePositions": cropping.slice_positions(box, mask_img.affine),
        "IntensityWindows": windows,
        "Shape": list(stack.shape),
        "Orientation": cropping.ORIENTATION,
        "Seconds": round(time.perf_counter() - start, 2),
    }
    return cropped, str(stack_path), info


def embed(
    stack_path: str,
    weights: str,
    image_size: int,
    batch_size: int,
    device: str,
    seed: int,
    nthreads: int,
) -> tuple[str, dict[str, Any]]:
    """Embed every slice with ResNet18 (512-d after global average pooling)."""
    from bids_qnet.models import embedding
    from bids_qnet.models.device import resolve_device

    set_threads(nthreads)
    start = time.perf_counter()
    stack = np.load(stack_path)
    torch_device = resolve_device(device)
    model, weights_info = embedding.load_backbone(weights, stack.shape[1], seed)
    vectors = embedding.embed_slices(model, stack, image_size, batch_size, torch_device)
    out = Path.cwd() / "embeddings.npy"
    np.save(out, vectors)
    info = {
        "Weights": weights_info.source,
        "WeightsFile": weights_info.path,
        "WeightsSHA256": weights_info.sha256,
        "Device": str(torch_device),
        "ImageSize": image_size,
        "BatchSize": batch_size,
        "Shape": list(vectors.shape),
        "Seconds": round(time.perf_counter() - start, 2),
    }
    return str(out), info


def _crop_image(image, data: np.ndarray, slices: tuple[slice, ...]):
    """Return ``image.slicer[slices]``, from ``data`` when it holds the file's values as stored."""
    if image.get_data_dtype() != data.dtype:
        return image.slicer[slices]  # let nibabel scale the stored values as it does
    affine = image.slicer.slice_affine(slices)
    return image.__class__(data[slices].copy(), affine, image.header, image.extra)


def _box_mm(box, affine: np.ndarray) -> dict[str, list[float]]:
    lower = affine @ np.array([*box.lower, 1.0])
    upper = affine @ np.array([*(u - 1 for u in box.upper), 1.0])
    return {
        "lower": [round(float(v), 2) for v in lower[:3]],
        "upper": [round(float(v), 2) for v in upper[:3]],
    }
