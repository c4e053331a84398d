"""Write one participant's results into the derivative dataset with BIDS names and sidecars.

Data files are written first, each sidecar after its data file, and the embeddings' sidecar last:
it marks the participant complete and carries the settings fingerprint. A rerun first removes
that marker and each sidecar before replacing its data file, so a run killed while rewriting
never leaves an old sidecar describing a new file, nor a participant that looks complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bids_qnet import __version__
from bids_qnet.derivatives import (
    CROP_DESC,
    build_path,
    copy_file,
    output_error,
    raw_source,
    remove_stale_temporaries,
    sidecar_path,
    subject_dir,
    write_atomic,
    write_json,
    write_sidecar,
)
from bids_qnet.provenance import software_versions

# Below this the QC figure deserves a look; the profile's failure threshold is lower.
WARN_BRAIN_CORRELATION = 0.8


def resolution_label(resolution: float) -> str:
    """Return the ``res-`` label of an isotropic resolution in mm (``1``, ``2``, ``1p5``)."""
    return f"{resolution:g}".replace(".", "p")


def output_entities(subject: str, session: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Return the entities shared by a participant's template-space outputs."""
    return {
        "sub": subject,
        "ses": session,
        "space": options["space"],
        "res": resolution_label(options["template_resolution"]),
    }


def final_output(output_dir: Path, subject: str, session: str | None, options: dict) -> Path:
    """Return the embeddings file, whose sidecar marks a participant complete."""
    entities = {**output_entities(subject, session, options), "desc": CROP_DESC[options["crop"]]}
    return output_dir / build_path(entities, "embeddings", ".npy")


