"""The naming table: every file and folder bids_qnet writes, named once.

Participant-level names come from the input's BIDS entities (:func:`build_path`, in the
derivatives spec's entity order) through :class:`ParticipantFiles`; the files at the root of
the derivative dataset and the group level's files and folders are listed below and reached
through :class:`DatasetFiles`, :class:`GroupFiles` and :class:`ModelFiles`. Writers and readers
(and the tests) take their paths from here; ``tests/test_names.py`` pins the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- entities ---------------------------------------------------------------------------------

#: BIDS entity order (derivatives spec), then the suffix.
ENTITY_ORDER = tuple(
    "sub ses task acq ce rec run echo part from to mode space atlas seg res label desc".split()
)
#: ``desc-`` of the cropped outputs for each ``--crop`` choice.
CROP_DESC = {"bg": "bgcrop", "full": "brain"}
#: ``desc-`` of the final model's predictions for a participant (``--model``).
FINAL_MODEL_DESC = "finalmodel"

# --- the derivative dataset's root -------------------------------------------------------------

DATASET_DESCRIPTION = "dataset_description.json"
BIDSIGNORE_FILE = ".bidsignore"
README = "README.md"
CITATION = "CITATION.md"
#: Default ``--work-dir``, relative to the output folder.
WORK_DIR = "sourcedata/bids_qnet_work"
#: Files without a BIDS standard yet (transforms, slice stacks, embeddings, group results,
#: reports), for ``.bidsignore``. No trailing slashes: the BIDS validator's ``.bidsignore``
#: matching does not match folders written that way.
BIDSIGNORE = tuple(
    """
    *_xfm.h5 *_xfm.mat *_xfm.json *_slices.npy *_slices.json *_embeddings.npy *_embeddings.json
    *_predictions.tsv *_predictions.json desc-* attribution models figures group.html sub-*.html
    sub-*/figures sub-*/log sourcedata logs CITATION.md group_CITATION.md
    """.split()
)

# --- participant level -------------------------------------------------------------------------

#: A participant's log folder (``sub-<label>/log/<run id>/``): crash files and saved settings.
PARTICIPANT_LOG = "log"
#: The run's settings in a participant's log folder; ``{ses}`` is ``_ses-<label>`` or empty.
PARTICIPANT_SETTINGS = "bids_qnet_settings{ses}.json"
#: Folder of a participant's report figures (``sub-<label>/figures/``).
FIGURES = "figures"
#: Descriptions of a participant's report figures.
REGISTRATION_FIGURE_DESC = "registration"
REGISTRATION_FIGURE_SUFFIX = "qc"
SLICES_FIGURE_SUFFIX = "slices"
#: What a participant's report shows, as data (``sub-<label>/figures/<stem>_report.json``):
#: the page is rendered from it, again with ``--reports-only``.
REPORT_DATA_SUFFIX = "report"

# --- group level (at the root, no ``sub-``) -----------------------------------------------------

SPLITS = "desc-cv_splits.tsv"
LABELS = "desc-cv_labels.json"
OOF_PREDICTIONS = "desc-oof_predictions.tsv"
CV_METRICS = "desc-cv_metrics.tsv"
COMPARISONS = "desc-delong_comparisons.tsv"
BOOTSTRAP_AUCS = "desc-bootstrap_aucs.tsv"
BOOTSTRAP_CI = "desc-bootstrap_ci.tsv"
ATTRIBUTION_REGIONS = "desc-attribution_regions.tsv"
#: What deserves a reader's attention, one row each (``outputs/warnings.py``).
GROUP_WARNINGS = "desc-group_warnings.tsv"
ROI_COEFFICIENTS = "desc-roi_coefficients.tsv"
GROUP_REPORT = "group.html"
#: The group level's methods text (the participant level's is CITATION.md).
GROUP_CITATION = "group_CITATION.md"
#: Group figures under ``figures/``; ``{level}`` is ``image`` or ``scan``.
ROC_FIGURE = "desc-roc{level}_roc.png"
AUC_BOXPLOT = "desc-aucboxplot{level}_boxplot.png"
IG_OVERLAY = "desc-igoverlay_attribution.png"
GRADCAM_OVERLAY = "desc-gradcamoverlay_attribution.png"
IG_REGIONS_BARPLOT = "desc-igregions_barplot.png"
#: The group run's settings, ``logs/group_<run id>_settings.json``.
LOGS = "logs"
GROUP_SETTINGS = "group_{run_id}_settings.json"
#: Attribution maps: ``attribution/<entities>_desc-<desc>_attribution.nii.gz``.
ATTRIBUTION = "attribution"
ATTRIBUTION_SUFFIX = "attribution"

# --- models ------------------------------------------------------------------------------------

MODELS = "models"
FOLD_DIR = "repeat-{repeat}_fold-{fold}"
FINAL_DIR = "final"
CHECKPOINT = "{model}.pt"
FOLD_PREDICTIONS = "predictions.tsv"
FOLD_DONE = "done.json"
MODEL_CARD = "model_card.json"


def resolution_label(resolution: float) -> str:
    """Return the ``res-`` label of an isotropic resolution in mm (``1``, ``2``, ``1p5``)."""
    return f"{resolution:g}".replace(".", "p")


def entity_name(entities: dict[str, Any], suffix: str, extension: str) -> str:
    """Return ``<key>-<value>_..._<suffix><extension>`` in BIDS entity order.

    ``None`` and empty values are left out; keys outside :data:`ENTITY_ORDER` are refused.
    """
    unknown = set(entities) - set(ENTITY_ORDER) - {"datatype"}
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join([*parts, suffix]) + extension


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
    name = entity_name(entities, suffix, extension)
    folder = Path(f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder /= f"ses-{entities['ses']}"
    return folder / entities.get("datatype", "anat") / name


def scan_stem(subject: str, session: str | None) -> str:
    """Return ``sub-<label>[_ses-<label>]``, the stem of a scan's reports and figures."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def subject_dir(output_dir: Path, subject: str, session: str | None = None) -> Path:
    """Return the participant's (and session's) folder in the derivative dataset."""
    folder = Path(output_dir) / f"sub-{subject}"
    return folder / f"ses-{session}" if session else folder


