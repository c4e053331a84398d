"""Run the participant level: preflight checks, the nipype workflow, and a summary of results."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bids_qnet import bids_io
from bids_qnet.config import Settings
from bids_qnet.derivatives import (
    copy_file,
    init_derivatives,
    is_complete,
    sidecar_path,
    write_atomic,
    write_json,
)
from bids_qnet.errors import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    NothingSelectedError,
    OutputError,
    QNetError,
)

LOGGER = logging.getLogger(__name__)
ERROR_LINE = re.compile(r"bids_qnet\.errors\.(\w+): (.+)")
#: Seconds between nipype's checks of its local (MultiProc) workers.
POLL_SECONDS = 0.2
# errno 27 EFBIG, 28 ENOSPC, 122 EDQUOT (Linux)
DISK_FULL_LINE = re.compile(r"\[Errno (?:27|28|122)\] [^\n]+")


def run_participant_level(settings: Settings) -> int:
    """Process every selected participant; return 0, or the exit code of the first failure.

    Participants that fail (missing channel, corrupt image, failed registration) are reported
    in one line each at the end; the others are still processed.
    """
    bids_io.check_bids_root(settings.bids_dir)
    # ITK reads its thread count once, at first use; workers inherit it from here.
    for variable in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(settings.omp_nthreads)
    from bids_qnet.data import registration_profile
    from bids_qnet.reference import load_reference, region_indices

    profile = registration_profile(settings.registration_profile)
    reference = load_reference(settings.template, settings.atlas)
    indices = region_indices(reference, settings.crop_regions) if settings.crop == "bg" else {}
    layout = bids_io.load_layout(settings.bids_dir, settings.derivatives)
    subjects, unknown = bids_io.select_subjects(layout, settings.participant_label)
    problems = [
        bids_io.Problem(label, None, NothingSelectedError(f"participant label {label!r} not found"))
        for label in unknown
    ]
    # The validator is a separate process: the checks below run while it reads the dataset.
    with ThreadPoolExecutor(max_workers=1) as pool:
        validation = None
        if not settings.skip_bids_validation:
            from bids_qnet.validation import validate_dataset

            everyone = sorted(layout.get_subjects())
            validation = pool.submit(validate_dataset, settings.bids_dir, subjects, everyone)
        model = _check_models(settings)
        images = reference_images(settings, reference)
        invalid = validation.result() if validation is not None else {}
    problems += [bids_io.Problem(s, None, error) for s, error in invalid.items()]
    subjects = [s for s in subjects if s not in invalid]

    init_derivatives(settings.output_dir, settings.bids_dir)
    options = workflow_options(settings, profile, reference, indices, images)
    todo, skipped, skipped_ids = [], [], []
    for subject in subjects:
        sessions = bids_io.select_sessions(layout, subject, settings.session_label)
        if not sessions:
            problems.append(
                bids_io.Problem(
                    subject,
                    None,
                    NothingSelectedError(
                        f"no session {settings.session_label} for this participant"
                    ),
                )
            )
        for session in sessions:
            try:
                inputs = bids_io.find_channels(
                    layout, subject, session, settings.channels, settings.bids_filters
                )
                options["input_info"][inputs.name] = bids_io.check_channels(
                    inputs.channels, settings.reference_channel
                )
            except QNetError as exc:
                problems.append(bids_io.Problem(subject, session, exc))
                continue
            if _already_done(settings, inputs, options):
                skipped.append(inputs.name)
                skipped_ids.append((inputs.subject, inputs.session))
                continue
            todo.append(inputs)
    if skipped:
        LOGGER.info(
            "already complete with these settings (use --overwrite to redo): %s", ", ".join(skipped)
        )
    if todo:
        _run_workflow(settings, todo, options)
        problems += _collect_failures(settings, todo, options)
    if model is not None:
        from bids_qnet.workflows.apply_model import apply_model

        failed = {(p.subject, p.session) for p in problems}
        done = [(i.subject, i.session) for i in todo if (i.subject, i.session) not in failed]
        apply_model(settings, model, done + skipped_ids)
    return _summarise(settings, todo, skipped, problems)


def _check_models(settings: Settings):
    """Fail early on an unusable device, embedding weights or ``--model``; return the model.

    torch is imported only when there is something to check: ``--device auto|cpu`` cannot fail
    and random weights cannot be missing (the workers import torch where they need it).
    """
    if settings.device not in ("auto", "cpu") or settings.embedding_weights != "random":
        from bids_qnet.embed import load_backbone, resolve_device

        resolve_device(settings.device)
        if settings.embedding_weights != "random":
            load_backbone(settings.embedding_weights, len(settings.channels), settings.random_seed)
    if settings.model is None:
        return None
    from bids_qnet.workflows.apply_model import check_model

    return check_model(settings)


def workflow_options(
    settings: Settings, profile: dict, reference, indices: dict, images: dict | None = None
) -> dict[str, Any]:
    """Return the JSON-able options the workflow nodes receive, reference files prepared."""
    files = prepare_reference_files(settings, reference, images)
    return {
        **files,
        "space": reference.space,
        "atlas_name": reference.atlas_name,
        "region_indices": indices,
        "profile": profile,
        "registration_profile": profile.get("name", settings.registration_profile),
        "fingerprint": settings.output_fingerprint(),
        "output_dir": str(settings.output_dir),
        "bids_dir": str(settings.bids_dir),
        "run_id": settings.run_id,
        "command_line": " ".join(["bids_qnet", *sys.argv[1:]]),
        "input_info": {},
        **{
            k: v
            for k, v in settings.to_dict().items()
            if k
            in (
                "channels",
                "reference_channel",
                "crop",
                "crop_regions",
                "crop_margin_mm",
                "template_resolution",
                "embedding_weights",
                "embedding_batch_size",
                "image_size",
                "device",
                "random_seed",
                "omp_nthreads",
            )
        },
    }


def reference_paths(work_dir: Path, resolution: float, reference) -> dict[str, Path]:
    """Return where the template, brain mask and atlas on the output grid are kept.

    Under ``work_dir``, uncompressed like every image the steps pass on: each participant reads
    them three times.
    """
    from bids_qnet.workflows.sink import resolution_label
    from bids_qnet.workflows.steps import WORK_EXT

    stem = f"tpl-{reference.space}_res-{resolution_label(resolution)}"
    folder = Path(work_dir) / "reference"
    return {
        "template_file": folder / f"{stem}_T1w{WORK_EXT}",
        "mask_file": folder / f"{stem}_desc-brain_mask{WORK_EXT}",
        "atlas_file": folder / f"{stem}_atlas-{reference.atlas_name}_dseg{WORK_EXT}",
    }


def reference_images(settings: Settings, reference) -> dict | None:
    """Compute the template, mask and atlas on the output grid, unless the work dir has them.

    The atlas resampling (``genericLabel``) takes about 10 s at 1 mm; every later run with the
    same work dir (by default inside ``output_dir``, so shared by all participants) reuses it.
    Returns None when the files are there, else the ANTs images keyed as
    :func:`reference_paths`.
    """
    paths = reference_paths(settings.work_dir, settings.template_resolution, reference)
    if all(p.is_file() for p in paths.values()):
        return None
    from bids_qnet.reference import atlas_on_grid, brain_mask, template_on_grid

    template = template_on_grid(reference, settings.template_resolution)
    return {
        "template_file": template,
        "mask_file": brain_mask(template),
        "atlas_file": atlas_on_grid(reference, template),
    }


def prepare_reference_files(settings: Settings, reference, images: dict | None = None) -> dict:
    """Write the template, brain mask and atlas on the output grid once, for every node to read.

    ``images`` (from :func:`reference_images`) are written when given; otherwise they are
    computed when the work dir lacks them. The atlas on that grid and its label table also go
    to the derivative dataset's root.
    """
    import pandas as pd

    from bids_qnet.workflows.sink import resolution_label

    res = resolution_label(settings.template_resolution)
    paths = reference_paths(settings.work_dir, settings.template_resolution, reference)
    folder = paths["template_file"].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create work folder {folder}: {exc.strerror}") from exc
    if images is None:
        images = reference_images(settings, reference)
    if images is not None:
        from bids_qnet.ants_calls import write_image

        for key, image in images.items():
            write_image(image, paths[key])
    root = settings.output_dir
    dseg = root / f"space-{reference.space}_atlas-{reference.atlas_name}_res-{res}_dseg.nii.gz"
    if not dseg.is_file():
        write_atomic(dseg, lambda tmp: copy_file(paths["atlas_file"], tmp))
    table = pd.DataFrame({"index": list(reference.labels.values()), "name": list(reference.labels)})
    labels_tsv = root / f"atlas-{reference.atlas_name}_dseg.tsv"
    write_atomic(labels_tsv, lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    atlas_meta = {
        "Name": reference.atlas_name,
        "Description": reference.atlas_source,
        "SpatialReference": reference.space,
    }
    write_json(root / f"atlas-{reference.atlas_name}_description.json", atlas_meta)
    write_json(
        sidecar_path(dseg),
        {**atlas_meta, "Resolution": f"{res} mm isotropic", "Sources": [reference.template_source]},
    )
    return {key: str(path) for key, path in paths.items()}


def _already_done(settings: Settings, inputs, options: dict) -> bool:
    import json

    from bids_qnet.workflows.sink import final_output

    if settings.overwrite:
        return False
    final = final_output(settings.output_dir, inputs.subject, inputs.session, options)
    if not is_complete(final):
        return False
    meta = json.loads(sidecar_path(final).read_text()).get("bids_qnet", {})
    return meta.get("SettingsFingerprint") == options["fingerprint"]


def _run_workflow(settings: Settings, todo: list, options: dict) -> None:
    from bids_qnet.workflows.participant import init_bids_qnet_wf
    from bids_qnet.workflows.sink import save_settings

    for inputs in todo:
        save_settings(settings.output_dir, inputs.subject, inputs.session, settings)
    workflow = init_bids_qnet_wf(todo, options, settings.work_dir)
    workflow.config["execution"].update(
        {
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
        }
    )
    plugin_args = dict(settings.plugin_settings)
    if settings.plugin == "MultiProc":
        plugin_args.setdefault("n_procs", settings.nprocs)
        plugin_args.setdefault("raise_insufficient", False)
        # Clean workers: no ITK/torch thread pools inherited from this process through fork().
        plugin_args.setdefault("mp_context", "forkserver")
        if settings.mem_gb:
            plugin_args.setdefault("memory_gb", settings.mem_gb)
        # nipype polls its local workers every 2 s by default: up to 2 s idle after every node
        # (about 10 s per participant). Polling local futures is cheap; keep the default for
        # cluster plugins, where every poll queries the scheduler.
        workflow.config["execution"]["poll_sleep_duration"] = POLL_SECONDS
    LOGGER.info(
        "processing %d participant(s) with nipype %s: %s",
        len(todo),
        settings.plugin,
        ", ".join(i.name for i in todo),
    )
    start = time.perf_counter()
    try:
        workflow.run(plugin=settings.plugin, plugin_args=plugin_args)
    except RuntimeError as exc:  # nipype: "Workflow did not execute cleanly"
        LOGGER.debug("nipype reported failures: %s", exc)
    LOGGER.info("workflow finished in %.1f s", time.perf_counter() - start)


def _collect_failures(settings: Settings, todo: list, options: dict) -> list:
    from bids_qnet import errors
    from bids_qnet.workflows.sink import final_output

    problems = []
    for inputs in todo:
        if is_complete(final_output(settings.output_dir, inputs.subject, inputs.session, options)):
            continue
        crash_dir = settings.output_dir / f"sub-{inputs.subject}" / "log" / settings.run_id
        crashes = sorted(crash_dir.glob("crash-*.txt"))
        error: QNetError = QNetError(f"failed; see the log in {crash_dir}")
        for crash in crashes:
            text = crash.read_text(errors="replace")
            match = ERROR_LINE.search(text)
            if match:
                cls = getattr(errors, match.group(1), QNetError)
                error = cls(f"{match.group(2)} (crash file: {crash})")
                break
            full = DISK_FULL_LINE.search(text)
            if full:  # a step's own write to the work folder
                error = errors.WriteError(
                    f"a processing step could not write ({full.group(0)}): free disk space and "
                    f"run the same command again (crash file: {crash})"
                )
                break
            error = QNetError(f"a processing step crashed; see {crash}")
        problems.append(bids_io.Problem(inputs.subject, inputs.session, error))
    return problems


def _summarise(settings: Settings, todo: list, skipped: list, problems: list) -> int:
    problems = sorted(problems, key=lambda p: (p.subject, p.session or ""))
    failed = {(p.subject, p.session) for p in problems}
    done = [i.name for i in todo if (i.subject, i.session) not in failed]
    LOGGER.info(
        "participant level: %d processed, %d already complete, %d failed",
        len(done),
        len(skipped),
        len(problems),
    )
    for problem in problems:
        print(f"bids_qnet: error: {problem.line()}", file=sys.stderr)
    if not problems:
        return EXIT_SUCCESS
    return problems[0].error.exit_code or EXIT_FAILURE
