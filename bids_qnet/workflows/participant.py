"""The participant-level nipype workflow: one node per step, one sub-workflow per participant.

Nodes run the functions of :mod:`bids_qnet.workflows.steps` in their own working folders under
``work_dir``; nipype's hashing of node inputs makes an interrupted run resume where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from bids_qnet.bids_io import ParticipantInputs


# Nipype runs a Function node from the function's source, so each wrapper imports what it needs.
def _prepare(channels, nthreads):
    from bids_qnet.workflows.steps import prepare

    return prepare(channels, nthreads)


def _coregister(prepared, reference_channel, profile, seed, nthreads):
    from bids_qnet.workflows.steps import coregister

    return coregister(prepared, reference_channel, profile, seed, nthreads)


def _normalise(prepared, reference_channel, template, mask, profile, seed, nthreads):
    from bids_qnet.workflows.steps import normalise

    return normalise(prepared[reference_channel], template, mask, profile, seed, nthreads)


def _resample(prepared, coreg, xfm, template, nthreads):
    from bids_qnet.workflows.steps import resample

    return resample(prepared, coreg, xfm, template, nthreads)


def _crop(registered, mask, atlas, region_indices, crop_mode, margin_mm):
    from bids_qnet.workflows.steps import crop

    return crop(registered, mask, atlas, region_indices, crop_mode, margin_mm)


def _embed(stack_path, weights, image_size, batch_size, device, seed, nthreads):
    from bids_qnet.workflows.steps import embed

    return embed(stack_path, weights, image_size, batch_size, device, seed, nthreads)


def _sink(**kwargs):
    from bids_qnet.workflows.sink import write_outputs

    return write_outputs(**kwargs)


def _node(function, outputs: list[str], name: str, inputs: list[str] | None = None, **kw):
    interface = Function(function=function, output_names=outputs, input_names=inputs)
    return pe.Node(interface, name=name, **kw)


def init_participant_wf(
    inputs: ParticipantInputs, options: dict[str, Any], crash_dir: Path
) -> pe.Workflow:
    """Build the workflow of one participant (and session).

    Parameters
    ----------
    inputs : ParticipantInputs
        The participant's channel images.
    options : dict
        JSON-able run options (see :func:`bids_qnet.cli.run.workflow_options`): reference files,
        registration profile, crop, embedding and output settings. Only output-defining values
        belong here, so that node hashes stay stable between runs.
    crash_dir : Path
        Where nipype writes crash files of this participant's nodes.

    Returns
    -------
    nipype.pipeline.engine.Workflow
    """
    name = inputs.name.replace("-", "_")
    wf = pe.Workflow(name=f"{name}_wf")
    threads = options["omp_nthreads"]
    seed = options["random_seed"]

    prep = _node(_prepare, ["prepared", "info"], "prepare", n_procs=1, mem_gb=1.0)
    prep.inputs.channels = {s: str(p) for s, p in inputs.channels.items()}
    prep.inputs.nthreads = 1

    coreg = _node(_coregister, ["transforms", "info"], "coregister", n_procs=threads, mem_gb=1.5)
    coreg.inputs.trait_set(
        reference_channel=options["reference_channel"],
        profile=options["profile"],
        seed=seed,
        nthreads=threads,
    )

    norm = _node(_normalise, ["xfm", "info"], "normalise", n_procs=threads, mem_gb=3.0)
    norm.inputs.trait_set(
        reference_channel=options["reference_channel"],
        template=options["template_file"],
        mask=options["mask_file"],
        profile=options["profile"],
        seed=seed,
        nthreads=threads,
    )

    resample = _node(_resample, ["registered", "info"], "resample", n_procs=threads, mem_gb=2.0)
    resample.inputs.trait_set(template=options["template_file"], nthreads=threads)

    crop = _node(_crop, ["cropped", "stack", "info"], "crop", n_procs=1, mem_gb=1.5)
    crop.inputs.trait_set(
        mask=options["mask_file"],
        atlas=options["atlas_file"],
        region_indices=options["region_indices"],
        crop_mode=options["crop"],
        margin_mm=options["crop_margin_mm"],
    )

    embed = _node(_embed, ["embeddings", "info"], "embed", n_procs=threads, mem_gb=2.0)
    embed.inputs.trait_set(
        weights=options["embedding_weights"],
        image_size=options["image_size"],
        batch_size=options["embedding_batch_size"],
        device=options["device"],
        seed=seed,
        nthreads=threads,
    )

    sink_inputs = [
        "output_dir",
        "bids_dir",
        "subject",
        "session",
        "sources",
        "options",
        "prep_info",
        "coreg",
        "coreg_info",
        "xfm",
        "norm_info",
        "registered",
        "resample_info",
        "cropped",
        "stack_path",
        "crop_info",
        "embeddings_path",
        "embed_info",
    ]
    sink = _node(_sink, ["written"], "sink", inputs=sink_inputs, n_procs=1, mem_gb=1.5)
    sink.overwrite = True  # always (re)write the outputs, even when every input is cached
    sink.inputs.trait_set(
        output_dir=options["output_dir"],
        bids_dir=options["bids_dir"],
        subject=inputs.subject,
        session=inputs.session,
        sources={s: str(p) for s, p in inputs.channels.items()},
        options={**options, "input_info": options["input_info"][inputs.name]},
    )

    wf.connect(
        [
            (prep, coreg, [("prepared", "prepared")]),
            (prep, norm, [("prepared", "prepared")]),
            (prep, resample, [("prepared", "prepared")]),
            (coreg, resample, [("transforms", "coreg")]),
            (norm, resample, [("xfm", "xfm")]),
            (resample, crop, [("registered", "registered")]),
            (crop, embed, [("stack", "stack_path")]),
            (prep, sink, [("info", "prep_info")]),
            (coreg, sink, [("transforms", "coreg"), ("info", "coreg_info")]),
            (norm, sink, [("xfm", "xfm"), ("info", "norm_info")]),
            (resample, sink, [("registered", "registered"), ("info", "resample_info")]),
            (crop, sink, [("cropped", "cropped"), ("stack", "stack_path"), ("info", "crop_info")]),
            (embed, sink, [("embeddings", "embeddings_path"), ("info", "embed_info")]),
        ]
    )
    execution = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt"}
    for node_name in wf.list_node_names():
        wf.get_node(node_name).config = {"execution": dict(execution)}
    return wf


def init_bids_qnet_wf(
    participants: list[ParticipantInputs], options: dict[str, Any], work_dir: Path
) -> pe.Workflow:
    """Build the top-level workflow holding one sub-workflow per participant."""
    wf = pe.Workflow(name="bids_qnet_participant_wf", base_dir=str(work_dir))
    output_dir = Path(options["output_dir"])
    for inputs in participants:
        crash_dir = output_dir / f"sub-{inputs.subject}" / "log" / options["run_id"]
        wf.add_nodes([init_participant_wf(inputs, options, crash_dir)])
    return wf
