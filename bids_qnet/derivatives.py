"""The derivative dataset: names from BIDS entities, dataset_description, sidecars, atomic writes.

A derivative file counts as complete only when its JSON sidecar exists and says
``"Complete": true``; the sidecar is always written last, and every file is written to a
temporary name in the same folder and renamed into place, so an interrupted run never leaves a
file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bids_qnet import CODE_URL, __version__
from bids_qnet.data import load_json
from bids_qnet.errors import OutputError, QNetError, WriteError

PIPELINE_NAME = "bids_qnet"
TMP_PREFIX = ".tmp-"
# errno values that mean "not allowed to write here" (exit 73); any other write error is 74.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

# gzip level of the NIfTI derivatives: nibabel's default; float maps barely compress further
# (level 6: 1 % smaller, 25 % slower).
GZIP_LEVEL = 1

# ``desc-`` of the cropped outputs for each ``--crop`` choice.
CROP_DESC = {"bg": "bgcrop", "full": "brain"}

# BIDS entity order (derivatives spec), then the suffix.
ENTITY_ORDER = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "run",
    "echo",
    "part",
    "from",
    "to",
    "mode",
    "space",
    "atlas",
    "seg",
    "res",
    "label",
    "desc",
)

# Files without a BIDS standard yet (transforms, slice stacks, embeddings, reports). No trailing
# slashes: the BIDS validator's .bidsignore matching does not match folders written that way.
BIDSIGNORE = (
    "*_xfm.h5",
    "*_xfm.mat",
    "*_xfm.json",
    "*_slices.npy",
    "*_slices.json",
    "*_embeddings.npy",
    "*_embeddings.json",
    "*_predictions.tsv",
    "*_predictions.json",
    "desc-*",
    "attribution",
    "models",
    "figures",
    "group.html",
    "sub-*.html",
    "sub-*/figures",
    "sub-*/log",
    "sourcedata",
    "logs",
    "CITATION.md",
)

README_TEXT = f"""# bids_qnet derivatives

Written by bids_qnet {__version__} ({CODE_URL}). Per participant: channels registered to the
template (`space-`), the basal-ganglia crop (`desc-bgcrop`) or brain (`desc-brain`), transforms
(`_xfm`), the axial slice stack (`_slices.npy`, shape S x C x H x W, inferior to superior) and
ResNet18 embeddings (`_embeddings.npy`, S x 512), each with a JSON sidecar; `sub-<label>.html` is
the participant's report. Files without a BIDS standard yet are listed in `.bidsignore`. A file
is complete only when its sidecar says `"Complete": true`. Methods and licences: `CITATION.md`.
"""


def build_path(entities: dict[str, Any], suffix: str, extension: str) -> Path:
    """Return a BIDS-style relative path from entities, a suffix and an extension.

    Parameters
    ----------
    entities : dict
        Entity name (``sub``, ``ses``, ``space``, ...) to value; ``None`` values are skipped.
        ``sub`` is required; ``datatype`` (default ``anat``) selects the folder.
    suffix : str
        The BIDS suffix, e.g. ``Chimap``.
    extension : str
        With the leading dot, e.g. ``.nii.gz``.

    Returns
    -------
    Path
        ``sub-<label>[/ses-<label>]/<datatype>/<name>``.
    """
    unknown = set(entities) - set(ENTITY_ORDER) - {"datatype"}
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    name = "_".join([*parts, suffix]) + extension
    folder = Path(f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder /= f"ses-{entities['ses']}"
    return folder / entities.get("datatype", "anat") / name


def subject_dir(output_dir: Path, subject: str, session: str | None = None) -> Path:
    """Return the participant's (and session's) folder in the derivative dataset."""
    folder = output_dir / f"sub-{subject}"
    return folder / f"ses-{session}" if session else folder


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; flush it to disk and rename it onto ``path``.

    The data reach the disk (``fsync``) before the rename, so a crash or a full disk never leaves
    ``path`` holding part of the new content; on any error the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (ignored by BIDS tools) and ending in the real extension (so writers pick the format).
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        if tmp.is_file():
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically.

    Raises
    ------
    OutputError
        The folder is not writable (exit 73).
    WriteError
        Writing failed midway: disk full, file size limit, quota, I/O error (exit 74). Nothing
        is left at ``path`` that was not there before.
    """
    try:
        with atomic_path(path) as tmp:
            writer(tmp)
    except QNetError:
        raise
    except OSError as exc:
        raise output_error(exc, path) from exc
    return path


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, (de)compressing when only one of them ends in ``.gz``.

    The gzip header carries no name and no time, so the same content gives the same bytes.
    """
    source, target = Path(source), Path(target)
    packed, wanted = source.name.endswith(".gz"), target.name.endswith(".gz")
    if packed == wanted:
        shutil.copyfile(source, target)
        return
    opener = gzip.open if packed else open
    with opener(source, "rb") as src, target.open("wb") as raw:
        if packed:
            shutil.copyfileobj(src, raw, 1 << 22)
            return
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0
        ) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)


def output_error(exc: OSError, path: Path) -> QNetError:
    """Turn an ``OSError`` raised while writing ``path`` into the error the user sees."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in NOT_WRITABLE:
        return OutputError(
            f"cannot write {path}: {reason}; make the folder writable or choose another "
            "output_dir / --work-dir"
        )
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    return WriteError(
        f"writing {path} failed: {reason}{f' ({code})' if code else ''}; no partial file was "
        "kept: free disk space (or raise the quota/file-size limit) and run the same command again"
    )


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left under ``folder`` by a killed run; return what was removed.

    Removes ``.tmp-*`` (:func:`atomic_path`) and ``.*.tmp`` (the figure and report writers).
    Call it only on folders that no other running job writes to (one participant's folder).
    """
    removed = []
    if Path(folder).is_dir():
        for tmp in Path(folder).rglob(".*"):
            stale = tmp.name.startswith(TMP_PREFIX) or tmp.name.endswith(".tmp")
            if stale and tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def _finite(value: Any) -> Any:
    """Replace NaN/Inf (invalid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_sidecar(data_path: Path, metadata: dict[str, Any]) -> Path:
    """Write the JSON sidecar of ``data_path`` last, marking the pair complete."""
    if not data_path.is_file():
        raise OutputError(f"cannot write a sidecar for missing file {data_path}")
    sidecar = sidecar_path(data_path)
    return write_json(sidecar, {**metadata, "Complete": True})


def sidecar_path(data_path: Path) -> Path:
    """Return the ``.json`` sidecar path of a derivative file."""
    name = data_path.name
    for ext in (".nii.gz", ".nii", ".npy", ".h5", ".mat", ".tsv"):
        if name.endswith(ext):
            return data_path.with_name(name[: -len(ext)] + ".json")
    return data_path.with_suffix(".json")


def is_complete(data_path: Path) -> bool:
    """Return True when ``data_path`` exists and its sidecar says it is complete."""
    sidecar = sidecar_path(data_path)
    if not (data_path.is_file() and sidecar.is_file()):
        return False
    try:
        return bool(json.loads(sidecar.read_text()).get("Complete"))
    except (OSError, json.JSONDecodeError):
        return False


def raw_source(bids_dir: Path, path: Path, dataset_key: str = "raw") -> str:
    """Return a BIDS URI (``bids:raw:sub-01/anat/...``) for an input file."""
    try:
        relative = Path(path).resolve().relative_to(Path(bids_dir).resolve())
    except ValueError:
        return Path(path).resolve().as_uri()
    return f"bids:{dataset_key}:{relative.as_posix()}"


def dataset_description(source_datasets: list[dict[str, str]]) -> dict[str, Any]:
    """Return the derivative dataset's ``dataset_description.json`` content."""
    return {
        "Name": "bids_qnet derivatives: registered QSM/R2*/T1w, basal-ganglia crops, embeddings",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": PIPELINE_NAME,
                "Version": __version__,
                "CodeURL": CODE_URL,
                "Container": {"Type": "docker", "Tag": f"bidsqnet/bids_qnet:{__version__}"},
            }
        ],
        "SourceDatasets": source_datasets,
        "DatasetLinks": {"raw": source_datasets[0]["URL"]} if source_datasets else {},
    }


