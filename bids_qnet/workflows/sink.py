"""Write one participant's results into the derivative dataset with BIDS names and sidecars.

Data files are written first, each sidecar after its data file, and the embeddings' sidecar last:
it marks the participant complete and carries the settings fingerprint. A rerun first removes
that marker and each sidecar before replacing its data file, so a run killed while rewriting
never leaves an old sidecar describing a new file, nor a participant that looks complete.
Every name comes from :class:`~bids_qnet.outputs.names.ParticipantFiles`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_qnet import __version__
from bids_qnet.config import Settings
from bids_qnet.inputs.reference import ReferenceGrid
from bids_qnet.outputs.atomic import (
    copy_file,
    remove_stale_temporaries,
    reported_write_errors,
    write_atomic,
    write_json,
)
from bids_qnet.outputs.derivatives import raw_source, sidecar_path, source_uri, write_sidecar
from bids_qnet.outputs.names import ParticipantFiles, participant_settings
from bids_qnet.outputs.provenance import software_versions
from bids_qnet.workflows.steps import RegisteredReference

# What the summary's "Crop" section shows of the slice stack's sidecar.
CROP_SUMMARY = ("Crop", "Atlas", "Regions", "Box", "BoxMillimetres", "Shape", "IntensityWindows")


@dataclass(frozen=True)
class RunRecord:
    """What a participant run records besides its settings.

    Attributes
    ----------
    grid : ReferenceGrid
        The reference files on the output grid.
    profile_name : str
        The registration profile's name.
    command_line : str
        The command as typed.
    quality_gate : dict
        The profile's ``quality`` section (``min_<metric>``: the participant fails below).
    """

    grid: ReferenceGrid
    profile_name: str
    command_line: str
    quality_gate: dict = field(default_factory=dict)


@dataclass
class StepResults:
    """What the steps hand to the sink (the workflow connects one node output to each)."""

    prep_info: dict
    coreg: dict[str, list[str]]
    coreg_info: dict
    xfm: RegisteredReference
    norm_info: dict
    registered: dict[str, str]
    resample_info: dict
    cropped: dict[str, str]
    stack_path: str
    crop_info: dict
    embeddings_path: str
    embed_info: dict

    def timings(self) -> dict[str, float]:
        """Seconds each step took."""
        return {
            "prepare": self.prep_info["Seconds"],
            "coregister": self.coreg_info["Seconds"],
            "normalise": self.norm_info["Seconds"],
            "resample": self.resample_info["Seconds"],
            "crop": self.crop_info["Seconds"],
            "embed": self.embed_info["Seconds"],
        }


def inputs_fingerprint(bids_dir: Path, channels: dict, input_info: dict) -> str:
    """Return a short hash of what was read: each channel's source and its file's SHA-256.

    It changes when a filter or ``-d`` selects another image, or when an input file is
    replaced, so that outputs made from other inputs are never taken for complete.

    Parameters
    ----------
    bids_dir : Path
        The input dataset's root (sources are named relative to it).
    channels : dict of str to path
        Suffix to the input image.
    input_info : dict
        The preflight's findings per suffix (``sha256`` of each file).
    """
    payload = {
        suffix: [raw_source(bids_dir, Path(path)), input_info.get(suffix, {}).get("sha256")]
        for suffix, path in channels.items()
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def participant_files(settings: Settings, space: str, subject: str, session: str | None):
    """Return the naming of one participant's (and session's) outputs in this run."""
    prep = settings.preprocessing
    return ParticipantFiles(
        settings.output_dir, subject, session, space, prep.template_resolution, prep.crop
    )


class _Writer:
    """Copies step outputs into the dataset, each sidecar after its data, listing what it wrote."""

    def __init__(self, files: ParticipantFiles, common: dict[str, Any]) -> None:
        self.files, self.common, self.written = files, common, []

    def copy(self, source: str, dest: Path, meta: dict | None) -> Path:
        sidecar_path(dest).unlink(missing_ok=True)  # never an old sidecar over new data
        write_atomic(dest, lambda tmp: copy_file(source, tmp))  # .nii from a step: compressed
        self.written.append(dest)
        if meta is not None:
            self.written.append(write_sidecar(dest, {**meta, **self.common}))
        return dest


def write_outputs(
    settings: Settings,
    run: RunRecord,
    subject: str,
    session: str | None,
    sources: dict[str, str],
    input_info: dict,
    results: StepResults,
) -> list[str]:
    """Copy a participant's results into the output folder under BIDS-style names.

    Returns
    -------
    list of str
        The derivative files written, data before sidecars, the completeness marker last.

    Raises
    ------
    OutputError, WriteError
        A file could not be written (exit 73 or 74); nothing half-written looks complete.
    """
    files = participant_files(settings, run.grid.space, subject, session)
    marker = sidecar_path(files.embeddings)
    marker.unlink(missing_ok=True)  # incomplete from here until the last line
    remove_stale_temporaries(files.folder)
    datasets = {"raw": settings.bids_dir, **settings.inputs.derivatives}
    uris = {s: source_uri(Path(p), datasets) for s, p in sources.items()}
    provenance = {
        "Version": __version__,
        "SettingsFingerprint": settings.output_fingerprint(),
        "InputsFingerprint": inputs_fingerprint(settings.bids_dir, sources, input_info),
        "RandomSeed": settings.execution.random_seed,
        "Software": software_versions(),
    }
    writer = _Writer(files, {"bids_qnet": provenance})
    _write_transforms(writer, settings, run.grid.space, uris, results)
    _write_channels(writer, settings, run.grid.space, uris, results)
    stack_meta = _stack_meta(settings, run.grid, files, results)
    stack = writer.copy(results.stack_path, files.slices, stack_meta)
    with reported_write_errors(settings.output_dir):
        figures = _figures(settings, run.grid, files, results, stack)
    embed_meta = {
        "Sources": [f"bids::{stack.relative_to(settings.output_dir).as_posix()}"],
        "Description": "ResNet18 global-average-pooled features, one 512-d row per slice",
        **{k: v for k, v in results.embed_info.items() if k != "Seconds"},
        "StepSeconds": results.timings() | {"embed": results.embed_info["Seconds"]},
    }
    final = writer.copy(results.embeddings_path, files.embeddings, None)
    summary = _summary(settings, run, input_info, results, stack_meta, embed_meta)
    summary.update(Subject=subject, Session=session)
    summary["SettingsPath"] = files.settings(settings.run_id).relative_to(files.root).as_posix()
    summary["Figures"] = [f.relative_to(files.root).as_posix() for f in figures]
    with reported_write_errors(settings.output_dir):
        data = write_json(files.report_data, summary)
        report = _report(files, summary, figures)
    write_sidecar(final, {**embed_meta, **writer.common})
    return [str(p) for p in [*writer.written, *figures, data, report, final]]


def _write_transforms(writer, settings, space, uris, results: StepResults) -> None:
    """Write the normalisation's composite transforms, then each distinct co-registration."""
    ref = settings.inputs.reference_channel
    focused = "DeformableRegion" in results.norm_info
    xfm_meta = {
        "Description": "ANTs composite transform (affine + SyN"
        + (" within DeformableRegion, the affine alone outside it)" if focused else ")")
        + ", participant to template",
        "Sources": [uris[ref]],
        "Software": "ANTs (antspyx)",
        **{k: v for k, v in results.norm_info.items() if k != "Seconds"},
    }
    transforms = results.xfm.transforms
    writer.copy(transforms.composite, writer.files.transform(ref, space, ".h5"), xfm_meta)
    inverse = writer.files.transform(space, ref, ".h5")
    if settings.preprocessing.inverse_transforms:
        inverse_meta = {**xfm_meta, "Description": "the inverse: template to participant"}
        writer.copy(transforms.inverse_composite, inverse, inverse_meta)
    else:  # --no-inverse-transforms: an earlier run's inverse would not match the new forward
        sidecar_path(inverse).unlink(missing_ok=True)
        inverse.unlink(missing_ok=True)
    coreg_info = results.coreg_info
    for moving, xfms in _unique_coregistrations(results.coreg, coreg_info).items():
        meta = {
            "Sources": [uris[moving], uris[ref]],
            **{k: v for k, v in coreg_info.items() if k != "Seconds"},
        }
        writer.copy(xfms[0], writer.files.transform(moving, ref, ".mat"), meta)


