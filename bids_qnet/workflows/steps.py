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
from pathlib import Path
from typing import Any

import numpy as np

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


def prepare(channels: dict[str, str], nthreads: int) -> tuple[dict[str, str], dict[str, Any]]:
    """Write finite float32 copies of the channel images (NaN/Inf set to 0, counted)."""
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
        out = Path.cwd() / f"{suffix}{WORK_EXT}"
        header = image.header.copy()
        header.set_data_dtype(np.float32)
        nib.save(nib.Nifti1Image(data, image.affine, header), out)
        prepared[suffix] = str(out)
    info = {"NonFiniteVoxels": nonfinite, "Seconds": round(time.perf_counter() - start, 2)}
    return prepared, info


def coregister(
    prepared: dict[str, str], reference_channel: str, profile: dict, seed: int, nthreads: int
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Rigidly register each grid that differs from the reference channel's grid to it."""
    import ants

    from bids_qnet import registration

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


def normalise(
    reference_image: str, template: str, mask: str, profile: dict, seed: int, nthreads: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register the reference channel to the template (affine + SyN) and check the result.

    The reference channel warped for the check is kept (``xfm["warped"]``, made from
    ``xfm["warped_from"]``): :func:`resample` reuses it instead of resampling it again.
    """
    import ants

    from bids_qnet import registration, registration_quality
    from bids_qnet.ants_calls import write_image

    set_threads(nthreads)
    start = time.perf_counter()
    template_img, mask_img = ants.image_read(template), ants.image_read(mask)
    moving = ants.image_read(reference_image)
    xfm = registration.normalise(
        moving, template_img, mask_img, profile["normalisation"], str(Path.cwd() / "norm_"), seed
    )
    warped = xfm.pop("warped_image")  # antsRegistration's own resampling, not a second one
    quality = registration_quality.quality(warped, template_img, mask_img)
    registration_quality.check_quality(quality, profile["quality"], Path(reference_image).name)
    xfm["warped"] = str(write_image(warped, Path.cwd() / f"reference_space-template{WORK_EXT}"))
    xfm["warped_from"] = reference_image
    info = {
        "TransformType": xfm.get(
            "type_of_transform", profile["normalisation"]["type_of_transform"]
        ),
        "Quality": quality,
        "Seconds": round(time.perf_counter() - start, 2),
    }
    return xfm, info


def resample(
    prepared: dict[str, str],
    coreg: dict[str, list[str]],
    xfm: dict[str, Any],
    template: str,
    nthreads: int,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Resample every channel once onto the template grid with the composed transforms.

    The reference channel, already resampled by :func:`normalise`, is passed on as that step
    wrote it; channels that share a grid and a transform list are resampled together, reading
    the transforms once.
    """
    import ants

    from bids_qnet import registration
    from bids_qnet.ants_calls import write_image

    set_threads(nthreads)
    start = time.perf_counter()
    template_img = ants.image_read(template)
    outputs = {s: Path.cwd() / f"{s}_space-template{WORK_EXT}" for s in prepared}
    groups: dict[tuple[str, ...], list[str]] = {}
    for suffix, path in prepared.items():
        transforms = (*xfm["forward"], *coreg.get(suffix, []))
        if xfm.get("warped") and path == xfm.get("warped_from") and not coreg.get(suffix):
            outputs[suffix] = Path(xfm["warped"])
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

    from bids_qnet import crop as cropping
    from bids_qnet.data import channel_defaults

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
    from bids_qnet import embed as embedding

    set_threads(nthreads)
    start = time.perf_counter()
    stack = np.load(stack_path)
    torch_device = embedding.resolve_device(device)
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