def write_outputs(
    output_dir: str,
    bids_dir: str,
    subject: str,
    session: str | None,
    sources: dict[str, str],
    options: dict[str, Any],
    prep_info: dict,
    coreg: dict[str, list[str]],
    coreg_info: dict,
    xfm: dict[str, Any],
    norm_info: dict,
    registered: dict[str, str],
    resample_info: dict,
    cropped: dict[str, str],
    stack_path: str,
    crop_info: dict,
    embeddings_path: str,
    embed_info: dict,
) -> list[str]:
    """Copy a participant's results into ``output_dir`` under BIDS-style names.

    Returns
    -------
    list of str
        The derivative files written, data before sidecars, the completeness marker last.

    Raises
    ------
    OutputError, WriteError
        A file could not be written (exit 73 or 74); nothing half-written looks complete.
    """
    out, bids = Path(output_dir), Path(bids_dir)
    marker = sidecar_path(final_output(out, subject, session, options))
    marker.unlink(missing_ok=True)  # incomplete from here until the last line
    remove_stale_temporaries(subject_dir(out, subject, session))
    base = output_entities(subject, session, options)
    desc = CROP_DESC[options["crop"]]
    uris = {s: raw_source(bids, Path(p)) for s, p in sources.items()}
    common = {
        "bids_qnet": {
            "Version": __version__,
            "SettingsFingerprint": options["fingerprint"],
            "RandomSeed": options["random_seed"],
            "Software": software_versions(),
        },
    }
    written: list[Path] = []

    def copy(src: str, entities: dict, suffix: str, ext: str, meta: dict | None) -> Path:
        dest = out / build_path(entities, suffix, ext)
        sidecar_path(dest).unlink(missing_ok=True)  # never an old sidecar over new data
        write_atomic(dest, lambda tmp: copy_file(src, tmp))  # .nii from a step: compressed
        written.append(dest)
        if meta is not None:
            written.append(write_sidecar(dest, {**meta, **common}))
        return dest

    ref = options["reference_channel"]
    space = options["space"]
    xfm_meta = {
        "Description": "ANTs composite transform (affine + SyN)",
        "Sources": [uris[ref]],
        "Software": "ANTs (antspyx)",
        **norm_info,
    }
    copy(
        xfm["composite"],
        {"sub": subject, "ses": session, "from": ref, "to": space, "mode": "image"},
        "xfm",
        ".h5",
        xfm_meta,
    )
    copy(
        xfm["inverse_composite"],
        {"sub": subject, "ses": session, "from": space, "to": ref, "mode": "image"},
        "xfm",
        ".h5",
        xfm_meta,
    )
    for moving, transforms in _unique_coregistrations(coreg, coreg_info).items():
        meta = {
            "Sources": [uris[moving], uris[ref]],
            **{k: v for k, v in coreg_info.items() if k != "Seconds"},
        }
        copy(
            transforms[0],
            {"sub": subject, "ses": session, "from": moving, "to": ref, "mode": "image"},
            "xfm",
            ".mat",
            meta,
        )

    resolution = f"{options['template_resolution']:g} mm isotropic, the template grid"
    for suffix, path in registered.items():
        meta = {
            "Description": f"{suffix} resampled once onto the {space} template grid",
            "Sources": [uris[suffix]],
            "SpatialReference": space,
            "Resolution": resolution,
            "SkullStripped": False,
            "NonFiniteVoxelsSetToZero": prep_info["NonFiniteVoxels"][suffix],
        }
        copy(path, {**base}, suffix, ".nii.gz", meta)
        crop_meta = {
            **meta,
            "Description": f"{suffix} in {space}, cropped to the {desc} box",
            "CropBox": crop_info["Box"],
            "CropBoxMillimetres": crop_info["BoxMillimetres"],
            "Regions": options["crop_regions"] if options["crop"] == "bg" else "brain",
        }
        copy(cropped[suffix], {**base, "desc": desc}, suffix, ".nii.gz", crop_meta)

    timings = {
        "prepare": prep_info["Seconds"],
        "coregister": coreg_info["Seconds"],
        "normalise": norm_info["Seconds"],
        "resample": resample_info["Seconds"],
        "crop": crop_info["Seconds"],
        "embed": embed_info["Seconds"],
    }
    stack_meta = {
        "Sources": [
            f"bids::{build_path({**base, 'desc': desc}, s, '.nii.gz').as_posix()}"
            for s in registered
        ],
        "Description": "axial slices (S, C, H, W), inferior to superior, channels stacked like RGB",
        "Channels": list(registered),
        "Crop": options["crop"],
        "Atlas": options["atlas_name"],
        "Regions": options["crop_regions"] if options["crop"] == "bg" else [],
        "MarginMillimetres": options["crop_margin_mm"],
        **{k: v for k, v in crop_info.items() if k != "Seconds"},
        "StepSeconds": timings,
    }
    stack_dest = copy(stack_path, {**base, "desc": desc}, "slices", ".npy", stack_meta)
    with _output_errors(out):
        figures = _figures(out, subject, session, options, registered, stack_dest, crop_info)
    embed_meta = {
        "Sources": [f"bids::{stack_dest.relative_to(out).as_posix()}"],
        "Description": "ResNet18 global-average-pooled features, one 512-d row per slice",
        **{k: v for k, v in embed_info.items() if k != "Seconds"},
        "StepSeconds": timings | {"embed": embed_info["Seconds"]},
    }
    final = copy(embeddings_path, {**base, "desc": desc}, "embeddings", ".npy", None)
    summary = _summary(options, prep_info, coreg_info, norm_info, stack_meta, embed_meta)
    summary["SettingsPath"] = str(settings_path(out, subject, session, options["run_id"]))
    with _output_errors(out):
        report = _report(out, subject, session, summary, figures)
    write_sidecar(final, {**embed_meta, **common})
    return [str(p) for p in [*written, *figures, report, final]]


@contextlib.contextmanager
def _output_errors(out: Path) -> Iterator[None]:
    """Report write failures of the figure and report helpers like those of ``write_atomic``."""
    try:
        yield
    except OSError as exc:
        raise output_error(exc, Path(exc.filename or out)) from exc