def sibling(path: Path, suffix: str, extension: str) -> Path:
    """Return the file beside ``path`` with the same entities and another suffix and extension.

    ``sub-01_..._desc-bgcrop_slices.npy`` with ``("T1w", ".nii.gz")`` gives
    ``sub-01_..._desc-bgcrop_T1w.nii.gz``.
    """
    path = Path(path)
    stem = path.name.rsplit("_", 1)[0]
    return path.with_name(f"{stem}_{suffix}{extension}")


def name_entities(path: Path) -> dict[str, str]:
    """Return the ``key-value`` entities of a BIDS file name (the suffix left out)."""
    return dict(part.split("-", 1) for part in Path(path).name.split("_") if "-" in part)


def embeddings_glob(crop: str) -> str:
    """Return the glob (from the output folder) of every participant's embeddings file."""
    return f"sub-*/**/sub-*_desc-{CROP_DESC[crop]}_embeddings.npy"


@dataclass(frozen=True)
class ParticipantFiles:
    """Where one participant's (and session's) outputs are written.

    Attributes
    ----------
    root : Path
        The derivative dataset.
    subject, session : str, str or None
        Labels without ``sub-``/``ses-``.
    space : str
        The template space (``space-``).
    resolution : float
        The output grid's voxel size in mm (``res-``).
    crop : str
        ``--crop`` (``bg`` or ``full``), which gives the crops' ``desc-``.
    """

    root: Path
    subject: str
    session: str | None
    space: str
    resolution: float
    crop: str

    @property
    def entities(self) -> dict[str, Any]:
        """The entities shared by the template-space outputs."""
        return {
            "sub": self.subject,
            "ses": self.session,
            "space": self.space,
            "res": resolution_label(self.resolution),
        }

    @property
    def crop_desc(self) -> str:
        """``desc-`` of the cropped outputs."""
        return CROP_DESC[self.crop]

    def _path(self, entities: dict[str, Any], suffix: str, extension: str) -> Path:
        return self.root / build_path(entities, suffix, extension)

    def registered(self, channel: str) -> Path:
        """Return a channel resampled onto the template grid."""
        return self._path(self.entities, channel, ".nii.gz")

    def cropped(self, channel: str) -> Path:
        """Return a channel's crop."""
        return self._path({**self.entities, "desc": self.crop_desc}, channel, ".nii.gz")

    @property
    def slices(self) -> Path:
        """The slice stack ``(S, C, H, W)``."""
        return self._path({**self.entities, "desc": self.crop_desc}, "slices", ".npy")

    @property
    def embeddings(self) -> Path:
        """The embeddings ``(S, 512)``; their sidecar marks the participant complete."""
        return self._path({**self.entities, "desc": self.crop_desc}, "embeddings", ".npy")

    def transform(self, source: str, target: str, extension: str) -> Path:
        """Return a transform from ``source`` to ``target`` space (``.h5`` or ``.mat``)."""
        entities = {"sub": self.subject, "ses": self.session, "from": source, "to": target}
        return self._path({**entities, "mode": "image"}, "xfm", extension)

    @property
    def predictions(self) -> Path:
        """The final model's scan-level predictions (``--model``)."""
        return final_model_predictions(self.root, self.subject, self.session)

    @property
    def stem(self) -> str:
        """``sub-<label>[_ses-<label>]``."""
        return scan_stem(self.subject, self.session)

    @property
    def registration_figure(self) -> Path:
        """The registration quality figure."""
        name = f"{self.stem}_space-{self.space}_desc-{REGISTRATION_FIGURE_DESC}"
        name += f"_{REGISTRATION_FIGURE_SUFFIX}.png"
        return self.root / f"sub-{self.subject}" / FIGURES / name

    @property
    def slices_figure(self) -> Path:
        """The slice stack montage."""
        name = f"{self.stem}_desc-{self.crop_desc}_{SLICES_FIGURE_SUFFIX}.png"
        return self.root / f"sub-{self.subject}" / FIGURES / name

    @property
    def report(self) -> Path:
        """The participant's HTML report, at the root."""
        return self.root / f"{self.stem}.html"

    @property
    def report_data(self) -> Path:
        """What the report shows, as JSON (the page is rendered from it)."""
        return report_data(self.root, self.subject, self.session)

    @property
    def folder(self) -> Path:
        """The participant's (and session's) folder."""
        return subject_dir(self.root, self.subject, self.session)

    def log_dir(self, run_id: str) -> Path:
        """Return a run's log folder (crash files, settings)."""
        return log_dir(self.root, self.subject, run_id)

    def settings(self, run_id: str) -> Path:
        """Return a run's saved settings."""
        return participant_settings(self.root, self.subject, self.session, run_id)


