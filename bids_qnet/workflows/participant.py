"""The participant-level nipype workflow: one node per step, one sub-workflow per participant.

Nodes run the functions of :mod:`bids_qnet.workflows.steps` in their own working folders under
``work_dir``; nipype's hashing of node inputs makes an interrupted run resume where it stopped.
The steps receive plain values (so that their hashes stay stable between runs); the sink
receives the typed settings and :class:`~bids_qnet.workflows.sink.RunRecord`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from bids_qnet.config import Settings
from bids_qnet.inputs.bids_dataset import ParticipantInputs
from bids_qnet.outputs.names import log_dir
from bids_qnet.workflows.sink import RunRecord, StepResults


# Nipype runs a Function node from the function's source, so each wrapper imports what it needs.
def _prepare(channels, checksums, nthreads):
    # ``checksums`` (SHA-256 of each input file): a replaced file changes this node's inputs
    # and the names of what it writes, so every later step is recomputed.
    from bids_qnet.workflows.steps import prepare

    return prepare(channels, nthreads, checksums)


def _coregister(prepared, reference_channel, profile, seed, nthreads):
    from bids_qnet.workflows.steps import coregister

    return coregister(prepared, reference_channel, profile, seed, nthreads)


def _normalise(
    prepared, reference_channel, template, mask, profile, seed, nthreads, contrast, focus
):
    # Passes on a RegisteredReference; this source is part of the node's hash, so the results
    # of versions that passed on a dict are recomputed, not reused.
    from bids_qnet.workflows.steps import normalise

    image = prepared[reference_channel]
    return normalise(image, template, mask, profile, seed, nthreads, contrast, focus)


def _resample(prepared, coreg, xfm, template, nthreads):
    from bids_qnet.workflows.steps import resample

    return resample(prepared, coreg, xfm, template, nthreads)


def _crop(registered, mask, atlas, region_indices, crop_mode, margin_mm):
    from bids_qnet.workflows.steps import crop

    return crop(registered, mask, atlas, region_indices, crop_mode, margin_mm)


def _embed(stack_path, weights, image_size, batch_size, device, seed, nthreads):
    from bids_qnet.workflows.steps import embed

    return embed(stack_path, weights, image_size, batch_size, device, seed, nthreads)


def _sink(settings, run, subject, session, sources, input_info, **results):
    from bids_qnet.workflows.sink import StepResults, write_outputs

    step_results = StepResults(**results)
    return write_outputs(settings, run, subject, session, sources, input_info, step_results)


#: The sink's inputs besides the steps' results.
SINK_INPUTS = ["settings", "run", "subject", "session", "sources", "input_info"]
#: Step node -> (its output, the sink's input) for every result the sink writes.
SINK_CONNECTIONS = {
    "prepare": [("info", "prep_info")],
    "coregister": [("transforms", "coreg"), ("info", "coreg_info")],
    "normalise": [("xfm", "xfm"), ("info", "norm_info")],
    "resample": [("registered", "registered"), ("info", "resample_info")],
    "crop": [("cropped", "cropped"), ("stack", "stack_path"), ("info", "crop_info")],
    "embed": [("embeddings", "embeddings_path"), ("info", "embed_info")],
}


def reference_contrast(reference_channel: str) -> str:
    """Return the template the reference channel is registered to: T1w or susceptibility."""
    from bids_qnet.data import channel_defaults

    return channel_defaults(reference_channel).get("template", "T1w")


def _node(function, outputs: list[str], name: str, inputs: list[str] | None = None, **kw):
    interface = Function(function=function, output_names=outputs, input_names=inputs)
    return pe.Node(interface, name=name, **kw)


def step_nodes(settings: Settings, run: RunRecord, profile: dict) -> dict[str, pe.Node]:
    """Return the step nodes of one participant, their settings filled in.

    Only plain, output-defining values reach the steps, so that node hashes stay stable
    between runs and an interrupted run resumes.
    """
    threads, seed = settings.execution.omp_nthreads, settings.execution.random_seed
    reference, grid = settings.inputs.reference_channel, run.grid
    nodes = {
        "prepare": _node(_prepare, ["prepared", "info"], "prepare", n_procs=1, mem_gb=1.0),
        "coregister": _node(
            _coregister, ["transforms", "info"], "coregister", n_procs=threads, mem_gb=1.5
        ),
        "normalise": _node(_normalise, ["xfm", "info"], "normalise", n_procs=threads, mem_gb=3.0),
        "resample": _node(
            _resample, ["registered", "info"], "resample", n_procs=threads, mem_gb=2.0
        ),
        "crop": _node(_crop, ["cropped", "stack", "info"], "crop", n_procs=1, mem_gb=1.5),
        "embed": _node(_embed, ["embeddings", "info"], "embed", n_procs=threads, mem_gb=2.0),
    }
    nodes["prepare"].inputs.nthreads = 1
    common = {"profile": profile, "seed": seed, "nthreads": threads}
    nodes["coregister"].inputs.trait_set(reference_channel=reference, **common)
    contrast = reference_contrast(reference)
    nodes["normalise"].inputs.trait_set(
        reference_channel=reference,
        template=grid.susceptibility_file if contrast == "susceptibility" else grid.template_file,
        mask=grid.mask_file,
        contrast=contrast,
        focus=normalisation_focus(settings, grid, profile),
        **common,
    )
    nodes["resample"].inputs.trait_set(template=grid.template_file, nthreads=threads)
    nodes["crop"].inputs.trait_set(
        mask=grid.mask_file,
        atlas=grid.atlas_file,
        region_indices=grid.region_indices,
        crop_mode=settings.preprocessing.crop,
        margin_mm=settings.preprocessing.crop_margin_mm,
    )
    embedding = settings.embedding
    nodes["embed"].inputs.trait_set(
        weights=embedding.embedding_weights,
        image_size=embedding.image_size,
        batch_size=embedding.embedding_batch_size,
        device=settings.execution.device,
        seed=seed,
        nthreads=threads,
    )
    return nodes


def workflow_name(inputs: ParticipantInputs) -> str:
    """Return the name of a participant's sub-workflow (``sub_01_ses_1_wf``)."""
    return f"{inputs.name.replace('-', '_')}_wf"


