"""Run the participant level: preflight checks, the nipype workflow, and a summary of results."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bids_qnet import errors
from bids_qnet.config import Settings
from bids_qnet.errors import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    NothingSelectedError,
    QNetError,
    describe,
    one_line,
)
from bids_qnet.inputs import bids_dataset as bids_io
from bids_qnet.outputs.derivatives import init_derivatives, is_complete, sidecar_path
from bids_qnet.outputs.names import log_dir
from bids_qnet.workflows.sink import RunRecord, inputs_fingerprint, participant_files

LOGGER = logging.getLogger(__name__)
ERROR_LINE = re.compile(r"bids_qnet\.errors\.(\w+): (.+)")
#: Seconds between nipype's checks of its local (MultiProc) workers.
POLL_SECONDS = 0.2
# errno 27 EFBIG, 28 ENOSPC, 122 EDQUOT (Linux)
DISK_FULL_LINE = re.compile(r"\[Errno (?:27|28|122)\] [^\n]+")


@dataclass
class Plan:
    """What the preflight found: participants to process, already complete, or failing."""

    todo: list[bids_io.ParticipantInputs] = field(default_factory=list)
    skipped: list[bids_io.ParticipantInputs] = field(default_factory=list)
    problems: list[bids_io.Problem] = field(default_factory=list)
    input_info: dict[str, dict] = field(default_factory=dict)

    def done(self) -> list[tuple[str, str | None]]:
        """Return (subject, session) of every participant complete after the run."""
        failed = {(p.subject, p.session) for p in self.problems}
        done = [(i.subject, i.session) for i in self.todo if (i.subject, i.session) not in failed]
        return done + [(i.subject, i.session) for i in self.skipped]


def run_participant_level(settings: Settings) -> int:
    """Process every selected participant; return 0, or the exit code of the first failure.

    Participants that fail (missing channel, corrupt image, failed registration) are reported
    in one line each at the end; the others are still processed.
    """
    from bids_qnet.data import registration_profile
    from bids_qnet.inputs.reference import load_reference, region_indices
    from bids_qnet.workflows.reference import prepare_reference, reference_images

    bids_io.check_bids_root(settings.bids_dir)
    # ITK reads its thread count once, at first use; workers inherit it from here.
    for variable in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(settings.execution.omp_nthreads)
    prep = settings.preprocessing
    profile = registration_profile(prep.registration_profile)
    reference = load_reference(prep.template, prep.atlas)
    indices = region_indices(reference, prep.crop_regions) if prep.crop == "bg" else {}
    layout = bids_io.load_layout(settings.bids_dir, settings.inputs.derivatives)
    plan, subjects = select(settings, layout)
    # The validator is a separate process: the checks below run while it reads the dataset.
    with ThreadPoolExecutor(max_workers=1) as pool:
        validation = None
        if not settings.inputs.skip_bids_validation:
            from bids_qnet.inputs.validation import validate_dataset

            everyone = sorted(layout.get_subjects())
            validation = pool.submit(validate_dataset, settings.bids_dir, subjects, everyone)
        model = _check_models(settings)
        images = reference_images(settings, reference)
        invalid = validation.result() if validation is not None else {}
    plan.problems += [bids_io.Problem(s, None, error) for s, error in invalid.items()]
    valid = [s for s in subjects if s not in invalid]
    find_inputs(settings, layout, valid, plan, reference.space)
    if plan.problems and settings.execution.stop_on_first_crash:
        LOGGER.warning("--stop-on-first-crash: stopping before processing anyone")
        return _summarise(plan)
    model_error = None
    if plan.todo or (model is not None and plan.skipped):
        # only now: nothing is written when nothing is processed
        init_derivatives(
            settings.output_dir,
            settings.bids_dir,
            citation=participant_citation(settings),
            derivatives=settings.inputs.derivatives,
        )
        grid = prepare_reference(settings, reference, indices, images)
        run = RunRecord(
            grid,
            profile.get("name", prep.registration_profile),
            _command_line(),
            profile.get("quality", {}),
        )
        if plan.todo:
            _run_workflow(settings, run, profile, plan)
            failures = _collect_failures(settings, run, plan.todo)
            plan.problems += failures
            for problem in failures:
                write_failure_report(settings, run, problem, plan.input_info)
    if model is not None:
        model_error = _apply_model(settings, model, plan.done())
    code = _summarise(plan)
    if model_error is not None:
        print(f"bids_qnet: error: {one_line(model_error)}", file=sys.stderr)
        return code or model_error.exit_code
    return code


def _apply_model(settings: Settings, model, done) -> QNetError | None:
    """Classify the participants complete after the run; return the error, if any.

    The error is returned, not raised, so that the participants' own error lines are still
    printed: with every participant failing there is nothing to classify, and saying so is
    all ``--model`` has to add.
    """
    if not done:
        LOGGER.warning("--model: no participant with complete outputs to classify")
        return None
    from bids_qnet.workflows.apply_model import apply_model

    try:
        apply_model(settings, model, done)
    except QNetError as exc:
        return exc
    return None


def participant_citation(settings: Settings) -> str:
    """Return ``CITATION.md`` for the participant level's settings."""
    from bids_qnet.data import load_json
    from bids_qnet.reports.methods import citation_markdown

    return citation_markdown(settings.to_dict(), load_json("resources.json"))