def report_data(output_dir: Path, subject: str, session: str | None) -> Path:
    """Return a participant's report data (``sub-<label>/figures/<stem>_report.json``)."""
    name = f"{scan_stem(subject, session)}_{REPORT_DATA_SUFFIX}.json"
    return Path(output_dir) / f"sub-{subject}" / FIGURES / name


def report_data_files(output_dir: Path) -> list[Path]:
    """Return every participant's report data in the derivative dataset, sorted."""
    return sorted(Path(output_dir).glob(f"sub-*/{FIGURES}/sub-*_{REPORT_DATA_SUFFIX}.json"))


def final_model_predictions(output_dir: Path, subject: str, session: str | None) -> Path:
    """Return where ``--model`` writes a scan's predictions."""
    entities = {"sub": subject, "ses": session, "desc": FINAL_MODEL_DESC}
    return Path(output_dir) / build_path(entities, "predictions", ".tsv")


def log_dir(output_dir: Path, subject: str, run_id: str) -> Path:
    """Return ``sub-<label>/log/<run id>/``, a participant run's crash files and settings."""
    return Path(output_dir) / f"sub-{subject}" / PARTICIPANT_LOG / run_id


def participant_settings(output_dir: Path, subject: str, session: str | None, run_id: str) -> Path:
    """Return where a run's settings are saved for a participant (and session)."""
    name = PARTICIPANT_SETTINGS.format(ses=f"_ses-{session}" if session else "")
    return log_dir(output_dir, subject, run_id) / name