def _unique_coregistrations(coreg: dict[str, list[str]], info: dict) -> dict[str, list[str]]:
    via = info.get("CoregisteredVia", {})
    return {via[s]: xfms for s, xfms in coreg.items() if xfms and via.get(s) == s}


def _figures(
    out: Path,
    subject: str,
    session: str | None,
    options: dict,
    registered: dict[str, str],
    stack_path: Path,
    crop_info: dict,
) -> list[Path]:
    import nibabel as nib

    from bids_qnet.reports.figures import registration_qc, slice_montage

    folder = out / f"sub-{subject}" / "figures"
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    template = nib.load(options["template_file"])
    arrays = {s: np.asarray(nib.load(p).dataobj) for s, p in registered.items()}
    box = crop_info["Box"]
    qc = registration_qc(
        np.asarray(template.dataobj),
        arrays,
        tuple(box["lower"]),
        tuple(box["upper"]),
        folder / f"{stem}_space-{options['space']}_desc-registration_qc.png",
        zooms=tuple(float(z) for z in template.header.get_zooms()[:3]),
        title=f"{stem}: registered channels, template outline, crop box",
    )
    montage = slice_montage(
        np.load(stack_path, mmap_mode="r"),
        list(registered),
        folder / f"{stem}_desc-{CROP_DESC[options['crop']]}_slices.png",
        title=f"{stem}: slice stack (inferior to superior)",
    )
    return [qc, montage]


def _warnings(prep_info: dict, norm_info: dict) -> list[str]:
    notes = [
        f"{n} non-finite (NaN/Inf) voxels in {s} were set to zero"
        for s, n in prep_info["NonFiniteVoxels"].items()
        if n
    ]
    correlation = norm_info.get("Quality", {}).get("brain_correlation")
    if correlation is not None and correlation < WARN_BRAIN_CORRELATION:
        notes.append(
            f"registered reference/template correlation in the brain is {correlation:.2f}"
            f" (< {WARN_BRAIN_CORRELATION}): check the registration QC figure"
        )
    return notes


def _summary(options, prep_info, coreg_info, norm_info, stack_meta, embed_meta) -> dict:
    return {
        "Warnings": _warnings(prep_info, norm_info),
        "RunID": options["run_id"],
        "CommandLine": options.get("command_line", ""),
        "Inputs": options.get("input_info", {}),
        "Co-registration": {k: v for k, v in coreg_info.items() if k != "Seconds"},
        "Normalisation": {
            "Profile": options["registration_profile"],
            **{k: v for k, v in norm_info.items() if k != "Seconds"},
        },
        "Crop": {
            k: stack_meta[k]
            for k in (
                "Crop",
                "Atlas",
                "Regions",
                "Box",
                "BoxMillimetres",
                "Shape",
                "IntensityWindows",
            )
        },
        "Embedding": {k: embed_meta[k] for k in ("Weights", "WeightsSHA256", "Device", "Shape")},
        "Step timings (s)": embed_meta["StepSeconds"],
    }


def _report(
    out: Path, subject: str, session: str | None, summary: dict, figures: list[Path]
) -> Path:
    from bids_qnet.reports.participant import write_participant_report

    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return write_participant_report(out, subject, session, summary, figures, out / f"{stem}.html")


def settings_path(output_dir: Path, subject: str, session: str | None, run_id: str) -> Path:
    """Return where a run's settings are saved for a participant (and session)."""
    name = "bids_qnet_settings" + (f"_ses-{session}" if session else "") + ".json"
    return subject_dir(output_dir, subject, None) / "log" / run_id / name


def save_settings(output_dir: Path, subject: str, session: str | None, settings) -> Path:
    """Save the run's settings into the participant's log folder."""
    path = settings_path(output_dir, subject, session, settings.run_id)
    return write_json(path, settings.to_dict())


__all__ = [
    "final_output",
    "output_entities",
    "resolution_label",
    "save_settings",
    "settings_path",
    "write_outputs",
]
