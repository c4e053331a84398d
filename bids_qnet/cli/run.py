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
from bids_qnet.cli.progress import setup_logging
from bids_qnet.config import Settings, check_settings
from bids_qnet.errors import (
    EXIT_FAILURE,
    EXIT_IO,
    QNetError,
    describe,
    one_line,
)

LOGGER = logging.getLogger("bids_qnet")


def settings_from_args(args) -> Settings:
    """Build the settings object from parsed arguments and check the arguments together."""
    settings = Settings.from_arguments(args)
    check_settings(settings)
    return settings


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
    handler = None
    try:
        settings = settings_from_args(args)
        handler = setup_logging(settings.execution.verbose)
        LOGGER.info(
            "bids_qnet %s, %s level, run %s", __version__, settings.analysis_level, settings.run_id
        )
        return run_level(settings)
    except QNetError as exc:
        print(f"bids_qnet: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bids_qnet: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"bids_qnet: I/O error: {one_line(exc)}", file=sys.stderr)
        return EXIT_IO
    except MemoryError as exc:
        print(
            f"bids_qnet: error: {describe(exc)}: give the job more memory or lower --nprocs",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except Exception as exc:  # a bug: one line, the traceback with -vv
        LOGGER.debug("unexpected error", exc_info=exc)
        print(
            f"bids_qnet: error: unexpected {describe(exc)}; please report it with the output "
            "of the same command run with -vv",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        if handler is not None:
            handler.close()


def run_level(settings: Settings) -> int:
    """Run what the settings ask for: the methods text, the reports, or a level."""
    execution = settings.execution
    if execution.boilerplate_only:
        from bids_qnet.workflows.rebuild import write_boilerplate

        return write_boilerplate(settings)
    if execution.reports_only:
        from bids_qnet.workflows.rebuild import rebuild_reports

        return rebuild_reports(settings)
    if settings.analysis_level == "participant":
        from bids_qnet.workflows.run_participant import run_participant_level

        return run_participant_level(settings)
    from bids_qnet.workflows.group import run_group_level

    return run_group_level(settings)


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
