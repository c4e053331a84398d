"""Registration profiles compared: basal-ganglia Dice through the saved transforms, time, memory.

For each template resolution, participant of a demo dataset (``bids_qnet-demo``, which writes the
ground truth of every scan's pose and warp) and registration profile, this runs the whole
participant level (``python -m bids_qnet.cli.run ... participant``, ``--plugin Linear``, fresh
output and work folders with the reference files already made, as every participant but the first
of a cohort finds them) and measures:

* accuracy: the Dice of the atlas's left/right caudate, putamen and pallidum carried through the
  transforms the run SAVED in the derivatives (``benchmarks/_truth.py``), for the reference
  channel (T1w: the composite ``.h5``) and for QSM (``Chimap``: the composite, then the
  co-registration ``.mat`` when the T1w has its own grid); also through the linear stage alone
  (the work folder's ``norm_0GenericAffine.mat``), the floor any deformable stage should beat;
* time: wall and CPU seconds of the whole run and of its ``ants.registration`` calls;
* memory: the peak RSS of the run's process (``--plugin Linear``: everything runs in it), its
  own ``VmHWM`` sampled from ``/proc`` (``wait4`` would count this benchmark's RSS at the fork).

Profiles are built-in names or JSON files (``benchmarks/profiles/antspyx_syn.json`` is the bare
whole-brain SyN, every ``ants.registration`` parameter at its default). Within a participant the
profiles run in an order that rotates between participants, so that drifting machine load does
not favour one profile. Rows are written to the result file as they come; ``--resume`` skips rows
already there (a 1 mm ``precise`` run takes 10 to 20 minutes on one thread).

Usage: python benchmarks/registration_accuracy.py --bids DIR [--truth FILE]
       [--participants 01 02 03 04] [--profiles precise fast focused FILE...]
       [--resolutions 1 2] [--omp-nthreads 1] [--tmp DIR] [--output FILE] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

import ants  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load_average, report_header, write_result  # noqa: E402
from _pipeline import participant_command, run_timed  # noqa: E402
from _truth import BG_LABELS, dice_through  # noqa: E402

from bids_qnet.inputs.reference import (  # noqa: E402
    atlas_on_grid,
    brain_mask,
    load_reference,
    template_on_grid,
)
from bids_qnet.workflows.reference import reference_paths  # noqa: E402

DEFAULT_OUTPUT = RESULTS / "registration_accuracy.json"


def make_reference(root: Path, resolution: float) -> dict:
    """Write the template, mask and atlas on the output grid where the pipeline keeps them."""
    reference = load_reference()
    paths = reference_paths(root, resolution, reference)
    template = template_on_grid(reference, resolution)
    images = {
        "template_file": template,
        "mask_file": brain_mask(template),
        "atlas_file": atlas_on_grid(reference, template),
    }
    paths["template_file"].parent.mkdir(parents=True, exist_ok=True)
    for key, image in images.items():
        ants.image_write(image, str(paths[key]))
    return {"folder": paths["template_file"].parent, **images, "labels": reference.labels}


def _one(pattern: str, folder: Path) -> Path | None:
    found = sorted(folder.rglob(pattern))
    return found[0] if found else None


def score(run_dir: Path, bids: Path, label: str, record: dict, box, reference: dict) -> dict:
    """Dice of the basal-ganglia labels through the run's saved transforms."""
    anat = run_dir / "out" / f"sub-{label}" / "anat"
    raw = bids / f"sub-{label}" / "anat"
    composite = _one("*_from-T1w_to-*_xfm.h5", anat)
    coreg = _one("*_from-*_to-T1w_mode-image_xfm.mat", anat)
    affine = _one("norm_0GenericAffine.mat", run_dir / "work")
    pose = record["scans"][0]
    t1w = ants.image_read(str(raw / f"sub-{label}_T1w.nii.gz"))
    chimap = ants.image_read(str(raw / f"sub-{label}_Chimap.nii.gz"))
    chains = {
        "T1w": (t1w, [composite]),
        "Chimap": (chimap, [composite, *([coreg] if coreg else [])]),
    }
    if affine is not None:
        chains["T1w_affine_only"] = (t1w, [affine])
    out = {}
    for name, (grid, transforms) in chains.items():
        dice = dice_through(
            grid,
            reference["template_file"],
            reference["atlas_file"],
            [str(t) for t in transforms],
            pose,
            box,
            reference["labels"],
        )
        out[name] = {k: round(v, 4) for k, v in dice.items()}
    return out


