"""Find participants, sessions and channel images in a BIDS dataset (through pybids)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
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
    describe,
    one_line,
)

LOGGER = logging.getLogger(__name__)
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
# Channels whose fields of view share less than this part of the smaller one (in scanner
# coordinates) cannot come from one session: one of the headers is wrong.
MIN_FOV_OVERLAP = 0.1
#: Voxel data read at most for one input map, checked against the header before reading: a
#: 0.5 mm whole-head map in float64 is about 1.3 GiB; a header claiming more is wrong.
MAX_IMAGE_BYTES = 2 << 30
#: Largest cosine between two voxel axes of an input image (0.06 degrees off perpendicular).
MAX_SHEAR = 1e-3
#: Bytes read at a time when a file is hashed and its voxel data counted.
CHUNK = 1 << 20


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
        return f"{who}: {one_line(self.error)}"


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
    read_description(description)


def read_description(path: Path) -> dict[str, Any]:
    """Read a ``dataset_description.json``: UTF-8 text holding a JSON object.

    Raises
    ------
    InputDataError
        The file cannot be read, is not UTF-8, not valid JSON or not a JSON object.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputDataError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputDataError(
            f"{path} is not UTF-8 text (byte {exc.start}); BIDS requires UTF-8: save it as UTF-8"
        ) from exc
    try:
        description = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(description, dict):
        raise InputDataError(
            f"{path} holds a JSON {type(description).__name__}, not an object "
            '{"Name": ..., "BIDSVersion": ...}'
        )
    return description


