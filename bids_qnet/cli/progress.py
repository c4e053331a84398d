"""What the terminal shows: a live progress display on a terminal, plain log lines otherwise.

Library code only logs. A log record that reports progress carries a ``progress`` dict
(``LOGGER.info(text, extra={"progress": {...}})``):

``bar``
    Which display line it updates (``participants``, ``folds``, ``epochs``, ``attribution``).
``completed``, ``total``
    How far it is (``total`` None when unknown).
``desc``, ``status``
    The line's label and the text after the bar (running participants, the last loss).
``quiet``
    True for updates that only move a bar (a participant started): no plain log line.
``close``
    True when the line is finished.

On a terminal (and without ``-v``) :class:`ProgressDisplay` draws one tqdm line per ``bar``
and prints every other record above them; otherwise :func:`setup_logging` installs plain,
timestamped lines and drops the ``quiet`` updates, so each event is one line. nipype's own
log stays quiet unless ``-vv`` (:func:`bids_qnet.workflows.scheduling.nipype_level`; its
MultiProc workers are configured by :func:`bids_qnet.workflows.scheduling.worker_initializer`,
since they import nipype afresh).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

#: Format of plain log lines, and with -vv (the logger's name too).
LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DEBUG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: The order display lines are stacked in, top to bottom.
BAR_ORDER = ("participants", "folds", "epochs", "attribution")


class PlainLines(logging.Filter):
    """Drop progress updates that only move a bar (``"quiet": True``)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        progress = getattr(record, "progress", None)
        return not (isinstance(progress, dict) and progress.get("quiet"))


class ProgressDisplay(logging.Handler):
    """Draw progress records as tqdm lines; print the other records above them.

    Parameters
    ----------
    stream : file-like
        The terminal (standard error).
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream
        self.bars: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            progress = getattr(record, "progress", None)
            if isinstance(progress, dict) and "bar" in progress:
                self._update(progress)
            else:
                from tqdm import tqdm

                tqdm.write(self.format(record), file=self.stream)
        except Exception:  # a display must never stop the run
            self.handleError(record)

    def _update(self, progress: dict) -> None:
        from tqdm import tqdm

        name = progress["bar"]
        bar = self.bars.get(name)
        if progress.get("close"):
            if bar is not None:
                bar.n = progress.get("completed", bar.n)
                if progress.get("status"):
                    bar.set_postfix_str(progress["status"], refresh=False)
                bar.close()
                del self.bars[name]
            return
        total = progress.get("total")
        if bar is None:
            bar = tqdm(
                total=total,
                desc=progress.get("desc", name),
                position=self._position(name),
                leave=name == BAR_ORDER[0] or name not in BAR_ORDER,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.5,
                bar_format="{desc:<14} {n_fmt:>3}/{total_fmt:<3} {bar:24} "
                "[{elapsed}<{remaining}]{postfix}",  # tqdm puts ", " before the postfix
            )
            self.bars[name] = bar
        if "desc" in progress:
            bar.set_description_str(progress["desc"], refresh=False)
        bar.set_postfix_str(progress.get("status", ""), refresh=False)
        if total != bar.total:  # a new stage on the same line (reset redraws it)
            bar.reset(total=total)
        bar.n = progress.get("completed", bar.n)
        bar.refresh()

    def _position(self, name: str) -> int:
        taken = {bar.pos for bar in self.bars.values()}
        rank = BAR_ORDER.index(name) if name in BAR_ORDER else len(BAR_ORDER)
        position = min(rank, len(self.bars))
        while position in taken or -position in taken:
            position += 1
        return position

    def close(self) -> None:  # noqa: D102
        for bar in reversed(list(self.bars.values())):
            bar.close()
        self.bars.clear()
        super().close()


def setup_logging(verbose: int, stream: IO[str] | None = None) -> logging.Handler:
    """Configure the run's logging once: the display or plain lines, and nipype's level.

    The handler goes on the root logger (other libraries' warnings read the same, and
    pytest's ``caplog`` still sees every record); ``bids_qnet`` logs at INFO, DEBUG with -vv.

    Parameters
    ----------
    verbose : int
        The ``-v`` count: 0 a progress display on a terminal (plain lines otherwise), 1 plain
        lines, 2 debug messages and nipype's log at INFO, 3 nipype at DEBUG.
    stream : file-like, optional
        Where to write (default: standard error).

    Returns
    -------
    logging.Handler
        The handler installed (close it to finish the display).
    """
    stream = stream if stream is not None else _Stderr()
    interactive = verbose == 0 and bool(getattr(stream, "isatty", lambda: False)())
    handler: logging.Handler
    if interactive:
        handler = ProgressDisplay(stream)
        handler.setFormatter(_DisplayFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter(DEBUG_FORMAT if verbose >= 2 else LINE_FORMAT, DATE_FORMAT)
        )
        handler.addFilter(PlainLines())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "bids_qnet_handler", False)]:
        root.removeHandler(old)
        old.close()
    handler.bids_qnet_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # Python warnings (sklearn, torch) through the handler: above the bars, formatted. Off, then
    # on: a second call would be a no-op if something replaced warnings.showwarning meanwhile.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    logging.getLogger("bids_qnet").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    from bids_qnet.workflows.scheduling import nipype_level

    _quiet_nipype(nipype_level(verbose))
    return handler


class _Stderr:
    """Standard error as it is when a record is written (tests and tools swap ``sys.stderr``)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _DisplayFormatter(logging.Formatter):
    """On the display, INFO messages read as plain text; others keep their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname}: {text}"


def _quiet_nipype(level: str) -> None:
    from nipype import config
    from nipype import logging as nlogging

    config.update_config(
        {"logging": {"workflow_level": level, "interface_level": level, "utils_level": level}}
    )
    nlogging.update_logging(config)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False  # nipype prints them itself, once
