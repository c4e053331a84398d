"""Participant level, whole, vs the bare antspyx registration calls on the same images.

For one participant of a BIDS dataset (by default a generated demo participant) each repetition
times, side by side and in alternating order:

(a) the bare ``ants.registration`` calls that the pipeline wraps, in this process (rigid
    co-registration when the T1w has its own grid, then the Affine stage and the SyNOnly stage
    initialised with it, template mask in both, the registration profile's parameters);
(b) the whole participant level for that participant (``python -m bids_qnet.cli.run ...
    participant``) in a child process, from start-up to exit, with its peak RSS (``wait4``);
(c) optionally the same with another version of the code (``--baseline-source``, a folder
    holding its ``bids_qnet`` package, e.g. ``git archive HEAD bids_qnet | tar -x -C DIR``):
    a before/after comparison in the same run.

Every pipeline run gets fresh output and work folders. ``--reference warm`` (default) first
puts the template, mask and atlas on the output grid into the work folder, as every participant
but the first finds them in a cohort run (the default work folder sits inside ``output_dir``);
the one-off cost of making them (``cold``) is timed apart. The breakdown comes from the run's
``-vv`` log (nipype node times, ``ants.registration`` call times) and is exact for
``--plugin Linear``. Writes ``benchmarks/results/participant_level.json``.

Usage: python benchmarks/participant_level.py [--bids DIR] [--participant 01 [02 ...]]
       [--resolution 1] [--profile fast] [--weights random] [--image-size 224]
       [--plugin Linear] [--omp-nthreads 1] [--repeats 2] [--baseline-source DIR]
       [--reference warm|cold] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# ITK threads of the bare calls, before ITK starts (as the pipeline does): --omp-nthreads
_THREADS = sys.argv[sys.argv.index("--omp-nthreads") + 1] if "--omp-nthreads" in sys.argv else "1"
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = _THREADS

import ants  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, peak_rss_gib, report_header, write_result  # noqa: E402
from _pipeline import breakdown, participant_command, run_timed  # noqa: E402

from bids_qnet.data import registration_profile  # noqa: E402
from bids_qnet.inputs.reference import (  # noqa: E402
    atlas_on_grid,
    brain_mask,
    load_reference,
    template_on_grid,
)
from bids_qnet.workflows.reference import reference_paths  # noqa: E402


def _kwargs(section: dict) -> dict:
    # antspyx ignores list-valued aff_* settings: pass tuples, as bids_qnet does.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_registration(
    anat: Path, template, mask, profile: dict, focus: tuple | None = None
) -> tuple[float, float]:
    """Time the bare ants.registration calls the pipeline makes; return wall and CPU seconds.

    ``focus``: the (lower, upper) voxel box a focused profile's SyN stage runs in.
    """
    t1w = ants.image_read(str(next(anat.glob("*_T1w.nii.gz"))))
    r2s = ants.image_read(str(next(anat.glob("*_R2starmap.nii.gz"))))
    norm = _kwargs(profile["normalisation"])
    syn_fixed, syn_mask = template, mask
    if focus is not None:
        syn_fixed = ants.crop_indices(template, *focus)
        syn_mask = ants.crop_indices(mask, *focus)
    start, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        same = t1w.shape == r2s.shape and np.allclose(t1w.origin, r2s.origin)
        if not same:
            ants.registration(
                fixed=t1w, moving=r2s, outprefix=f"{tmp}/c_", **_kwargs(profile["coregistration"])
            )
        affine = ants.registration(
            fixed=template,
            moving=t1w,
            mask=mask,
            outprefix=f"{tmp}/a_",
            **{**norm, "type_of_transform": "Affine"},
        )
        ants.registration(
            fixed=syn_fixed,
            moving=t1w,
            mask=syn_mask,
            outprefix=f"{tmp}/s_",
            initial_transform=affine["fwdtransforms"],
            write_composite_transform=True,
            **{**norm, "type_of_transform": "SyNOnly"},
        )
    return time.perf_counter() - start, cpu_seconds() - cpu


def reference_files(work_dir: Path, resolution: float) -> tuple[dict, float]:
    """Make the template, mask and atlas on the output grid where the pipeline keeps them; time it.

    They go to ``work_dir / "reference"`` (:func:`reference_paths`).
    """
    reference = load_reference()
    paths = reference_paths(work_dir, resolution, reference)
    start = time.perf_counter()
    template = template_on_grid(reference, resolution)
    images = {
        "template_file": template,
        "mask_file": brain_mask(template),
        "atlas_file": atlas_on_grid(reference, template),
    }
    paths["template_file"].parent.mkdir(parents=True, exist_ok=True)
    for key, image in images.items():
        ants.image_write(image, str(paths[key]))
    seconds = time.perf_counter() - start
    for key, image in images.items():  # the names of versions before 0.2.1 (--baseline-source)
        ants.image_write(image, f"{paths[key]}.gz")
    return {
        "template": template,
        "mask": images["mask_file"],
        "atlas": images["atlas_file"],
        "labels": reference.labels,
    }, seconds


def focus_indices(images: dict, profile: dict, margin_mm: float = 6.0) -> tuple | None:
    """The voxel box of a focused profile's SyN stage (default crop regions and margin)."""
    if profile.get("focus") is None:
        return None
    from bids_qnet.config import DEFAULT_CROP_REGIONS
    from bids_qnet.preprocess.crop import region_box

    margin = margin_mm + float(profile["focus"]["margin_mm"])
    voxels = [int(np.ceil(margin / z)) for z in images["template"].spacing]
    indices = [images["labels"][name] for name in DEFAULT_CROP_REGIONS]
    box = region_box(images["atlas"].numpy(), indices, voxels)
    return list(box.lower), list(box.upper)


