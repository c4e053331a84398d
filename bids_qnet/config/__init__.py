"""The one settings object: every option declared once, filled once, saved with the outputs.

Each option is a field of one section (:class:`InputSettings`, :class:`PreprocessingSettings`,
:class:`EmbeddingSettings`, :class:`TrainingSettings`, :class:`StatisticsSettings`,
:class:`AttributionSettings`, :class:`ExecutionSettings`), declared with :func:`option`: its
default, help text, command-line flags, type, choices and lower bound, and whether it defines
the participant-level outputs or the group-level training. From these declarations come the
argument parser (:func:`bids_qnet.cli.parser.build_parser`, and from it the Boutiques
descriptor), the settings of a run (:meth:`Settings.from_arguments`), their checks
(:func:`check_settings`), the participant-level fingerprint (:meth:`Settings.output_fingerprint`)
and the record a fold and the model card keep (:meth:`Settings.training_record`).

Code reads a section (``settings.training.epochs``); the saved JSON
(:meth:`Settings.to_dict`) is flat, one key per field, as it always was.
"""

from bids_qnet.config.options import Option, option
from bids_qnet.config.sections import (
    DEFAULT_CHANNELS,
    DEFAULT_CROP_REGIONS,
    SECTIONS,
    AttributionSettings,
    EmbeddingSettings,
    ExecutionSettings,
    InputSettings,
    PreprocessingSettings,
    StatisticsSettings,
    TrainingSettings,
)
from bids_qnet.config.settings import (
    ANALYSIS_LEVELS,
    Settings,
    check_settings,
    declarations,
    default_of,
    positionals,
)

__all__ = [
    "ANALYSIS_LEVELS",
    "DEFAULT_CHANNELS",
    "DEFAULT_CROP_REGIONS",
    "SECTIONS",
    "AttributionSettings",
    "EmbeddingSettings",
    "ExecutionSettings",
    "InputSettings",
    "Option",
    "PreprocessingSettings",
    "Settings",
    "StatisticsSettings",
    "TrainingSettings",
    "check_settings",
    "declarations",
    "default_of",
    "option",
    "positionals",
]
