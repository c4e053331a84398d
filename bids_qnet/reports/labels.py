"""Words for the keys of sidecars and tables: what a reader sees instead of ``snake_case``.

:func:`label` turns a key into a heading (a known key gets its name and unit from
:data:`LABELS`, any other is split into words); :func:`records_table` turns records into the
columns and rows the report templates draw, numbers right-aligned and kept on one line.
"""

from __future__ import annotations

import re
from functools import cache
from numbers import Real
from typing import Any

#: Known keys (compared ignoring case, ``_`` and ``-``) and how a report names them.
LABELS = {
    "file": "File",
    "shape": "Matrix (voxels)",
    "zooms": "Voxel size (mm)",
    "voxelsize": "Voxel size (mm)",
    "obliquity": "Obliquity (degrees)",
    "oblique": "Oblique",
    "nonfinite": "Non-finite voxels",
    "channel": "Channel",
    "braincorrelation": "Correlation with the template",
    "absbraincorrelation": "Similarity to the template (|r|)",
    "maskoverlap": "Overlap with the template brain (Dice)",
    "coverage": "Brain inside the field of view",
    "foregroundthreshold": "Foreground threshold",
    "maskvoxels": "Template brain (voxels)",
    "weightssha256": "Weights checksum (SHA-256)",
    "prepare": "Reading and checking the inputs",
    "coregister": "Co-registration",
    "normalise": "Registration to the template",
    "resample": "Resampling",
    "crop": "Crop and slices",
    "embed": "Embedding",
    "runid": "Run",
    "settingspath": "Settings file",
    # group tables
    "region": "Region",
    "rank": "Rank",
    "volumemm3": "Volume (mm³)",
    "nvoxels": "Voxels",
    "participants": "Participants",
    "auc": "AUC",
    "cilow": "95% CI low",
    "cihigh": "95% CI high",
    "level": "Level",
    "model": "Model",
}


def _key(text: str) -> str:
    return re.sub(r"[\s_-]+", "", str(text)).lower()


def label(key: Any) -> str:
    """Return how a report names a key: its known label, else the key split into words.

    ``WeightsSHA256`` -> ``Weights checksum (SHA-256)``; ``mean_relevance`` -> ``Mean
    relevance``; ``BoxMillimetres`` -> ``Box millimetres``; text with spaces stays as is.
    """
    text = str(key)
    known = LABELS.get(_key(text))
    if known:
        return known
    if " " in text.strip():
        return text
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_+", " ", text).split()
    if not words:
        return text
    joined = " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)
    return joined[:1].upper() + joined[1:]


def records_table(records: list[dict], raw_columns: bool = False) -> dict[str, Any]:
    """Return records as a table for the templates: ``columns``, ``rows``, ``numeric``, ``nowrap``.

    Parameters
    ----------
    records : list of dict
        The rows; columns are the union of their keys, in first-seen order.
    raw_columns : bool
        Keep the keys as headings (they are words already) instead of :func:`label`.
    """
    keys = list(dict.fromkeys(k for record in records for k in record))
    names = {k: (str(k) if raw_columns else label(k)) for k in keys}
    rows = [{names[k]: record.get(k) for k in keys} for record in records]
    numeric = [
        names[k]
        for k in keys
        if any(_is_number(r.get(k)) for r in records)
        and all(_is_number(r.get(k)) or r.get(k) is None for r in records)
    ]
    nowrap = [names[k] for k in keys if all(_short(r.get(k)) for r in records)]
    return {"columns": list(names.values()), "rows": rows, "numeric": numeric, "nowrap": nowrap}


@cache
def _channel_units() -> dict[str, str]:
    from bids_qnet.data import load_json

    channels = load_json("resources.json").get("channels", {})
    return {k: v.get("units", "") for k, v in channels.items() if isinstance(v, dict)}


def units_of(channel: str) -> str:
    """Return a channel's units (``ppm``, ``1/s``), or ``arbitrary`` for weighted images."""
    return _channel_units().get(channel) or "arbitrary (weighted image)"


def _is_number(value: Any) -> bool:
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()
    return isinstance(value, Real) and not isinstance(value, bool)


def _short(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_is_number(v) for v in value) and len(value) <= 4
    return _is_number(value) or (isinstance(value, str) and len(value) <= 14)