def pipeline_run(bids: Path, root: Path, tag: str, args, reference: Path, source) -> dict:
    """Run the participant level once in fresh folders; return its timings."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tag}_", dir=root))
    work = run_dir / "work"
    if args.reference == "warm":
        shutil.copytree(reference, work / "reference")
    command = participant_command(bids, run_dir / "out", work, args.participant, args)
    run = run_timed(command, run_dir / "log.txt", source)
    run["breakdown"] = breakdown(run)
    if not args.keep:
        shutil.rmtree(run_dir / "work", ignore_errors=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="BIDS dataset (default: a generated demo)")
    parser.add_argument(
        "--participant",
        nargs="+",
        default=["01"],
        help="one label, or several: one run over all of them against the sum of their bare "
        "registrations (start-up, imports and exit paid once, as in a cohort)",
    )
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--plugin", default="Linear")
    parser.add_argument("--omp-nthreads", type=int, default=1, help="threads of both sides")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-source", type=Path)
    parser.add_argument("--reference", choices=("warm", "cold"), default="warm")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep each run's work folder")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="bids_qnet_participant_bench_", dir=args.tmp))
    bids = args.bids
    if bids is None:
        from bids_qnet.demo import make_demo_dataset

        bids = make_demo_dataset(
            root / "bids", n_participants=len(args.participant), seed=3, resolution=args.resolution
        ).bids_dir
    profile = registration_profile(args.profile)
    images, cold_s = reference_files(root, args.resolution)
    focus = focus_indices(images, profile)
    variants = {"pipeline": None}
    if args.baseline_source:
        variants = {"baseline": args.baseline_source.resolve(), "pipeline": None}
    rows: dict[str, list] = {"bare": [], **{k: [] for k in variants}}
    anats = [bids / f"sub-{label}" / "anat" for label in args.participant]
    for repeat in range(args.repeats):
        order = ["bare", *variants]
        for tag in order if repeat % 2 == 0 else order[::-1]:  # alternate to cancel drift
            load = load_average()
            if tag == "bare":
                times = [
                    bare_registration(anat, images["template"], images["mask"], profile, focus)
                    for anat in anats
                ]
                row = {"seconds": sum(t[0] for t in times), "cpu_seconds": sum(t[1] for t in times)}
            else:
                row = pipeline_run(bids, root, tag, args, root / "reference", variants[tag])
            row.update(repeat=repeat, load_average_before=load, load_average_after=load_average())
            rows[tag].append(row)
            print(tag, json.dumps(row), flush=True)
    bare = statistics.median(r["seconds"] for r in rows["bare"])
    bare_cpu = statistics.median(r["cpu_seconds"] for r in rows["bare"])
    figures = {
        "bare_registration_s": round(bare, 1),
        "bare_registration_cpu_s": round(bare_cpu, 1),
        "cold_reference_files_s": round(cold_s, 1),
    }
    for tag in variants:
        seconds = statistics.median(r["seconds"] for r in rows[tag])
        cpu = statistics.median(r["cpu_seconds"] for r in rows[tag])
        figures[f"{tag}_s"] = round(seconds, 1)
        figures[f"{tag}_ratio"] = round(seconds / bare, 3)
        figures[f"{tag}_cpu_s"] = round(cpu, 1)
        figures[f"{tag}_cpu_ratio"] = round(cpu / bare_cpu, 3)
        # Whole run over its own registration calls: no other run's load in the ratio.
        logged = [r for r in rows[tag] if r["registration_calls_s"]]
        own = [r["seconds"] / r["registration_calls_s"] for r in logged]
        figures[f"{tag}_ratio_to_own_registration"] = (
            round(statistics.median(own), 3) if own else None  # Linear plugin only
        )
        figures[f"{tag}_ratios_per_repeat"] = [
            round(r["seconds"] / b["seconds"], 3)
            for r, b in zip(rows[tag], rows["bare"], strict=True)
        ]
        figures[f"{tag}_peak_rss_gib"] = round(max(r["peak_rss_gib"] for r in rows[tag]), 2)
        figures[f"{tag}_breakdown_s"] = {
            k: round(statistics.median(r["breakdown"][k] for r in rows[tag]), 1)
            for k in rows[tag][0]["breakdown"]
        }
    report = report_header("participant_level", vars(args), load_before)
    report.update(figures=figures, runs=rows, benchmark_process_peak_rss_gib=peak_rss_gib())
    path = write_result("participant_level", report, args.output)
    print(json.dumps(figures, indent=1))
    print(f"load {load_before} -> {report['load_average_after']}; wrote {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