def normalisation_focus(settings: Settings, grid, profile: dict) -> dict | None:
    """Return where a focused profile's SyN stage runs (None: the whole grid).

    The crop box (atlas regions, or the brain with ``--crop full``) grown by the crop margin
    plus the profile's ``focus.margin_mm``.
    """
    focus = profile.get("focus")
    if focus is None:
        return None
    prep = settings.preprocessing
    return {
        "crop_mode": prep.crop,
        "atlas": grid.atlas_file,
        "labels": sorted(grid.region_indices.values()),
        "margin_mm": prep.crop_margin_mm + float(focus["margin_mm"]),
    }


def init_participant_wf(
    inputs: ParticipantInputs,
    settings: Settings,
    run: RunRecord,
    profile: dict,
    input_info: dict,
    crash_dir: Path,
) -> pe.Workflow:
    """Build the workflow of one participant (and session).

    Parameters
    ----------
    inputs : ParticipantInputs
        The participant's channel images.
    settings : Settings
        The run's settings.
    run : RunRecord
        The reference files, the registration profile's name and the command line.
    profile : dict
        The registration profile.
    input_info : dict
        What the preflight found about the participant's images (for the report).
    crash_dir : Path
        Where nipype writes crash files of this participant's nodes.

    Returns
    -------
    nipype.pipeline.engine.Workflow
    """
    wf = pe.Workflow(name=workflow_name(inputs))
    nodes = step_nodes(settings, run, profile)
    nodes["prepare"].inputs.channels = {s: str(p) for s, p in inputs.channels.items()}
    nodes["prepare"].inputs.checksums = {s: input_info[s].get("sha256") for s in inputs.channels}
    results = [f.name for f in dataclasses.fields(StepResults)]
    sink = _node(_sink, ["written"], "sink", inputs=SINK_INPUTS + results, n_procs=1, mem_gb=1.5)
    sink.overwrite = True  # always (re)write the outputs, even when every input is cached
    sink.inputs.trait_set(
        settings=settings,
        run=run,
        subject=inputs.subject,
        session=inputs.session,
        sources={s: str(p) for s, p in inputs.channels.items()},
        input_info=input_info,
    )
    prep, coreg, norm = nodes["prepare"], nodes["coregister"], nodes["normalise"]
    resample, crop, embed = nodes["resample"], nodes["crop"], nodes["embed"]
    wf.connect(
        [
            (prep, coreg, [("prepared", "prepared")]),
            (prep, norm, [("prepared", "prepared")]),
            (prep, resample, [("prepared", "prepared")]),
            (coreg, resample, [("transforms", "coreg")]),
            (norm, resample, [("xfm", "xfm")]),
            (resample, crop, [("registered", "registered")]),
            (crop, embed, [("stack", "stack_path")]),
            *((nodes[name], sink, links) for name, links in SINK_CONNECTIONS.items()),
        ]
    )
    execution = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt"}
    for node_name in wf.list_node_names():
        wf.get_node(node_name).config = {"execution": dict(execution)}
    return wf


def init_bids_qnet_wf(
    participants: list[ParticipantInputs],
    settings: Settings,
    run: RunRecord,
    profile: dict,
    input_info: dict[str, dict],
) -> pe.Workflow:
    """Build the top-level workflow holding one sub-workflow per participant.

    ``input_info`` holds the preflight's findings per participant (keyed by its name).
    """
    wf = pe.Workflow(name="bids_qnet_participant_wf", base_dir=str(settings.execution.work_dir))
    for inputs in participants:
        crash_dir = log_dir(settings.output_dir, inputs.subject, settings.run_id)
        info = input_info[inputs.name]
        wf.add_nodes([init_participant_wf(inputs, settings, run, profile, info, crash_dir)])
    return wf
