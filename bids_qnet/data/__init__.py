"""Parameters as data: registration profiles, channel defaults and reference resources."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

from bids_qnet.errors import MissingInputError, UsageError

DATA_DIR = Path(__file__).parent


@cache
def load_json(relative_path: str) -> dict[str, Any]:
    """Load a JSON file shipped in ``bids_qnet/data``.

    Parameters
    ----------
    relative_path : str
        Path relative to the data folder, e.g. ``"resources.json"``.

    Returns
    -------
    dict
        The parsed JSON document.
    """
    return json.loads((DATA_DIR / relative_path).read_text())


def registration_profile(name_or_path: str) -> dict[str, Any]:
    """Return a registration profile by built-in name (``precise``, ``fast``) or JSON path.

    Parameters
    ----------
    name_or_path : str
        A built-in profile name or the path of a JSON file with the same keys.

    Returns
    -------
    dict
        The profile, with ``coregistration``, ``normalisation`` and ``quality`` sections.
    """
    builtin = DATA_DIR / "registration" / f"{name_or_path}.json"
    path = builtin if builtin.is_file() else Path(name_or_path)
    if not path.is_file():
        names = sorted(p.stem for p in (DATA_DIR / "registration").glob("*.json"))
        raise UsageError(
            f"registration profile {name_or_path!r} is neither a built-in profile "
            f"({', '.join(names)}) nor an existing JSON file"
        )
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"registration profile {path} is not valid JSON: {exc}") from exc
    missing = {"coregistration", "normalisation", "quality"} - set(profile)
    if missing:
        raise UsageError(f"registration profile {path} lacks section(s) {sorted(missing)}")
    profile.setdefault("name", path.stem)
    return profile


def channel_defaults(suffix: str) -> dict[str, Any]:
    """Return intensity and co-registration defaults for a BIDS suffix."""
    channels = load_json("resources.json")["channels"]
    return channels.get(suffix, channels["default"])


def package_file(package: str, relative_path: str) -> Path:
    """Locate a data file inside an installed package without importing it.

    Parameters
    ----------
    package : str
        Top-level package name (its ``__init__`` is not executed).
    relative_path : str
        File path relative to the package folder.

    Returns
    -------
    Path
        The file's absolute path.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"package {package!r} that ships the built-in template/atlas is not installed; "
            f"reinstall bids_qnet or pass --template/--atlas"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise MissingInputError(f"built-in reference file {path} is missing; reinstall {package}")
    return path