def saved_participant_settings(participant_dir: Path, session: str | None) -> list[Path]:
    """Return the settings every run saved for a participant (and session), oldest first."""
    logs = sorted((Path(participant_dir) / PARTICIPANT_LOG).glob("*/bids_qnet_settings*.json"))
    if session:
        wanted = PARTICIPANT_SETTINGS.format(ses=f"_ses-{session}")
        logs = [p for p in logs if p.name == wanted]
    return logs


@dataclass(frozen=True)
class DatasetFiles:
    """The files at the root of the derivative dataset that the participant level shares."""

    root: Path

    @property
    def description(self) -> Path:
        """``dataset_description.json``."""
        return self.root / DATASET_DESCRIPTION

    @property
    def bidsignore(self) -> Path:
        """``.bidsignore``."""
        return self.root / BIDSIGNORE_FILE

    @property
    def readme(self) -> Path:
        """``README.md``."""
        return self.root / README

    @property
    def citation(self) -> Path:
        """``CITATION.md``."""
        return self.root / CITATION

    def atlas_image(self, space: str, atlas: str, res: str | None) -> Path:
        """Return the atlas on the output grid (``res``: its ``res-`` label)."""
        entities = {"space": space, "atlas": atlas, "res": res}
        return self.root / entity_name(entities, "dseg", ".nii.gz")

    def atlas_labels(self, atlas: str) -> Path:
        """Return the atlas' label table (``index``, ``name``)."""
        return self.root / entity_name({"atlas": atlas}, "dseg", ".tsv")

    def atlas_description(self, atlas: str) -> Path:
        """Return the atlas' description."""
        return self.root / entity_name({"atlas": atlas}, "description", ".json")


def reference_files(work_dir: Path, space: str, resolution: float, atlas: str, extension: str):
    """Return where the template, brain mask and atlas on the output grid are kept.

    Under ``<work_dir>/reference``; keyed ``template_file``, ``mask_file``, ``atlas_file`` and
    ``susceptibility_file`` (the susceptibility template QSM maps are registered to without a
    T1w).
    """
    stem = f"tpl-{space}_res-{resolution_label(resolution)}"
    folder = Path(work_dir) / "reference"
    return {
        "template_file": folder / f"{stem}_T1w{extension}",
        "mask_file": folder / f"{stem}_desc-brain_mask{extension}",
        "atlas_file": folder / f"{stem}_atlas-{atlas}_dseg{extension}",
        "susceptibility_file": folder / f"{stem}_desc-susceptibility_Chimap{extension}",
    }


@dataclass(frozen=True)
class ModelFiles:
    """One fold's (or the final model's) folder: checkpoints, predictions, records."""

    folder: Path

    def checkpoint(self, model: str) -> Path:
        """Return the state dict of the model named ``model`` (e.g. ``QNet``)."""
        return self.folder / CHECKPOINT.format(model=model)

    @staticmethod
    def checkpoint_name(model: str) -> str:
        """Return the checkpoint's file name, as the records' checksums name it."""
        return CHECKPOINT.format(model=model)

    @property
    def predictions(self) -> Path:
        """The fold's out-of-fold predictions."""
        return self.folder / FOLD_PREDICTIONS

    @property
    def done(self) -> Path:
        """The record that marks the fold done (written last)."""
        return self.folder / FOLD_DONE

    @property
    def card(self) -> Path:
        """The final model's card."""
        return self.folder / MODEL_CARD


