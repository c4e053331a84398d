"""The derivative dataset: its description, ``.bidsignore``, README, citation and sidecars.

A derivative file counts as complete only when its JSON sidecar exists and says
``"Complete": true``; the sidecar is always written last (and every file atomically, through
:mod:`bids_qnet.outputs.atomic`), so an interrupted run never leaves a file that looks complete.
File names come from :mod:`bids_qnet.outputs.names`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from bids_qnet import CODE_URL, __version__
from bids_qnet.errors import OutputError, UsageError
from bids_qnet.outputs.atomic import TMP_PREFIX, write_json, write_text
from bids_qnet.outputs.names import BIDSIGNORE, DatasetFiles

PIPELINE_NAME = "bids_qnet"
#: Docker Hub repository of bids_qnet's image (its tag is the version).
IMAGE_REPOSITORY = "bidsqnet/bids_qnet"
README_TEXT = f"""# bids_qnet derivatives

Written by bids_qnet {__version__} ({CODE_URL}). Per participant: channels registered to the
template (`space-`), the basal-ganglia crop (`desc-bgcrop`) or brain (`desc-brain`), transforms
(`_xfm`), the axial slice stack (`_slices.npy`, shape S x C x H x W, inferior to superior) and
ResNet18 embeddings (`_embeddings.npy`, S x 512), each with a JSON sidecar; `sub-<label>.html` is
the participant's report. Files without a BIDS standard yet are listed in `.bidsignore`. A file
is complete only when its sidecar says `"Complete": true`. Methods and licences: `CITATION.md`.
"""


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
        return json.loads(sidecar.read_bytes()).get("Complete") is True
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return False


def raw_source(bids_dir: Path, path: Path, dataset_key: str = "raw") -> str:
    """Return a BIDS URI (``bids:raw:sub-01/anat/...``) for an input file."""
    return source_uri(path, {dataset_key: Path(bids_dir)})


def source_uri(path: Path, datasets: dict[str, Path]) -> str:
    """Return the BIDS URI of an input file in one of the source datasets.

    Parameters
    ----------
    path : Path
        An input file.
    datasets : dict of str to Path
        Source dataset name (``raw``, or a ``-d`` name) -> its root; the first that holds
        ``path`` names it.

    Returns
    -------
    str
        ``bids:<name>:<relative path>``; a ``file://`` URI only for a file outside them all.
    """
    resolved = Path(path).resolve()
    for name, root in datasets.items():
        try:
            relative = resolved.relative_to(Path(root).resolve())
        except ValueError:
            continue
        return f"bids:{name}:{relative.as_posix()}"
    return resolved.as_uri()


def container_info(root: Path = Path("/"), environ: dict | None = None) -> dict[str, str] | None:
    """Return the container bids_qnet runs in (``Type``, ``Tag``), or None outside one.

    Apptainer/Singularity set ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER`` (the image
    file); Docker creates ``/.dockerenv``; Podman and Buildah ``/run/.containerenv`` (with the
    image's name). bids_qnet's own image has its version in ``/version``.

    Parameters
    ----------
    root : Path
        The file system root to look in (tests).
    environ : dict, optional
        The environment (default: ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    own_image = (root / "version").is_file()
    tag = f"{IMAGE_REPOSITORY}:{__version__}" if own_image else None
    for variable, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        if environ.get(variable):
            return {"Type": kind, "Tag": tag or Path(environ[variable]).name}
    if (root / ".dockerenv").exists():
        return {"Type": "docker", **({"Tag": tag} if tag else {})}
    containerenv = root / "run" / ".containerenv"
    if containerenv.exists():
        fields = dict(re.findall(r'^(\w+)="(.*)"$', _read(containerenv), flags=re.MULTILINE))
        engine = fields.get("engine", "podman").split("-")[0] or "podman"
        image = tag or fields.get("image")
        return {"Type": engine, **({"Tag": image} if image else {})}
    return None


def source_datasets(datasets: dict[str, Path], output_dir: Path) -> tuple[list[dict], dict]:
    """Return ``SourceDatasets`` and ``DatasetLinks`` for the input datasets.

    A dataset with a ``DatasetDOI`` in its ``dataset_description.json`` is cited by its DOI;
    every one is linked by name (``bids:<name>:``, the prefix of the sidecars' ``Sources``) to
    its DOI, or else to its path relative to the output folder (no machine-specific
    ``file://`` path).
    """
    sources, links = [], {}
    for name, root in datasets.items():
        description = _description(Path(root))
        doi = str(description.get("DatasetDOI") or "").strip()
        if doi and not doi.startswith("doi:"):
            doi = "doi:" + doi.removeprefix("https://doi.org/")
        entry = {"URL": f"bids:{name}:"}
        if doi:
            entry["DOI"] = doi
        if description.get("Name"):
            entry["Name"] = str(description["Name"])
        sources.append(entry)
        relative = os.path.relpath(Path(root).resolve(), Path(output_dir).resolve())
        links[name] = doi or Path(relative).as_posix()
    return sources, links


def dataset_description(
    source_datasets: list[dict[str, str]], links: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return the derivative dataset's ``dataset_description.json`` content."""
    generated = {"Name": PIPELINE_NAME, "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        generated["Container"] = container
    return {
        "Name": "bids_qnet derivatives: registered QSM/R2*/T1w, basal-ganglia crops, embeddings",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": source_datasets,
        "DatasetLinks": links if links is not None else {},
    }


def generated_by(root: Path) -> str | None:
    """Return ``GeneratedBy[0].Name`` of the dataset at ``root`` (None if it has none).

    Anything unreadable (no description, not UTF-8, not a JSON object, no ``GeneratedBy``)
    gives None.
    """
    try:
        description = json.loads(DatasetFiles(Path(root)).description.read_bytes())
        name = description["GeneratedBy"][0]["Name"]
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return name if isinstance(name, str) else None


def check_output_folder(output_dir: Path) -> None:
    """Refuse an output folder that holds files bids_qnet did not write.

    Accepted: a folder that does not exist yet, an empty one, a bids_qnet derivative dataset
    (its ``dataset_description.json`` names bids_qnet in ``GeneratedBy``: a rerun, a resumed
    run, the group level, parallel participant jobs), and a folder that holds only the
    temporary files of a job creating it right now (parallel jobs start together: the first
    one writes the description before anything else, under a temporary name).

    Raises
    ------
    UsageError
        The folder holds anything else: bids_qnet would overwrite ``dataset_description.json``,
        ``README.md`` and ``CITATION.md`` there. Nothing has been written.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return  # created later (or refused there when it cannot be)
    try:
        names = [entry.name for entry in os.scandir(output_dir)]
    except OSError:
        return  # unreadable: refused when it is written to
    if not names or all(name.startswith(TMP_PREFIX) for name in names):
        return
    if generated_by(output_dir) == PIPELINE_NAME:
        return
    other = generated_by(output_dir)
    what = f"a dataset generated by {other}" if other else "not a bids_qnet derivative dataset"
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise UsageError(
        f"output_dir {output_dir} is not empty ({shown}) and is {what}: bids_qnet would "
        "overwrite files there; choose a new or empty folder, e.g. "
        f"{output_dir / 'derivatives' / PIPELINE_NAME}"
    )


def init_derivatives(
    output_dir: Path,
    bids_dir: Path,
    citation: str | None = None,
    derivatives: dict[str, Path] | None = None,
) -> None:
    """Create the derivative dataset root: description, ``.bidsignore``, README and citation.

    Safe for several participant jobs started at once on the same folder: every file is written
    whole and renamed into place, and identical content makes the last writer harmless.

    Parameters
    ----------
    output_dir, bids_dir : Path
        The derivative dataset and the input BIDS dataset.
    citation : str, optional
        ``CITATION.md`` (the methods text of the run's settings); left as it is when None.
    derivatives : dict, optional
        The ``-d`` derivative datasets inputs may come from (name -> root).
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"output folder {output_dir} is not writable: choose another output_dir")
    files = DatasetFiles(output_dir)
    sources, links = source_datasets({"raw": Path(bids_dir), **(derivatives or {})}, output_dir)
    write_json(files.description, dataset_description(sources, links))
    write_bidsignore(output_dir)
    if citation is not None:
        write_text(files.citation, citation)
    write_text(files.readme, README_TEXT)


def write_bidsignore(output_dir: Path) -> Path:
    """Write the derivative dataset's ``.bidsignore`` (files no BIDS standard covers yet)."""
    return write_text(DatasetFiles(Path(output_dir)).bidsignore, "\n".join(BIDSIGNORE) + "\n")


def _description(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return {}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