def _write_channels(writer, settings, space, uris, results: StepResults) -> None:
    """Write every channel on the template grid and its crop."""
    prep, files = settings.preprocessing, writer.files
    resolution = f"{prep.template_resolution:g} mm isotropic, the template grid"
    crop_info = results.crop_info
    for suffix, path in results.registered.items():
        meta = {
            "Description": f"{suffix} resampled once onto the {space} template grid",
            "Sources": [uris[suffix]],
            "SpatialReference": space,
            "Resolution": resolution,
            "SkullStripped": False,
            "NonFiniteVoxelsSetToZero": results.prep_info["NonFiniteVoxels"][suffix],
        }
        writer.copy(path, files.registered(suffix), meta)
        crop_meta = {
            **meta,
            "Description": f"{suffix} in {space}, cropped to the {files.crop_desc} box",
            "CropBox": crop_info["Box"],
            "CropBoxMillimetres": crop_info["BoxMillimetres"],
            "Regions": prep.crop_regions if prep.crop == "bg" else "brain",
        }
        writer.copy(results.cropped[suffix], files.cropped(suffix), crop_meta)


def _stack_meta(settings, grid: ReferenceGrid, files: ParticipantFiles, results) -> dict:
    prep = settings.preprocessing
    root = settings.output_dir
    return {
        "Sources": [
            f"bids::{files.cropped(s).relative_to(root).as_posix()}" for s in results.registered
        ],
        "Description": "axial slices (S, C, H, W), inferior to superior, channels stacked like RGB",
        "Channels": list(results.registered),
        "Crop": prep.crop,
        "Atlas": grid.atlas_name,
        "Regions": prep.crop_regions if prep.crop == "bg" else [],
        "MarginMillimetres": prep.crop_margin_mm,
        **{k: v for k, v in results.crop_info.items() if k != "Seconds"},
        "StepSeconds": results.timings(),
    }


