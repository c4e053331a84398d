"""What the terminal shows: the progress display, plain lines, nipype kept quiet, depth first."""

import io
import logging
from types import SimpleNamespace

import pytest

from bids_qnet.cli.progress import PlainLines, ProgressDisplay, setup_logging
from bids_qnet.training.base import FitParams
from bids_qnet.workflows.group import EpochProgress
from bids_qnet.workflows.scheduling import (
    DepthFirstMultiProcPlugin,
    ParticipantProgress,
    nipype_level,
    worker_initializer,
    workflow_of,
)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _node(fullname):
    return SimpleNamespace(fullname=fullname, name=fullname.rsplit(".", 1)[-1])


def test_participant_events_become_one_line_each_and_quiet_updates(caplog):
    names = {"sub_01_wf": "sub-01", "sub_02_wf": "sub-02"}
    progress = ParticipantProgress(names)
    with caplog.at_level(logging.INFO, logger="bids_qnet"):
        progress(_node("top.sub_01_wf.prepare"), "start")
        progress(_node("top.sub_01_wf.normalise"), "start")
        progress(_node("top.sub_02_wf.prepare"), "start")
        progress(_node("top.sub_01_wf.sink"), "end")
        progress(_node("top.sub_02_wf.normalise"), "exception")
        progress(_node("top.sub_02_wf.sink"), "end")  # after a failure: ignored
    records = [r for r in caplog.records if hasattr(r, "progress")]
    loud = [r.getMessage() for r in records if not r.progress.get("quiet")]
    assert loud[0].startswith("sub-01: done (1 of 2 done, 0 failed; about ")  # time left
    assert loud[1:] == ["sub-02: failed in normalise (1 of 2 done, 1 failed)"]
    assert [r.progress["completed"] for r in records][-1] == 2
    assert sum(r.getMessage().endswith("started") for r in records) == 2  # once each
    assert progress.status() == "done 1, failed 1"
    assert records[-1].levelno == logging.WARNING


def test_plain_lines_drop_quiet_updates_only():
    keep = logging.makeLogRecord({"msg": "sub-01: done", "progress": {"bar": "x"}})
    drop = logging.makeLogRecord({"msg": "sub-01: started", "progress": {"quiet": True}})
    plain = logging.makeLogRecord({"msg": "hello"})
    line_filter = PlainLines()
    assert line_filter.filter(keep) and line_filter.filter(plain)
    assert not line_filter.filter(drop)


def test_display_draws_bars_and_prints_other_records_above(restore_logging):
    stream = Terminal()
    handler = setup_logging(0, stream)
    assert isinstance(handler, ProgressDisplay)
    log = logging.getLogger("bids_qnet.test")
    bar = {"bar": "participants", "completed": 1, "total": 4, "status": "running sub-02"}
    log.info("sub-01: done", extra={"progress": bar})
    log.info("a plain message")
    log.warning("a warning")
    assert "participants" in handler.bars
    handler.close()
    text = stream.getvalue()
    assert "1/4" in text and "running sub-02" in text
    assert "a plain message" in text and "WARNING: a warning" in text
    assert "sub-01: done" not in text  # the bar says it


def test_python_warnings_go_through_the_handler(restore_logging):
    import warnings

    stream = io.StringIO()
    setup_logging(1, stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # pytest's own filters may hide a repeat
            warnings.warn("coef_ did not converge", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    assert "WARNING" in stream.getvalue() and "coef_ did not converge" in stream.getvalue()


@pytest.mark.parametrize("verbose", [0, 1])
def test_plain_lines_without_a_terminal_or_with_v(restore_logging, verbose):
    stream = Terminal() if verbose else io.StringIO()
    handler = setup_logging(verbose, stream)
    assert not isinstance(handler, ProgressDisplay)
    log = logging.getLogger("bids_qnet.test")
    log.info("sub-01: done (1 of 2 done)", extra={"progress": {"bar": "participants"}})
    log.info("sub-02: started", extra={"progress": {"bar": "participants", "quiet": True}})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO sub-01: done (1 of 2 done)")


def test_nipype_stays_quiet_unless_vv(restore_logging):
    assert nipype_level(0) == nipype_level(1) == "CRITICAL"
    assert (nipype_level(2), nipype_level(3)) == ("INFO", "DEBUG")
    setup_logging(0, io.StringIO())
    assert logging.getLogger("nipype.workflow").level == logging.CRITICAL
    setup_logging(2, io.StringIO())
    assert logging.getLogger("nipype.workflow").level == logging.INFO
    assert not logging.getLogger("nipype.workflow").propagate  # printed once, by nipype


def test_worker_initializer_sets_nipype_level(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    worker_initializer(str(tmp_path), "CRITICAL")
    assert logging.getLogger("nipype.workflow").level == logging.CRITICAL
    worker_initializer(str(tmp_path), "INFO")
    assert logging.getLogger("nipype.workflow").level == logging.INFO


def test_depth_first_order_starts_the_first_participants_first():
    order = ["sub_01_wf", "sub_02_wf", "sub_03_wf"]
    plugin = DepthFirstMultiProcPlugin({"n_procs": 1, "mp_context": "forkserver"}, order)
    try:
        plugin.procs = [
            _node("top.sub_03_wf.prepare"),
            _node("top.sub_02_wf.prepare"),
            _node("top.sub_01_wf.normalise"),
            _node("top.sub_02_wf.normalise"),
            _node("top.other"),
        ]
        assert plugin._sort_jobs([0, 1, 2, 3, 4]) == [2, 1, 3, 0, 4]
    finally:
        plugin.pool.shutdown()
    assert workflow_of(_node("top.sub_01_wf.prepare")) == "sub_01_wf"


def test_each_epoch_is_logged_once_and_folds_k_of_k(caplog):
    params = FitParams(3, 5, 2, 8, "random", "train", 0, "cpu")
    progress = EpochProgress(params)
    with caplog.at_level(logging.INFO, logger="bids_qnet"):
        progress.fold(2, 4, 0, 1, 1)
        progress("stage 1", {"epoch": 2, "loss": 0.5, "accuracy": 0.75, "seconds": 1.0})
        progress("Q-Net", {"epoch": 1, "loss": 0.25})
        progress("ROI", {"epoch": 1})  # a family the group level does not know: no total
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "fold 2 of 4 (fold 1)",
        "fold 2/4: stage 1 epoch 2/3: loss 0.5, accuracy 0.75",
        "fold 2/4: Q-Net epoch 1/5: loss 0.25",
        "fold 2/4: ROI epoch 1: ",
    ]
    assert caplog.records[1].progress["total"] == 3


def test_folds_and_epochs_lines_close_on_the_display(restore_logging):
    handler = setup_logging(0, Terminal())
    progress = EpochProgress(FitParams(3, 5, 2, 8, "random", "train", 0, "cpu"))
    progress.fold(1, 2, 0, 0, 1)
    progress("stage 1", {"epoch": 1, "loss": 0.5})
    assert set(handler.bars) == {"folds", "epochs"}
    progress.done()
    assert handler.bars == {}
    handler.close()
