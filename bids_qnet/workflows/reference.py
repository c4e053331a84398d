"""The reference files of a participant-level run: template, brain mask and atlas on its grid.

They are computed once into the work folder (uncompressed like every image the steps pass on:
each participant reads them three times) and the atlas on that grid, its label table and
description go to the derivative dataset's root.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bids_qnet.config import Settings
from bids_qnet.data import load_json
from bids_qnet.errors import OutputError
from bids_qnet.inputs.reference import Reference, ReferenceGrid
from bids_qnet.outputs.atomic import copy_file, write_atomic, write_json, write_table
from bids_qnet.outputs.derivatives import sidecar_path
from bids_qnet.outputs.names import DatasetFiles, reference_files, resolution_label
from bids_qnet.workflows.steps import WORK_EXT


def reference_paths(work_dir: Path, resolution: float, reference: Reference) -> dict[str, Path]:
    """Return where the template, brain mask and atlas on the output grid are kept."""
    return reference_files(work_dir, reference.space, resolution, reference.atlas_name, WORK_EXT)


def reference_images(settings: Settings, reference: Reference) -> dict | None:
    """Compute the template, mask and atlas on the output grid, unless the work dir has them.

    The atlas resampling (``genericLabel``) takes about 10 s at 1 mm; every later run with the
    same work dir (by default inside ``output_dir``, so shared by all participants) reuses it.
    Returns None when the files are there, else the ANTs images keyed as
    :func:`reference_paths`.
    """
    resolution = settings.preprocessing.template_resolution
    paths = reference_paths(settings.execution.work_dir, resolution, reference)
    if all(p.is_file() for p in paths.values()):
        return None
    from bids_qnet.inputs.reference import atlas_on_grid, brain_mask, template_on_grid
    from bids_qnet.preprocess.susceptibility import susceptibility_template

    template = template_on_grid(reference, resolution)
    atlas = atlas_on_grid(reference, template)
    chi = susceptibility_template(
        template.numpy(), atlas.numpy(), reference.labels, template.spacing
    )
    return {
        "template_file": template,
        "mask_file": brain_mask(template),
        "atlas_file": atlas,
        "susceptibility_file": template.new_image_like(chi),
    }


def prepare_reference(
    settings: Settings,
    reference: Reference,
    indices: dict[str, int],
    images: dict | None = None,
) -> ReferenceGrid:
    """Write the reference files once, for every step to read; return where they are.

    ``images`` (from :func:`reference_images`) are written when given; otherwise they are
    computed when the work dir lacks them. The atlas on that grid and its label table also go
    to the derivative dataset's root.
    """
    resolution = settings.preprocessing.template_resolution
    paths = reference_paths(settings.execution.work_dir, resolution, reference)
    folder = paths["template_file"].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create work folder {folder}: {exc.strerror}") from exc
    if images is None:
        images = reference_images(settings, reference)
    if images is not None:
        from bids_qnet.preprocess.ants_calls import write_image

        for key, image in images.items():
            write_image(image, paths[key])
    write_atlas(settings.output_dir, reference, resolution, paths["atlas_file"])
    files = {key: str(path) for key, path in paths.items()}
    return ReferenceGrid(
        reference.space, reference.atlas_name, resolution, **files, region_indices=indices
    )


def write_atlas(output_dir: Path, reference: Reference, resolution: float, atlas: Path) -> None:
    """Write the atlas on the output grid, its label table and description at the root."""
    root = DatasetFiles(output_dir)
    res = resolution_label(resolution)
    dseg = root.atlas_image(reference.space, reference.atlas_name, res)
    if not dseg.is_file():
        write_atomic(dseg, lambda tmp: copy_file(atlas, tmp))
    table = pd.DataFrame({"index": list(reference.labels.values()), "name": list(reference.labels)})
    write_table(root.atlas_labels(reference.atlas_name), table)
    atlas_meta = {
        "Name": reference.atlas_name,
        "Description": reference.atlas_source,
        "SpatialReference": reference.space,
    }
    builtin = load_json("resources.json")["atlas"]
    if reference.atlas_source.startswith(builtin["source"]):
        atlas_meta["SpaceNote"] = builtin["space_note"]
    write_json(root.atlas_description(reference.atlas_name), atlas_meta)
    resolution_text = f"{resolution:g} mm isotropic, the template grid (res-{res}: mm)"
    write_json(
        sidecar_path(dseg),
        {**atlas_meta, "Resolution": resolution_text, "Sources": [reference.template_source]},
    )
