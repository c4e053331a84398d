"""The sections of the settings, every option declared once with :func:`option`.

Each section is a parser group (its ``TITLE``); the fields of all sections, in this order, are
the command-line options, the keys of the saved settings and the inputs of the descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_qnet.config.options import derivative_argument, json_object, mem_gb, option
from bids_qnet.inputs.selection import clean_labels, derivative_datasets, load_filters
from bids_qnet.models.presets import DEFAULT_PRESET, PRESETS
from bids_qnet.outputs.names import WORK_DIR

DEFAULT_CHANNELS = ("Chimap", "R2starmap", "T1w")
#: ``--ig-max-steps`` when it is not given: this many times ``--ig-steps``.
IG_MAX_STEPS_FACTOR = 16
DEFAULT_CROP_REGIONS = (
    "Left_Caudate",
    "Right_Caudate",
    "Left_Putamen",
    "Right_Putamen",
    "Left_Pallidum",
    "Right_Pallidum",
)


@dataclass
class InputSettings:
    """Which data: participants, sessions, channels (parser group "selecting data")."""

    TITLE = "selecting data"

    participant_label: list[str] | None = option(
        None,
        "--participant-label",
        "--participant_label",
        nargs="+",
        action="extend",
        metavar="LABEL",
        help="labels with or without 'sub-', or a file of labels given as @FILE or a path "
        "with a folder (./labels.txt); a bare word is always a label",
        default_text="all",
        convert=lambda labels: clean_labels(labels, "sub"),
    )
    session_label: list[str] | None = option(
        None,
        "--session-label",
        "--session_label",
        nargs="+",
        action="extend",
        metavar="LABEL",
        help="labels with or without 'ses-', or a file of labels given as @FILE or a path "
        "with a folder (./sessions.txt)",
        default_text="all",
        convert=lambda labels: clean_labels(labels, "ses"),
    )
    bids_filters: dict[str, dict[str, Any]] = option(
        {},
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON of per-channel pybids queries, e.g. {"Chimap": {"acq": "qsm"}}',
        cli_default=None,
        convert=load_filters,
    )
    derivatives: dict[str, Path] = option(
        {},
        "-d",
        "--derivatives",
        nargs="+",
        type=derivative_argument,
        metavar="NAME=PATH",
        help="derivative datasets that hold input maps (e.g. qsmxt=/data/derivatives/qsmxt)",
        cli_default=[],
        action="extend",
        convert=derivative_datasets,
    )
    skip_bids_validation: bool = option(
        False,
        "--skip-bids-validation",
        "--skip_bids_validation",
        "--skip_bids_validator",
        action="store_true",
        help="do not run the BIDS validator on the input dataset",
    )
    channels: list[str] = option(
        list(DEFAULT_CHANNELS),
        "--channels",
        nargs="+",
        metavar="SUFFIX",
        help="BIDS suffixes stacked as image channels, in order (1 to N)",
        convert=list,
        defines_outputs=True,
    )
    reference_channel: str | None = option(
        None,
        "--reference-channel",
        metavar="SUFFIX",
        help="channel registered to the template",
        default_text="T1w if used, else the first",
        defines_outputs=True,
    )


@dataclass
class PreprocessingSettings:
    """Registration and cropping (parser group "registration and cropping")."""

    TITLE = "registration and cropping"

    crop: str = option(
        "bg",
        "--crop",
        choices=("bg", "full"),
        help="bg: box around the atlas basal ganglia; full: the whole brain",
        defines_outputs=True,
    )
    crop_regions: list[str] = option(
        list(DEFAULT_CROP_REGIONS),
        "--crop-regions",
        nargs="+",
        metavar="NAME",
        help="atlas region names that define the crop box",
        convert=list,
        defines_outputs=True,
    )
    crop_margin_mm: float = option(
        6.0,
        "--crop-margin",
        type=float,
        metavar="MM",
        help="margin around the regions' box in mm",
        minimum=0,
        defines_outputs=True,
    )
    registration_profile: str = option(
        "focused",
        "--registration-profile",
        metavar="NAME|FILE",
        help="'focused' (default: SyN around the crop, affine elsewhere), 'precise' "
        "(whole-brain SyN), 'fast' (tests, quick looks) or a JSON profile",
        defines_outputs=True,
    )
    template: Path | None = option(
        None,
        "--template",
        type=Path,
        metavar="FILE",
        help="T1w brain template replacing MNI152NLin2009cAsym",
        defines_outputs=True,
    )
    atlas: Path | None = option(
        None,
        "--atlas",
        type=Path,
        metavar="FILE",
        help="label image in template space with a TSV (index, name) beside it",
        defines_outputs=True,
    )
    inverse_transforms: bool = option(
        True,
        "--no-inverse-transforms",
        action="store_false",
        help="do not write the template-to-participant transform (about 70 MB per participant "
        "at 1 mm; the participant-to-template transform is always written)",
    )
    template_resolution: float = option(
        1.0,
        "--template-resolution",
        type=float,
        metavar="MM",
        help="isotropic voxel size of the output grid",
        minimum=0,
        exclusive_minimum=True,
        defines_outputs=True,
    )


@dataclass
class EmbeddingSettings:
    """The ResNet18 input and a final model to apply (parser group "embedding and prediction")."""

    TITLE = "embedding and prediction"

    model: Path | None = option(
        None,
        "--model",
        type=Path,
        metavar="DIR",
        help="a group run's models/final folder: classify the participants with it",
    )
    embedding_weights: str = option(
        "imagenet",
        "--embedding-weights",
        metavar="imagenet|random|FILE",
        help="ResNet18 weights: ImageNet from the local torch cache, random, or a state dict",
        defines_outputs=True,
        defines_training=True,
    )
    image_size: int = option(
        224,
        "--image-size",
        type=int,
        metavar="PX",
        help="slices are resized to PX x PX for the network",
        minimum=1,
        defines_outputs=True,
        defines_training=True,
    )
    embedding_batch_size: int = option(
        64,
        "--batch-size",
        type=int,
        metavar="N",
        help="slices per forward pass",
        minimum=1,
        defines_training=True,
    )


@dataclass
class TrainingSettings:
    """Classes, cross-validation and training of the group level (parser group "group level")."""

    TITLE = "group level"

    label_column: str = option(
        "group",
        "--label-column",
        metavar="COLUMN",
        help="participants.tsv column with the class of each participant",
        defines_training=True,
    )
    classes: list[str] | None = option(
        None,
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="class order (default: sorted values); with two, the second is positive",
        defines_training=True,
    )
    positive_class: str | None = option(
        None,
        "--positive-class",
        metavar="CLASS",
        help="the positive class (two classes)",
        defines_training=True,
    )
    bins: int | None = option(
        None,
        "--bins",
        type=int,
        metavar="N",
        help="bin a numeric --label-column into N quantile classes",
        minimum=2,
        defines_training=True,
    )
    folds: int = option(
        10,
        "--folds",
        type=int,
        metavar="K",
        help="cross-validation folds (participants)",
        minimum=2,
    )
    cv_repeats: int = option(
        1,
        "--cv-repeats",
        type=int,
        metavar="N",
        help="repeats of the cross-validation",
        minimum=1,
    )
    fold: int | None = option(
        None,
        "--fold",
        type=int,
        metavar="K",
        help="run only fold K (0-based, as in desc-cv_splits.tsv); gather later",
        minimum=0,
    )
    regions: list[str] | None = option(
        None,
        "--regions",
        nargs="+",
        metavar="REGION",
        help="atlas regions the ROI baseline averages and the region-pooled networks pool over",
        default_text="the regions the participant level cropped around",
        defines_training=True,
    )
    covariates: list[str] | None = option(
        None,
        "--covariates",
        nargs="+",
        metavar="COLUMN",
        help="participants.tsv columns added to the ROI baseline's features (e.g. age sex; "
        "text columns become indicator variables)",
        default_text="none",
        defines_training=True,
    )
    preset: str = option(
        DEFAULT_PRESET,
        "--preset",
        choices=tuple(PRESETS),
        help="quantitative: physical units end to end, a region-aware stage-1 network and a "
        "regional read-out in Q-Net (measured best, docs/science.md); paper: the published "
        "pipeline (ResNet18 on stretched 224 px slices, intensity augmentation)",
        defines_training=True,
    )
    stage1: str = option(
        "train",
        "--stage1",
        choices=("train", "frozen"),
        help="train: fine-tune ResNet18 with SWA (the paper); frozen: feed the "
        "participant-level embeddings straight to the Bi-LSTM (fast)",
        defines_training=True,
    )
    epochs: int | None = option(
        None,
        "--epochs",
        type=int,
        metavar="N",
        help="stage-1 epochs",
        default_text="the preset's: 30 quantitative, 100 paper",
        minimum=1,
        defines_training=True,
    )
    qnet_epochs: int | None = option(
        None,
        "--qnet-epochs",
        type=int,
        metavar="N",
        help="stage-2 (Q-Net) epochs",
        default_text="the preset's: 100 quantitative, 50 paper",
        minimum=1,
        defines_training=True,
    )


@dataclass
class StatisticsSettings:
    """Model comparisons (parser group "group level")."""

    TITLE = "group level"

    bootstrap_replicates: int = option(
        2000,
        "--bootstrap-replicates",
        type=int,
        metavar="N",
        help="stratified participant bootstrap replicates for AUC distributions and CIs",
        minimum=1,
    )


@dataclass
class AttributionSettings:
    """Integrated Gradients and Grad-CAM (parser group "group level")."""

    TITLE = "group level"

    attribution: str = option(
        "ig",
        "--attribution",
        choices=("ig", "none"),
        help="ig: Integrated Gradients through Q-Net and Grad-CAM on stage 1, mapped back to "
        "template space and summarised per atlas region; none: skip",
    )
    attribution_target: str = option(
        "true",
        "--attribution-target",
        choices=("true", "predicted"),
        help="class whose logit the attribution explains: the true or the predicted class",
    )
    ig_steps: int = option(
        50,
        "--ig-steps",
        type=int,
        metavar="N",
        help="Integrated Gradients steps; a scan whose attributions do not add up to its output "
        "change (within 5 percent) is computed again with 4x the steps, up to --ig-max-steps",
        minimum=1,
    )
    ig_max_steps: int | None = option(
        None,
        "--ig-max-steps",
        type=int,
        metavar="N",
        help="most Integrated Gradients steps of a scan that has not converged (default: "
        f"{IG_MAX_STEPS_FACTOR} x --ig-steps; the --ig-steps value: no second pass)",
        minimum=1,
    )
    ig_baseline: str = option(
        "zero",
        "--ig-baseline",
        choices=("zero", "blur"),
        help="Integrated Gradients baseline: zero (black slices) or a heavily blurred copy",
    )

    @property
    def enabled(self) -> bool:
        """Whether the group level explains its models (``--attribution`` is not ``none``)."""
        return self.attribution != "none"

    @property
    def max_steps(self) -> int:
        """``--ig-max-steps``, or :data:`IG_MAX_STEPS_FACTOR` x ``--ig-steps`` when not given."""
        return max_ig_steps(self.ig_steps, self.ig_max_steps)


@dataclass
class ExecutionSettings:
    """Where and how the run computes (parser group "execution")."""

    TITLE = "execution"

    config_file: Path | None = option(
        None,
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of options, named as on the command line without the dashes "
        '(folds = 4, registration-profile = "fast"); the command line overrides it',
    )
    work_dir: Path | None = option(
        None,
        "-w",
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="nipype working folder",
        default_text=f"<output_dir>/{WORK_DIR}",
    )
    nprocs: int | None = option(
        None,
        "--nprocs",
        "--n-cpus",
        type=int,
        metavar="N",
        help="parallel processes",
        default_text="the cores available to this process",
        minimum=1,
    )
    omp_nthreads: int = option(
        1,
        "--omp-nthreads",
        type=int,
        metavar="N",
        help="threads per process (ITK, torch)",
        minimum=1,
    )
    mem_gb: float | None = option(
        None, "--mem", type=mem_gb, metavar="SIZE", help="memory limit, e.g. 16G (GiB)"
    )
    plugin: str = option(
        "MultiProc",
        "--plugin",
        metavar="NAME",
        help="nipype plugin (MultiProc, Linear, SLURM, SGE, ...)",
    )
    plugin_settings: dict[str, Any] = option(
        {},
        "--plugin-settings",
        type=json_object,
        metavar="JSON|FILE",
        help="nipype plugin_args as JSON or a JSON file",
    )
    device: str = option(
        "auto",
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where the networks run: auto (a CUDA GPU when torch sees one, else the CPU; the "
        "choice is logged at the start), cpu, or cuda (fails without a GPU)",
    )
    random_seed: int = option(
        42,
        "--random-seed",
        type=int,
        metavar="N",
        help="seed of every random choice (registration sampling, splits, network "
        "initialisation and training order, bootstrap)",
        minimum=0,
        defines_training=True,
    )
    overwrite: bool = option(
        False, "--overwrite", action="store_true", help="recompute complete outputs"
    )
    stop_on_first_crash: bool = option(
        False,
        "--stop-on-first-crash",
        action="store_true",
        help="stop at the first participant that fails (default: process the others and name "
        "every failure at the end)",
    )
    reports_only: bool = option(
        False,
        "--reports-only",
        action="store_true",
        help="rebuild the HTML reports of this level from the outputs already written, then exit",
    )
    boilerplate_only: bool = option(
        False,
        "--boilerplate-only",
        action="store_true",
        help="write the methods text of this level (CITATION.md, group_CITATION.md) with "
        "these settings, then exit",
    )
    verbose: int = option(
        0,
        "-v",
        "--verbose",
        action="count",
        help="-v: plain log lines instead of the progress display; -vv: debug messages and "
        "nipype's own log; -vvv: nipype's debug messages",
    )


#: The sections, in the order of the parser's groups and of the saved settings.
SECTIONS: dict[str, type] = {
    "inputs": InputSettings,
    "preprocessing": PreprocessingSettings,
    "embedding": EmbeddingSettings,
    "training": TrainingSettings,
    "statistics": StatisticsSettings,
    "attribution": AttributionSettings,
    "execution": ExecutionSettings,
}


def max_ig_steps(ig_steps: int, ig_max_steps: int | None) -> int:
    """Return the most Integrated Gradients steps of a path: ``ig_max_steps`` or the default.

    Parameters
    ----------
    ig_steps, ig_max_steps
        ``--ig-steps`` and ``--ig-max-steps`` (None: :data:`IG_MAX_STEPS_FACTOR` x ``ig_steps``).
    """
    if ig_max_steps is None:
        return IG_MAX_STEPS_FACTOR * int(ig_steps)
    return int(ig_max_steps)