def select(settings: Settings, layout) -> tuple[Plan, list[str]]:
    """Return the selected participants, with a problem for each label that names nobody."""
    subjects, unknown = bids_io.select_subjects(layout, settings.inputs.participant_label)
    plan = Plan()
    for label in unknown:
        error = NothingSelectedError(f"participant label {label!r} not found")
        plan.problems.append(bids_io.Problem(label, None, error))
    return plan, subjects


def find_inputs(settings: Settings, layout, subjects: list[str], plan: Plan, space: str):
    """Find and check every selected session's channels; sort them into ``plan``.

    One participant's problem, whatever it is, is recorded for that participant and the
    others are still checked.
    """
    inputs_settings = settings.inputs
    for subject in subjects:
        try:
            sessions = bids_io.select_sessions(layout, subject, inputs_settings.session_label)
        except Exception as exc:  # pybids on an odd dataset
            plan.problems.append(bids_io.Problem(subject, None, _as_input_error(exc)))
            continue
        if not sessions:
            error = NothingSelectedError(
                f"no session {inputs_settings.session_label} for this participant"
            )
            plan.problems.append(bids_io.Problem(subject, None, error))
        for session in sessions:
            try:
                inputs = bids_io.find_channels(
                    layout, subject, session, inputs_settings.channels, inputs_settings.bids_filters
                )
                plan.input_info[inputs.name] = bids_io.check_channels(
                    inputs.channels, inputs_settings.reference_channel
                )
                done = _already_done(settings, space, inputs, plan.input_info[inputs.name])
            except Exception as exc:
                plan.problems.append(bids_io.Problem(subject, session, _as_input_error(exc)))
                continue
            (plan.skipped if done else plan.todo).append(inputs)
    if plan.skipped:
        names = ", ".join(i.name for i in plan.skipped)
        LOGGER.info("already complete with these settings (use --overwrite to redo): %s", names)


def _as_input_error(exc: Exception) -> QNetError:
    """Return a QNetError as it is; anything else as an input error quoting it on one line."""
    if isinstance(exc, QNetError):
        return exc
    if isinstance(exc, MemoryError):
        return errors.InputDataError(
            f"{describe(exc)} while checking the input images; give the job more memory"
        )
    if isinstance(exc, OSError):
        return errors.MissingInputError(f"an input cannot be read ({describe(exc)})")
    LOGGER.debug("unexpected error in the preflight", exc_info=exc)
    return errors.InputDataError(f"checking the inputs failed ({describe(exc)})")


def _command_line() -> str:
    return " ".join(["bids_qnet", *sys.argv[1:]])


def _check_models(settings: Settings):
    """Fail early on an unusable device, embedding weights or ``--model``; return the model.

    Says once which device the embedding uses and why. torch is imported only when there is
    something to check (``--device cpu`` with random weights needs nothing); the workers import
    it where they need it.
    """
    device, weights = settings.execution.device, settings.embedding.embedding_weights
    if device == "cpu":
        LOGGER.info("device: cpu (--device cpu)")
    if device != "cpu" or weights != "random":
        from bids_qnet.models.device import choose_device
        from bids_qnet.models.embedding import load_backbone

        if device != "cpu":
            LOGGER.info("device: %s", choose_device(device)[1])
        if weights != "random":
            n_channels = len(settings.inputs.channels)
            load_backbone(weights, n_channels, settings.execution.random_seed)
    if settings.embedding.model is None:
        return None
    from bids_qnet.workflows.apply_model import check_model

    return check_model(settings)


def _already_done(settings: Settings, space: str, inputs, input_info: dict) -> bool:
    """Tell whether the participant's outputs are complete and made from these very inputs.

    Both fingerprints must match: the settings' (what defines the outputs) and the inputs'
    (which files were selected, and their content).
    """
    if settings.execution.overwrite:
        return False
    final = participant_files(settings, space, inputs.subject, inputs.session).embeddings
    if not is_complete(final):
        return False
    try:
        meta = json.loads(sidecar_path(final).read_text()).get("bids_qnet", {})
    except (OSError, ValueError, AttributeError):
        return False
    return meta.get("SettingsFingerprint") == settings.output_fingerprint() and meta.get(
        "InputsFingerprint"
    ) == inputs_fingerprint(settings.bids_dir, inputs.channels, input_info)