def init_derivatives(output_dir: Path, bids_dir: Path) -> None:
    """Create the derivative dataset root: description, ``.bidsignore`` and citation.

    Safe for several participant jobs started at once on the same folder: every file is written
    whole and renamed into place, and identical content makes the last writer harmless.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"output folder {output_dir} is not writable: choose another output_dir")
    source = [{"URL": Path(bids_dir).resolve().as_uri()}]
    write_json(output_dir / "dataset_description.json", dataset_description(source))
    write_bidsignore(output_dir)
    citation = load_json("resources.json")
    write_atomic(output_dir / "CITATION.md", lambda tmp: tmp.write_text(citation_text(citation)))
    write_atomic(output_dir / "README.md", lambda tmp: tmp.write_text(README_TEXT))


def write_bidsignore(output_dir: Path) -> Path:
    """Write the derivative dataset's ``.bidsignore`` (files no BIDS standard covers yet)."""
    ignore = "\n".join(BIDSIGNORE) + "\n"
    return write_atomic(Path(output_dir) / ".bidsignore", lambda tmp: tmp.write_text(ignore))


def citation_text(resources: dict[str, Any]) -> str:
    """Return the methods/citation text for the derivative dataset's ``CITATION.md``."""
    return (
        f"# Methods (generated by bids_qnet {__version__})\n\n"
        "Each participant's reference image (T1w by default) was registered to the "
        f"{resources['template']['space']} template with ANTs (antspyx; Avants et al., 2008, "
        "Med Image Anal 12:26) using an affine followed by a symmetric normalisation (SyN) "
        "transform; channels acquired on another grid were first rigidly co-registered to the "
        "reference with a mutual-information metric, and each channel was resampled once with the "
        "composed transforms. A box around the atlas' basal-ganglia labels (plus a margin) was "
        "cropped in template space, its axial slices were intensity-stretched per channel and "
        "stacked channel-wise, and a ResNet18 (He et al., 2016, CVPR) without its classification "
        "layer embedded every slice as a 512-d vector, following Q-Net (Zabihi et al., "
        "hereditary haemochromatosis classification from QSM, R2* and T1w).\n\n"
        f"Template: {resources['template']['source']}. "
        f"Licence: {resources['template']['licence']}.\n\n"
        f"Atlas: {resources['atlas']['source']}. Licence: {resources['atlas']['licence']}.\n"
    )