@dataclass(frozen=True)
class GroupFiles:
    """The group level's files and folders in the derivative dataset."""

    root: Path

    @property
    def splits(self) -> Path:
        """The cross-validation splits."""
        return self.root / SPLITS

    @property
    def labels(self) -> Path:
        """The class definition."""
        return self.root / LABELS

    @property
    def predictions(self) -> Path:
        """Every fold's out-of-fold predictions."""
        return self.root / OOF_PREDICTIONS

    @property
    def metrics(self) -> Path:
        """The cross-validated metrics."""
        return self.root / CV_METRICS

    @property
    def comparisons(self) -> Path:
        """The paired model comparisons (DeLong, clustered)."""
        return self.root / COMPARISONS

    @property
    def bootstrap_aucs(self) -> Path:
        """The bootstrap replicate AUCs."""
        return self.root / BOOTSTRAP_AUCS

    @property
    def bootstrap_ci(self) -> Path:
        """The bootstrap confidence intervals."""
        return self.root / BOOTSTRAP_CI

    @property
    def attribution_regions(self) -> Path:
        """The per-region attribution table."""
        return self.root / ATTRIBUTION_REGIONS

    @property
    def warnings(self) -> Path:
        """The warnings of the latest group run (source, severity, participant, message)."""
        return self.root / GROUP_WARNINGS

    @property
    def roi_coefficients(self) -> Path:
        """The final ROI baseline's coefficients."""
        return self.root / ROI_COEFFICIENTS

    @property
    def report(self) -> Path:
        """The group HTML report."""
        return self.root / GROUP_REPORT

    @property
    def citation(self) -> Path:
        """The group level's methods text."""
        return self.root / GROUP_CITATION

    @property
    def figures(self) -> Path:
        """The group figures' folder."""
        return self.root / FIGURES

    def roc_figure(self, level: str) -> Path:
        """Return the out-of-fold ROC curves of a level (``image`` or ``scan``)."""
        return self.figures / ROC_FIGURE.format(level=level)

    def auc_boxplot(self, level: str) -> Path:
        """Return the bootstrap AUC boxplot of a level."""
        return self.figures / AUC_BOXPLOT.format(level=level)

    @property
    def ig_overlay(self) -> Path:
        """The Integrated Gradients overlay."""
        return self.figures / IG_OVERLAY

    @property
    def gradcam_overlay(self) -> Path:
        """The Grad-CAM overlay."""
        return self.figures / GRADCAM_OVERLAY

    @property
    def ig_regions_barplot(self) -> Path:
        """The per-region relevance bar plot."""
        return self.figures / IG_REGIONS_BARPLOT

    def settings(self, run_id: str) -> Path:
        """Return a group run's saved settings."""
        return self.root / LOGS / GROUP_SETTINGS.format(run_id=run_id)

    def saved_settings(self) -> list[Path]:
        """Return the settings every group run saved, by run id."""
        return sorted((self.root / LOGS).glob(GROUP_SETTINGS.format(run_id="*")))

    @property
    def models(self) -> Path:
        """The folder of every fold's and the final model's files."""
        return self.root / MODELS

    def fold(self, repeat: int, fold: int) -> ModelFiles:
        """One cross-validation fold's files."""
        return ModelFiles(self.models / FOLD_DIR.format(repeat=repeat, fold=fold))

    @property
    def final(self) -> ModelFiles:
        """The final model's files."""
        return ModelFiles(self.models / FINAL_DIR)

    @property
    def attribution(self) -> Path:
        """The attribution maps' folder."""
        return self.root / ATTRIBUTION

    def attribution_map(self, entities: dict[str, Any], desc: str) -> Path:
        """``attribution/<entities>_desc-<desc>_attribution.nii.gz``."""
        name = entity_name({**entities, "desc": desc}, ATTRIBUTION_SUFFIX, ".nii.gz")
        return self.attribution / name