def _unique_coregistrations(coreg: dict[str, list[str]], info: dict) -> dict[str, list[str]]:
    via = info.get("CoregisteredVia", {})
    return {via[s]: xfms for s, xfms in coreg.items() if xfms and via.get(s) == s}


def _figures(settings, grid, files: ParticipantFiles, results, stack_path: Path) -> list[Path]:
    import nibabel as nib

    from bids_qnet.reports.figures import registration_qc, slice_montage

    template = nib.load(grid.template_file)
    arrays = {s: np.asarray(nib.load(p).dataobj) for s, p in results.registered.items()}
    box = results.crop_info["Box"]
    qc = registration_qc(
        np.asarray(template.dataobj),
        arrays,
        tuple(box["lower"]),
        tuple(box["upper"]),
        files.registration_figure,
        zooms=tuple(float(z) for z in template.header.get_zooms()[:3]),
        title=f"{files.stem}: registered channels, template outline, crop box",
    )
    montage = slice_montage(
        np.load(stack_path, mmap_mode="r"),
        list(results.registered),
        files.slices_figure,
        title=f"{files.stem}: slice stack (inferior to superior)",
    )
    return [qc, montage]


def _warnings(checks: list[dict]) -> list[str]:
    """Return one sentence per quality check that deserves a look (result ``check``)."""
    notes = []
    for row in checks:
        if row["result"] != "check":
            continue
        if row.get("detail"):
            notes.append(f"{row['check']}: {row['detail']} (set to zero)")
        else:
            value = f"{row['value']:.3g}{row['unit']}"
            notes.append(
                f"{row['check']} is {value} ({row['threshold']}): look at the registration figure"
            )
    return notes


#: The settings a participant's report lists (those that define its outputs, and the seed).
REPORT_SETTINGS = (
    "channels",
    "reference_channel",
    "registration_profile",
    "template_resolution",
    "crop",
    "crop_regions",
    "crop_margin_mm",
    "embedding_weights",
    "image_size",
    "random_seed",
    "inverse_transforms",
)


def _summary(settings, run: RunRecord, input_info, results, stack_meta, embed_meta) -> dict:
    from bids_qnet.data import load_json
    from bids_qnet.preprocess.quality import assess
    from bids_qnet.reports.methods import participant_methods

    quality = results.norm_info.get("Quality", {})
    checks = assess(quality, run.quality_gate, results.prep_info["NonFiniteVoxels"])
    recorded = settings.to_dict()
    return {
        "Warnings": _warnings(checks),
        "QualityChecks": checks,
        "RunID": settings.run_id,
        "CommandLine": run.command_line,
        "Inputs": input_info,
        "Co-registration": {k: v for k, v in results.coreg_info.items() if k != "Seconds"},
        "Normalisation": {
            "Profile": run.profile_name,
            "Space": run.grid.space,
            **{k: v for k, v in results.norm_info.items() if k != "Seconds"},
        },
        "Crop": {k: stack_meta[k] for k in CROP_SUMMARY},
        "Embedding": {k: embed_meta[k] for k in ("Weights", "WeightsSHA256", "Device", "Shape")},
        "Step timings (s)": embed_meta["StepSeconds"],
        "Settings": {k: recorded[k] for k in REPORT_SETTINGS if k in recorded},
        "Methods": participant_methods(recorded, load_json("resources.json")),
        "Software": software_versions(),
        "Errors": [],
    }


def _report(files: ParticipantFiles, summary: dict, figures: list[Path]) -> Path:
    from bids_qnet.reports.participant import write_participant_report

    return write_participant_report(
        files.root, files.subject, files.session, summary, figures, files.report
    )


def save_settings(settings: Settings, subject: str, session: str | None) -> Path:
    """Save the run's settings into the participant's log folder."""
    path = participant_settings(settings.output_dir, subject, session, settings.run_id)
    return write_json(path, settings.to_dict())
