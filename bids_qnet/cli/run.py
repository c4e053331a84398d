"""Entry point of the BIDS App: ``bids_qnet bids_dir output_dir {participant,group}``."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from bids_qnet import __version__
from bids_qnet.cli.parser import build_parser
from bids_qnet.config import Settings
from bids_qnet.errors import EXIT_SUCCESS, QNetError, UsageError

LOGGER = logging.getLogger("bids_qnet")


def settings_from_args(args) -> Settings:
    """Build the settings object from parsed arguments and check the arguments together."""
    from bids_qnet.bids_io import clean_labels, load_filters

    settings = Settings(
        bids_dir=args.bids_dir.absolute(),
        output_dir=args.output_dir.absolute(),
        analysis_level=args.analysis_level,
        participant_label=clean_labels(args.participant_label, "sub"),
        session_label=clean_labels(args.session_label, "ses"),
        bids_filters=load_filters(args.bids_filter_file),
        derivatives={name: path.absolute() for name, path in args.derivatives},
        work_dir=args.work_dir.absolute() if args.work_dir else None,
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        mem_gb=args.mem,
        plugin=args.plugin,
        plugin_settings=args.plugin_settings,
        device=args.device,
        random_seed=args.random_seed,
        skip_bids_validation=args.skip_bids_validation,
        channels=list(args.channels),
        reference_channel=args.reference_channel,
        crop=args.crop,
        crop_regions=list(args.crop_regions),
        crop_margin_mm=args.crop_margin,
        registration_profile=args.registration_profile,
        template=args.template.absolute() if args.template else None,
        atlas=args.atlas.absolute() if args.atlas else None,
        template_resolution=args.template_resolution,
        embedding_weights=args.embedding_weights,
        embedding_batch_size=args.batch_size,
        image_size=args.image_size,
        label_column=args.label_column,
        classes=args.classes,
        positive_class=args.positive_class,
        bins=args.bins,
        folds=args.folds,
        cv_repeats=args.cv_repeats,
        fold=args.fold,
        stage1=args.stage1,
        epochs=args.epochs,
        qnet_epochs=args.qnet_epochs,
        bootstrap_replicates=args.bootstrap_replicates,
        attribution=args.attribution,
        attribution_target=args.attribution_target,
        ig_steps=args.ig_steps,
        ig_baseline=args.ig_baseline,
        model=args.model.absolute() if args.model else None,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    check_settings(settings)
    return settings


def check_settings(settings: Settings) -> None:
    """Refuse inconsistent settings and outputs that would land inside the input dataset."""
    bids = settings.bids_dir.resolve()
    for label, path in (("output_dir", settings.output_dir), ("--work-dir", settings.work_dir)):
        resolved = path.resolve()
        if resolved == bids or resolved.is_relative_to(bids):
            raise UsageError(
                f"{label} {path} is inside bids_dir {settings.bids_dir}: bids_qnet never writes "
                "into the input dataset; choose a folder outside it "
                "(e.g. <bids_dir>/../derivatives)"
            )
    if len(set(settings.channels)) != len(settings.channels):
        raise UsageError(f"--channels lists a suffix twice: {settings.channels}")
    if settings.reference_channel not in settings.channels:
        raise UsageError(
            f"--reference-channel {settings.reference_channel} is not among --channels "
            f"{settings.channels}"
        )
    positive = (
        "nprocs",
        "omp_nthreads",
        "image_size",
        "embedding_batch_size",
        "cv_repeats",
        "epochs",
        "qnet_epochs",
        "bootstrap_replicates",
        "ig_steps",
    )
    for name in positive:
        if getattr(settings, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if settings.template_resolution <= 0 or settings.crop_margin_mm < 0:
        raise UsageError("--template-resolution must be positive and --crop-margin not negative")


def setup_logging(verbose: int) -> None:
    """Configure handlers once, here: bids_qnet at INFO (DEBUG with -vv), nipype quieter."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("bids_qnet").setLevel(level)
    nipype_level = "DEBUG" if verbose >= 3 else "INFO" if verbose >= 1 else "WARNING"
    from nipype import config
    from nipype import logging as nlogging

    config.update_config(
        {
            "logging": {
                "workflow_level": nipype_level,
                "interface_level": nipype_level,
                "utils_level": nipype_level,
            }
        }
    )
    nlogging.update_logging(config)


def offline_environment() -> None:
    """Keep the run offline and free of writes to $HOME (HPC, read-only containers)."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # nipype's version check goes online
    os.environ.setdefault("NO_ET", "1")
    tmp = Path(tempfile.gettempdir())
    os.environ.setdefault("MPLCONFIGDIR", str(tmp / "bids_qnet_mpl"))
    home = Path(os.environ.get("HOME", tmp))
    if not os.access(home, os.W_OK):
        os.environ["HOME"] = str(tmp)


def main(argv: list[str] | None = None) -> int:
    """Run bids_qnet and return a BEP027 exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 success, 1 failure, 16 validation, 17 unknown level, 18 nothing selected, 64 usage,
        65 data error, 66 missing input, 73 cannot create output, 74 I/O error.
    """
    offline_environment()
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        setup_logging(settings.verbose)
        LOGGER.info(
            "bids_qnet %s, %s level, run %s", __version__, settings.analysis_level, settings.run_id
        )
        if settings.analysis_level == "participant":
            from bids_qnet.workflows.run_participant import run_participant_level

            return run_participant_level(settings)
        from bids_qnet.workflows.group import run_group_level

        return run_group_level(settings)
    except QNetError as exc:
        print(f"bids_qnet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bids_qnet: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        from bids_qnet.errors import EXIT_IO

        print(f"bids_qnet: I/O error: {exc}", file=sys.stderr)
        return EXIT_IO
    return EXIT_SUCCESS


def console_main() -> None:
    """Run :func:`main` as the ``bids_qnet`` command and exit with its code, quickly.

    Once :func:`main` returns every output is closed and renamed into place, yet the
    interpreter's teardown of torch, torchvision and ITK would take another 1 to 1.5 s. The
    process therefore runs its exit handlers (temporary folders, multiprocessing helpers),
    flushes its logs and streams and leaves without that teardown. With a thread still running
    it exits normally, waiting for the thread.
    """
    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
