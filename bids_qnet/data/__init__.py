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
    """Return a registration profile by built-in name (``precise``, ``focused``...) or path.

    Parameters
    ----------
    name_or_path : str
        A built-in profile name or the path of a JSON file with the same keys.

    Returns
    -------
    dict
        The profile, with ``coregistration``, ``normalisation`` and ``quality`` sections and
        optionally ``focus`` (``{"margin_mm": MM}``: the SyN stage covers only the crop box grown
        by MM, see :func:`bids_qnet.preprocess.registration.normalise`).
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
        profile = json.loads(path.read_bytes())
    except ValueError as exc:  # not JSON, not UTF-8
        raise UsageError(f"registration profile {path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"registration profile {path} cannot be read: {exc.strerror}") from exc
    if not isinstance(profile, dict):
        raise UsageError(f"registration profile {path} is not a JSON object")
    missing = {"coregistration", "normalisation", "quality"} - set(profile)
    if missing:
        raise UsageError(f"registration profile {path} lacks section(s) {sorted(missing)}")
    odd = [
        k
        for k in ("coregistration", "normalisation", "quality")
        if not isinstance(profile[k], dict)
    ]
    if odd:
        raise UsageError(f"registration profile {path}: section(s) {odd} must be JSON objects")
    _check_focus(profile.get("focus"), path)
    profile.setdefault("name", path.stem)
    return profile


def _check_focus(focus: Any, path: Path) -> None:
    """Check a profile's optional ``focus`` section: ``{"margin_mm": <mm, at least 0>}``."""
    if focus is None:
        return
    margin = focus.get("margin_mm") if isinstance(focus, dict) else None
    if (
        not isinstance(focus, dict)
        or set(focus) != {"margin_mm"}
        or isinstance(margin, bool)
        or not isinstance(margin, int | float)
        or not margin >= 0
    ):
        raise UsageError(
            f"registration profile {path}: 'focus' must be {{\"margin_mm\": MM}} with MM >= 0 "
            f"(the margin around the crop box that the SyN stage covers), got {focus!r}"
        )


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
