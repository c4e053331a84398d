"""Several participants: the participant level with ``--nprocs N`` vs ``--nprocs 1``.

Runs the participant level of the same participants (by default two generated demo participants
at 2 mm) with the MultiProc plugin, ``--omp-nthreads 1`` and ``--nprocs`` 1 and N, each in fresh
output and work folders, alternating the order between repetitions. The speed-up can only be
near N while N cores are free: the load average before and after every run is recorded beside it.
Writes ``benchmarks/results/nprocs.json``.

Usage: python benchmarks/nprocs.py [--bids DIR] [--participants 2] [--nprocs 2]
       [--resolution 2] [--profile fast] [--weights random] [--image-size 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, report_header, write_result  # noqa: E402
from _pipeline import participant_command, run_timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="BIDS dataset (default: a generated demo)")
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.plugin = "MultiProc"
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="bids_qnet_nprocs_bench_", dir=args.tmp))
    bids = args.bids
    if bids is None:
        from bids_qnet.demo import make_demo_dataset

        bids = make_demo_dataset(
            root / "bids", n_participants=args.participants, seed=3, resolution=args.resolution
        ).bids_dir
    labels = sorted(p.name.removeprefix("sub-") for p in bids.glob("sub-*"))[: args.participants]
    rows: dict[int, list] = {1: [], args.nprocs: []}
    for repeat in range(args.repeats):
        order = [1, args.nprocs] if repeat % 2 == 0 else [args.nprocs, 1]
        for nprocs in order:
            run_dir = Path(tempfile.mkdtemp(prefix=f"nprocs{nprocs}_", dir=root))
            command = participant_command(
                bids, run_dir / "out", run_dir / "work", labels, args, nprocs
            )
            load = load_average()
            row = run_timed(command, run_dir / "log.txt")
            row.update(repeat=repeat, load_average_before=load, load_average_after=load_average())
            rows[nprocs].append(row)
            print(f"--nprocs {nprocs}", json.dumps(row), flush=True)
            shutil.rmtree(run_dir / "work", ignore_errors=True)
    serial = statistics.median(r["seconds"] for r in rows[1])
    parallel = statistics.median(r["seconds"] for r in rows[args.nprocs])
    figures = {
        "participants": labels,
        "nprocs_1_s": round(serial, 1),
        f"nprocs_{args.nprocs}_s": round(parallel, 1),
        "speed_up": round(serial / parallel, 3),
        "ideal_speed_up": min(args.nprocs, len(labels)),
        "peak_rss_gib": {n: round(max(r["peak_rss_gib"] for r in v), 2) for n, v in rows.items()},
    }
    report = report_header("nprocs", vars(args), load_before)
    report.update(figures=figures, runs={str(k): v for k, v in rows.items()})
    path = write_result("nprocs", report, args.output)
    print(json.dumps(figures, indent=1))
    print(f"load {load_before} -> {report['load_average_after']}; wrote {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