def load_layout(bids_dir: Path, derivatives: dict[str, Path] | None = None):
    """Index the dataset (and derivative datasets holding QSM/R2* maps) with pybids, read-only.

    Raises
    ------
    InputDataError
        A derivative dataset without a readable ``dataset_description.json``, or a dataset that
        pybids cannot index (the message quotes pybids).
    """
    from bids import BIDSLayout

    try:
        layout = BIDSLayout(str(bids_dir), validate=False)
    except Exception as exc:  # pybids raises many types for odd datasets
        raise InputDataError(f"pybids cannot index {bids_dir} ({describe(exc)})") from exc
    for name, path in (derivatives or {}).items():
        description = Path(path) / "dataset_description.json"
        if not description.is_file():
            raise InputDataError(
                f"derivative dataset {name}={path} has no dataset_description.json"
            )
        read_description(description)
        try:
            layout.add_derivatives(str(path), parent_database_path=None, validate=False)
        except Exception as exc:
            raise InputDataError(
                f"derivative dataset {name}={path} cannot be added ({describe(exc)}); each -d "
                "dataset needs its own GeneratedBy name in its dataset_description.json"
            ) from exc
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
        except Exception as exc:  # pybids: an entity it does not know, a value it cannot use
            raise UsageError(
                f"--bids-filter-file query for {suffix} is invalid: {one_line(exc)[:300]}"
            ) from exc
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
    """Check an image is a usable 3D volume: header first, then every voxel.

    The header's claim is checked before any voxel is read: the voxel data it describes must
    stay under :data:`MAX_IMAGE_BYTES` and the file must hold them all (a tiny file claiming a
    huge volume is refused, not read into memory).

    Returns
    -------
    dict
        ``shape``, ``zooms`` (mm, from the affine), ``obliquity`` (degrees), ``nonfinite``
        (count of NaN/Inf), ``sha256`` (of the file); ``header_zooms`` too when the header's
        voxel sizes (pixdim) disagree with its affine (the images ANTs reads are rebuilt from
        the affine).

    Raises
    ------
    MissingInputError
        The file is a broken symbolic link or has vanished.
    InputDataError
        The file is empty, truncated, not NIfTI, not a real-valued 3D map, claims more voxel
        data than it holds or than bids_qnet reads, or has no finite voxel.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise MissingInputError(
                f"{path} is a broken symbolic link (to {os.readlink(path)}); fix the link or, "
                "for a DataLad/git-annex dataset, fetch the file (datalad get)"
            )
        raise MissingInputError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise InputDataError(f"{path} is an empty (0-byte) file: re-export it or exclude it")
    try:
        image = nib.load(str(path))
        dtype = np.dtype(image.get_data_dtype())
        shape = tuple(int(n) for n in image.shape)
        offset = int(getattr(image.dataobj, "offset", 0))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(
            f"{path} cannot be read as NIfTI ({describe(exc)}); re-export it"
        ) from exc
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputDataError(
            f"{path} holds {image.header.get_value_label('datatype')} voxels; a real-valued "
            "scalar map is expected (not RGB or complex): export the map itself"
        )
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if expected > MAX_IMAGE_BYTES:
        raise InputDataError(
            f"{path}: its header claims a {' x '.join(map(str, shape))} {dtype.name} image "
            f"({expected / 2**30:.1f} GiB of voxel data), more than the "
            f"{MAX_IMAGE_BYTES / 2**30:.0f} GiB bids_qnet reads for one map; the header is "
            "wrong or this is not one 3D map"
        )
    sha256, payload = _hash_and_count(path, offset + expected)
    if payload < offset + expected:
        raise InputDataError(
            f"{path} is truncated: its header describes {expected} bytes of voxel data, the "
            f"file holds {max(payload - offset, 0)}; re-export it"
        )
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise InputDataError(
            f"{path} cannot be read as NIfTI ({describe(exc)}); re-export it"
        ) from exc
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
    zooms = nib.affines.voxel_sizes(image.affine)
    axes = linear / zooms
    if np.abs(axes.T @ axes - np.eye(3)).max() > MAX_SHEAR:
        raise InputDataError(
            f"{path} has a sheared affine (its voxel axes are not perpendicular); ITK, and so "
            "the registration, cannot represent it: resample the image onto a grid without "
            "shear, or fix its header"
        )
    info = {
        "shape": list(shape),
        "zooms": [round(float(z), 4) for z in zooms],
        "obliquity": round(float(np.degrees(np.max(nib.affines.obliquity(image.affine)))), 2),
        "nonfinite": int(finite.size - finite.sum()),
        "sha256": sha256,
    }
    pixdim = np.asarray(image.header.get_zooms()[:3], dtype=float)
    if not np.allclose(pixdim, zooms, rtol=1e-3, atol=1e-4):
        info["header_zooms"] = [float(z) if np.isfinite(z) else str(z) for z in pixdim]
        LOGGER.warning(
            "%s: the header's voxel sizes (pixdim %s) disagree with its affine (%s mm); the "
            "affine is used and the images passed to ANTs are rebuilt from it",
            path.name,
            info["header_zooms"],
            info["zooms"],
        )
    return info


def _hash_and_count(path: Path, needed: int) -> tuple[str, int]:
    """Return the file's SHA-256 and how many bytes it holds once decompressed.

    Counting stops at ``needed`` (never more is decompressed), so a small ``.nii.gz`` that
    claims a huge image costs nothing. Multi-member gzip files are followed member by member.
    """
    digest = hashlib.sha256()
    compressed = path.name.endswith(".gz")
    counted = 0
    inflater = zlib.decompressobj(wbits=47) if compressed else None
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if counted >= needed:
                continue
            if inflater is None:
                counted += len(chunk)
                continue
            try:
                counted, inflater = _inflate(inflater, chunk, counted, needed)
            except zlib.error:
                inflater = None  # corrupt stream: what was counted is what it holds
                needed = counted
    if inflater is not None and counted < needed:
        try:
            counted += len(inflater.flush())
        except zlib.error:
            pass
    return digest.hexdigest(), counted


def _inflate(inflater, data: bytes, counted: int, needed: int):
    """Decompress ``data`` in bounded pieces, counting bytes up to ``needed``."""
    while data and counted < needed:
        counted += len(inflater.decompress(data, CHUNK))
        data = inflater.unconsumed_tail
        if inflater.eof:  # next gzip member, if any
            data = inflater.unused_data
            inflater = zlib.decompressobj(wbits=47)
    return counted, inflater


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
