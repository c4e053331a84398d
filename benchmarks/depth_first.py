"""Depth-first scheduling: when participants complete, nipype's order vs bids_qnet's.

Runs the participant level of the same participants twice with ``--nprocs N`` (MultiProc), in
fresh output and work folders, alternating the order between repetitions: once with nipype's
own job order (every participant's first step before anyone's second) and once with
bids_qnet's depth-first order (``DepthFirstMultiProcPlugin``: the first participants' ready
nodes first). For each run it records the total wall time and when each participant became
complete (the modification time of its embeddings sidecar, written last, from the start).
Writes ``benchmarks/results/depth_first.json``.

Usage: python benchmarks/depth_first.py [--bids DIR] [--participants 6] [--nprocs 2]
       [--resolution 2] [--profile fast] [--weights random] [--image-size 64] [--repeats 1]
       [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, report_header, write_result  # noqa: E402
from _pipeline import participant_command, run_timed  # noqa: E402

#: Runs the command line with nipype's own job order (``_sort_jobs`` of MultiProc).
NIPYPE_ORDER = (
    "import sys; from nipype.pipeline.plugins.multiproc import MultiProcPlugin; "
    "from bids_qnet.workflows import scheduling; "
    "scheduling.DepthFirstMultiProcPlugin._sort_jobs = MultiProcPlugin._sort_jobs; "
    "from bids_qnet.cli.run import console_main; console_main()"
)


def completion_times(out: Path, start: float) -> list[float]:
    """Return the seconds from ``start`` to each participant's completion, sorted."""
    marks = out.glob("sub-*/anat/*_embeddings.json")
    return sorted(round(p.stat().st_mtime - start, 1) for p in marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="BIDS dataset (default: a generated demo)")
    parser.add_argument("--participants", type=int, default=6)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--source", type=Path, help="a copy of the bids_qnet package's parent folder to time"
    )
    args = parser.parse_args()
    args.plugin = "MultiProc"
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="bids_qnet_depth_bench_", dir=args.tmp))
    bids = args.bids
    if bids is None:
        from bids_qnet.demo import make_demo_dataset

        bids = make_demo_dataset(
            root / "bids", n_participants=args.participants, seed=3, resolution=args.resolution
        ).bids_dir
    labels = sorted(p.name.removeprefix("sub-") for p in bids.glob("sub-*"))[: args.participants]
    rows: dict[str, list] = {"nipype": [], "depth_first": []}
    for repeat in range(args.repeats):
        order = ["nipype", "depth_first"] if repeat % 2 == 0 else ["depth_first", "nipype"]
        for kind in order:
            run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}_", dir=root))
            out = run_dir / "out"
            command = participant_command(bids, out, run_dir / "work", labels, args, args.nprocs)
            if kind == "nipype":  # python -c '<patch>; main' <arguments>
                command = [command[0], "-c", NIPYPE_ORDER, *command[3:]]
            load, start = load_average(), time.time()
            row = run_timed(command, run_dir / "log.txt", args.source)
            times = completion_times(out, start)
            row.update(
                repeat=repeat,
                completed_s=times,
                first_complete_s=times[0] if times else None,
                load_average_before=load,
                load_average_after=load_average(),
            )
            rows[kind].append(row)
            print(kind, json.dumps({k: row[k] for k in ("seconds", "completed_s")}), flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    figures = {
        kind: {
            "total_s": round(statistics.median(r["seconds"] for r in runs), 1),
            "first_complete_s": round(statistics.median(r["first_complete_s"] for r in runs), 1),
            "median_complete_s": round(
                statistics.median(statistics.median(r["completed_s"]) for r in runs), 1
            ),
        }
        for kind, runs in rows.items()
    }
    report = report_header("depth_first", vars(args), load_before)
    report.update(figures=figures, participants=labels, runs=rows)
    path = write_result("depth_first", report, args.output)
    print(json.dumps(figures, indent=1))
    print(f"load {load_before} -> {report['load_average_after']}; wrote {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