def run_case(args, bids: Path, label: str, profile: str, reference: dict, record, box) -> dict:
    """Run the participant level once in fresh folders; time it and score its transforms."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"reg_{label}_", dir=args.root))
    work = run_dir / "work"
    shutil.copytree(reference["folder"], work / reference["folder"].name)
    args.profile = profile
    command = participant_command(bids, run_dir / "out", work, [label], args)
    load = load_average()
    run = run_timed(command, run_dir / "log.txt")
    sidecar = json.loads(
        _one("*_from-T1w_to-*_xfm.json", run_dir / "out" / f"sub-{label}").read_text()
    )
    start = time.perf_counter()
    dice = score(run_dir, bids, label, record, box, reference)
    row = {
        "participant": label,
        "t1w_grid": record["t1w_grid"],
        "profile": profile,
        "wall_s": round(run["seconds"], 1),
        "cpu_s": round(run["cpu_seconds"], 1),
        "registration_calls_s": run["registration_calls_s"],
        "normalise_s": sidecar.get("Seconds"),
        "peak_process_rss_gib": round(run["peak_process_rss_gib"], 3),
        "peak_tree_rss_gib": round(run["peak_tree_rss_gib"], 3),
        "deformable_region": sidecar.get("DeformableRegion"),
        "dice": dice,
        "scoring_s": round(time.perf_counter() - start, 1),
        "load_average_before": load,
        "load_average_after": load_average(),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Per resolution and profile: medians over participants, worst labels, time, memory."""
    table = []
    keys = sorted({(r["resolution"], r["profile"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for resolution, profile in keys:
        group = [r for r in rows if (r["resolution"], r["profile"]) == (resolution, profile)]
        entry = {"resolution": resolution, "profile": profile, "participants": len(group)}
        for chain in ("T1w", "Chimap", "T1w_affine_only"):
            scores = [r["dice"][chain] for r in group if chain in r["dice"]]
            if not scores:
                continue
            means = [statistics.mean(s.values()) for s in scores]
            entry[f"{chain}_dice_mean"] = round(statistics.mean(means), 4)
            entry[f"{chain}_dice_range"] = [round(min(means), 4), round(max(means), 4)]
            entry[f"{chain}_dice_min_label"] = round(min(min(s.values()) for s in scores), 4)
            entry[f"{chain}_dice_per_label"] = {
                name: round(statistics.mean(s[name] for s in scores), 4) for name in BG_LABELS
            }
        for key in ("wall_s", "cpu_s", "registration_calls_s"):
            entry[f"{key}_median"] = round(statistics.median(r[key] for r in group), 1)
        entry["peak_rss_gib_max"] = round(max(_peak(r) for r in group), 2)
        table.append(entry)
    return table


def _peak(row: dict) -> float:
    """A run's peak RSS: the process's own ``VmHWM``, else the sampled RSS of its tree."""
    return row.get("peak_process_rss_gib") or row["peak_tree_rss_gib"]


def markdown(table: list[dict]) -> str:
    """The summary as the Markdown table docs/performance.md shows."""
    lines = [
        "| res | profile | n | Dice T1w mean (range) | worst label | Dice QSM mean | affine "
        "stage alone | wall s | CPU s | registration s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lo, hi = e["T1w_dice_range"]
        lines.append(
            f"| {e['resolution']:g} mm | {e['profile']} | {e['participants']} | "
            f"{e['T1w_dice_mean']:.3f} ({lo:.3f}-{hi:.3f}) | {e['T1w_dice_min_label']:.3f} | "
            f"{e['Chimap_dice_mean']:.3f} | {e.get('T1w_affine_only_dice_mean', float('nan')):.3f}"
            f" | {e['wall_s_median']:.0f} | {e['cpu_s_median']:.0f} | "
            f"{e['registration_calls_s_median']:.0f} | {e['peak_rss_gib_max']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, required=True, help="a bids_qnet-demo dataset")
    parser.add_argument("--truth", type=Path, help="default: <bids>_truth/truth.json")
    parser.add_argument("--participants", nargs="+", default=["01", "02", "03", "04"])
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=[
            "precise",
            "fast",
            "focused",
            str(Path(__file__).parent / "profiles/antspyx_syn.json"),
        ],
    )
    parser.add_argument("--resolutions", nargs="+", type=float, default=[1.0, 2.0])
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--plugin", default="Linear")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--resume", action="store_true", help="keep and skip rows already there")
    args = parser.parse_args()
    bids = args.bids.resolve()
    truth = json.loads(
        (args.truth or bids.with_name(bids.name + "_truth") / "truth.json").read_text()
    )
    records = {p["participant_id"].removeprefix("sub-"): p for p in truth["participants"]}
    box = truth["warp_box_mm"]
    names = {p: Path(p).stem for p in args.profiles}
    load_before = load_average()
    rows = []
    if args.resume and args.output.is_file():
        rows = json.loads(args.output.read_text()).get("rows", [])
    done = {(r["resolution"], r["participant"], r["profile"]) for r in rows}
    args.root = Path(tempfile.mkdtemp(prefix="bids_qnet_registration_bench_", dir=args.tmp))
    settings = {k: v for k, v in vars(args).items() if k not in ("root", "profile")}
    try:
        for resolution in args.resolutions:
            args.resolution = resolution
            reference = make_reference(args.root / f"res-{resolution:g}", resolution)
            for index, label in enumerate(args.participants):
                shift = index % len(args.profiles)
                for profile in args.profiles[shift:] + args.profiles[:shift]:
                    if (resolution, label, names[profile]) in done:
                        continue
                    row = run_case(args, bids, label, profile, reference, records[label], box)
                    row.update(resolution=resolution, profile=names[profile])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    report = report_header("registration_accuracy", settings, load_before)
                    report.update(table=summarise(rows), rows=rows)
                    write_result("registration_accuracy", report, args.output)
    finally:
        shutil.rmtree(args.root, ignore_errors=True)
    print(markdown(summarise(rows)))
    print(f"load {load_before} -> {load_average()}; wrote {args.output}")


if __name__ == "__main__":
    main()
