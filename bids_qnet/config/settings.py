"""The settings of a run: its sections, filled once from the command line, checked, saved."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bids_qnet import __version__
from bids_qnet.config.options import Option, option
from bids_qnet.config.sections import (
    SECTIONS,
    AttributionSettings,
    EmbeddingSettings,
    ExecutionSettings,
    InputSettings,
    PreprocessingSettings,
    StatisticsSettings,
    TrainingSettings,
)
from bids_qnet.errors import UsageError
from bids_qnet.models.presets import PRESETS
from bids_qnet.outputs.atomic import write_json
from bids_qnet.outputs.derivatives import check_output_folder
from bids_qnet.outputs.names import WORK_DIR
from bids_qnet.outputs.provenance import software_versions

ANALYSIS_LEVELS = ("participant", "group")


@dataclass
class Settings:
    """Everything a bids_qnet run needs to know, in one place, by section.

    The positional arguments, one attribute per section of :data:`SECTIONS` (their fields
    mirror the command-line options, see ``bids_qnet --help``), and what the run records:
    ``run_id``, ``version`` and ``software`` (Python and library versions).
    """

    bids_dir: Path = option(None, help="root of the BIDS dataset", type=Path)
    output_dir: Path = option(None, help="root of the derivative dataset to write", type=Path)
    analysis_level: str = option(None, help="processing stage", choices=ANALYSIS_LEVELS)
    inputs: InputSettings = field(default_factory=InputSettings)
    preprocessing: PreprocessingSettings = field(default_factory=PreprocessingSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    run_id: str = field(default_factory=lambda: _new_run_id())
    version: str = __version__
    software: dict[str, str] = field(default_factory=lambda: dict(software_versions()))

    def __post_init__(self) -> None:
        inputs = self.inputs
        if inputs.reference_channel is None:
            inputs.reference_channel = "T1w" if "T1w" in inputs.channels else inputs.channels[0]
        if self.execution.work_dir is None:
            self.execution.work_dir = Path(self.output_dir) / WORK_DIR
        if self.execution.nprocs is None:
            self.execution.nprocs = available_cpus()
        training = self.training
        if training.preset in PRESETS:  # an unknown name is refused by check_settings
            preset = PRESETS[training.preset]
            training.epochs = preset.epochs if training.epochs is None else training.epochs
            if training.qnet_epochs is None:
                training.qnet_epochs = preset.qnet_epochs

    @classmethod
    def create(cls, bids_dir: Path, output_dir: Path, analysis_level: str, **values: Any):
        """Build settings from flat field values (``image_size=32``), each put in its section."""
        where = {name: section for section, _, name, _ in declarations()}
        unknown = sorted(set(values) - set(where))
        if unknown:
            raise TypeError(f"unknown settings {unknown}")
        sections = {key: kind() for key, kind in SECTIONS.items()}
        for name, value in values.items():
            setattr(sections[where[name]], name, value)
        return cls(Path(bids_dir), Path(output_dir), analysis_level, **sections)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Settings:
        """Build the settings from parsed arguments (paths made absolute, labels cleaned)."""
        top = {name: _converted(spec, getattr(args, name)) for name, spec in positionals()}
        values = {
            name: _converted(spec, getattr(args, spec.dest)) for _, _, name, spec in declarations()
        }
        return cls.create(**top, **values)

    def sections(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(name, section)`` in :data:`SECTIONS` order."""
        for name in SECTIONS:
            yield name, getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as flat JSON-serialisable values, one key per field."""
        values: dict[str, Any] = {name: getattr(self, name) for name, _ in positionals()}
        for _, section in self.sections():
            values.update(dataclasses.asdict(section))
        values.update(run_id=self.run_id, version=self.version, software=self.software)
        return {k: _jsonable(v) for k, v in values.items()}

    def output_fingerprint(self) -> str:
        """Return a short hash of the settings that define participant-level outputs."""
        payload = {name: _jsonable(value) for name, value in self._marked("defines_outputs")}
        payload["version"] = self.version
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def training_record(self) -> dict[str, Any]:
        """Return the settings that define the group-level training (compared on resume)."""
        record = {name: _jsonable(value) for name, value in self._marked("defines_training")}
        return record | {"version": __version__}

    def _marked(self, flag: str) -> Iterator[tuple[str, Any]]:
        for section, _, name, spec in declarations():
            if getattr(spec, flag):
                yield name, getattr(getattr(self, section), name)

    def save(self, path: Path) -> Path:
        """Write the settings (with the software versions) as JSON to ``path``, atomically."""
        return write_json(path, self.to_dict())


def available_cpus() -> int:
    """Return the cores this process may use: its CPU affinity, within a cgroup CPU quota.

    ``os.sched_getaffinity`` sees ``taskset``, SLURM's and Docker's ``--cpuset-cpus``; a
    cgroup v2 quota (``docker run --cpus 2``, Kubernetes limits) lowers it further.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def declarations() -> Iterator[tuple[str, str, str, Option]]:
    """Yield ``(section, title, field, option)`` for every option, in parser order."""
    for section, kind in SECTIONS.items():
        for item in dataclasses.fields(kind):
            yield section, kind.TITLE, item.name, item.metadata["option"]