def _run_workflow(settings: Settings, run: RunRecord, profile: dict, plan: Plan) -> None:
    from bids_qnet.workflows.participant import init_bids_qnet_wf, workflow_name
    from bids_qnet.workflows.scheduling import (
        DepthFirstMultiProcPlugin,
        ParticipantProgress,
        nipype_level,
    )
    from bids_qnet.workflows.sink import save_settings

    for inputs in plan.todo:
        save_settings(settings, inputs.subject, inputs.session)
    workflow = init_bids_qnet_wf(plan.todo, settings, run, profile, plan.input_info)
    execution = settings.execution
    workflow.config["execution"].update(
        {
            "crashfile_format": "txt",
            "stop_on_first_crash": execution.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
        }
    )
    plugin_args = _plugin_args(settings)
    names = {workflow_name(i): i.name for i in plan.todo}
    progress = ParticipantProgress(names)
    plugin_args["status_callback"] = progress
    plugin = execution.plugin
    if plugin == "MultiProc":
        # nipype polls its local workers every 2 s by default: up to 2 s idle after every node
        # (about 10 s per participant). Polling local futures is cheap; keep the default for
        # cluster plugins, where every poll queries the scheduler.
        workflow.config["execution"]["poll_sleep_duration"] = POLL_SECONDS
        # Participants one after another (the first ones complete early), nipype quiet.
        level = nipype_level(execution.verbose)
        plugin = DepthFirstMultiProcPlugin(plugin_args, list(names), level)
    LOGGER.info(
        "processing %d participant(s) with nipype %s, %d process(es) of %d thread(s): %s",
        len(plan.todo),
        execution.plugin,
        execution.nprocs,
        execution.omp_nthreads,
        ", ".join(names.values()),
    )
    start = time.perf_counter()
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as exc:  # nipype: "Workflow did not execute cleanly"
        LOGGER.debug("nipype reported failures: %s", exc)
    finally:
        progress.close()
    LOGGER.debug("workflow finished in %.1f s", time.perf_counter() - start)


def _plugin_args(settings: Settings) -> dict:
    execution = settings.execution
    plugin_args = dict(execution.plugin_settings)
    if execution.plugin == "MultiProc":
        plugin_args.setdefault("n_procs", execution.nprocs)
        plugin_args.setdefault("raise_insufficient", False)
        # Clean workers: no ITK/torch thread pools inherited from this process through fork().
        plugin_args.setdefault("mp_context", "forkserver")
        if execution.mem_gb:
            plugin_args.setdefault("memory_gb", execution.mem_gb)
    return plugin_args


def _collect_failures(settings: Settings, run: RunRecord, todo: list) -> list:
    problems = []
    for inputs in todo:
        files = participant_files(settings, run.grid.space, inputs.subject, inputs.session)
        if is_complete(files.embeddings):
            continue
        crash_dir = log_dir(settings.output_dir, inputs.subject, settings.run_id)
        error = _crash_error(crash_dir)
        crashed = crash_dir.is_dir() and any(crash_dir.glob("crash-*"))
        if settings.execution.stop_on_first_crash and not crashed:
            error = QNetError("not finished: --stop-on-first-crash stopped the run")
        problems.append(bids_io.Problem(inputs.subject, inputs.session, error))
    return problems


def write_failure_report(settings: Settings, run: RunRecord, problem, input_info: dict) -> None:
    """Write the report of a participant that did not complete: its errors, inputs, command.

    The page replaces an earlier run's report of that participant (its outputs are incomplete
    now); it is never allowed to stop the run.
    """
    from bids_qnet.reports.participant import write_participant_report

    subject, session = problem.subject, problem.session
    files = participant_files(settings, run.grid.space, subject, session)
    name = files.stem
    summary = {
        "Errors": [str(problem.error)],
        "RunID": settings.run_id,
        "CommandLine": run.command_line,
        "Inputs": input_info.get(name, {}),
        "Settings": settings.to_dict(),
    }
    try:
        write_participant_report(settings.output_dir, subject, session, summary, [], files.report)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        LOGGER.warning("%s: could not write the failure report: %s", name, exc)


def _crash_error(crash_dir) -> QNetError:
    """Return the error that the first readable crash file in ``crash_dir`` names."""
    error: QNetError = QNetError(f"failed; see the log in {crash_dir}")
    for crash in sorted(crash_dir.glob("crash-*.txt")):
        text = crash.read_text(errors="replace")
        match = ERROR_LINE.search(text)
        if match:
            cls = getattr(errors, match.group(1), QNetError)
            return cls(f"{match.group(2)} (crash file: {crash})")
        full = DISK_FULL_LINE.search(text)
        if full:  # a step's own write to the work folder
            return errors.WriteError(
                f"a processing step could not write ({full.group(0)}): free disk space and "
                f"run the same command again (crash file: {crash})"
            )
        error = QNetError(f"a processing step crashed; see {crash}")
    return error


def _summarise(plan: Plan) -> int:
    problems = sorted(plan.problems, key=lambda p: (p.subject, p.session or ""))
    LOGGER.info(
        "participant level: %d processed, %d already complete, %d failed",
        len(plan.done()) - len(plan.skipped),
        len(plan.skipped),
        len(problems),
    )
    for problem in problems:
        print(f"bids_qnet: error: {problem.line()}", file=sys.stderr)
    if not problems:
        return EXIT_SUCCESS
    return problems[0].error.exit_code or EXIT_FAILURE
