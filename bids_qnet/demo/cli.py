"""The ``bids_qnet-demo`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bids_qnet import __version__
from bids_qnet.demo.dataset import T1W_GRIDS, VARIABILITY, make_demo_dataset
from bids_qnet.demo.effects import EFFECT_KINDS, R2S_PER_PPM
from bids_qnet.demo.phantom import DEFAULT_PLANTED
from bids_qnet.errors import EXIT_CANT_CREATE, QNetError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 is reserved by BEP027: raise, main returns 64
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``bids_qnet-demo`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        A parser that raises `UsageError` instead of exiting on bad arguments.
    """
    parser = _Parser(prog="bids_qnet-demo", description="Write a synthetic BIDS demo dataset.")
    add = parser.add_argument
    add("out_dir", type=Path, help="BIDS folder to create")
    add("--participants", type=int, default=16, help="number of participants")
    add("--seed", type=int, default=0, help="random seed")
    add("--resolution", type=float, default=1.0, help="phantom resolution in mm (2 is quick)")
    add("--t1w-grid", choices=T1W_GRIDS, default="mixed", help="T1w on the GRE grid or its own")
    add("--sessions", type=int, default=1, help="sessions per participant")
    add(
        "--planted-regions",
        nargs="+",
        default=list(DEFAULT_PLANTED),
        metavar="REGION",
        help="atlas regions with more iron in patients",
    )
    add(
        "--iron-effect",
        type=float,
        default=0.5,
        help="relative iron increase in patients (--effect-kind scale)",
    )
    add(
        "--effect-kind",
        choices=EFFECT_KINDS,
        default="scale",
        help="scale: relative increase; offset: ppm added; gradient: zero-mean "
        "posterior-to-anterior ramp inside each planted region",
    )
    add("--effect-ppm", type=float, help="size of an offset or gradient effect in ppm")
    add(
        "--effect-sd",
        type=float,
        help="size of an offset or gradient effect in between-participant SDs",
    )
    add(
        "--r2s-per-ppm",
        type=float,
        default=R2S_PER_PPM,
        help="R2* change (1/s) per ppm of susceptibility change",
    )
    add(
        "--variability",
        choices=VARIABILITY,
        default="demo",
        help="demo: quick, strong effects; realistic: cohort-like regional variability, "
        "ageing, background fields and noise",
    )
    add("--truth-dir", type=Path, help="ground-truth folder (default: OUT_DIR_truth)")
    add("--overwrite", action="store_true", help="replace an earlier demo dataset")
    add("-v", "--verbose", action="count", default=0, help="more messages")
    add("--version", action="version", version=f"bids_qnet {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bids_qnet-demo``.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0, or the error's BEP027 exit code (64 for bad arguments, 73 when it cannot write).
    """
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2))
        info = make_demo_dataset(
            args.out_dir,
            n_participants=args.participants,
            seed=args.seed,
            planted_regions=args.planted_regions,
            iron_effect=args.iron_effect,
            effect_kind=args.effect_kind,
            effect_ppm=args.effect_ppm,
            effect_sd=args.effect_sd,
            r2s_per_ppm=args.r2s_per_ppm,
            variability=args.variability,
            t1w_grid=args.t1w_grid,
            resolution=args.resolution,
            sessions=args.sessions,
            truth_dir=args.truth_dir,
            overwrite=args.overwrite,
        )
    except QNetError as error:
        print(f"bids_qnet-demo: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"bids_qnet-demo: error: cannot write the dataset: {error}", file=sys.stderr)
        return EXIT_CANT_CREATE
    print(f"BIDS dataset: {info.bids_dir}")
    print(f"ground truth: {info.truth_path}")
    return 0
