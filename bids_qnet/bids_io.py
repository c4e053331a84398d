"""Find participants, sessions and channel images in a BIDS dataset (through pybids)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_qnet.errors import (
    InputDataError,
    MissingInputError,
    NothingSelectedError,
    QNetError,
    UsageError,
)

LOGGER = logging.getLogger(__name__)
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
# Channels whose fields of view share less than this part of the smaller one (in scanner
# coordinates) cannot come from one session: one of the headers is wrong.
MIN_FOV_OVERLAP = 0.1


@dataclass
class ParticipantInputs:
    """The channel images of one participant (and session).

    Attributes
    ----------
    subject, session : str
        Labels without ``sub-``/``ses-``; ``session`` is None for single-session datasets.
    channels : dict of str to Path
        BIDS suffix to image path, in the order the channels are stacked.
    """

    subject: str
    session: str | None
    channels: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Return ``sub-<label>[_ses-<label>]`` for messages and folder names."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


@dataclass
class Problem:
    """A participant (or label) that could not be processed, with the error that says why."""

    subject: str
    session: str | None
    error: QNetError

    def line(self) -> str:
        """Return the one-line message for the run summary."""
        who = f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")
        return f"{who}: {self.error}"


def clean_labels(labels: list[str] | None, prefix: str) -> list[str] | None:
    """Strip ``sub-``/``ses-`` prefixes, expand label files, and refuse unsafe labels.

    Parameters
    ----------
    labels : list of str or None
        Labels as given on the command line; an item naming an existing file is read as one
        label per line (BEP027).
    prefix : str
        ``"sub"`` or ``"ses"``.

    Returns
    -------
    list of str or None
        Unique labels in the order given, or None when no labels were given.
    """
    if not labels:
        return None
    expanded: list[str] = []
    for item in labels:
        path = Path(item)
        if "/" in item or path.suffix in (".txt", ".tsv") or path.is_file():
            if not path.is_file():
                raise UsageError(f"--{prefix}-label file {item} does not exist")
            expanded += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        else:
            expanded += item.replace(",", " ").split()
    cleaned = []
    for label in expanded:
        label = label.removeprefix(f"{prefix}-")
        if not LABEL_PATTERN.match(label):
            raise UsageError(
                f"{prefix} label {label!r} is not a BIDS label (letters and digits only)"
            )
        if label not in cleaned:
            cleaned.append(label)
    return cleaned


def load_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: a JSON object of per-channel pybids queries.

    Keys are channel suffixes (e.g. ``"Chimap"``) or ``"all"`` (applied to every channel).
    """
    if path is None:
        return {}
    try:
        filters = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UsageError(f"--bids-filter-file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {exc}") from exc
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(
            f"--bids-filter-file {path} must map channel suffixes to query objects, "
            'e.g. {"Chimap": {"acq": "qsm"}}'
        )
    return filters


def check_bids_root(bids_dir: Path) -> None:
    """Fail early, with one line, when ``bids_dir`` is not a BIDS dataset."""
    if not bids_dir.is_dir():
        raise MissingInputError(f"bids_dir {bids_dir} does not exist or is not a folder")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputDataError(
            f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing "
            "(point bids_dir at the dataset root)"
        )
    try:
        json.loads(description.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{description} is not valid JSON: {exc}") from exc


def load_layout(bids_dir: Path, derivatives: dict[str, Path] | None = None):
    """Index the dataset (and derivative datasets holding QSM/R2* maps) with pybids, read-only."""
    from bids import BIDSLayout

    layout = BIDSLayout(str(bids_dir), validate=False)
    for name, path in (derivatives or {}).items():
        if not (Path(path) / "dataset_description.json").is_file():
            raise InputDataError(
                f"derivative dataset {name}={path} has no dataset_description.json"
            )
        layout.add_derivatives(str(path), parent_database_path=None, validate=False)
    return layout


def select_subjects(layout, labels: list[str] | None) -> tuple[list[str], list[str]]:
    """Return (subjects to process, requested labels not found in the dataset)."""
    available = sorted(layout.get_subjects())
    if not available:
        raise NothingSelectedError(f"no sub-<label> folders found in {layout.root}")
    if labels is None:
        return available, []
    found = [label for label in labels if label in available]
    unknown = [label for label in labels if label not in available]
    if not found:
        raise NothingSelectedError(
            f"participant label(s) {', '.join(labels)} not found in {layout.root}; "
            f"available: {', '.join(available[:20])}{' ...' if len(available) > 20 else ''}"
        )
    return found, unknown


def select_sessions(layout, subject: str, labels: list[str] | None) -> list[str | None]:
    """Return the sessions of a subject to process (``[None]`` for a session-less participant).

    With ``labels``, only those sessions; a participant without sessions then has none to
    process (the labels cannot be honoured, so nothing is processed silently instead).
    """
    sessions = sorted(layout.get_sessions(subject=subject))
    if not sessions:
        return [None] if labels is None else []
    if labels is None:
        return list(sessions)
    return [s for s in sessions if s in labels]


def find_channels(
    layout,
    subject: str,
    session: str | None,
    channels: list[str],
    filters: dict[str, dict[str, Any]],
) -> ParticipantInputs:
    """Find one image per channel suffix for a participant (and session).

    Raises
    ------
    MissingInputError
        A channel has no image (the message names the suffix and the fix).
    InputDataError
        A channel matches several images (the message names them and suggests a filter file).
    """
    inputs = ParticipantInputs(subject, session)
    for suffix in channels:
        # pybids 0.22 matches ``datatype`` anywhere in the absolute path (a dataset under
        # /data/perf/ would lose its anat images), so the datatype folder is checked here.
        query = {**filters.get("all", {}), **filters.get(suffix, {})}
        datatype = query.pop("datatype", "anat")
        query.update(subject=subject, suffix=suffix, extension=NIFTI_EXTENSIONS)
        if session is not None:
            query["session"] = session
        try:
            files = sorted(set(layout.get(return_type="file", **query)))
        except ValueError as exc:  # pybids: an entity name it does not know
            raise UsageError(f"--bids-filter-file query for {suffix} is invalid: {exc}") from exc
        files = [f for f in files if _in_datatype_folder(Path(f), subject, datatype)]
        queried = {**filters.get("all", {}), **filters.get(suffix, {})}
        if not files and queried:
            raise NothingSelectedError(
                f"--bids-filter-file query {json.dumps(queried)} selects no {suffix} image of "
                f"{inputs.name}; fix the filter or leave this participant out"
            )
        if not files:
            raise MissingInputError(
                f"no {suffix} image (e.g. anat/{inputs.name}_{suffix}.nii.gz) found; add it, "
                f"point -d/--derivatives at the dataset that holds it, or drop {suffix} from "
                "--channels"
            )
        if len(files) > 1:
            names = ", ".join(Path(f).name for f in files)
            raise InputDataError(
                f"{len(files)} {suffix} images match ({names}); choose one with "
                f'--bids-filter-file, e.g. {{"{suffix}": {{"run": 1}}}}'
            )
        inputs.channels[suffix] = Path(files[0])
    return inputs


def _in_datatype_folder(path: Path, subject: str, datatype: str) -> bool:
    """Whether ``path`` is ``[...]/sub-<label>/[ses-<label>/]<datatype>/file``, not sourcedata."""
    parts = path.parts
    top = f"sub-{subject}"
    if top not in parts[:-1] or parts[-2] != datatype:
        return False
    index = len(parts) - 1 - parts[::-1].index(top)
    return index == 0 or parts[index - 1] != "sourcedata"


def check_image(path: Path) -> dict[str, Any]:
    """Read an image fully and check it is a usable 3D volume.

    Returns
    -------
    dict
        ``shape``, ``zooms`` (mm), ``obliquity`` (degrees), ``nonfinite`` (count of NaN/Inf).

    Raises
    ------
    InputDataError
        The file is empty, truncated, not NIfTI, not 3D, or has no finite voxel.
    """
    if path.stat().st_size == 0:
        raise InputDataError(f"{path} is an empty (0-byte) file: re-export it or exclude it")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(
            f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc}); re-export it"
        ) from exc
    shape = data.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputDataError(
            f"{path} is {len(data.shape)}D with shape {data.shape}; a 3D map is expected "
            "(for multi-echo data pass the computed map, not the echoes)"
        )
    finite = np.isfinite(data)
    if not finite.any():
        raise InputDataError(f"{path} has no finite voxel (all NaN/Inf)")
    linear = image.affine[:3, :3]
    if not np.isfinite(image.affine).all() or abs(np.linalg.det(linear)) < 1e-6:
        raise InputDataError(
            f"{path} has a singular or non-finite affine (voxel to scanner coordinates); "
            "fix its header (sform/qform) or re-export it"
        )
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return {
        "shape": list(shape),
        "zooms": [round(z, 4) for z in zooms],
        "obliquity": round(float(np.degrees(np.max(nib.affines.obliquity(image.affine)))), 2),
        "nonfinite": int(finite.size - finite.sum()),
    }


def check_channels(channels: dict[str, Path], reference: str) -> dict[str, dict[str, Any]]:
    """Check every channel image (:func:`check_image`) and that their fields of view overlap.

    Channels on different grids are co-registered later; what cannot be repaired is a header
    that puts a channel elsewhere in scanner space than the reference channel of the same
    session.

    Parameters
    ----------
    channels : dict of str to Path
        Suffix to image path.
    reference : str
        The reference channel's suffix.

    Returns
    -------
    dict of str to dict
        Suffix to ``{"file": name, **check_image(path)}``.

    Raises
    ------
    InputDataError
        A channel is unusable, or shares less than :data:`MIN_FOV_OVERLAP` of the smaller field
        of view with the reference channel.
    """
    info = {s: {"file": p.name, **check_image(p)} for s, p in channels.items()}
    if reference not in channels:
        return info
    boxes = {s: field_of_view(nib.load(str(p))) for s, p in channels.items()}
    for suffix, box in boxes.items():
        share = fov_overlap(box, boxes[reference])
        if share < MIN_FOV_OVERLAP:
            raise InputDataError(
                f"the fields of view of {channels[suffix].name} and {channels[reference].name} "
                f"share {share:.0%} of the smaller one in scanner coordinates (at least "
                f"{MIN_FOV_OVERLAP:.0%} expected): one header (affine) is wrong; fix it or "
                f"drop {suffix} from --channels"
            )
    return info


def field_of_view(image) -> np.ndarray:
    """Return the scanner-space bounding box ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` (mm)."""
    shape = np.array(image.shape[:3], dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    voxels = corners * shape - 0.5  # outer edges of the corner voxels
    world = nib.affines.apply_affine(image.affine, voxels)
    return np.stack([world.min(axis=0), world.max(axis=0)])


def fov_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Return the volume shared by two boxes as a share of the smaller box's volume."""
    sides = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None)
    smaller = min(float(np.prod(a[1] - a[0])), float(np.prod(b[1] - b[0])))
    return float(np.prod(sides)) / smaller if smaller > 0 else 0.0
