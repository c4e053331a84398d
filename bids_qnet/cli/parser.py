"""The argument parser, built in one factory that the entry point, docs and tests all call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bids_qnet import __version__
from bids_qnet.config import DEFAULT_CHANNELS, DEFAULT_CROP_REGIONS
from bids_qnet.errors import EXIT_UNKNOWN_LEVEL, EXIT_USAGE

ANALYSIS_LEVELS = ("participant", "group")


class BIDSAppArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that exits with BEP027 codes (64 usage, 17 unknown level), not 2."""

    def error(self, message: str):  # noqa: D102
        self.print_usage(sys.stderr)
        code = EXIT_UNKNOWN_LEVEL if "analysis_level" in message else EXIT_USAGE
        self.exit(code, f"bids_qnet: error: {message}\n")


class _PrintDescriptor(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.resources import files

        # One file, descriptor.json at the repository root: a wheel carries it as
        # bids_qnet/data/descriptor.json (pyproject force-include); an editable install reads it
        # from the checkout.
        root = Path(__file__).resolve().parents[2]
        checkout = root / "descriptor.json" if (root / "pyproject.toml").is_file() else None
        for candidate in (files("bids_qnet.data").joinpath("descriptor.json"), checkout):
            if candidate is not None and candidate.is_file():
                sys.stdout.write(candidate.read_text())
                parser.exit(0)
        parser.exit(1, "bids_qnet: the Boutiques descriptor is not packaged in this build\n")


def _derivative(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        path, name = value, Path(value).name
    return name, Path(path)


def _mem_gb(value: str) -> float:
    text = value.strip().upper().removesuffix("B")
    units = {"G": 1.0, "M": 1 / 1024, "T": 1024.0}
    factor = units.get(text[-1:], None)
    number = text[:-1] if factor else text
    try:
        return float(number) * (factor or 1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--mem {value!r}: use e.g. 16G or 16000M") from exc


def _json_object(value: str) -> dict:
    try:
        parsed = (
            json.loads(value)
            if value.strip().startswith("{")
            else json.loads(Path(value).read_text())
        )
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a JSON object nor a JSON file"
        ) from exc
    return parsed


def build_parser() -> argparse.ArgumentParser:
    """Return the bids_qnet argument parser.

    Returns
    -------
    argparse.ArgumentParser
        Positional ``bids_dir output_dir analysis_level`` and all options.
    """
    parser = BIDSAppArgumentParser(
        prog="bids_qnet",
        description=(
            "Q-Net BIDS App: register QSM (Chimap), R2* and T1w to MNI space, crop the basal "
            "ganglia, embed slices with ResNet18 (participant level), then train and "
            "cross-validate ResNet, ResNetSWA and Q-Net (group level)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="root of the derivative dataset to write")
    parser.add_argument("analysis_level", choices=ANALYSIS_LEVELS, help="processing stage")
    parser.add_argument("--version", action="version", version=f"bids_qnet {__version__}")
    parser.add_argument(
        "--bids-exec-spec",
        action=_PrintDescriptor,
        nargs=0,
        help="print the Boutiques descriptor and exit (BEP027)",
    )

    sel = parser.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        help="labels with or without 'sub-', or a file with one label per line (default: all)",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        metavar="LABEL",
        help="labels with or without 'ses-', or a file with one label per line (default: all)",
    )
    sel.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON of per-channel pybids queries, e.g. {"Chimap": {"acq": "qsm"}}',
    )
    sel.add_argument(
        "-d",
        "--derivatives",
        nargs="+",
        type=_derivative,
        metavar="NAME=PATH",
        default=[],
        help="derivative datasets that hold input maps (e.g. qsmxt=/data/derivatives/qsmxt)",
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        "--skip_bids_validator",
        action="store_true",
        help="do not run the BIDS validator on the input dataset",
    )
    sel.add_argument(
        "--channels",
        nargs="+",
        default=list(DEFAULT_CHANNELS),
        metavar="SUFFIX",
        help="BIDS suffixes stacked as image channels, in order (1 to N)",
    )
    sel.add_argument(
        "--reference-channel",
        metavar="SUFFIX",
        help="channel registered to the template (default: T1w if used, else the first)",
    )

    prep = parser.add_argument_group("registration and cropping")
    prep.add_argument(
        "--crop",
        choices=("bg", "full"),
        default="bg",
        help="bg: box around the atlas basal ganglia; full: the whole brain",
    )
    prep.add_argument(
        "--crop-regions",
        nargs="+",
        default=list(DEFAULT_CROP_REGIONS),
        metavar="NAME",
        help="atlas region names that define the crop box",
    )
    prep.add_argument(
        "--crop-margin",
        type=float,
        default=6.0,
        metavar="MM",
        help="margin around the regions' box in mm",
    )
    prep.add_argument(
        "--registration-profile",
        default="precise",
        metavar="NAME|FILE",
        help="'precise' (default), 'fast' (tests, quick looks) or a JSON profile",
    )
    prep.add_argument(
        "--template",
        type=Path,
        metavar="FILE",
        help="T1w brain template replacing MNI152NLin2009cAsym",
    )
    prep.add_argument(
        "--atlas",
        type=Path,
        metavar="FILE",
        help="label image in template space with a TSV (index, name) beside it",
    )
    prep.add_argument(
        "--template-resolution",
        type=float,
        default=1.0,
        metavar="MM",
        help="isotropic voxel size of the output grid",
    )

    emb = parser.add_argument_group("embedding and prediction")
    emb.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="a group run's models/final folder: classify the participants with it",
    )
    emb.add_argument(
        "--embedding-weights",
        default="imagenet",
        metavar="imagenet|random|FILE",
        help="ResNet18 weights: ImageNet from the local torch cache, random, or a state dict",
    )
    emb.add_argument(
        "--image-size",
        type=int,
        default=224,
        metavar="PX",
        help="slices are resized to PX x PX for the network",
    )
    emb.add_argument("--batch-size", type=int, default=64, help="slices per forward pass")

    grp = parser.add_argument_group("group level")
    grp.add_argument(
        "--label-column",
        default="group",
        help="participants.tsv column with the class of each participant",
    )
    grp.add_argument(
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="class order (default: sorted values); with two, the second is positive",
    )
    grp.add_argument("--positive-class", metavar="CLASS", help="the positive class (two classes)")
    grp.add_argument(
        "--bins", type=int, metavar="N", help="bin a numeric --label-column into N quantile classes"
    )
    grp.add_argument("--folds", type=int, default=10, help="cross-validation folds (participants)")
    grp.add_argument("--cv-repeats", type=int, default=1, help="repeats of the cross-validation")
    grp.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="run only fold K (0-based, as in desc-cv_splits.tsv); gather later",
    )
    grp.add_argument(
        "--stage1",
        choices=("train", "frozen"),
        default="train",
        help="train: fine-tune ResNet18 with SWA (the paper); frozen: feed the "
        "participant-level embeddings straight to the Bi-LSTM (fast)",
    )
    grp.add_argument("--epochs", type=int, default=100, help="stage-1 (ResNet18) epochs")
    grp.add_argument("--qnet-epochs", type=int, default=50, help="stage-2 (Q-Net) epochs")
    grp.add_argument(
        "--bootstrap-replicates",
        type=int,
        default=2000,
        metavar="N",
        help="stratified participant bootstrap replicates for AUC distributions and CIs",
    )
    grp.add_argument(
        "--attribution",
        choices=("ig", "none"),
        default="ig",
        help="ig: Integrated Gradients through Q-Net and Grad-CAM on stage 1, mapped back to "
        "template space and summarised per atlas region; none: skip",
    )
    grp.add_argument(
        "--attribution-target",
        choices=("true", "predicted"),
        default="true",
        help="class whose logit the attribution explains: the true or the predicted class",
    )
    grp.add_argument(
        "--ig-steps", type=int, default=50, metavar="N", help="Integrated Gradients steps"
    )
    grp.add_argument(
        "--ig-baseline",
        choices=("zero", "blur"),
        default="zero",
        help="Integrated Gradients baseline: zero (black slices) or a heavily blurred copy",
    )

    run = parser.add_argument_group("execution")
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        help="nipype working folder (default: <output_dir>/sourcedata/bids_qnet_work)",
    )
    run.add_argument("--nprocs", "--n-cpus", type=int, default=1, help="parallel processes")
    run.add_argument("--omp-nthreads", type=int, default=1, help="threads per process (ITK, torch)")
    run.add_argument("--mem", type=_mem_gb, metavar="SIZE", help="memory limit, e.g. 16G (GiB)")
    run.add_argument(
        "--plugin", default="MultiProc", help="nipype plugin (MultiProc, Linear, SLURM, SGE, ...)"
    )
    run.add_argument(
        "--plugin-settings",
        type=_json_object,
        default={},
        metavar="JSON|FILE",
        help="nipype plugin_args as JSON or a JSON file",
    )
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--random-seed", type=int, default=42)
    run.add_argument("--overwrite", action="store_true", help="recompute complete outputs")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser
