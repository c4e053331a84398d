"""The one settings object, built from the command line, passed down and saved with the outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bids_qnet import __version__
from bids_qnet.provenance import software_versions

DEFAULT_CHANNELS = ("Chimap", "R2starmap", "T1w")
DEFAULT_CROP_REGIONS = (
    "Left_Caudate",
    "Right_Caudate",
    "Left_Putamen",
    "Right_Putamen",
    "Left_Pallidum",
    "Right_Pallidum",
)

# Settings whose change alters participant-level derivatives; the group level compares them.
OUTPUT_DEFINING_FIELDS = (
    "channels",
    "reference_channel",
    "crop",
    "crop_regions",
    "crop_margin_mm",
    "registration_profile",
    "template",
    "atlas",
    "template_resolution",
    "embedding_weights",
    "image_size",
)


@dataclass
class Settings:
    """Everything a bids_qnet run needs to know, in one place.

    Attributes mirror the command-line options (see ``bids_qnet --help``), plus ``run_id``,
    ``version`` and ``software`` (Python and library versions, recorded with the outputs).
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    derivatives: dict[str, Path] = field(default_factory=dict)
    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    random_seed: int = 42
    skip_bids_validation: bool = False
    channels: list[str] = field(default_factory=lambda: list(DEFAULT_CHANNELS))
    reference_channel: str | None = None
    crop: str = "bg"
    crop_regions: list[str] = field(default_factory=lambda: list(DEFAULT_CROP_REGIONS))
    crop_margin_mm: float = 6.0
    registration_profile: str = "precise"
    template: Path | None = None
    atlas: Path | None = None
    template_resolution: float = 1.0
    embedding_weights: str = "imagenet"
    embedding_batch_size: int = 64
    image_size: int = 224
    label_column: str = "group"
    classes: list[str] | None = None
    positive_class: str | None = None
    bins: int | None = None
    folds: int = 10
    cv_repeats: int = 1
    fold: int | None = None
    stage1: str = "train"
    epochs: int = 100
    qnet_epochs: int = 50
    bootstrap_replicates: int = 2000
    attribution: str = "ig"
    attribution_target: str = "true"
    ig_steps: int = 50
    ig_baseline: str = "zero"
    model: Path | None = None
    overwrite: bool = False
    verbose: int = 0
    run_id: str = field(default_factory=lambda: _new_run_id())
    version: str = __version__
    software: dict[str, str] = field(default_factory=lambda: dict(software_versions()))

    def __post_init__(self) -> None:
        if self.reference_channel is None:
            self.reference_channel = "T1w" if "T1w" in self.channels else self.channels[0]
        if self.work_dir is None:
            self.work_dir = self.output_dir / "sourcedata" / "bids_qnet_work"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-serialisable values."""
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}

    def output_fingerprint(self) -> str:
        """Return a short hash of the settings that define participant-level outputs."""
        payload = {k: _jsonable(getattr(self, k)) for k in OUTPUT_DEFINING_FIELDS}
        payload["version"] = self.version
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        """Write the settings (with the software versions) as JSON to ``path``, atomically."""
        from bids_qnet.derivatives import write_json

        return write_json(path, self.to_dict())


def _new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{uuid.uuid4().hex[:8]}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