def positionals() -> Iterator[tuple[str, Option]]:
    """Yield ``(field, option)`` for the positional arguments, in order."""
    for item in dataclasses.fields(Settings):
        if "option" in item.metadata:
            yield item.name, item.metadata["option"]


def default_of(section: str, name: str) -> Any:
    """Return a field's default value (a fresh copy)."""
    return getattr(SECTIONS[section](), name)


def check_settings(settings: Settings) -> None:
    """Refuse inconsistent settings and outputs that would overwrite anyone's files.

    Raises
    ------
    UsageError
        An output or work folder inside ``bids_dir`` or a ``-d`` derivative dataset, an
        ``output_dir`` holding files bids_qnet did not write, a channel listed twice, a
        reference channel that is not a channel, a value below its declared bound or a number
        that is not finite, ``--ig-max-steps`` below ``--ig-steps``.
    """
    protected = [("bids_dir", settings.bids_dir)] + [
        (f"-d {name}", path) for name, path in settings.inputs.derivatives.items()
    ]
    folders = (("output_dir", settings.output_dir), ("--work-dir", settings.execution.work_dir))
    for label, path in folders:
        resolved = path.resolve()
        for source, root in protected:
            root = root.resolve()
            if resolved == root or resolved.is_relative_to(root):
                raise UsageError(
                    f"{label} {path} is inside {source} {root}: bids_qnet never writes "
                    "into an input dataset; choose a folder outside it "
                    "(e.g. <bids_dir>/../derivatives)"
                )
    check_output_folder(settings.output_dir)
    if settings.training.preset not in PRESETS:
        raise UsageError(
            f"--preset {settings.training.preset}: unknown; choose one of {', '.join(PRESETS)}"
        )
    channels = settings.inputs.channels
    if len(set(channels)) != len(channels):
        raise UsageError(f"--channels lists a suffix twice: {channels}")
    if settings.inputs.reference_channel not in channels:
        raise UsageError(
            f"--reference-channel {settings.inputs.reference_channel} is not among --channels "
            f"{channels}"
        )
    for section, _, name, spec in declarations():
        _check_bound(spec, getattr(getattr(settings, section), name))
    attribution = settings.attribution
    if attribution.ig_max_steps is not None and attribution.ig_max_steps < attribution.ig_steps:
        raise UsageError(
            f"--ig-max-steps {attribution.ig_max_steps} is below --ig-steps "
            f"{attribution.ig_steps}: give at least as many (equal: no second pass)"
        )


def _check_bound(spec: Option, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{spec.flag} must be a finite number, not {value}")
    if spec.minimum is None or value is None:
        return
    if spec.exclusive_minimum and not value > spec.minimum:
        bound = "positive" if spec.minimum == 0 else f"above {spec.minimum:g}"
        raise UsageError(f"{spec.flag} must be {bound}")
    if value < spec.minimum:
        bound = "not be negative" if spec.minimum == 0 else f"be at least {spec.minimum:g}"
        raise UsageError(f"{spec.flag} must {bound}")


def _converted(spec: Option, value: Any) -> Any:
    if spec.convert is not None:
        return spec.convert(value)
    if spec.type is Path and value is not None:
        return Path(value).absolute()
    return value


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
