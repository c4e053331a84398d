"""How the participant-level workflow is scheduled and followed.

nipype's MultiProc starts the ready nodes in the graph's topological order, which takes every
participant's first step before anyone's second: all outputs appear at the very end and an
interrupted run has nothing finished. :class:`DepthFirstMultiProcPlugin` starts the ready nodes
of the first participants first and fills free processes with the next ones, so participants
finish one after another at the same total time. Its workers are started with
:func:`worker_initializer`, which sets nipype's log level (forkserver workers import nipype
afresh, at INFO). :class:`ParticipantProgress` turns nipype's node events into one log record
per participant finished or failed, and quiet updates of the progress display.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor

from nipype.pipeline.plugins.multiproc import MultiProcPlugin

LOGGER = logging.getLogger(__name__)
#: The node whose end makes a participant complete.
LAST_NODE = "sink"


def nipype_level(verbose: int) -> str:
    """Return nipype's log level for a ``-v`` count: quiet, INFO with -vv, DEBUG with -vvv.

    Quiet is CRITICAL: bids_qnet reports every failure itself, in one line naming the crash
    file, where nipype would print each traceback in full.
    """
    return "DEBUG" if verbose >= 3 else "INFO" if verbose >= 2 else "CRITICAL"


def worker_initializer(cwd: str, level: str) -> None:
    """Prepare a MultiProc worker: nipype's own start-up, then its log level.

    Parameters
    ----------
    cwd : str
        The folder nipype's workers start in.
    level : str
        nipype's log level (``WARNING`` unless ``-vv``).
    """
    os.chdir(cwd)
    os.environ["NIPYPE_NO_ET"] = "1"
    from nipype import config
    from nipype import logging as nlogging

    config.update_config(
        {"logging": {"workflow_level": level, "interface_level": level, "utils_level": level}}
    )
    nlogging.update_logging(config)


def workflow_of(node) -> str:
    """Return the name of the participant sub-workflow a node belongs to (its 2nd name part)."""
    parts = str(node.fullname).split(".")
    return parts[1] if len(parts) > 2 else parts[0]


class DepthFirstMultiProcPlugin(MultiProcPlugin):
    """nipype's MultiProc, starting the first participants' ready nodes first.

    Parameters
    ----------
    plugin_args : dict
        As for MultiProc (``n_procs``, ``memory_gb``, ``mp_context``, ``status_callback``).
    order : list of str
        Participant sub-workflow names, first to last.
    level : str
        nipype's log level in the workers.
    """

    def __init__(self, plugin_args: dict, order: list[str], level: str = "WARNING") -> None:
        super().__init__(plugin_args=plugin_args)
        self._rank = {name: rank for rank, name in enumerate(order)}
        # The parent's pool has not started a worker yet: replace it by one whose workers set
        # nipype's log level.
        self.pool.shutdown(wait=False)
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors,
            initializer=worker_initializer,
            initargs=(self._cwd, level),
            mp_context=mp.get_context(self.plugin_args.get("mp_context")),
        )

    def _sort_jobs(self, jobids, scheduler="tsort"):
        rank = self._rank
        return sorted(
            jobids, key=lambda j: (rank.get(workflow_of(self.procs[j]), len(rank)), int(j))
        )


class ParticipantProgress:
    """Follow nipype's node events and log each participant's start, end or failure.

    Parameters
    ----------
    names : dict of str to str
        Participant sub-workflow name -> the participant's name (``sub-01_ses-1``), in the
        order they are scheduled.
    """

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.total = len(names)
        self.running: dict[str, int] = {}
        self.done: list[str] = []
        self.failed: list[str] = []
        self.start = time.perf_counter()
        self.first_done: float | None = None

    def __call__(self, node, status: str) -> None:
        """Follow one node event (nipype's ``status_callback``): start, end or exception."""
        name = self.names.get(workflow_of(node))
        if name is None or name in self.failed or name in self.done:
            return
        if status == "start":
            fresh = name not in self.running
            self.running[name] = self.running.get(name, 0) + 1
            if fresh:
                self._emit(f"{name}: started", quiet=True)
        elif status == "exception":
            self.running.pop(name, None)
            self.failed.append(name)
            self._emit(f"{name}: failed in {node.name}", level=logging.WARNING)
        elif status == "end" and node.name == LAST_NODE:
            self.running.pop(name, None)
            self.done.append(name)
            if self.first_done is None:
                self.first_done = time.perf_counter() - self.start
            self._emit(f"{name}: done")

    def status(self) -> str:
        """Return ``done k, failed f, running a, b`` for the display."""
        text = f"done {len(self.done)}, failed {len(self.failed)}"
        if self.running:
            text += ", running " + ", ".join(self.running)
        return text

    def remaining_text(self) -> str:
        """Return the time left at the rate so far (``about 12 min left``), or ''."""
        finished = len(self.done) + len(self.failed)
        if not self.done or finished >= self.total:
            return ""
        elapsed = time.perf_counter() - self.start
        left = elapsed / finished * (self.total - finished)
        return f"; about {_duration(left)} left"

    def _emit(self, text: str, level: int = logging.INFO, quiet: bool = False) -> None:
        finished = len(self.done) + len(self.failed)
        counts = f"{len(self.done)} of {self.total} done, {len(self.failed)} failed"
        message = text if quiet else f"{text} ({counts}{self.remaining_text()})"
        progress = {
            "bar": "participants",
            "desc": "participants",
            "completed": finished,
            "total": self.total,
            "status": self.status(),
            "quiet": quiet,
        }
        LOGGER.log(level, message, extra={"progress": progress})

    def close(self) -> None:
        """Finish the display line and log the time to the first complete participant."""
        progress = {"bar": "participants", "close": True, "quiet": True, "status": self.status()}
        LOGGER.info("participants: %s", self.status(), extra={"progress": progress})
        if self.first_done is not None:
            LOGGER.info(
                "first participant complete after %s, all after %s",
                _duration(self.first_done),
                _duration(time.perf_counter() - self.start),
            )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
